// CPU kernels of the MINRES operators (schemas in csrc/ops.cpp; the loop is torchmoo.ops.minres).
//
// minres_step advances k recurrences by one iteration, given hv = H y_k from the caller's matvec, in
// two passes over the vectors of each right-hand side (y_k = beta_k v_k is the unnormalized Lanczos
// vector, see common/minres_recurrence.h):
//
//   pass A  the update pending from iteration k - 1, which needs v_{k-1} = y_{k-1} / beta_{k-1}:
//             w_{k-1} = (v_{k-1} - oldeps w_{k-3} - delta w_{k-2}) * denom  (over w_{k-3}),  x += phi w_{k-1};
//           the Lanczos step: z = (hv - shift y_k) / beta_k - (beta_k / beta_{k-1}) y_{k-1}  (over y_{k-1});
//           alfa_k = y_k'z / beta_k
//   pass B  y_{k+1} = z - (alfa_k / beta_k) y_k;  beta_{k+1}^2 = y_{k+1}'y_{k+1}
//   scalar  the Givens recurrence, which leaves the update of iteration k pending
//
// Two passes is the least the recurrence allows: beta_{k+1} needs y_{k+1}, which needs alfa_k, a
// reduction over the whole vector. Per iteration a right-hand side reads 8 vectors of length n
// (pass A: hv, y_k, y_{k-1}, w_{k-2}, w_{k-3}, x; pass B: z, y_k) and writes 4 (w_{k-1}, x, z,
// y_{k+1}); hv is never written. Because y_{k+1} is unnormalized, it goes to the matvec as it is: no
// pass normalizes it. The caller swaps (y, yprev) and (w, wprev) after each step; a step with hv
// undefined only applies the pending updates (the final flush).
//
// Vectors are split into fixed chunks of kChunk elements, run by at::parallel_for over (right-hand
// side, chunk); the dot products are accumulated in float64 per chunk and summed in chunk order, so
// results do not depend on the number of threads. The loops are compiled twice, for the x86-64
// baseline and for AVX2 + FMA, picked at run time (the two may differ by rounding: FMA contraction).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "../common/minres_recurrence.h"
#include "../minres_host.h"

namespace torchmoo {
namespace {

using namespace minres;

constexpr int64_t kChunk = 4096;
// A task of at::parallel_for covers at least this many elements, so that waking a thread pays off.
constexpr int64_t kMinTaskElems = 32768;

// Scalars of pass A for one right-hand side, in the vectors' dtype.
template <typename T>
struct PassA {
  bool pending, lanczos;
  T vscale_prev, oldeps, delta, denom, phi;  // pending update: v_{k-1} = y_{k-1} * vscale_prev
  T inv_beta, shift, ratio;                  // Lanczos: z = (hv - shift y) * inv_beta - ratio yprev
};

// Pass A for one chunk: the pending update (if kUpdate) and the Lanczos step with its partial y'z (if
// kLanczos), reading y_{k-1} once. Always inlined into the entry points below, which compile it for
// their instruction set.
template <typename T, bool kUpdate, bool kLanczos>
C10_ALWAYS_INLINE double pass_a_body(const T* __restrict__ hv, const T* __restrict__ y, T* __restrict__ yprev,
                                     const T* __restrict__ w, T* __restrict__ wprev, T* __restrict__ x, int64_t len,
                                     const PassA<T>& a) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < len; ++i) {
    const T yp = yprev[i];
    if constexpr (kUpdate) {
      const T wk = (yp * a.vscale_prev - a.oldeps * wprev[i] - a.delta * w[i]) * a.denom;
      wprev[i] = wk;
      x[i] += a.phi * wk;
    }
    if constexpr (kLanczos) {
      const T z = (hv[i] - a.shift * y[i]) * a.inv_beta - a.ratio * yp;
      yprev[i] = z;
      acc += static_cast<double>(y[i]) * static_cast<double>(z);
    }
  }
  return acc;
}

// Pass B for one chunk: y_{k+1} = z - coef y_k over z, and its partial squared norm.
template <typename T>
C10_ALWAYS_INLINE double pass_b_body(T* __restrict__ z, const T* __restrict__ y, int64_t len, T coef) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < len; ++i) {
    const T zi = z[i] - coef * y[i];
    z[i] = zi;
    acc += static_cast<double>(zi) * static_cast<double>(zi);
  }
  return acc;
}

template <typename T>
using PassAFn = double (*)(const T*, const T*, T*, const T*, T*, T*, int64_t, const PassA<T>&);
template <typename T>
using PassBFn = double (*)(T*, const T*, int64_t, T);

