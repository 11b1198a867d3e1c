// Host-side glue of torchmoo::combine (d = sum_i w_i J_i) shared by the CPU and CUDA kernels: input checks,
// the layout the kernels read, and the error for a non-finite result.
#pragma once

#include "batch_index.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>
#include <vector>

namespace torchmoo {
namespace combine_host {

// J viewed as (B, m, n) with unit stride along n, w as (B, m), both in the compute dtype (float32 for
// float16 / bfloat16 input, which is copied), and the output shape (..., n).
struct CombineProblem {
  at::Tensor J;  // (B, m, n), J.stride(2) == 1 (or n <= 1)
  at::Tensor w;  // (B, m)
  std::vector<int64_t> batch_shape;
  int64_t B = 0, m = 0, n = 0;
  at::ScalarType dtype = at::kFloat;    // of the inputs and the output
  at::ScalarType compute = at::kFloat;  // float32 or float64
};

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline CombineProblem prepare(const at::Tensor& J, const at::Tensor& w) {
  TORCH_CHECK_TYPE(is_supported_float(J.scalar_type()),
                   "combine: J must be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
                   J.scalar_type(), ".");
  // Half J is computed in float32, so float32 weights are taken as they are (weights beyond float16's range
  // can still give a finite combination).
  const at::ScalarType compute = J.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK_TYPE(w.scalar_type() == J.scalar_type() || w.scalar_type() == compute,
                   "combine: w must have the dtype of J (", J.scalar_type(),
                   compute != J.scalar_type() ? " or float32" : "", "), got ", w.scalar_type(), ".");
  TORCH_CHECK_VALUE(w.device() == J.device(), "combine: w is on ", w.device(), " but J is on ", J.device(),
                    "; pass both on the same device.");
  TORCH_CHECK_VALUE(J.dim() >= 2, "combine: J must have shape (..., m, n) (at least 2 dims), got shape ", J.sizes(),
                    ".");
  const std::vector<int64_t> batch = J.sizes().slice(0, J.dim() - 2).vec();
  TORCH_CHECK_VALUE(w.dim() == J.dim() - 1 && w.sizes().slice(0, w.dim() - 1).vec() == batch &&
                        w.size(-1) == J.size(-2),
                    "combine: w must have shape (..., m) with the batch dims of J, i.e. ",
                    at::IntArrayRef(J.sizes().slice(0, J.dim() - 1)), " for J of shape ", J.sizes(), ", got ",
                    w.sizes(), " (expand w to J's batch dims first if it is shared).");
  CombineProblem p;
  p.batch_shape = batch;
  p.m = J.size(-2);
  p.n = J.size(-1);
  p.B = 1;
  for (int64_t s : batch) p.B *= s;
  p.dtype = J.scalar_type();
  p.compute = compute;
  at::Tensor J3 = J.reshape({p.B, p.m, p.n});
  if (J3.scalar_type() != p.compute) J3 = J3.to(p.compute);
  if (p.n > 1 && J3.stride(2) != 1) J3 = J3.contiguous();
  p.J = J3;
  p.w = w.reshape({p.B, p.m}).to(p.compute);
  return p;
}

// Output shape (..., n).
inline std::vector<int64_t> out_shape(const CombineProblem& p) {
  std::vector<int64_t> shape = p.batch_shape;
  shape.push_back(p.n);
  return shape;
}

// Raises the ValueError for problem b, whose combination has a non-finite entry.
[[noreturn]] inline void raise_non_finite(const CombineProblem& p, int64_t b) {
  const std::string where = p.batch_shape.empty() ? "" : " at batch index " + batch_index(b, p.batch_shape);
  TORCH_CHECK_VALUE(p.w[b].isfinite().all().item<bool>(), "combine: w must be finite, found NaN or infinity", where,
                    ".");
  TORCH_CHECK_VALUE(p.J[b].isfinite().all().item<bool>(), "combine: J must be finite, found NaN or infinity", where,
                    ".");
  TORCH_CHECK_VALUE(false, "combine: sum_i w_i J_i overflows ", p.dtype, where,
                    " (an entry exceeds the largest finite value of the dtype); scale J or w down or pass a wider "
                    "dtype.");
  TORCH_CHECK(false, "unreachable");
}

// Raises for the first problem with a non-finite entry in d3 (B, n) (CUDA: synchronizes the stream).
inline void check_finite(const CombineProblem& p, const at::Tensor& d3) {
  if (d3.numel() == 0) return;
  const at::Tensor bad = d3.isfinite().logical_not().any(1);  // (B,)
  if (!bad.any().item<bool>()) return;
  raise_non_finite(p, bad.nonzero()[0][0].item<int64_t>());
}

}  // namespace combine_host
}  // namespace torchmoo
