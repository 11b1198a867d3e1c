// CUDA kernels of torchmoo::stein_task_matrix and torchmoo::stein_update (schemas in csrc/ops.cpp).
//
// The same algorithm as the CPU kernels (csrc/cpu/stein.cpp), with the kernel matrix, its pivoted
// Cholesky factor and the Laplacian computed on the host from the squared distances (stein_host.h, so
// both devices use the same factor). stein_task_matrix walks the columns in segments of at most
// kSegmentElems elements of T = L' S and of R = Lap (X - x_0): per segment, T and R are formed in device
// buffers, c_i = <S_i, R> is reduced, and G is the Gram product of the rows T_i (gram_kernels.cuh, float64 across
// tiles; torch.matmul in float64 above gram_cuda::kMaxM targets). The segments' G and c are added on the
// host in order. Extra device memory: the segment buffers (bounded), never (M, M, d) or (K, M, d).
// stein_update forms S_w = sum_i w_i S_i (M x d) and then phi.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../stein_host.h"
#include "gram_kernels.cuh"
#include "stein_kernels.cuh"

namespace torchmoo {
namespace {

using stein_host::KernelTerms;
using stein_host::SteinProblem;
using stein_cuda::kThreads;

// Elements of T = L' S, and of R, per column segment (64 MiB of float32 each).
constexpr int64_t kSegmentElems = int64_t{1} << 24;
// Columns per block of the pairwise distances, and the cap on their chunk partials.
constexpr int64_t kDistChunk = 16 * kThreads;
constexpr int64_t kMaxPairPartials = int64_t{1} << 24;
// Elements per block of the c reduction.
constexpr int64_t kDotBlock = 16 * kThreads;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
unsigned grid_yz(int64_t n) { return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(n, 1), stein_cuda::kMaxGridYZ)); }

// A host vector as a device tensor of `dtype` (copied; the host vector may be freed on return).
template <typename V>
at::Tensor to_device(const std::vector<V>& v, at::ScalarType dtype, const at::Device& device) {
  const at::ScalarType host_type = std::is_same_v<V, double> ? at::kDouble : std::is_same_v<V, float> ? at::kFloat : at::kLong;
  at::Tensor host = at::from_blob(const_cast<V*>(v.data()), {static_cast<int64_t>(v.size())},
                                  at::TensorOptions().dtype(host_type));
  return host.to(dtype).to(device);
}

