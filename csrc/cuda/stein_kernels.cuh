// CUDA kernels of torchmoo::stein_task_matrix and torchmoo::stein_update (host glue in stein.cu), torch-free.
//
// Every kernel is a plain map or a fixed-order reduction (no atomics), so the results are deterministic
// on a given GPU:
// * sq_dists_kernel: block (column chunk, group of particle pairs) sums (x_a - x_b)^2 over its columns
//   for each pair of its group, one column per thread, reduced in a fixed order -> partial[pair][chunk];
// * row_sums_kernel: out[row] = sum_c in[row][c] in order (the chunk partials of every reduction);
// * mix_lower_kernel: T_i = L' S_i (L the pivoted Cholesky factor of the kernel matrix), one column per thread;
// * laplacian_kernel: R = Lap (X - x_0), one column per thread;
// * dot_kernel: block (element block, target i) sums S_i * R over its elements -> partial[i][block];
// * weighted_sum_kernel / update_kernel: S_w = sum_i w_i S_i, then phi = A' [S_w; X - x_0].
// G is the Gram product of the rows T_i, formed by the Gram kernels of gram_kernels.cuh.
#pragma once

#include <cstdint>

#include "gram_kernels.cuh"

namespace torchmoo {
namespace stein_cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Largest grid.y / grid.z; kernels loop over what does not fit.
constexpr int64_t kMaxGridYZ = 65535;

// The accumulation type of the gram kernels (float for float, double for double).
using gram_cuda::AccType;

// Sum of one value per thread of the block, in a fixed order; the result is valid in thread 0. Every
// thread of the block must call it (it synchronizes).
__device__ __forceinline__ double block_sum(double v, double* red /* kWarps */) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  __syncthreads();  // the previous call's reads of red are done
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarps; ++w) total += red[w];
  }
  return total;
}

// partial[q * nchunks + c] = sum over the columns of chunk c of (x_a - x_b)^2 for q = a * M + b, a < b
// (entries with a >= b are not written). Block (c, g) handles q in [g * per_block, (g + 1) * per_block).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    sq_dists_kernel(const T* __restrict__ X, int64_t ld, int M, int64_t d, int64_t chunk, int64_t nchunks,
                    int64_t per_block, double* __restrict__ partial) {
  using acc_t = typename AccType<T>::type;
  __shared__ double red[kWarps];
  const int64_t c = blockIdx.x;
  const int64_t c0 = c * chunk;
  const int64_t c1 = c0 + chunk < d ? c0 + chunk : d;
  const int64_t MM = static_cast<int64_t>(M) * M;
  for (int64_t g = blockIdx.y; g * per_block < MM; g += gridDim.y) {
    const int64_t q1 = (g + 1) * per_block < MM ? (g + 1) * per_block : MM;
    for (int64_t q = g * per_block; q < q1; ++q) {
      const int64_t a = q / M, b = q - a * M;
      if (a >= b) continue;  // the same for the whole block
      const T* xa = X + a * ld;
      const T* xb = X + b * ld;
      acc_t s = 0;
      for (int64_t l = c0 + threadIdx.x; l < c1; l += kThreads) {
        const acc_t e = static_cast<acc_t>(xa[l]) - static_cast<acc_t>(xb[l]);
        s += e * e;
      }
      const double total = block_sum(static_cast<double>(s), red);
      if (threadIdx.x == 0) partial[q * nchunks + c] = total;
    }
  }
}

// out[row] = sum_{c < cols} in[row * cols + c], in order, for row < rows.
__global__ void row_sums_kernel(const double* __restrict__ in, int64_t rows, int64_t cols, double* __restrict__ out) {
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double s = 0.0;
    for (int64_t c = 0; c < cols; ++c) s += in[row * cols + c];
    out[row] = s;
  }
}

// out[(i * r + m) * sl + l] = sum_{q = m}^{M - 1} lower[q * r + m] S[i * sK + order[q] * sM + s0 + l] for l < sl,
// m = blockIdx.y (< r), i = blockIdx.z + k gridDim.z (< K).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    mix_lower_kernel(const T* __restrict__ S, int64_t sK, int64_t sM, int64_t s0, int64_t sl, int64_t K, int M, int r,
                     const typename AccType<T>::type* __restrict__ lower, const int64_t* __restrict__ order,
                     T* __restrict__ out) {
  using acc_t = typename AccType<T>::type;
  const int64_t l = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (l >= sl) return;
  for (int64_t m = blockIdx.y; m < r; m += gridDim.y) {
    for (int64_t i = blockIdx.z; i < K; i += gridDim.z) {
      const T* Si = S + i * sK + s0 + l;
      acc_t s = 0;
      for (int64_t q = m; q < M; ++q) s += lower[q * r + m] * static_cast<acc_t>(Si[order[q] * sM]);
      out[(i * r + m) * sl + l] = static_cast<T>(s);
    }
  }
}

