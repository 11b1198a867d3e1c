// CUDA kernel of torchmoo::gram (schema in csrc/ops.cpp): G = J J^T for J of shape (..., m, n).
// The kernels are in gram_kernels.cuh; above gram_cuda::kMaxM rows, at::matmul (cuBLAS) with the upper
// triangle mirrored.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>

#include "../gram_host.h"
#include "gram_kernels.cuh"

namespace torchmoo {
namespace {

at::Tensor gram_cuda_op(const at::Tensor& J, bool check) {
  const c10::cuda::CUDAGuard guard(J.device());
  const gram_host::GramProblem p = gram_host::prepare(J);
  const int64_t B = p.B, m = p.m, n = p.n;
  at::Tensor G3;
  if (B == 0 || m == 0 || n == 0) {
    G3 = at::zeros({B, m, m}, J.options());
  } else if (m > gram_cuda::kMaxM) {
    G3 = gram_host::matmul_gram(p.J);  // float16 / bfloat16 through a float32 copy, as on the CPU
  } else {
    G3 = at::empty({B, m, m}, J.options());
    const int mi = static_cast<int>(m);
    int sms = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
    const gram_cuda::Plan plan = gram_cuda::make_plan(B, mi, n, sms);
    at::Tensor partial = at::empty({B * plan.nchunks * plan.tri}, J.options().dtype(at::kDouble));
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const dim3 grid(static_cast<unsigned>(plan.nchunks), static_cast<unsigned>(plan.grid_y));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, J.scalar_type(), "gram_cuda", [&] {
      using acc_t = typename gram_cuda::AccType<scalar_t>::type;
      gram_cuda::gram_partial_kernel<scalar_t>
          <<<grid, gram_cuda::kThreads, gram_cuda::shared_bytes<acc_t>(mi, plan.tk), stream>>>(
              p.J.const_data_ptr<scalar_t>(), p.J.stride(0), p.J.stride(1), B, mi, n, plan.chunk, plan.nchunks,
              plan.tk, partial.mutable_data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const int64_t entries = B * plan.tri;
      const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((entries + 255) / 256, 65535));
      gram_cuda::gram_finish_kernel<scalar_t><<<blocks, 256, 0, stream>>>(
          partial.const_data_ptr<double>(), B, mi, plan.nchunks, G3.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (check) gram_host::check_finite(p, G3);  // one reduction and a host read: synchronizes the stream
  return G3.reshape(gram_host::out_shape(p));
}

}  // namespace

TORCH_LIBRARY_IMPL(torchmoo, CUDA, m) { m.impl("gram", &gram_cuda_op); }

}  // namespace torchmoo
