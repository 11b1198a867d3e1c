// CPU fast path for batches of small QPs (m <= 8), vectorized across problems.
//
// Most QPs of multi-task learning have linearly independent gradients, and then the solution is often
// interior: all weights positive. For kLanes problems at once, laid out lane-innermost so that every
// loop is a fixed-length SIMD loop over problems, we factor G, solve for the minimizer with every
// index free, and accept it for the lanes where it is strictly feasible and its KKT residual verifies. This is the unconstrained start of
// Goldfarb-Idnani; the other lanes (a bound is active, G singular, bad input) go through the exact
// active-set solver, which also produces their error status. No branch depends on the data, so the
// branch mispredictions that dominate the scalar solver at this size disappear.
#pragma once

#include <cstdint>

#include "../common/qp_active_set.h"

namespace torchmoo {

constexpr int kLanes = 8;

struct FastPathOut {
  bool solved[kLanes];
  double x[8][kLanes];
  double residual[kLanes];
};

namespace fast_path_detail {

// For every lane: the minimizer of the normalized problem with the indices where keep == 0 fixed at
// zero (a masked copy of G with a unit diagonal there decouples them), then acceptance: the free
// weights strictly positive, the Cholesky pivots regular and the KKT residual of the whole problem
// at most accept_tol. A successful Cholesky of G certifies it positive definite, so accepted lanes
// need no separate PSD check. The simplex multiplier nu absorbs the constraint sum(x) = 1 without
// H = G + 11'.
template <int M>
inline void solve_masked(const double (&G)[M][M][kLanes], const double (&c)[M][kLanes],
                         const double (&keep)[M][kLanes], const bool (&ok)[kLanes], bool simplex, double pivot_tol,
                         double accept_tol, double (&y)[M][kLanes], bool (&solved)[kLanes],
                         bool (&factored)[kLanes], double (&residual)[kLanes]) {
  constexpr int W = kLanes;
  double L[M][M][W], z1[M][W], zc[M][W];
  double bad[W], acc[W], acc2[W];
  for (int l = 0; l < W; ++l) bad[l] = ok[l] ? 0.0 : 1.0;
  // Cholesky of the masked G with the same singularity test as the active-set solver. Every loop
  // has the lanes innermost so that it vectorizes; `bad` counts failed tests per lane.
  for (int k = 0; k < M; ++k) {
    for (int l = 0; l < W; ++l) acc[l] = keep[k][l] * G[k][k][l] + (1.0 - keep[k][l]);
    for (int q = 0; q < k; ++q) {
      for (int l = 0; l < W; ++l) acc[l] -= L[k][q][l] * L[k][q][l];
    }
    for (int l = 0; l < W; ++l) {
      const double gkk = keep[k][l] * G[k][k][l] + (1.0 - keep[k][l]);
      const bool pivot_ok = acc[l] > pivot_tol * gkk;
      bad[l] += pivot_ok ? 0.0 : 1.0;
      L[k][k][l] = 1.0 / __builtin_sqrt(pivot_ok ? acc[l] : 1.0);  // the diagonal holds 1 / L_kk
    }
    for (int i = k + 1; i < M; ++i) {
      for (int l = 0; l < W; ++l) acc[l] = keep[i][l] * keep[k][l] * G[i][k][l];
      for (int q = 0; q < k; ++q) {
        for (int l = 0; l < W; ++l) acc[l] -= L[i][q][l] * L[k][q][l];
      }
      for (int l = 0; l < W; ++l) L[i][k][l] = acc[l] * L[k][k][l];
    }
  }
  for (int l = 0; l < W; ++l) factored[l] = bad[l] == 0.0;
  // z1 = L^{-1} keep, zc = L^{-1} (keep * c), then y = L'^{-1}(nu z1 - zc) or -L'^{-1} zc.
  for (int p = 0; p < M; ++p) {
    for (int l = 0; l < W; ++l) {
      acc[l] = keep[p][l];
      acc2[l] = keep[p][l] * c[p][l];
    }
    for (int q = 0; q < p; ++q) {
      for (int l = 0; l < W; ++l) {
        acc[l] -= L[p][q][l] * z1[q][l];
        acc2[l] -= L[p][q][l] * zc[q][l];
      }
    }
    for (int l = 0; l < W; ++l) {
      z1[p][l] = acc[l] * L[p][p][l];
      zc[p][l] = acc2[l] * L[p][p][l];
    }
  }
  double nu[W];
  for (int l = 0; l < W; ++l) {
    acc[l] = 0.0;
    acc2[l] = 0.0;
  }
  for (int p = 0; p < M; ++p) {
    for (int l = 0; l < W; ++l) {
      acc[l] += z1[p][l] * z1[p][l];
      acc2[l] += z1[p][l] * zc[p][l];
    }
  }
  for (int l = 0; l < W; ++l) nu[l] = simplex ? (1.0 + acc2[l]) / acc[l] : 0.0;
  for (int p = M - 1; p >= 0; --p) {
    for (int l = 0; l < W; ++l) acc[l] = nu[l] * z1[p][l] - zc[p][l];
    for (int q = p + 1; q < M; ++q) {
      for (int l = 0; l < W; ++l) acc[l] -= L[q][p][l] * y[q][l];
    }
    for (int l = 0; l < W; ++l) y[p][l] = acc[l] * L[p][p][l];
  }
  // KKT residual of the whole problem (as in qp_active_set.h); fixed indices have y == 0 exactly.
  double g[M][W], sum[W], gmin[W], xmax[W], dual[W], comp[W], gap[W];
  for (int l = 0; l < W; ++l) {
    sum[l] = 0.0;
    gmin[l] = 1e300;
    xmax[l] = 1.0;
    dual[l] = 0.0;
    comp[l] = 0.0;
    gap[l] = 0.0;
  }
  for (int i = 0; i < M; ++i) {
    for (int l = 0; l < W; ++l) acc[l] = c[i][l];
    for (int k = 0; k < M; ++k) {
      for (int l = 0; l < W; ++l) acc[l] += G[i][k][l] * y[k][l];
    }
    for (int l = 0; l < W; ++l) {
      const double yi = y[i][l];
      g[i][l] = acc[l];
      bad[l] += (yi > 0.0) | (keep[i][l] == 0.0) ? 0.0 : 1.0;
      sum[l] += yi;
      gmin[l] = dmin(gmin[l], acc[l]);
      xmax[l] = dmax(xmax[l], yi);
      dual[l] = dmax(dual[l], -acc[l]);
      comp[l] = dmax(comp[l], yi * dabs(acc[l]));
    }
  }
  for (int i = 0; i < M; ++i) {
    for (int l = 0; l < W; ++l) gap[l] += y[i][l] * (g[i][l] - gmin[l]);
  }
  for (int l = 0; l < W; ++l) {
    const double r = simplex ? dmax(gap[l], dabs(sum[l] - 1.0)) : dmax(dual[l], comp[l]) / xmax[l];
    solved[l] = (bad[l] == 0.0) & (r <= accept_tol);
    residual[l] = r;
  }
}

// Loads kLanes problems lane-innermost, checks them (as load_problem does) and normalizes them by
// s = max(|G|, |c|). loadG(lane, i, j), loadC(lane, i) read problem `lane` of the block as double;
// lanes >= count are padded with the identity and marked not ok.
template <int M, typename LoadG, typename LoadC>
inline void load_block(int count, LoadG loadG, LoadC loadC, bool has_c, double sym_tol, double (&G)[M][M][kLanes],
                       double (&c)[M][kLanes], bool (&ok)[kLanes]) {
  constexpr int W = kLanes;
  double sG[W], s[W], asym[W], nonfinite[W];
  for (int l = 0; l < W; ++l) {
    sG[l] = 0.0;
    asym[l] = 0.0;
    nonfinite[l] = 0.0;
  }
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < M; ++j) {
      for (int l = 0; l < W; ++l) G[i][j][l] = l < count ? loadG(l, i, j) : (i == j ? 1.0 : 0.0);
    }
    for (int l = 0; l < W; ++l) c[i][l] = (has_c && l < count) ? loadC(l, i) : 0.0;
  }
  // Scale, symmetry and finiteness, visiting each pair (i, j) once.
  for (int i = 0; i < M; ++i) {
    for (int l = 0; l < W; ++l) {
      const double a = G[i][i][l];
      nonfinite[l] += a - a;
      sG[l] = dmax(sG[l], dabs(a));
    }
    for (int j = i + 1; j < M; ++j) {
      for (int l = 0; l < W; ++l) {
        const double a = G[i][j][l], b = G[j][i][l];
        nonfinite[l] += (a - a) + (b - b);
        sG[l] = dmax(sG[l], dmax(dabs(a), dabs(b)));
        asym[l] = dmax(asym[l], dabs(a - b));
      }
    }
  }
  for (int l = 0; l < W; ++l) s[l] = sG[l];
  for (int i = 0; i < M; ++i) {
    for (int l = 0; l < W; ++l) {
      nonfinite[l] += c[i][l] - c[i][l];
      s[l] = dmax(s[l], dabs(c[i][l]));
    }
  }
  for (int l = 0; l < W; ++l) {
    // Scales whose inverse overflows (subnormal input) are left to the exact solver, which rescales.
    ok[l] = (l < count) & (nonfinite[l] == 0.0) & (asym[l] <= sym_tol * sG[l]) & (s[l] >= 0x1p-1000);
    s[l] = ok[l] ? 1.0 / s[l] : 1.0;  // from here on s holds the inverse scale
  }
  for (int i = 0; i < M; ++i) {
    for (int j = i; j < M; ++j) {
      for (int l = 0; l < W; ++l) {
        // Halved before the sum, which would overflow for entries near the dtype's limit (the same
        // number as 0.5 * (a + b) otherwise).
        const double v = (0.5 * G[i][j][l] + 0.5 * G[j][i][l]) * s[l];
        G[i][j][l] = v;
        G[j][i][l] = v;
      }
    }
    for (int l = 0; l < W; ++l) c[i][l] *= s[l];
  }
}

}  // namespace fast_path_detail