// R[a * sl + l] = sum_b lap[b * M + a] (X[b, s0 + l] - X[0, s0 + l]) for l < sl, a = blockIdx.y + k gridDim.y.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    laplacian_kernel(const T* __restrict__ X, int64_t ld, int64_t s0, int64_t sl, int M,
                     const typename AccType<T>::type* __restrict__ lap, typename AccType<T>::type* __restrict__ R) {
  using acc_t = typename AccType<T>::type;
  const int64_t l = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (l >= sl) return;
  const acc_t x0 = static_cast<acc_t>(X[s0 + l]);
  for (int64_t a = blockIdx.y; a < M; a += gridDim.y) {
    acc_t s = 0;
    for (int64_t b = 0; b < M; ++b) s += lap[b * M + a] * (static_cast<acc_t>(X[b * ld + s0 + l]) - x0);
    R[a * sl + l] = s;
  }
}

// partial[i * nblocks + blk] = sum over the elements e in [blk * per_block, (blk + 1) * per_block) of the
// M * sl elements (a, l) = (e / sl, e % sl) of S[i, a, s0 + l] R[e].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    dot_kernel(const T* __restrict__ S, int64_t sK, int64_t sM, int64_t s0, int64_t sl, int64_t K, int M,
               const typename AccType<T>::type* __restrict__ R, int64_t per_block, int64_t nblocks,
               double* __restrict__ partial) {
  using acc_t = typename AccType<T>::type;
  __shared__ double red[kWarps];
  const int64_t n = static_cast<int64_t>(M) * sl;
  const int64_t blk = blockIdx.x;
  const int64_t e0 = blk * per_block;
  const int64_t e1 = e0 + per_block < n ? e0 + per_block : n;
  for (int64_t i = blockIdx.y; i < K; i += gridDim.y) {
    const T* Si = S + i * sK + s0;
    acc_t s = 0;
    for (int64_t e = e0 + threadIdx.x; e < e1; e += kThreads) {
      const int64_t a = e / sl, l = e - a * sl;
      s += static_cast<acc_t>(Si[a * sM + l]) * R[e];
    }
    const double total = block_sum(static_cast<double>(s), red);
    if (threadIdx.x == 0) partial[i * nblocks + blk] = total;
  }
}

// Sw[a * d + l] = sum_i w[i] S[i * sK + a * sM + l] for l < d, a = blockIdx.y + k gridDim.y.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    weighted_sum_kernel(const T* __restrict__ S, int64_t sK, int64_t sM, int64_t K, int M, int64_t d,
                        const typename AccType<T>::type* __restrict__ w, typename AccType<T>::type* __restrict__ Sw) {
  using acc_t = typename AccType<T>::type;
  const int64_t l = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (l >= d) return;
  for (int64_t a = blockIdx.y; a < M; a += gridDim.y) {
    acc_t s = 0;
    for (int64_t i = 0; i < K; ++i) s += w[i] * static_cast<acc_t>(S[i * sK + a * sM + l]);
    Sw[a * d + l] = s;
  }
}

// phi[a * d + l] = sum_b A[b * M + a] Sw[b * d + l] + sum_b A[(M + b) * M + a] (X[b, l] - X[0, l]).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    update_kernel(const typename AccType<T>::type* __restrict__ Sw, const T* __restrict__ X, int64_t ld, int M,
                  int64_t d, const typename AccType<T>::type* __restrict__ A, T* __restrict__ phi) {
  using acc_t = typename AccType<T>::type;
  const int64_t l = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (l >= d) return;
  const acc_t x0 = static_cast<acc_t>(X[l]);
  const int64_t MM = static_cast<int64_t>(M) * M;
  for (int64_t a = blockIdx.y; a < M; a += gridDim.y) {
    acc_t s = 0;
    for (int64_t b = 0; b < M; ++b) s += A[b * M + a] * Sw[b * d + l];
    for (int64_t b = 0; b < M; ++b) s += A[MM + b * M + a] * (static_cast<acc_t>(X[b * ld + l]) - x0);
    phi[a * d + l] = static_cast<T>(s);
  }
}

}  // namespace stein_cuda
}  // namespace torchmoo
