"""Benchmarks of ``torchmoo.ops.gram`` and of the MGDA direction against the memory floor (issue 3).

For a Jacobian ``J`` of ``m`` tasks by ``n = 1e6`` parameters (float32, torch's default thread count),
every contender is timed as a ratio to one full read of ``J`` (``J.sum()``) measured in the same
process. The MGDA direction (Gram matrix, min-norm QP, combination ``w @ J``) reads ``J`` at least
twice, so its floor is about 2; the bar of issue 3 is 3 for ``m = 10``.

Contenders (one group per ``m``):

* ``J.sum()``: one read of ``J``, the unit of every ratio;
* ``J @ J.T`` and ``tm.ops.gram``: the Gram matrix alone;
* ``w @ J``: the combination step alone (torch's matrix-vector product), with MGDA's weights;
* ``tm.ops.combine``: the same step by ``tm.ops.combine(J, w)`` (one pass over ``J``);
* ``MGDA via J @ J.T`` and ``MGDA via tm.ops.gram``: ``w = tm.ops.min_norm_simplex(G)``, ``w @ J``;
* ``tm.methods.MGDA()``: torchmoo's aggregator, ``tm.ops.gram``, ``tm.ops.min_norm_simplex`` and
  ``tm.ops.combine`` (with its input checks): the MGDA direction of issue 3's bar;
* ``torchjd MGDA()``: ``torchjd.aggregation.MGDA()(J)`` (its Gramian, Frank-Wolfe weights with the
  defaults ``epsilon=1e-3, max_iters=100``, ``w @ J``).

Two measurements of the same contenders:

* ``test_gram_floor`` (pytest-benchmark, one test per contender and ``m``, 7 rounds each, medians);
  the session summary prints each median as a ratio to ``J.sum()`` of its group.
* ``test_gram_floor_interleaved``: all contenders of one ``m`` timed round-robin (a, b, c, a, b, c, ...;
  ``baselines.interleaved_medians``), which spreads the drift of a shared machine over all of them;
  medians over the repeats, printed in the same summary (groups ``... interleaved``). This is the
  table that goes to ``bench/RESULTS.md``; ``python bench/test_bench_gram.py`` prints it as markdown.

Every output is checked (``check_output``; a wrong one fails the benchmark): the sum and the Gram
matrices against float64, ``w @ J`` and ``tm.ops.combine`` against ``w @ J`` in float64, and the MGDA
directions through the simplex weights behind them (``G w = J d``, ``G`` the float64 Gram matrix; ``d``
must be ``J^T w``, in the span of ``J``'s rows: ``baselines.direction_weights``): a KKT residual below
``MGDA_KKT[name]`` for torchmoo's (recorded next to the times), for torchjd's Frank-Wolfe weights a
feasible point within ``baselines.GAP_TOL["torchjd"]`` of the exact objective.
Quick mode (``TORCHMOO_BENCH_QUICK=1``): ``n = 1e5``, ``m`` in {2, 10}, 2 rounds.
"""

from __future__ import annotations

import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, Optional

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torchmoo as tm  # noqa: E402
from torchmoo.reference import gram_reference  # noqa: E402

from baselines import GAP_TOL, QUICK, check_qp_solution, direction_weights, interleaved_medians  # noqa: E402
from benchutil import RESULTS, REFERENCE_CONTENDER, record, run_timed  # noqa: E402

try:
    import torchjd.aggregation as tjd
except ImportError:  # optional baseline
    tjd = None

M_VALUES = (2, 10) if QUICK else (2, 4, 10, 16, 40)
N = 100_000 if QUICK else 1_000_000
READ = "J.sum()"
CONTENDERS = (READ, "J @ J.T", "tm.ops.gram", "w @ J", "tm.ops.combine", "MGDA via J @ J.T", "MGDA via tm.ops.gram",
              "tm.methods.MGDA()", "torchjd MGDA()")
#: MGDA contenders return the direction d = w @ J; the others a scalar, the Gram matrix or w @ J.
MGDA_CONTENDERS = ("MGDA via J @ J.T", "MGDA via tm.ops.gram", "tm.methods.MGDA()", "torchjd MGDA()")
#: KKT bound of torchmoo's MGDA directions; through ``J @ J.T`` as loose as that Gram matrix's accuracy
MGDA_KKT = {"MGDA via J @ J.T": 1e-3, "MGDA via tm.ops.gram": 1e-5, "tm.methods.MGDA()": 1e-5}


@lru_cache(maxsize=1)
def jacobian(m: int) -> torch.Tensor:
    """Standard normal ``(m, N)`` float32 Jacobian (cached: one at a time, they are large)."""
    gen = torch.Generator().manual_seed(m)
    return torch.randn(m, N, generator=gen, dtype=torch.float32)


