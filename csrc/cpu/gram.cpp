// CPU kernel of torchmoo::gram (schema in csrc/ops.cpp): G = J J^T for J of shape (..., m, n).
//
// Work items are (problem, column chunk) pairs run by at::parallel_for; each item forms the Gram
// product of its chunk in float64 (gram_kernel.h), and items of one problem are summed in chunk order.
// The chunks depend on m and n only, never on the thread count, so the result is bitwise the same for
// any number of threads. Above kKernelMaxM rows at::matmul is used instead (see below).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "../gram_host.h"
#include "gram_kernel.h"

namespace torchmoo {
namespace {

// The kernel runs for m <= kKernelMaxM, and up to kKernelLongMaxM rows when the rows are long (n >= 64 m)
// and the AVX2 build runs; otherwise at::matmul. The kernel is compute-bound from m ~ 16 on (m(m+1)/2 dot
// products per column, ~33 G of them per second and core with AVX2). Measured against torch 2.13's
// GEMM, one thread of an AVX2 EPYC: kernel / GEMM time 0.46 (m = 64), 0.70 (128), 0.73 (256) at n = 1e5;
// 0.9-1.0 (m = 64-128) and 1.3 (m = 256) at n = 1000.
constexpr int64_t kKernelMaxM = 64;
constexpr int64_t kKernelLongMaxM = 256;
// A problem's columns are split into at most this many chunks (so that a single J keeps every thread busy)
// of at least kMinChunkElems elements (so that a chunk's setup and float64 reduction stay negligible).
constexpr int64_t kTargetChunks = 64;
constexpr int64_t kMinChunkElems = int64_t{1} << 15;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool use_simd_kernel(int64_t m, int64_t n, const gram_simd::Kernels& k) {
  if (m <= kKernelMaxM) return true;
  return m <= kKernelLongMaxM && n >= 64 * m && std::strcmp(k.name, "avx2") == 0;
}

// Lowers `first` to b (a CAS loop: rare, only for non-finite results).
void note_bad(std::atomic<int64_t>& first, int64_t b) {
  int64_t cur = first.load();
  while (b < cur && !first.compare_exchange_weak(cur, b)) {
  }
}

// G3 (B, m, m) = J3 J3^T for J3 (B, m, n) with unit column stride. Returns the first problem whose G
// has a non-finite entry, or -1 (checked here, on values already in registers, because a separate
// pass of tensor ops costs more than the whole product for small problems).
template <typename T>
int64_t gram_kernel(const at::Tensor& J3, at::Tensor& G3, gram_simd::ChunkFn<T> fn) {
  const int64_t B = J3.size(0), m = J3.size(1), n = J3.size(2);
  const int64_t sb = J3.stride(0), si = J3.stride(1);
  const T* J = J3.const_data_ptr<T>();
  T* G = G3.mutable_data_ptr<T>();
  const int64_t bc = gram_simd::block_columns<T>(m);
  const int64_t chunk = std::min(
      ceil_div(std::max(ceil_div(n, kTargetChunks), ceil_div(kMinChunkElems, m)), bc) * bc, n);
  const int64_t nchunks = ceil_div(n, chunk);
  const int64_t items = B * nchunks;
  const int64_t tri = m * (m + 1) / 2;
  // Problems split into chunks leave their upper triangles here, (item, tri), summed afterwards.
  std::vector<double> partial(nchunks > 1 ? static_cast<size_t>(items * tri) : 0);
  const int64_t grain = std::max<int64_t>(1, kMinChunkElems / (m * chunk));
  std::atomic<int64_t> first_bad{B};
  // Writes the upper triangle `tri_of(i, j)` into both triangles of G[b] and notes non-finite values.
  auto write = [&](int64_t b, auto&& tri_of) {
    T* Gb = G + b * m * m;
    bool finite = true;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = i; j < m; ++j) {
        const T v = static_cast<T>(tri_of(i, j));
        finite = finite && std::isfinite(v);
        Gb[i * m + j] = Gb[j * m + i] = v;
      }
    }
    if (!finite) note_bad(first_bad, b);
  };

  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    std::vector<double> acc(static_cast<size_t>(m * m));
    std::vector<T> pad(static_cast<size_t>(m * gram_simd::kMaxLanes));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / nchunks, c = item % nchunks;
      const int64_t c0 = c * chunk;
      std::fill(acc.begin(), acc.end(), 0.0);
      fn(J + b * sb + c0, si, m, std::min(chunk, n - c0), bc, acc.data(), pad.data());
      if (nchunks == 1) {
        write(b, [&](int64_t i, int64_t j) { return acc[i * m + j]; });
      } else {
        double* out = partial.data() + item * tri;
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = i; j < m; ++j) *out++ = acc[i * m + j];
        }
      }
    }
  });
  if (nchunks > 1) {
    at::parallel_for(0, B, std::max<int64_t>(1, 4096 / (tri * nchunks)), [&](int64_t begin, int64_t end) {
      std::vector<double> sum(static_cast<size_t>(tri));
      for (int64_t b = begin; b < end; ++b) {
        std::fill(sum.begin(), sum.end(), 0.0);
        for (int64_t c = 0; c < nchunks; ++c) {  // fixed order: deterministic
          const double* in = partial.data() + (b * nchunks + c) * tri;
          for (int64_t q = 0; q < tri; ++q) sum[q] += in[q];
        }
        // (i, j) is entry i m - i (i - 1) / 2 + (j - i) of the row-major upper triangle.
        write(b, [&](int64_t i, int64_t j) { return sum[i * m - i * (i - 1) / 2 + (j - i)]; });
      }
    });
  }
  const int64_t bad = first_bad.load();
  return bad < B ? bad : -1;
}

at::Tensor gram_cpu(const at::Tensor& J, bool check) {
  const gram_host::GramProblem p = gram_host::prepare(J);
  const int64_t B = p.B, m = p.m, n = p.n;
  const at::ScalarType dtype = J.scalar_type();
  // float16 / bfloat16: computed from a float32 copy, returned in the input dtype.
  const at::ScalarType compute = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor Jc = p.J.scalar_type() == compute ? p.J : p.J.to(compute);
  const gram_simd::Kernels k = gram_simd::select_kernels();
  const bool empty = B == 0 || m == 0 || n == 0;
  const bool use_kernel = !empty && use_simd_kernel(m, n, k);
  at::Tensor G3;
  if (empty) {
    G3 = at::zeros({B, m, m}, J.options().dtype(compute));
  } else if (!use_kernel) {
    G3 = gram_host::matmul_gram(Jc);
  } else {
    G3 = at::empty({B, m, m}, J.options().dtype(compute));
    const int64_t bad =
        compute == at::kDouble ? gram_kernel<double>(Jc, G3, k.f64) : gram_kernel<float>(Jc, G3, k.f32);
    if (bad >= 0 && check) gram_host::raise_non_finite(p, bad);
  }
  if (compute != dtype) {
    G3 = G3.to(dtype);
    if (check) gram_host::check_finite(p, G3);  // the rounding to float16 / bfloat16 can overflow
  } else if (!use_kernel && check) {
    gram_host::check_finite(p, G3);
  }
  return G3.reshape(gram_host::out_shape(p));
}

}  // namespace

TORCH_LIBRARY_IMPL(torchmoo, CPU, m) { m.impl("gram", &gram_cpu); }

}  // namespace torchmoo
