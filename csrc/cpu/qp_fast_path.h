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

// loadG(lane, i, j), loadC(lane, i) read problem `lane` of the block as double. Lanes >= count are
// padded with the identity and never reported as solved.
template <int M, typename LoadG, typename LoadC>
inline void qp_fast_path(int count, LoadG loadG, LoadC loadC, bool has_c, bool simplex, double sym_tol,
                         double pivot_tol, double accept_tol, FastPathOut& out) {
  static_assert(M >= 1 && M <= 8, "fast path is for m <= 8");
  constexpr int W = kLanes;
  double G[M][M][W], L[M][M][W], c[M][W], z1[M][W], zc[M][W], y[M][W];
  double sG[W], s[W], asym[W], nonfinite[W];
  bool ok[W];
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
  // Scale, symmetry and finiteness, as in load_problem.
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < M; ++j) {
      for (int l = 0; l < W; ++l) {
        const double a = G[i][j][l], b = G[j][i][l];
        nonfinite[l] += a - a;
        sG[l] = dmax(sG[l], dabs(a));
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
    ok[l] = (l < count) & (nonfinite[l] == 0.0) & (asym[l] <= sym_tol * sG[l]) & (s[l] > 0.0);
    s[l] = ok[l] ? 1.0 / s[l] : 1.0;  // from here on s holds the inverse scale
  }
  // The full-support KKT solution needs only a factorization of G itself (the simplex multiplier
  // nu absorbs what H = G + 11' would add on sum(x) = 1), and a successful Cholesky of G certifies it
  // positive definite, so accepted lanes need no separate PSD check.
  for (int i = 0; i < M; ++i) {
    for (int j = i; j < M; ++j) {
      for (int l = 0; l < W; ++l) {
        const double v = 0.5 * (G[i][j][l] + G[j][i][l]) * s[l];
        G[i][j][l] = v;
        G[j][i][l] = v;
      }
    }
    for (int l = 0; l < W; ++l) c[i][l] *= s[l];
  }
  // Cholesky of G with the same singularity test as the active-set solver. Every loop
  // has the lanes innermost so that it vectorizes; `bad` counts failed tests per lane.
  double bad[W], acc[W], acc2[W];
  for (int l = 0; l < W; ++l) bad[l] = ok[l] ? 0.0 : 1.0;
  for (int k = 0; k < M; ++k) {
    for (int l = 0; l < W; ++l) acc[l] = G[k][k][l];
    for (int q = 0; q < k; ++q) {
      for (int l = 0; l < W; ++l) acc[l] -= L[k][q][l] * L[k][q][l];
    }
    for (int l = 0; l < W; ++l) {
      const bool pivot_ok = acc[l] > pivot_tol * G[k][k][l];
      bad[l] += pivot_ok ? 0.0 : 1.0;
      L[k][k][l] = 1.0 / __builtin_sqrt(pivot_ok ? acc[l] : 1.0);  // the diagonal holds 1 / L_kk
    }
    for (int i = k + 1; i < M; ++i) {
      for (int l = 0; l < W; ++l) acc[l] = G[i][k][l];
      for (int q = 0; q < k; ++q) {
        for (int l = 0; l < W; ++l) acc[l] -= L[i][q][l] * L[k][q][l];
      }
      for (int l = 0; l < W; ++l) L[i][k][l] = acc[l] * L[k][k][l];
    }
  }
  // z1 = L^{-1} 1, zc = L^{-1} c, then y = L'^{-1}(nu z1 - zc) or -L'^{-1} zc.
  for (int p = 0; p < M; ++p) {
    for (int l = 0; l < W; ++l) {
      acc[l] = 1.0;
      acc2[l] = c[p][l];
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
  // Accept strictly positive solutions whose KKT residual verifies (residual as in qp_active_set.h).
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
      bad[l] += yi > 0.0 ? 0.0 : 1.0;
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
    out.solved[l] = (bad[l] == 0.0) & (r <= accept_tol);
    out.residual[l] = r;
  }
  for (int i = 0; i < M; ++i) {
    for (int l = 0; l < W; ++l) out.x[i][l] = y[i][l];
  }
}

}  // namespace torchmoo