def contender_fn(name: str, J: torch.Tensor) -> Optional[Callable[[], torch.Tensor]]:
    """The timed call of contender ``name`` on ``J``; None when its package is missing."""
    if name == READ:
        return lambda: J.sum()
    if name == "J @ J.T":
        return lambda: J @ J.T
    if name == "tm.ops.gram":
        return lambda: tm.ops.gram(J)
    if name in ("w @ J", "tm.ops.combine"):  # the combination step alone, with the MGDA weights of J
        w = tm.ops.min_norm_simplex(tm.ops.gram(J))
        return (lambda: w @ J) if name == "w @ J" else (lambda: tm.ops.combine(J, w))
    if name == "MGDA via J @ J.T":
        return lambda: tm.ops.min_norm_simplex(J @ J.T) @ J
    if name == "MGDA via tm.ops.gram":
        return lambda: tm.ops.min_norm_simplex(tm.ops.gram(J)) @ J
    if name == "tm.methods.MGDA()":
        agg = tm.methods.MGDA()
        return lambda: agg(J)
    if name == "torchjd MGDA()":
        if tjd is None:
            return None
        mgda = tjd.MGDA()
        return lambda: mgda(J)
    raise ValueError(name)


def check_output(name: str, J: torch.Tensor, out: torch.Tensor) -> Optional[torch.Tensor]:
    """Asserts that contender ``name`` returned the right thing for ``J``; the KKT residual of the MGDA
    contenders' weights (recovered from ``d = J^T w`` by solving ``G w = J d``, ``G`` in float64)."""
    J, out = J.cpu(), out.cpu()
    if name in ("J @ J.T", "tm.ops.gram"):
        R = gram_reference(J)
        d = R.diagonal().sqrt()
        err = float(((out.double() - R).abs() / (d[:, None] * d[None, :])).max())
        assert err < (1e-6 if name == "tm.ops.gram" else 1e-3), f"{name}: relative error {err:.1e}"
        return None
    assert out.shape == (J.shape[1],) or (name == READ and out.dim() == 0), f"{name}: shape {tuple(out.shape)}"
    if name in MGDA_CONTENDERS:
        G = gram_reference(J)
        w = direction_weights(name, J, out, rtol=1e-5)  # float32 d = J^T w, up to its rounding
        if name in MGDA_KKT:
            return check_qp_solution(name, G, None, w, simplex=True, kkt_tol=MGDA_KKT[name])
        return check_qp_solution(name, G, None, w, tm.ops.min_norm_simplex(G), simplex=True,
                                 gap_tol=GAP_TOL["torchjd"], feas_tol=1e-5)
    if name == READ:  # the error of a float32 sum of m n terms, relative to the sum of their sizes
        err = float((out.double() - J.double().sum()).abs() / J.double().abs().sum())
    else:  # w @ J and tm.ops.combine, with contender_fn's weights
        ref = tm.ops.min_norm_simplex(tm.ops.gram(J)).double() @ J.double()
        err = float((out.double() - ref).abs().max() / ref.abs().max())
    assert err < 1e-5, f"{name}: relative error {err:.1e}"
    return None


def test_check_output_rejects_a_direction_off_the_rows():
    """Not a benchmark: an MGDA direction with a component orthogonal to J's rows fails ``check_output``
    (the weights recovered by least squares would not see that component)."""
    gen = torch.Generator().manual_seed(3)
    J = torch.randn(3, 200, generator=gen)
    d = tm.ops.min_norm_simplex(tm.ops.gram(J)) @ J
    check_output("tm.methods.MGDA()", J, d)
    u = torch.randn(200, generator=gen, dtype=torch.float64)
    J64 = J.double()
    u -= torch.linalg.solve(J64 @ J64.T, J64 @ u) @ J64  # J u = 0
    bad = (d.double() + 0.1 * d.norm() * u / u.norm()).float()
    for name in ("tm.methods.MGDA()", "torchjd MGDA()"):
        with pytest.raises(AssertionError, match="off the span"):
            check_output(name, J, bad)


# --------------------------------------------------------------------------------------------------
# pytest-benchmark: one test per contender
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("m", M_VALUES)
def test_gram_floor(benchmark, m, contender):
    J = jacobian(m)
    fn = contender_fn(contender, J)
    if fn is None:
        pytest.skip(f"{contender}: package not installed")
    group = f"gram / MGDA vs one read of J, m={m} n={N:.0e} float32"
    out = run_timed(benchmark, group, fn, rounds=7)
    kkt = check_output(contender, J, out)
    record(benchmark, group, contender, 1, kkt, reference=READ, threads=torch.get_num_threads())


