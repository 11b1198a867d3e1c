#include "qp_solve_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <vector>

namespace torchmoo {

QPOutputs solve_qp_cpu(const at::Tensor& G, const c10::optional<at::Tensor>& c, bool simplex,
                       c10::string_view method, int64_t max_iter, double tol, double radius, const char* op) {
  const QPProblem p = prepare_qp(G, c, op);
  const QPOptions opt = make_qp_options(simplex, method, max_iter, tol, radius, p, op);
  const int64_t B = p.B, m = p.m;
  const auto dev = G.options();
  at::Tensor x = at::empty({B, m}, dev);
  at::Tensor iterations = at::empty({B}, dev.dtype(at::kLong));
  at::Tensor residual = at::empty({B}, dev.dtype(at::kDouble));
  at::Tensor converged = at::empty({B}, dev.dtype(at::kBool));
  at::Tensor status = at::empty({B}, dev.dtype(at::kInt));
  const bool has_c = p.c.has_value();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, G.scalar_type(), "torchmoo_qp_cpu", [&] {
    const scalar_t* Gp = p.G.const_data_ptr<scalar_t>();
    const int64_t gb = p.G.stride(0), gi = p.G.stride(1), gj = p.G.stride(2);
    const scalar_t* cp = has_c ? p.c->const_data_ptr<scalar_t>() : nullptr;
    const int64_t cb = has_c ? p.c->stride(0) : 0, ci = has_c ? p.c->stride(1) : 0;
    scalar_t* xp = x.data_ptr<scalar_t>();
    int64_t* itp = iterations.data_ptr<int64_t>();
    double* rp = residual.data_ptr<double>();
    bool* cvp = converged.data_ptr<bool>();
    int32_t* sp = status.data_ptr<int32_t>();
    // Small problems are cheap: keep enough of them per task that threading pays off.
    const int64_t grain = std::max<int64_t>(1, 4096 / (m * m + 16));
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      std::vector<double> dbuf(QPWorkspace::doubles_needed(m));
      std::vector<int32_t> ibuf(QPWorkspace::ints_needed(m));
      const QPWorkspace ws = QPWorkspace::make(dbuf.data(), ibuf.data(), m, 1);
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* Gb = Gp + b * gb;
        const scalar_t* cbp = has_c ? cp + b * cb : nullptr;
        scalar_t* xb = xp + b * m;
        auto loadG = [=](int64_t i, int64_t j) { return static_cast<double>(Gb[i * gi + j * gj]); };
        auto loadC = [=](int64_t i) { return static_cast<double>(cbp[i * ci]); };
        auto storeX = [=](int64_t i, double v) { xb[i] = static_cast<scalar_t>(v); };
        const QPOutcome o = solve_one_qp(ws, m, loadG, loadC, has_c, storeX, opt);
        itp[b] = o.iterations;
        rp[b] = o.kkt_residual;
        cvp[b] = o.converged;
        sp[b] = o.status;
      }
    });
  });
  return finish_qp(x, iterations, residual, converged, status, p, opt, op);
}

}  // namespace torchmoo
