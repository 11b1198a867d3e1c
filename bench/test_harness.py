"""Tests of the benchmark harness itself (not benchmarks): ``gpu_check.sh``, the timing helpers of
``baselines.py``, the ratio table of ``benchutil.py`` / ``conftest.py`` and ``report.py``'s timing.

``gpu_check.sh`` is run with a stand-in for Python that records its arguments, so its control flow
(output folder, time limits, paths handed to the steps) is checked on any machine, without a GPU.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import baselines
import benchutil

BENCH = Path(__file__).resolve().parent
SCRIPT = BENCH / "gpu_check.sh"
#: the machines that run gpu_check.sh stop a command after ten minutes
TEN_MINUTES = 600

needs_shell = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                 reason="needs bash and coreutils' timeout")


def test_gpu_check_step_limits_fit_in_ten_minutes():
    """The steps' own time limits add up to less than ten minutes, with room for the untimed commands."""
    text = SCRIPT.read_text()
    limits = {name: int(limit) for name, limit in re.findall(r"\bstep (\w+) (\d+) ", text)}
    assert {"build", "cuda_tests", "png_bench", "minres_bench", "cuda_pytest_bench"} <= set(limits), limits
    assert sum(limits.values()) <= TEN_MINUTES - 15, limits
    budget = re.search(r"GPU_CHECK_BUDGET_S:-(\d+)", text)
    assert budget is not None and int(budget.group(1)) <= TEN_MINUTES - 10


def _fake_python(tmp_path: Path) -> Path:
    """A stand-in for ``python3`` that logs its arguments and succeeds (``pytest_timeout`` is missing)."""
    fake = tmp_path / "fake_python"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "$FAKE_PYTHON_LOG"\n'
                    'case "$*" in *"import pytest_timeout"*) exit 1 ;; esac\nexit 0\n')
    fake.chmod(0o755)
    return fake


def _run_gpu_check(tmp_path: Path, budget: str):
    fake = _fake_python(tmp_path)
    log = tmp_path / "calls.log"
    cwd = tmp_path / "elsewhere"  # started outside the repository, with a relative output folder
    cwd.mkdir()
    env = dict(os.environ, PYTHON=str(fake), FAKE_PYTHON_LOG=str(log), SKIP_BUILD="1", GPU_CHECK_BUDGET_S=budget)
    env.pop("OUT", None)
    env.pop("WHEELS", None)
    proc = subprocess.run(["bash", str(SCRIPT), "results"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)
    return proc, cwd / "results", log.read_text() if log.exists() else ""


@needs_shell
def test_gpu_check_relative_outdir_and_paths(tmp_path):
    """Every step's log lands in the relative output folder (the steps run from a temporary folder), and
    the benchmark scripts are handed by their paths in this repository."""
    proc, out, calls = _run_gpu_check(tmp_path, "585")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (out / "summary.txt").read_text()
    for name in ("import", "cuda_tests", "png_bench", "minres_bench", "cuda_pytest_bench"):
        assert re.search(rf"^{name}: rc=0,", summary, re.M), summary
        assert (out / f"{name}.log").exists(), name
    assert (out / "tables.md").exists()
    assert f"{BENCH / 'test_bench_png.py'} --device cuda --second-order 3" in calls, calls
    assert f"{BENCH / 'test_bench_minres.py'} --device cuda" in calls, calls
    assert f"-m pytest -m cuda {BENCH}" in calls, calls
    assert f"-m pytest -m cuda {BENCH.parent / 'tests'}" in calls, calls


@needs_shell
def test_gpu_check_stops_at_its_deadline(tmp_path):
    """With no time left, no step starts and the script fails (rather than running past its deadline)."""
    proc, out, calls = _run_gpu_check(tmp_path, "0")
    assert proc.returncode != 0
    summary = (out / "summary.txt").read_text()
    assert "import: not run" in summary, summary
    assert "-m pytest" not in calls, calls


def test_report_calibration_waits_for_the_device():
    """``report.calibrated_number`` counts finished calls, not asynchronous launches: with ``sync`` each call
    costs its device time (here 1 ms), so about 20 calls fill the 20 ms block, not thousands of launches."""
    report = pytest.importorskip("report")
    pending = []

    def launch():  # returns at once, like a CUDA kernel launch
        pending.append(1)

    def sync():  # waits for the queued work: 1 ms per call
        time.sleep(1e-3 * len(pending))
        pending.clear()

    n = report.calibrated_number(launch, target_s=0.02, sync=sync)
    assert 4 <= n <= 40, n


# --------------------------------------------------------------------------------------------------
# Timing helpers, ratio table, load meter: scripted clocks and fake benchmark fixtures
# --------------------------------------------------------------------------------------------------

class FakeClock:
    """``perf_counter`` that moves only when a scripted call says so; ``log`` keeps the order of events."""

    def __init__(self):
        self.now, self.log = 0.0, []

    def perf_counter(self):
        return self.now

    def scripted(self, name, durations):
        """A function that logs ``name`` and advances the clock by the next of ``durations`` per call."""
        it = iter(durations)

        def fn():
            self.log.append(name)
            self.now += next(it)
            return name

        return fn


def _fake_time(monkeypatch, module, clock):
    monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=clock.perf_counter, sleep=time.sleep))


