// Run-time choice between the portable and the AVX2 + FMA build of the Gram kernel (gram_kernel.h).
#include "gram_kernel.h"

#include <cstdlib>
#include <cstring>

namespace torchmoo {
namespace gram_simd {
namespace {

constexpr int kTile = 3;  // 3 x 3 tiles: 9 accumulators + 3 + 1 operands fit in 16 vector registers

void chunk_generic_f32(const float* x, int64_t ld, int64_t m, int64_t cols, int64_t bc, double* acc, float* pad) {
  chunk<float, 16, kTile>(x, ld, m, cols, bc, acc, pad);
}
void chunk_generic_f64(const double* x, int64_t ld, int64_t m, int64_t cols, int64_t bc, double* acc,
                       double* pad) {
  chunk<double, 16, kTile>(x, ld, m, cols, bc, acc, pad);
}

#if defined(__x86_64__) || defined(__i386__)
#define TORCHMOO_GRAM_X86 1
// The always-inline templates are compiled inside these functions with their target: 256-bit FMAs.
__attribute__((target("avx2,fma"))) void chunk_avx2_f32(const float* x, int64_t ld, int64_t m, int64_t cols,
                                                          int64_t bc, double* acc, float* pad) {
  chunk<float, 32, kTile>(x, ld, m, cols, bc, acc, pad);
}
__attribute__((target("avx2,fma"))) void chunk_avx2_f64(const double* x, int64_t ld, int64_t m, int64_t cols,
                                                          int64_t bc, double* acc, double* pad) {
  chunk<double, 32, kTile>(x, ld, m, cols, bc, acc, pad);
}
#endif

}  // namespace

Kernels select_kernels() {
#ifdef TORCHMOO_GRAM_X86
  static const bool has_avx2 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  const char* cap = std::getenv("ATEN_CPU_CAPABILITY");
  const bool portable = cap != nullptr && std::strcmp(cap, "default") == 0;
  if (has_avx2 && !portable) return {&chunk_avx2_f32, &chunk_avx2_f64, "avx2"};
#endif
  return {&chunk_generic_f32, &chunk_generic_f64, "generic"};
}

}  // namespace gram_simd
}  // namespace torchmoo
