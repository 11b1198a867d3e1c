// CPU kernels of torchmoo::stein_task_matrix and torchmoo::stein_update (schemas in csrc/ops.cpp).
//
// Two passes over column chunks of the particles' dimension d, run by at::parallel_for:
// 1. the pairwise squared distances of the particles (stein_host.h turns them into the kernel matrix,
//    its pivoted Cholesky factor L and the graph Laplacian, in float64);
// 2. stein_task_matrix: per column block of a chunk, R = Lap (X - x_0) (M rows), then per target
//    T_i = L' S_i (r rows, in a per-thread buffer of at most kMixBufferBytes with R and X - x_0) and
//    c_i += <S_i, R> in the same sweep over S_i, and G += the Gram product of the rows T_i (the Gram
//    kernel of gram_kernel.h: <T_i, T_j> = sum_ab k_ab <S_ia, S_jb> over the block). While a block is
//    mixed, the same columns of the next block are prefetched, so S streams in during the Gram product.
//    stein_update: per column block, S_w = sum_i w_i S_i (combine_kernel.h) and phi = (K S_w + (sum w)(2/h) Lap (X - x_0)) / M,
//    written straight into the output.
// S is read once, nothing of size (M, M, d) or (K, M, d) is formed. Chunk partial sums (float64) are
// added in chunk order and the chunks depend on the sizes only, so the results are bitwise the same
// for any number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "../stein_host.h"
#include "stein_kernel.h"

namespace torchmoo {
namespace {

using stein_host::KernelTerms;
using stein_host::SteinProblem;

// A chunk is at least this many elements of S (or X) so that its setup and reduction stay negligible,
// and a problem has at most kTargetChunks chunks.
constexpr int64_t kMinChunkElems = int64_t{1} << 15;
constexpr int64_t kTargetChunks = 64;
// The mixed scores T (K x r x block columns) of one thread stay in L2.
constexpr int64_t kMixBufferBytes = int64_t{256} << 10;
// At most this many float64 chunk partials of the pairwise distances (M (M - 1) / 2 per chunk).
constexpr int64_t kMaxPairPartials = int64_t{1} << 22;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Columns per chunk: a multiple of `block`, at least kMinChunkElems / rows elements, at most
// kTargetChunks (and max_chunks) chunks.
int64_t chunk_columns(int64_t d, int64_t rows, int64_t block, int64_t max_chunks = kTargetChunks) {
  const int64_t chunks = std::max<int64_t>(1, std::min(max_chunks, kTargetChunks));
  const int64_t want = std::max(ceil_div(d, chunks), ceil_div(kMinChunkElems, std::max<int64_t>(rows, 1)));
  return std::min(ceil_div(want, block) * block, d);
}

// Pass 1: D2 (M x M, float64, symmetric, zero diagonal). Raises if X is not finite.
template <typename T>
std::vector<double> sq_dists(const SteinProblem& p, const stein_simd::Fns<T>& f, const char* op) {
  const int64_t M = p.M, d = p.d;
  const int64_t pairs = M * M;  // partials keep the M x M layout (upper triangle used) plus one flag
  const int64_t chunk =
      chunk_columns(d, M, stein_simd::kSumBlock, std::max<int64_t>(1, kMaxPairPartials / (pairs + 1)));
  const int64_t nchunks = ceil_div(d, chunk);
  std::vector<double> partial(static_cast<size_t>(nchunks * (pairs + 1)), 0.0);
  const T* X = p.X.const_data_ptr<T>();
  const int64_t ld = p.X.stride(0);
  at::parallel_for(0, nchunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double* out = partial.data() + c * (pairs + 1);
      const int64_t c0 = c * chunk;
      f.sq_dists(X + c0, ld, M, std::min(chunk, d - c0), out, out + pairs);
    }
  });
  std::vector<double> D2(static_cast<size_t>(pairs), 0.0);
  double flag = 0.0;
  for (int64_t c = 0; c < nchunks; ++c) {  // fixed order: deterministic
    const double* in = partial.data() + c * (pairs + 1);
    for (int64_t a = 0; a < M; ++a) {
      for (int64_t b = a + 1; b < M; ++b) D2[a * M + b] += in[a * M + b];
    }
    flag += in[pairs];
  }
  TORCH_CHECK_VALUE(std::isfinite(flag), op, ": X must be finite, found NaN or infinity.");
  for (int64_t a = 0; a < M; ++a) {
    for (int64_t b = a + 1; b < M; ++b) D2[b * M + a] = D2[a * M + b];
  }
  return D2;
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v, double scale = 1.0) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<T>(v[i] * scale);
  return out;
}

