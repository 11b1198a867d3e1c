"""Tests of the benchmark harness itself (not benchmarks): ``gpu_check.sh`` and ``report.py``'s timing.

``gpu_check.sh`` is run with a stand-in for Python that records its arguments, so its control flow
(output folder, time limits, paths handed to the steps) is checked on any machine, without a GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

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
