#include "qp_host.h"

#include "batch_index.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>

namespace torchmoo {

namespace {

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

}  // namespace

QPProblem prepare_qp(const at::Tensor& G, const c10::optional<at::Tensor>& c, const char* op) {
  TORCH_CHECK_TYPE(is_supported_float(G.scalar_type()), op, ": G must be a floating-point tensor (float16, bfloat16, ",
                   "float32 or float64), got ", G.scalar_type(), ".");
  TORCH_CHECK_VALUE(G.dim() >= 2 && G.size(-1) == G.size(-2), op,
                    ": G must have shape (..., m, m) with square trailing dimensions, got shape ", G.sizes(), ".");
  const int64_t m = G.size(-1);
  TORCH_CHECK_VALUE(m >= 1, op, ": G must have m >= 1 objectives, got shape ", G.sizes(), ".");
  TORCH_CHECK_VALUE(m <= 4096, op, ": m = ", m, " is too large for a dense small-QP solver (at most 4096).");
  QPProblem p;
  p.m = m;
  p.batch_shape.assign(G.sizes().begin(), G.sizes().end() - 2);
  p.B = 1;
  for (auto s : p.batch_shape) p.B *= s;
  p.G = G.reshape({p.B, m, m});
  if (c.has_value() && c->defined()) {
    const at::Tensor& cv = *c;
    TORCH_CHECK_TYPE(cv.scalar_type() == G.scalar_type(), op, ": c must have the dtype of G (", G.scalar_type(),
                     "), got ", cv.scalar_type(), ".");
    TORCH_CHECK_VALUE(cv.device() == G.device(), op, ": G and c must be on the same device, got G on ", G.device(),
                      " and c on ", cv.device(), ".");
    std::vector<int64_t> expected(G.sizes().begin(), G.sizes().end() - 1);
    TORCH_CHECK_VALUE(cv.sizes().vec() == expected, op, ": c must have shape (..., m) = ", at::IntArrayRef(expected),
                      " to match G of shape ", G.sizes(), ", got ", cv.sizes(), ".");
    p.c = cv.reshape({p.B, m});
  }
  return p;
}

QPOptions make_qp_options(bool simplex, c10::string_view method, int64_t max_iter, double tol, double radius,
                          const QPProblem& problem, const char* op) {
  QPOptions o{};
  o.simplex = simplex;
  if (method == "active_set") {
    o.method = kActiveSet;
  } else if (method == "frank_wolfe") {
    o.method = kFrankWolfe;
  } else {
    TORCH_CHECK_VALUE(false, op, ": method must be 'active_set' or 'frank_wolfe', got '", std::string(method), "'.");
  }
  TORCH_CHECK_VALUE(max_iter == -1 || max_iter >= 0, op, ": max_iter must be non-negative, got ", max_iter, ".");
  // -1 is the schema's "use the default"; the kernels would read any other non-positive or NaN tol
  // or radius the same way, and an infinite one disables the stopping test or yields NaN.
  TORCH_CHECK_VALUE(tol == -1.0 || (std::isfinite(tol) && tol > 0.0), op,
                    ": tol must be a finite number > 0 (or -1 for the default), got ", tol, ".");
  TORCH_CHECK_VALUE(radius == -1.0 || (std::isfinite(radius) && radius > 0.0), op,
                    ": radius must be a finite number > 0 (or -1 for the certified bound), got ", radius, ".");
  if (max_iter < 0) {
    max_iter = o.method == kActiveSet ? 50 + 10 * problem.m : 1000;
  }
  o.max_iter = static_cast<int32_t>(std::min<int64_t>(max_iter, 1 << 30));
  o.tol = tol;
  o.radius = radius;
  const auto t = problem.G.scalar_type();
  if (t == at::kDouble) {
    o.sym_tol = 1e-8;
    o.pivot_tol = 1e-11;
    o.not_psd_tol = 1e-9;
    o.psd_shift = 1e-7;
  } else if (t == at::kFloat) {
    o.sym_tol = 1e-4;
    o.pivot_tol = 1e-6;
    o.not_psd_tol = 1e-4;
    o.psd_shift = 1e-5;
    // Rounding a singular G to float32 leaves eigenvalues of about -1e-8 * max|G|: reduced gradients
    // below that are noise, and chasing them makes the active set cycle.
    if (tol < 0.0) o.tol = o.method == kActiveSet ? 1e-8 : -1.0;
  } else {  // float16, bfloat16
    o.sym_tol = 1e-2;
    o.pivot_tol = 1e-3;
    o.not_psd_tol = 1e-2;
    o.psd_shift = 1e-3;
  }
  // Entrywise rounding errors of size eps * max|G| move eigenvalues by up to m times that.
  o.psd_shift *= static_cast<double>(std::max<int64_t>(problem.m, 1));
  // The nonneg QP decides boundedness from its pivots: keep them at float64 resolution (the
  // arithmetic is float64 on the values given), so a nearly singular G yields a large lambda
  // rather than an "unbounded" verdict.
  if (!simplex) o.pivot_tol = 1e-11;
  return o;
}

QPOutputs finish_qp(const at::Tensor& x, const at::Tensor& iterations, const at::Tensor& residual,
                    const at::Tensor& converged, const at::Tensor& status, int64_t first_failed,
                    const QPProblem& problem,
                    const QPOptions& options, const char* op) {
  if (first_failed == -2 && problem.B > 0) {
    const at::Tensor failed = status.ne(kQPOk).logical_and(status.ne(kQPMaxIter));
    first_failed = failed.any().item<bool>() ? failed.to(at::kCPU).nonzero()[0][0].item<int64_t>() : -1;
  }
  if (first_failed >= 0) {
    const int32_t code = status.to(at::kCPU)[first_failed].item<int32_t>();
    const std::string where =
        problem.batch_shape.empty() ? "" : " (batch index " + batch_index(first_failed, problem.batch_shape) + ")";
    switch (code) {
      case kQPNonFinite:
        TORCH_CHECK_VALUE(false, op, ": G and c must be finite, found NaN or infinity", where, ".");
      case kQPAsymmetric:
        TORCH_CHECK_VALUE(false, op, ": G must be symmetric; |G - G^T| exceeds ", options.sym_tol, " * max|G|", where,
                          ". Symmetrize it with (G + G.mT) / 2 if the asymmetry is round-off.");
      case kQPNotPSD:
        TORCH_CHECK_VALUE(false, op, ": G must be positive semi-definite", where, ": the solver met a curvature below -",
                          options.psd_shift, " * max|G| (an eigenvalue about that negative). A Gram matrix J J^T "
                          "computed in G's dtype never has one; one rounded in a lower precision (a float32 Gram "
                          "passed as float64) can: pass G in the dtype it was computed in.");
      case kQPUnbounded:
        TORCH_CHECK_VALUE(false, op, ": the problem is unbounded below", where,
                          ": G is singular and c has a negative component along a non-negative direction of its "
                          "null space, so the objective decreases without limit.");
      case kQPNeedsRadius:
        TORCH_CHECK_VALUE(false, op, ": method='frank_wolfe' needs a bound on sum(lambda), and none can be certified",
                          where, " because G is singular on the simplex (or the solve for the bound hit its ",
                          "iteration cap). Pass radius=R or use method='active_set'.");
      default:
        TORCH_CHECK(false, op, ": internal error, unknown status ", code, where, ".");
    }
  }
  std::vector<int64_t> xshape = problem.batch_shape;
  xshape.push_back(problem.m);
  return {x.view(xshape), iterations.view(problem.batch_shape), residual.view(problem.batch_shape),
          converged.view(problem.batch_shape)};
}

}  // namespace torchmoo
