// Exact primal active-set solver for the two small QPs every torchmoo method stands on:
//
//   simplex mode:  min 0.5 x'Gx + c'x   s.t. x >= 0, sum(x) = 1     (MGDA min-norm point, with a linear term)
//   nonneg mode:   min 0.5 x'Gx + c'x   s.t. x >= 0                 (the PNG dual, Eq. 10)
//
// G is symmetric positive semi-definite, possibly singular. The method is the inertia-controlling
// primal active-set method (Gill & Murray; Wolfe's minimum-norm-point algorithm is its special case):
// the free set F always has a positive definite reduced Hessian, kept as a Cholesky factor that is
// updated (append a row) and downdated (Givens rotations) in O(|F|^2) per change. When adding an index
// would make the reduced Hessian singular, the zero-curvature direction is a descent ray; we follow it
// to the first blocking bound (simplex) or report unboundedness (nonneg).
//
// Simplex trick: on sum(x) = 1, x'(G + t 11')x = x'Gx + t, so we factor H = G + t 11' (t > 0). For PSD G,
// H_FF is positive definite exactly when G is positive definite on {d : sum(d) = 0} restricted to F,
// so one Cholesky factor serves both the equality-constrained solve and the singularity test.
//
// Everything here is host/device code working in double precision on strided workspace, so that the
// CPU kernel (contiguous workspace per thread) and the CUDA kernel (interleaved workspace, one thread
// per problem) run the very same algorithm.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace torchmoo {

// Per-problem outcome, reported back to the host so errors become readable exceptions.
enum QPStatus : int32_t {
  kQPOk = 0,
  kQPNonFinite = 1,
  kQPAsymmetric = 2,
  kQPNotPSD = 3,
  kQPUnbounded = 4,
  kQPMaxIter = 5,     // not an error: returned with converged = false
  kQPNeedsRadius = 6,  // Frank-Wolfe on the nonneg QP without a certified bound on sum(x)
};

// NaN and infinity are the only doubles for which v - v != 0 (works on host and device alike).
C10_HOST_DEVICE inline bool is_finite(double v) { return v - v == 0.0; }

// A strided view of a double array: element k lives at data[k * stride].
struct StridedVec {
  double* data;
  int64_t stride;
  C10_HOST_DEVICE inline double& operator[](int64_t k) const { return data[k * stride]; }
};

struct StridedIdx {
  int32_t* data;
  int64_t stride;
  C10_HOST_DEVICE inline int32_t& operator[](int64_t k) const { return data[k * stride]; }
};

// Workspace for one problem of size m: doubles_needed(m) doubles and ints_needed(m) ints.
struct QPWorkspace {
  StridedVec G;    // m*m, normalized copy of the (symmetrized) input
  StridedVec L;    // m*m, Cholesky factor of H_FF, row-major with leading dimension m
  StridedVec x;    // m, current iterate (full length)
  StridedVec g;    // m, gradient G x + c (normalized)
  StridedVec c;    // m, normalized linear term
  StridedVec u;    // m, scratch
  StridedVec v;    // m, scratch
  StridedVec y;    // m, scratch
  StridedVec c0;   // m, scratch copy of c
  StridedIdx F;    // m, free set in factor order
  StridedIdx inF;  // m, position of index i in F, or -1

  C10_HOST_DEVICE static int64_t doubles_needed(int64_t m) { return 2 * m * m + 7 * m; }
  C10_HOST_DEVICE static int64_t ints_needed(int64_t m) { return 2 * m; }

