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

// Scalar helpers that compile to single instructions on host and device (std::fmax and hypot would
// be library calls on the host, and the problem is normalized so squares cannot overflow).
C10_HOST_DEVICE inline double dmax(double a, double b) { return a > b ? a : b; }
C10_HOST_DEVICE inline double dmin(double a, double b) { return a < b ? a : b; }
C10_HOST_DEVICE inline double dabs(double a) { return a < 0.0 ? -a : a; }

// A view of an array whose element k lives at data[k * stride]. kContiguous makes the stride the
// compile-time constant 1 (CPU); otherwise it is the batch size (CUDA's interleaved layout).
template <bool kContiguous, typename T>
struct StridedArray {
  T* data;
  int64_t stride;
  C10_HOST_DEVICE inline T& operator[](int64_t k) const { return kContiguous ? data[k] : data[k * stride]; }
};

// Workspace for one problem of size m: doubles_needed(m) doubles and ints_needed(m) ints.
template <bool kContiguous>
struct QPWorkspace {
  using Vec = StridedArray<kContiguous, double>;
  using Idx = StridedArray<kContiguous, int32_t>;
  Vec G;     // m*m, normalized copy of the (symmetrized) input
  Vec L;     // m*m, Cholesky factor of H_FF, row-major with leading dimension m
  Vec invd;  // m, 1 / L_pp
  Vec z1;    // m, L^{-1} 1_F (simplex mode)
  Vec zc;    // m, L^{-1} c_F
  Vec x;     // m, current iterate (full length)
  Vec g;     // m, gradient G x + c (normalized)
  Vec c;     // m, normalized linear term
  Vec u;     // m, scratch
  Vec y;     // m, scratch
  Vec c0;    // m, scratch copy of c
  Idx F;     // m, free set in factor order
  Idx inF;   // m, position of index i in F, or -1

  C10_HOST_DEVICE static int64_t doubles_needed(int64_t m) { return 2 * m * m + 9 * m; }
  C10_HOST_DEVICE static int64_t ints_needed(int64_t m) { return 2 * m; }

  C10_HOST_DEVICE static QPWorkspace make(double* dbuf, int32_t* ibuf, int64_t m, int64_t stride) {
    QPWorkspace ws;
    int64_t off = 0;
    auto take = [&](int64_t len) {
      Vec v{dbuf + off * stride, stride};
      off += len;
      return v;
    };
    ws.G = take(m * m);
    ws.L = take(m * m);
    ws.invd = take(m);
    ws.z1 = take(m);
    ws.zc = take(m);
    ws.x = take(m);
    ws.g = take(m);
    ws.c = take(m);
    ws.u = take(m);
    ws.y = take(m);
    ws.c0 = take(m);
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
  double not_psd;     // negative pivot beyond which G is declared not PSD
};

C10_HOST_DEVICE inline QPTolerances default_qp_tolerances() { return {1e-13, 1e-11, 1e-7}; }

// ---------------------------------------------------------------------------------------------
// Loading: copy (G + G')/2 and c into the workspace, normalized by s = max(|G|, |c|), and check the
// input. loadG(i, j) and loadC(i) read the input in any dtype as double. Returns the status and
// writes the scale s (0 when G and c are both zero).

template <bool kC, int M = 0, typename LoadG, typename LoadC>
C10_HOST_DEVICE inline int32_t load_problem(const QPWorkspace<kC>& ws, int64_t m_runtime, LoadG loadG, LoadC loadC,
                                            bool has_c, double sym_tol, double* scale_out) {
  const int64_t m = M > 0 ? M : m_runtime;
  // One pass over the upper triangle: copy, scale, asymmetry and finiteness (x - x is 0 unless x is
  // NaN or infinite, so a running sum of them stays 0 exactly when everything is finite). Both
  // triangles are kept as given; they are averaged once the scale is known (below).
  double sG = 0.0, asym = 0.0, nonfinite = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    const double gii = loadG(i, i);
    ws.G[i * m + i] = gii;
    nonfinite += gii - gii;
    sG = dmax(sG, dabs(gii));
    for (int64_t j = i + 1; j < m; ++j) {
      const double a = loadG(i, j), b = loadG(j, i);
      nonfinite += (a - a) + (b - b);
      sG = dmax(sG, dmax(dabs(a), dabs(b)));
      asym = dmax(asym, dabs(a - b));
      ws.G[i * m + j] = a;
      ws.G[j * m + i] = b;
    }
  }
  double s = sG;
  for (int64_t i = 0; i < m; ++i) {
    const double ci = has_c ? loadC(i) : 0.0;
    nonfinite += ci - ci;
    ws.c[i] = ci;
    s = dmax(s, dabs(ci));
  }
  if (!(nonfinite == 0.0)) return kQPNonFinite;
  if (asym > sym_tol * sG) return kQPAsymmetric;  // judged relative to the scale of G itself
  *scale_out = s;
  if (s == 0.0) return kQPOk;
  // 1 / s overflows for s below 2^-1024 (subnormal input): scale such input up by an exact power of two
  // first. Halving before adding keeps (a + b) / 2 from overflowing for entries near the dtype's limit;
  // for all other input both are the same number as 0.5 * (a + b).
  const double pre = s < 0x1p-1000 ? 0x1p+600 : 1.0;
  const double inv = 1.0 / (s * pre);
  for (int64_t i = 0; i < m; ++i) {
    ws.G[i * m + i] = (ws.G[i * m + i] * pre) * inv;
    for (int64_t j = i + 1; j < m; ++j) {
      const double v = (0.5 * (ws.G[i * m + j] * pre) + 0.5 * (ws.G[j * m + i] * pre)) * inv;
      ws.G[i * m + j] = v;
      ws.G[j * m + i] = v;
    }
    ws.c[i] = (ws.c[i] * pre) * inv;
  }
  // A negative diagonal entry is left to check_psd, which judges it with the PSD tolerance.
  return kQPOk;
}

