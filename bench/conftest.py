"""pytest-benchmark plumbing for ``bench/``: quick mode, timing helper, per-group ratio table.

``python -m pytest bench`` runs every comparison at full size; with ``TORCHMOO_BENCH_QUICK=1`` (CI)
the sizes shrink and each benchmark runs a couple of rounds, so the whole directory takes seconds
and only proves that the benchmarks still run. Numbers for the README come from ``bench/report.py``.

Every benchmark belongs to a group (one problem size); within a group all contenders run in the
same process, one after the other, the group's reference contender first (torchmoo for the solver
groups). Each test records its median *per problem* time and the KKT residuals of its output in
``benchmark.extra_info``; a contender timed after the reference also records ``<reference>_speedup`` =
(its per-problem median) / (the reference's, same group, same run). At the end of the session a table
of these ratios is printed (``pytest_terminal_summary``); it takes every ratio there, from the stored
medians, so it does not depend on the order in which the tests ran. Groups whose name ends in
``interleaved`` are measured by one test that times all their contenders round-robin
(``baselines.interleaved_medians``): a change of load moves all contenders alike, so on a shared machine
their ratios are the ones to trust; the others time one contender after the other.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import QUICK  # noqa: E402
from benchutil import REFERENCE_CONTENDER, RESULTS  # noqa: E402


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
    tr.write_line("groups named '... interleaved': contenders timed round-robin; the others: one after the other")
    for group, rows in RESULTS.items():
        ref = REFERENCE_CONTENDER.get(group, "torchmoo")
        ref_s = rows.get(ref, {}).get("per_problem_s")
        tr.write_line(f"{group}")
        for name, row in rows.items():
            t = _fmt_time(row["per_problem_s"]) if "per_problem_s" in row else "-"
            if name == ref:
                ratio = "(reference)"
            elif ref_s and "per_problem_s" in row:
                ratio = f"{row['per_problem_s'] / ref_s:.3g}x {ref}"
            else:
                ratio = f"no ratio: {ref} not measured"
            kkt = (f"kkt median {row['kkt_median']:.1e} max {row['kkt_max']:.1e}"
                   if "kkt_median" in row and not math.isnan(row["kkt_median"]) else "")
            tr.write_line(f"    {name:<34} {t:>10}/problem  {ratio:<24} {kkt}")