  C10_HOST_DEVICE static QPWorkspace make(double* dbuf, int32_t* ibuf, int64_t m, int64_t stride) {
    QPWorkspace ws;
    int64_t off = 0;
    ws.G = {dbuf + off * stride, stride}; off += m * m;
    ws.L = {dbuf + off * stride, stride}; off += m * m;
    ws.x = {dbuf + off * stride, stride}; off += m;
    ws.g = {dbuf + off * stride, stride}; off += m;
    ws.c = {dbuf + off * stride, stride}; off += m;
    ws.u = {dbuf + off * stride, stride}; off += m;
    ws.v = {dbuf + off * stride, stride}; off += m;
    ws.y = {dbuf + off * stride, stride}; off += m;
    ws.c0 = {dbuf + off * stride, stride}; off += m;
    ws.F = {ibuf, stride};
    ws.inF = {ibuf + m * stride, stride};
    return ws;
  }
};

struct QPResult {
  int32_t status;
  int32_t iterations;
  double kkt_residual;
};

// Tolerances of the normalized problem (max |G_ij|, |c_i| == 1).
struct QPTolerances {
  double optimality;  // stop when no inactive index has reduced gradient below -optimality
  double pivot;       // relative Cholesky pivot below which the reduced Hessian counts as singular
  double not_psd;     // relative negative pivot beyond which G is declared not PSD
};

C10_HOST_DEVICE inline QPTolerances default_qp_tolerances() { return {1e-13, 1e-11, 1e-7}; }

// ---------------------------------------------------------------------------------------------
// Loading: copy (G + G')/2 and c into the workspace, normalized by s = max(|G|, |c|), and check the
// input. `load` reads element (i, j) of G and element i of c in any dtype (a functor), and returns the
// status plus the scale s (0 when G and c are both zero).

template <typename LoadG, typename LoadC>
C10_HOST_DEVICE inline int32_t load_problem(const QPWorkspace& ws, int64_t m, LoadG loadG, LoadC loadC,
                                            bool has_c, double sym_tol, double* scale_out) {
  double s = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < m; ++j) {
      const double gij = loadG(i, j);
      if (!is_finite(gij)) return kQPNonFinite;
      ws.G[i * m + j] = gij;
      s = fmax(s, fabs(gij));
    }
    const double ci = has_c ? loadC(i) : 0.0;
    if (!is_finite(ci)) return kQPNonFinite;
    ws.c[i] = ci;
  }
  const double sG = s;
  for (int64_t i = 0; i < m; ++i) s = fmax(s, fabs(ws.c[i]));
  // Symmetry is judged relative to the scale of G itself.
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = i + 1; j < m; ++j) {
      const double a = ws.G[i * m + j], b = ws.G[j * m + i];
      if (fabs(a - b) > sym_tol * sG) return kQPAsymmetric;
    }
  }
  *scale_out = s;
  if (s == 0.0) return kQPOk;
  const double inv = 1.0 / s;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = i; j < m; ++j) {
      const double sym = 0.5 * (ws.G[i * m + j] + ws.G[j * m + i]) * inv;
      ws.G[i * m + j] = sym;
      ws.G[j * m + i] = sym;
    }
    ws.c[i] *= inv;
  }
  for (int64_t i = 0; i < m; ++i) {
    if (ws.G[i * m + i] < 0.0) return kQPNotPSD;
  }
  return kQPOk;
}

// ---------------------------------------------------------------------------------------------
// The solver.

class ActiveSetQP {
 public:
  C10_HOST_DEVICE ActiveSetQP(const QPWorkspace& ws, int64_t m, bool simplex, QPTolerances tol)
      : ws_(ws), m_(m), simplex_(simplex), tol_(tol), t_(simplex ? 1.0 : 0.0), nF_(0) {}