# --------------------------------------------------------------------------------------------------
# All contenders interleaved (the RESULTS.md table)
# --------------------------------------------------------------------------------------------------


def interleaved_table(m: int, repeats: int, block_s: float = 0.02) -> Dict[str, dict]:
    """Median time of every contender for ``m`` (round-robin repeats) and its ratio to ``J.sum()``.

    Calls shorter than ``block_s`` are timed in blocks of back-to-back calls of about ``block_s``,
    each block after one untimed call (see ``interleaved_medians``).
    """
    J = jacobian(m)
    fns = {name: fn for name in CONTENDERS if (fn := contender_fn(name, J)) is not None}
    numbers, kkt = {}, {}
    for name, fn in fns.items():
        out = fn()
        kkt[name] = check_output(name, J, out)
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        numbers[name] = max(1, int(block_s / max(dt, 1e-7)))
    med = interleaved_medians(fns, repeats, numbers, warmup=1, rewarm=tuple(fns))
    rows = {}
    for name in fns:
        row = {"per_problem_s": med[name], "count": 1, "ratio": med[name] / med[READ]}
        if kkt[name] is not None:
            row["kkt_median"], row["kkt_max"] = float(kkt[name].median()), float(kkt[name].max())
        rows[name] = row
    return rows


@pytest.mark.parametrize("m", M_VALUES)
def test_gram_floor_interleaved(m):
    rows = interleaved_table(m, repeats=3 if QUICK else 15)
    group = f"gram / MGDA vs one read of J, m={m} n={N:.0e} float32, interleaved"
    REFERENCE_CONTENDER[group] = READ
    RESULTS[group] = {name: {k: v for k, v in row.items() if not (name == READ and k == "ratio")}
                      for name, row in rows.items()}


# --------------------------------------------------------------------------------------------------
# CUDA: the kernel against cuBLAS and the read of J, on the GPU
# --------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("contender", ["J.sum()", "J @ J.T", "tm.ops.gram", "MGDA via tm.ops.gram"])
def test_gram_floor_cuda(benchmark, contender):
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    if not tm.cuda_built:
        pytest.skip("torchmoo was built without CUDA")
    J = jacobian(10).cuda()
    fn = contender_fn(contender, J)
    group = f"gram / MGDA vs one read of J, m=10 n={N:.0e} float32, CUDA"
    out = run_timed(benchmark, group, fn, sync=torch.cuda.synchronize)
    record(benchmark, group, contender, 1, check_output(contender, J, out), reference=READ)


# --------------------------------------------------------------------------------------------------
# Markdown table: python bench/test_bench_gram.py
# --------------------------------------------------------------------------------------------------


def main() -> None:
    import argparse

    from baselines import OtherLoadMeter, machine_description

    parser = argparse.ArgumentParser(description="MGDA direction and Gram matrix vs one read of J (markdown)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--repeats", type=int, default=3 if QUICK else 15, help="interleaved repeats")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    meter = OtherLoadMeter()
    t0 = time.perf_counter()
    print(f"n = {N:.0e}, float32, torch threads = {torch.get_num_threads()}; "
          "medians over interleaved repeats; ratio = time / time of J.sum() in the same run\n")
    header = "| contender | " + " | ".join(f"m = {m}" for m in M_VALUES) + " |"
    tables = {m: interleaved_table(m, repeats=args.repeats) for m in M_VALUES}
    print(header)
    print("|---|" + "---:|" * len(M_VALUES))
    for name in CONTENDERS:
        if name not in tables[M_VALUES[0]]:
            continue
        cells = []
        for m in M_VALUES:
            row = tables[m][name]
            t = row["per_problem_s"] * 1e3
            cells.append(f"{t:.3g} ms" if name == READ else f"{row['ratio']:.2f}x ({t:.3g} ms)")
        print(f"| {name} | " + " | ".join(cells) + " |")
    kkt = {m: {n: r["kkt_max"] for n, r in tables[m].items() if "kkt_max" in r} for m in M_VALUES}
    print("\nKKT residual of the MGDA weights (float64 Gram matrix):")
    for name in MGDA_CONTENDERS:
        if name in kkt[M_VALUES[0]]:
            print(f"  {name}: " + ", ".join(f"m={m}: {kkt[m][name]:.1e}" for m in M_VALUES))
    other = meter.fraction()
    print(f"\nmachine: {machine_description()}")
    print(f"other processes used {other:.0%} of the CPU during the run" if other is not None else "")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