// ---------------------------------------------------------------------------------------------
// PSD certificate: G (normalized, in the workspace) is accepted when G + shift * max|G| * I has a
// Cholesky factorization, i.e. when its smallest eigenvalue is above -shift * max|G|. The shift absorbs
// the rounding of a singular Gram matrix (eigenvalues of about +-m * eps * max|G|) while a clearly
// indefinite G fails. ws.L is scratch here; the solver overwrites it.

template <bool kC, int M = 0>
C10_HOST_DEVICE inline int32_t check_psd(const QPWorkspace<kC>& ws, int64_t m_runtime, double shift) {
  const int64_t m = M > 0 ? M : m_runtime;
  double gmax = 0.0;
  for (int64_t i = 0; i < m * m; ++i) gmax = dmax(gmax, dabs(ws.G[i]));
  if (gmax == 0.0) return kQPOk;
  const double delta = shift * gmax;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j <= i; ++j) {
      double acc = ws.G[i * m + j] + (i == j ? delta : 0.0);
      for (int64_t k = 0; k < j; ++k) acc -= ws.L[i * m + k] * ws.L[j * m + k];
      if (i == j) {
        if (!(acc > 0.0)) return kQPNotPSD;
        ws.L[i * m + i] = sqrt(acc);
      } else {
        ws.L[i * m + j] = acc / ws.L[j * m + j];
      }
    }
  }
  // G passed: a negative diagonal entry (above -delta, or the factorization would have failed) is
  // rounding of a zero one. The solver reads diagonal entries as curvatures and would call a negative
  // one indefinite, so it gets the zero.
  for (int64_t i = 0; i < m; ++i) ws.G[i * m + i] = dmax(ws.G[i * m + i], 0.0);
  return kQPOk;
}

// ---------------------------------------------------------------------------------------------
// The solver. Besides L (H_FF = L L'), it keeps the forward-solved right-hand sides z1 = L^{-1} 1 and
// zc = L^{-1} c_F up to date: appending an index extends them by one entry, removing one applies the
// same Givens rotations as to L. A subspace minimizer then costs one backward substitution:
//   simplex: y = L'^{-1}(nu z1 - zc) with nu = (1 + z1.zc) / |z1|^2;   nonneg: y = -L'^{-1} zc.

template <bool kC, int M = 0>
class ActiveSetQP {
 public:
  C10_HOST_DEVICE ActiveSetQP(const QPWorkspace<kC>& ws, int64_t m, bool simplex, QPTolerances tol)
      : ws_(ws), m_(m), simplex_(simplex), tol_(tol), t_(simplex ? 1.0 : 0.0), nF_(0) {}