  // Solves the normalized problem in the workspace; the solution is left in ws.x.
  C10_HOST_DEVICE QPResult solve(int32_t max_iter) {
    QPResult res{kQPOk, 0, 0.0};
    for (int64_t i = 0; i < m_; ++i) {
      ws_.x[i] = 0.0;
      ws_.inF[i] = -1;
    }
    nF_ = 0;
    if (simplex_) {
      // Start at the best vertex: x = e_k minimizes 0.5 G_kk + c_k among the vertices.
      int64_t k = 0;
      double best = 0.5 * ws_.G[0] + ws_.c[0];
      for (int64_t i = 1; i < m_; ++i) {
        const double val = 0.5 * ws_.G[i * m_ + i] + ws_.c[i];
        if (val < best) {
          best = val;
          k = i;
        }
      }
      ws_.x[k] = 1.0;
      const int32_t st = append(k);
      if (st != kQPOk) {
        res.status = st;
        return res;
      }
    }
    while (true) {
      compute_gradient();
      // Multiplier of the equality constraint: at a subspace minimizer g_F = nu 1, and nu = x'g.
      double nu = 0.0;
      if (simplex_) {
        for (int64_t p = 0; p < nF_; ++p) {
          const int32_t i = ws_.F[p];
          nu += ws_.x[i] * ws_.g[i];
        }
      }
      int64_t j = -1;
      double most_negative = -tol_.optimality;
      for (int64_t i = 0; i < m_; ++i) {
        if (ws_.inF[i] >= 0) continue;
        const double r = ws_.g[i] - nu;
        if (r < most_negative) {
          most_negative = r;
          j = i;
        }
      }
      if (j < 0) break;  // KKT holds
      if (res.iterations >= max_iter) {
        res.status = kQPMaxIter;
        break;
      }
      ++res.iterations;
      int32_t st = append(j);
      if (st == kSingular) {
        st = ray_step(j);
        if (st != kQPOk) {
          res.status = st;
          return res;
        }
        ++res.iterations;
        st = append(j);
        if (st == kSingular) st = kQPOk;  // numerically borderline: retry from the new point next round
      }
      if (st != kQPOk) {
        res.status = st;
        return res;
      }
      // Subspace minimization: step toward the minimizer on F, dropping blocking indices.
      while (nF_ > 0) {
        subspace_minimizer();  // into ws.y (indexed by position in F)
        double alpha = 1.0;
        int64_t block = -1;
        for (int64_t p = 0; p < nF_; ++p) {
          const int32_t i = ws_.F[p];
          const double xi = ws_.x[i], yi = ws_.y[p];
          if (yi <= 0.0) {
            // a <= 1 always, so the first candidate is taken and later ones only if smaller.
            const double a = xi <= 0.0 ? 0.0 : xi / (xi - yi);
            if (block < 0 || a < alpha) {
              alpha = a;
              block = p;
            }
          }
        }
        if (block < 0) {
          for (int64_t p = 0; p < nF_; ++p) ws_.x[ws_.F[p]] = ws_.y[p];
          break;
        }
        for (int64_t p = 0; p < nF_; ++p) {
          const int32_t i = ws_.F[p];
          ws_.x[i] += alpha * (ws_.y[p] - ws_.x[i]);
        }
        const int32_t i_block = ws_.F[block];
        remove(block);
        ws_.x[i_block] = 0.0;
        ++res.iterations;
        if (res.iterations >= max_iter) break;
      }
      if (simplex_) renormalize();
    }
    return res;
  }

 private:
  static constexpr int32_t kSingular = -1;

  C10_HOST_DEVICE inline double H(int64_t i, int64_t j) const { return ws_.G[i * m_ + j] + t_; }
  C10_HOST_DEVICE inline double& Lref(int64_t p, int64_t q) const { return ws_.L[p * m_ + q]; }

  C10_HOST_DEVICE void compute_gradient() {
    for (int64_t i = 0; i < m_; ++i) {
      double acc = ws_.c[i];
      for (int64_t p = 0; p < nF_; ++p) {
        const int32_t k = ws_.F[p];
        acc += ws_.G[i * m_ + k] * ws_.x[k];
      }
      ws_.g[i] = acc;
    }
  }