template <typename T, bool kUpdate, bool kLanczos>
double pass_a_generic(const T* hv, const T* y, T* yprev, const T* w, T* wprev, T* x, int64_t len, const PassA<T>& a) {
  return pass_a_body<T, kUpdate, kLanczos>(hv, y, yprev, w, wprev, x, len, a);
}
template <typename T>
double pass_b_generic(T* z, const T* y, int64_t len, T coef) {
  return pass_b_body<T>(z, y, len, coef);
}

#if defined(__x86_64__) || defined(__i386__)
#define TORCHMOO_MINRES_X86 1
// 256-bit vectors: the passes are partly compute-bound at SSE2 width (float64 accumulation).
template <typename T, bool kUpdate, bool kLanczos>
__attribute__((target("avx2,fma"))) double pass_a_avx2(const T* hv, const T* y, T* yprev, const T* w, T* wprev, T* x,
                                                        int64_t len, const PassA<T>& a) {
  return pass_a_body<T, kUpdate, kLanczos>(hv, y, yprev, w, wprev, x, len, a);
}
template <typename T>
__attribute__((target("avx2,fma"))) double pass_b_avx2(T* z, const T* y, int64_t len, T coef) {
  return pass_b_body<T>(z, y, len, coef);
}
#endif

// The entry points for one dtype: pass A with the update and the Lanczos step, the update only (rows
// that stopped at the previous step, and the final flush), the Lanczos step only (the first step).
template <typename T>
struct Kernels {
  PassAFn<T> a_both, a_update, a_lanczos;
  PassBFn<T> b;
};

// AVX2 + FMA where the CPU has it, unless ATEN_CPU_CAPABILITY=default (torch's switch) asks for the
// portable build.
template <typename T>
const Kernels<T>& kernels() {
#ifdef TORCHMOO_MINRES_X86
  static const bool avx2 = [] {
    __builtin_cpu_init();
    const char* cap = std::getenv("ATEN_CPU_CAPABILITY");
    const bool portable = cap != nullptr && std::strcmp(cap, "default") == 0;
    return !portable && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  static const Kernels<T> fast{&pass_a_avx2<T, true, true>, &pass_a_avx2<T, true, false>,
                               &pass_a_avx2<T, false, true>, &pass_b_avx2<T>};
  if (avx2) return fast;
#endif
  static const Kernels<T> portable{&pass_a_generic<T, true, true>, &pass_a_generic<T, true, false>,
                                   &pass_a_generic<T, false, true>, &pass_b_generic<T>};
  return portable;
}

// Returns (rows still running, first row whose hv was not finite or kNoBadRow).
template <typename T>
std::pair<int64_t, int64_t> step_impl(const c10::optional<at::Tensor>& hv_t, const at::Tensor& y_t,
                                      const at::Tensor& yprev_t, const at::Tensor& w_t, const at::Tensor& wprev_t,
                                      const at::Tensor& x_t, const at::Tensor& state_t, const at::Tensor& history_t,
                                      double shift, double tol) {
  const int64_t k = y_t.size(0), n = y_t.size(1);
  const int64_t hcols = history_t.size(1);
  const bool flush = !hv_t.has_value();
  const T* hv = flush ? nullptr : hv_t->const_data_ptr<T>();
  const T* y = y_t.const_data_ptr<T>();
  T* yprev = yprev_t.mutable_data_ptr<T>();
  const T* w = w_t.const_data_ptr<T>();
  T* wprev = wprev_t.mutable_data_ptr<T>();
  T* x = x_t.mutable_data_ptr<T>();
  double* state = state_t.mutable_data_ptr<double>();
  double* history = history_t.mutable_data_ptr<double>();
  const double eps = dtype_eps(y_t.scalar_type());

  // Rows with work: a pending update, and (unless flushing) a Lanczos step if still running.
  std::vector<int64_t> rows;
  std::vector<PassA<T>> coef;
  for (int64_t r = 0; r < k; ++r) {
    const double* s = state + r * kSlots;
    PassA<T> a{};
    a.pending = s[kPending] != 0.0;
    a.lanczos = !flush && s[kStatus] == kActive;
    if (!a.pending && !a.lanczos) continue;
    a.vscale_prev = static_cast<T>(1.0 / s[kBetaPrev]);
    a.oldeps = static_cast<T>(s[kOldeps]);
    a.delta = static_cast<T>(s[kDelta]);
    a.denom = static_cast<T>(s[kDenom]);
    a.phi = static_cast<T>(s[kPhi]);
    a.inv_beta = static_cast<T>(1.0 / s[kBeta]);
    a.shift = static_cast<T>(shift);
    a.ratio = static_cast<T>(s[kBeta] / s[kBetaPrev]);
    rows.push_back(r);
    coef.push_back(a);
  }
  if (rows.empty() || n == 0) return {0, kNoBadRow};
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  const int64_t items = static_cast<int64_t>(rows.size()) * nchunks;
  const int64_t grain = std::max<int64_t>(1, kMinTaskElems / std::min(kChunk, n));
  std::vector<double> partial(static_cast<size_t>(items), 0.0);

  // Runs body(j, offset, length) over every chunk of rows[j], storing the returned partial sums.
  auto for_chunks = [&](auto body) {
    at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const size_t j = static_cast<size_t>(item / nchunks);
        const int64_t c0 = (item % nchunks) * kChunk;
        partial[static_cast<size_t>(item)] = body(j, rows[j] * n + c0, std::min(kChunk, n - c0));
      }
    });
  };
  // Sum of rows[j]'s partials in chunk order (deterministic).
  auto row_sum = [&](size_t j) {
    double sum = 0.0;
    for (int64_t c = 0; c < nchunks; ++c) sum += partial[j * nchunks + c];
    return sum;
  };

  const Kernels<T>& kern = kernels<T>();
  for_chunks([&](size_t j, int64_t off, int64_t len) -> double {
    const PassA<T>& a = coef[j];
    const PassAFn<T> fn = a.pending ? (a.lanczos ? kern.a_both : kern.a_update) : kern.a_lanczos;
    return fn(hv == nullptr ? nullptr : hv + off, y + off, yprev + off, w + off, wprev + off, x + off, len, a);
  });
  for (size_t j = 0; j < rows.size(); ++j) {
    double* s = state + rows[j] * kSlots;
    s[kPending] = 0.0;
    if (coef[j].lanczos) s[kAlfa] = row_sum(j) / s[kBeta];
  }
  if (flush) return {0, kNoBadRow};

  for_chunks([&](size_t j, int64_t off, int64_t len) -> double {
    if (!coef[j].lanczos) return 0.0;
    const double* s = state + rows[j] * kSlots;
    return kern.b(yprev + off, y + off, len, static_cast<T>(s[kAlfa] / s[kBeta]));
  });

  int64_t active = 0, bad = kNoBadRow;
  for (size_t j = 0; j < rows.size(); ++j) {
    if (!coef[j].lanczos) continue;
    const int64_t r = rows[j];
    double* s = state + r * kSlots;
    s[kBetaNextSq] = row_sum(j);
    scalar_step(s, tol, eps);
    if (s[kStatus] == kNonFinite) bad = std::min(bad, r);  // the caller raises (torchmoo.ops.minres)
    if (s[kPending] != 0.0) {
      const int64_t it = static_cast<int64_t>(s[kIter]);
      if (it < hcols) history[r * hcols + it] = s[kPhibar];
    }
    if (s[kStatus] == kActive) ++active;
  }
  return {active, bad};
}

