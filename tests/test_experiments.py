"""The experiment runner, its files and command line, and the mgda-multidigits experiment."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import torchmoo as tm
from torchmoo.cli import main as cli_main
from torchmoo.experiments import mgda_multidigits, storage
from torchmoo.experiments.runner import markdown_table


def tiny_config(**kw) -> mgda_multidigits.Config:
    base = dict(weights=[0.5], epochs=3, batch_size=64, train_images=512, test_images=128, lr=3e-3)
    base.update(kw)
    return mgda_multidigits.Config(**base)


# --------------------------------------------------------------------------------------------------
# storage
# --------------------------------------------------------------------------------------------------


def test_json_and_checkpoint_round_trip(tmp_path):
    storage.write_json(tmp_path / "a.json", {"x": torch.tensor([1.0, 2.0]), "p": tmp_path})
    assert storage.read_json(tmp_path / "a.json") == {"x": [1.0, 2.0], "p": str(tmp_path)}
    state = {"w": torch.arange(3.0), "epoch": 2, "history": [{"loss": [0.5, 0.25]}]}
    storage.save_checkpoint(tmp_path / "c.pt", state)
    back = storage.load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(back["w"], state["w"]) and back["epoch"] == 2 and back["history"] == state["history"]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temporaries left


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch notes the foreign pickle protocol
def test_foreign_or_corrupt_files_are_named(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="results.json"):
        storage.read_json(bad)
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"\x80\x04 definitely not a checkpoint")
    with pytest.raises(ValueError, match="ckpt.pt"):
        storage.load_checkpoint(ckpt)


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "r.json"
    storage.write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        storage.write_json(path, {"v": object()})  # not serializable: fails before the rename
    assert storage.read_json(path) == {"v": 1}
    assert len(list(tmp_path.iterdir())) == 1


def test_markdown_table():
    text = markdown_table([{"a": 1.234567, "b": "x"}, {"a": 2, "c": [0.5, 0.25]}])
    lines = text.splitlines()
    assert lines[0] == "| a | b | c |" and lines[2] == "| 1.235 | x |  |" and lines[3] == "| 2 |  | (0.5, 0.25) |"


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def test_list_shows_the_experiments(capsys):
    assert cli_main(["list"]) == 0
    assert "mgda-multidigits" in capsys.readouterr().out


def test_unknown_experiment_lists_the_known_ones(capsys, tmp_path):
    assert cli_main(["run", "no-such-experiment", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'no-such-experiment'" in err and "mgda-multidigits" in err


def test_report_of_a_missing_folder_is_an_error(capsys, tmp_path):
    assert cli_main(["report", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# mgda-multidigits
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "mgda"
    res = tm.experiments.run_experiment("mgda-multidigits", out=str(out), progress=False, config=tiny_config())
    return out, res


def test_mgda_multidigits_smallest_size(finished_run):
    out, res = finished_run
    assert res["complete"] and set(res["units"]) == {"linear w=0.5", "mgda"}
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["summary"] == res["summary"] and on_disk["versions"]["torch"] == torch.__version__
    assert (out / "front.png").stat().st_size > 1000
    assert not any((out / "checkpoints").iterdir())  # finished units drop their checkpoints
    for unit in res["units"].values():
        acc, loss = unit["test_accuracy"], unit["test_loss"]
        assert len(acc) == 2 and all(0.0 <= a <= 1.0 for a in acc)
        assert all(0.0 < v < 2 * math.log(10.0) for v in loss)
        assert len(unit["history"]) == 3 and unit["steps"] == 3 * 8  # 512 images / 64 per batch
        assert abs(sum(unit["weights_last_step"]) - 1.0) < 1e-6
    # 24 Adam steps already move both test losses clearly below chance level (ln 10 = 2.303).
    assert all(v < 2.1 for u in res["units"].values() for v in u["test_loss"]), res["units"]
    hv = res["summary"]["hypervolume (all models, ref = chance loss)"]
    assert hv >= res["summary"]["hypervolume (linear scalarization only)"] > 0.0


def test_rerun_of_a_finished_run_trains_nothing(finished_run):
    out, res = finished_run
    again = tm.experiments.run_experiment("mgda-multidigits", out=str(out), progress=False, config=tiny_config())
    assert again["units"] == res["units"] and again["resumed"] == 1


def test_other_config_in_the_same_folder_is_refused(finished_run):
    out, _ = finished_run
    with pytest.raises(ValueError, match="another run"):
        tm.experiments.run_experiment("mgda-multidigits", out=str(out), progress=False, config=tiny_config(epochs=4))


def test_report_prints_the_table(finished_run, capsys):
    out, _ = finished_run
    assert cli_main(["report", str(out.parent)]) == 0
    text = capsys.readouterr().out
    assert "## mgda-multidigits" in text and "| method |" in text and "linear w=0.5" in text


_CHILD = """
import sys, torchmoo as tm
from torchmoo.experiments import mgda_multidigits as e
cfg = e.Config(weights=[0.5], epochs=3, batch_size=64, train_images=512, test_images=128, lr=3e-3)
tm.experiments.run_experiment("mgda-multidigits", out=sys.argv[1], progress=False, config=cfg)
"""


def test_killed_run_resumes_to_the_same_results(finished_run, tmp_path):
    _, uninterrupted = finished_run
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(out)], env=env)
    # Kill it (SIGKILL: no cleanup) as soon as the first epoch's checkpoint exists.
    deadline = time.monotonic() + 120
    ckpt_dir = out / "checkpoints"
    while time.monotonic() < deadline and child.poll() is None:
        if ckpt_dir.exists() and any(p.suffix == ".pt" for p in ckpt_dir.iterdir()):
            break
        time.sleep(0.005)
    assert child.poll() is None, "the run ended before it could be interrupted"
    child.kill()
    child.wait()
    partial = json.loads((out / "results.json").read_text())
    assert not partial["complete"]
    resumed = tm.experiments.run_experiment("mgda-multidigits", out=str(out), progress=False, config=tiny_config())
    assert resumed["complete"] and resumed["resumed"] == 1
    for unit, result in uninterrupted["units"].items():
        assert resumed["units"][unit]["test_loss"] == result["test_loss"], unit
        assert resumed["units"][unit]["history"] == result["history"], unit