  // Solve L z = b in place (b indexed by position), forward substitution.
  C10_HOST_DEVICE void forward(StridedVec b, int64_t n) const {
    for (int64_t p = 0; p < n; ++p) {
      double acc = b[p];
      for (int64_t q = 0; q < p; ++q) acc -= Lref(p, q) * b[q];
      b[p] = acc / Lref(p, p);
    }
  }
  // Solve L' z = b in place, backward substitution.
  C10_HOST_DEVICE void backward(StridedVec b, int64_t n) const {
    for (int64_t p = n - 1; p >= 0; --p) {
      double acc = b[p];
      for (int64_t q = p + 1; q < n; ++q) acc -= Lref(q, p) * b[q];
      b[p] = acc / Lref(p, p);
    }
  }

  // Append index j to F, extending the Cholesky factor by one row. Returns kSingular (F unchanged)
  // when the new pivot vanishes, kQPNotPSD when it is clearly negative.
  C10_HOST_DEVICE int32_t append(int64_t j) {
    const int64_t n = nF_;
    for (int64_t p = 0; p < n; ++p) ws_.u[p] = H(ws_.F[p], j);
    forward(ws_.u, n);
    double d2 = H(j, j);
    for (int64_t p = 0; p < n; ++p) d2 -= ws_.u[p] * ws_.u[p];
    const double hjj = H(j, j);
    if (d2 < -tol_.not_psd) return kQPNotPSD;  // the normalized problem has entries of order 1
    if (!(d2 > tol_.pivot * hjj) || d2 <= 0.0) return kSingular;
    for (int64_t p = 0; p < n; ++p) Lref(n, p) = ws_.u[p];
    Lref(n, n) = sqrt(d2);
    ws_.F[n] = static_cast<int32_t>(j);
    ws_.inF[j] = static_cast<int32_t>(n);
    nF_ = n + 1;
    return kQPOk;
  }

  // Remove position r from F: delete row r of L and restore triangularity with Givens rotations.
  C10_HOST_DEVICE void remove(int64_t r) {
    const int64_t n = nF_;
    ws_.inF[ws_.F[r]] = -1;
    for (int64_t p = r; p < n - 1; ++p) {
      ws_.F[p] = ws_.F[p + 1];
      ws_.inF[ws_.F[p]] = static_cast<int32_t>(p);
      for (int64_t q = 0; q <= p + 1; ++q) Lref(p, q) = Lref(p + 1, q);
    }
    // Rows r..n-2 now have one entry beyond the diagonal (column p+1); rotate it away.
    for (int64_t p = r; p < n - 1; ++p) {
      const double a = Lref(p, p), b = Lref(p, p + 1);
      const double rho = hypot(a, b);
      const double cs = a / rho, sn = b / rho;
      for (int64_t i = p; i < n - 1; ++i) {
        const double xa = Lref(i, p), xb = Lref(i, p + 1);
        Lref(i, p) = cs * xa + sn * xb;
        Lref(i, p + 1) = -sn * xa + cs * xb;
      }
      Lref(p, p + 1) = 0.0;
    }
    nF_ = n - 1;
  }

  // Minimizer of the quadratic restricted to F (and to sum = 1 in simplex mode), into ws.y by position.
  C10_HOST_DEVICE void subspace_minimizer() {
    const int64_t n = nF_;
    if (simplex_) {
      // y = nu H^{-1} 1 - H^{-1} c with nu = (1 + 1'H^{-1}c) / (1'H^{-1}1).
      for (int64_t p = 0; p < n; ++p) {
        ws_.u[p] = 1.0;
        ws_.v[p] = ws_.c[ws_.F[p]];
      }
      forward(ws_.u, n);
      backward(ws_.u, n);
      forward(ws_.v, n);
      backward(ws_.v, n);
      double su = 0.0, sv = 0.0;
      for (int64_t p = 0; p < n; ++p) {
        su += ws_.u[p];
        sv += ws_.v[p];
      }
      const double nu = (1.0 + sv) / su;
      for (int64_t p = 0; p < n; ++p) ws_.y[p] = nu * ws_.u[p] - ws_.v[p];
    } else {
      for (int64_t p = 0; p < n; ++p) ws_.y[p] = -ws_.c[ws_.F[p]];
      forward(ws_.y, n);
      backward(ws_.y, n);
    }
  }

