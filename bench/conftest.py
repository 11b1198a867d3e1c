"""pytest-benchmark plumbing for ``bench/``: quick mode, timing helper, per-group ratio table.

``python -m pytest bench`` runs every comparison at full size; with ``TORCHMOO_BENCH_QUICK=1`` (CI)
the sizes shrink and each benchmark runs a couple of rounds, so the whole directory takes seconds
and only proves that the benchmarks still run. Numbers for the README come from ``bench/report.py``.

Every benchmark belongs to a group (one problem size); within a group all contenders run in the
same process, one after the other, torchmoo first. Each test records its median *per problem*
time and the KKT residuals of its output in ``benchmark.extra_info``; a baseline also records
``torchmoo_speedup`` = (its per-problem median) / (torchmoo's, same group, same run). At the end of
the session a table of these ratios is printed (``pytest_terminal_summary``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Callable, Dict, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import QUICK  # noqa: E402

#: group -> contender -> {"per_problem_s", "kkt_median", "kkt_max", "count"}
RESULTS: Dict[str, Dict[str, dict]] = {}
#: the contender every ratio is taken against, per group
REFERENCE_CONTENDER: Dict[str, str] = {}


def run_timed(benchmark, group: str, fn: Callable[[], object], *, fast: bool = False, rounds: int = 7,
              sync: Optional[Callable[[], None]] = None):
    """Time ``fn`` with pytest-benchmark in ``group``; returns one result of ``fn`` (computed outside the timing).

    ``fast=True`` (microsecond calls): pytest-benchmark's calibrated mode (many iterations per
    round). Otherwise ``pedantic`` with ``rounds`` rounds of one call after one warm-up call. Quick
    mode: 2 rounds of one call. ``sync`` (e.g. ``torch.cuda.synchronize``) is called at the end of
    each timed call, so asynchronous work is included.
    """
    benchmark.group = group  # before the run: pytest-benchmark reads it when it stores the stats
    target = fn if sync is None else (lambda: (fn(), sync())[0])
    if QUICK:
        benchmark.pedantic(target, rounds=2, iterations=1, warmup_rounds=1)
    elif fast:
        benchmark(target)
    else:
        benchmark.pedantic(target, rounds=rounds, iterations=1, warmup_rounds=1)
    return target()


def _median_seconds(benchmark) -> Optional[float]:
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable
        return None
    return float(stats.stats.median)


def record(benchmark, group: str, contender: str, problems: int, kkt=None, *, reference: str = "torchmoo",
           **extra) -> None:
    """Store the per-problem median and KKT residuals of one contender in ``extra_info`` and the table.

    ``problems``: how many problems one timed call solves (the per-problem time is median / problems).
    ``kkt``: a tensor of KKT residuals of the call's output (median and max are recorded).
    ``reference``: the contender of the same group that ratios are taken against.
    """
    info = benchmark.extra_info
    info["problems_per_call"] = problems
    row = {"count": problems}
    med = _median_seconds(benchmark)
    if med is not None:
        row["per_problem_s"] = med / problems
        info["per_problem_us"] = med / problems * 1e6
    if kkt is not None:
        k = kkt.double().flatten()
        row["kkt_median"] = float(k.median())
        row["kkt_max"] = float(k.max())
        info["kkt_median"] = row["kkt_median"]
        info["kkt_max"] = row["kkt_max"]
    for key, value in extra.items():
        info[key] = value
        row[key] = value
    REFERENCE_CONTENDER.setdefault(group, reference)
    ref = RESULTS.get(group, {}).get(REFERENCE_CONTENDER[group])
    if contender != REFERENCE_CONTENDER[group] and ref and "per_problem_s" in ref and "per_problem_s" in row:
        ratio = row["per_problem_s"] / ref["per_problem_s"]
        row["ratio"] = ratio
        info[f"{REFERENCE_CONTENDER[group]}_speedup"] = ratio
    RESULTS.setdefault(group, {})[contender] = row


def _fmt_time(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.3g} us"
    return f"{seconds * 1e9:.3g} ns"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("torchmoo benchmark ratios (per-problem medians, this run)" + (" [QUICK]" if QUICK else ""))
    for group, rows in RESULTS.items():
        ref = REFERENCE_CONTENDER.get(group, "torchmoo")
        tr.write_line(f"{group}")
        for name, row in rows.items():
            t = _fmt_time(row["per_problem_s"]) if "per_problem_s" in row else "-"
            ratio = f"{row['ratio']:.3g}x {ref}" if "ratio" in row else ("(reference)" if name == ref else "")
            kkt = (f"kkt median {row['kkt_median']:.1e} max {row['kkt_max']:.1e}"
                   if "kkt_median" in row and not math.isnan(row["kkt_median"]) else "")
            tr.write_line(f"    {name:<34} {t:>10}/problem  {ratio:<24} {kkt}")
