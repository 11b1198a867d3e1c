// Host-side glue shared by the CPU and CUDA QP kernels: input validation with readable errors,
// options, and turning per-problem status codes into exceptions.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <tuple>
#include <vector>

#include "common/qp_kernel.h"

namespace torchmoo {

// (x, iterations, kkt_residual, converged), shaped (..., m), (...), (...), (...).
using QPOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

struct QPProblem {
  at::Tensor G;                  // (B, m, m), a view of the input where possible
  c10::optional<at::Tensor> c;   // (B, m)
  std::vector<int64_t> batch_shape;
  int64_t B = 0;
  int64_t m = 0;
};

// Checks dtypes, shapes and devices, and flattens the batch dims.
QPProblem prepare_qp(const at::Tensor& G, const c10::optional<at::Tensor>& c, const char* op);

QPOptions make_qp_options(bool simplex, c10::string_view method, int64_t max_iter, double tol, double radius,
                          const QPProblem& problem, const char* op);

// status: (B,) int32 on any device; first_failed: index of the first failed problem, -1 if none,
// or -2 to find it here (one reduction, which synchronizes a CUDA stream). Raises ValueError for it.
// Returns the outputs reshaped to the batch shape.
QPOutputs finish_qp(const at::Tensor& x, const at::Tensor& iterations, const at::Tensor& residual,
                    const at::Tensor& converged, const at::Tensor& status, int64_t first_failed,
                    const QPProblem& problem,
                    const QPOptions& options, const char* op);

}  // namespace torchmoo
