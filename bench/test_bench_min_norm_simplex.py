"""Benchmarks of ``torchmoo.ops.min_norm_simplex`` against quadprog, Sener & Koltun's solver, torchjd.

Groups (each solved by every contender in this process, torchmoo first; see ``benchutil.py``):

* ``simplex batched B=1024 m=5`` and ``simplex batched B=65536 m=8``: ``G = J J^T``, ``J`` standard
  normal ``(m, 20)``, float64. torchmoo solves the whole batch in one call, with torch's default
  thread count and (``torchmoo[1 thread]``) with one thread, like the single-threaded loops; the
  Python loops (quadprog with prebuilt constraint matrices, the Sener & Koltun port) solve all ``B``
  problems for ``B = 1024`` but only the first 2048 of the 65536 (their time is reported *per
  problem*); the pure-torch reference solves the first 64. Every time is reported per problem.
* ``simplex single m=...``: one problem per call, ``J`` ``(m, 100)``: torchmoo on a torch tensor
  (dispatch and validation included), one ``quadprog.solve_qp`` call with prebuilt numpy inputs,
  the Sener & Koltun port on a numpy array, and torchjd's ``MGDAWeighting`` on the Gramian (a torch
  tensor); all four return the weights ``w`` from a given Gramian.
* ``mgda direction m=...``: from the Jacobian ``J`` to the aggregated direction: torchjd's
  ``MGDA()(J)`` (Gramian, its Frank-Wolfe weights, ``w @ J``) against torchmoo doing the same work
  (``J @ J.T``, ``min_norm_simplex``, ``w @ J``). The direction must be ``J^T w`` (in the span of ``J``'s
  rows, ``baselines.direction_weights``) and its weights ``w`` are checked like the others.
* ``simplex cuda B=65536 m=8``: torchmoo on the GPU (``torch.cuda.synchronize`` inside the timing)
  against torchmoo on the CPU; skipped without CUDA.

Every contender's output is checked, and a wrong one fails its benchmark (``baselines.check_qp_solution``):
the exact solvers (torchmoo's active set on any device or thread count, quadprog, the reference) must
reach a KKT residual of ``EXACT_KKT`` on the original problem; the approximate ones (Frank-Wolfe, the
Sener & Koltun port, torchjd) must return a feasible point whose objective is within ``GAP_TOL`` of
the exact solution's (and, over a batch, within ``GAP_MEDIAN_TOL`` in the median).

Quick mode (``TORCHMOO_BENCH_QUICK=1``) shrinks every batch to 64 problems (loops to 16,
reference to 4); the group names give the sizes actually run.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch

pytest.importorskip("pytest_benchmark")

import torchmoo as tm  # noqa: E402
from torchmoo.reference import min_norm_simplex_reference, simplex_kkt_residual  # noqa: E402

from baselines import (  # noqa: E402
    EXACT_KKT,
    GAP_MEDIAN_TOL,
    GAP_TOL,
    QUICK,
    MinNormSolver,
    QuadprogSimplex,
    check_qp_solution,
    direction_weights,
    make_gram,
    make_jacobian,
    num_threads,
    sener_koltun_loop,
)
from benchutil import record, run_timed  # noqa: E402

# (B, m, problems timed for the Python loops, problems timed for the reference)
BATCHED = {
    "B=1024 m=5": (1024, 5, 1024, 64),
    "B=65536 m=8": (65536, 8, 2048, 64),
}
if QUICK:
    BATCHED = {k: (64, m, 16, 4) for k, (_, m, _, _) in BATCHED.items()}
N_BATCHED = 20
SINGLE_M = (2, 10, 40)
N_SINGLE = 100
#: float64 directions J^T w are in the span of J's rows up to rounding (about 1e-16)
DIRECTION_RTOL = 1e-10


@lru_cache(maxsize=None)
def batched_problem(case: str):
    B, m, _, _ = BATCHED[case]
    return make_gram(B, m, N_BATCHED, seed=m)


@lru_cache(maxsize=None)
def batched_solution(case: str) -> torch.Tensor:
    """torchmoo's exact solution of the batch (certified by its KKT residual): what the others are checked against."""
    G = batched_problem(case)
    w = tm.ops.min_norm_simplex(G)
    check_qp_solution("torchmoo", G, None, w, simplex=True, kkt_tol=EXACT_KKT)
    return w


