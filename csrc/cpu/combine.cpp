// CPU kernel of torchmoo::combine (schema in csrc/ops.cpp): d = sum_i w_i J_i for J (..., m, n), w (..., m).
//
// One pass over J: work items are (problem, column chunk) pairs run by at::parallel_for; each chunk is
// combined by the kernel of combine_kernel.h (sums in the input dtype over the m rows, in order). Each
// output element is computed by one thread: bitwise the same result for any thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "../combine_host.h"
#include "combine_kernel.h"

namespace torchmoo {
namespace {

constexpr int64_t kTargetChunks = 64;
constexpr int64_t kMinChunkElems = int64_t{1} << 15;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void note_bad(std::atomic<int64_t>& first, int64_t b) {
  int64_t cur = first.load();
  while (b < cur && !first.compare_exchange_weak(cur, b)) {
  }
}

// d3 (B, n) = sum_i w[b, i] J3[b, i]; returns the first problem with a non-finite entry, or -1.
template <typename T>
int64_t combine_kernel(const at::Tensor& J3, const at::Tensor& w2, at::Tensor& d3) {
  const int64_t B = J3.size(0), m = J3.size(1), n = J3.size(2);
  const int64_t sb = J3.stride(0), si = J3.stride(1);
  const T* J = J3.const_data_ptr<T>();
  const at::Tensor wc = w2.contiguous();
  const T* w = wc.const_data_ptr<T>();
  T* out = d3.mutable_data_ptr<T>();
  const combine_simd::Kernels k = combine_simd::select_kernels();
  combine_simd::ChunkFn<T> fn;
  if constexpr (std::is_same_v<T, double>) {
    fn = k.f64;
  } else {
    fn = k.f32;
  }
  constexpr int64_t align = 64;
  const int64_t chunk = std::min(
      ceil_div(std::max(ceil_div(n, kTargetChunks), ceil_div(kMinChunkElems, std::max<int64_t>(m, 1))), align) * align,
      n);
  const int64_t nchunks = ceil_div(n, chunk);
  const int64_t grain = std::max<int64_t>(1, kMinChunkElems / (std::max<int64_t>(m, 1) * chunk));
  std::atomic<int64_t> first_bad{B};
  at::parallel_for(0, B * nchunks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / nchunks, c0 = (item % nchunks) * chunk;
      const T f = fn(J + b * sb + c0, si, m, std::min(chunk, n - c0), w + b * m, out + b * n + c0);
      if (!(f == T(0))) note_bad(first_bad, b);
    }
  });
  const int64_t bad = first_bad.load();
  return bad < B ? bad : -1;
}

at::Tensor combine_cpu(const at::Tensor& J, const at::Tensor& w, bool check) {
  const combine_host::CombineProblem p = combine_host::prepare(J, w);
  at::Tensor d3;
  if (p.m == 0) {
    d3 = at::zeros({p.B, p.n}, J.options().dtype(p.compute));
  } else {
    d3 = at::empty({p.B, p.n}, J.options().dtype(p.compute));
    if (p.B > 0 && p.n > 0) {
      const int64_t bad = p.compute == at::kDouble ? combine_kernel<double>(p.J, p.w, d3)
                                                   : combine_kernel<float>(p.J, p.w, d3);
      if (bad >= 0 && check) combine_host::raise_non_finite(p, bad);
    }
  }
  if (p.compute != p.dtype) {
    d3 = d3.to(p.dtype);
    if (check) combine_host::check_finite(p, d3);  // the rounding to float16 / bfloat16 can overflow
  }
  return d3.reshape(combine_host::out_shape(p));
}

}  // namespace

TORCH_LIBRARY_IMPL(torchmoo, CPU, m) { m.impl("combine", &combine_cpu); }

}  // namespace torchmoo

