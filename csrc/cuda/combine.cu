// CUDA kernel of torchmoo::combine (schema in csrc/ops.cpp): d = sum_i w_i J_i for J (..., m, n), w (..., m).
//
// One thread per output column (grid-stride along n, grid.y along the batch): the thread walks the m rows
// of its column (coalesced across the warp) and sums in the input dtype, in row order, as the CPU kernel
// does (deterministic: each entry is computed by one thread in a fixed order).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>

#include "../combine_host.h"

namespace torchmoo {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridX = 1 << 20;
constexpr int64_t kMaxGridY = 65535;

// out[b * n + k] = sum_i w[b * m + i] J[b * sb + i * si + k].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    combine_kernel(const T* __restrict__ J, int64_t sb, int64_t si, const T* __restrict__ w, int64_t B, int64_t m,
                   int64_t n, T* __restrict__ out) {
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const T* Jb = J + b * sb;
    const T* wb = w + b * m;
    for (int64_t k = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; k < n;
         k += static_cast<int64_t>(gridDim.x) * kThreads) {
      T s = T(0);
      for (int64_t i = 0; i < m; ++i) s += wb[i] * Jb[i * si + k];
      out[b * n + k] = s;
    }
  }
}

at::Tensor combine_cuda(const at::Tensor& J, const at::Tensor& w, bool check) {
  // prepare first: it raises the ValueError for J and w on different devices (J may be the CPU one).
  const combine_host::CombineProblem p = combine_host::prepare(J, w);
  const c10::cuda::CUDAGuard guard(J.device());
  at::Tensor d3;
  if (p.m == 0) {
    d3 = at::zeros({p.B, p.n}, J.options().dtype(p.compute));
  } else {
    d3 = at::empty({p.B, p.n}, J.options().dtype(p.compute));
    if (p.B > 0 && p.n > 0) {
      const at::Tensor wc = p.w.contiguous();
      const dim3 grid(static_cast<unsigned>(std::min<int64_t>((p.n + kThreads - 1) / kThreads, kMaxGridX)),
                      static_cast<unsigned>(std::min<int64_t>(p.B, kMaxGridY)));
      const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
      if (p.compute == at::kDouble) {
        combine_kernel<double><<<grid, kThreads, 0, stream>>>(p.J.const_data_ptr<double>(), p.J.stride(0),
                                                               p.J.stride(1), wc.const_data_ptr<double>(), p.B, p.m,
                                                               p.n, d3.mutable_data_ptr<double>());
      } else {
        combine_kernel<float><<<grid, kThreads, 0, stream>>>(p.J.const_data_ptr<float>(), p.J.stride(0),
                                                              p.J.stride(1), wc.const_data_ptr<float>(), p.B, p.m,
                                                              p.n, d3.mutable_data_ptr<float>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  if (p.compute != p.dtype) d3 = d3.to(p.dtype);
  if (check) combine_host::check_finite(p, d3);  // one reduction and a host read: synchronizes the stream
  return d3.reshape(combine_host::out_shape(p));
}

}  // namespace

TORCH_LIBRARY_IMPL(torchmoo, CUDA, m) { m.impl("combine", &combine_cuda); }

}  // namespace torchmoo
