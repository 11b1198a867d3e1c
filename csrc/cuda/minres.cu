// CUDA kernels of the MINRES operators (schemas in csrc/ops.cpp; the loop is torchmoo.ops.minres).
//
// One minres_step is three kernels on the current stream and two passes over the vectors, the same
// passes as the CPU kernel (csrc/cpu/minres.cpp, where the arithmetic is spelled out):
//
//   pass_a         grid (blocks, k): the update pending from the previous iteration (w over wprev,
//                  x += phi w) and the Lanczos step z = (hv - shift y) / beta - ratio yprev over yprev,
//                  with per-block partials of y'z
//   pass_b         grid (blocks, k): every block sums the y'z partials of its row (fixed order), then
//                  y_{k+1} = z - (alfa / beta) y over z, with per-block partials of y_{k+1}'y_{k+1}
//   scalar_kernel  grid (k): sums both partial sets of its row with the same block reduction (so alfa is
//                  bitwise the value pass_b used), clears the pending flag, runs the Givens recurrence
//                  (common/minres_recurrence.h), writes the residual history, counts running rows
//
// The final flush (hv undefined) is pass_a alone, with the Lanczos part off. Rows without work are
// skipped by every kernel (flags read from the state row). No atomics touch floating-point data and
// the partials are summed in a fixed order, so a step is deterministic on a given GPU. The step never
// synchronizes the stream: scalar_kernel writes the caller's summary on the device (rows still running,
// first row whose matvec output was not finite), and the Python loop copies it to pinned memory and
// reads it one iteration later, while the GPU runs the next product.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Optional.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "../common/minres_recurrence.h"
#include "../minres_host.h"

