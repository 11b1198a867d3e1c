// CPU kernel of the Gram product G = J J^T for short-fat J (m rows, n >> m columns), torch-free.
//
// A symmetric rank-k update over column blocks: the m x bc block of J that starts at column k0 stays in
// L1/L2 while every upper-triangle dot product of the block is formed, so J is read from memory once.
// The dot products are register tiles of 3 x 3 row pairs (one tile of all rows when m <= 4); each tile
// entry is a SIMD vector of partial sums over the block's columns (lane l sums the columns congruent
// to l), reduced to one scalar at the end of the block and added to a float64 accumulator: float32 sums
// run over at most bc / W terms, everything across blocks is summed in float64.
//
// The vectors are GCC/Clang vector extensions, so the same template compiles to SSE2/NEON (the portable
// path) and, inside a function compiled for AVX2 + FMA, to 256-bit FMAs; select_kernels() picks the
// build at run time from the CPU's features (gram_kernel.cpp).
#pragma once

// Vector types in the signatures of always-inline helpers: no ABI is involved.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace torchmoo {
namespace gram_simd {

#if defined(__GNUC__) || defined(__clang__)
#define TORCHMOO_GRAM_INLINE inline __attribute__((always_inline))
#else
#error "the Gram kernel needs GCC or Clang vector extensions"
#endif

// Widest SIMD vector (in elements of float) any path uses: the padding buffer holds m rows of this.
constexpr int kMaxLanes = 8;
// Column blocks are multiples of this, so every path's vector width divides them.
constexpr int64_t kBlockAlign = 16;

template <typename T, int Bytes>
struct Simd {
  typedef T V __attribute__((vector_size(Bytes)));
  static constexpr int W = Bytes / static_cast<int>(sizeof(T));

  static TORCHMOO_GRAM_INLINE V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));  // an unaligned vector load
    return v;
  }
  static TORCHMOO_GRAM_INLINE T hsum(const V& v) {
    T s = v[0];
    for (int l = 1; l < W; ++l) s += v[l];
    return s;
  }
};

// acc[i][j] += sum_k x[i][k] x[j][k] over k < len (len a multiple of W), for i in [i0, i0 + RI),
// j in [j0, j0 + RJ); on a diagonal tile (i0 == j0) only j >= i. Rows of x are ld elements apart.
// U independent sets of accumulators hide the FMA latency when a tile has few of them (m <= 3).
// Diagonal tiles, which together visit every row once, prefetch the same rows pf elements ahead (the
// next block), so that the next block streams in while this one is computed (pf = 0: no prefetch;
// prefetches never fault, so running past the end of J is harmless). Measured on AVX2, m = 10:
// 5-15% less time.
template <typename T, int Bytes, int RI, int RJ, bool Diag>
TORCHMOO_GRAM_INLINE void tile(const T* x, int64_t ld, int64_t len, int64_t i0, int64_t j0, double* acc,
                               int64_t m, int64_t pf) {
  using S = Simd<T, Bytes>;
  using V = typename S::V;
  constexpr int W = S::W;
  constexpr int kSums = Diag ? RI * (RI + 1) / 2 : RI * RJ;
  constexpr int U = kSums >= 6 ? 1 : kSums >= 3 ? 2 : 4;
  V s[U][RI][RJ];
  const uintptr_t pf_bytes = static_cast<uintptr_t>(pf) * sizeof(T);
  const T* a[RI];
  const T* b[RJ];
#pragma GCC unroll 8
  for (int r = 0; r < RI; ++r) a[r] = x + (i0 + r) * ld;
#pragma GCC unroll 8
  for (int c = 0; c < RJ; ++c) b[c] = x + (j0 + c) * ld;
#pragma GCC unroll 8
  for (int u = 0; u < U; ++u) {
#pragma GCC unroll 8
    for (int r = 0; r < RI; ++r) {
#pragma GCC unroll 8
      for (int c = 0; c < RJ; ++c) s[u][r][c] = V{};
    }
  }
  // One vector of columns at k into accumulator set u.
  auto step = [&](int64_t k, V(&su)[RI][RJ]) __attribute__((always_inline)) {
    V bv[RJ];
#pragma GCC unroll 8
    for (int c = 0; c < RJ; ++c) bv[c] = S::load(b[c] + k);
    if (Diag && pf != 0) {
#pragma GCC unroll 8
      for (int c = 0; c < RJ; ++c) {
        // Integer arithmetic: the address may lie past the end of J, which a pointer must not.
        __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(b[c] + k) + pf_bytes), 0, 3);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < RI; ++r) {
      const V av = Diag ? bv[r] : S::load(a[r] + k);
#pragma GCC unroll 8
      for (int c = 0; c < RJ; ++c) {
        if (!Diag || c >= r) su[r][c] += av * bv[c];
      }
    }
  };
  int64_t k = 0;
  for (; k + U * W <= len; k += U * W) {
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) step(k + u * W, s[u]);
  }
  for (; k < len; k += W) step(k, s[0]);
