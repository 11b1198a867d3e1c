// CPU fast path for batches of small QPs (m <= 8), vectorized across problems.
//
// Most QPs of multi-task learning have linearly independent gradients, and then the solution is often
// interior: all weights positive. For kLanes problems at once, laid out lane-innermost so that every
// loop is a fixed-length SIMD loop over problems, we factor the full system (H = G + 11' for the simplex,
// G for the nonneg QP), solve for the minimizer with every index free, and accept it for the lanes where
// it is strictly feasible and its KKT residual verifies. This is the unconstrained start of
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
                         double accept_tol, FastPathOut& out) {
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
  const double t = simplex ? 1.0 : 0.0;
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
  // Cholesky of H = G + t 11' with the same singularity test as the active-set solver.
  const QPTolerances tol = default_qp_tolerances();
  for (int k = 0; k < M; ++k) {
    for (int l = 0; l < W; ++l) {
      double d = G[k][k][l] + t;
      for (int q = 0; q < k; ++q) d -= L[k][q][l] * L[k][q][l];
      ok[l] = ok[l] & (d > tol.pivot * (G[k][k][l] + t));
      L[k][k][l] = ok[l] ? 1.0 / __builtin_sqrt(d) : 1.0;  // the diagonal holds 1 / L_kk
    }
    for (int i = k + 1; i < M; ++i) {
      for (int l = 0; l < W; ++l) {
        double v = G[i][k][l] + t;
        for (int q = 0; q < k; ++q) v -= L[i][q][l] * L[k][q][l];
        L[i][k][l] = v * L[k][k][l];
      }
    }
  }
  // z1 = L^{-1} 1, zc = L^{-1} c, then y = L'^{-1}(nu z1 - zc) or -L'^{-1} zc.
  for (int p = 0; p < M; ++p) {
    for (int l = 0; l < W; ++l) {
      double a1 = 1.0, ac = c[p][l];
      for (int q = 0; q < p; ++q) {
        a1 -= L[p][q][l] * z1[q][l];
        ac -= L[p][q][l] * zc[q][l];
      }
      z1[p][l] = a1 * L[p][p][l];
      zc[p][l] = ac * L[p][p][l];
    }
  }
  double nu[W];
  for (int l = 0; l < W; ++l) {
    double z11 = 0.0, z1c = 0.0;
    for (int p = 0; p < M; ++p) {
      z11 += z1[p][l] * z1[p][l];
      z1c += z1[p][l] * zc[p][l];
    }
    nu[l] = simplex ? (1.0 + z1c) / z11 : 0.0;
  }
  for (int p = M - 1; p >= 0; --p) {
    for (int l = 0; l < W; ++l) {
      double acc = simplex ? nu[l] * z1[p][l] - zc[p][l] : -zc[p][l];
      for (int q = p + 1; q < M; ++q) acc -= L[q][p][l] * y[q][l];
      y[p][l] = acc * L[p][p][l];
    }
  }
  // Accept strictly positive solutions whose KKT residual verifies (residual as in qp_active_set.h).
  for (int l = 0; l < W; ++l) {
    double sum = 0.0, gmin = 1e300, gap = 0.0, xmax = 1.0, dual = 0.0, comp = 0.0;
    bool positive = true;
    double g[M];
    for (int i = 0; i < M; ++i) {
      double acc = c[i][l];
      for (int k = 0; k < M; ++k) acc += G[i][k][l] * y[k][l];
      g[i] = acc;
      positive = positive & (y[i][l] > 0.0);
      sum += y[i][l];
      gmin = dmin(gmin, acc);
      xmax = dmax(xmax, y[i][l]);
      dual = dmax(dual, -acc);
      comp = dmax(comp, y[i][l] * dabs(acc));
    }
    double r;
    if (simplex) {
      for (int i = 0; i < M; ++i) gap += y[i][l] * (g[i] - gmin);
      r = dmax(gap, dabs(sum - 1.0));
    } else {
      r = dmax(dual, comp / xmax);
    }
    out.solved[l] = ok[l] & positive & (r <= accept_tol);
    out.residual[l] = r;
    for (int i = 0; i < M; ++i) out.x[i][l] = y[i][l];
  }
}

}  // namespace torchmoo