  // F ∪ {j} has a singular reduced Hessian: d = (-H_FF^{-1} H_Fj, 1) is a zero-curvature descent
  // direction. Follow it to the first bound and drop that index.
  C10_HOST_DEVICE int32_t ray_step(int64_t j) {
    const int64_t n = nF_;
    for (int64_t p = 0; p < n; ++p) ws_.u[p] = H(ws_.F[p], j);
    forward(ws_.u, n);
    backward(ws_.u, n);  // u = H_FF^{-1} H_Fj, direction on F is -u
    double alpha = 0.0;
    int64_t block = -1;
    for (int64_t p = 0; p < n; ++p) {
      if (ws_.u[p] > 0.0) {
        const double a = ws_.x[ws_.F[p]] / ws_.u[p];
        if (block < 0 || a < alpha) {
          alpha = a;
          block = p;
        }
      }
    }
    if (block < 0) return kQPUnbounded;  // only possible in nonneg mode
    for (int64_t p = 0; p < n; ++p) ws_.x[ws_.F[p]] -= alpha * ws_.u[p];
    ws_.x[j] += alpha;
    const int32_t i_block = ws_.F[block];
    remove(block);
    ws_.x[i_block] = 0.0;
    return kQPOk;
  }

  // Keep the iterate exactly on the simplex against round-off.
  C10_HOST_DEVICE void renormalize() {
    double s = 0.0;
    for (int64_t p = 0; p < nF_; ++p) {
      const int32_t i = ws_.F[p];
      if (ws_.x[i] < 0.0) ws_.x[i] = 0.0;
      s += ws_.x[i];
    }
    if (s > 0.0) {
      for (int64_t p = 0; p < nF_; ++p) ws_.x[ws_.F[p]] /= s;
    }
  }

  QPWorkspace ws_;
  int64_t m_;
  bool simplex_;
  QPTolerances tol_;
  double t_;
  int64_t nF_;
};

// ---------------------------------------------------------------------------------------------
// KKT residuals of the normalized problem (see the README for the definitions); x in ws.x.

C10_HOST_DEVICE inline double simplex_kkt_residual(const QPWorkspace& ws, int64_t m) {
  double gmin = 0.0, sum = 0.0, neg = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    double acc = ws.c[i];
    for (int64_t k = 0; k < m; ++k) acc += ws.G[i * m + k] * ws.x[k];
    ws.g[i] = acc;
    gmin = (i == 0 || acc < gmin) ? acc : gmin;
    sum += ws.x[i];
    neg = fmax(neg, -ws.x[i]);
  }
  double gap = 0.0;
  for (int64_t i = 0; i < m; ++i) gap += ws.x[i] * (ws.g[i] - gmin);
  return fmax(fmax(gap, neg), fabs(sum - 1.0));
}

C10_HOST_DEVICE inline double nonneg_kkt_residual(const QPWorkspace& ws, int64_t m) {
  double xmax = 1.0, neg = 0.0, dual = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    double acc = ws.c[i];
    for (int64_t k = 0; k < m; ++k) acc += ws.G[i * m + k] * ws.x[k];
    ws.g[i] = acc;
    xmax = fmax(xmax, ws.x[i]);
    neg = fmax(neg, -ws.x[i]);
    dual = fmax(dual, -acc);
  }
  double comp = 0.0;
  for (int64_t i = 0; i < m; ++i) comp = fmax(comp, ws.x[i] * fabs(ws.g[i]));
  return fmax(fmax(dual, comp / xmax), neg);
}

}  // namespace torchmoo
