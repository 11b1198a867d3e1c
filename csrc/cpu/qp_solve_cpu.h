#pragma once

#include "../qp_host.h"

namespace torchmoo {

// Solves every problem of the batch with at::parallel_for over problems.
QPOutputs solve_qp_cpu(const at::Tensor& G, const c10::optional<at::Tensor>& c, bool simplex,
                       c10::string_view method, int64_t max_iter, double tol, double radius, const char* op);

}  // namespace torchmoo
