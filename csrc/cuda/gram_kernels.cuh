// CUDA kernels of torchmoo::gram (host glue in gram.cu), torch-free.
//
// Two passes, no atomics, so the result is deterministic on a given GPU:
// 1. gram_partial_kernel: block (chunk c, problem b) walks the columns of its chunk in tiles of m x tk
//    elements staged in shared memory (coalesced loads, converted to the accumulation type), and forms
//    the m(m+1)/2 upper-triangle dot products of every tile. When there are fewer pairs than threads,
//    the threads split into groups that take interleaved columns of the tile. Per tile the products are
//    summed in float (double for float64 input) and added to per-thread float64 sums; the groups are
//    reduced in a fixed order and the block writes its chunk's triangle to `partial`.
// 2. gram_finish_kernel: one thread per (problem, pair) sums the chunks in order and writes G[i][j]
//    and G[j][i] from the same value, so G is exactly symmetric.
#pragma once

#include <cstdint>

namespace torchmoo {
namespace gram_cuda {

constexpr int kThreads = 256;
// Largest m the kernels handle (above, the host uses at::matmul).
constexpr int kMaxM = 64;
// Pairs per thread when m(m+1)/2 > kThreads: ceil(64 * 65 / 2 / 256).
constexpr int kMaxPairsPerThread = (kMaxM * (kMaxM + 1) / 2 + kThreads - 1) / kThreads;
// Elements of J per shared-memory tile (m x tk): 16 KiB of float, 32 KiB of double.
constexpr int kTileElems = 4096;
constexpr int64_t kMaxGridY = 65535;

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

// Launch shape for B problems of m x n on a GPU with `sms` multiprocessors.
struct Plan {
  int tk = 0;           // tile width (columns), a multiple of 32
  int64_t chunk = 0;    // columns per block, a multiple of tk
  int64_t nchunks = 0;  // blocks per problem (grid.x)
  int64_t grid_y = 0;   // blocks along the batch (each loops over problems b = blockIdx.y + k grid_y)
  int tri = 0;          // m (m + 1) / 2
};

inline Plan make_plan(int64_t B, int m, int64_t n, int64_t sms) {
  Plan p;
  p.tri = m * (m + 1) / 2;
  int tk = kTileElems / m / 32 * 32;
  p.tk = tk < 32 ? 32 : (tk > 1024 ? 1024 : tk);
  // About four blocks per multiprocessor over the whole batch; chunks are whole tiles.
  const int64_t want = B >= 4 * sms ? 1 : (4 * sms + B - 1) / B;
  const int64_t tiles = (n + p.tk - 1) / p.tk;
  p.chunk = ((tiles + want - 1) / want) * p.tk;
  p.nchunks = (n + p.chunk - 1) / p.chunk;
  p.grid_y = B < kMaxGridY ? B : kMaxGridY;
  return p;
}

// Dynamic shared memory of gram_partial_kernel: kThreads doubles for the group reduction, then the tile.
template <typename acc_t>
inline size_t shared_bytes(int m, int tk) {
  return sizeof(double) * kThreads + sizeof(acc_t) * static_cast<size_t>(m) * (tk + 1);
}

// Row i and column j of the p-th entry of the upper triangle (row-major, diagonal included) of m x m.
__host__ __device__ __forceinline__ void pair_of(int p, int m, int& i, int& j) {
  i = 0;
  while (p >= m - i) {
    p -= m - i;
    ++i;
  }
  j = i + p;
}

// partial[(b * nchunks + c) * tri + p] = sum over the columns of chunk c of J[b][i][k] J[b][j][k], (i, j)
// the p-th upper-triangle pair. Rows of problem b start at J + b * sb + i * si; columns have unit stride.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    gram_partial_kernel(const T* __restrict__ J, int64_t sb, int64_t si, int64_t B, int m, int64_t n,
                        int64_t chunk, int64_t nchunks, int tk, double* __restrict__ partial) {
  using acc_t = typename AccType<T>::type;
  extern __shared__ __align__(16) unsigned char smem[];
  double* group_sums = reinterpret_cast<double*>(smem);                 // kThreads
  acc_t* tile = reinterpret_cast<acc_t*>(smem + sizeof(double) * kThreads);  // m rows, pitch tk + 1
  const int pitch = tk + 1;  // odd: the rows of a column fall in different banks
  const int tri = m * (m + 1) / 2;
  const int t = threadIdx.x;
  // Thread -> column group g of `groups` and its pairs: pair t % tri when tri <= kThreads, else the
  // pairs t, t + kThreads, ... (one group).
  const bool few = tri <= kThreads;
  const int groups = few ? kThreads / tri : 1;
  const int g = few ? t / tri : 0;
  int pi[kMaxPairsPerThread], pj[kMaxPairsPerThread];
#pragma unroll
  for (int s = 0; s < kMaxPairsPerThread; ++s) {
    const int p = few ? (s == 0 ? t % tri : tri) : t + s * kThreads;
    if (g < groups && p < tri) {
      pair_of(p, m, pi[s], pj[s]);
    } else {
      pi[s] = pj[s] = -1;
    }
  }
  const int64_t c = blockIdx.x;
  const int64_t c0 = c * chunk;
  const int64_t c1 = c0 + chunk < n ? c0 + chunk : n;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const T* Jb = J + b * sb;
    double sums[kMaxPairsPerThread];
#pragma unroll
    for (int s = 0; s < kMaxPairsPerThread; ++s) sums[s] = 0.0;
    for (int64_t k0 = c0; k0 < c1; k0 += tk) {
      __syncthreads();  // nobody reads the previous tile any more
      for (int e = t; e < m * tk; e += kThreads) {
        const int i = e / tk;
        const int k = e - i * tk;
        const int64_t col = k0 + k;
        tile[i * pitch + k] = col < c1 ? static_cast<acc_t>(Jb[i * si + col]) : acc_t(0);
      }
      __syncthreads();
#pragma unroll
      for (int s = 0; s < kMaxPairsPerThread; ++s) {
        if (pi[s] >= 0) {
          const acc_t* x = tile + pi[s] * pitch;
          const acc_t* y = tile + pj[s] * pitch;
          acc_t dot = 0;
          for (int k = g; k < tk; k += groups) dot += x[k] * y[k];
          sums[s] += static_cast<double>(dot);
        }
      }
    }
    double* out = partial + (b * nchunks + c) * tri;
    if (few) {
      __syncthreads();  // the previous problem's reduction has been read
      group_sums[t] = sums[0];
      __syncthreads();
      if (t < tri) {
        double total = 0.0;
        for (int q = 0; q < groups; ++q) total += group_sums[q * tri + t];  // fixed order
        out[t] = total;
      }
    } else {
#pragma unroll
      for (int s = 0; s < kMaxPairsPerThread; ++s) {
        if (pi[s] >= 0) out[t + s * kThreads] = sums[s];
      }
    }
  }
}

template <typename T>
__device__ __forceinline__ T from_double(double x) {
  return static_cast<T>(static_cast<float>(x));
}
template <>
__device__ __forceinline__ double from_double<double>(double x) {
  return x;
}

// G[b][i][j] = G[b][j][i] = sum over the chunks of partial, for every (b, upper-triangle pair).
template <typename T>
__global__ void gram_finish_kernel(const double* __restrict__ partial, int64_t B, int m, int64_t nchunks,
                                   T* __restrict__ G) {
  const int tri = m * (m + 1) / 2;
  const int64_t total = B * tri;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = e / tri;
    const int p = static_cast<int>(e - b * tri);
    double s = 0.0;
    for (int64_t c = 0; c < nchunks; ++c) s += partial[(b * nchunks + c) * tri + p];  // fixed order
    int i, j;
    pair_of(p, m, i, j);
    const T v = from_double<T>(s);
    G[(b * m + i) * m + j] = v;
    G[(b * m + j) * m + i] = v;
  }
}

}  // namespace gram_cuda
}  // namespace torchmoo
