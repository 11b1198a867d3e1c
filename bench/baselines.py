"""Baseline solvers and shared helpers for torchmoo's benchmarks (``bench/``).

Nothing in the library imports this module. It holds:

* :class:`MinNormSolver`: a numpy port, operating on a Gram matrix, of the Frank-Wolfe-style
  ``MinNormSolver.find_min_norm_element`` of Sener & Koltun (2018), MGDA-UB repository
  (``multi_task/min_norm_solvers.py`` of https://github.com/isl-org/MultiObjectiveOptimization);
* quadprog wrappers (:class:`QuadprogSimplex`, :class:`QuadprogNonneg`) that build the constraint
  matrices once, outside the per-problem loop, so the loop times nothing but ``quadprog.solve_qp``;
* problem generators and a machine description used by the benchmarks and ``bench/report.py``.

quadprog (Goldfarb-Idnani dual active set) needs a strictly positive definite ``G``; Gram matrices
``J J^T`` may be only semi-definite, so a ridge ``QUADPROG_RIDGE * max(diag G)`` is added to the
diagonal (the benchmarks' problems are positive definite anyway; the ridge changes the solution by
about ``1e-12`` relative, far below the accuracy being compared). The KKT residuals reported for
quadprog are always computed against the original, un-ridged ``G``.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "QUICK",
    "QUADPROG_RIDGE",
    "MinNormSolver",
    "QuadprogSimplex",
    "QuadprogNonneg",
    "sener_koltun_loop",
    "make_gram",
    "make_jacobian",
    "make_nonneg_problems",
    "machine_description",
    "median_time",
    "interleaved_medians",
    "stein_task_matrix_obvious",
    "stein_update_obvious",
    "stein_task_matrix_torch",
    "stein_update_torch",
    "peak_rss_bytes",
    "EXACT_KKT",
    "GAP_TOL",
    "GAP_MEDIAN_TOL",
    "check_qp_solution",
    "direction_weights",
    "num_threads",
]

#: Quick mode (CI): tiny sizes and few rounds, so the benchmarks only prove that they still run.
QUICK: bool = os.environ.get("TORCHMOO_BENCH_QUICK", "") not in ("", "0")

#: Relative ridge added to ``G``'s diagonal for quadprog, which needs ``G`` strictly positive definite.
QUADPROG_RIDGE = 1e-12


# --------------------------------------------------------------------------------------------------
# Sener & Koltun's MinNormSolver, ported to a Gram matrix
# --------------------------------------------------------------------------------------------------


class MinNormSolver:
    """Sener & Koltun's min-norm solver (MGDA-UB), ported to numpy on a Gram matrix ``G = J J^T``.

    This follows ``MinNormSolver`` in ``multi_task/min_norm_solvers.py`` of the MGDA-UB code
    (https://github.com/isl-org/MultiObjectiveOptimization, Sener & Koltun, "Multi-Task Learning as
    Multi-Objective Optimization", NeurIPS 2018) line by line: ``find_min_norm_element`` starts at
    the best two-task solution (``_min_norm_2d`` over all pairs, with the closed form
    ``_min_norm_element_from2``, including its clipping of ``gamma`` to 0.999 / 0.001 at the ends of
    the segment), then repeats a projected-gradient step (``_next_point``: step to the boundary of the
    box, then ``_projection2simplex``) followed by an exact line search between the current point and
    the new one (``_min_norm_element_from2`` again), and stops when the L1 change is below
    ``STOP_CRIT = 1e-5`` (returning the point *before* that last step, as the original does) or after
    ``MAX_ITER = 250`` iterations. For ``m < 3`` it returns the two-task solution.

    Deviations from the original, all of which can only make this port faster or more robust:

    * It takes the Gram matrix directly instead of lists of per-parameter gradient tensors (the
      original builds the same inner products into a dict ``dps`` first; benchmarking that would
      time torch dot products, not the solver), and evaluates the line search's three quadratic
      forms with ``numpy.dot`` instead of the original's double Python loop over ``dps``.
    * The original never increments ``iter_count``, so its ``MAX_ITER`` is never reached and the
      loop only ends at ``STOP_CRIT`` (in principle, never). Here the count is incremented, so at most
      250 iterations run, and the last iterate is returned when the cap is hit (the original would
      fall off the loop and return ``None``).
    * ``_min_norm_2d`` starts its running minimum at ``inf`` instead of ``1e8``, so that problems whose
      squared gradient norms exceed ``1e8`` do not crash with an unbound ``sol``.
    """

    MAX_ITER = 250
    STOP_CRIT = 1e-5

    @staticmethod
    def _min_norm_element_from2(v1v1: float, v1v2: float, v2v2: float) -> Tuple[float, float]:
        """Analytical solution of ``min_c |c x_1 + (1 - c) x_2|^2`` from the three inner products."""
        if v1v2 >= v1v1:
            # Case: Fig 1, third column
            gamma = 0.999
            cost = v1v1
            return gamma, cost
        if v1v2 >= v2v2:
            # Case: Fig 1, first column
            gamma = 0.001
            cost = v2v2
            return gamma, cost
        # Case: Fig 1, second column
        gamma = -1.0 * ((v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2))
        cost = v2v2 + gamma * (v1v2 - v2v2)
        return gamma, cost

    @staticmethod
    def _min_norm_2d(dps: List[List[float]]) -> list:
        """Best solution supported on two tasks: ``[(i, j), c, d]`` (weight ``c`` on ``i``)."""
        n = len(dps)
        dmin = float("inf")
        sol = None
        for i in range(n):
            for j in range(i + 1, n):
                c, d = MinNormSolver._min_norm_element_from2(dps[i][i], dps[i][j], dps[j][j])
                if d < dmin:
                    dmin = d
                    sol = [(i, j), c, d]
        return sol

    @staticmethod
    def _projection2simplex(y: np.ndarray) -> np.ndarray:
        """``argmin_z |y - z|_2`` over the probability simplex (sort-based)."""
        m = len(y)
        sorted_y = np.flip(np.sort(y), axis=0)
        tmpsum = 0.0
        tmax_f = (np.sum(y) - 1.0) / m
        for i in range(m - 1):
            tmpsum += sorted_y[i]
            tmax = (tmpsum - 1) / (i + 1.0)
            if tmax > sorted_y[i + 1]:
                tmax_f = tmax
                break
        return np.maximum(y - tmax_f, np.zeros(y.shape))

    @staticmethod
    def _next_point(cur_val: np.ndarray, grad: np.ndarray, n: int) -> np.ndarray:
        proj_grad = grad - (np.sum(grad) / n)
        tm1 = -1.0 * cur_val[proj_grad < 0] / proj_grad[proj_grad < 0]
        tm2 = (1.0 - cur_val[proj_grad > 0]) / (proj_grad[proj_grad > 0])

        t = 1
        if len(tm1[tm1 > 1e-7]) > 0:
            t = np.min(tm1[tm1 > 1e-7])
        if len(tm2[tm2 > 1e-7]) > 0:
            t = min(t, np.min(tm2[tm2 > 1e-7]))

        next_point = proj_grad * t + cur_val
        next_point = MinNormSolver._projection2simplex(next_point)
        return next_point

    @staticmethod
    def find_min_norm_element(G: np.ndarray, return_iterations: bool = False):
        """Min-norm point of the convex hull for the Gram matrix ``G`` (``m x m`` numpy float64).

        Returns ``(sol_vec, cost)`` like the original (``cost`` the last line search's squared
        norm), or ``(sol_vec, cost, iterations)`` with ``return_iterations=True``.
        """
        dps = G.tolist()
        init_sol = MinNormSolver._min_norm_2d(dps)

        n = len(dps)
        sol_vec = np.zeros(n)
        sol_vec[init_sol[0][0]] = init_sol[1]
        sol_vec[init_sol[0][1]] = 1 - init_sol[1]

        if n < 3:
            # This is optimal for n=2, so return the solution
            return (sol_vec, init_sol[2], 0) if return_iterations else (sol_vec, init_sol[2])

        iter_count = 0
        grad_mat = G
        nd = init_sol[2]
        while iter_count < MinNormSolver.MAX_ITER:
            grad_dir = -1.0 * np.dot(grad_mat, sol_vec)
            new_point = MinNormSolver._next_point(sol_vec, grad_dir, n)
            # Re-compute the inner products for line search
            G_new = np.dot(grad_mat, new_point)
            v1v1 = float(np.dot(sol_vec, np.dot(grad_mat, sol_vec)))
            v1v2 = float(np.dot(sol_vec, G_new))
            v2v2 = float(np.dot(new_point, G_new))
            nc, nd = MinNormSolver._min_norm_element_from2(v1v1, v1v2, v2v2)
            new_sol_vec = nc * sol_vec + (1 - nc) * new_point
            change = new_sol_vec - sol_vec
            if np.sum(np.abs(change)) < MinNormSolver.STOP_CRIT:
                return (sol_vec, nd, iter_count) if return_iterations else (sol_vec, nd)
            sol_vec = new_sol_vec
            iter_count += 1
        return (sol_vec, nd, iter_count) if return_iterations else (sol_vec, nd)


def sener_koltun_loop(G: np.ndarray) -> np.ndarray:
    """Python loop of :meth:`MinNormSolver.find_min_norm_element` over a ``(B, m, m)`` batch."""
    out = np.empty(G.shape[:-1])
    solve = MinNormSolver.find_min_norm_element
    for i in range(G.shape[0]):
        out[i] = solve(G[i])[0]
    return out


# --------------------------------------------------------------------------------------------------
# quadprog, constraint matrices built once
# --------------------------------------------------------------------------------------------------


def _ridged(G: np.ndarray) -> np.ndarray:
    G = np.array(G, dtype=np.float64, order="C", copy=True)
    idx = np.arange(G.shape[-1])
    diag = G[..., idx, idx]
    G[..., idx, idx] = diag + QUADPROG_RIDGE * np.maximum(diag.max(axis=-1, keepdims=True), 1e-300)
    return G


class QuadprogSimplex:
    """``min 0.5 w'Gw + c'w`` s.t. ``sum w = 1, w >= 0`` with ``quadprog.solve_qp``, one problem at a time.

    The constructor does everything that does not depend on the timed call: float64 C-contiguous
    copies of ``G`` with the ridge added, ``a = -c``, and the constraint matrix ``C = [1 | I]``
    (``C^T w >= b`` with the first row an equality, ``meq = 1``) and ``b = [1, 0, ..., 0]``.
    :meth:`solve_all` is then a bare loop over ``solve_qp`` (the best case for quadprog);
    :meth:`solve_one` is a single call.
    """

    def __init__(self, G: np.ndarray, c: Optional[np.ndarray] = None):
        import quadprog

        self._solve_qp = quadprog.solve_qp
        G = np.asarray(G, dtype=np.float64)
        self.single = G.ndim == 2
        self.G = _ridged(G.reshape((-1,) + G.shape[-2:]))
        B, m = self.G.shape[0], self.G.shape[-1]
        self.a = np.zeros((B, m)) if c is None else np.ascontiguousarray(-np.asarray(c, np.float64).reshape(B, m))
        self.C = np.ascontiguousarray(np.concatenate([np.ones((m, 1)), np.eye(m)], axis=1))
        self.b = np.concatenate([[1.0], np.zeros(m)])

    def solve_one(self, i: int = 0) -> np.ndarray:
        return self._solve_qp(self.G[i], self.a[i], self.C, self.b, 1)[0]

    def solve_all(self, count: Optional[int] = None) -> np.ndarray:
        solve_qp, G, a, C, b = self._solve_qp, self.G, self.a, self.C, self.b
        n = G.shape[0] if count is None else count
        out = np.empty((n, G.shape[-1]))
        for i in range(n):
            out[i] = solve_qp(G[i], a[i], C, b, 1)[0]
        return out


class QuadprogNonneg:
    """``min 0.5 l'Gl + c'l`` s.t. ``l >= 0`` with ``quadprog.solve_qp`` (``C = I``, ``b = 0``, ``meq = 0``).

    Same conventions as :class:`QuadprogSimplex`: all inputs prebuilt, the loop only calls ``solve_qp``.
    """

    def __init__(self, G: np.ndarray, c: np.ndarray):
        import quadprog

        self._solve_qp = quadprog.solve_qp
        G = np.asarray(G, dtype=np.float64)
        self.G = _ridged(G.reshape((-1,) + G.shape[-2:]))
        B, m = self.G.shape[0], self.G.shape[-1]
        self.a = np.ascontiguousarray(-np.asarray(c, np.float64).reshape(B, m))
        self.C = np.eye(m)
        self.b = np.zeros(m)

    def solve_one(self, i: int = 0) -> np.ndarray:
        return self._solve_qp(self.G[i], self.a[i], self.C, self.b, 0)[0]

    def solve_all(self, count: Optional[int] = None) -> np.ndarray:
        solve_qp, G, a, C, b = self._solve_qp, self.G, self.a, self.C, self.b
        n = G.shape[0] if count is None else count
        out = np.empty((n, G.shape[-1]))
        for i in range(n):
            out[i] = solve_qp(G[i], a[i], C, b, 0)[0]
        return out


# --------------------------------------------------------------------------------------------------
# Cross-checks: a contender that returns a wrong answer fails its benchmark
# --------------------------------------------------------------------------------------------------

#: KKT residual (``torchmoo.reference``, on the original un-ridged problem) that every exact solver must
#: reach: torchmoo's active set, quadprog and the reference. For quadprog it also certifies that the
#: problem it was given (``a = -c``, the constraint matrix, the ridge) is the one torchmoo solves.
EXACT_KKT = 1e-10

#: Bounds on the scaled objective gap ``(f(x) - f(x*)) / max(max|G|, max|c|)`` of the approximate solvers
#: (``x*`` torchmoo's exact solution), worst problem. They sit a few times above the worst gap seen on the
#: benchmark problems (Frank-Wolfe stops at its 1000-iteration cap on a few problems; Sener & Koltun's port
#: at its L1 step of 1e-5, with the 2-task clipping to [0.001, 0.999]), so they do not fail the documented
#: inaccuracy (the KKT columns of the tables show it). A batch must also meet ``GAP_MEDIAN_TOL``.
GAP_TOL = {
    "simplex frank_wolfe": 2e-3,  # worst seen 4e-4
    "nonneg frank_wolfe": 1e-5,  # worst seen 7e-7
    "sener_koltun": 5e-2,  # worst seen 2e-2 (m = 8)
    "torchjd": 1e-2,  # worst seen 4e-4 (m = 40, float64), 4e-6 (float32 MGDA on n = 1e5)
}
#: Bound on the median scaled objective gap of a batch (seen: 1e-10 for Frank-Wolfe and Sener & Koltun;
#: uniform weights give about 1e-2): catches a systematic error that the loose worst-case bound lets pass.
GAP_MEDIAN_TOL = 1e-6


def check_qp_solution(name: str, G, c, x, x_exact=None, *, simplex: bool, kkt_tol: Optional[float] = None,
                      gap_tol: Optional[float] = None, gap_median_tol: Optional[float] = None,
                      feas_tol: float = 1e-9):
    """KKT residuals of a contender's output ``x``, asserting that it solves the problem.

    ``G (..., m, m)``, ``c (..., m)`` or None, ``x`` and ``x_exact`` ``(..., m)`` (torch or numpy, any
    float dtype; compared in float64). ``simplex``: the problem is over the probability simplex (else
    over ``x >= 0``). ``kkt_tol``: the largest KKT residual allowed (exact solvers). ``gap_tol``: the
    largest scaled objective gap to ``x_exact`` allowed, after ``x`` is checked feasible to ``feas_tol``
    (approximate solvers); ``gap_median_tol``: the largest median gap over the batch. Returns the ``(...)``
    float64 KKT residuals (recorded next to the times).
    """
    import torch
    from torchmoo.reference import nonneg_kkt_residual, qp_objective, simplex_kkt_residual

    def f64(t):
        if t is None:
            return None
        return (t if isinstance(t, torch.Tensor) else torch.as_tensor(np.asarray(t))).detach().cpu().double()

    G, c, x, x_exact = f64(G), f64(c), f64(x), f64(x_exact)
    assert x.shape == G.shape[:-1], f"{name}: output of shape {tuple(x.shape)}, expected {tuple(G.shape[:-1])}"
    kkt = simplex_kkt_residual(G, c, x) if simplex else nonneg_kkt_residual(G, c, x)
    if kkt_tol is not None:
        worst = float(kkt.max())
        assert worst <= kkt_tol, f"{name}: KKT residual {worst:.1e} > {kkt_tol:.0e}"
    if gap_tol is not None or gap_median_tol is not None:
        infeasible = (-x.amin(dim=-1)).clamp_min(0.0)
        if simplex:
            infeasible = torch.maximum(infeasible, (x.sum(dim=-1) - 1.0).abs())
        assert float(infeasible.max()) <= feas_tol, f"{name}: infeasible by {float(infeasible.max()):.1e}"
        scale = G.abs().amax(dim=(-2, -1))
        if c is not None:
            scale = torch.maximum(scale, c.abs().amax(dim=-1))
        gap = (qp_objective(G, c, x) - qp_objective(G, c, x_exact)) / scale.clamp_min(1e-300)
        worst, median = float(gap.max()), float(gap.flatten().median())
        assert gap_tol is None or worst <= gap_tol, (
            f"{name}: objective above the exact solution's by {worst:.1e} (scaled) > {gap_tol:.0e}")
        assert gap_median_tol is None or median <= gap_median_tol, (
            f"{name}: median objective gap {median:.1e} (scaled) > {gap_median_tol:.0e}")
    return kkt


def direction_weights(name: str, J, d, *, rtol: float):
    """The weights ``w`` of a direction ``d = J^T w``, asserting that ``d`` is one.

    ``J (m, n)`` of full row rank, ``d (n,)`` (torch, any float dtype, any device). ``w (m,)`` float64 solves
    ``(J J^T) w = J d`` (least squares); ``d`` must lie in the span of ``J``'s rows to ``rtol`` (relative
    2-norm): otherwise a direction with anything added orthogonally to the rows would pass any check
    of ``w``. The caller then checks ``w`` (e.g. with :func:`check_qp_solution`).
    """
    import torch

    J64, d64 = J.detach().cpu().double(), d.detach().cpu().double()
    assert d64.shape == (J64.shape[-1],), f"{name}: direction of shape {tuple(d64.shape)}, expected ({J64.shape[-1]},)"
    w = torch.linalg.solve(J64 @ J64.T, J64 @ d64)
    off = float((d64 - w @ J64).norm() / d64.norm().clamp_min(1e-300))
    assert off <= rtol, f"{name}: the direction is {off:.1e} (relative) off the span of J's rows > {rtol:.0e}"
    return w


class num_threads:
    """``with num_threads(k):`` torch's intra-op thread count is ``k`` inside, restored on exit."""

    def __init__(self, k: int):
        self.k = k

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(self.k)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.before)
        return False


