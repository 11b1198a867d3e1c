// CUDA kernel of torchmoo::nonneg_qp (schema in csrc/ops.cpp).
#include <torch/library.h>

#include "qp_solve_cuda.h"

namespace torchmoo {
namespace {

QPOutputs nonneg_qp_cuda(const at::Tensor& G, const at::Tensor& c, c10::string_view method, int64_t max_iter,
                         double tol, double radius) {
  return solve_qp_cuda(G, c, /*simplex=*/false, method, max_iter, tol, radius, "nonneg_qp");
}

}  // namespace

TORCH_LIBRARY_IMPL(torchmoo, CUDA, m) { m.impl("nonneg_qp", &nonneg_qp_cuda); }

}  // namespace torchmoo