void minres_step_cpu(const c10::optional<at::Tensor>& hv, const at::Tensor& y, const at::Tensor& yprev,
                     const at::Tensor& w, const at::Tensor& wprev, const at::Tensor& x, const at::Tensor& state,
                     const at::Tensor& history, const at::Tensor& summary, double shift, double tol) {
  check_step(hv.has_value() ? *hv : at::Tensor(), y, yprev, w, wprev, x, state, history, summary);
  TORCH_CHECK_VALUE(y.device().is_cpu(), "minres_step (CPU kernel): tensors must be on the CPU.");
  std::pair<int64_t, int64_t> result{0, kNoBadRow};
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "minres_step_cpu", [&] {
    result = step_impl<scalar_t>(hv, y, yprev, w, wprev, x, state, history, shift, tol);
  });
  if (hv.has_value()) {  // the final flush leaves summary alone
    int32_t* out = summary.mutable_data_ptr<int32_t>();
    out[0] = static_cast<int32_t>(result.first);
    out[1] = static_cast<int32_t>(result.second);
  }
}

InitOutputs minres_init_cpu(const at::Tensor& b, int64_t max_iter) { return init(b, max_iter); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> minres_info_cpu(const at::Tensor& state, const at::Tensor& history) {
  return info(state, history);
}

}  // namespace

TORCH_LIBRARY_IMPL(torchmoo, CPU, m) {
  m.impl("minres_init", &minres_init_cpu);
  m.impl("minres_step", &minres_step_cpu);
  m.impl("minres_info", &minres_info_cpu);
}

}  // namespace torchmoo