# --------------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------------


def make_jacobian(B: Optional[int], m: int, n: int, seed: int = 0, norm_spread: float = 0.0):
    """Standard normal Jacobians, float64 torch: ``(B, m, n)``, or ``(m, n)`` when ``B`` is None.

    ``norm_spread > 0`` multiplies each row (task gradient) by ``exp(norm_spread * N(0, 1))``: tasks
    with very different gradient norms, whose min-norm points mostly have partial support (with
    ``norm_spread = 0`` most min-norm points of 5 random gradients in R^20 use all of them).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    shape = (m, n) if B is None else (B, m, n)
    J = torch.randn(shape, generator=gen, dtype=torch.float64)
    if norm_spread > 0:
        J = J * torch.exp(norm_spread * torch.randn(shape[:-1] + (1,), generator=gen, dtype=torch.float64))
    return J


def make_gram(B: Optional[int], m: int, n: int = 20, seed: int = 0, norm_spread: float = 0.0):
    """Gram matrices ``G = J J^T`` of :func:`make_jacobian` (``(B, m, m)`` float64 torch, contiguous)."""
    J = make_jacobian(B, m, n, seed, norm_spread)
    return (J @ J.mT).contiguous()


def make_nonneg_problems(B: int, m: int, n: int = 20, seed: int = 0):
    """PNG-dual-like problems: ``G = J J^T``, ``c = J g - phi 1`` (``g`` a random objective gradient).

    ``phi`` is drawn per problem so that both active and inactive constraints occur. Returns
    ``(G, c)`` float64 torch tensors ``(B, m, m)``, ``(B, m)``.
    """
    import torch

    J = make_jacobian(B, m, n, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    g = torch.randn((B, n, 1), generator=gen, dtype=torch.float64)
    phi = torch.rand((B, 1), generator=gen, dtype=torch.float64) * n
    c = (J @ g).squeeze(-1) - phi
    return (J @ J.mT).contiguous(), c.contiguous()


# --------------------------------------------------------------------------------------------------
# Timing and machine
# --------------------------------------------------------------------------------------------------


def median_time(fn: Callable[[], object], repeats: int, number: int = 1, sync: Optional[Callable[[], None]] = None) -> float:
    """Median over ``repeats`` of the mean time of ``number`` back-to-back calls of ``fn`` (seconds)."""
    times = []
    for _ in range(repeats):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        if sync is not None:
            sync()
        times.append((time.perf_counter() - t0) / number)
    return float(np.median(times))


def interleaved_medians(
    fns: Dict[str, Callable[[], object]],
    repeats: int,
    numbers: Optional[Dict[str, int]] = None,
    warmup: int = 1,
    sync: Optional[Callable[[], None]] = None,
    rewarm: Sequence[str] = (),
) -> Dict[str, float]:
    """Median seconds per call of each function, the repeats interleaved round-robin.

    Interleaving (a, b, c, a, b, c, ...) spreads any drift of the machine (frequency, other load)
    over all contenders, so the ratios are measured under the same conditions. ``numbers[name]``
    calls are averaged inside one repeat (for calls too short to time one by one). The functions
    named in ``rewarm`` get one untimed call right before each of their timed blocks: after another
    contender ran for a long time single-threaded, the first call of a multi-threaded one also
    pays for waking its thread pool up, which is not what a throughput benchmark measures (the
    steady state of back-to-back calls, as ``timeit`` does).
    """
    numbers = numbers or {}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            number = numbers.get(name, 1)
            if name in rewarm:
                fn()
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            if sync is not None:
                sync()
            samples[name].append((time.perf_counter() - t0) / number)
    return {k: float(np.median(v)) for k, v in samples.items()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _cpu_times() -> Tuple[float, float]:
    with open("/proc/stat") as f:
        # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already counted
        # in user and nice, so the columns after steal would count it twice
        parts = [float(x) for x in f.readline().split()[1:9]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0.0)  # idle + iowait
    return sum(parts), idle


def other_cpu_load(interval: float = 1.0) -> Optional[float]:
    """Fraction of all cores busy during ``interval`` seconds while this process sleeps (Linux only).

    Anything well above 0 means other processes compete for the cores and the timings (above all
    the multi-threaded ones) are not trustworthy.
    """
    try:
        t0, i0 = _cpu_times()
        time.sleep(interval)
        t1, i1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, 1.0 - (i1 - i0) / max(t1 - t0, 1e-9))


class OtherLoadMeter:
    """Fraction of all cores used by *other* processes between construction and :meth:`fraction`.

    Busy time of the whole machine (``/proc/stat``) minus this process's own CPU time, over the
    elapsed wall time times the core count. Linux only (``fraction()`` is None elsewhere).
    """

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            import resource

            total, idle = _cpu_times()
            ru = resource.getrusage(resource.RUSAGE_SELF)
            return total, idle, ru.ru_utime + ru.ru_stime, os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, ImportError):
            return None

    def fraction(self) -> Optional[float]:
        end = self._sample()
        if self.start is None or end is None:
            return None
        (t0, i0, own0, hz), (t1, i1, own1, _) = self.start, end
        total = (t1 - t0) / hz  # core-seconds elapsed, all cores
        if total <= 0:
            return None
        busy = total - (i1 - i0) / hz
        return max(0.0, (busy - (own1 - own0)) / total)


def machine_description() -> Dict[str, str]:
    """CPU model, usable cores, torch threads and versions of everything being compared."""
    import torch

    info = {
        "cpu": _cpu_model(),
        "cores (usable)": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    for mod in ("torchmoo", "quadprog", "torchjd", "scipy"):
        try:
            from importlib.metadata import version

            info[mod] = version(mod)
        except Exception:  # noqa: BLE001 - optional packages
            info[mod] = "not installed"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# --------------------------------------------------------------------------------------------------
# MT-SGD's Stein terms in plain torch (baselines of torchmoo.ops.stein_task_matrix / stein_update)
# --------------------------------------------------------------------------------------------------


def stein_task_matrix_obvious(X, S, h: float):
    """MT-SGD's ``U`` written the obvious way in torch: ``cdist`` for the distances, the kernel gradients
    materialized as ``(M, M, d)`` tensors, and one ``einsum`` per term of supplement Eq. 3."""
    import torch

    K, M, d = S.shape
    D2 = torch.cdist(X, X) ** 2
    Kmat = torch.exp(-D2 / h)
    diff = X[:, None, :] - X[None, :, :]  # (M, M, d): x_a - x_b
    dk_db = (2.0 / h) * Kmat[..., None] * diff  # d k(x_a, x_b) / d x_b
    dk_da = -dk_db  # d k(x_a, x_b) / d x_a
    trace = (2.0 / h) * Kmat * (d - 2.0 * D2 / h)  # tr(d^2 k / dx_a dx_b)
    first = torch.einsum("ab,iad,jbd->ij", Kmat, S, S)
    second = torch.einsum("iad,abd->i", S, dk_db)
    third = torch.einsum("jbd,abd->j", S, dk_da)
    return (first + second[:, None] + third[None, :] + trace.sum()) / (M * M)


def stein_update_obvious(X, S, w, h: float):
    """MT-SGD's update written the obvious way: ``cdist``, the ``(M, M, d)`` kernel gradient, ``einsum``."""
    import torch

    M = X.shape[0]
    Kmat = torch.exp(-torch.cdist(X, X) ** 2 / h)
    dk_db = (2.0 / h) * Kmat[..., None] * (X[:, None, :] - X[None, :, :])  # d k(x_b, x_a) / d x_b at [a, b]
    return (torch.einsum("ab,k,kbd->ad", Kmat, w, S) + w.sum() * dk_db.sum(1)) / M


