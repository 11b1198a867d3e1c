// Frank-Wolfe solvers for the same two QPs as qp_active_set.h, kept for comparison with the
// approximate solvers other libraries use (Sener & Koltun's MinNormSolver is plain Frank-Wolfe).
//
//   simplex mode: plain Frank-Wolfe with exact line search, started at the best vertex.
//   nonneg mode:  away-step Frank-Wolfe on the scaled simplex {x >= 0, sum(x) <= R}, whose vertices are
//                 0 and R e_i; the weight of vertex R e_i is x_i / R and that of 0 is 1 - sum(x) / R.
//
// Both keep Gx up to date in O(m) per iteration and stop when the Frank-Wolfe gap, an upper bound on
// the suboptimality, falls below tol (normalized problem) or after max_iter iterations.
#pragma once

#include "qp_active_set.h"

namespace torchmoo {

template <bool kC>
C10_HOST_DEVICE inline QPResult frank_wolfe_simplex(const QPWorkspace<kC>& ws, int64_t m, int32_t max_iter,
                                                    double tol) {
  QPResult res{kQPOk, 0, 0.0};
  const auto Gx = ws.u;
  int64_t k = 0;
  double best = 0.5 * ws.G[0] + ws.c[0];
  for (int64_t i = 1; i < m; ++i) {
    const double val = 0.5 * ws.G[i * m + i] + ws.c[i];
    if (val < best) {
      best = val;
      k = i;
    }
  }
  for (int64_t i = 0; i < m; ++i) {
    ws.x[i] = (i == k) ? 1.0 : 0.0;
    Gx[i] = ws.G[i * m + k];
  }
  res.status = kQPMaxIter;
  for (; res.iterations < max_iter; ++res.iterations) {
    double xg = 0.0, xGx = 0.0, gmin = 0.0;
    int64_t s = 0;
    for (int64_t i = 0; i < m; ++i) {
      const double gi = Gx[i] + ws.c[i];
      xg += ws.x[i] * gi;
      xGx += ws.x[i] * Gx[i];
      if (i == 0 || gi < gmin) {
        gmin = gi;
        s = i;
      }
    }
    const double gap = xg - gmin;
    if (gap <= tol) {
      res.status = kQPOk;
      break;
    }
    // d = e_s - x: curvature d'Gd = G_ss - 2 (Gx)_s + x'Gx, slope g'd = -gap.
    const double curv = ws.G[s * m + s] - 2.0 * Gx[s] + xGx;
    const double gamma = curv > 0.0 ? dmin(1.0, gap / curv) : 1.0;
    for (int64_t i = 0; i < m; ++i) {
      ws.x[i] *= (1.0 - gamma);
      Gx[i] = (1.0 - gamma) * Gx[i] + gamma * ws.G[i * m + s];
    }
    ws.x[s] += gamma;
  }
  return res;
}

// Away-step Frank-Wolfe on {x >= 0, sum(x) <= R}; x starts at 0.
template <bool kC>
C10_HOST_DEVICE inline QPResult frank_wolfe_nonneg(const QPWorkspace<kC>& ws, int64_t m, int32_t max_iter, double tol,
                                                   double R) {
  QPResult res{kQPOk, 0, 0.0};
  const auto Gx = ws.u;
  for (int64_t i = 0; i < m; ++i) {
    ws.x[i] = 0.0;
    Gx[i] = 0.0;
  }
  double sum_x = 0.0;
  res.status = kQPMaxIter;
  for (; res.iterations < max_iter; ++res.iterations) {
    double xg = 0.0, xGx = 0.0;
    // Toward vertex: 0 (value 0) or R e_s (value R g_s). Away vertex: among active vertices the one
    // with the largest value: 0 if sum(x) < R, R e_a if x_a > 0.
    int64_t s = -1, a = -1;
    double toward = 0.0, away = -1e300;
    if (sum_x < R * (1.0 - 1e-15)) away = 0.0;
    for (int64_t i = 0; i < m; ++i) {
      const double gi = Gx[i] + ws.c[i];
      xg += ws.x[i] * gi;
      xGx += ws.x[i] * Gx[i];
      if (R * gi < toward) {
        toward = R * gi;
        s = i;
      }
      if (ws.x[i] > 0.0 && R * gi > away) {
        away = R * gi;
        a = i;
      }
    }
    const double fw_gap = xg - toward;
    if (fw_gap <= tol) {
      res.status = kQPOk;
      break;
    }
    const double away_gap = away - xg;
    // Direction d and its step bound; v_dir is the vertex moved toward (+) or away from (-).
    double slope, curv, gamma_max;
    int64_t vtx;
    double sign;
    if (fw_gap >= away_gap) {
      vtx = s;  // d = v - x, v = R e_s (or 0 when s < 0)
      sign = 1.0;
      gamma_max = 1.0;
      slope = -fw_gap;
    } else {
      vtx = a;  // d = x - v
      sign = -1.0;
      const double wv = (a < 0) ? 1.0 - sum_x / R : ws.x[a] / R;
      gamma_max = wv / (1.0 - wv);
      slope = -away_gap;
    }
    // v'Gv - 2 v'Gx + x'Gx is the same for d = v - x and d = x - v.
    const double vGv = vtx < 0 ? 0.0 : R * R * ws.G[vtx * m + vtx];
    const double vGx = vtx < 0 ? 0.0 : R * Gx[vtx];
    curv = vGv - 2.0 * vGx + xGx;
    double gamma = curv > 0.0 ? dmin(gamma_max, -slope / curv) : gamma_max;
    if (!(gamma < 1e300)) gamma = gamma_max;
    // x <- x + gamma * sign * (v - x)
    const double step = gamma * sign;
    for (int64_t i = 0; i < m; ++i) {
      const double vi = (i == vtx) ? R : 0.0;
      const double Gvi = vtx < 0 ? 0.0 : R * ws.G[i * m + vtx];
      ws.x[i] += step * (vi - ws.x[i]);
      Gx[i] += step * (Gvi - Gx[i]);
      if (ws.x[i] < 0.0) ws.x[i] = 0.0;  // a full away step lands exactly on the face
    }
    sum_x = 0.0;
    for (int64_t i = 0; i < m; ++i) sum_x += ws.x[i];
  }
  return res;
}

}  // namespace torchmoo