template <typename T>
at::Tensor task_matrix(const SteinProblem& p, const stein_simd::Fns<T>& f) {
  const char* op = "stein_task_matrix";
  const int64_t K = p.K, M = p.M, d = p.d;
  const KernelTerms t = stein_host::kernel_terms(sq_dists<T>(p, f, op), M, d, p.h);
  const int64_t r = t.r;
  const std::vector<T> lower = cast<T>(t.lower), lap = cast<T>(t.lap);
  // Block columns: T (K x r x block), R and X - x_0 (M x block each) within kMixBufferBytes; a multiple of
  // the widest vector.
  const int64_t per_col = (K * r + 2 * M) * static_cast<int64_t>(sizeof(T));
  const int64_t block = std::clamp<int64_t>(kMixBufferBytes / per_col / gram_simd::kBlockAlign * gram_simd::kBlockAlign,
                                            gram_simd::kBlockAlign, 2048);
  const int64_t chunk = chunk_columns(d, K * M, block);
  const int64_t nchunks = ceil_div(d, chunk);
  const int64_t tri = K * K;  // partial layout: K x K (upper triangle used), then c (K)
  std::vector<double> partial(static_cast<size_t>(nchunks * (tri + K)), 0.0);
  const T* X = p.X.const_data_ptr<T>();
  const T* S = p.S.const_data_ptr<T>();
  const int64_t ldx = p.X.stride(0), sK = p.S.stride(0), sM = p.S.stride(1);
  const int64_t gram_block = gram_simd::block_columns<T>(K);

  at::parallel_for(0, nchunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> tbuf(static_cast<size_t>(K * r * block)), rbuf(static_cast<size_t>(M * block)),
        xc(static_cast<size_t>(M * block)), pad(static_cast<size_t>(K * gram_simd::kMaxLanes));
    std::vector<const T*> rows(static_cast<size_t>(M)), rrows(static_cast<size_t>(M)), yrows(static_cast<size_t>(M));
    for (int64_t c = begin; c < end; ++c) {
      double* acc = partial.data() + c * (tri + K);
      double* cacc = acc + tri;
      const int64_t c0 = c * chunk, c1 = std::min(d, c0 + chunk);
      for (int64_t k0 = c0; k0 < c1; k0 += block) {
        const int64_t len = std::min(block, c1 - k0);
        // R (without its factor 2/h) = Lap (X - x_0) on this block.
        f.center(X + k0, ldx, M, len, xc.data());
        for (int64_t a = 0; a < M; ++a) {
          rows[a] = xc.data() + a * len;
          rrows[a] = rbuf.data() + a * len;
        }
        f.mix(lap.data(), M, false, rows.data(), M, rbuf.data(), len, M, len, 0, nullptr);
        // T_i = L' S_i (rows in pivot order) and c_i += <S_i, R>; the same columns of the next block are
        // prefetched, so that S streams in while the Gram product below runs.
        for (int64_t i = 0; i < K; ++i) {
          const T* Si = S + i * sK + k0;
          for (int64_t q = 0; q < M; ++q) {
            rows[q] = Si + t.order[q] * sM;
            yrows[q] = rrows[t.order[q]];
          }
          cacc[i] += f.mix(lower.data(), r, true, rows.data(), M, tbuf.data() + i * r * len, len, r, len, block,
                           yrows.data());
        }
        f.gram(tbuf.data(), r * len, K, r * len, gram_block, acc, pad.data());
      }
    }
  });
  std::vector<double> G(static_cast<size_t>(tri), 0.0), cvec(static_cast<size_t>(K), 0.0);
  for (int64_t c = 0; c < nchunks; ++c) {  // fixed order: deterministic
    const double* in = partial.data() + c * (tri + K);
    for (int64_t i = 0; i < K; ++i) {
      for (int64_t j = i; j < K; ++j) G[i * K + j] += in[i * K + j];
      cvec[i] += in[tri + i];
    }
  }
  for (double& v : cvec) v *= 2.0 / p.h;
  at::Tensor U = stein_host::assemble_u(G, cvec, t.cnst, K, M, p.X.device());
  if (!U.isfinite().all().item<bool>()) stein_host::raise_non_finite(op, p, "U");
  return U;
}

