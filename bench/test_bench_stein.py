"""Benchmarks of MT-SGD's Stein operators, ``tm.ops.stein_task_matrix`` and ``tm.ops.stein_update`` (issue 7).

Problems: ``K`` targets, ``M`` particles of dimension ``d``, float32, 2 torch threads, the median-heuristic
bandwidth: ``(K, M, d) = (40, 5, 1e5)`` (many targets) and ``(7, 50, 1e4)`` (many particles). Contenders of
each operator (one group per problem, ratios = contender time / torchmoo time):

* ``tm.ops``: the operator;
* ``torch, former path``: torchmoo's pure-torch formulation before the operator (``bench/baselines.py``:
  ``stein_task_matrix_torch`` / ``stein_update_torch``): batched matmul with the kernel matrix, one GEMM;
* ``torch, obvious``: the formula written the obvious way (``stein_task_matrix_obvious`` /
  ``stein_update_obvious``): ``cdist``, the kernel gradients materialized as ``(M, M, d)`` tensors, one
  ``einsum`` per term. Issue 7's bar: the operator at least 5x faster than this.

Every contender's output is checked against the operator's float64 result. Three measurements:

* ``test_stein`` (pytest-benchmark, one test per contender and problem, 7 rounds, medians);
* ``test_stein_interleaved``: all contenders of a problem timed round-robin (``baselines.interleaved_medians``),
  medians over the repeats; asserts the 5x bar (not in quick mode). This is the table for RESULTS.md;
* ``test_stein_peak_memory``: the peak extra resident memory of one call of each contender, each in a fresh
  process (``baselines.peak_rss_bytes``: counts torch's allocations, the kernels' own buffers and
  everything else). Issue 7's bar: the operator needs at most the inputs plus ``O(K^2 M^2)``; asserted as
  at most 2% of ``S`` (plus the output of ``stein_update``) and 2 MiB.

``python bench/test_bench_stein.py`` prints the tables as markdown. Quick mode (``TORCHMOO_BENCH_QUICK=1``):
``d`` divided by 10, 2 rounds / 3 repeats, no speed bar asserted, peak memory of ``tm.ops`` on the first
problem only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torchmoo as tm  # noqa: E402
from torchmoo.methods.mtsgd import median_bandwidth  # noqa: E402

from baselines import (  # noqa: E402
    QUICK,
    interleaved_medians,
    peak_rss_bytes,
    stein_task_matrix_obvious,
    stein_task_matrix_torch,
    stein_update_obvious,
    stein_update_torch,
)
from benchutil import REFERENCE_CONTENDER, RESULTS, record, run_timed  # noqa: E402

PROBLEMS = ((40, 5, 10_000), (7, 50, 1_000)) if QUICK else ((40, 5, 100_000), (7, 50, 10_000))
THREADS = 2
OPS = ("stein_task_matrix", "stein_update")
CONTENDERS = ("tm.ops", "torch, former path", "torch, obvious")
#: issue 7: tm.ops at least this many times faster than the obvious torch version (stein_task_matrix)
SPEEDUP_BAR = 5.0
#: issue 7: extra memory of tm.ops at most this fraction of S's bytes (plus the output and MEMORY_SLACK)
MEMORY_FRACTION = 0.02
MEMORY_SLACK = 2 << 20


@lru_cache(maxsize=2)
def problem(K: int, M: int, d: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """``X (M, d)``, ``S (K, M, d)``, ``w (K,)`` (on the simplex), float32, and the median-heuristic ``h``."""
    gen = torch.Generator().manual_seed(K * 1000 + M)
    X = torch.randn(M, d, generator=gen)
    S = torch.randn(K, M, d, generator=gen)
    w = torch.rand(K, generator=gen)
    return X, S, w / w.sum(), median_bandwidth(X)


def contender_fn(op: str, name: str, K: int, M: int, d: int) -> Callable[[], torch.Tensor]:
    X, S, w, h = problem(K, M, d)
    if op == "stein_task_matrix":
        fns = {"tm.ops": lambda: tm.ops.stein_task_matrix(X, S, h),
               "torch, former path": lambda: stein_task_matrix_torch(X, S, h),
               "torch, obvious": lambda: stein_task_matrix_obvious(X, S, h)}
    else:
        fns = {"tm.ops": lambda: tm.ops.stein_update(X, S, w, h),
               "torch, former path": lambda: stein_update_torch(X, S, w, h),
               "torch, obvious": lambda: stein_update_obvious(X, S, w, h)}
    return fns[name]


@lru_cache(maxsize=4)
def exact(op: str, K: int, M: int, d: int) -> torch.Tensor:
    X, S, w, h = problem(K, M, d)
    if op == "stein_task_matrix":
        return tm.ops.stein_task_matrix(X.double(), S.double(), h)
    return tm.ops.stein_update(X.double(), S.double(), w.double(), h)


def check_output(op: str, K: int, M: int, d: int, out: torch.Tensor) -> float:
    """Relative deviation of a contender's float32 output from the operator's float64 result (asserted small)."""
    ref = exact(op, K, M, d)
    assert out.shape == ref.shape
    err = float((out.double() - ref).abs().max() / ref.abs().max())
    assert err < 1e-4, f"{op}: relative deviation {err:.1e} from the float64 result"
    return err


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def group_name(op: str, K: int, M: int, d: int, suffix: str = "") -> str:
    return f"{op}, K={K} M={M} d={d:.0e} float32, {THREADS} threads{suffix}"


# --------------------------------------------------------------------------------------------------
# pytest-benchmark: one test per contender
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("K, M, d", PROBLEMS)
def test_stein(benchmark, two_threads, K, M, d, op, contender):
    group = group_name(op, K, M, d)
    out = run_timed(benchmark, group, contender_fn(op, contender, K, M, d), rounds=7)
    err = check_output(op, K, M, d, out)
    record(benchmark, group, contender, 1, reference="tm.ops", threads=THREADS, rel_dev=err)


# --------------------------------------------------------------------------------------------------
# Interleaved medians (the RESULTS.md table) and the speed bar
# --------------------------------------------------------------------------------------------------


def interleaved_table(K: int, M: int, d: int, repeats: int, block_s: float = 0.02) -> Dict[str, Dict[str, dict]]:
    """op -> contender -> {"per_problem_s", "ratio", "rel_dev"}: medians over round-robin repeats of all six
    contenders (calls under ``block_s`` timed in blocks of back-to-back calls)."""
    fns, numbers, dev = {}, {}, {}
    for op in OPS:
        for name in CONTENDERS:
            key = f"{op}: {name}"
            fns[key] = fn = contender_fn(op, name, K, M, d)
            dev[key] = check_output(op, K, M, d, fn())
            t0 = time.perf_counter()
            fn()
            numbers[key] = max(1, int(block_s / max(time.perf_counter() - t0, 1e-7)))
    med = interleaved_medians(fns, repeats, numbers, warmup=1, rewarm=tuple(fns))
    return {op: {name: {"per_problem_s": med[f"{op}: {name}"], "count": 1,
                        "ratio": med[f"{op}: {name}"] / med[f"{op}: tm.ops"], "rel_dev": dev[f"{op}: {name}"]}
                 for name in CONTENDERS} for op in OPS}


@pytest.mark.parametrize("K, M, d", PROBLEMS)
def test_stein_interleaved(two_threads, K, M, d):
    tables = interleaved_table(K, M, d, repeats=3 if QUICK else 11)
    for op, rows in tables.items():
        group = group_name(op, K, M, d, ", interleaved")
        REFERENCE_CONTENDER[group] = "tm.ops"
        RESULTS[group] = {name: {k: v for k, v in row.items() if not (name == "tm.ops" and k == "ratio")}
                          for name, row in rows.items()}
    if not QUICK:
        ratio = tables["stein_task_matrix"]["torch, obvious"]["ratio"]
        assert ratio >= SPEEDUP_BAR, f"tm.ops.stein_task_matrix only {ratio:.2f}x faster than the obvious torch version"


# --------------------------------------------------------------------------------------------------
# Peak memory, each call in a fresh process
# --------------------------------------------------------------------------------------------------


def peak_memory(op: str, name: str, K: int, M: int, d: int) -> int:
    """Peak extra resident bytes of one call (``python bench/test_bench_stein.py --peak ...`` in a new process)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peak", op, name, str(K), str(M), str(d)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"])