// out (rows) = the in-order sums of the rows of in (rows x cols), both float64 device tensors.
at::Tensor row_sums(const at::Tensor& in, int64_t rows, int64_t cols, cudaStream_t stream) {
  at::Tensor out = at::empty({rows}, in.options());
  if (rows == 0) return out;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(rows, 256), 65535));
  stein_cuda::row_sums_kernel<<<blocks, 256, 0, stream>>>(in.const_data_ptr<double>(), rows, cols,
                                                          out.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::vector<double> host_vector(const at::Tensor& t) {
  const at::Tensor h = t.to(at::kCPU, at::kDouble).contiguous();
  return std::vector<double>(h.const_data_ptr<double>(), h.const_data_ptr<double>() + h.numel());
}

// D2 (M x M, float64, host) from the particles. Raises if X is not finite.
template <typename T>
std::vector<double> sq_dists(const SteinProblem& p, const char* op, cudaStream_t stream) {
  TORCH_CHECK_VALUE(p.X.isfinite().all().item<bool>(), op, ": X must be finite, found NaN or infinity.");
  const int64_t M = p.M, d = p.d, MM = M * M;
  std::vector<double> D2(static_cast<size_t>(MM), 0.0);
  if (M < 2) return D2;
  const int64_t nchunks = std::max<int64_t>(1, std::min(ceil_div(d, kDistChunk), kMaxPairPartials / MM));
  const int64_t chunk = ceil_div(d, nchunks);
  const int64_t per_block = std::max<int64_t>(1, ceil_div(MM, 4096));  // at most 4096 pair groups
  at::Tensor partial = at::zeros({MM, nchunks}, p.X.options().dtype(at::kDouble));
  const dim3 grid(static_cast<unsigned>(nchunks), grid_yz(ceil_div(MM, per_block)));
  stein_cuda::sq_dists_kernel<T><<<grid, kThreads, 0, stream>>>(p.X.const_data_ptr<T>(), p.X.stride(0),
                                                                 static_cast<int>(M), d, chunk, nchunks, per_block,
                                                                 partial.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const std::vector<double> upper = host_vector(row_sums(partial, MM, nchunks, stream));
  for (int64_t a = 0; a < M; ++a) {
    for (int64_t b = a + 1; b < M; ++b) D2[a * M + b] = D2[b * M + a] = upper[a * M + b];
  }
  return D2;
}

void check_sizes(const SteinProblem& p, const char* op) {
  TORCH_CHECK_VALUE(p.M < (int64_t{1} << 31), op, ": the CUDA kernel supports at most 2^31 - 1 particles, got ",
                    p.M, ".");
}

template <typename T>
at::Tensor task_matrix(const SteinProblem& p, cudaStream_t stream) {
  using acc_t = typename stein_cuda::AccType<T>::type;
  const char* op = "stein_task_matrix";
  check_sizes(p, op);
  const int64_t K = p.K, M = p.M, d = p.d;
  const KernelTerms t = stein_host::kernel_terms(sq_dists<T>(p, op, stream), M, d, p.h);
  const int64_t r = t.r;
  const at::ScalarType acc_type = std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat;
  const at::Device device = p.X.device();
  const at::Tensor lower = to_device(t.lower, acc_type, device);
  const at::Tensor lap = to_device(t.lap, acc_type, device);
  const at::Tensor order = to_device(t.order, at::kLong, device);
  // Both buffers within kSegmentElems elements: T has K r rows, R has M (more when r is small).
  const int64_t seg = std::max<int64_t>(1, std::min(d, kSegmentElems / std::max(K * r, M)));
  at::Tensor tbuf = at::empty({K * r * seg}, p.X.options());
  at::Tensor rbuf = at::empty({M * seg}, p.X.options().dtype(acc_type));
  const int sms = [] {
    int n = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
    return n;
  }();
  const T* S = p.S.const_data_ptr<T>();
  const T* X = p.X.const_data_ptr<T>();
  const int64_t sK = p.S.stride(0), sM = p.S.stride(1);
  std::vector<double> G(static_cast<size_t>(K * K), 0.0), c(static_cast<size_t>(K), 0.0);

  for (int64_t s0 = 0; s0 < d; s0 += seg) {  // segments in order: deterministic
    const int64_t sl = std::min(seg, d - s0);
    const unsigned cols = static_cast<unsigned>(ceil_div(sl, kThreads));
    // R = Lap (X - x_0) on the segment, then c_i = <S_i, R>
    stein_cuda::laplacian_kernel<T><<<dim3(cols, grid_yz(M)), kThreads, 0, stream>>>(
        X, p.X.stride(0), s0, sl, static_cast<int>(M), lap.const_data_ptr<acc_t>(), rbuf.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t nblocks = ceil_div(M * sl, kDotBlock);
    at::Tensor cpart = at::empty({K, nblocks}, p.X.options().dtype(at::kDouble));
    stein_cuda::dot_kernel<T><<<dim3(static_cast<unsigned>(nblocks), grid_yz(K)), kThreads, 0, stream>>>(
        S, sK, sM, s0, sl, K, static_cast<int>(M), rbuf.const_data_ptr<acc_t>(), kDotBlock, nblocks,
        cpart.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const at::Tensor cseg = row_sums(cpart, K, nblocks, stream);
    // T_i = L' S_i on the segment, then G += the Gram product of its K rows (r * sl columns each)
    stein_cuda::mix_lower_kernel<T><<<dim3(cols, grid_yz(r), grid_yz(K)), kThreads, 0, stream>>>(
        S, sK, sM, s0, sl, K, static_cast<int>(M), static_cast<int>(r), lower.const_data_ptr<acc_t>(),
        order.const_data_ptr<int64_t>(), tbuf.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t n = r * sl;
    at::Tensor Gseg;
    if (K <= gram_cuda::kMaxM) {
      const int k = static_cast<int>(K);
      const gram_cuda::Plan plan = gram_cuda::make_plan(1, k, n, sms);
      at::Tensor gpart = at::empty({plan.nchunks * plan.tri}, p.X.options().dtype(at::kDouble));
      gram_cuda::gram_partial_kernel<T>
          <<<dim3(static_cast<unsigned>(plan.nchunks), 1), gram_cuda::kThreads,
             gram_cuda::shared_bytes<acc_t>(k, plan.tk), stream>>>(tbuf.const_data_ptr<T>(), 0, n, 1, k, n,
                                                                    plan.chunk, plan.nchunks, plan.tk,
                                                                    gpart.mutable_data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      Gseg = at::empty({K, K}, p.X.options().dtype(at::kDouble));
      gram_cuda::gram_finish_kernel<double><<<static_cast<unsigned>(ceil_div(plan.tri, 256)), 256, 0, stream>>>(
          gpart.const_data_ptr<double>(), 1, k, plan.nchunks, Gseg.mutable_data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      const at::Tensor T2 = tbuf.narrow(0, 0, K * n).view({K, n}).to(at::kDouble);
      Gseg = at::matmul(T2, T2.mT());
    }
    const std::vector<double> gh = host_vector(Gseg), ch = host_vector(cseg);
    for (int64_t i = 0; i < K; ++i) {
      for (int64_t j = i; j < K; ++j) G[i * K + j] += gh[i * K + j];
      c[i] += ch[i];
    }
  }
  for (double& v : c) v *= 2.0 / p.h;
  at::Tensor U = stein_host::assemble_u(G, c, t.cnst, K, M, device);
  if (!U.isfinite().all().item<bool>()) stein_host::raise_non_finite(op, p, "U");
  return U;
}

template <typename T>
at::Tensor update(const SteinProblem& p, const std::vector<double>& w, cudaStream_t stream) {
  using acc_t = typename stein_cuda::AccType<T>::type;
  const char* op = "stein_update";
  check_sizes(p, op);
  const int64_t K = p.K, M = p.M, d = p.d;
  const KernelTerms t = stein_host::kernel_terms(sq_dists<T>(p, op, stream), M, d, p.h, false);
  const std::vector<double> A = stein_host::update_matrix(t, w, M, p.h);
  const at::ScalarType acc_type = std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat;
  const at::Device device = p.X.device();
  const at::Tensor Ad = to_device(A, acc_type, device);
  const at::Tensor wd = to_device(w, acc_type, device);
  at::Tensor Sw = at::empty({M, d}, p.X.options().dtype(acc_type));
  at::Tensor phi = at::empty({M, d}, p.X.options());
  const dim3 grid(static_cast<unsigned>(ceil_div(d, kThreads)), grid_yz(M));
  stein_cuda::weighted_sum_kernel<T><<<grid, kThreads, 0, stream>>>(
      p.S.const_data_ptr<T>(), p.S.stride(0), p.S.stride(1), K, static_cast<int>(M), d, wd.const_data_ptr<acc_t>(),
      Sw.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  stein_cuda::update_kernel<T><<<grid, kThreads, 0, stream>>>(Sw.const_data_ptr<acc_t>(), p.X.const_data_ptr<T>(),
                                                              p.X.stride(0), static_cast<int>(M), d,
                                                              Ad.const_data_ptr<acc_t>(), phi.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!phi.isfinite().all().item<bool>()) stein_host::raise_non_finite(op, p, "phi");
  return phi;
}

at::Tensor stein_task_matrix_cuda(const at::Tensor& X, const at::Tensor& S, double h) {
  // Checks first: they raise the ValueError for inputs on different devices (X may be the CPU one).
  const SteinProblem p = stein_host::prepare("stein_task_matrix", X, S, h);
  const c10::cuda::CUDAGuard guard(X.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  return p.X.scalar_type() == at::kDouble ? task_matrix<double>(p, stream) : task_matrix<float>(p, stream);
}

at::Tensor stein_update_cuda(const at::Tensor& X, const at::Tensor& S, const at::Tensor& w, double h) {
  const SteinProblem p = stein_host::prepare("stein_update", X, S, h);
  const std::vector<double> wv = stein_host::check_weights("stein_update", w, p);
  const c10::cuda::CUDAGuard guard(X.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  return p.X.scalar_type() == at::kDouble ? update<double>(p, wv, stream) : update<float>(p, wv, stream);
}

}  // namespace

TORCH_LIBRARY_IMPL(torchmoo, CUDA, m) {
  m.impl("stein_task_matrix", &stein_task_matrix_cuda);
  m.impl("stein_update", &stein_update_cuda);
}

}  // namespace torchmoo
