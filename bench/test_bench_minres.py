"""Benchmark of ``torchmoo.ops.minres`` on the Hessian of a 235k-parameter MLP (Ma et al.'s tangent solves).

Problem: an MLP 784-256-128-10 (tanh, cross-entropy, float32; n = 235,146 parameters) on one
mini-batch of random 28 x 28 inputs with random labels. ``matvec = torchmoo.autograd.hvp_operator(loss,
params)``: the gradient graph is built once, outside the timing, and one product is one double-backward
pass (a ``(4, n)`` input is one batched pass). The right-hand sides are standard normal.

Groups (each measured by one test; the contenders' repeats are interleaved round-robin in this
process and every number is a median over the repeats; ``ratio`` = contender / reference, same run):

* ``minres 50 it, batch B``: the bar of the issue. Reference ``50 HVPs``: 50 ``matvec`` calls on a
  fixed ``(n,)`` vector, the floor of any 50-iteration Krylov solve. Contenders:
  ``torchmoo.ops.minres`` (``max_iter=50, tol=0``: all 50 iterations run), ``scipy minres``
  (``scipy.sparse.linalg.minres(A, b, maxiter=50)`` with ``A`` a ``LinearOperator`` whose matvec
  converts the numpy vector to a torch tensor, runs the same HVP and converts back, as the authors'
  code wraps its HVP; scipy's recurrence promotes its vectors to float64 after the first step, so
  its vector work is in float64 where the others' is in float32), and ``minres_reference`` (the same
  recurrence as unfused torch vector ops).
  Bar: ``torchmoo.ops.minres`` at most 1.05x the 50 HVPs.
* ``minres k=4, 50 it, batch B``: 4 right-hand sides (the tangent directions of one Pareto point).
  Reference ``torchmoo batched (4, n)``: one solve with 50 batched ``(4, n)`` products. Contenders:
  ``torchmoo 4 separate solves``, ``scipy 4 separate solves`` and, as the floor, ``50 batched HVPs (4, n)``.

Every solve is checked: all contenders run exactly ``ITERS`` iterations (``ITERS`` products), and each
solution ``x`` must agree with ``minres_reference``'s to ``X_RTOL`` (relative 2-norm; MINRES's iterate is
the same in exact arithmetic whatever the implementation), so a fast wrong answer fails the benchmark.
The relative residuals ``||b - H x|| / ||b||`` are reported next to the times.

Run ``python bench/test_bench_minres.py --wait-quiet 300`` for the markdown tables (``--batches 64``
for one size), or ``python -m pytest bench/test_bench_minres.py``: the same measurements, printed in
the ratio table at the end of the session. Quick mode (``TORCHMOO_BENCH_QUICK=1``): an MLP 784-32-16-10 on 8
samples, 10 iterations, 2 repeats, only to prove that the code runs.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
import torch

if __name__ != "__main__":
    pytest.importorskip("pytest_benchmark")
    pytest.importorskip("scipy")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torchmoo as tm  # noqa: E402
from torchmoo.reference import minres_reference  # noqa: E402

from baselines import QUICK, OtherLoadMeter, interleaved_medians, machine_description, other_cpu_load  # noqa: E402
from benchutil import REFERENCE_CONTENDER, RESULTS  # noqa: E402

HIDDEN = (32, 16) if QUICK else (256, 128)
BATCHES = (8,) if QUICK else (64, 256, 1024)
ITERS = 10 if QUICK else 50
REPEATS = 2 if QUICK else 7
K = 4
#: largest relative 2-norm difference to minres_reference's solution (float32 rounding gives about 1e-5)
X_RTOL = 1e-3
#: the reference contenders' names say how many products they time (10 in quick mode)
HVPS = f"{ITERS} HVPs"
BATCHED_HVPS = f"{ITERS} batched HVPs (4, n)"


@lru_cache(maxsize=None)
def problem(batch: int, device: str = "cpu"):
    """(matvec, n) of the MLP's cross-entropy Hessian on one mini-batch of ``batch`` samples."""
    torch.manual_seed(0)
    h1, h2 = HIDDEN
    net = torch.nn.Sequential(
        torch.nn.Linear(784, h1), torch.nn.Tanh(), torch.nn.Linear(h1, h2), torch.nn.Tanh(), torch.nn.Linear(h2, 10)
    ).to(device)
    x = torch.randn(batch, 784).to(device)
    y = torch.randint(0, 10, (batch,)).to(device)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    params = list(net.parameters())
    return tm.autograd.hvp_operator(loss, params), tm.autograd.num_params(params)