def _peak_in_this_process(op: str, name: str, K: int, M: int, d: int) -> int:
    torch.set_num_threads(THREADS)
    small = contender_fn(op, name, 2, 2, 64)  # warm up thread pools and lazy initialization first
    small()
    fn = contender_fn(op, name, K, M, d)  # the inputs are allocated (and resident) before the measurement
    return peak_rss_bytes(fn)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc/self/clear_refs")
@pytest.mark.parametrize("K, M, d", PROBLEMS[:1] if QUICK else PROBLEMS)
def test_stein_peak_memory(K, M, d):
    s_bytes = K * M * d * 4
    for op in OPS:
        # quick mode: one process per operator for the operator's bar only (each process imports torch: ~3 s)
        for name in CONTENDERS[:1] if QUICK else CONTENDERS:
            peak = peak_memory(op, name, K, M, d)
            if name == "tm.ops":
                output = 0 if op == "stein_task_matrix" else M * d * 4
                assert peak <= output + MEMORY_FRACTION * s_bytes + MEMORY_SLACK, (
                    f"{op}: {peak / 2**20:.1f} MiB extra memory (S is {s_bytes / 2**20:.1f} MiB)")
            if name == "torch, obvious" and not QUICK:
                # the measurement sees the (M, M, d) float32 kernel gradients of the obvious version
                assert peak >= M * M * d * 4, f"{op}: {peak / 2**20:.1f} MiB < one (M, M, d) tensor"