def test_interleaved_medians_round_robin_true_medians_sync_and_rewarm(monkeypatch):
    """Order a, b, c per repeat; each block: rewarm call (untimed), sync, ``number`` timed calls, sync (timed);
    the result is the true median (even repeats: mean of the two middle ones) of block time / number."""
    clock = FakeClock()
    _fake_time(monkeypatch, baselines, clock)
    big = 100.0  # warm-up and rewarm calls: charged to the result if they were timed
    fns = {
        "a": clock.scripted("a", [big, 5.0, 1.0, 3.0, 2.0]),
        "b": clock.scripted("b", [big, big, 4.0, big, 4.0, big, 6.0, big, 9.0]),
        "c": clock.scripted("c", [big, 1.0, 3.0, 2.0, 2.0, 7.0, 7.0, 4.0, 6.0]),
    }
    sync = clock.scripted("sync", [0.5] * 100)
    med = baselines.interleaved_medians(fns, repeats=4, numbers={"c": 2}, warmup=1, sync=sync, rewarm=("b",))
    # (block + 0.5 s of the closing sync) / number, median over the 4 repeats
    assert med["a"] == pytest.approx(np.median([5.5, 1.5, 3.5, 2.5]))  # 3.0, neither mean nor a sample
    assert med["b"] == pytest.approx(np.median([4.5, 4.5, 6.5, 9.5]))  # 5.5
    assert med["c"] == pytest.approx(np.median([4.5 / 2, 4.5 / 2, 14.5 / 2, 10.5 / 2]))  # 3.75
    repeat = ["sync", "a", "sync", "b", "sync", "b", "sync", "sync", "c", "c", "sync"]
    assert clock.log == ["a", "b", "c"] + repeat * 4


def test_interleaved_medians_rewarm_hides_the_wake_up_of_a_contender(monkeypatch):
    """A contender whose first call after another one is slow (a thread pool waking up) is timed in its
    steady state when it is rewarmed; the warm-up count applies to every contender."""
    clock = FakeClock()
    _fake_time(monkeypatch, baselines, clock)
    last = {"who": None}

    def contender(name, steady, wake):
        def fn():
            clock.log.append(name)
            clock.now += steady if last["who"] == name else wake
            last["who"] = name

        return fn

    fns = {"pool": contender("pool", 1.0, 11.0), "loop": contender("loop", 2.0, 2.0)}
    med = baselines.interleaved_medians(fns, repeats=3, numbers={"pool": 10}, warmup=2, rewarm=("pool",))
    assert med == {"pool": pytest.approx(1.0), "loop": pytest.approx(2.0)}
    assert clock.log[:4] == ["pool", "pool", "loop", "loop"]
    last["who"] = None
    med = baselines.interleaved_medians(fns, repeats=3, numbers={"pool": 10}, warmup=0)
    assert med["pool"] == pytest.approx((11.0 + 9 * 1.0) / 10)


