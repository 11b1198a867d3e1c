// Host-side glue of torchmoo::gram shared by the CPU and CUDA kernels: input checks, the layout the
// kernels read, the at::matmul path for large m, and the check of the result.
#pragma once

#include "batch_index.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace torchmoo {
namespace gram_host {

// J viewed as (B, m, n) with unit stride along n (a copy only when the input's last stride is not 1
// or its batch dims cannot be flattened into one), and G allocated as (B, m, m).
struct GramProblem {
  at::Tensor J;  // (B, m, n), J.stride(2) == 1 (or n <= 1)
  std::vector<int64_t> batch_shape;
  int64_t B = 0, m = 0, n = 0;
};

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline GramProblem prepare(const at::Tensor& J) {
  TORCH_CHECK_TYPE(is_supported_float(J.scalar_type()),
                   "gram: J must be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
                   J.scalar_type(), ".");
  TORCH_CHECK_VALUE(J.dim() >= 2, "gram: J must have shape (..., m, n) (at least 2 dims), got shape ", J.sizes(),
                    ".");
  GramProblem p;
  p.m = J.size(-2);
  p.n = J.size(-1);
  p.batch_shape = J.sizes().slice(0, J.dim() - 2).vec();
  p.B = 1;
  for (int64_t s : p.batch_shape) p.B *= s;
  at::Tensor J3 = J.reshape({p.B, p.m, p.n});
  if (p.n > 1 && J3.stride(2) != 1) J3 = J3.contiguous();
  p.J = J3;
  return p;
}

// Output shape (..., m, m).
inline std::vector<int64_t> out_shape(const GramProblem& p) {
  std::vector<int64_t> shape = p.batch_shape;
  shape.push_back(p.m);
  shape.push_back(p.m);
  return shape;
}

// J J^T through at::matmul with the upper triangle mirrored, so the result is exactly symmetric; in J3's
// dtype, computed in float32 for float16 / bfloat16 as the kernels are (a half GEMM may reduce in the half
// dtype: torch's allow_{fp16,bf16}_reduced_precision_reduction, on by default on CUDA).
inline at::Tensor matmul_gram(const at::Tensor& J3) {
  const at::Tensor Jc = J3.scalar_type() == at::kDouble ? J3 : J3.to(at::kFloat);
  const at::Tensor G = at::matmul(Jc, Jc.mT());
  return (G.triu() + G.triu(1).mT()).to(J3.scalar_type());
}

// A finite J gives a finite G unless J J^T overflows; NaN or infinity in row i of J makes G_ii non-finite.
// So checking G (m x m per problem, not J) finds both, and J is read again only to say which it was.

// Raises the ValueError for problem b, whose G has a non-finite entry.
[[noreturn]] inline void raise_non_finite(const GramProblem& p, int64_t b) {
  const std::string where = p.batch_shape.empty() ? "" : " at batch index " + batch_index(b, p.batch_shape);
  const bool j_finite = p.J[b].isfinite().all().item<bool>();
  TORCH_CHECK_VALUE(j_finite, "gram: J must be finite, found NaN or infinity", where, ".");
  TORCH_CHECK_VALUE(false, "gram: J J^T overflows ", p.J.scalar_type(), where,
                    " (an entry of G exceeds the largest finite value of the dtype); scale J down or pass a wider "
                    "dtype.");
  TORCH_CHECK(false, "unreachable");
}

// Raises for the first problem with a non-finite entry in G3 (B, m, m). On CUDA this synchronizes the
// stream (one reduction and a host read).
inline void check_finite(const GramProblem& p, const at::Tensor& G3) {
  if (G3.numel() == 0) return;
  const at::Tensor bad = G3.isfinite().logical_not().flatten(1).any(1);  // (B,)
  if (!bad.any().item<bool>()) return;
  raise_non_finite(p, bad.nonzero()[0][0].item<int64_t>());
}

}  // namespace gram_host
}  // namespace torchmoo
