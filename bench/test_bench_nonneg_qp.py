"""Benchmarks of ``torchmoo.ops.nonneg_qp``: active set vs Frank-Wolfe vs a quadprog loop.

Problems (``baselines.make_nonneg_problems``): the dual of PNG, ``G = J J^T`` with ``J`` standard
normal ``(m, 20)``, ``c = J g - phi 1`` with a random ``g`` and ``phi`` uniform in ``[0, 20]`` (so
some multipliers are zero, some positive), float64, ``B = 1024`` problems for ``m`` in {2, 10}.
torchmoo solves the batch in one call (``method="active_set"``, the default, and
``method="frank_wolfe"``, away-step FW with the certified radius); quadprog solves the same 1024
problems in a Python loop (``C = I``, ``b = 0``, constraint matrices prebuilt). Times are per problem;
the KKT residual is ``torchmoo.reference.nonneg_kkt_residual`` of each output. Quick mode: B = 64.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch

pytest.importorskip("pytest_benchmark")

import torchmoo as tm  # noqa: E402
from torchmoo.reference import nonneg_kkt_residual, nonneg_qp_reference  # noqa: E402

from baselines import QUICK, QuadprogNonneg, make_nonneg_problems  # noqa: E402
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


@pytest.mark.parametrize("contender", ["torchmoo", "torchmoo[frank_wolfe]", "quadprog loop"])
@pytest.mark.parametrize("m", NONNEG_M)
def test_nonneg_qp_batched(benchmark, m, contender):
    G, c = problem(m)
    group = f"nonneg batched B={B} m={m}"
    if contender == "torchmoo":
        lam = run_timed(benchmark, group, lambda: tm.ops.nonneg_qp(G, c), fast=True)
    elif contender == "torchmoo[frank_wolfe]":
        lam = run_timed(benchmark, group, lambda: tm.ops.nonneg_qp(G, c, method="frank_wolfe"), fast=True)
    else:
        pytest.importorskip("quadprog")
        qp = QuadprogNonneg(G.numpy(), c.numpy())  # ridge, a, C, b built here, outside the timing
        lam = torch.from_numpy(run_timed(benchmark, group, qp.solve_all, rounds=5))
    kkt = nonneg_kkt_residual(G, c, lam)
    record(benchmark, group, contender, B, kkt, active_fraction=float((lam <= 0).double().mean()))
    if contender == "torchmoo":
        assert float(kkt.max()) <= 1e-10