# --------------------------------------------------------------------------------------------------
# Markdown tables: python bench/test_bench_stein.py
# --------------------------------------------------------------------------------------------------


def main() -> None:
    import argparse

    from baselines import OtherLoadMeter, machine_description, other_cpu_load

    parser = argparse.ArgumentParser(description="MT-SGD's Stein operators against plain torch (markdown)")
    parser.add_argument("--repeats", type=int, default=3 if QUICK else 11, help="interleaved repeats")
    parser.add_argument("--problem", type=int, action="append", default=None, metavar="INDEX",
                        help=f"only these problems of {PROBLEMS} (0-based; repeatable)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to SECONDS for 3 consecutive seconds with < 5%% CPU used by other processes")
    parser.add_argument("--peak", nargs=5, metavar=("OP", "CONTENDER", "K", "M", "D"), default=None,
                        help=argparse.SUPPRESS)  # internal: one peak-memory measurement, as JSON
    args = parser.parse_args()
    if args.peak is not None:
        op, name, K, M, d = args.peak
        print(json.dumps({"peak_bytes": _peak_in_this_process(op, name, int(K), int(M), int(d))}))
        return
    if args.wait_quiet > 0:
        deadline, quiet = time.monotonic() + args.wait_quiet, 0
        while quiet < 3 and time.monotonic() < deadline:
            load = other_cpu_load(1.0)
            quiet = quiet + 1 if load is not None and load < 0.05 else 0
    torch.set_num_threads(THREADS)
    meter = OtherLoadMeter()
    t0 = time.perf_counter()
    print(f"float32, torch threads = {THREADS}, median-heuristic bandwidth; medians over {args.repeats} interleaved "
          "repeats; ratio = time / time of tm.ops in the same run; peak extra memory of one call in a fresh "
          "process (resident set high-water mark minus the resident set before the call)\n")
    problems = [PROBLEMS[i] for i in (args.problem or range(len(PROBLEMS)))]
    tables = {pr: interleaved_table(*pr, args.repeats) for pr in problems}
    other = meter.fraction()  # before the peak-memory runs, whose processes would count as other load
    print("| problem | operator | contender | time | x tm.ops | peak extra memory |")
    print("|---|---|---|---:|---:|---:|")
    for K, M, d in problems:
        s_mib = K * M * d * 4 / 2**20
        for op in OPS:
            for name in CONTENDERS:
                row = tables[(K, M, d)][op][name]
                peak = peak_memory(op, name, K, M, d) / 2**20
                ratio = "1" if name == "tm.ops" else f"{row['ratio']:.3g}"
                print(f"| K={K}, M={M}, d={d:.0e} (S: {s_mib:.0f} MiB) | {op} | {name} | "
                      f"{row['per_problem_s'] * 1e3:.3g} ms | {ratio} | {peak:.1f} MiB |")
    print(f"\nmachine: {machine_description()}")
    print(f"other processes used {other:.0%} of the CPU during the timing" if other is not None else "")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
