// CPU kernel of d = sum_i w_i J_i over the m rows of J (torch-free): used by torchmoo::combine
// (combine.cpp) and by stein_update's combination of the scores (stein.cpp).
//
// A group of kGroupLines cache lines of columns is combined over the rows in SIMD registers and written
// once, so J is read once and d written once. The sums run in the input dtype: each output sums only m
// terms, and widening float32 to float64 on load cost 15-60% more time with 2 threads on AVX2 (the
// conversions compete with the loads), while float32 sums run at the speed of a plain read of J.
// At most kRowGroup rows are swept at a time: with more row streams than the hardware prefetcher tracks
// the loads stall (measured on AVX2, m = 40, one thread: 11 ms for all rows at once against 6 ms in groups
// of 16, with float64 sums). For m > kRowGroup the columns go in blocks of kColumnBlock whose partial sums
// wait in an L1 buffer between the row groups. Each output is summed over the rows in order: the result
// does not depend on how the columns are split. (Software prefetching was measured too: no gain with
// float32 sums, 10-15% slower with 2 threads at m = 10.)
#pragma once

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "gram_kernel.h"

namespace torchmoo {
namespace combine_simd {

constexpr int kGroupLines = 2;
constexpr int64_t kRowGroup = 16;
constexpr int64_t kColumnBlock = 1024;

// Rows [i0, i1) of the column groups in [k0, k1) (k1 - k0 a multiple of the group): acc = (first ? 0 :
// buf) + sum_i w_i J_i, then out (last; flag += acc - acc) or buf.
template <typename T, int Bytes>
TORCHMOO_GRAM_INLINE void sweep(const T* J, int64_t ld, int64_t i0, int64_t i1, int64_t k0, int64_t k1, const T* w,
                                bool first, bool last, T* buf, T* out, typename gram_simd::Simd<T, Bytes>::V& flag) {
  using S = gram_simd::Simd<T, Bytes>;
  using V = typename S::V;
  constexpr int W = S::W;
  constexpr int G = kGroupLines * 64 / static_cast<int>(sizeof(T));  // columns per group
  constexpr int NV = G / W;                                          // accumulators
  for (int64_t k = k0; k < k1; k += G) {
    V acc[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[v] = first ? V{} : S::load(buf + (k - k0) + v * W);
    for (int64_t i = i0; i < i1; ++i) {
      const T* row = J + i * ld + k;
      const T wi = w[i];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[v] += wi * S::load(row + v * W);
    }
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      std::memcpy((last ? out + k : buf + (k - k0)) + v * W, &acc[v], sizeof(V));
      if (last) flag += acc[v] - acc[v];
    }
  }
}

// out[k] = sum_i w[i] J[i * ld + k] for k < cols (m >= 1 rows), summed in T over the rows in order; returns
// a sum of (x - x) over the outputs x (NaN exactly when one of them is not finite).
template <typename T, int Bytes>
TORCHMOO_GRAM_INLINE T combine_chunk(const T* J, int64_t ld, int64_t m, int64_t cols, const T* w, T* out) {
  using S = gram_simd::Simd<T, Bytes>;
  using V = typename S::V;
  constexpr int64_t G = kGroupLines * 64 / static_cast<int64_t>(sizeof(T));
  static_assert(kColumnBlock % G == 0, "column blocks are whole groups");
  V flag{};
  const int64_t full = cols - cols % G;
  if (m <= kRowGroup) {
    sweep<T, Bytes>(J, ld, 0, m, 0, full, w, true, true, nullptr, out, flag);
  } else {
    alignas(64) T buf[kColumnBlock];
    for (int64_t k0 = 0; k0 < full; k0 += kColumnBlock) {
      const int64_t k1 = std::min(full, k0 + kColumnBlock);
      for (int64_t i0 = 0; i0 < m; i0 += kRowGroup) {
        const int64_t i1 = std::min(m, i0 + kRowGroup);
        sweep<T, Bytes>(J, ld, i0, i1, k0, k1, w, i0 == 0, i1 == m, buf, out, flag);
      }
    }
  }
  T f = S::hsum(flag);
  for (int64_t k = full; k < cols; ++k) {
    T s = T(0);
    for (int64_t i = 0; i < m; ++i) s += w[i] * J[i * ld + k];
    out[k] = s;
    f += s - s;
  }
  return f;
}

template <typename T>
using ChunkFn = T (*)(const T* J, int64_t ld, int64_t m, int64_t cols, const T* w, T* out);

// The AVX2 + FMA build where the CPU has it, unless ATEN_CPU_CAPABILITY=default asks for portable kernels
// (the same choice as gram_simd::select_kernels()).
struct Kernels {
  ChunkFn<float> f32;
  ChunkFn<double> f64;
  const char* name;
};
Kernels select_kernels();

}  // namespace combine_simd
}  // namespace torchmoo

#pragma GCC diagnostic pop