def _stein_kernel_terms_torch(X, h: float):
    import torch

    sq = (X * X).sum(1)
    D2 = (sq[:, None] + sq[None, :] - 2.0 * (X @ X.T)).clamp_min(0.0)
    D2 = 0.5 * (D2 + D2.T)
    D2.fill_diagonal_(0.0)
    Kmat = torch.exp(-D2 / h)
    R = (2.0 / h) * (Kmat.sum(1, keepdim=True) * X - Kmat @ X)
    return Kmat, D2, R


def stein_task_matrix_torch(X, S, h: float):
    """torchmoo's former pure-torch ``U`` (before the operator): batched ``matmul`` with the kernel matrix,
    one GEMM for ``<S_i, K S_j>``, ``einsum`` for ``c`` (a ``(K, M, d)`` temporary, no ``(M, M, d)`` one)."""
    import torch

    K, M, d = S.shape
    Kmat, D2, R = _stein_kernel_terms_torch(X, h)
    KS = torch.matmul(Kmat, S)
    G = S.reshape(K, M * d) @ KS.reshape(K, M * d).T
    c = torch.einsum("kad,ad->k", S, R)
    const = (2.0 / h) * (Kmat * (d - 2.0 * D2 / h)).sum()
    U = (G + c[:, None] + c[None, :] + const) / (M * M)
    return 0.5 * (U + U.T)


def stein_update_torch(X, S, w, h: float):
    """torchmoo's former pure-torch update: ``(K (sum_i w_i S_i) + (sum w) R) / M``."""
    import torch

    Kmat, _, R = _stein_kernel_terms_torch(X, h)
    Sw = torch.einsum("k,kad->ad", w, S)
    return (Kmat @ Sw + w.sum() * R) / X.shape[0]


def peak_rss_bytes(fn: Callable[[], object]) -> int:
    """Extra resident memory (bytes) of the process at its peak during ``fn()``, over what was resident
    before (Linux: the high-water mark ``VmHWM`` is reset through ``/proc/self/clear_refs``). Counts every
    allocation that touches memory: torch's, the C++ kernels' own buffers, the libraries'. Memory freed
    earlier and reused without new pages is not counted, so measure in a fresh process."""
    import re

    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) * 1024

    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    return status("VmHWM") - before