namespace torchmoo {
namespace {

using namespace minres;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxBlocksPerRow = 1024;
constexpr int64_t kMaxGridY = 65535;

// Sum of one double per thread over the block, the same order every call; the result is returned
// to every thread. Contains __syncthreads: call it from all threads of the block.
__device__ double block_sum(double value, double* shared) {
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  double total = 0.0;
  for (int i = 0; i < kWarps; ++i) total += shared[i];
  return total;
}

// Sum of partial[0 .. count) with a fixed assignment of entries to threads.
__device__ double sum_partials(const double* __restrict__ partial, int64_t count, double* shared) {
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kThreads) acc += partial[i];
  return block_sum(acc, shared);
}

__device__ __forceinline__ bool row_active(const double* state, int64_t r) {
  return state[r * kSlots + kStatus] == kActive;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    pass_a(const T* __restrict__ hv, const T* __restrict__ y, T* __restrict__ yprev, const T* __restrict__ w,
           T* __restrict__ wprev, T* __restrict__ x, const double* __restrict__ state, double* __restrict__ partial,
           int64_t k, int64_t n, double shift, bool flush, int* __restrict__ summary) {
  __shared__ double shared[kWarps];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  // Preset the summary that scalar_kernel (later on the stream) counts into; null for the flush.
  if (summary != nullptr && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) {
    summary[0] = 0;
    summary[1] = kNoBadRow;
  }
  for (int64_t r = blockIdx.y; r < k; r += gridDim.y) {
    const double* s = state + r * kSlots;
    // Both flags are uniform over the block, so the block reduction below is reached by all threads or none.
    const bool pending = s[kPending] != 0.0;
    const bool lanczos = !flush && row_active(state, r);
    if (!pending && !lanczos) continue;
    const T vscale_prev = static_cast<T>(1.0 / s[kBetaPrev]);
    const T oldeps = static_cast<T>(s[kOldeps]), delta = static_cast<T>(s[kDelta]);
    const T denom = static_cast<T>(s[kDenom]), phi = static_cast<T>(s[kPhi]);
    const T inv_beta = static_cast<T>(1.0 / s[kBeta]);
    const T sh = static_cast<T>(shift);
    const T ratio = static_cast<T>(s[kBeta] / s[kBetaPrev]);
    const int64_t off = r * n;
    double acc = 0.0;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
      const T yp = yprev[off + i];
      if (pending) {
        const T wk = (yp * vscale_prev - oldeps * wprev[off + i] - delta * w[off + i]) * denom;
        wprev[off + i] = wk;
        x[off + i] += phi * wk;
      }
      if (lanczos) {
        const T yi = y[off + i];
        const T z = (hv[off + i] - sh * yi) * inv_beta - ratio * yp;
        yprev[off + i] = z;
        acc += static_cast<double>(yi) * static_cast<double>(z);
      }
    }
    if (lanczos) {
      acc = block_sum(acc, shared);
      if (threadIdx.x == 0) partial[r * gridDim.x + blockIdx.x] = acc;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    pass_b(const T* __restrict__ y, T* __restrict__ z, const double* __restrict__ state,
           const double* __restrict__ partial_alfa, double* __restrict__ partial_beta, int64_t k, int64_t n) {
  __shared__ double shared[kWarps];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t r = blockIdx.y; r < k; r += gridDim.y) {
    if (!row_active(state, r)) continue;
    const double beta = state[r * kSlots + kBeta];
    const double alfa = sum_partials(partial_alfa + r * gridDim.x, gridDim.x, shared) / beta;
    const T coef = static_cast<T>(alfa / beta);
    const int64_t off = r * n;
    double acc = 0.0;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
      const T zi = z[off + i] - coef * y[off + i];
      z[off + i] = zi;
      acc += static_cast<double>(zi) * static_cast<double>(zi);
    }
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) partial_beta[r * gridDim.x + blockIdx.x] = acc;
  }
}

// summary[0]: rows still running after this step; summary[1]: smallest row whose matvec output was not
// finite (kNoBadRow when none). Both preset by pass_a.
__global__ void __launch_bounds__(kThreads)
    scalar_kernel(double* __restrict__ state, double* __restrict__ history, const double* __restrict__ partial_alfa,
                  const double* __restrict__ partial_beta, int64_t k, int64_t blocks, int64_t hcols, double tol,
                  double eps, int* __restrict__ summary) {
  __shared__ double shared[kWarps];
  for (int64_t r = blockIdx.x; r < k; r += gridDim.x) {
    double* s = state + r * kSlots;
    if (!row_active(state, r)) {
      // Stopped earlier: its last pending update (if any) was applied by pass_a of this step.
      if (threadIdx.x == 0) s[kPending] = 0.0;
      continue;
    }
    const double alfa = sum_partials(partial_alfa + r * blocks, blocks, shared) / s[kBeta];
    const double beta_sq = sum_partials(partial_beta + r * blocks, blocks, shared);
    if (threadIdx.x == 0) {
      s[kAlfa] = alfa;
      s[kBetaNextSq] = beta_sq;
      s[kPending] = 0.0;
      scalar_step(s, tol, eps);
      if (s[kPending] != 0.0) {
        const int64_t it = static_cast<int64_t>(s[kIter]);
        if (it < hcols) history[r * hcols + it] = s[kPhibar];
      }
      if (s[kStatus] == kActive) atomicAdd(summary, 1);
      if (s[kStatus] == kNonFinite) atomicMin(summary + 1, static_cast<int>(r));
    }
  }
}

void minres_step_cuda(const c10::optional<at::Tensor>& hv, const at::Tensor& y, const at::Tensor& yprev,
                      const at::Tensor& w, const at::Tensor& wprev, const at::Tensor& x, const at::Tensor& state,
                      const at::Tensor& history, const at::Tensor& summary, double shift, double tol) {
  const bool flush = !hv.has_value();
  check_step(flush ? at::Tensor() : *hv, y, yprev, w, wprev, x, state, history, summary);
  TORCH_CHECK_VALUE(y.is_cuda(), "minres_step (CUDA kernel): tensors must be on a CUDA device.");
  const c10::cuda::CUDAGuard guard(y.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t k = y.size(0), n = y.size(1);
  if (k == 0 || n == 0) {  // nothing runs (minres never gets here: such a b has no nonzero row)
    if (!flush) {
      summary.select(0, 0).fill_(0);
      summary.select(0, 1).fill_(kNoBadRow);
    }
    return;
  }
  const int64_t blocks = std::clamp<int64_t>((n + kThreads * 4 - 1) / (kThreads * 4), 1, kMaxBlocksPerRow);
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(std::min(k, kMaxGridY)));
  const unsigned scalar_grid = static_cast<unsigned>(std::min<int64_t>(k, 1 << 20));
  const at::Tensor partial = at::empty({2, k, blocks}, state.options());
  double* partial_alfa = partial.mutable_data_ptr<double>();
  double* partial_beta = partial_alfa + k * blocks;
  double* state_ptr = state.mutable_data_ptr<double>();
  const double eps = dtype_eps(y.scalar_type());

  if (flush) {
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "minres_flush_cuda", [&] {
      pass_a<scalar_t><<<grid, kThreads, 0, stream>>>(
          nullptr, y.const_data_ptr<scalar_t>(), yprev.mutable_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
          wprev.mutable_data_ptr<scalar_t>(), x.mutable_data_ptr<scalar_t>(), state_ptr, partial_alfa, k, n, shift,
          true, nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    state.select(1, kPending).zero_();
    return;
  }

  int* summary_ptr = summary.mutable_data_ptr<int>();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "minres_step_cuda", [&] {
    pass_a<scalar_t><<<grid, kThreads, 0, stream>>>(
        hv->const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), yprev.mutable_data_ptr<scalar_t>(),
        w.const_data_ptr<scalar_t>(), wprev.mutable_data_ptr<scalar_t>(), x.mutable_data_ptr<scalar_t>(), state_ptr,
        partial_alfa, k, n, shift, false, summary_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    pass_b<scalar_t><<<grid, kThreads, 0, stream>>>(y.const_data_ptr<scalar_t>(), yprev.mutable_data_ptr<scalar_t>(),
                                                     state_ptr, partial_alfa, partial_beta, k, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  scalar_kernel<<<scalar_grid, kThreads, 0, stream>>>(state_ptr, history.mutable_data_ptr<double>(), partial_alfa,
                                                      partial_beta, k, blocks, history.size(1), tol, eps, summary_ptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

minres::InitOutputs minres_init_cuda(const at::Tensor& b, int64_t max_iter) {
  const c10::cuda::CUDAGuard guard(b.device());
  return init(b, max_iter);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> minres_info_cuda(const at::Tensor& state, const at::Tensor& history) {
  // Checked before the guard: with one of them on the CPU the dispatcher still picks this kernel, and a
  // guard on a CPU device (or the ops below on mixed devices) would raise an unreadable RuntimeError.
  TORCH_CHECK_VALUE(state.device() == history.device(), "minres_info: state is on ", state.device(),
                    " but history is on ", history.device(), "; pass both on the same device.");
  const c10::cuda::CUDAGuard guard(state.device());
  return info(state, history);
}

}  // namespace

TORCH_LIBRARY_IMPL(torchmoo, CUDA, m) {
  m.impl("minres_init", &minres_init_cuda);
  m.impl("minres_step", &minres_step_cuda);
  m.impl("minres_info", &minres_info_cuda);
}

}  // namespace torchmoo
