#pragma once

#include "../qp_host.h"

namespace torchmoo {

// Solves every problem of the batch on the GPU, one thread per problem.
QPOutputs solve_qp_cuda(const at::Tensor& G, const c10::optional<at::Tensor>& c, bool simplex,
                        c10::string_view method, int64_t max_iter, double tol, double radius, const char* op);

}  // namespace torchmoo
