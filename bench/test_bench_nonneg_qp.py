"""Benchmarks of ``torchmoo.ops.nonneg_qp``: active set vs Frank-Wolfe vs a quadprog loop.

Problems (``baselines.make_nonneg_problems``): the dual of PNG, ``G = J J^T`` with ``J`` standard
normal ``(m, 20)``, ``c = J g - phi 1`` with a random ``g`` and ``phi`` uniform in ``[0, 20]`` (so
some multipliers are zero, some positive), float64, ``B = 1024`` problems for ``m`` in {2, 10}.
torchmoo solves the batch in one call (``method="active_set"``, the default, and
``method="frank_wolfe"``, away-step FW with the certified radius); quadprog solves the same 1024
problems in a Python loop (``C = I``, ``b = 0``, constraint matrices prebuilt). ``torchmoo[1 thread]``
is the default method with one torch thread, like the loop. Times are per problem; the KKT residual
is ``torchmoo.reference.nonneg_kkt_residual`` of each output. Every output is checked (a wrong one
fails the benchmark): the exact solvers (active set, quadprog) must reach ``EXACT_KKT`` on the original
problem, Frank-Wolfe must be feasible and within ``GAP_TOL`` (worst problem) and ``GAP_MEDIAN_TOL``
(median) of the exact objective. Quick mode: B = 64.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch

pytest.importorskip("pytest_benchmark")

import torchmoo as tm  # noqa: E402
from torchmoo.reference import nonneg_kkt_residual, nonneg_qp_reference  # noqa: E402

from baselines import (  # noqa: E402
    EXACT_KKT,
    GAP_MEDIAN_TOL,
    GAP_TOL,
    QUICK,
    QuadprogNonneg,
    check_qp_solution,
    make_nonneg_problems,
    num_threads,
)
from benchutil import record, run_timed  # noqa: E402

B = 64 if QUICK else 1024
NONNEG_M = (2, 10)
N = 20


@lru_cache(maxsize=None)
def problem(m: int):
    return make_nonneg_problems(B, m, N, seed=100 + m)


def test_quadprog_nonneg_agrees_with_reference():
    """The quadprog baseline solves the same problem as the reference (not a benchmark)."""
    pytest.importorskip("quadprog")
    G, c = make_nonneg_problems(8, 5, N, seed=7)
    lam_qp = QuadprogNonneg(G.numpy(), c.numpy()).solve_all()
    lam_ref = nonneg_qp_reference(G, c).numpy()
    assert np.abs(lam_qp - lam_ref).max() < 1e-8 * max(1.0, np.abs(lam_ref).max())
    assert float(nonneg_kkt_residual(G, c, torch.from_numpy(lam_qp)).max()) < 1e-10


@lru_cache(maxsize=None)
def solution(m: int) -> torch.Tensor:
    """torchmoo's exact solution (certified by its KKT residual): what Frank-Wolfe is checked against."""
    G, c = problem(m)
    lam = tm.ops.nonneg_qp(G, c)
    check_qp_solution("torchmoo", G, c, lam, simplex=False, kkt_tol=EXACT_KKT)
    return lam


@pytest.mark.parametrize("contender", ["torchmoo", "torchmoo[1 thread]", "torchmoo[frank_wolfe]", "quadprog loop"])
@pytest.mark.parametrize("m", NONNEG_M)
def test_nonneg_qp_batched(benchmark, m, contender):
    G, c = problem(m)
    group = f"nonneg batched B={B} m={m}"
    kkt_tol, gap_tol = EXACT_KKT, None
    if contender == "torchmoo":
        lam = run_timed(benchmark, group, lambda: tm.ops.nonneg_qp(G, c), fast=True)
    elif contender == "torchmoo[1 thread]":
        with num_threads(1):  # set around the whole measurement, not inside the timed call
            lam = run_timed(benchmark, group, lambda: tm.ops.nonneg_qp(G, c), fast=True)
    elif contender == "torchmoo[frank_wolfe]":
        lam = run_timed(benchmark, group, lambda: tm.ops.nonneg_qp(G, c, method="frank_wolfe"), fast=True)
        kkt_tol, gap_tol = None, GAP_TOL["nonneg frank_wolfe"]
    else:
        pytest.importorskip("quadprog")
        qp = QuadprogNonneg(G.numpy(), c.numpy())  # ridge, a, C, b built here, outside the timing
        lam = torch.from_numpy(run_timed(benchmark, group, qp.solve_all, rounds=5))
    kkt = check_qp_solution(contender, G, c, lam, solution(m), simplex=False, kkt_tol=kkt_tol, gap_tol=gap_tol,
                            gap_median_tol=None if gap_tol is None else GAP_MEDIAN_TOL)
    record(benchmark, group, contender, B, kkt, active_fraction=float((lam <= 0).double().mean()))