def scipy_minres(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, iters: int, device: str = "cpu"):
    """``b -> (x, calls)``: scipy's MINRES around ``matvec`` through a LinearOperator, numpy <-> torch per product
    (host <-> device copies on a GPU, as the authors' code did)."""
    from scipy.sparse.linalg import LinearOperator, minres

    calls = [0]

    def mv(x: np.ndarray) -> np.ndarray:
        calls[0] += 1
        return matvec(torch.as_tensor(x.astype(np.float32)).to(device)).detach().cpu().numpy()

    op = LinearOperator((n, n), matvec=mv, dtype=np.float32)

    def solve(b: np.ndarray):
        calls[0] = 0
        x, _ = minres(op, b, rtol=0.0, maxiter=iters)
        return x, calls[0]

    return solve


def relative_residual(matvec, b: torch.Tensor, x: torch.Tensor) -> float:
    """max over rows of ||b - H x|| / ||b|| (one extra product, outside the timings)."""
    r = b - matvec(x.to(b.dtype))
    return float((torch.linalg.vector_norm(r, dim=-1) / torch.linalg.vector_norm(b, dim=-1)).max())


def check_solution(name: str, x: torch.Tensor, x_ref: torch.Tensor) -> float:
    """Relative 2-norm distance of ``x`` to the reference solution ``x_ref`` (same shape), asserted below ``X_RTOL``."""
    x = torch.as_tensor(x).to(device=x_ref.device, dtype=torch.float64)
    assert x.shape == x_ref.shape, f"{name}: shape {tuple(x.shape)}, expected {tuple(x_ref.shape)}"
    dev = float((x - x_ref.double()).norm() / x_ref.double().norm())
    assert dev < X_RTOL, f"{name}: solution {dev:.1e} away from minres_reference's (relative)"
    return dev


def _sync(device: str):
    """What the timings call after each block: the host waits for the queue of ``device`` (not only of the
    current device: ``cuda:1``'s work must be waited for too); None on the CPU."""
    dev = torch.device(device)
    return functools.partial(torch.cuda.synchronize, dev) if dev.type == "cuda" else None


def _where(device: str) -> str:
    return "" if torch.device(device).type == "cpu" else f", {torch.cuda.get_device_name(torch.device(device))}"


def measure_overhead(batch: int, repeats: int = REPEATS, device: str = "cpu") -> Tuple[str, Dict[str, float], Dict[str, dict]]:
    """Group ``minres 50 it``: medians (seconds per solve) and per-contender checks."""
    matvec, n = problem(batch, device)
    g = torch.Generator().manual_seed(1)
    b = torch.randn(n, generator=g)
    v = torch.randn(n, generator=g).to(device)
    b_np = b.numpy()
    b = b.to(device)
    scipy_solve = scipy_minres(matvec, n, ITERS, device)

    def hvps():
        for _ in range(ITERS):
            matvec(v)

    fns = {
        HVPS: hvps,
        "torchmoo.ops.minres": lambda: tm.ops.minres(matvec, b, max_iter=ITERS, tol=0.0),
        "scipy minres": lambda: scipy_solve(b_np),
        "minres_reference": lambda: minres_reference(matvec, b, max_iter=ITERS, tol=0.0),
    }
    medians = interleaved_medians(fns, repeats=repeats, sync=_sync(device))
    x, info = fns["torchmoo.ops.minres"]()
    xs, calls = scipy_solve(b_np)
    xr, ir = fns["minres_reference"]()
    assert int(info.iterations) == ITERS and info.matvec_calls == ITERS, info
    assert calls == ITERS and int(ir.iterations) == ITERS and ir.matvec_calls == ITERS
    xs = torch.from_numpy(np.asarray(xs)).to(device)
    checks = {
        "torchmoo.ops.minres": {"rel_residual": relative_residual(matvec, b, x),
                                "dev_from_reference": check_solution("torchmoo.ops.minres", x, xr)},
        "scipy minres": {"rel_residual": relative_residual(matvec, b, xs),
                         "dev_from_reference": check_solution("scipy minres", xs, xr)},
        "minres_reference": {"rel_residual": relative_residual(matvec, b, xr)},
    }
    return f"minres {ITERS} it, MLP n={n}, batch {batch}{_where(device)}", medians, checks


