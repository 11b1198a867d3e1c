// CPU kernel of torchmoo::min_norm_simplex (schema in csrc/ops.cpp).
#include <torch/library.h>

#include "qp_solve_cpu.h"

namespace torchmoo {
namespace {

QPOutputs min_norm_simplex_cpu(const at::Tensor& G, const c10::optional<at::Tensor>& c, c10::string_view method,
                               int64_t max_iter, double tol) {
  return solve_qp_cpu(G, c, /*simplex=*/true, method, max_iter, tol, /*radius=*/-1.0, "min_norm_simplex");
}

}  // namespace

TORCH_LIBRARY_IMPL(torchmoo, CPU, m) { m.impl("min_norm_simplex", &min_norm_simplex_cpu); }

}  // namespace torchmoo