def test_median_time_is_the_median_of_block_means(monkeypatch):
    clock = FakeClock()
    _fake_time(monkeypatch, baselines, clock)
    fn = clock.scripted("f", [1.0, 3.0, 8.0, 8.0, 2.0, 2.0])
    sync = clock.scripted("sync", [1.0] * 10)
    assert baselines.median_time(fn, repeats=3, number=2, sync=sync) == pytest.approx(np.median([2.5, 8.5, 2.5]))
    assert clock.log == ["sync", "f", "f", "sync"] * 3


@pytest.fixture
def clean_results():
    """The session-wide ratio table, emptied for the test and restored after it."""
    saved = ({k: dict(v) for k, v in benchutil.RESULTS.items()}, dict(benchutil.REFERENCE_CONTENDER))
    benchutil.RESULTS.clear()
    benchutil.REFERENCE_CONTENDER.clear()
    yield benchutil.RESULTS
    benchutil.RESULTS.clear()
    benchutil.RESULTS.update(saved[0])
    benchutil.REFERENCE_CONTENDER.clear()
    benchutil.REFERENCE_CONTENDER.update(saved[1])


def _fake_benchmark(median_s):
    stats = None if median_s is None else types.SimpleNamespace(stats=types.SimpleNamespace(median=median_s))
    return types.SimpleNamespace(extra_info={}, stats=stats, group=None)