  // Solves the normalized problem in the workspace; the solution is left in ws.x (feasible even when
  // max_iter stops the solve). res.iterations counts the solves with the factor (subspace and ray
  // steps) and never exceeds max_iter: a step is paid for before it is taken, and when the budget is
  // spent the solve stops with kQPMaxIter unless the KKT conditions already hold.
  C10_HOST_DEVICE QPResult solve(int32_t max_iter) {
    QPResult res{kQPOk, 0, 0.0};
    for (int64_t i = 0; i < dim(); ++i) {
      ws_.x[i] = 0.0;
      ws_.inF[i] = kInactive;
    }
    nF_ = 0;
    n_set_aside_ = 0;
    n_dropped_ = 0;
    f_prev_ = 1e300;
    if (simplex_) {
      // Start from the uniform point with every index free when G is positive definite on the
      // simplex directions (the usual case when the gradients are independent): one factorization,
      // then the subspace step drops the indices that leave the support. Otherwise start at the best
      // vertex, x = e_k minimizing 0.5 G_kk + c_k, and add indices one at a time.
      bool full = true;
      for (int64_t i = 0; i < dim() && full; ++i) full = append(i) == kQPOk;
      if (full) {
        const double u = 1.0 / static_cast<double>(dim());
        for (int64_t i = 0; i < dim(); ++i) ws_.x[i] = u;
        // The uniform point is feasible but not a subspace minimizer, so the KKT test below does not
        // apply to it: without a step to spend, stop there.
        if (max_iter < 1) {
          res.status = kQPMaxIter;
          return res;
        }
        res.iterations = 1;
        const bool stationary = minimize_on_free_set(res, max_iter);
        renormalize();
        if (!stationary) {
          res.status = kQPMaxIter;
          return res;
        }
      } else {
        nF_ = 0;
        for (int64_t i = 0; i < dim(); ++i) ws_.inF[i] = kInactive;
        int64_t k = 0;
        double best = 0.5 * ws_.G[0] + ws_.c[0];
        for (int64_t i = 1; i < dim(); ++i) {
          const double val = 0.5 * ws_.G[i * dim() + i] + ws_.c[i];
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
    }
    while (true) {
      // Reduced gradients of the inactive indices. In simplex mode they are relative to the
      // multiplier of sum(x) = 1, nu = x'g (at a subspace minimizer g_F = nu 1).
      // Small compile-time sizes take a dense mat-vec (constant trip counts, vectorized); large
      // ones sum over the free set only.
      double xg = 0.0, xc = 0.0;  // x'(Gx + c) and x'c, for nu and the objective
      if (M > 0) {
        for (int64_t i = 0; i < M; ++i) {
          double acc = ws_.c[i];
          for (int64_t k = 0; k < M; ++k) acc += ws_.G[i * M + k] * ws_.x[k];
          ws_.g[i] = acc;
          xg += ws_.x[i] * acc;
          xc += ws_.x[i] * ws_.c[i];
        }
      } else {
        for (int64_t i = 0; i < dim(); ++i) ws_.g[i] = gradient(i);
        for (int64_t p = 0; p < nF_; ++p) {
          const int32_t i = ws_.F[p];
          xg += ws_.x[i] * ws_.g[i];
          xc += ws_.x[i] * ws_.c[i];
        }
      }
      const double nu = simplex_ ? xg : 0.0;
      // Anti-cycling. In exact arithmetic every iteration decreases the objective. When rounding
      // (a nearly singular G, often float32 data) makes one fail to, the indices it dropped could
      // re-enter and bring x back where it was; set them aside until the objective decreases again.
      const double f = 0.5 * (xg + xc);
      const bool progress = f < f_prev_ - 1e-15 * (1.0 + dabs(f_prev_));
      if (n_dropped_ > 0 || (progress && n_set_aside_ > 0)) {
        for (int64_t i = 0; i < dim(); ++i) {
          const int32_t s_i = ws_.inF[i];
          ws_.inF[i] = s_i == kDropped ? (progress ? kInactive : kSetAside)
                                       : (s_i == kSetAside && progress ? kInactive : s_i);
        }
        n_set_aside_ = progress ? 0 : n_set_aside_ + n_dropped_;
        n_dropped_ = 0;
      }
      if (progress) f_prev_ = f;
      int64_t j = -1;
      double most_negative = -tol_.optimality;
      for (int64_t i = 0; i < dim(); ++i) {
        const double r = ws_.g[i] - nu;
        const bool better = (ws_.inF[i] == kInactive) & (r < most_negative);  // & keeps it branch-free
        most_negative = better ? r : most_negative;
        j = better ? i : j;
      }
      if (j < 0) break;  // KKT holds
      if (res.iterations >= max_iter) {
        res.status = kQPMaxIter;
        break;
      }
      ++res.iterations;  // pays for the first step after j enters: a ray step or the subspace step
      int32_t st = append(j);
      while (st == kSingular) {
        // F + {j} has a zero-curvature direction: follow it to a bound, which drops an index from F.
        // Repeat until j fits (F shrinks each time; in simplex mode an empty F always fits), so that
        // j never carries weight outside the free set.
        st = ray_step(j);
        if (st != kQPOk) {
          res.status = st;
          return res;
        }
        st = append(j);
        if (st == kQPNotPSD) break;
        // The next step (another ray step or the subspace step) needs one more iteration. Stopping
        // here leaves x feasible, with weight on j even if j is not in F yet.
        if (res.iterations >= max_iter) {
          res.status = kQPMaxIter;
          break;
        }
        ++res.iterations;
      }
      if (res.status == kQPMaxIter) break;
      if (st != kQPOk) {
        res.status = st;
        return res;
      }
      const bool stationary = minimize_on_free_set(res, max_iter);
      if (simplex_) renormalize();
      if (!stationary) {
        // x is not a subspace minimizer, so the KKT test at the top of the loop would not apply.
        res.status = kQPMaxIter;
        break;
      }
    }
    if (simplex_) renormalize();
    return res;
  }

 private:
  static constexpr int32_t kSingular = -1;
  // ws.inF[i] of an index outside F: inactive (a candidate to enter), dropped from F in the current
  // iteration, or set aside by anti-cycling (see solve).
  static constexpr int32_t kInactive = -1;
  static constexpr int32_t kDropped = -2;
  static constexpr int32_t kSetAside = -3;

  // Subspace minimization: step toward the minimizer on F, dropping blocking indices until the
  // minimizer is strictly feasible. The first step is already paid for; every drop pays for the next
  // one. Returns false when max_iter stops it before x reaches the subspace minimizer.
  C10_HOST_DEVICE bool minimize_on_free_set(QPResult& res, int32_t max_iter) {
    while (nF_ > 0) {
      subspace_minimizer();  // into ws.y, by position in F
      double alpha = 1.0;
      int64_t block = -1;
      for (int64_t p = 0; p < nF_; ++p) {
        // Indices with y_i <= 0 block at a = x_i / (x_i - y_i) <= 1; take the smallest a
        // (the first one on ties). Written branch-free: the outcome is data-dependent.
        const double xi = ws_.x[ws_.F[p]], yi = ws_.y[p];
        const double den = xi - yi;
        const double a = xi <= 0.0 ? 0.0 : xi / (den > 0.0 ? den : 1.0);
        const bool take = (yi <= 0.0) & ((block < 0) | (a < alpha));
        alpha = take ? a : alpha;
        block = take ? p : block;
      }
      if (block < 0) {
        for (int64_t p = 0; p < nF_; ++p) ws_.x[ws_.F[p]] = ws_.y[p];
        return true;
      }
      for (int64_t p = 0; p < nF_; ++p) {
        const int32_t i = ws_.F[p];
        ws_.x[i] += alpha * (ws_.y[p] - ws_.x[i]);
      }
      const int32_t i_block = ws_.F[block];
      remove(block);
      ws_.x[i_block] = 0.0;
      if (res.iterations >= max_iter) return false;
      ++res.iterations;
    }
    return true;  // nonneg mode with F empty: x = 0 is the minimizer on F
  }


  // M > 0 fixes the problem size at compile time (small m on the CPU), so loops over it unroll.
  C10_HOST_DEVICE inline int64_t dim() const { return M > 0 ? M : m_; }

  C10_HOST_DEVICE inline double H(int64_t i, int64_t j) const { return ws_.G[i * dim() + j] + t_; }
  C10_HOST_DEVICE inline double& Lref(int64_t p, int64_t q) const { return ws_.L[p * dim() + q]; }

  // (G x + c)_i, summing over the free set only (x vanishes elsewhere).
  C10_HOST_DEVICE inline double gradient(int64_t i) const {
    double acc = ws_.c[i];
    for (int64_t p = 0; p < nF_; ++p) {
      const int32_t k = ws_.F[p];
      acc += ws_.G[i * dim() + k] * ws_.x[k];
    }
    return acc;
  }

  // In-place triangular solves with L (forward) and L' (backward), by position in F.
  C10_HOST_DEVICE void forward(typename QPWorkspace<kC>::Vec b, int64_t n) const {
    for (int64_t p = 0; p < n; ++p) {
      double acc = b[p];
      for (int64_t q = 0; q < p; ++q) acc -= Lref(p, q) * b[q];
      b[p] = acc * ws_.invd[p];
    }
  }
  C10_HOST_DEVICE void backward(typename QPWorkspace<kC>::Vec b, int64_t n) const {
    for (int64_t p = n - 1; p >= 0; --p) {
      double acc = b[p];
      for (int64_t q = p + 1; q < n; ++q) acc -= Lref(q, p) * b[q];
      b[p] = acc * ws_.invd[p];
    }
  }

  // Append index j to F, extending L, z1 and zc by one row/entry. Returns kSingular (F unchanged)
  // when the new pivot vanishes and kQPNotPSD when it is clearly negative.
  C10_HOST_DEVICE int32_t append(int64_t j) {
    const int64_t n = nF_;
    for (int64_t p = 0; p < n; ++p) ws_.u[p] = H(ws_.F[p], j);
    forward(ws_.u, n);
    const double hjj = H(j, j);
    double d2 = hjj, dot1 = 0.0, dotc = 0.0;
    for (int64_t p = 0; p < n; ++p) {
      d2 -= ws_.u[p] * ws_.u[p];
      dot1 += ws_.u[p] * ws_.z1[p];
      dotc += ws_.u[p] * ws_.zc[p];
    }
    // Round-off in d2 scales with the terms subtracted, so judge negativity relative to them.
    if (d2 < -tol_.not_psd * (hjj + (hjj - d2))) return kQPNotPSD;
    if (!(d2 > tol_.pivot * hjj)) return kSingular;
    const double d = sqrt(d2), inv = 1.0 / d;
    for (int64_t p = 0; p < n; ++p) Lref(n, p) = ws_.u[p];
    Lref(n, n) = d;
    ws_.invd[n] = inv;
    ws_.z1[n] = (1.0 - dot1) * inv;
    ws_.zc[n] = (ws_.c[j] - dotc) * inv;
    ws_.F[n] = static_cast<int32_t>(j);
    ws_.inF[j] = static_cast<int32_t>(n);
    nF_ = n + 1;
    return kQPOk;
  }

  // Remove position r from F: delete row r of L and restore triangularity with Givens rotations on
  // neighbouring columns, which act on z1 and zc as well (L z = b stays true without row r).
  C10_HOST_DEVICE void remove(int64_t r) {
    const int64_t n = nF_;
    ws_.inF[ws_.F[r]] = kDropped;
    ++n_dropped_;
    for (int64_t p = r; p < n - 1; ++p) {
      ws_.F[p] = ws_.F[p + 1];
      ws_.inF[ws_.F[p]] = static_cast<int32_t>(p);
      for (int64_t q = 0; q <= p + 1; ++q) Lref(p, q) = Lref(p + 1, q);
    }
    // Rows r..n-2 now have one entry right of the diagonal (column p+1); rotate it away.
    for (int64_t p = r; p < n - 1; ++p) {
      const double a = Lref(p, p), b = Lref(p, p + 1);
      const double rho = sqrt(a * a + b * b);
      const double cs = a / rho, sn = b / rho;
      for (int64_t i = p + 1; i < n - 1; ++i) {
        const double xa = Lref(i, p), xb = Lref(i, p + 1);
        Lref(i, p) = cs * xa + sn * xb;
        Lref(i, p + 1) = -sn * xa + cs * xb;
      }
      Lref(p, p) = rho;
      Lref(p, p + 1) = 0.0;
      ws_.invd[p] = 1.0 / rho;
      const double z1a = ws_.z1[p], z1b = ws_.z1[p + 1];
      ws_.z1[p] = cs * z1a + sn * z1b;
      ws_.z1[p + 1] = -sn * z1a + cs * z1b;
      const double zca = ws_.zc[p], zcb = ws_.zc[p + 1];
      ws_.zc[p] = cs * zca + sn * zcb;
      ws_.zc[p + 1] = -sn * zca + cs * zcb;
    }
    nF_ = n - 1;
  }

  // Minimizer of the quadratic restricted to F (and to sum = 1 in simplex mode), into ws.y.
  C10_HOST_DEVICE void subspace_minimizer() {
    const int64_t n = nF_;
    if (simplex_) {
      double z11 = 0.0, z1c = 0.0;
      for (int64_t p = 0; p < n; ++p) {
        z11 += ws_.z1[p] * ws_.z1[p];
        z1c += ws_.z1[p] * ws_.zc[p];
      }
      const double nu = (1.0 + z1c) / z11;
      for (int64_t p = 0; p < n; ++p) ws_.y[p] = nu * ws_.z1[p] - ws_.zc[p];
    } else {
      for (int64_t p = 0; p < n; ++p) ws_.y[p] = -ws_.zc[p];
    }
    backward(ws_.y, n);
  }

  // d = (-H_FF^{-1} H_Fj, 1) has zero curvature and slope g_j - nu < 0: follow it to the first bound
  // and drop that index. Without a bound (nonneg mode only) the problem is unbounded below.
  C10_HOST_DEVICE int32_t ray_step(int64_t j) {
    const int64_t n = nF_;
    for (int64_t p = 0; p < n; ++p) ws_.u[p] = H(ws_.F[p], j);
    forward(ws_.u, n);
    backward(ws_.u, n);  // u = H_FF^{-1} H_Fj; the direction on F is -u
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
    if (block < 0) return kQPUnbounded;
    for (int64_t p = 0; p < n; ++p) ws_.x[ws_.F[p]] -= alpha * ws_.u[p];
    ws_.x[j] += alpha;
    const int32_t i_block = ws_.F[block];
    remove(block);
    ws_.x[i_block] = 0.0;
    return kQPOk;
  }

  // Keep the iterate exactly on the simplex against round-off. Over all indices, not just F: a solve
  // stopped by max_iter right after a ray step leaves weight on an index outside F.
  C10_HOST_DEVICE void renormalize() {
    double s = 0.0;
    for (int64_t i = 0; i < dim(); ++i) {
      if (ws_.x[i] < 0.0) ws_.x[i] = 0.0;
      s += ws_.x[i];
    }
    if (s > 0.0 && s != 1.0) {
      const double inv = 1.0 / s;
      for (int64_t i = 0; i < dim(); ++i) ws_.x[i] *= inv;
    }
  }

  QPWorkspace<kC> ws_;
  int64_t m_;
  bool simplex_;
  QPTolerances tol_;
  double t_;
  int64_t nF_;
  int64_t n_set_aside_ = 0;
  int64_t n_dropped_ = 0;
  double f_prev_ = 1e300;  // objective at the last iteration that decreased it
};

// ---------------------------------------------------------------------------------------------
// KKT residuals of the normalized problem (definitions in the README); x in ws.x, g overwritten.

template <bool kC, int M = 0>
C10_HOST_DEVICE inline void full_gradient(const QPWorkspace<kC>& ws, int64_t m_runtime) {
  const int64_t m = M > 0 ? M : m_runtime;
  for (int64_t i = 0; i < m; ++i) {
    double acc = ws.c[i];
    for (int64_t k = 0; k < m; ++k) acc += ws.G[i * m + k] * ws.x[k];
    ws.g[i] = acc;
  }
}

template <bool kC, int M = 0>
C10_HOST_DEVICE inline double simplex_kkt_residual(const QPWorkspace<kC>& ws, int64_t m_runtime) {
  const int64_t m = M > 0 ? M : m_runtime;
  full_gradient<kC, M>(ws, m);
  double gmin = ws.g[0], sum = 0.0, neg = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    gmin = dmin(gmin, ws.g[i]);
    sum += ws.x[i];
    neg = dmax(neg, -ws.x[i]);
  }
  double gap = 0.0;
  for (int64_t i = 0; i < m; ++i) gap += ws.x[i] * (ws.g[i] - gmin);
  return dmax(dmax(gap, neg), dabs(sum - 1.0));
}

template <bool kC, int M = 0>
C10_HOST_DEVICE inline double nonneg_kkt_residual(const QPWorkspace<kC>& ws, int64_t m_runtime) {
  const int64_t m = M > 0 ? M : m_runtime;
  full_gradient<kC, M>(ws, m);
  double xmax = 1.0, neg = 0.0, dual = 0.0, comp = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    xmax = dmax(xmax, ws.x[i]);
    neg = dmax(neg, -ws.x[i]);
    dual = dmax(dual, -ws.g[i]);
    comp = dmax(comp, ws.x[i] * dabs(ws.g[i]));
  }
  return dmax(dmax(dual, comp) / xmax, neg);
}

}  // namespace torchmoo
