"""Helpers of the pytest-benchmark files in ``bench/`` (timing in quick/full mode, per-group ratios).

Kept out of ``conftest.py`` so that the test modules can import them by a name that no other
directory's conftest shadows. ``conftest.py`` prints :data:`RESULTS` at the end of the session.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

from baselines import QUICK

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
    if REFERENCE_CONTENDER.setdefault(group, reference) != reference:
        raise ValueError(f"group {group!r}: reference {reference!r}, but {REFERENCE_CONTENDER[group]!r} before")
    ref = RESULTS.get(group, {}).get(REFERENCE_CONTENDER[group])
    if contender != REFERENCE_CONTENDER[group] and ref and "per_problem_s" in ref and "per_problem_s" in row:
        ratio = row["per_problem_s"] / ref["per_problem_s"]
        row["ratio"] = ratio
        info[f"{REFERENCE_CONTENDER[group]}_speedup"] = ratio
    RESULTS.setdefault(group, {})[contender] = row