def measure_k4(batch: int, repeats: int = REPEATS, device: str = "cpu") -> Tuple[str, Dict[str, float], Dict[str, dict]]:
    """Group ``minres k=4``: one batched solve against 4 separate ones."""
    matvec, n = problem(batch, device)
    g = torch.Generator().manual_seed(2)
    B = torch.randn(K, n, generator=g)
    V = torch.randn(K, n, generator=g).to(device)
    B_np = B.numpy()
    B = B.to(device)
    scipy_solve = scipy_minres(matvec, n, ITERS, device)

    def hvps():
        for _ in range(ITERS):
            matvec(V)

    fns = {
        "torchmoo batched (4, n)": lambda: tm.ops.minres(matvec, B, max_iter=ITERS, tol=0.0),
        "torchmoo 4 separate solves": lambda: [tm.ops.minres(matvec, B[i], max_iter=ITERS, tol=0.0) for i in range(K)],
        "scipy 4 separate solves": lambda: [scipy_solve(B_np[i]) for i in range(K)],
        BATCHED_HVPS: hvps,
    }
    medians = interleaved_medians(fns, repeats=repeats, sync=_sync(device))
    x, info = fns["torchmoo batched (4, n)"]()
    assert info.iterations.tolist() == [ITERS] * K and info.matvec_calls == ITERS
    separate = fns["torchmoo 4 separate solves"]()
    assert all(int(i.iterations) == ITERS and i.matvec_calls == ITERS for _, i in separate)
    xsep = torch.stack([s[0] for s in separate])
    scipy_separate = fns["scipy 4 separate solves"]()
    assert all(calls == ITERS for _, calls in scipy_separate)
    xsci = torch.stack([torch.from_numpy(np.asarray(s[0])) for s in scipy_separate]).to(device)
    xr, ir = minres_reference(matvec, B, max_iter=ITERS, tol=0.0)  # the 4 right-hand sides one after the other
    assert ir.iterations.tolist() == [ITERS] * K
    checks = {
        "torchmoo batched (4, n)": {"rel_residual": relative_residual(matvec, B, x),
                                    "dev_from_reference": check_solution("torchmoo batched (4, n)", x, xr)},
        "torchmoo 4 separate solves": {"rel_residual": relative_residual(matvec, B, xsep),
                                       "dev_from_reference": check_solution("torchmoo 4 separate solves", xsep, xr)},
        "scipy 4 separate solves": {"rel_residual": relative_residual(matvec, B, xsci),
                                    "dev_from_reference": check_solution("scipy 4 separate solves", xsci, xr)},
    }
    return f"minres k={K}, {ITERS} it, MLP n={n}, batch {batch}{_where(device)}", medians, checks


def publish(group: str, medians: Dict[str, float], checks: Dict[str, dict], reference: str) -> None:
    """Put a group into the table that ``conftest.py`` prints at the end of the session."""
    REFERENCE_CONTENDER[group] = reference
    rows = RESULTS.setdefault(group, {})
    for name, seconds in medians.items():
        row = {"per_problem_s": seconds, "count": 1, **checks.get(name, {})}
        if name != reference:
            row["ratio"] = seconds / medians[reference]
        rows[name] = row