def _kkt(G: torch.Tensor, w) -> torch.Tensor:
    w = torch.as_tensor(np.asarray(w)) if not isinstance(w, torch.Tensor) else w
    return simplex_kkt_residual(G[: w.shape[0]], None, w)


# --------------------------------------------------------------------------------------------------
# Baselines are correct (not a benchmark; cheap)
# --------------------------------------------------------------------------------------------------


def test_baselines_agree():
    """quadprog, the Sener & Koltun port, scipy's SLSQP and the reference agree on small problems."""
    pytest.importorskip("quadprog")
    scipy_optimize = pytest.importorskip("scipy.optimize")
    G = make_gram(12, 5, N_BATCHED, seed=123)
    Gn = G.numpy()
    w_ref = min_norm_simplex_reference(G).numpy()
    w_qp = QuadprogSimplex(Gn).solve_all()
    w_sk = sener_koltun_loop(Gn)
    assert np.abs(w_qp - w_ref).max() < 1e-8
    assert float(_kkt(G, w_qp).max()) < 1e-10
    # Sener & Koltun stop at an L1 step of 1e-5 and clip 2-task weights to [0.001, 0.999]:
    # compare objective values, to their accuracy.
    f = lambda w: 0.5 * np.einsum("bi,bij,bj->b", w, Gn, w)  # noqa: E731
    assert np.all(f(w_sk) - f(w_ref) <= 1e-2 * f(w_ref))
    for i in range(3):
        m = Gn.shape[-1]
        res = scipy_optimize.minimize(
            lambda w: 0.5 * w @ Gn[i] @ w, np.full(m, 1.0 / m), jac=lambda w: Gn[i] @ w,
            bounds=[(0, None)] * m, method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000},
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones(m)}],
        )
        assert np.abs(res.x - w_qp[i]).max() < 1e-6
    # m = 2 is solved in closed form by both.
    G2 = make_gram(None, 2, N_BATCHED, seed=5).numpy()
    np.testing.assert_allclose(MinNormSolver.find_min_norm_element(G2)[0], QuadprogSimplex(G2).solve_one(), atol=1e-9)


# --------------------------------------------------------------------------------------------------
# 1. Batched
# --------------------------------------------------------------------------------------------------

BATCHED_CONTENDERS = ["torchmoo", "torchmoo[1 thread]", "torchmoo[frank_wolfe]", "quadprog loop", "sener_koltun loop",
                      "reference loop"]


@pytest.mark.parametrize("contender", BATCHED_CONTENDERS)
@pytest.mark.parametrize("case", list(BATCHED))
def test_min_norm_simplex_batched(benchmark, case, contender):
    B, m, n_loop, n_ref = BATCHED[case]
    G = batched_problem(case)
    w_exact = batched_solution(case)
    group = f"simplex batched B={B} m={m}"
    count, kkt_tol, gap_tol = B, EXACT_KKT, None
    if contender == "torchmoo":
        w = run_timed(benchmark, group, lambda: tm.ops.min_norm_simplex(G), fast=True)
    elif contender == "torchmoo[1 thread]":
        with num_threads(1):  # set around the whole measurement, not inside the timed call
            w = run_timed(benchmark, group, lambda: tm.ops.min_norm_simplex(G), fast=True)
    elif contender == "torchmoo[frank_wolfe]":
        w = run_timed(benchmark, group, lambda: tm.ops.min_norm_simplex(G, method="frank_wolfe"), fast=True)
        kkt_tol, gap_tol = None, GAP_TOL["simplex frank_wolfe"]
    elif contender == "quadprog loop":
        pytest.importorskip("quadprog")
        qp = QuadprogSimplex(G[:n_loop].numpy())  # ridge, a, C, b built here, outside the timing
        w = run_timed(benchmark, group, qp.solve_all, rounds=5)
        count = n_loop
    elif contender == "sener_koltun loop":
        Gn = G[:n_loop].numpy()
        w = run_timed(benchmark, group, lambda: sener_koltun_loop(Gn), rounds=3)
        count, kkt_tol, gap_tol = n_loop, None, GAP_TOL["sener_koltun"]
    else:
        Gs = G[:n_ref].clone()
        w = run_timed(benchmark, group, lambda: min_norm_simplex_reference(Gs), rounds=3)
        count = n_ref
    kkt = check_qp_solution(contender, G[:count], None, w, w_exact[:count], simplex=True, kkt_tol=kkt_tol,
                            gap_tol=gap_tol, gap_median_tol=None if gap_tol is None else GAP_MEDIAN_TOL)
    record(benchmark, group, contender, count, kkt, subset=count)


