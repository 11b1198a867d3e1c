// Run-time choice between the portable and the AVX2 + FMA build of the Stein kernels (stein_kernel.h),
// made together with the Gram kernel's so that both use the same one.
#include "stein_kernel.h"

#include <cstring>

namespace torchmoo {
namespace stein_simd {
namespace {

#define TORCHMOO_STEIN_BUILD(NAME, TARGET, BYTES)                                                                  \
  template <typename T>                                                                                            \
  TARGET void sq_dists_##NAME(const T* x, int64_t ld, int64_t M, int64_t cols, double* acc, double* flag) {        \
    sq_dists<T, BYTES>(x, ld, M, cols, acc, flag);                                                                 \
  }                                                                                                                \
  template <typename T>                                                                                            \
  TARGET double mix_##NAME(const T* A, int64_t lda, bool lower, const T* const* in, int64_t nq, T* out,          \
                           int64_t ldo, int64_t nm, int64_t len, int64_t pf, const T* const* y) {                  \
    return mix<T, BYTES>(A, lda, lower, in, nq, out, ldo, nm, len, pf, y);                                         \
  }                                                                                                                \
  template <typename T>                                                                                            \
  TARGET T nonfinite_sum_##NAME(const T* x, int64_t len) {                                                         \
    return nonfinite_sum<T, BYTES>(x, len);                                                                        \
  }                                                                                                                \
  template <typename T>                                                                                            \
  TARGET void center_##NAME(const T* x, int64_t ld, int64_t M, int64_t len, T* out) {                              \
    center<T, BYTES>(x, ld, M, len, out);                                                                          \
  }

TORCHMOO_STEIN_BUILD(generic, , 16)
#if defined(__x86_64__) || defined(__i386__)
#define TORCHMOO_STEIN_X86 1
// The always-inline templates are compiled inside these functions with their target: 256-bit FMAs.
TORCHMOO_STEIN_BUILD(avx2, __attribute__((target("avx2,fma"))), 32)
#endif
#undef TORCHMOO_STEIN_BUILD

}  // namespace

Kernels select_kernels() {
  const gram_simd::Kernels g = gram_simd::select_kernels();
  const combine_simd::Kernels cb = combine_simd::select_kernels();
#ifdef TORCHMOO_STEIN_X86
  if (std::strcmp(g.name, "avx2") == 0) {
    return {{&sq_dists_avx2<float>, &mix_avx2<float>, &nonfinite_sum_avx2<float>, &center_avx2<float>, g.f32, cb.f32},
            {&sq_dists_avx2<double>, &mix_avx2<double>, &nonfinite_sum_avx2<double>, &center_avx2<double>, g.f64, cb.f64},
            "avx2"};
  }
#endif
  return {{&sq_dists_generic<float>, &mix_generic<float>, &nonfinite_sum_generic<float>, &center_generic<float>, g.f32, cb.f32},
          {&sq_dists_generic<double>, &mix_generic<double>, &nonfinite_sum_generic<double>, &center_generic<double>, g.f64, cb.f64},
          "generic"};
}

}  // namespace stein_simd
}  // namespace torchmoo