// Pass 1 for a block of problems: every index free. For the lanes that fail only because a weight
// came out non-positive (G factored, so it is certified positive definite), drop[l] is the index of
// the most negative weight, to be fixed at zero by qp_fast_path_drop; otherwise drop[l] = -1.
template <int M, typename LoadG, typename LoadC>
inline void qp_fast_path(int count, LoadG loadG, LoadC loadC, bool has_c, bool simplex, double sym_tol,
                         double pivot_tol, double accept_tol, FastPathOut& out, int (&drop)[kLanes]) {
  static_assert(M >= 1 && M <= 8, "fast path is for m <= 8");
  constexpr int W = kLanes;
  double G[M][M][W], c[M][W], keep[M][W], y[M][W];
  bool ok[W], factored[W];
  fast_path_detail::load_block<M>(count, loadG, loadC, has_c, sym_tol, G, c, ok);
  for (int i = 0; i < M; ++i) {
    for (int l = 0; l < W; ++l) keep[i][l] = 1.0;
  }
  fast_path_detail::solve_masked<M>(G, c, keep, ok, simplex, pivot_tol, accept_tol, y, out.solved, factored,
                                    out.residual);
  for (int l = 0; l < W; ++l) drop[l] = 0;
  for (int i = 1; i < M; ++i) {
    for (int l = 0; l < W; ++l) drop[l] = y[i][l] < y[drop[l]][l] ? i : drop[l];
  }
  for (int l = 0; l < W; ++l) drop[l] = (M >= 2 && ok[l] && factored[l] && !out.solved[l]) ? drop[l] : -1;
  for (int i = 0; i < M; ++i) {
    for (int l = 0; l < W; ++l) out.x[i][l] = y[i][l];
  }
}