# --------------------------------------------------------------------------------------------------
# 2. Single problem: weights from a Gramian, and MGDA's direction from a Jacobian
# --------------------------------------------------------------------------------------------------

SINGLE_CONTENDERS = ["torchmoo", "quadprog", "sener_koltun", "torchjd MGDAWeighting"]


@pytest.mark.parametrize("contender", SINGLE_CONTENDERS)
@pytest.mark.parametrize("m", SINGLE_M)
def test_min_norm_simplex_single(benchmark, m, contender):
    J = make_jacobian(None, m, N_SINGLE, seed=m)
    G = (J @ J.T).contiguous()
    w_exact = tm.ops.min_norm_simplex(G)
    group = f"simplex single m={m}"
    kkt_tol, gap_tol = EXACT_KKT, None
    if contender == "torchmoo":
        w = run_timed(benchmark, group, lambda: tm.ops.min_norm_simplex(G), fast=True)
    elif contender == "quadprog":
        pytest.importorskip("quadprog")
        qp = QuadprogSimplex(G.numpy())
        w = run_timed(benchmark, group, qp.solve_one, fast=True)
    elif contender == "sener_koltun":
        Gn = G.numpy()
        w = run_timed(benchmark, group, lambda: MinNormSolver.find_min_norm_element(Gn)[0], fast=True)
        kkt_tol, gap_tol = None, GAP_TOL["sener_koltun"]
    else:
        aggregation = pytest.importorskip("torchjd.aggregation")
        weighting = aggregation.MGDAWeighting()  # defaults: epsilon=1e-3, max_iters=100
        w = run_timed(benchmark, group, lambda: weighting(G), fast=True)
        kkt_tol, gap_tol = None, GAP_TOL["torchjd"]
    kkt = check_qp_solution(contender, G, None, w, w_exact, simplex=True, kkt_tol=kkt_tol, gap_tol=gap_tol)
    record(benchmark, group, contender, 1, kkt)


@pytest.mark.parametrize("contender", ["torchmoo", "torchjd MGDA"])
@pytest.mark.parametrize("m", SINGLE_M)
def test_mgda_direction(benchmark, m, contender):
    J = make_jacobian(None, m, N_SINGLE, seed=m)
    group = f"mgda direction (J -> J^T w) m={m}"
    if contender == "torchmoo":
        def direction():
            w = tm.ops.min_norm_simplex(J @ J.T)
            return w @ J

        d = run_timed(benchmark, group, direction, fast=True)
    else:
        aggregation = pytest.importorskip("torchjd.aggregation")
        mgda = aggregation.MGDA()  # defaults: epsilon=1e-3, max_iters=100
        d = run_timed(benchmark, group, lambda: mgda(J), fast=True)
    # Residual of the weights behind d (J has full row rank); d must be J^T w for them.
    w = direction_weights(contender, J, d, rtol=DIRECTION_RTOL)
    G = J @ J.T
    exact = contender == "torchmoo"
    kkt = check_qp_solution(contender, G, None, w, tm.ops.min_norm_simplex(G), simplex=True,
                            kkt_tol=EXACT_KKT if exact else None, gap_tol=None if exact else GAP_TOL["torchjd"])
    record(benchmark, group, contender, 1, kkt)


# --------------------------------------------------------------------------------------------------
# 4. CUDA
# --------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_min_norm_simplex_cuda(benchmark, device):
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    if not getattr(tm, "cuda_built", False):
        pytest.skip("torchmoo was built without CUDA")
    case = "B=65536 m=8"
    B, m = BATCHED[case][:2]
    G = batched_problem(case).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else None
    group = f"simplex cuda B={B} m={m}"
    w = run_timed(benchmark, group, lambda: tm.ops.min_norm_simplex(G), sync=sync)
    kkt = check_qp_solution(f"torchmoo {device}", G, None, w, simplex=True, kkt_tol=EXACT_KKT)
    record(benchmark, group, f"torchmoo {device}", B, kkt, reference="torchmoo cpu")
