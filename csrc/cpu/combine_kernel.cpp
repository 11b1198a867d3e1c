// Run-time choice between the portable and the AVX2 + FMA build of the combination kernel
// (combine_kernel.h), made together with the Gram kernel's so that all use the same one.
#include "combine_kernel.h"

#include <cstring>

namespace torchmoo {
namespace combine_simd {
namespace {

template <typename T>
T chunk_generic(const T* J, int64_t ld, int64_t m, int64_t cols, const T* w, T* out) {
  return combine_chunk<T, 16>(J, ld, m, cols, w, out);
}
#if defined(__x86_64__) || defined(__i386__)
#define TORCHMOO_COMBINE_X86 1
// The always-inline templates are compiled inside these functions with their target: 256-bit FMAs.
template <typename T>
__attribute__((target("avx2,fma"))) T chunk_avx2(const T* J, int64_t ld, int64_t m, int64_t cols, const T* w,
                                                  T* out) {
  return combine_chunk<T, 32>(J, ld, m, cols, w, out);
}
#endif

}  // namespace

Kernels select_kernels() {
#ifdef TORCHMOO_COMBINE_X86
  if (std::strcmp(gram_simd::select_kernels().name, "avx2") == 0) return {&chunk_avx2<float>, &chunk_avx2<double>, "avx2"};
#endif
  return {&chunk_generic<float>, &chunk_generic<double>, "generic"};
}

}  // namespace combine_simd
}  // namespace torchmoo
