// The scalar half of one MINRES iteration (Paige & Saunders 1975, in the form of scipy.sparse.linalg.minres
// without a preconditioner): given the two Lanczos scalars alfa_k and beta_{k+1} of a right-hand side,
// apply the previous Givens rotation, form the next one, update the residual norm and decide whether to
// stop. The vector half (the Lanczos step and the solution / direction updates) lives in the CPU and CUDA
// kernels; both call scalar_step once per right-hand side and iteration. Host/device code.
//
// Every right-hand side keeps kSlots float64 numbers (a row of the state tensor, shape (k, kSlots)).
//
// As in scipy, the Lanczos vectors are kept unnormalized: y_k = beta_k v_k with beta_k = ||y_k||, and
// y_k itself is what the matvec receives (H v_k = (H y_k) / beta_k). The update of x and of the
// directions w that iteration k makes possible is applied in the first pass of iteration k + 1 (which
// reads y_k anyway), or by the final flush: the coefficients wait in the state, flagged kPending.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace torchmoo {
namespace minres {

enum Slot : int {
  kBeta = 0,     // beta_k = ||y_k||, y_k the current Lanczos vector unnormalized (beta_1 = ||b||, y_1 = b)
  kBetaPrev,     // beta_{k-1} (1 before the first step, when y_0 = 0)
  kAlfa,         // alfa_k = v_k' (H - shift I) v_k - ..., from the first reduction of the step
  kBetaNextSq,   // ||y_{k+1}||^2, from the second reduction of the step
  kDbar,         // dbar_{k+1}, epsln_{k+1}, c_k, s_k: the rotation state carried to the next step
  kEpsln,
  kCs,
  kSn,
  kPhibar,       // ||r_k|| = ||b - (H - shift I) x_k|| (exact in exact arithmetic)
  kTnorm2,       // ||T_{k+1,k}||_F^2, the estimate of ||H - shift I||^2
  kBnorm,        // ||b||
  kIter,         // iterations applied (k of x_k)
  kStatus,       // one of the codes below
  // The vector update of the last applied iteration k, waiting for the next pass over y_k:
  // w_k = (y_k / beta_k - oldeps w_{k-2} - delta w_{k-1}) * denom,  x_k = x_{k-1} + phi w_k.
  kOldeps,
  kDelta,
  kDenom,
  kPhi,
  kPending,      // 1: the update above is still to be applied; 0: nothing pending
  kSlots
};

// Why a right-hand side stopped, stored in s[kStatus]. The names live in torchmoo/ops.py
// (_MINRES_STOP_REASONS, same order). Plain ints: they are compared with the float64 state.
constexpr int kActive = 0;
constexpr int kBZero = 1;           // b = 0: x = 0 is exact (scipy istop 0)
constexpr int kConverged = 2;       // ||r_k|| <= tol ||b|| (scipy istop 1, with the relative residual)
constexpr int kLeastSquares = 3;    // ||(H - shift I) r|| <= max(tol, eps) ||H - shift I|| ||r||: x is a
                                    // least-squares solution (istop 2)
constexpr int kBreakdown = 4;       // beta_{k+1} ~ 0: the Krylov space is invariant, x_k is the solution
                                    // in it (istop -1)
constexpr int kMaxIter = 5;         // the iteration limit (istop 6); set by minres_info for rows still active
constexpr int kNonFinite = 6;       // the matvec returned NaN or infinity: an error, raised by the host code
// scipy's istop 4 (cond(T) >= 0.1 / eps) cannot happen after these tests: every gamma_j is at most
// ||T||_F and at least beta_{j+1}, so gamma_k <= 10 eps gamma_max means beta_{k+1} <= 10 eps ||T||_F, which
// is a breakdown.

C10_HOST_DEVICE inline bool finite(double v) { return v - v == 0.0; }

// One iteration's scalar recurrence for one right-hand side, after the vector kernels stored
// s[kAlfa] and s[kBetaNextSq] and applied (and cleared) the previous pending update. tol: relative
// residual tolerance; eps: machine epsilon of the vectors' dtype (what rounding in the Lanczos vectors
// can resolve).
C10_HOST_DEVICE inline void scalar_step(double* s, double tol, double eps) {
  if (s[kStatus] != kActive) return;
  const double alfa = s[kAlfa];
  const double beta_sq = s[kBetaNextSq];
  if (!finite(alfa) || !finite(beta_sq)) {
    s[kStatus] = kNonFinite;
    return;
  }
  const double k = s[kIter] + 1.0;
  const double oldb = s[kBeta];
  const double beta = ::sqrt(beta_sq);
  // ||T||_F^2 gains the new column (beta_k, alfa_k, beta_{k+1}); beta_1 = ||b|| is not an entry of T.
  const double tnorm2 = s[kTnorm2] + alfa * alfa + (k > 1.0 ? oldb * oldb : 0.0) + beta * beta;
  const double anorm = ::sqrt(tnorm2);
  s[kTnorm2] = tnorm2;

  // Apply the previous rotation Q_{k-1}:  [delta_k  epsln_{k+1}] = [c  s][dbar_k   0          ]
  //                                        [gbar_k   dbar_{k+1} ]   [s -c][alfa_k   beta_{k+1}]
  const double cs = s[kCs], sn = s[kSn], dbar = s[kDbar];
  const double oldeps = s[kEpsln];
  const double delta = cs * dbar + sn * alfa;
  const double gbar = sn * dbar - cs * alfa;
  const double epsln = sn * beta;
  const double dbar_next = -cs * beta;
  // ||(H - shift I) r_{k-1}|| = ||r_{k-1}|| * root: when it is negligible, x_{k-1} is a least-squares
  // solution, and it is kept: the next rotation would divide by gamma_k <= root-sized numbers.
  const double root = ::hypot(gbar, dbar_next);
  const double ls_tol = tol > eps ? tol : eps;
  if (root <= ls_tol * anorm) {
    s[kStatus] = kLeastSquares;
    return;
  }

  // The next rotation Q_k (gamma_k >= root > 0).
  const double gamma = ::hypot(gbar, beta);
  const double c_new = gbar / gamma;
  const double s_new = beta / gamma;
  const double phibar = s[kPhibar];
  const double phi = c_new * phibar;
  const double phibar_new = s_new * phibar;

  s[kOldeps] = oldeps;
  s[kDelta] = delta;
  s[kDenom] = 1.0 / gamma;
  s[kPhi] = phi;
  s[kPending] = 1.0;

  s[kBetaPrev] = oldb;
  s[kBeta] = beta;
  s[kCs] = c_new;
  s[kSn] = s_new;
  s[kDbar] = dbar_next;
  s[kEpsln] = epsln;
  s[kPhibar] = phibar_new;
  s[kIter] = k;

  if (phibar_new <= tol * s[kBnorm]) {
    s[kStatus] = kConverged;
  } else if (beta <= 10.0 * eps * anorm) {
    s[kStatus] = kBreakdown;
  }
}

}  // namespace minres
}  // namespace torchmoo