#pragma GCC unroll 8
  for (int r = 0; r < RI; ++r) {
#pragma GCC unroll 8
    for (int c = 0; c < RJ; ++c) {
      if (!Diag || c >= r) {
        V t = s[0][r][c];
#pragma GCC unroll 8
        for (int u = 1; u < U; ++u) t += s[u][r][c];
        acc[(i0 + r) * m + (j0 + c)] += static_cast<double>(S::hsum(t));
      }
    }
  }
}

// One tile of size ri x rj (each in [1, R]) through a compile-time instantiation.
template <typename T, int Bytes, int R>
TORCHMOO_GRAM_INLINE void tile_dispatch(const T* x, int64_t ld, int64_t len, int64_t i0, int64_t j0, int ri, int rj,
                                        double* acc, int64_t m, int64_t pf) {
  static_assert(R == 3, "tile_dispatch enumerates the tile shapes of R = 3");
  if (i0 == j0) {  // diagonal tiles are square
    switch (ri) {
      case 3: tile<T, Bytes, 3, 3, true>(x, ld, len, i0, j0, acc, m, pf); return;
      case 2: tile<T, Bytes, 2, 2, true>(x, ld, len, i0, j0, acc, m, pf); return;
      default: tile<T, Bytes, 1, 1, true>(x, ld, len, i0, j0, acc, m, pf); return;
    }
  }
  switch (ri * 4 + rj) {
    case 3 * 4 + 3: tile<T, Bytes, 3, 3, false>(x, ld, len, i0, j0, acc, m, pf); return;
    case 3 * 4 + 2: tile<T, Bytes, 3, 2, false>(x, ld, len, i0, j0, acc, m, pf); return;
    case 3 * 4 + 1: tile<T, Bytes, 3, 1, false>(x, ld, len, i0, j0, acc, m, pf); return;
    case 2 * 4 + 3: tile<T, Bytes, 2, 3, false>(x, ld, len, i0, j0, acc, m, pf); return;
    case 2 * 4 + 2: tile<T, Bytes, 2, 2, false>(x, ld, len, i0, j0, acc, m, pf); return;
    case 2 * 4 + 1: tile<T, Bytes, 2, 1, false>(x, ld, len, i0, j0, acc, m, pf); return;
    case 1 * 4 + 3: tile<T, Bytes, 1, 3, false>(x, ld, len, i0, j0, acc, m, pf); return;
    case 1 * 4 + 2: tile<T, Bytes, 1, 2, false>(x, ld, len, i0, j0, acc, m, pf); return;
    default: tile<T, Bytes, 1, 1, false>(x, ld, len, i0, j0, acc, m, pf); return;
  }
}

