// The torchmoo operator library: every schema is declared here, once. Kernels register themselves
// for the CPU and CUDA dispatch keys in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu.
#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY(torchmoo, m) {
  // min over w in the probability simplex of 0.5 w'Gw + c'w, batched over leading dims.
  // Returns (w, iterations, kkt_residual, converged).
  m.def(
      "min_norm_simplex(Tensor G, Tensor? c=None, str method='active_set', int max_iter=-1, float tol=-1.0)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
  // min over lambda >= 0 of 0.5 l'Gl + c'l, batched over leading dims.
  // Returns (lambda, iterations, kkt_residual, converged).
  m.def(
      "nonneg_qp(Tensor G, Tensor c, str method='active_set', int max_iter=-1, float tol=-1.0, float radius=-1.0)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
  // G = J J^T for J of shape (..., m, n): (..., m, m), exactly symmetric, one pass over J. check_finite=False
  // skips the finiteness check (on CUDA a stream synchronization), leaving inf / NaN in G.
  m.def("gram(Tensor J, bool check_finite=True) -> Tensor");
  // MINRES for (H - shift I) x = b over a matvec that runs in Python (torchmoo.ops.minres drives the loop).
  // minres_init(b (k, n), max_iter) -> (y, yprev, w, wprev, x, state, history); minres_step consumes
  // hv = H y and advances every right-hand side by one iteration in place, writing into summary (int32
  // (2,), on the device of y) how many rows still run and the first row whose hv was not finite (2^31 - 1
  // when none), without synchronizing a CUDA stream (hv = None: apply the pending updates of x only,
  // summary untouched); minres_info(state, history) -> (iterations, residual_norms, stop codes).
  m.def("minres_init(Tensor b, int max_iter) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "minres_step(Tensor? hv, Tensor(a!) y, Tensor(b!) yprev, Tensor(c!) w, Tensor(d!) wprev, Tensor(e!) x,"
      " Tensor(f!) state, Tensor(g!) history, Tensor(h!) summary, float shift, float tol) -> ()");
  m.def("minres_info(Tensor state, Tensor history) -> (Tensor, Tensor, Tensor)");
  // MT-SGD (supplement Eq. 3): U (K, K) = <phi_i, phi_j> in the RKHS of k = exp(-|x_a - x_b|^2 / h), for
  // particles X (M, d) and scores S (K, M, d); stein_update: phi (M, d) = sum_i w_i phi_i at the particles.
  m.def("stein_task_matrix(Tensor X, Tensor S, float h) -> Tensor");
  m.def("stein_update(Tensor X, Tensor S, Tensor w, float h) -> Tensor");
  // d = sum_i w_i J_i for J (..., m, n), w (..., m): (..., n), one pass over J (check_finite as for gram).
  m.def("combine(Tensor J, Tensor w, bool check_finite=True) -> Tensor");
}

PYBIND11_MODULE(_C, module) {
  module.doc() = "torchmoo's compiled operators (registered under torch.ops.torchmoo).";
#ifdef TORCHMOO_WITH_CUDA
  module.attr("cuda_built") = true;
#else
  module.attr("cuda_built") = false;
#endif
}