# --------------------------------------------------------------------------------------------------
# pytest
# --------------------------------------------------------------------------------------------------


def test_sync_waits_for_the_given_device(monkeypatch):
    """Not a benchmark: the timings of ``--device cuda:1`` wait for cuda:1, not for the current device."""
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    assert _sync("cpu") is None
    _sync("cuda:1")()
    assert calls == [torch.device("cuda:1")]


@pytest.mark.parametrize("batch", BATCHES)
def test_minres_overhead(benchmark, batch):
    group, medians, checks = measure_overhead(batch)
    publish(group, medians, checks, reference=HVPS)
    benchmark.group = group
    benchmark.extra_info.update({f"{k} median_s": v for k, v in medians.items()})
    benchmark.extra_info[f"ratio torchmoo / {HVPS}"] = medians["torchmoo.ops.minres"] / medians[HVPS]
    benchmark.extra_info[f"ratio scipy / {HVPS}"] = medians["scipy minres"] / medians[HVPS]
    matvec, n = problem(batch)
    b = torch.randn(n, generator=torch.Generator().manual_seed(1))
    benchmark.pedantic(lambda: tm.ops.minres(matvec, b, max_iter=ITERS, tol=0.0), rounds=1, iterations=1)
    for name, c in checks.items():
        assert c["rel_residual"] < 1.0, (name, c)


@pytest.mark.parametrize("batch", BATCHES[:1])
def test_minres_k4(benchmark, batch):
    group, medians, checks = measure_k4(batch)
    publish(group, medians, checks, reference="torchmoo batched (4, n)")
    benchmark.group = group
    benchmark.extra_info.update({f"{k} median_s": v for k, v in medians.items()})
    matvec, n = problem(batch)
    B = torch.randn(K, n, generator=torch.Generator().manual_seed(2))
    benchmark.pedantic(lambda: tm.ops.minres(matvec, B, max_iter=ITERS, tol=0.0), rounds=1, iterations=1)
    for name, c in checks.items():
        assert c["rel_residual"] < 1.0, (name, c)


# --------------------------------------------------------------------------------------------------
# Script: markdown tables
# --------------------------------------------------------------------------------------------------


def _markdown(group: str, medians: Dict[str, float], checks: Dict[str, dict], reference: str) -> List[str]:
    lines = [f"**{group}** (ratio = time / time of `{reference}`)", "",
             "| contender | median per solve | ratio | relative residual after the solve |", "|---|---:|---:|---:|"]
    for name, seconds in medians.items():
        ratio = "1 (reference)" if name == reference else f"{seconds / medians[reference]:.3f}"
        res = checks.get(name, {}).get("rel_residual")
        lines.append(f"| {name} | {seconds * 1e3:.1f} ms | {ratio} | {'' if res is None else f'{res:.2e}'} |")
    return lines + [""]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="mini-batch sizes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the MLP, the HVPs and the solves run")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to SECONDS for 3 consecutive seconds with < 5%% CPU used by others")
    args = parser.parse_args(argv)
    if args.wait_quiet > 0:
        deadline, quiet = time.monotonic() + args.wait_quiet, 0
        while quiet < 3 and time.monotonic() < deadline:
            load = other_cpu_load(1.0)
            quiet = quiet + 1 if load is not None and load < 0.05 else 0
    meter = OtherLoadMeter()
    t0 = time.perf_counter()
    out = [f"- {k}: {v}" for k, v in machine_description().items()] + [""]
    for batch in args.batches:
        out += _markdown(*measure_overhead(batch, args.repeats, args.device), reference=HVPS)
    out += _markdown(*measure_k4(args.batches[0], args.repeats, args.device), reference="torchmoo batched (4, n)")
    load = meter.fraction()
    out.append(f"wall time {time.perf_counter() - t0:.0f} s; other processes used "
               f"{'unknown' if load is None else f'{100 * load:.0f}%'} of the CPU during the run.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