def _summary_lines():
    spec = importlib.util.spec_from_file_location("bench_conftest_under_test", BENCH / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # shares benchutil's RESULTS (benchutil is imported once)
    lines = []
    reporter = types.SimpleNamespace(section=lambda title: lines.append(f"== {title}"), write_line=lines.append)
    module.pytest_terminal_summary(reporter, 0, None)
    return lines


def test_record_ratio_is_per_problem_contender_over_reference(clean_results):
    """ratio = (contender median / its problems per call) / (reference median / its problems per call), from
    the same group, whichever was recorded first; the printed table shows the same numbers."""
    g = "harness group"
    slow = _fake_benchmark(10e-3)  # 2 problems per call: 5 ms per problem
    benchutil.record(slow, g, "slow", 2, torch.tensor([4.0, 1.0, 2.0]), reference="ref")
    assert "ratio" not in clean_results[g]["slow"]  # no reference measured yet
    ref = _fake_benchmark(8e-3)  # 4 problems per call: 2 ms per problem
    benchutil.record(ref, g, "ref", 4, reference="ref")
    fast = _fake_benchmark(1e-3)  # 1 problem per call: 1 ms per problem
    benchutil.record(fast, g, "fast", 1, reference="ref", threads=3)
    rows = clean_results[g]
    assert rows["ref"]["per_problem_s"] == pytest.approx(2e-3) and "ratio" not in rows["ref"]
    assert rows["fast"]["ratio"] == pytest.approx(0.5) and fast.extra_info["ref_speedup"] == pytest.approx(0.5)
    assert fast.extra_info["per_problem_us"] == pytest.approx(1e3) and rows["fast"]["threads"] == 3
    assert slow.extra_info["per_problem_us"] == pytest.approx(5e3)
    assert slow.extra_info["problems_per_call"] == 2 and rows["slow"]["count"] == 2
    assert rows["slow"]["kkt_median"] == 2.0 and rows["slow"]["kkt_max"] == 4.0
    with pytest.raises(ValueError, match="reference"):
        benchutil.record(_fake_benchmark(1.0), g, "other", 1, reference="fast")
    benchutil.record(_fake_benchmark(None), "disabled", "torchmoo", 1)  # --benchmark-disable: no time
    assert "per_problem_s" not in clean_results["disabled"]["torchmoo"]

    lines = _summary_lines()
    line = {ln.split()[0]: ln for ln in lines if ln.startswith("    ")}
    assert "(reference)" in line["ref"] and "2 ms/problem" in line["ref"]
    assert "2.5x ref" in line["slow"] and "5 ms/problem" in line["slow"]  # recorded before the reference
    assert "kkt median 2.0e+00 max 4.0e+00" in line["slow"]
    assert "0.5x ref" in line["fast"] and "kkt" not in line["fast"]


def test_run_timed_syncs_inside_each_timed_call(monkeypatch):
    calls = []

    class Bench:
        group, extra_info = None, {}

        def pedantic(self, target, rounds, iterations, warmup_rounds):
            calls.append(("pedantic", rounds, iterations, warmup_rounds))
            for _ in range(warmup_rounds + rounds * iterations):
                target()

        def __call__(self, target):
            calls.append(("calibrated",))
            target()

    def fn():
        calls.append("fn")
        return "out"

    def sync():
        calls.append("sync")

    monkeypatch.setattr(benchutil, "QUICK", False)
    b = Bench()
    assert benchutil.run_timed(b, "g", fn, rounds=3, sync=sync) == "out" and b.group == "g"
    assert calls == [("pedantic", 3, 1, 1)] + ["fn", "sync"] * 5
    calls.clear()
    benchutil.run_timed(b, "g", fn, fast=True)
    assert calls == [("calibrated",), "fn", "fn"]
    calls.clear()
    monkeypatch.setattr(benchutil, "QUICK", True)
    benchutil.run_timed(b, "g", fn, fast=True, rounds=9)
    assert calls[0] == ("pedantic", 2, 1, 1)


@pytest.mark.parametrize("value, quick", [("", False), ("0", False), ("1", True), ("yes", True)])
def test_quick_mode_from_the_environment(value, quick):
    env = dict(os.environ, TORCHMOO_BENCH_QUICK=value)
    out = subprocess.run([sys.executable, "-c", "import baselines; print(baselines.QUICK)"], cwd=BENCH, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == str(quick), out.stderr


def test_cpu_times_do_not_count_guest_time_twice(monkeypatch):
    """``/proc/stat``'s guest and guest_nice columns are already part of user and nice."""
    line = "cpu  100 10 50 800 40 0 0 0 30 5\ncpu0 1 2 3 4\n"
    monkeypatch.setattr(baselines, "open", lambda path: io.StringIO(line), raising=False)
    total, idle = baselines._cpu_times()
    assert (total, idle) == (1000.0, 840.0)


def test_other_load_meter_subtracts_this_process(monkeypatch):
    """Other load = (machine busy core-seconds - this process's CPU seconds) / elapsed core-seconds."""
    resource = pytest.importorskip("resource")
    hz = os.sysconf("SC_CLK_TCK")
    now = {}  # (machine total ticks, idle ticks, this process's CPU seconds)
    monkeypatch.setattr(baselines, "_cpu_times", lambda: now["s"][:2])
    monkeypatch.setattr(resource, "getrusage",
                        lambda who: types.SimpleNamespace(ru_utime=0.75 * now["s"][2], ru_stime=0.25 * now["s"][2]))
    now["s"] = (0.0, 0.0, 1.0)
    meter = baselines.OtherLoadMeter()
    now["s"] = (8.0 * hz, 4.0 * hz, 3.0)  # 8 core-s elapsed, 4 busy, 2 of them ours
    assert meter.fraction() == pytest.approx(0.25)
    now["s"] = (8.0 * hz, 0.0, 1.0)  # everything busy, none of it ours
    assert meter.fraction() == pytest.approx(1.0)
    now["s"] = (0.0, 0.0, 1.0)  # no time elapsed
    assert meter.fraction() is None


def test_machine_description_reports_this_process(monkeypatch):
    from importlib.metadata import version

    if hasattr(os, "sched_getaffinity"):  # this process may use fewer cores than the machine has
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    with baselines.num_threads(1):
        info = baselines.machine_description()
    assert info["torch threads"] == "1" and info["torch"] == torch.__version__
    assert info["numpy"] == np.__version__ and info["torchmoo"] == version("torchmoo")
    assert info["cores (usable)"] == ("1" if hasattr(os, "sched_getaffinity") else str(os.cpu_count()))
    assert ("gpu" in info) == torch.cuda.is_available()


def test_report_section_ratios_and_markdown(monkeypatch):
    """``report.Section``: per-problem medians over interleaved repeats, ratio to the baseline's, and the
    markdown row shows exactly those numbers; a call under 20 ms is timed in a block of about 20 ms after
    an untimed call; a wrong output stops the section before timing."""
    report = pytest.importorskip("report")
    clock = FakeClock()
    _fake_time(monkeypatch, baselines, clock)
    _fake_time(monkeypatch, report, clock)
    last = {"who": None}

    def pool():  # 2^-10 s per call, 2^-6 s for the first call after another contender (threads waking up)
        clock.log.append("fast")
        clock.now += 2.0 ** -10 if last["who"] == "fast" else 2.0 ** -6
        last["who"] = "fast"

    def scripted(name, durations):
        fn = clock.scripted(name, durations)
        return lambda: (last.update(who=name), fn())[1]

    sec = report.Section("t", baseline="tm")
    # two untimed calls each (warm-up, output check), then 3 interleaved repeats (all >= 20 ms but "fast")
    sec.add("tm", scripted("tm", [0.05, 0.05, 0.05, 0.1, 0.05]), 4, lambda out: torch.tensor([3e-12, 1e-12, 2e-12]))
    sec.add("other", scripted("other", [0.5, 0.5, 0.25, 0.75, 0.125]), 2, lambda out: torch.tensor([2e-9]))
    sec.add("fast", pool, 1, lambda out: torch.tensor([0.0]))
    sec.run(repeats=3)
    # 6 calls of 2^-10 s pass 5 ms (a quarter of the 20 ms block): blocks of 24 calls
    assert sec.number == {"fast": 24}
    tm_row, other, fast = sec.row("tm"), sec.row("other"), sec.row("fast")
    assert tm_row["per_problem_s"] == pytest.approx(0.0125) and tm_row["ratio"] == pytest.approx(1.0)
    assert other["per_problem_s"] == pytest.approx(0.125) and other["ratio"] == pytest.approx(10.0)
    assert fast["per_problem_s"] == pytest.approx(2.0 ** -10) and fast["ratio"] == pytest.approx(2.0 ** -10 / 0.0125)
    assert clock.log[:4] == ["tm", "tm", "other", "other"]
    assert [x for x in clock.log if x != "fast"][4:] == ["tm", "other"] * 3
    md = sec.markdown()
    assert "| tm | 4 | 12.5 ms | 1 (baseline) | 2.0e-12 | 3.0e-12 |" in md
    assert "| other | 2 | 125 ms | 10 | 2.0e-09 | 2.0e-09 |" in md
    assert "| fast | 1 | 977 us | 0.0781 | 0.0e+00 | 0.0e+00 |" in md

    def wrong(out):
        raise AssertionError("KKT residual 1e-3")

    bad = report.Section("bad")
    bad.add("torchmoo", clock.scripted("x", [0.05] * 10), 1, wrong)
    with pytest.raises(AssertionError, match="bad: torchmoo: KKT residual"):
        bad.run(repeats=3)
    assert clock.log.count("x") == 2  # stopped before timing


def test_report_timing_decisions_wait_for_the_device(monkeypatch):
    """With asynchronous calls (the work is done at ``sync``), the 20 ms test and the calibration of a block
    see one call's device time each, not also the time of an untimed call still queued before them."""
    report = pytest.importorskip("report")
    clock = FakeClock()
    _fake_time(monkeypatch, baselines, clock)
    _fake_time(monkeypatch, report, clock)
    pending = []

    def device(seconds):
        def launch():  # returns at once; the device works at the next sync
            pending.append(seconds)

        return launch

    def sync():
        clock.now += sum(pending)
        pending.clear()

    # 2^-10 s per call: 6 calls pass a quarter of 20 ms (5 ms), so blocks of 24 calls
    assert report.calibrated_number(device(2.0 ** -10), sync=sync) == 24
    sec = report.Section("t")
    sec.add("torchmoo", device(0.015), 1, lambda out: torch.tensor([0.0]))  # a 15 ms call: timed in blocks
    sec.run(repeats=3, sync=sync)
    assert sec.number == {"torchmoo": 4}
    assert sec.row("torchmoo")["per_problem_s"] == pytest.approx(0.015)