// Pass 2: the same problems (any subset, gathered from several blocks so that the lanes stay busy)
// with index drop[l] fixed at zero; drop[l] < 0 marks an unused lane.
template <int M, typename LoadG, typename LoadC>
inline void qp_fast_path_drop(int count, LoadG loadG, LoadC loadC, bool has_c, bool simplex, double sym_tol,
                              double pivot_tol, double accept_tol, const int (&drop)[kLanes], FastPathOut& out) {
  static_assert(M >= 1 && M <= 8, "fast path is for m <= 8");
  constexpr int W = kLanes;
  double G[M][M][W], c[M][W], keep[M][W], y[M][W];
  bool ok[W], factored[W];
  fast_path_detail::load_block<M>(count, loadG, loadC, has_c, sym_tol, G, c, ok);
  for (int l = 0; l < W; ++l) ok[l] = ok[l] & (drop[l] >= 0);
  for (int i = 0; i < M; ++i) {
    for (int l = 0; l < W; ++l) keep[i][l] = i == drop[l] ? 0.0 : 1.0;
  }
  fast_path_detail::solve_masked<M>(G, c, keep, ok, simplex, pivot_tol, accept_tol, y, out.solved, factored,
                                    out.residual);
  for (int i = 0; i < M; ++i) {
    for (int l = 0; l < W; ++l) out.x[i][l] = y[i][l];
  }
}

}  // namespace torchmoo
