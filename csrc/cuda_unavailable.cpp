// Compiled only when torchmoo is built without CUDA: every operator gets a CUDA kernel that explains
// how to get a CUDA build, instead of the dispatcher's generic "could not run ... with the CUDA backend".
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace {

void cuda_not_built(const c10::OperatorHandle& op, torch::jit::Stack* /*stack*/) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, op.schema().name(),
                              ": this torchmoo was built without CUDA kernels (the torch it was built against has "
                              "no CUDA), so it cannot run on CUDA tensors. Move the inputs to the CPU, or rebuild "
                              "torchmoo against a CUDA-enabled torch: pip install --no-build-isolation "
                              "--force-reinstall --no-deps . (from the torchmoo source tree).");
}

}  // namespace

TORCH_LIBRARY_IMPL(torchmoo, CUDA, m) {
  m.impl("min_norm_simplex", torch::CppFunction::makeFromBoxedFunction<&cuda_not_built>());
  m.impl("nonneg_qp", torch::CppFunction::makeFromBoxedFunction<&cuda_not_built>());
  m.impl("gram", torch::CppFunction::makeFromBoxedFunction<&cuda_not_built>());
  m.impl("minres_init", torch::CppFunction::makeFromBoxedFunction<&cuda_not_built>());
  m.impl("minres_step", torch::CppFunction::makeFromBoxedFunction<&cuda_not_built>());
  m.impl("minres_info", torch::CppFunction::makeFromBoxedFunction<&cuda_not_built>());
  m.impl("stein_task_matrix", torch::CppFunction::makeFromBoxedFunction<&cuda_not_built>());
  m.impl("stein_update", torch::CppFunction::makeFromBoxedFunction<&cuda_not_built>());
  m.impl("combine", torch::CppFunction::makeFromBoxedFunction<&cuda_not_built>());
}
