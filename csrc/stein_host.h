// Host-side glue of torchmoo::stein_task_matrix and torchmoo::stein_update shared by the CPU and CUDA
// kernels: input checks, the layout the kernels read, the kernel matrix and its factor (computed in
// float64 from the squared distances), and the assembly and check of U.
//
// Notation (MT-SGD supplement, section 1.3): particles X (M, d), scores S (K, M, d), RBF kernel
// k_ab = exp(-D2_ab / h) with D2_ab = |x_a - x_b|^2, and
//   M^2 U = G + c 1' + 1 c' + const,  G_ij = sum_ab k_ab <S_ia, S_jb>,  c_i = sum_a <S_ia, R_a>,
//   R_a = (2/h) sum_b k_ab (x_a - x_b),  const = (2/h) sum_ab k_ab (d - 2 D2_ab / h).
// The kernels never form a (M, M, d) or (K, M, M, d) tensor: G = sum over columns of |L' s|^2 forms with
// K = L L' (pivoted Cholesky, below), and R = Lap (X - 1 x_0') with the graph Laplacian Lap = diag(K 1) - K
// (Lap 1 = 0, so subtracting particle 0 from every particle changes nothing but the rounding: the
// differences are small where the particles are close, as in the direct form sum_b k_ab (x_a - x_b)).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace torchmoo {
namespace stein_host {

struct SteinProblem {
  at::Tensor X;  // (M, d), X.stride(1) == 1 (or d <= 1)
  at::Tensor S;  // (K, M, d), S.stride(2) == 1 (or d <= 1)
  int64_t K = 0, M = 0, d = 0;
  double h = 1.0;
};

inline void check_bandwidth(const char* op, double h) {
  TORCH_CHECK_VALUE(std::isfinite(h) && h > 0.0, op, ": the bandwidth h must be a positive finite number, got ", h,
                    ".");
}

// Checks X (M, d) and S (K, M, d) (dtype, device, shapes; finiteness is checked on the results) and
// returns them with unit stride along d.
inline SteinProblem prepare(const char* op, const at::Tensor& X, const at::Tensor& S, double h) {
  TORCH_CHECK_TYPE(X.scalar_type() == at::kFloat || X.scalar_type() == at::kDouble, op,
                   ": X must be float32 or float64, got ", X.scalar_type(), ".");
  TORCH_CHECK_TYPE(S.scalar_type() == X.scalar_type(), op, ": S must have the dtype of X (", X.scalar_type(),
                   "), got ", S.scalar_type(), ".");
  TORCH_CHECK_VALUE(S.device() == X.device(), op, ": S is on ", S.device(), " but X is on ", X.device(),
                    "; pass both on the same device.");
  TORCH_CHECK_VALUE(X.dim() == 2 && X.size(0) >= 1 && X.size(1) >= 1, op,
                    ": X must have shape (M, d) with M, d >= 1 (M particles of dimension d), got shape ", X.sizes(),
                    ".");
  TORCH_CHECK_VALUE(S.dim() == 3 && S.size(0) >= 1 && S.size(1) == X.size(0) && S.size(2) == X.size(1), op,
                    ": S must have shape (K, M, d) = (K, ", X.size(0), ", ", X.size(1),
                    ") with K >= 1 (one score per target and particle), got shape ", S.sizes(), ".");
  check_bandwidth(op, h);
  SteinProblem p;
  p.K = S.size(0);
  p.M = X.size(0);
  p.d = X.size(1);
  p.h = h;
  p.X = X.stride(1) == 1 || p.d == 1 ? X : X.contiguous();
  p.S = S.stride(2) == 1 || p.d == 1 ? S : S.contiguous();
  return p;
}

// Everything the kernels need from the M x M kernel matrix, in float64.
struct KernelTerms {
  std::vector<double> kmat;  // (M, M) k_ab
  std::vector<double> lap;   // (M, M) graph Laplacian: lap_aa = sum_{b != a} k_ab, lap_ab = -k_ab
  double cnst = 0.0;         // (2/h) sum_ab k_ab (d - 2 D2_ab / h)
  // Pivoted Cholesky K ~ L L' to float64 rounding: order[q] is the particle of pivot row q (the r pivots
  // first, then the other particles), and lower[q * r + m] = L[order[q]][m], zero for m > q.
  int64_t r = 0;
  std::vector<int64_t> order;
  std::vector<double> lower;
};

// A remaining pivot below this (the kernel's diagonal is 1) ends the factorization: the neglected part
// E = K - L L' is positive semi-definite with trace at most M times this, so it changes G_ij by at most
// that relative to |S_i| |S_j|: float64 rounding.
inline double pivot_tolerance(int64_t M) { return 4.0 * static_cast<double>(M) * std::numeric_limits<double>::epsilon(); }

// kmat, lap, const and (with `factor`) the pivoted Cholesky factor from the squared distances D2 (M, M),
// symmetric with zero diagonal. Deterministic (fixed summation orders, ties broken by the smaller index).
inline KernelTerms kernel_terms(const std::vector<double>& D2, int64_t M, int64_t d, double h, bool factor = true) {
  KernelTerms t;
  const size_t MM = static_cast<size_t>(M * M);
  t.kmat.resize(MM);
  t.lap.resize(MM);
  double cnst = 0.0;
  for (int64_t a = 0; a < M; ++a) {
    double off = 0.0;
    for (int64_t b = 0; b < M; ++b) {
      const double dd = D2[a * M + b];
      const double k = a == b ? 1.0 : std::exp(-dd / h);
      t.kmat[a * M + b] = k;
      cnst += k * (static_cast<double>(d) - 2.0 * dd / h);
      if (b != a) {
        off += k;
        t.lap[a * M + b] = -k;
      }
    }
    t.lap[a * M + a] = off;
  }
  t.cnst = 2.0 / h * cnst;
  if (!factor) return t;

  // Outer-product pivoted Cholesky on a copy of the diagonal; rows in particle order, columns in pivot order.
  std::vector<double> L(MM, 0.0), rem(static_cast<size_t>(M), 1.0);
  std::vector<char> used(static_cast<size_t>(M), 0);
  const double tol = pivot_tolerance(M);
  int64_t r = 0;
  for (; r < M; ++r) {
    int64_t p = -1;
    for (int64_t a = 0; a < M; ++a) {
      if (!used[a] && (p < 0 || rem[a] > rem[p])) p = a;
    }
    if (p < 0 || !(rem[p] > tol)) break;
    const double piv = std::sqrt(rem[p]);
    used[p] = 1;
    t.order.push_back(p);
    L[p * M + r] = piv;
    for (int64_t a = 0; a < M; ++a) {
      if (used[a]) continue;
      double v = t.kmat[a * M + p];
      for (int64_t s = 0; s < r; ++s) v -= L[a * M + s] * L[p * M + s];
      v /= piv;
      L[a * M + r] = v;
      rem[a] -= v * v;
    }
  }
  t.r = r;
  for (int64_t a = 0; a < M; ++a) {
    if (!used[a]) t.order.push_back(a);
  }
  t.lower.assign(static_cast<size_t>(M * r), 0.0);
  for (int64_t q = 0; q < M; ++q) {
    const int64_t a = t.order[q];
    for (int64_t m = 0; m < r && m <= q; ++m) t.lower[q * r + m] = L[a * M + m];
  }
  return t;
}

// U (K, K) in `dtype` on `device` from G (upper triangle of a K x K row-major float64 matrix), c (K) and
// const: U_ij = (G_ij + c_i + c_j + const) / M^2, both triangles written from one value (exactly symmetric).
// U is returned in float64 whatever the inputs' dtype: every entry holds the same constant (the trace term,
// of order d / h), which does not move the simplex QP's minimizer but dwarfs the differences between the
// entries that decide it; rounding U to float32 would erase them.
inline at::Tensor assemble_u(const std::vector<double>& G, const std::vector<double>& c, double cnst, int64_t K,
                             int64_t M, const at::Device& device) {
  at::Tensor U = at::empty({K, K}, at::TensorOptions().dtype(at::kDouble));
  double* u = U.mutable_data_ptr<double>();
  const double inv = 1.0 / (static_cast<double>(M) * static_cast<double>(M));
  for (int64_t i = 0; i < K; ++i) {
    for (int64_t j = i; j < K; ++j) u[i * K + j] = u[j * K + i] = (G[i * K + j] + (c[i] + c[j]) + cnst) * inv;
  }
  return U.to(device);
}

// Raises for a non-finite result of `op`: names the input that is not finite, else reports an overflow.
[[noreturn]] inline void raise_non_finite(const char* op, const SteinProblem& p, const char* what) {
  TORCH_CHECK_VALUE(p.X.isfinite().all().item<bool>(), op, ": X must be finite, found NaN or infinity.");
  TORCH_CHECK_VALUE(p.S.isfinite().all().item<bool>(), op, ": S must be finite, found NaN or infinity.");
  TORCH_CHECK_VALUE(false, op, ": ", what, " overflows ", p.X.scalar_type(),
                    " (the scores are too large for the dtype); scale S down or pass float64.");
  TORCH_CHECK(false, "unreachable");
}

// w (K,) for stein_update: same dtype and device as X, finite. Returned as float64 values on the host.
// The (2M, M) mixing matrix of the update, A = [K; coef Lap] / M with coef = (sum w)(2/h):
// M phi = K S_w + coef Lap (X - x_0) = A' [S_w; X - x_0] (K and Lap are symmetric). Folding the Laplacian's
// diagonal into S_w would save a third of the work but cancels badly where the kernel is small:
// K V + coef diag(K 1) X_c with V = S_w - coef X_c adds terms of size coef |X_c| to get one of size coef k |X_c|.
inline std::vector<double> update_matrix(const KernelTerms& t, const std::vector<double>& w, int64_t M, double h) {
  double wsum = 0.0;
  for (double v : w) wsum += v;
  const double coef = wsum * 2.0 / h;
  const double inv_m = 1.0 / static_cast<double>(M);
  std::vector<double> A(static_cast<size_t>(2 * M * M));
  for (int64_t q = 0; q < M * M; ++q) {
    A[q] = t.kmat[q] * inv_m;
    A[M * M + q] = coef * t.lap[q] * inv_m;
  }
  return A;
}

inline std::vector<double> check_weights(const char* op, const at::Tensor& w, const SteinProblem& p) {
  TORCH_CHECK_TYPE(w.scalar_type() == p.X.scalar_type(), op, ": w must have the dtype of X (", p.X.scalar_type(),
                   "), got ", w.scalar_type(), ".");
  TORCH_CHECK_VALUE(w.device() == p.X.device(), op, ": w is on ", w.device(), " but X is on ", p.X.device(), ".");
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == p.K, op, ": w must have shape (K,) = (", p.K,
                    ",) (one weight per target), got shape ", w.sizes(), ".");
  const at::Tensor wc = w.to(at::kCPU, at::kDouble).contiguous();
  std::vector<double> out(wc.const_data_ptr<double>(), wc.const_data_ptr<double>() + p.K);
  for (double v : out) TORCH_CHECK_VALUE(std::isfinite(v), op, ": w must be finite, got ", v, ".");
  return out;
}

}  // namespace stein_host
}  // namespace torchmoo
