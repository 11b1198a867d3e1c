#include "qp_solve_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <vector>

#include "qp_fast_path.h"

namespace torchmoo {

// The fast path hands a lane to the exact solver unless its KKT residual is at least this small.
constexpr double kFastPathAccept = 1e-12;

namespace {

template <typename scalar_t>
struct CpuQPBatch {
  const scalar_t* G;
  int64_t gb, gi, gj;
  const scalar_t* c;
  int64_t cb, ci;
  scalar_t* x;
  int64_t* iterations;
  double* residual;
  bool* converged;
  int32_t* status;
};

// Problems [begin, end) of the batch; M > 0 is m known at compile time.
template <int M, typename scalar_t>
void solve_range(const CpuQPBatch<scalar_t>& bt, int64_t m, const QPOptions& opt, int64_t begin, int64_t end) {
  const bool has_c = bt.c != nullptr;
  std::vector<double> dbuf(QPWorkspace<true>::doubles_needed(m));
  std::vector<int32_t> ibuf(QPWorkspace<true>::ints_needed(m));
  const auto ws = QPWorkspace<true>::make(dbuf.data(), ibuf.data(), m, 1);
  auto solve_one = [&](int64_t b) {
    const scalar_t* Gb = bt.G + b * bt.gb;
    const scalar_t* cbp = has_c ? bt.c + b * bt.cb : nullptr;
    scalar_t* xb = bt.x + b * m;
    const int64_t gi = bt.gi, gj = bt.gj, ci = bt.ci;
    auto loadG = [=](int64_t i, int64_t j) { return static_cast<double>(Gb[i * gi + j * gj]); };
    auto loadC = [=](int64_t i) { return static_cast<double>(cbp[i * ci]); };
    auto storeX = [=](int64_t i, double v) { xb[i] = static_cast<scalar_t>(v); };
    const QPOutcome o = solve_one_qp<true, M>(ws, m, loadG, loadC, has_c, storeX, opt);
    bt.iterations[b] = o.iterations;
    bt.residual[b] = o.kkt_residual;
    bt.converged[b] = o.converged;
    bt.status[b] = o.status;
  };
  if constexpr (M >= 1 && M <= 8) {
    // The fast path takes one solve per pass (the second pass, with an index dropped, counts two like
    // the active-set method's drop), so it runs only when max_iter allows them.
    if (opt.method == kActiveSet && opt.max_iter >= 1) {
      const bool second_pass = opt.max_iter >= 2;
      auto accept = [&](int64_t b, const FastPathOut& fp, int l, int32_t passes) {
        for (int i = 0; i < M; ++i) bt.x[b * M + i] = static_cast<scalar_t>(fp.x[i][l]);
        bt.iterations[b] = passes;
        bt.residual[b] = fp.residual[l];
        bt.converged[b] = true;
        bt.status[b] = kQPOk;
      };
      // Problems waiting for the second pass, gathered until they fill the lanes.
      int64_t pending[kLanes];
      int pending_drop[kLanes];
      int n_pending = 0;
      auto flush = [&]() {
        if (n_pending == 0) return;
        int drop[kLanes];
        for (int l = 0; l < kLanes; ++l) drop[l] = l < n_pending ? pending_drop[l] : -1;
        auto loadG = [&](int l, int i, int j) {
          return static_cast<double>(bt.G[pending[l] * bt.gb + i * bt.gi + j * bt.gj]);
        };
        auto loadC = [&](int l, int i) { return static_cast<double>(bt.c[pending[l] * bt.cb + i * bt.ci]); };
        FastPathOut fp;
        qp_fast_path_drop<M>(n_pending, loadG, loadC, has_c, opt.simplex, opt.sym_tol, opt.pivot_tol,
                             kFastPathAccept, drop, fp);
        for (int l = 0; l < n_pending; ++l) {
          if (fp.solved[l]) {
            accept(pending[l], fp, l, 2);
          } else {
            solve_one(pending[l]);
          }
        }
        n_pending = 0;
      };
      FastPathOut fp;
      int drop[kLanes];
      for (int64_t b0 = begin; b0 < end; b0 += kLanes) {
        const int count = static_cast<int>(std::min<int64_t>(kLanes, end - b0));
        const scalar_t* G0 = bt.G + b0 * bt.gb;
        const scalar_t* c0 = has_c ? bt.c + b0 * bt.cb : nullptr;
        auto loadG = [&](int l, int i, int j) {
          return static_cast<double>(G0[l * bt.gb + i * bt.gi + j * bt.gj]);
        };
        auto loadC = [&](int l, int i) { return static_cast<double>(c0[l * bt.cb + i * bt.ci]); };
        qp_fast_path<M>(count, loadG, loadC, has_c, opt.simplex, opt.sym_tol, opt.pivot_tol, kFastPathAccept, fp,
                        drop);
        for (int l = 0; l < count; ++l) {
          const int64_t b = b0 + l;
          if (fp.solved[l]) {
            accept(b, fp, l, 1);
          } else if (second_pass && drop[l] >= 0) {
            pending[n_pending] = b;
            pending_drop[n_pending] = drop[l];
            if (++n_pending == kLanes) flush();
          } else {
            solve_one(b);
          }
        }
      }
      flush();
      return;
    }
  }
  for (int64_t b = begin; b < end; ++b) solve_one(b);
}

}  // namespace

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
    const CpuQPBatch<scalar_t> batch{p.G.const_data_ptr<scalar_t>(),
                                     p.G.stride(0),
                                     p.G.stride(1),
                                     p.G.stride(2),
                                     has_c ? p.c->const_data_ptr<scalar_t>() : nullptr,
                                     has_c ? p.c->stride(0) : 0,
                                     has_c ? p.c->stride(1) : 0,
                                     x.data_ptr<scalar_t>(),
                                     iterations.data_ptr<int64_t>(),
                                     residual.data_ptr<double>(),
                                     converged.data_ptr<bool>(),
                                     status.data_ptr<int32_t>()};
    // Small problems are cheap: keep enough of them per task that threading pays off.
    const int64_t grain = std::max<int64_t>(1, 4096 / (m * m + 16));
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      switch (m) {
        case 2: solve_range<2>(batch, m, opt, begin, end); break;
        case 3: solve_range<3>(batch, m, opt, begin, end); break;
        case 4: solve_range<4>(batch, m, opt, begin, end); break;
        case 5: solve_range<5>(batch, m, opt, begin, end); break;
        case 6: solve_range<6>(batch, m, opt, begin, end); break;
        case 7: solve_range<7>(batch, m, opt, begin, end); break;
        case 8: solve_range<8>(batch, m, opt, begin, end); break;
        default: solve_range<0>(batch, m, opt, begin, end); break;
      }
    });
  });
  // Errors are rare: scan the statuses on the host (cheaper than tensor reductions for small batches).
  const int32_t* sp = status.const_data_ptr<int32_t>();
  int64_t first_failed = -1;
  for (int64_t b = 0; b < B && first_failed < 0; ++b) {
    if (sp[b] != kQPOk && sp[b] != kQPMaxIter) first_failed = b;
  }
  return finish_qp(x, iterations, residual, converged, status, first_failed, p, opt, op);
}

}  // namespace torchmoo