// Every upper-triangle tile of one m x len block (len a multiple of the vector width).
template <typename T, int Bytes, int R>
TORCHMOO_GRAM_INLINE void block(const T* x, int64_t ld, int64_t len, double* acc, int64_t m, int64_t pf) {
  // Up to 4 rows: one diagonal tile holds all m(m+1)/2 sums (10 accumulators + 4 operands), so every
  // row is loaded once per vector instead of once per tile.
  switch (m) {
    case 4: tile<T, Bytes, 4, 4, true>(x, ld, len, 0, 0, acc, m, pf); return;
    case 3: tile<T, Bytes, 3, 3, true>(x, ld, len, 0, 0, acc, m, pf); return;
    case 2: tile<T, Bytes, 2, 2, true>(x, ld, len, 0, 0, acc, m, pf); return;
    case 1: tile<T, Bytes, 1, 1, true>(x, ld, len, 0, 0, acc, m, pf); return;
    default: break;
  }
  for (int64_t i0 = 0; i0 < m; i0 += R) {
    const int ri = static_cast<int>(std::min<int64_t>(R, m - i0));
    for (int64_t j0 = i0; j0 < m; j0 += R) {
      const int rj = static_cast<int>(std::min<int64_t>(R, m - j0));
      tile_dispatch<T, Bytes, R>(x, ld, len, i0, j0, ri, rj, acc, m, pf);
    }
  }
}

// acc (m x m, row-major, upper triangle used) += the Gram product of the m x cols matrix x (rows ld apart),
// in blocks of bc columns (a multiple of kBlockAlign), each prefetching the next. pad: scratch of m * kMaxLanes elements for the last
// partial vector of the rows, which is copied there with zeros behind it.
template <typename T, int Bytes, int R>
TORCHMOO_GRAM_INLINE void chunk(const T* x, int64_t ld, int64_t m, int64_t cols, int64_t bc, double* acc, T* pad) {
  constexpr int W = Simd<T, Bytes>::W;
  for (int64_t k0 = 0; k0 < cols; k0 += bc) {
    const int64_t len = std::min(bc, cols - k0);
    const int64_t full = len - len % W;
    if (full > 0) block<T, Bytes, R>(x + k0, ld, full, acc, m, bc);
    if (full < len) {
      const int64_t rem = len - full;
      for (int64_t i = 0; i < m; ++i) {
        T* dst = pad + i * W;
        std::memcpy(dst, x + i * ld + k0 + full, static_cast<size_t>(rem) * sizeof(T));
        std::fill(dst + rem, dst + W, T(0));
      }
      block<T, Bytes, R>(pad, W, W, acc, m, 0);
    }
  }
}

// Columns per block for m rows: at most 256 KiB of J, so the block stays in L2 while its tiles run, and
// at most 1024, which bounds the float32 partial sums to 1024 / W terms. Long blocks matter: each one
// ends with a horizontal sum per tile entry (measured on AVX2, m = 40: 13 G dot-product terms/s with
// 64-column blocks, 32 G with 1024).
template <typename T>
inline int64_t block_columns(int64_t m) {
  const int64_t target = (int64_t{256} << 10) / (static_cast<int64_t>(sizeof(T)) * std::max<int64_t>(m, 1));
  const int64_t bc = std::clamp<int64_t>(target, 64, 1024);
  return bc / kBlockAlign * kBlockAlign;
}

// acc (m x m, upper triangle) += x x^T for the m x cols matrix x with rows ld elements apart (see chunk()).
template <typename T>
using ChunkFn = void (*)(const T* x, int64_t ld, int64_t m, int64_t cols, int64_t bc, double* acc, T* pad);

// The build of the kernel for this CPU: AVX2 + FMA (256-bit) where the CPU has them, else the portable
// one (128-bit). ATEN_CPU_CAPABILITY=default, torch's switch to portable kernels, selects the portable one.
// Read once per operator call (it looks at the environment).
struct Kernels {
  ChunkFn<float> f32;
  ChunkFn<double> f64;
  const char* name;  // "avx2" or "generic"
};
Kernels select_kernels();

}  // namespace gram_simd
}  // namespace torchmoo

#pragma GCC diagnostic pop
