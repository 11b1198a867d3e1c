// CUDA batch driver for the small QPs: one thread per problem runs the same host/device solver as
// the CPU kernel (csrc/common/qp_kernel.h). Workspaces are interleaved (element k of problem b at
// k * chunk + b) so that the threads of a warp touch consecutive addresses.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "qp_solve_cuda.h"

namespace torchmoo {
namespace {

template <typename scalar_t>
__global__ void qp_batch_kernel(const scalar_t* __restrict__ G, int64_t gb, int64_t gi, int64_t gj,
                                const scalar_t* __restrict__ c, int64_t cb, int64_t ci, bool has_c,
                                scalar_t* __restrict__ x, int64_t* __restrict__ iterations,
                                double* __restrict__ residual, bool* __restrict__ converged,
                                int32_t* __restrict__ status, double* dws, int32_t* iws, int64_t first,
                                int64_t count, int64_t m, QPOptions opt) {
  const int64_t local = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (local >= count) return;
  const int64_t b = first + local;
  const auto ws = QPWorkspace<false>::make(dws + local, iws + local, m, count);
  const scalar_t* Gb = G + b * gb;
  const scalar_t* cbp = has_c ? c + b * cb : nullptr;
  scalar_t* xb = x + b * m;
  auto loadG = [=](int64_t i, int64_t j) { return static_cast<double>(Gb[i * gi + j * gj]); };
  auto loadC = [=](int64_t i) { return static_cast<double>(cbp[i * ci]); };
  auto storeX = [=](int64_t i, double v) { xb[i] = static_cast<scalar_t>(v); };
  const QPOutcome o = solve_one_qp(ws, m, loadG, loadC, has_c, storeX, opt);
  iterations[b] = o.iterations;
  residual[b] = o.kkt_residual;
  converged[b] = o.converged;
  status[b] = o.status;
}

}  // namespace

QPOutputs solve_qp_cuda(const at::Tensor& G, const c10::optional<at::Tensor>& c, bool simplex,
                        c10::string_view method, int64_t max_iter, double tol, double radius, const char* op) {
  // Validate before the guard: with G on the CPU and c on a GPU the dispatcher still picks this kernel,
  // and a guard on a CPU device would throw a RuntimeError instead of prepare_qp's ValueError.
  const QPProblem p = prepare_qp(G, c, op);
  const QPOptions opt = make_qp_options(simplex, method, max_iter, tol, radius, p, op);
  const c10::cuda::CUDAGuard guard(G.device());
  const int64_t B = p.B, m = p.m;
  const auto dev = G.options();
  at::Tensor x = at::empty({B, m}, dev);
  at::Tensor iterations = at::empty({B}, dev.dtype(at::kLong));
  at::Tensor residual = at::empty({B}, dev.dtype(at::kDouble));
  at::Tensor converged = at::empty({B}, dev.dtype(at::kBool));
  at::Tensor status = at::empty({B}, dev.dtype(at::kInt));
  if (B == 0) return finish_qp(x, iterations, residual, converged, status, /*first_failed=*/-2, p, opt, op);

  // Bound the workspace to about 256 MiB by solving the batch in chunks.
  const int64_t per_problem = QPWorkspace<false>::doubles_needed(m) * 8 + QPWorkspace<false>::ints_needed(m) * 4;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(B, (int64_t{256} << 20) / per_problem));
  at::Tensor dws = at::empty({QPWorkspace<false>::doubles_needed(m) * chunk}, dev.dtype(at::kDouble));
  at::Tensor iws = at::empty({QPWorkspace<false>::ints_needed(m) * chunk}, dev.dtype(at::kInt));
  const bool has_c = p.c.has_value();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  constexpr int threads = 128;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, G.scalar_type(), "torchmoo_qp_cuda", [&] {
    const scalar_t* Gp = p.G.const_data_ptr<scalar_t>();
    const scalar_t* cp = has_c ? p.c->const_data_ptr<scalar_t>() : nullptr;
    const int64_t cb = has_c ? p.c->stride(0) : 0, ci = has_c ? p.c->stride(1) : 0;
    for (int64_t first = 0; first < B; first += chunk) {
      const int64_t count = std::min(chunk, B - first);
      const int blocks = static_cast<int>((count + threads - 1) / threads);
      qp_batch_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
          Gp, p.G.stride(0), p.G.stride(1), p.G.stride(2), cp, cb, ci, has_c, x.data_ptr<scalar_t>(),
          iterations.data_ptr<int64_t>(), residual.data_ptr<double>(), converged.data_ptr<bool>(),
          status.data_ptr<int32_t>(), dws.data_ptr<double>(), iws.data_ptr<int32_t>(), first, count, m, opt);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return finish_qp(x, iterations, residual, converged, status, /*first_failed=*/-2, p, opt, op);
}

}  // namespace torchmoo
