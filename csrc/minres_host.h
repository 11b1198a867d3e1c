// Host-side glue of the MINRES operators shared by the CPU and CUDA kernels: the set-up of the
// recurrences (minres_init), the checks of a step's arguments and the read-out of the diagnostics
// (minres_info). Written with ATen ops, so the same code serves both devices.
//
// The loop itself runs in Python (torchmoo.ops.minres): hv = matvec(y), then minres_step, which
// advances every right-hand side by one iteration in place; a last minres_step without hv applies the
// pending updates of x (see common/minres_recurrence.h).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <tuple>

#include "common/minres_recurrence.h"

namespace torchmoo {
namespace minres {

// (y, yprev, w, wprev, x, state, history)
using InitOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

inline void check_vectors(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "minres: ", name,
                   " must be float32 or float64, got ", t.scalar_type(), ".");
  TORCH_CHECK_VALUE(t.dim() == 2, "minres: ", name, " must have shape (k, n), got ", t.sizes(), ".");
}

// b: (k, n) float32/float64, finite (the Python wrapper checks finiteness with a friendlier message).
// y = b (the first, unnormalized, Lanczos vector; a contiguous copy), every other vector zero; the
// state rows hold ||b|| and the initial rotation (c = -1, s = 0); history (k, max_iter + 1) float64
// with ||b|| in column 0 (the residual of x_0 = 0).
inline InitOutputs init(const at::Tensor& b, int64_t max_iter) {
  check_vectors(b, "b");
  TORCH_CHECK_VALUE(max_iter >= 0, "minres: max_iter must be >= 0, got ", max_iter, ".");
  const int64_t k = b.size(0);
  const at::Tensor b64 = b.to(at::kDouble);
  const at::Tensor bnorm = b64.mul(b64).sum(1).sqrt();  // sqrt(b'b), as scipy forms beta_1
  at::Tensor y = b.clone(at::MemoryFormat::Contiguous);
  at::Tensor yprev = at::zeros_like(y);
  at::Tensor w = at::zeros_like(y);
  at::Tensor wprev = at::zeros_like(y);
  at::Tensor x = at::zeros_like(y);

  // Column by column, so that the same code runs on either device.
  at::Tensor state = at::zeros({k, kSlots}, b.options().dtype(at::kDouble));
  state.select(1, kBeta).copy_(bnorm);
  state.select(1, kBetaPrev).fill_(1.0);
  state.select(1, kBnorm).copy_(bnorm);
  state.select(1, kPhibar).copy_(bnorm);
  state.select(1, kCs).fill_(-1.0);
  state.select(1, kStatus).copy_(at::where(bnorm > 0, at::full_like(bnorm, kActive), at::full_like(bnorm, kBZero)));

  at::Tensor history = at::zeros({k, max_iter + 1}, state.options());
  history.select(1, 0).copy_(bnorm);
  return {y, yprev, w, wprev, x, state, history};
}

// minres_step's summary[1] when every product of the step was finite.
constexpr int32_t kNoBadRow = std::numeric_limits<int32_t>::max();

// Checks of minres_step's arguments (cheap: metadata only). hv may be undefined (the final flush).
inline void check_step(const at::Tensor& hv, const at::Tensor& y, const at::Tensor& yprev, const at::Tensor& w,
                       const at::Tensor& wprev, const at::Tensor& x, const at::Tensor& state,
                       const at::Tensor& history, const at::Tensor& summary) {
  check_vectors(y, "y");
  if (hv.defined()) {  // (n,) is accepted for k = 1: the shape of what the matvec received
    TORCH_CHECK_VALUE(hv.numel() == y.numel() && hv.scalar_type() == y.scalar_type() && hv.device() == y.device() &&
                          hv.is_contiguous(),
                      "minres_step: hv must be a contiguous tensor with the size, dtype and device of y (", y.sizes(),
                      ", ", y.scalar_type(), ", ", y.device(), "), got ", hv.sizes(), ", ", hv.scalar_type(), ", ",
                      hv.device(), ".");
  }
  // The kernels index every vector as a dense (k, n) array: y too (an expanded y would be read past its
  // storage).
  TORCH_CHECK_VALUE(y.is_contiguous(), "minres_step: the vectors must be contiguous.");
  for (const at::Tensor* t : {&yprev, &w, &wprev, &x}) {
    TORCH_CHECK_VALUE(t->sizes() == y.sizes() && t->scalar_type() == y.scalar_type() && t->device() == y.device(),
                      "minres_step: every vector must have the shape, dtype and device of y (", y.sizes(), ", ",
                      y.scalar_type(), ", ", y.device(), "), got ", t->sizes(), ", ", t->scalar_type(), ", ",
                      t->device(), ".");
    TORCH_CHECK_VALUE(t->is_contiguous(), "minres_step: the vectors must be contiguous.");
  }
  // yprev, w, wprev and x are written while y and hv are read (restrict pointers on the CPU): no written
  // vector may share memory with another vector (hv may alias y, which is only read). All are contiguous
  // here, so a byte-range test decides (metadata only: the step runs once per iteration).
  const at::Tensor* vecs[] = {&y, &yprev, &w, &wprev, &x};
  const char* names[] = {"y", "yprev", "w", "wprev", "x"};
  auto overlap = [](const at::Tensor& a, const at::Tensor& b) {
    if (a.numel() == 0 || b.numel() == 0) return false;
    const auto a0 = reinterpret_cast<uintptr_t>(a.const_data_ptr()), b0 = reinterpret_cast<uintptr_t>(b.const_data_ptr());
    return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
  };
  for (int i = 0; i < 5; ++i) {
    for (int j = i + 1; j < 5; ++j) {
      TORCH_CHECK_VALUE(!overlap(*vecs[i], *vecs[j]), "minres_step: ", names[i], " and ", names[j],
                        " share memory; every vector needs its own buffer.");
    }
    if (i > 0 && hv.defined()) {
      TORCH_CHECK_VALUE(!overlap(hv, *vecs[i]), "minres_step: hv shares memory with ", names[i],
                        ", which the step overwrites; pass a copy of hv.");
    }
  }
  TORCH_CHECK_VALUE(state.scalar_type() == at::kDouble && state.dim() == 2 && state.size(0) == y.size(0) &&
                        state.size(1) == kSlots && state.is_contiguous() && state.device() == y.device(),
                    "minres_step: state must be a contiguous (k, ", static_cast<int>(kSlots),
                    ") float64 tensor from minres_init, on the device of y.");
  TORCH_CHECK_VALUE(history.scalar_type() == at::kDouble && history.dim() == 2 && history.size(0) == y.size(0) &&
                        history.size(1) >= 1 && history.is_contiguous() && history.device() == y.device(),
                    "minres_step: history must be a contiguous (k, max_iter + 1) float64 tensor from minres_init.");
  TORCH_CHECK_VALUE(summary.scalar_type() == at::kInt && summary.dim() == 1 && summary.size(0) == 2 &&
                        summary.is_contiguous() && summary.device() == y.device(),
                    "minres_step: summary must be a contiguous (2,) int32 tensor on the device of y.");
  TORCH_CHECK_VALUE(y.size(0) < kNoBadRow, "minres_step: at most ", kNoBadRow - 1, " right-hand sides, got ",
                    y.size(0), ".");
}

inline double dtype_eps(at::ScalarType t) {
  return t == at::kFloat ? static_cast<double>(std::numeric_limits<float>::epsilon())
                         : std::numeric_limits<double>::epsilon();
}

// (iterations int64 (k,), residual_norms float64 (k, T + 1) with T = max iterations, stop codes int64 (k,)).
// Entries of residual_norms past a row's own iteration count repeat its final value; rows still
// active get kMaxIter.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> info(const at::Tensor& state, const at::Tensor& history) {
  TORCH_CHECK_VALUE(state.scalar_type() == at::kDouble && state.dim() == 2 && state.size(1) == kSlots,
                    "minres_info: state must be a (k, ", static_cast<int>(kSlots), ") float64 tensor.");
  TORCH_CHECK_VALUE(history.scalar_type() == at::kDouble && history.dim() == 2 &&
                        history.size(0) == state.size(0),
                    "minres_info: history must be a (k, max_iter + 1) float64 tensor.");
  const int64_t k = state.size(0);
  const at::Tensor iterations = state.select(1, kIter).to(at::kLong);
  at::Tensor codes = state.select(1, kStatus).to(at::kLong);
  codes = at::where(codes == kActive, at::full_like(codes, kMaxIter), codes);
  const int64_t t = k > 0 ? iterations.max().item<int64_t>() : 0;
  TORCH_CHECK(t + 1 <= history.size(1), "minres_info: history is shorter than the iterations recorded in state.");
  const at::Tensor hist = history.narrow(1, 0, t + 1);
  const at::Tensor cols = at::arange(t + 1, iterations.options()).unsqueeze(0);  // (1, T + 1)
  const at::Tensor last = hist.gather(1, iterations.unsqueeze(1));                // (k, 1)
  const at::Tensor residuals = at::where(cols <= iterations.unsqueeze(1), hist, last);
  return {iterations, residuals.contiguous(), codes};
}

}  // namespace minres
}  // namespace torchmoo
