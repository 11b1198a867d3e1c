// One QP, start to finish: load and check the input, normalize, run the chosen method, compute the
// KKT residual and store the solution. Host/device code: the CPU and CUDA kernels call this per problem.
#pragma once

#include "qp_active_set.h"
#include "qp_frank_wolfe.h"

namespace torchmoo {

enum QPMethod : int32_t { kActiveSet = 0, kFrankWolfe = 1 };

struct QPOptions {
  bool simplex;      // min_norm_simplex (true) or nonneg_qp (false)
  int32_t method;    // QPMethod
  int32_t max_iter;  // already resolved from the user's value or the default
  // The host accepts only finite positive values or -1 (make_qp_options), so "not positive" below
  // means exactly the -1 sentinel.
  double tol;        // optimality tolerance of the normalized problem (-1: the method's default)
  double radius;     // nonneg Frank-Wolfe: bound on sum(x); -1 means "derive a certified bound"
  double sym_tol;    // relative asymmetry tolerance
  // Pivot tolerances follow the input precision: a Gram matrix rounded to float32 is PSD only to
  // about 1e-7 of its scale, so smaller pivots are noise (singular) and small negative ones are not
  // evidence of indefiniteness.
  double pivot_tol;
  double not_psd_tol;
  // G counts as positive semi-definite when its smallest eigenvalue is >= -psd_shift * max|G|.
  double psd_shift;
};

C10_HOST_DEVICE inline QPTolerances tolerances_for(const QPOptions& opt) {
  QPTolerances tol = default_qp_tolerances();
  tol.pivot = opt.pivot_tol;
  tol.not_psd = opt.not_psd_tol;
  return tol;
}

struct QPOutcome {
  int32_t status;
  int32_t iterations;
  double kkt_residual;
  bool converged;
};

// Certified bound for the nonneg QP: at the optimum x'Gx = -c'x, and with x = s w (w on the simplex),
// s = -c'w / w'Gw <= max_i(-c_i)_+ / min_{w in simplex} w'Gw.
template <bool kC>
C10_HOST_DEVICE inline int32_t certified_radius(const QPWorkspace<kC>& ws, int64_t m, const QPTolerances& tol,
                                                double* R) {
  double most_negative = 0.0;
  for (int64_t i = 0; i < m; ++i) most_negative = dmax(most_negative, -ws.c[i]);
  if (most_negative == 0.0) {
    *R = 0.0;  // c >= 0 and G PSD: x = 0 is optimal
    return kQPOk;
  }
  for (int64_t i = 0; i < m; ++i) {
    ws.c0[i] = ws.c[i];
    ws.c[i] = 0.0;
  }
  ActiveSetQP<kC> qp(ws, m, /*simplex=*/true, tol);
  const QPResult r = qp.solve(static_cast<int32_t>(50 + 10 * m));
  double gmin = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t k = 0; k < m; ++k) gmin += ws.x[i] * ws.G[i * m + k] * ws.x[k];
  }
  for (int64_t i = 0; i < m; ++i) ws.c[i] = ws.c0[i];
  if (r.status != kQPOk && r.status != kQPMaxIter) return r.status;
  // w'Gw of a point short of the minimizer overestimates the minimum and would make R too small:
  // only a converged solve certifies the bound.
  if (r.status == kQPMaxIter || !(gmin > 1e-12)) return kQPNeedsRadius;
  *R = most_negative / gmin * (1.0 + 1e-6);
  return kQPOk;
}

// loadG(i, j), loadC(i) read the input as double; storeX(i, value) writes the solution.
// M > 0 fixes m at compile time (the CPU kernel instantiates small sizes); M = 0 reads it at run time.
template <bool kC, int M = 0, typename LoadG, typename LoadC, typename StoreX>
C10_HOST_DEVICE inline QPOutcome solve_one_qp(const QPWorkspace<kC>& ws, int64_t m_runtime, LoadG loadG,
                                              LoadC loadC, bool has_c, StoreX storeX, const QPOptions& opt) {
  const int64_t m = M > 0 ? M : m_runtime;
  QPOutcome out{kQPOk, 0, 0.0, true};
  double scale = 0.0;
  out.status = load_problem<kC, M>(ws, m, loadG, loadC, has_c, opt.sym_tol, &scale);
  if (out.status != kQPOk) {
    for (int64_t i = 0; i < m; ++i) storeX(i, 0.0);
    out.converged = false;
    return out;
  }
  if (out.status == kQPOk && scale > 0.0) out.status = check_psd<kC, M>(ws, m, opt.psd_shift);
  if (out.status != kQPOk) {
    for (int64_t i = 0; i < m; ++i) storeX(i, 0.0);
    out.converged = false;
    return out;
  }
  if (scale == 0.0) {
    // G = 0 and c = 0: every feasible point is optimal; return the symmetric one.
    for (int64_t i = 0; i < m; ++i) storeX(i, opt.simplex ? 1.0 / static_cast<double>(m) : 0.0);
    return out;
  }
  QPResult r{kQPOk, 0, 0.0};
  if (opt.method == kActiveSet) {
    QPTolerances tol = tolerances_for(opt);
    if (opt.tol > 0.0) tol.optimality = opt.tol;
    ActiveSetQP<kC, M> qp(ws, m, opt.simplex, tol);
    r = qp.solve(opt.max_iter);
  } else if (opt.simplex) {
    r = frank_wolfe_simplex(ws, m, opt.max_iter, opt.tol > 0.0 ? opt.tol : 1e-6);
  } else {
    double R = opt.radius;
    if (!(R > 0.0)) r.status = certified_radius(ws, m, tolerances_for(opt), &R);
    if (r.status == kQPOk) {
      if (R == 0.0) {
        for (int64_t i = 0; i < m; ++i) ws.x[i] = 0.0;
      } else {
        r = frank_wolfe_nonneg(ws, m, opt.max_iter, opt.tol > 0.0 ? opt.tol : 1e-6, R);
      }
    }
  }
  out.iterations = r.iterations;
  if (r.status != kQPOk && r.status != kQPMaxIter) {
    out.status = r.status;
    out.converged = false;
    for (int64_t i = 0; i < m; ++i) storeX(i, 0.0);
    return out;
  }
  out.converged = (r.status == kQPOk);
  out.kkt_residual = opt.simplex ? simplex_kkt_residual<kC, M>(ws, m) : nonneg_kkt_residual<kC, M>(ws, m);
  // The solution is invariant under the joint scaling of G and c.
  for (int64_t i = 0; i < m; ++i) storeX(i, ws.x[i]);
  return out;
}

}  // namespace torchmoo
