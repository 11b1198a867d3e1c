// CPU kernels of MT-SGD's Stein operators (driver in stein.cpp), torch-free: the pieces one column block
// of the particles and scores goes through. Same vector types and run-time choice (AVX2 + FMA or
// portable) as the Gram kernel (gram_kernel.h), whose chunk function forms G from the mixed scores.
//
// * sq_dists: the pairwise squared distances of the particles over some columns, in float64 across
//   blocks of at most kSumBlock columns (within a block in the input dtype, SIMD lanes splitting it
//   further), and a NaN flag for non-finite particles.
// * mix: out[m] = sum_q A[q][m] in[q] over rows of one column block, the one product every step is made
//   of (L' S_i, Lap X, K S_w). A register tile of RM output rows x KV vectors of columns; the input rows'
//   strip of KV vectors stays in L1 while every output row is formed. For a lower-trapezoidal A (the
//   Cholesky factor) a tile starting at row m0 skips q < m0, which halves the work. The same sweep can
//   form sum_q <in[q], y[q]> (c_i of the task matrix) and prefetch the next block of the input rows.
// * nonfinite_sum, center: the finiteness check of an output row, and the particles minus particle 0.
#pragma once

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "combine_kernel.h"
#include "gram_kernel.h"

namespace torchmoo {
namespace stein_simd {

using gram_simd::Simd;

// Columns per float64 partial sum in sq_dists: at most kSumBlock (which bounds the input-dtype partial sums
// to kSumBlock / W terms), fewer for many particles so that the block's rows stay in L1 (about 32 KiB),
// at least 64.
constexpr int64_t kSumBlock = 1024;
template <typename T>
inline int64_t sum_block(int64_t M) {
  const int64_t fit = (int64_t{32} << 10) / (static_cast<int64_t>(sizeof(T)) * std::max<int64_t>(M, 1));
  return std::clamp<int64_t>(fit / 64 * 64, 64, kSumBlock);
}

// acc[a * M + b] += sum_k (x_a[k] - x_b[k])^2 over len columns (len a multiple of W) for a in [a0, a0 + RA),
// b in [b0, b0 + RB): a register tile of RA x RB pairs, each with U independent vector sums.
template <typename T, int Bytes, int RA, int RB>
TORCHMOO_GRAM_INLINE void sq_dists_tile(const T* x, int64_t ld, int64_t a0, int64_t b0, int64_t len, double* acc,
                                        int64_t M) {
  using S = Simd<T, Bytes>;
  using V = typename S::V;
  constexpr int W = S::W;
  constexpr int U = RA * RB >= 4 ? 1 : 4;  // at least 4 chains of dependent FMAs
  V s[U][RA][RB];
#pragma GCC unroll 4
  for (int u = 0; u < U; ++u) {
#pragma GCC unroll 4
    for (int r = 0; r < RA; ++r) {
#pragma GCC unroll 4
      for (int c = 0; c < RB; ++c) s[u][r][c] = V{};
    }
  }
  auto step = [&](int64_t k, V(&su)[RA][RB]) __attribute__((always_inline)) {
    V xa[RA], xb[RB];
#pragma GCC unroll 4
    for (int r = 0; r < RA; ++r) xa[r] = S::load(x + (a0 + r) * ld + k);
#pragma GCC unroll 4
    for (int c = 0; c < RB; ++c) xb[c] = S::load(x + (b0 + c) * ld + k);
#pragma GCC unroll 4
    for (int r = 0; r < RA; ++r) {
#pragma GCC unroll 4
      for (int c = 0; c < RB; ++c) {
        const V e = xa[r] - xb[c];
        su[r][c] += e * e;
      }
    }
  };
  int64_t k = 0;
  for (; k + U * W <= len; k += U * W) {
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) step(k + u * W, s[u]);
  }
  for (; k < len; k += W) step(k, s[0]);
#pragma GCC unroll 4
  for (int r = 0; r < RA; ++r) {
#pragma GCC unroll 4
    for (int c = 0; c < RB; ++c) {
      V t = s[0][r][c];
#pragma GCC unroll 4
      for (int u = 1; u < U; ++u) t += s[u][r][c];
      acc[(a0 + r) * M + b0 + c] += static_cast<double>(S::hsum(t));
    }
  }
}

// acc[a * M + b] (a < b) += sum over cols of (x_a - x_b)^2 for the M rows of x (ld apart), in blocks of
// sum_block columns summed in T and added in float64; *flag += a sum of (x - x), which is NaN exactly
// when some x is NaN or infinite. The pairs run in 2 x 2 tiles (4 loads per 4 squared differences).
template <typename T, int Bytes>
TORCHMOO_GRAM_INLINE void sq_dists(const T* x, int64_t ld, int64_t M, int64_t cols, double* acc, double* flag) {
  using S = Simd<T, Bytes>;
  using V = typename S::V;
  constexpr int W = S::W;
  const int64_t block = sum_block<T>(M);
  for (int64_t k0 = 0; k0 < cols; k0 += block) {
    const int64_t len = std::min(block, cols - k0);
    const int64_t full = len - len % W;
    const T* xk = x + k0;
    for (int64_t a = 0; a < M; ++a) {
      const T* xa = xk + a * ld;
      V f{};
      for (int64_t k = 0; k < full; k += W) {
        const V v = S::load(xa + k);
        f += v - v;
      }
      T ft = S::hsum(f);
      for (int64_t k = full; k < len; ++k) ft += xa[k] - xa[k];
      *flag += static_cast<double>(ft);
    }
    if (full > 0) {
      int64_t a0 = 0;
      for (; a0 + 2 <= M; a0 += 2) {
        sq_dists_tile<T, Bytes, 1, 1>(xk, ld, a0, a0 + 1, full, acc, M);
        int64_t b0 = a0 + 2;
        for (; b0 + 2 <= M; b0 += 2) sq_dists_tile<T, Bytes, 2, 2>(xk, ld, a0, b0, full, acc, M);
        if (b0 < M) sq_dists_tile<T, Bytes, 2, 1>(xk, ld, a0, b0, full, acc, M);
      }
      // an odd M leaves the last row, whose pairs (a < b) are all in the tiles above
    }
    for (int64_t a = 0; a < M; ++a) {  // the columns past the last full vector
      for (int64_t b = a + 1; b < M; ++b) {
        T s = T(0);
        for (int64_t k = full; k < len; ++k) {
          const T e = xk[a * ld + k] - xk[b * ld + k];
          s += e * e;
        }
        acc[a * M + b] += static_cast<double>(s);
      }
    }
  }
}

// Output rows [m0, m0 + RM) x KV vectors at column k: out[m][k..] = sum_{q = q0}^{nq - 1} A[q * lda + m] in[q][k..].
// With First (the tile that meets every input row), also dacc[v] += in[q][k..] * y[q][k..] when y is given,
// and a prefetch of every input row pf elements ahead (pf = 0: none).
template <typename T, int Bytes, int RM, int KV, bool First>
TORCHMOO_GRAM_INLINE void mix_tile(const T* A, int64_t lda, int64_t q0, int64_t nq, const T* const* in, int64_t k,
                                   T* out, int64_t ldo, int64_t m0, int64_t pf, const T* const* y,
                                   typename Simd<T, Bytes>::V* dacc) {
  using S = Simd<T, Bytes>;
  using V = typename S::V;
  constexpr int W = S::W;
  V acc[RM][KV];
#pragma GCC unroll 8
  for (int r = 0; r < RM; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < KV; ++v) acc[r][v] = V{};
  }
  V dv[KV];
#pragma GCC unroll 8
  for (int v = 0; v < KV; ++v) dv[v] = V{};
  for (int64_t q = q0; q < nq; ++q) {
    const T* a = A + q * lda + m0;
    const T* x = in[q] + k;
    V xv[KV];
#pragma GCC unroll 8
    for (int v = 0; v < KV; ++v) xv[v] = S::load(x + v * W);
    if (First) {
      if (pf != 0) {
        // Integer arithmetic: the address may lie past the end of the input, which a pointer must not
        // (prefetches never fault).
        __builtin_prefetch(
            reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(x) + static_cast<uintptr_t>(pf) * sizeof(T)), 0, 2);
      }
      if (y != nullptr) {
        const T* yq = y[q] + k;
#pragma GCC unroll 8
        for (int v = 0; v < KV; ++v) dv[v] += xv[v] * S::load(yq + v * W);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < RM; ++r) {
      const T ar = a[r];
#pragma GCC unroll 8
      for (int v = 0; v < KV; ++v) acc[r][v] += ar * xv[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RM; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < KV; ++v) std::memcpy(out + (m0 + r) * ldo + k + v * W, &acc[r][v], sizeof(V));
  }
  if (First && y != nullptr) {
#pragma GCC unroll 8
    for (int v = 0; v < KV; ++v) dacc[v] += dv[v];
  }
}

// Height dispatch of the tile at rows [m0, m0 + rm), rm in [1, 4].
template <typename T, int Bytes, int KV, bool First>
TORCHMOO_GRAM_INLINE void mix_tile_rows(int64_t rm, const T* A, int64_t lda, int64_t q0, int64_t nq,
                                        const T* const* in, int64_t k, T* out, int64_t ldo, int64_t m0, int64_t pf,
                                        const T* const* y, typename Simd<T, Bytes>::V* dacc) {
  switch (rm) {
    case 4: mix_tile<T, Bytes, 4, KV, First>(A, lda, q0, nq, in, k, out, ldo, m0, pf, y, dacc); break;
    case 3: mix_tile<T, Bytes, 3, KV, First>(A, lda, q0, nq, in, k, out, ldo, m0, pf, y, dacc); break;
    case 2: mix_tile<T, Bytes, 2, KV, First>(A, lda, q0, nq, in, k, out, ldo, m0, pf, y, dacc); break;
    default: mix_tile<T, Bytes, 1, KV, First>(A, lda, q0, nq, in, k, out, ldo, m0, pf, y, dacc); break;
  }
}

// One column group (KV vectors at column k) of every output row, in tiles of up to 4 rows. The first tile
// (q from 0) does the prefetches and the dot products; with dot products it is 2 rows high, so that its
// accumulators, the dot products' and the operands fit in 16 vector registers.
template <typename T, int Bytes, int KV>
TORCHMOO_GRAM_INLINE void mix_columns(const T* A, int64_t lda, bool lower, const T* const* in, int64_t nq, T* out,
                                      int64_t ldo, int64_t nm, int64_t k, int64_t pf, const T* const* y,
                                      typename Simd<T, Bytes>::V* dacc) {
  constexpr int RM = 4;
  const int64_t first = std::min<int64_t>(y != nullptr ? 2 : RM, nm);
  if (first == 2 && y != nullptr) {
    mix_tile<T, Bytes, 2, KV, true>(A, lda, 0, nq, in, k, out, ldo, 0, pf, y, dacc);
  } else {
    mix_tile_rows<T, Bytes, KV, true>(first, A, lda, 0, nq, in, k, out, ldo, 0, pf, y, dacc);
  }
  int64_t m0 = first;
  for (; m0 + RM <= nm; m0 += RM) {
    mix_tile<T, Bytes, RM, KV, false>(A, lda, lower ? m0 : 0, nq, in, k, out, ldo, m0, 0, nullptr, nullptr);
  }
  if (m0 < nm) {
    mix_tile_rows<T, Bytes, KV, false>(nm - m0, A, lda, lower ? m0 : 0, nq, in, k, out, ldo, m0, 0, nullptr, nullptr);
  }
}

// out[m * ldo + k] = sum_q A[q * lda + m] in[q][k] for m < nm (nm >= 1), k < len; q from m when `lower`
// (A[q][m] = 0 for q < m), else from 0. Every output element is summed over q in increasing order.
// Optionally (y != nullptr) returns sum_q <in[q], y[q]> over the len columns (vector partial sums in T,
// reduced to float64), and prefetches every input row pf elements ahead (pf = 0: none), e.g. the same
// columns of the next block.
template <typename T, int Bytes>
TORCHMOO_GRAM_INLINE double mix(const T* A, int64_t lda, bool lower, const T* const* in, int64_t nq, T* out,
                                int64_t ldo, int64_t nm, int64_t len, int64_t pf, const T* const* y) {
  using S = Simd<T, Bytes>;
  using V = typename S::V;
  constexpr int W = S::W;
  constexpr int KV = 3;  // 4 x 3 accumulators + 3 operands + 1 broadcast: 16 vector registers
  V dacc[KV] = {};
  int64_t k = 0;
  for (; k + KV * W <= len; k += KV * W) mix_columns<T, Bytes, KV>(A, lda, lower, in, nq, out, ldo, nm, k, pf, y, dacc);
  for (; k + W <= len; k += W) mix_columns<T, Bytes, 1>(A, lda, lower, in, nq, out, ldo, nm, k, pf, y, dacc);
  T dot = S::hsum(dacc[0] + dacc[1] + dacc[2]);
  for (; k < len; ++k) {
    for (int64_t m = 0; m < nm; ++m) {
      T s = T(0);
      for (int64_t q = lower ? m : 0; q < nq; ++q) s += A[q * lda + m] * in[q][k];
      out[m * ldo + k] = s;
    }
    if (y != nullptr) {
      for (int64_t q = 0; q < nq; ++q) dot += in[q][k] * y[q][k];
    }
  }
  return static_cast<double>(dot);
}

// sum_k (x[k] - x[k]) over len elements: 0, or NaN exactly when some x[k] is NaN or infinite.
template <typename T, int Bytes>
TORCHMOO_GRAM_INLINE T nonfinite_sum(const T* x, int64_t len) {
  using S = Simd<T, Bytes>;
  using V = typename S::V;
  constexpr int W = S::W;
  V z{};
  int64_t k = 0;
  for (; k + W <= len; k += W) {
    const V v = S::load(x + k);
    z += v - v;
  }
  T t = S::hsum(z);
  for (; k < len; ++k) t += x[k] - x[k];
  return t;
}

// out[a * len + k] = x[a * ld + k] - x[k] for a < M, k < len: the particles relative to particle 0.
template <typename T, int Bytes>
TORCHMOO_GRAM_INLINE void center(const T* x, int64_t ld, int64_t M, int64_t len, T* out) {
  using S = Simd<T, Bytes>;
  using V = typename S::V;
  constexpr int W = S::W;
  for (int64_t a = 0; a < M; ++a) {
    const T* xa = x + a * ld;
    T* o = out + a * len;
    int64_t k = 0;
    for (; k + W <= len; k += W) {
      const V v = S::load(xa + k) - S::load(x + k);
      std::memcpy(o + k, &v, sizeof(V));
    }
    for (; k < len; ++k) o[k] = xa[k] - x[k];
  }
}

// The builds of these kernels for one dtype (see Kernels).
template <typename T>
struct Fns {
  void (*sq_dists)(const T* x, int64_t ld, int64_t M, int64_t cols, double* acc, double* flag);
  double (*mix)(const T* A, int64_t lda, bool lower, const T* const* in, int64_t nq, T* out, int64_t ldo,
                int64_t nm, int64_t len, int64_t pf, const T* const* y);
  T (*nonfinite_sum)(const T* x, int64_t len);
  void (*center)(const T* x, int64_t ld, int64_t M, int64_t len, T* out);
  gram_simd::ChunkFn<T> gram;        // the Gram kernel's chunk function of the same build
  combine_simd::ChunkFn<T> combine;  // and the combination kernel's
};

// The AVX2 + FMA build where the CPU has it (and ATEN_CPU_CAPABILITY is not "default"), else the portable
// one; always the same build as gram_simd::select_kernels().
struct Kernels {
  Fns<float> f32;
  Fns<double> f64;
  const char* name;
};
Kernels select_kernels();

}  // namespace stein_simd
}  // namespace torchmoo

#pragma GCC diagnostic pop