template <typename T>
at::Tensor update(const SteinProblem& p, const std::vector<double>& w, const stein_simd::Fns<T>& f) {
  const char* op = "stein_update";
  const int64_t K = p.K, M = p.M, d = p.d;
  const KernelTerms t = stein_host::kernel_terms(sq_dists<T>(p, f, op), M, d, p.h, false);
  const std::vector<T> A = cast<T>(stein_host::update_matrix(t, w, M, p.h));
  const std::vector<T> wt = cast<T>(w);
  const int64_t block = 512;
  const int64_t chunk = chunk_columns(d, K * M, block);
  const int64_t nchunks = ceil_div(d, chunk);
  at::Tensor phi = at::empty({M, d}, p.X.options());
  T* out = phi.mutable_data_ptr<T>();
  const T* X = p.X.const_data_ptr<T>();
  const T* S = p.S.const_data_ptr<T>();
  const int64_t ldx = p.X.stride(0), sK = p.S.stride(0), sM = p.S.stride(1);
  std::atomic<bool> finite{true};

  at::parallel_for(0, nchunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buf(static_cast<size_t>(2 * M * block));
    std::vector<const T*> rows(static_cast<size_t>(2 * M));
    bool ok = true;
    for (int64_t c = begin; c < end; ++c) {
      const int64_t c0 = c * chunk, c1 = std::min(d, c0 + chunk);
      for (int64_t k0 = c0; k0 < c1; k0 += block) {
        const int64_t len = std::min(block, c1 - k0);
        T* sw = buf.data();
        for (int64_t a = 0; a < M; ++a) f.combine(S + a * sM + k0, sK, K, len, wt.data(), sw + a * len);
        f.center(X + k0, ldx, M, len, buf.data() + M * len);
        for (int64_t q = 0; q < 2 * M; ++q) rows[q] = buf.data() + q * len;
        f.mix(A.data(), M, false, rows.data(), 2 * M, out + k0, d, M, len, 0, nullptr);
        for (int64_t a = 0; a < M; ++a) ok = ok && f.nonfinite_sum(out + a * d + k0, len) == T(0);
      }
    }
    if (!ok) finite.store(false);
  });
  if (!finite.load()) stein_host::raise_non_finite(op, p, "phi");
  return phi;
}

at::Tensor stein_task_matrix_cpu(const at::Tensor& X, const at::Tensor& S, double h) {
  const SteinProblem p = stein_host::prepare("stein_task_matrix", X, S, h);
  const stein_simd::Kernels k = stein_simd::select_kernels();
  return p.X.scalar_type() == at::kDouble ? task_matrix<double>(p, k.f64) : task_matrix<float>(p, k.f32);
}

at::Tensor stein_update_cpu(const at::Tensor& X, const at::Tensor& S, const at::Tensor& w, double h) {
  const SteinProblem p = stein_host::prepare("stein_update", X, S, h);
  const std::vector<double> wv = stein_host::check_weights("stein_update", w, p);
  const stein_simd::Kernels k = stein_simd::select_kernels();
  return p.X.scalar_type() == at::kDouble ? update<double>(p, wv, k.f64) : update<float>(p, wv, k.f32);
}

}  // namespace

TORCH_LIBRARY_IMPL(torchmoo, CPU, m) {
  m.impl("stein_task_matrix", &stein_task_matrix_cpu);
  m.impl("stein_update", &stein_update_cpu);
}

}  // namespace torchmoo
