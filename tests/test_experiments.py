"""The experiment runner, its files and command line, and the mgda-multidigits experiment."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

import pytest
import torch

import torchmoo as tm
from torchmoo.cli import main as cli_main
from torchmoo.experiments import mgda_multidigits, runner, storage
from torchmoo.experiments.runner import Experiment, RunContext, configure, markdown_table, register
from torchmoo.zoo.data import DataNotFoundError


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


def test_run_stopped_after_the_last_epoch_resumes_to_the_same_result(finished_run, tmp_path, monkeypatch):
    # Stopped between the last epoch's checkpoint and the record: the rerun takes no training step, yet
    # must report what the uninterrupted unit did, MGDA's weights of the last step included.
    _, uninterrupted = finished_run
    out = tmp_path / "stopped"
    original = RunContext.record

    def stop_before_recording_mgda(self, unit, result, seconds, evaluations=0):
        if unit == "mgda":
            raise KeyboardInterrupt
        original(self, unit, result, seconds, evaluations)

    monkeypatch.setattr(RunContext, "record", stop_before_recording_mgda)
    with pytest.raises(KeyboardInterrupt):
        tm.experiments.run_experiment("mgda-multidigits", out=str(out), progress=False, config=tiny_config())
    monkeypatch.setattr(RunContext, "record", original)
    assert storage.load_checkpoint(out / "checkpoints" / "mgda.pt")["epoch"] == 3
    resumed = tm.experiments.run_experiment("mgda-multidigits", out=str(out), progress=False, config=tiny_config())
    assert resumed["units"]["mgda"] == uninterrupted["units"]["mgda"]
    assert resumed["summary"]["table"][-1]["loss task 1"] == uninterrupted["summary"]["table"][-1]["loss task 1"]



def test_linear_scalarization_weights_the_heads_too(tmp_path, monkeypatch):
    # w = 1 trains 1 * l_1 + 0 * l_2: its gradient in the head of task 2 is zero (Adam leaves it as
    # initialized), while the head of task 1 trains
    states = {}
    original = RunContext.save_state

    def keep_first_epoch(self, unit, state):
        original(self, unit, state)
        states[unit] = state
        raise KeyboardInterrupt  # one epoch is enough

    monkeypatch.setattr(RunContext, "save_state", keep_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        tm.experiments.run_experiment("mgda-multidigits", out=str(tmp_path / "w1"), progress=False,
                                      config=tiny_config(weights=[1.0], epochs=1, train_images=128, test_images=32))
    torch.manual_seed(0)
    init = tm.zoo.models.MultiLeNet(num_tasks=2, image_size=28).state_dict()
    trained = states["linear w=1"]["model"]
    assert all(torch.equal(trained[k], init[k]) for k in ("heads.1.weight", "heads.1.bias"))
    assert not any(torch.equal(trained[k], init[k]) for k in ("heads.0.weight", "heads.0.bias", "trunk.0.weight"))


def test_weights_that_share_a_unit_name_are_refused(monkeypatch):
    from torchmoo.experiments import pareto_multidigits

    monkeypatch.setattr(mgda_multidigits, "_data", lambda *a: pytest.fail("trained with colliding unit names"))
    with pytest.raises(ValueError, match="first 6 significant digits"):
        mgda_multidigits.run(tiny_config(weights=[0.3, 0.3000001]), None)
    for bad, message in [(dict(seed_weights=[0.5, 0.5]), "first 6 significant digits"),
                         (dict(ws_lrs=[0.01, 0.010000001]), "must not repeat a pair")]:
        with pytest.raises(ValueError, match=message):
            pareto_multidigits.run(pareto_multidigits.Config(**bad), None)


def _hv2d(points, ref) -> float:
    """Area dominated by ``points`` (minimization) below ``ref``, by a sweep over f1 (brute force)."""
    pts = sorted((float(a), float(b)) for a, b in points if a < ref[0] and b < ref[1])
    area, best = 0.0, ref[1]
    for i, (a, b) in enumerate(pts):
        best = min(best, b)
        area += ((pts[i + 1][0] if i + 1 < len(pts) else ref[0]) - a) * (ref[1] - best)
    return area


@pytest.mark.parametrize("mgda_loss, mgda_nondominated", [((1.0, 1.0), True), ((1.2, 1.6), False),
                                                          ((0.9, 1.4), True), ((0.9, 1.7), False)])
def test_mgda_multidigits_summary_from_scripted_units(tmp_path, monkeypatch, mgda_loss, mgda_nondominated):
    """The aggregators are the configured ones (``w`` on task 1, MGDA with the configured normalization);
    the table, the two hypervolumes (reference ln 10 per task; the second without MGDA's model) and the
    dominance flag are those of the units' test results (a copy of a linear model's losses is not dominated;
    a tie in one loss and a worse other loss is)."""
    losses = {"linear w=0.2": (2.0, 0.5), "linear w=0.5": (1.0, 1.0), "linear w=0.9": (0.9, 1.5), "mgda": mgda_loss}
    seen = {}

    def scripted_unit(unit, aggregator, cfg, ctx, data, unit_index):
        seen[unit] = aggregator
        loss = list(losses[unit])
        result = {"method": unit, "test_loss": loss, "test_accuracy": [0.5 - loss[0] / 10, 0.5 - loss[1] / 10],
                  "history": [{"epoch": 1, "test_loss": loss, "test_accuracy": [0.0, 0.0]}]}
        ctx.record(unit, result, seconds=unit_index + 0.5)
        return result

    monkeypatch.setattr(mgda_multidigits, "_train_unit", scripted_unit)
    monkeypatch.setattr(mgda_multidigits, "_data", lambda *a: None)
    cfg = tiny_config(weights=[0.2, 0.5, 0.9], mgda_normalization="l2")
    res = tm.experiments.run_experiment("mgda-multidigits", out=str(tmp_path / "s"), progress=False, config=cfg)
    assert list(seen) == list(losses)
    for w in (0.2, 0.5, 0.9):
        agg = seen[f"linear w={w:g}"]
        assert isinstance(agg, tm.methods.LinearScalarization)
        assert agg.static_weights(2, dtype=torch.float64, device="cpu").tolist() == pytest.approx([w, 1 - w])
    assert isinstance(seen["mgda"], tm.methods.MGDA) and seen["mgda"].normalization == "l2"
    summary, ref = res["summary"], (math.log(10.0), math.log(10.0))
    assert [row["method"] for row in summary["table"]] == list(losses)
    for i, row in enumerate(summary["table"]):
        loss = losses[row["method"]]
        assert (row["loss task 1"], row["loss task 2"]) == loss and row["seconds"] == i + 0.5
        assert row["acc task 1"] == pytest.approx(0.5 - loss[0] / 10)
        assert row["acc task 2"] == pytest.approx(0.5 - loss[1] / 10)
    linear = [v for u, v in losses.items() if u != "mgda"]
    assert summary["hypervolume (linear scalarization only)"] == pytest.approx(_hv2d(linear, ref))
    assert summary["hypervolume (all models, ref = chance loss)"] == pytest.approx(
        _hv2d(list(losses.values()), ref))
    assert summary["mgda non-dominated by the linear models"] is mgda_nondominated


def test_mgda_multidigits_units_share_initialization_batches_and_splits(tmp_path, monkeypatch):
    """Every unit starts from the model seeded with the run's seed and sees the same mini-batches, each
    epoch a new order of the whole train split; test metrics come from the test split."""
    cfg = tiny_config(weights=[0.3], epochs=2, train_images=96, test_images=32)
    train = tm.zoo.data.MultiDigits("train", seed=3, num_images=96).tensors()
    test = tm.zoo.data.MultiDigits("test", seed=3, num_images=32).tensors()
    data = mgda_multidigits._data(cfg, 3, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(data[0] + data[1], train + test))

    batches, first_state, current = {}, {}, {}
    original_train, original_losses = mgda_multidigits._train_unit, mgda_multidigits._losses

    def train_unit(unit, *args):
        current["unit"] = unit
        return original_train(unit, *args)

    def losses(model, x, y):
        unit = current["unit"]
        first_state.setdefault(unit, {k: v.clone() for k, v in model.state_dict().items()})
        batches.setdefault(unit, []).append(x.clone())
        return original_losses(model, x, y)

    monkeypatch.setattr(mgda_multidigits, "_train_unit", train_unit)
    monkeypatch.setattr(mgda_multidigits, "_losses", losses)
    res = tm.experiments.run_experiment("mgda-multidigits", out=str(tmp_path / "r"), progress=False, config=cfg,
                                        seed=3)
    assert set(batches) == {"linear w=0.3", "mgda"}
    torch.manual_seed(3)
    init = tm.zoo.models.MultiLeNet(num_tasks=2, image_size=28).state_dict()
    for unit, state in first_state.items():
        assert all(torch.equal(state[k], init[k]) for k in init), unit
    a, b = batches["linear w=0.3"], batches["mgda"]
    assert len(a) == len(b) == 2 * 2 and all(torch.equal(p, q) for p, q in zip(a, b))  # 96 images: 64 + 32
    for epoch in range(2):
        probe = torch.randn(28 * 28, dtype=torch.float64)  # one number per image, to compare as multisets
        seen = torch.cat(a[2 * epoch : 2 * epoch + 2]).flatten(1).double() @ probe
        assert torch.equal(seen.sort().values, (train[0].flatten(1).double() @ probe).sort().values)  # each once
    assert not torch.equal(a[0], a[2])  # a new order each epoch
    on_disk = json.loads((tmp_path / "r" / "results.json").read_text())
    for unit, result in res["units"].items():
        assert result["steps"] == 4 and on_disk["evaluations"][unit] == 8  # two task gradients per step
        assert len(result["history"]) == 2 and result["history"][-1]["test_loss"] == result["test_loss"]


def test_pareto_seeds_train_at_the_configured_weight(tmp_path, monkeypatch):
    # the weight of a seed is the configured one, not the one its unit name shows (6 digits)
    seen = []

    def capture(weights):
        seen.append([float(w) for w in weights])
        raise KeyboardInterrupt

    monkeypatch.setattr(tm.methods, "LinearScalarization", capture)
    cfg = tm.experiments.pareto_multidigits.Config(train_images=64, test_images=16, seed_weights=[1 / 3])
    with pytest.raises(KeyboardInterrupt):
        tm.experiments.run_experiment("pareto-multidigits", out=str(tmp_path / "p"), progress=False, config=cfg)
    assert seen == [[1 / 3, 1 - 1 / 3]]


# --------------------------------------------------------------------------------------------------
# the runner's guarantees, on a toy experiment that takes milliseconds
# --------------------------------------------------------------------------------------------------

TOY = "toy-units"


@dataclasses.dataclass
class ToyConfig:
    units: List[str] = dataclasses.field(default_factory=lambda: ["first unit", "second/unit"])
    epochs: int = 3
    data: Optional[str] = None  # stands for a data path: a folder that must exist when given


_toy_hook = {"fn": None}  # called as fn(ctx, unit, epoch) after each epoch's checkpoint


def _toy_run(cfg: ToyConfig, ctx: RunContext):
    if cfg.data is not None and not Path(cfg.data).is_dir():
        raise DataNotFoundError(f"toy data {cfg.data!r} does not exist.")
    results = {}
    for i, unit in enumerate(cfg.units):
        if ctx.done(unit):
            results[unit] = ctx.result(unit)
            continue
        state = ctx.load_state(unit)
        if state is None:
            x = torch.randn(4, generator=torch.Generator().manual_seed(ctx.seed * 100 + i), dtype=torch.float64)
            start, trace = 0, []
        else:
            x, start, trace = state["x"], state["epoch"], state["trace"]
        for epoch in range(start, cfg.epochs):
            g = torch.Generator().manual_seed(ctx.seed * 10_000 + i * 100 + epoch)
            x = 0.5 * x + torch.rand(4, generator=g, dtype=torch.float64)
            trace.append(float(x.sum()))
            ctx.save_state(unit, {"x": x, "epoch": epoch + 1, "trace": trace})
            if _toy_hook["fn"] is not None:
                _toy_hook["fn"](ctx, unit, epoch)
        results[unit] = {"x": x.tolist(), "trace": trace}
        ctx.record(unit, results[unit], seconds=0.0, evaluations=cfg.epochs)
    return {"table": [{"unit": u, "sum": sum(r["x"])} for u, r in results.items()]}


@pytest.fixture
def toy():
    runner._REGISTRY.pop(TOY, None)
    register(Experiment(TOY, "a toy for the runner's tests", ToyConfig, lambda: ToyConfig(epochs=5), _toy_run))
    _toy_hook["fn"] = None
    yield
    _toy_hook["fn"] = None
    runner._REGISTRY.pop(TOY, None)


def _interrupt_at(unit_name: str, at_epoch: int):
    def hook(ctx, unit, epoch):
        if unit == unit_name and epoch == at_epoch:
            raise KeyboardInterrupt
    return hook


def test_interrupted_run_resumes_exactly_in_a_unicode_path(tmp_path, toy, capsys):
    reference = tm.experiments.run_experiment(TOY, out=str(tmp_path / "ref"), progress=False)
    out = tmp_path / "résultats ü" / "run 1"
    _toy_hook["fn"] = _interrupt_at("second/unit", 1)
    with pytest.raises(KeyboardInterrupt):
        tm.experiments.run_experiment(TOY, out=str(out), progress=False)
    partial = storage.read_json(out / "results.json")
    assert list(partial["units"]) == ["first unit"] and not partial["complete"]
    assert len(list((out / "checkpoints").glob("*.pt"))) == 1  # the second unit after 2 of its 3 epochs
    calls = []
    _toy_hook["fn"] = lambda ctx, unit, epoch: calls.append((unit, epoch))
    resumed = tm.experiments.run_experiment(TOY, out=str(out), progress=False)
    assert calls == [("second/unit", 2)]  # the finished unit is not rerun, the other continues
    assert resumed["units"] == reference["units"] and resumed["summary"] == reference["summary"]
    assert resumed["complete"] and resumed["resumed"] == 1 and not any((out / "checkpoints").iterdir())
    assert cli_main(["report", str(tmp_path / "résultats ü")]) == 0
    assert f"## {TOY}" in capsys.readouterr().out


def test_ctrl_c_on_the_command_line(tmp_path, toy, capsys):
    out = tmp_path / "cli run"
    _toy_hook["fn"] = _interrupt_at("first unit", 0)
    assert cli_main(["run", TOY, "--out", str(out), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and f"{out}/results.json" in err and "rerun the same command" in err
    _toy_hook["fn"] = None
    assert cli_main(["run", TOY, "--out", str(out), "--no-progress"]) == 0
    assert storage.read_json(out / "results.json")["complete"]


def test_a_folder_takes_one_run_at_a_time(tmp_path, toy):
    out = tmp_path / "busy"
    seen = []

    def second_run(ctx, unit, epoch):
        if not seen:
            try:
                tm.experiments.run_experiment(TOY, out=str(out), progress=False)
                seen.append(None)
            except ValueError as err:
                seen.append(err)

    _toy_hook["fn"] = second_run
    first = tm.experiments.run_experiment(TOY, out=str(out), progress=False)
    assert isinstance(seen[0], ValueError), "a second run wrote into the folder of a run in progress"
    assert f"in use by another torchmoo run (process {os.getpid()})" in str(seen[0])
    assert first["complete"] and set(first["units"]) == {"first unit", "second/unit"}
    _toy_hook["fn"] = None
    assert tm.experiments.run_experiment(TOY, out=str(out), progress=False)["resumed"] == 1  # released


def test_units_recorded_from_two_threads_are_both_kept(tmp_path, monkeypatch):
    results = {"units": {}, "timings": {}, "evaluations": {}}
    ctx = RunContext(tmp_path, 0, torch.device("cpu"), False, results)

    class Slow:  # serialised through the JSON fallback, in the middle of writing results.json
        pass

    other = threading.Thread(target=ctx.record, args=("b", {"v": 2}, 0.0))
    plain_default = storage._json_default

    def default(obj):
        if isinstance(obj, Slow):
            if threading.current_thread() is not other and not other.is_alive() and other.ident is None:
                other.start()
                other.join(timeout=0.5)  # with the lock, "b" waits for this write to end
            return "slow"
        return plain_default(obj)

    monkeypatch.setattr(storage, "_json_default", default)
    ctx.record("a", {"v": Slow()}, 0.0)
    other.join()
    on_disk = storage.read_json(tmp_path / "results.json")
    assert on_disk["units"] == {"a": {"v": "slow"}, "b": {"v": 2}} and set(on_disk["timings"]) == {"a", "b"}


def test_a_folder_left_by_a_failed_start_is_reused(tmp_path, toy):
    out = tmp_path / "r"
    with pytest.raises(DataNotFoundError):
        tm.experiments.run_experiment(TOY, out=str(out), progress=False, config=ToyConfig(data=str(tmp_path / "no")))
    # nothing was computed: the corrected command runs there instead of being refused
    res = tm.experiments.run_experiment(TOY, out=str(out), progress=False, config=ToyConfig())
    assert res["complete"] and res["config"]["data"] is None
    # a folder with a checkpoint of another config's unit is refused, as one with finished units
    other = tmp_path / "s"
    _toy_hook["fn"] = _interrupt_at("first unit", 0)
    with pytest.raises(KeyboardInterrupt):
        tm.experiments.run_experiment(TOY, out=str(other), progress=False)
    _toy_hook["fn"] = None
    with pytest.raises(ValueError, match="holds results of another run"):
        tm.experiments.run_experiment(TOY, out=str(other), progress=False, config=ToyConfig(epochs=4))
    with pytest.raises(ValueError, match="holds results of another run"):
        tm.experiments.run_experiment(TOY, out=str(out), progress=False, config=ToyConfig(epochs=4))


def test_checkpoint_names_never_collide(tmp_path):
    ctx = RunContext(tmp_path, 0, torch.device("cpu"), False, {"units": {}, "timings": {}, "evaluations": {}})
    units = ["w=0.5", "w 0.5", "w_0.5", "a" * 300, "a" * 300 + "b", "région/1"]
    paths = [ctx.checkpoint_path(u) for u in units]
    assert len(set(paths)) == len(units)
    assert paths[2].name == "w_0.5.pt"  # a name that is already a file name stays as it is
    assert all(len(p.name) < 128 and p.parent == tmp_path / "checkpoints" for p in paths)


def test_results_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        storage.write_json(tmp_path / "r.json", {"v": 1})
        storage.save_checkpoint(tmp_path / "c.pt", {"v": torch.ones(1)})
        os.umask(0o077)
        storage.write_json(tmp_path / "private.json", {"v": 1})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"r.json": 0o644, "c.pt": 0o644, "private.json": 0o600}


def test_command_line_errors_are_messages(tmp_path, toy, capsys, monkeypatch):
    monkeypatch.delenv("TORCHMOO_SARCOS_DIR", raising=False)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    listing = tmp_path / "list" / "results.json"
    listing.parent.mkdir()
    listing.write_text("[1, 2]")
    out = str(tmp_path / "o")
    cases = [
        (["run", TOY, "--out", str(a_file)], "is a file, not a folder"),
        (["run", TOY, "--out", out, "--device", "gpu"], "--device gpu: not a torch device"),
        (["run", TOY, "--out", out, "--seed", "-1"], "--seed must be a non-negative integer"),
        (["run", TOY, "--out", out, "--set", "epochs=two"], "--set epochs=two: expected an integer, got 'two'"),
        (["run", TOY, "--out", out, "--set", "epoch=2"], "has no setting 'epoch'; its settings are units, epochs, data"),
        (["run", TOY, "--out", out, "--set", "epochs"], "expected KEY=VALUE"),
        (["run", TOY, "--out", out, "--set", f"data={tmp_path / 'nowhere'}"], "nowhere' does not exist"),
        (["run", "mtsgd-sarcos", "--out", out + "s", "--set", f"data={tmp_path / 'no sarcos'}"], "TORCHMOO_SARCOS_DIR"),
        (["report", str(listing.parent)], "not a torchmoo results file"),
    ]
    for argv, message in cases:
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"torchmoo {argv[0]}: ") and message in err, (argv, err)
    # --set reaches the config that is run and recorded
    assert cli_main(["run", TOY, "--out", out, "--no-progress", "--set", "epochs=1", "--set", "units=one,two"]) == 0
    assert storage.read_json(Path(out) / "results.json")["config"] == {"units": ["one", "two"], "epochs": 1, "data": None}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_gpu(tmp_path, capsys):
    assert cli_main(["run", "mgda-multidigits", "--out", str(tmp_path / "x"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert cli_main(["demo", "--ops", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a folder its user cannot write to")
def test_read_only_results_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert cli_main(["run", "mgda-multidigits", "--out", str(ro / "x")]) == 2
        assert "cannot write the results folder" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)


def test_set_reads_each_field_type():
    cfg = configure(
        "pareto-multidigits",
        assignments=["seed_weights=0.2,0.8", "ws_weights=[[1, 0], [0.5, 0.5]]", "mgda_seed=true", "k=1e2",
                     "step=1", "data=multimnist", "correction=False"],
    )
    assert cfg.seed_weights == [0.2, 0.8] and cfg.ws_weights == [[1.0, 0.0], [0.5, 0.5]]
    assert isinstance(cfg.ws_weights[0][0], float) and isinstance(cfg.step, float) and cfg.step == 1.0
    assert cfg.mgda_seed is True and cfg.correction is False and cfg.k == 100 and cfg.data == "multimnist"
    cfg = configure("mtsgd-multidigits", assignments=["train_images=none", "test_images=64", "mnist_root=/d/my mnist",
                                                      "methods=mgda", "threads=null"])
    assert cfg.train_images is None and cfg.test_images == 64 and cfg.mnist_root == "/d/my mnist"
    assert cfg.methods == ["mgda"] and cfg.threads is None
    assert configure("mtsgd-zdt3", assignments=["bandwidths=[None, 0.5]"]).bandwidths == [None, 0.5]
    full = configure("mgda-multidigits", full=True, assignments=["epochs=1"])
    assert full.epochs == 1 and full.weights == mgda_multidigits.full().weights
    for setting, message in [("mgda_seed=maybe", "expected true or false"), ("k=2.5", "expected an integer, got 2.5"),
                             ("seed_weights=[0.2, x]", "expected a number, got 'x'")]:
        with pytest.raises(ValueError, match=f"--set {setting.split('=')[0]}=.*{message}"):
            configure("pareto-multidigits", assignments=[setting])


def test_report_names_unreadable_files_and_reports_the_others(tmp_path, toy, capsys):
    tm.experiments.run_experiment(TOY, out=str(tmp_path / "good"), progress=False)
    _toy_hook["fn"] = _interrupt_at("second/unit", 0)
    with pytest.raises(KeyboardInterrupt):
        tm.experiments.run_experiment(TOY, out=str(tmp_path / "partial"), progress=False)
    bad = {"corrupt": "{not json", "foreign": '{"summary": [1], "units": {}}',
           "timings": '{"experiment": "x", "units": {}, "timings": {"a": "1 s"}}'}
    for name, text in bad.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
    assert cli_main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count(f"## {TOY}") == 2 and "| unit | sum |" in out
    assert "incomplete (1 units done)" in out and "(no summary yet)" in out
    assert all(str(tmp_path / name / "results.json") in out.split("## not reported")[1] for name in bad)
    # alone, a file that is not a results file is a message, not a traceback
    assert cli_main(["report", str(tmp_path / "foreign")]) == 2
    assert "not a torchmoo results file" in capsys.readouterr().err


@pytest.mark.skipif(storage.fcntl is None, reason="file locks need fcntl")
def test_lock_is_released_when_writing_its_owner_fails(tmp_path, toy, monkeypatch):
    out = tmp_path / "full disk"

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "pwrite", no_space)
    with pytest.raises(ValueError, match="cannot write the results folder"):
        tm.experiments.run_experiment(TOY, out=str(out), progress=False)
    monkeypatch.undo()
    assert tm.experiments.run_experiment(TOY, out=str(out), progress=False)["complete"]  # not "in use"


def test_set_reads_numbers_in_a_list_of_text(toy):
    assert configure(TOY, assignments=["units=1,2"]).units == ["1", "2"]
    assert configure(TOY, assignments=["units=[1, 'two']"]).units == ["1", "two"]
    assert configure(TOY, assignments=["units=3"]).units == ["3"]
    with pytest.raises(ValueError, match="expected an integer, got 2.5"):
        configure(TOY, assignments=["epochs=2.5"])



def _pareto_tiny(**kw):
    base = dict(train_images=128, test_images=32, seed_weights=[0.7], seed_epochs=1, k=4, num_points=3,
                hessian_images=32, ws_weights=[[1.0, 0.0]], ws_snapshots=2, front_resolution=1)
    base.update(kw)
    return tm.experiments.pareto_multidigits.Config(**base)


@pytest.fixture(scope="module")
def pareto_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("pareto") / "ref"
    return tm.experiments.run_experiment("pareto-multidigits", out=str(out), progress=False, config=_pareto_tiny())


def test_an_expansion_does_not_depend_on_the_other_seeds(tmp_path, pareto_reference):
    # "expand linear w=0.7" draws its right-hand sides from its own stream, wherever the seed is listed
    both = tm.experiments.run_experiment("pareto-multidigits", out=str(tmp_path / "both"), progress=False,
                                         config=_pareto_tiny(seed_weights=[0.3, 0.7]))
    for unit in ("seed linear w=0.7", "expand linear w=0.7"):
        assert both["units"][unit] == pareto_reference["units"][unit], unit


def test_pareto_multidigits_interrupted_mid_unit_resumes_to_the_same_results(tmp_path, monkeypatch, pareto_reference):
    original = RunContext.save_state
    saves = []

    def stop_at(target):
        def save_state(self, unit, state):
            original(self, unit, state)
            saves.append(unit)
            if (unit, saves.count(unit)) == target:
                raise KeyboardInterrupt
        return save_state

    out = str(tmp_path / "stopped")
    # after the expansion's first child (its second checkpoint), after the first SGD snapshot
    for target in [("expand linear w=0.7", 2), ("weighted-sum w=(1, 0) lr=0.01", 1)]:
        monkeypatch.setattr(RunContext, "save_state", stop_at(target))
        with pytest.raises(KeyboardInterrupt):
            tm.experiments.run_experiment("pareto-multidigits", out=out, progress=False, config=_pareto_tiny())
        assert saves.count(target[0]) == target[1]
        saves.clear()
    monkeypatch.setattr(RunContext, "save_state", original)
    resumed = tm.experiments.run_experiment("pareto-multidigits", out=out, progress=False, config=_pareto_tiny())
    assert resumed["resumed"] == 2 and resumed["complete"]
    assert resumed["units"] == pareto_reference["units"]
    assert resumed["evaluations"] == pareto_reference["evaluations"]
    figure = {"figure"}
    assert {k: v for k, v in resumed["summary"].items() if k not in figure} == \
        {k: v for k, v in pareto_reference["summary"].items() if k not in figure}


def test_resume_on_another_device_is_refused(finished_run):
    """A folder computed on one device is resumed on that device only (units from two devices would not
    match an uninterrupted run); cpu and cpu:0 are the same device."""
    out, res = finished_run
    path = out / "results.json"
    saved = path.read_text()  # restored at the end: the fixture's folder is shared
    try:
        again = tm.experiments.run_experiment("mgda-multidigits", out=str(out), progress=False, config=tiny_config(),
                                              device="cpu:0")
        assert again["units"] == res["units"]
        data = json.loads(saved)
        data["device"] = "cuda:0"  # as if the folder had been run on a GPU
        path.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=r"was run on cuda:0: resume it with --device cuda:0"):
            tm.experiments.run_experiment("mgda-multidigits", out=str(out), progress=False, config=tiny_config())
    finally:
        path.write_text(saved)
    from torchmoo.experiments.runner import _device_key

    assert _device_key("cuda") == _device_key("cuda:0") != _device_key("cuda:1")  # cuda is cuda:0 in a new process


def test_a_folder_without_work_is_resumed_on_any_device_and_records_it(tmp_path, toy):
    """A run that stopped before it computed anything (here: on a GPU) may go on on another device, and
    the folder then records that device, so that its own later resume is not refused."""
    out = tmp_path / "moved"
    _toy_hook["fn"] = _interrupt_at("first unit", 0)
    with pytest.raises(KeyboardInterrupt):
        tm.experiments.run_experiment(TOY, out=str(out), progress=False)
    for ckpt in (out / "checkpoints").iterdir():
        ckpt.unlink()
    data = storage.read_json(out / "results.json")
    assert data["units"] == {}
    data["device"] = "cuda:0"
    storage.write_json(out / "results.json", data)
    _toy_hook["fn"] = _interrupt_at("second/unit", 1)
    with pytest.raises(KeyboardInterrupt):  # runs on the CPU: nothing was computed on cuda:0
        tm.experiments.run_experiment(TOY, out=str(out), progress=False)
    assert storage.read_json(out / "results.json")["device"] == "cpu"
    _toy_hook["fn"] = None
    assert tm.experiments.run_experiment(TOY, out=str(out), progress=False)["complete"]


def _interrupted_in_first_unit(out: Path) -> Path:
    """Runs the toy experiment into ``out`` and interrupts it inside its first unit; returns the one
    checkpoint it left."""
    _toy_hook["fn"] = _interrupt_at("first unit", 0)
    with pytest.raises(KeyboardInterrupt):
        tm.experiments.run_experiment(TOY, out=str(out), progress=False)
    _toy_hook["fn"] = None
    (ckpt,) = (out / "checkpoints").iterdir()
    return ckpt


def test_a_killed_checkpoint_write_is_not_work(tmp_path, toy):
    # what a process killed inside storage.save_checkpoint leaves: a temporary, no checkpoint
    out = tmp_path / "killed"
    ckpt = _interrupted_in_first_unit(out)
    ckpt.rename(ckpt.parent / f".{ckpt.name}.0123456789ab.tmp")
    res = tm.experiments.run_experiment(TOY, out=str(out), progress=False, config=ToyConfig(epochs=4))
    assert res["complete"] and res["config"]["epochs"] == 4


def test_a_foreign_or_damaged_results_file_is_refused_and_kept(tmp_path, toy):
    for text in ('{"accuracy": 0.9, "epochs": 10}', '{"experiment": "x", "units": {"a": 1}', "[1, 2]"):
        out = tmp_path / "other"
        out.mkdir(exist_ok=True)
        (out / "results.json").write_text(text)
        with pytest.raises(ValueError, match=r"results.json is not a .*pass another --out or delete it"):
            tm.experiments.run_experiment(TOY, out=str(out), progress=False)
        assert (out / "results.json").read_text() == text


def test_a_config_of_another_experiment_is_a_type_error(tmp_path, toy):
    with pytest.raises(TypeError, match="config must be a .*ToyConfig.*got Config"):
        tm.experiments.run_experiment(TOY, out=str(tmp_path / "x"), progress=False, config=tiny_config())
    assert not (tmp_path / "x").exists()


def test_demo_takes_an_out_folder(tmp_path, toy, capsys):
    # the demo's refusals tell the user to pass another --out: the demo accepts one
    out = tmp_path / "taken"
    tm.experiments.run_experiment(TOY, out=str(out), progress=False)
    before = (out / "results.json").read_text()
    assert cli_main(["demo", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("torchmoo demo: ") and "holds results of another run" in err and "--out" in err
    assert (out / "results.json").read_text() == before


def test_bad_settings_are_refused_before_any_unit_runs(tmp_path, monkeypatch):
    """A setting the first unit would not use (PNG's alpha in png-synthetic, whose EPO unit runs first; the
    explorations' f1 range in pareto-zdt2, after its tangents unit; an ablation's second setting) or one that
    would skip every step (a batch size <= 0) is refused before anything trains."""
    from torchmoo.experiments import pareto_zdt2, png_diverse, png_synthetic

    def trained(*args, **kwargs):
        raise AssertionError("a unit ran before the config was checked")

    monkeypatch.setattr(RunContext, "record", trained)
    monkeypatch.setattr(RunContext, "save_state", trained)
    monkeypatch.delenv("TORCHMOO_MNIST_DIR", raising=False)
    syn = dict(r1=[0.5], steps=5)
    tiny_png = dict(num_models=2, seeds=1, epochs=1, train_images=32, test_images=16, batch_size=16)
    cases = [
        ("mgda-multidigits", tiny_config(batch_size=-1), "batch_size must be >= 1"),
        ("mgda-multidigits", tiny_config(batch_size=0), "batch_size must be >= 1"),
        ("mgda-multidigits", tiny_config(lr=0.0), "lr must be a positive"),
        ("png-synthetic", png_synthetic.Config(alpha=-1.0, **syn), "alpha must be"),
        ("png-synthetic", png_synthetic.Config(gamma=-0.1, units=["png ratio", "png weighted-distance"], **syn),
         "gamma must be"),
        ("png-synthetic", png_synthetic.Config(record_every=0, **syn), "record_every must be >= 1"),
        ("png-zdt2", png_synthetic.ZDT2Config(init_r2=[1.0], **syn), "init_r2 must be"),
        ("png-zdt2", png_synthetic.ZDT2Config(n_var=5, **syn), "n_var must be 3"),
        ("pareto-zdt2", pareto_zdt2.Config(tangent_points=1, explore_seeds=1, seed_f1=[0.2]), "seed_f1 must be"),
        ("pareto-zdt2", pareto_zdt2.Config(tangent_points=1, explore_seeds=1, seed_f1=[0.2, 1.5]), "seed_f1 must be"),
        ("pareto-zdt2", pareto_zdt2.Config(tangent_points=1, explore_seeds=1, step=0.0), "step must be"),
        ("png-ablation-multidigits", png_diverse.AblationConfig(settings=[[0.5, 0.1], [-1.0, 0.1]], **tiny_png),
         "alpha must be"),
        ("png-ablation-multidigits", png_diverse.AblationConfig(settings=[[0.5, 0.1], [0.5, 0.1000000001]],
                                                                **tiny_png), "first 6 significant digits"),
        ("png-diverse-multidigits", png_diverse.Config(datasets=["multidigits", "multimnist"], **tiny_png),
         "TORCHMOO_MNIST_DIR"),
    ]
    for i, (name, cfg, message) in enumerate(cases):
        with pytest.raises(ValueError, match=message):
            tm.experiments.run_experiment(name, out=str(tmp_path / str(i)), progress=False, config=cfg)


_MULTI_LENET = tm.zoo.models.MultiLeNet


def _record_lenets(monkeypatch) -> List[tuple]:
    """Replaces ``tm.zoo.models.MultiLeNet`` with one that records ``(kwargs, initial parameters)`` per model."""
    built, lenet = [], tm.zoo.models.MultiLeNet

    def recording(**kwargs):
        model = lenet(**kwargs)
        built.append((kwargs, [p.detach().clone() for p in model.parameters()]))
        return model

    monkeypatch.setattr(tm.zoo.models, "MultiLeNet", recording)
    return built


def _assert_initialized_as_seeded(built: List[tuple], seeds: List[int]) -> None:
    """The recorded initial parameters are bit for bit those of ``torch.manual_seed(seed)`` followed by the
    constructor (the initialization the experiments have always used)."""
    assert len(built) == len(seeds)
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        for (kwargs, params), seed in zip(built, seeds):
            torch.manual_seed(seed)
            reference = list(_MULTI_LENET(**kwargs).parameters())
            assert len(params) == len(reference)
            assert all(torch.equal(a, b.detach()) for a, b in zip(params, reference))


def _callers_stream() -> torch.Tensor:
    torch.manual_seed(1234)
    torch.rand(3)  # somewhere in the middle of the caller's stream
    return torch.get_rng_state()


def test_mgda_multidigits_leaves_the_callers_random_state_alone(tmp_path, monkeypatch):
    # an experiment called from Python seeds its models without resetting the caller's random stream, and
    # the models start from the same weights as before
    built = _record_lenets(monkeypatch)
    before = _callers_stream()
    cfg = tiny_config(epochs=1, train_images=64, test_images=32, batch_size=32)
    tm.experiments.run_experiment("mgda-multidigits", out=str(tmp_path), progress=False, config=cfg, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    _assert_initialized_as_seeded(built, [3, 3])  # both units start from the same weights


def test_png_diverse_leaves_the_callers_random_state_alone(tmp_path, monkeypatch):
    from torchmoo.experiments import png_diverse

    built = _record_lenets(monkeypatch)
    before = _callers_stream()
    cfg = png_diverse.Config(methods=["linear"], num_models=2, seeds=1, epochs=1, train_images=32, test_images=16,
                             batch_size=16)
    tm.experiments.run_experiment("png-diverse-multidigits", out=str(tmp_path), progress=False, config=cfg, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    _assert_initialized_as_seeded(built, [5000, 5001])  # model k of seed s: torch.manual_seed(1000 s + k)


def test_png_diverse_full_runs_the_papers_schedule_on_multidigits(monkeypatch):
    # appendix C.2.1: 100 epochs of Adam (1e-3, batch 256), 5 seeds; MGDA takes over after 60 epochs and the
    # front is collected from epoch 60 on, also when no MNIST folder is set
    from torchmoo.experiments import png_diverse

    for var in ("TORCHMOO_MNIST_DIR", "TORCHMOO_FASHION_MNIST_DIR"):
        monkeypatch.delenv(var, raising=False)
    for cfg in (png_diverse.full(), png_diverse.ablation_full()):
        assert cfg.datasets == ["multidigits"] and cfg.num_models == 5
        assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.seeds) == (100, 256, 1e-3, 5)
        assert math.ceil(cfg.mgda_switch * cfg.epochs) == 60 and math.floor(cfg.collect_from * cfg.epochs) == 60


def test_a_run_stopped_before_any_unit_leaves_no_results_file(tmp_path, toy, capsys, monkeypatch):
    # a missing data path: an empty results.json would be listed by `report` as a run
    monkeypatch.delenv("TORCHMOO_SARCOS_DIR", raising=False)
    out = tmp_path / "sarcos"
    argv = ["run", "mtsgd-sarcos", "--out", str(out), "--no-progress", "--set", f"data={tmp_path / 'no sarcos'}"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("torchmoo run: ") and f"{tmp_path / 'no sarcos'}', which does not exist" in err, err
    assert not (out / "results.json").exists()
    toy_out = tmp_path / "toy"
    for _ in range(2):  # the second time over the first one's folder
        with pytest.raises(DataNotFoundError, match="toy data"):
            tm.experiments.run_experiment(TOY, out=str(toy_out), progress=False, config=ToyConfig(data=str(tmp_path)
                                                                                                     + "/no"))
        assert not (toy_out / "results.json").exists()
    assert cli_main(["report", str(tmp_path)]) == 2
    assert "no results.json found" in capsys.readouterr().err
    # an interrupted unit's checkpoint is work: the results file that says whose it is stays
    _toy_hook["fn"] = _interrupt_at("first unit", 0)
    with pytest.raises(KeyboardInterrupt):
        tm.experiments.run_experiment(TOY, out=str(toy_out), progress=False)
    assert storage.read_json(toy_out / "results.json")["units"] == {}


def test_ctrl_c_before_the_first_checkpoint_promises_no_results(tmp_path, toy, capsys, monkeypatch):
    out = tmp_path / "early"

    def interrupted(self, unit):  # Ctrl-C while the first unit sets up, before it checkpoints
        raise KeyboardInterrupt

    monkeypatch.setattr(RunContext, "load_state", interrupted)
    assert cli_main(["run", TOY, "--out", str(out), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert not (out / "results.json").exists()
    assert "interrupted" in err and "results.json" not in err and "rerun the same command" in err, err


def test_a_binary_results_file_is_named(tmp_path, toy, capsys):
    out = tmp_path / "binary"
    out.mkdir()
    (out / "results.json").write_bytes(b"\xff\xfe\x00\x80 not text")
    with pytest.raises(ValueError, match=r"binary.results\.json is not a valid JSON results file"):
        storage.read_json(out / "results.json")
    with pytest.raises(ValueError, match=r"results\.json is not a valid JSON .*pass another --out or delete it"):
        tm.experiments.run_experiment(TOY, out=str(out), progress=False)
    tm.experiments.run_experiment(TOY, out=str(tmp_path / "good"), progress=False)
    assert cli_main(["report", str(tmp_path)]) == 0
    assert str(out / "results.json") in capsys.readouterr().out.split("## not reported")[1]


def test_checkpoints_without_their_results_file_are_refused(tmp_path, toy):
    # results.json deleted (as the message for a damaged one suggests): the checkpoint left is of an unknown
    # run, here seed 0's, and must not be resumed by seed 1
    out = tmp_path / "orphans"
    _toy_hook["fn"] = _interrupt_at("first unit", 1)
    with pytest.raises(KeyboardInterrupt):
        tm.experiments.run_experiment(TOY, out=str(out), progress=False, seed=0)
    _toy_hook["fn"] = None
    (out / "results.json").unlink()
    with pytest.raises(ValueError, match=r"holds checkpoints but no results.json.*delete .*checkpoints"):
        tm.experiments.run_experiment(TOY, out=str(out), progress=False, seed=1)
    for ckpt in (out / "checkpoints").iterdir():
        ckpt.unlink()
    reference = tm.experiments.run_experiment(TOY, out=str(tmp_path / "ref"), progress=False, seed=1)
    assert tm.experiments.run_experiment(TOY, out=str(out), progress=False, seed=1)["units"] == reference["units"]


def test_temporaries_of_killed_writes_are_removed_on_resume(tmp_path, toy):
    # a write killed mid-way leaves its temporary (for a checkpoint, as large as the model); the next run
    # in the folder deletes them, and only them
    out = tmp_path / "killed writes"
    ckpt = _interrupted_in_first_unit(out)
    left = [out / ".results.json.0123456789ab.tmp", ckpt.parent / f".{ckpt.name}.a1b2c3d4e5f6.tmp"]
    kept = [out / "notes.tmp", out / ".my.0123456789ab.tmp.bak", ckpt.parent / ".x.0123456789AB.tmp"]
    for path in left + kept:
        path.write_bytes(b"x" * 64)
    assert tm.experiments.run_experiment(TOY, out=str(out), progress=False)["complete"]
    assert not any(p.exists() for p in left) and all(p.exists() for p in kept)
    storage.remove_temporaries(tmp_path / "no such folder")  # nothing to do


def test_set_reads_one_pair_of_a_list_of_pairs():
    # the pair as given, not one list per number (which the experiment would refuse as not pairs)
    for text in ("ws_weights=0.5,0.5", "ws_weights=[0.5, 0.5]", "ws_weights=(0.5, 0.5)"):
        assert configure("pareto-multidigits", assignments=[text]).ws_weights == [[0.5, 0.5]], text
    assert configure("pareto-multidigits", assignments=["ws_weights=[[1, 0], [0, 1]]"]).ws_weights == [[1, 0], [0, 1]]
    assert configure("simol-toy", assignments=["starts=-7,2"]).starts == [[-7.0, 2.0]]
    assert configure("pareto-multidigits", assignments=["ws_weights=[]"]).ws_weights == []
    assert configure("pareto-multidigits", assignments=["seed_weights=0.2,0.8"]).seed_weights == [0.2, 0.8]


def test_set_reads_yes_no_words_none_in_any_case_and_an_equals_sign_in_the_value():
    # --set correction=no must not silently turn the correction on; a sweep folder's path may hold "="
    for word, expected in [("yes", True), ("on", True), ("TRUE", True), ("no", False), ("off", False),
                           ("False", False), ("0", False)]:
        assert configure("pareto-multidigits", assignments=[f"correction={word}"]).correction is expected, word
    cfg = configure("mtsgd-multidigits", assignments=["mnist_root=/d/lr=0.1", "train_images=None", "threads=NULL"])
    assert cfg.mnist_root == "/d/lr=0.1" and cfg.train_images is None and cfg.threads is None


def test_full_without_a_config_runs_the_full_setting(tmp_path, toy):
    res = tm.experiments.run_experiment(TOY, full=True, out=str(tmp_path / "full"), progress=False)
    assert res["config"]["epochs"] == 5 and len(res["units"]["first unit"]["trace"]) == 5


def test_ctrl_c_of_a_full_run_names_its_default_folder(tmp_path, toy, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _toy_hook["fn"] = _interrupt_at("second/unit", 0)
    assert cli_main(["run", TOY, "--full", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert f"kept in {Path('runs') / (TOY + '-seed0-full')}/results.json" in err, err


def test_another_seed_in_the_same_folder_is_refused(tmp_path, toy):
    # the folder's units were drawn with seed 0: seed 1 must not be handed them as its own
    out = tmp_path / "seeded"
    tm.experiments.run_experiment(TOY, out=str(out), progress=False, seed=0)
    before = (out / "results.json").read_text()
    with pytest.raises(ValueError, match="holds results of another run"):
        tm.experiments.run_experiment(TOY, out=str(out), progress=False, seed=1)
    assert (out / "results.json").read_text() == before


def test_a_results_file_of_another_tool_with_an_experiment_key_is_kept(tmp_path, toy):
    # {"experiment": ...} alone is no torchmoo results file: with no units it would look like an empty run
    out = tmp_path / "theirs"
    out.mkdir()
    text = '{"experiment": "baseline", "accuracy": 0.9}'
    (out / "results.json").write_text(text)
    with pytest.raises(ValueError, match=r"results.json is not a torchmoo results file"):
        tm.experiments.run_experiment(TOY, out=str(out), progress=False)
    assert (out / "results.json").read_text() == text


def test_a_write_that_fails_midway_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    # a full disk while the bytes are flushed: the old checkpoint stays whole and the temporary (as large as
    # the model) is deleted at once
    path = tmp_path / "c.pt"
    storage.save_checkpoint(path, {"epoch": 1})

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        storage.save_checkpoint(path, {"epoch": 2, "w": torch.ones(1000)})
    monkeypatch.undo()
    assert storage.load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_a_unit_whose_result_cannot_be_written_keeps_its_checkpoint(tmp_path, monkeypatch):
    # the checkpoint goes only once results.json holds the unit, else a failed write loses the unit's work
    ctx = RunContext(tmp_path, 0, torch.device("cpu"), False, {"units": {}, "timings": {}, "evaluations": {}})
    ctx.save_state("u", {"epoch": 3})

    def full_disk(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "write_json", full_disk)
    with pytest.raises(OSError):
        ctx.record("u", {"v": 1}, 1.0)
    assert ctx.load_state("u") == {"epoch": 3}


_unpickled_code_ran: List[bool] = []


def _mark_code_ran() -> None:
    _unpickled_code_ran.append(True)


class _CodeOnLoad:
    def __reduce__(self):
        return (_mark_code_ran, ())


def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path):
    path = tmp_path / "checkpoints" / "u.pt"
    path.parent.mkdir()
    torch.save({"epoch": 1, "x": _CodeOnLoad()}, path)
    _unpickled_code_ran.clear()
    with pytest.raises(ValueError, match="u.pt is not a readable torchmoo checkpoint"):
        storage.load_checkpoint(path)
    assert _unpickled_code_ran == []


# --------------------------------------------------------------------------------------------------
# png-diverse-multidigits, png-ablation-multidigits, png-synthetic, png-zdt2: what their numbers are
# --------------------------------------------------------------------------------------------------


def _tiny_png_diverse(**kw):
    base = dict(num_models=2, seeds=1, epochs=1, train_images=32, test_images=16, batch_size=16)
    base.update(kw)
    return base


def _recording(monkeypatch, name: str) -> List[tuple]:
    """Replaces ``tm.methods.<name>`` by its class called through a recorder of ``(args, kwargs)``."""
    calls, cls = [], getattr(tm.methods, name)

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        return cls(*args, **kwargs)

    monkeypatch.setattr(tm.methods, name, record)
    return calls


def test_png_diverse_preferences_are_epos_circle_points():
    # model k of linear scalarization and EPO: the k-th of N equally spread directions, from (0, 1) to (1, 0)
    from torchmoo.experiments import png_diverse

    p = png_diverse.preferences(5)
    assert p.shape == (5, 2) and p.dtype == torch.float64
    torch.testing.assert_close(p.norm(dim=1), torch.ones(5, dtype=torch.float64))
    angles = torch.atan2(p[:, 1], p[:, 0])  # from about pi/2 (all the weight on task 2) down to about 0
    expected = torch.linspace(0.9999 * math.pi / 2, 0.0001 * math.pi / 2, 5, dtype=torch.float64)
    torch.testing.assert_close(angles, expected)


def test_png_diverse_hands_each_model_its_preference_and_png_its_settings(tmp_path, monkeypatch):
    from torchmoo.experiments import png_diverse

    linear, epo, png = (_recording(monkeypatch, n) for n in ("LinearScalarization", "EPO", "PNG"))
    cfg = png_diverse.AblationConfig(settings=[[0.25, 0.01]], criterion_clip=0.5, decay=0.8,
                                     **_tiny_png_diverse(num_models=3))
    res = tm.experiments.run_experiment("png-ablation-multidigits", out=str(tmp_path), progress=False, config=cfg)
    pref = png_diverse.preferences(3)
    assert len(linear) == 3 and len(epo) == 3
    for k in range(3):  # model k: linear weights r_k / sum(r_k), EPO toward r_k
        torch.testing.assert_close(torch.as_tensor(linear[k][0][0], dtype=torch.float64), pref[k] / pref[k].sum())
        torch.testing.assert_close(torch.as_tensor(epo[k][0][0], dtype=torch.float64), pref[k])
    trained = [(a, kw) for a, kw in png if a[0] is not None]  # the others are the settings' early checks
    assert len(trained) == 1
    (criterion,), kw = trained[0]
    assert isinstance(criterion, tm.methods.EnergyDistance)
    assert (kw["alpha"], kw["gamma"], kw["decay"], kw["criterion_clip"]) == (0.25, 0.01, 0.8, 0.5)
    unit = res["units"]["multidigits seed=0 png alpha=0.25 gamma=0.01"]
    assert (unit["alpha"], unit["gamma"]) == (0.25, 0.01)


def test_png_diverse_mgda_takes_over_after_the_switch_epoch(tmp_path, monkeypatch):
    # mgda_switch = 0.6 of 5 epochs: linear scalarization in epochs 1-3, MGDA in epochs 4 and 5
    from torchmoo.experiments import png_diverse

    used, backward = [], tm.backward

    def record(losses, params, agg, *args, **kwargs):
        used.append(type(agg).__name__)
        return backward(losses, params, agg, *args, **kwargs)

    monkeypatch.setattr(tm, "backward", record)
    cfg = png_diverse.Config(methods=["mgda"], **_tiny_png_diverse(epochs=5, train_images=16))
    res = tm.experiments.run_experiment("png-diverse-multidigits", out=str(tmp_path), progress=False, config=cfg)
    per_epoch = 2  # 1 batch x 2 models
    assert used == ["LinearScalarization"] * (3 * per_epoch) + ["MGDA"] * (2 * per_epoch)
    collected = res["units"]["multidigits seed=0 mgda"]["collected"]
    assert [(c["epoch"], c["model"]) for c in collected] == [(4, 0), (4, 1), (5, 0), (5, 1)]


def test_png_diverse_evaluates_every_seed_on_its_test_split(tmp_path, monkeypatch):
    from torchmoo.experiments import png_diverse

    cfg = png_diverse.Config(methods=["linear"], **_tiny_png_diverse(seeds=2))
    cpu = torch.device("cpu")
    for seed in (3, 4):
        (xtr, ytr), (xte, yte) = png_diverse.load_data("multidigits", cfg, seed, cpu)
        test = tm.zoo.data.MultiDigits("test", seed=seed, num_images=cfg.test_images)
        assert torch.equal(xte, test.tensors()[0]) and torch.equal(yte, test.tensors()[1])
        assert xtr.shape[0] == 32 and not torch.equal(xtr[:16], xte)
    evaluated, evaluate = [], png_diverse._evaluate

    def record(model, x, y, *args, **kwargs):
        evaluated.append(x)
        return evaluate(model, x, y, *args, **kwargs)

    monkeypatch.setattr(png_diverse, "_evaluate", record)
    res = tm.experiments.run_experiment("png-diverse-multidigits", out=str(tmp_path), progress=False, config=cfg,
                                        seed=3)
    assert set(res["units"]) == {"multidigits seed=3 linear", "multidigits seed=4 linear"}
    expected = [png_diverse.load_data("multidigits", cfg, seed, cpu)[1][0] for seed in (3, 3, 4, 4)]
    assert len(evaluated) == 4 and all(torch.equal(a, b) for a, b in zip(evaluated, expected))
    # the table's mean +- std over the seeds: sample standard deviation of the per-seed metrics, x 100
    details = res["summary"]["details"]["multidigits"]
    values = [s["linear"]["hv_loss"] for s in details["per_seed"]]
    assert values[0] != values[1]
    mean, std = (values[0] + values[1]) / 2, abs(values[0] - values[1]) / math.sqrt(2)
    assert details["mean_std"]["linear"]["hv_loss"] == pytest.approx([mean, std])
    assert res["summary"]["table"][0]["HV loss x1e-2"] == f"{100 * mean:.3f} +- {100 * std:.3f}"


def test_png_diverse_evaluation_is_the_mean_over_every_pair():
    from torchmoo.experiments import png_diverse

    torch.manual_seed(0)
    model = tm.zoo.models.MultiLeNet(num_tasks=2, image_size=28)
    x, y = torch.randn(13, 1, 28, 28), torch.randint(0, 10, (13, 2))
    loss, acc = png_diverse._evaluate(model, x, y, chunk=5)  # chunks of 5, 5 and 3 pairs
    with torch.no_grad():
        model.eval()
        outs = model(x)
    assert loss == pytest.approx([float(torch.nn.functional.cross_entropy(o, y[:, i])) for i, o in enumerate(outs)], rel=1e-5)
    assert acc == pytest.approx([float((o.argmax(1) == y[:, i]).double().mean()) for i, o in enumerate(outs)])


def test_png_diverse_metrics_by_hand():
    # losses: minimized, reference 0.6; accuracies: maximized, reference 0.1; IGD+ against the union's front
    from torchmoo.experiments import png_diverse

    def unit(losses, accs):
        return {"collected": [{"loss": l, "accuracy": a} for l, a in zip(losses, accs)]}

    results = {"a": unit([[0.2, 0.4], [0.4, 0.2]], [[0.5, 0.3], [0.2, 0.2]]),
               "b": unit([[0.3, 0.3]], [[0.6, 0.2]])}
    got = png_diverse.unit_metrics(results, 0.6, 0.1)
    expected = {"a": {"hv_loss": 0.2 * 0.2 + 0.2 * 0.4, "igd_loss": 0.1 / 3, "hv_acc": 0.4 * 0.2, "igd_acc": 0.1 / 2},
                "b": {"hv_loss": 0.3 * 0.3, "igd_loss": 0.2 / 3, "hv_acc": 0.5 * 0.1, "igd_acc": 0.1 / 2}}
    assert set(got) == {"a", "b"}
    for u in expected:
        assert got[u] == pytest.approx(expected[u], abs=1e-12), u
    assert png_diverse._references("multidigits", png_diverse.Config()) == (math.log(10.0), 0.1)
    assert png_diverse._references("multimnist", png_diverse.Config()) == (0.6, 0.6)
    assert png_diverse._references("multidigits", png_diverse.Config(loss_ref=0.5)) == (0.5, 0.1)
    assert png_diverse._references("multimnist", png_diverse.Config(acc_ref=0.3)) == (0.6, 0.3)


def test_png_synthetic_units_get_their_settings_seed_and_analytic_targets(monkeypatch):
    # one step per unit: the PNG settings of each unit, the seeded start, and targets that are the
    # preferred points of the analytic front (checked on an independent grid of the front)
    from torchmoo.experiments import png_synthetic

    png = _recording(monkeypatch, "PNG")
    cfg = png_synthetic.Config(r1=[0.3, 0.8], steps=1, alpha=0.4, gamma=0.2, ratio_alpha=0.3, ratio_gamma=0.02,
                               decay=0.7)
    problem, front, (lo, hi) = png_synthetic._problem("lin-concave", 10)
    grid = front(torch.linspace(lo, hi, 1001, dtype=torch.float64))
    start = png_synthetic._initial_point("lin-concave", cfg, 2)
    assert not torch.equal(start, png_synthetic._initial_point("lin-concave", cfg, 0))
    criteria = {"png weighted-distance": tm.methods.WeightedDistance, "png complex-cosine": tm.methods.ComplexCosine,
                "png complex-cosine (printed sum)": lambda r: tm.methods.ComplexCosine(r, form="sum")}
    for unit in png_synthetic.UNITS:
        png.clear()
        res = png_synthetic.run_unit(unit, "lin-concave", cfg, 2)
        assert res["start"] == start.tolist()
        torch.testing.assert_close(torch.tensor(res["trajectory"][0], dtype=torch.float64),
                                   problem(start.repeat(2, 1)).detach())
        if unit == "epo ratio":
            assert png == []
        else:
            ratio = unit == "png ratio"
            (_, kw), = png
            assert (kw["alpha"], kw["gamma"], kw["decay"]) == ((0.3, 0.02) if ratio else (0.4, 0.2)) + (0.7,)
        for p in res["points"]:
            r1, t, l = p["r1"], torch.tensor(p["target"], dtype=torch.float64), torch.tensor(p["losses"], dtype=torch.float64)
            assert p["error"] == pytest.approx(float((l - t).abs().max()), abs=1e-12)
            assert float((grid - t).norm(dim=1).min()) < 3e-3  # on the front
            if unit in ("epo ratio", "png ratio"):  # the point where r1 l1 = r2 l2
                assert r1 * float(t[0]) == pytest.approx((1 - r1) * float(t[1]), rel=1e-6)
            else:  # no grid point of the front has a smaller criterion
                crit = criteria[unit](torch.tensor([r1, 1 - r1], dtype=torch.float64))
                assert float(crit(t)) <= min(float(crit(q)) for q in grid) + 1e-12
        assert [p["r1"] for p in res["points"]] == [0.3, 0.8]


def test_png_zdt2_mgda_warmup_only_in_the_complex_cosine_units():
    from torchmoo.experiments import png_synthetic

    cfg = png_synthetic.ZDT2Config(r1=[0.5], steps=2, mgda_warmup=2)
    assert png_synthetic.run_unit("png weighted-distance", "zdt2-variant", cfg, 0)["threshold_final"] is not None
    assert png_synthetic.run_unit("png complex-cosine", "zdt2-variant", cfg, 0)["threshold_final"] is None


def test_png_diverse_resumed_png_unit_counts_the_control_of_every_step(tmp_path, monkeypatch):
    # the share of steps with the control on covers the steps before the interruption too
    from torchmoo.experiments import png_diverse

    built, cls = [], tm.methods.PNG

    def keep(*args, **kwargs):
        built.append(cls(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(tm.methods, "PNG", keep)
    cfg = png_diverse.Config(methods=["png"], **_tiny_png_diverse(epochs=2))
    unit = "multidigits seed=0 png"
    ref = tm.experiments.run_experiment("png-diverse-multidigits", out=str(tmp_path / "a"), progress=False,
                                        config=cfg)["units"][unit]
    assert ref["control_on_fraction"] > 0
    ref_png = built[-1].state_dict()
    assert ref_png["steps"] == 4 and ref_png["e0"] is not None
    original = RunContext.save_state

    def save_then_stop(self, name, state):
        original(self, name, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunContext, "save_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        tm.experiments.run_experiment("png-diverse-multidigits", out=str(tmp_path / "b"), progress=False, config=cfg)
    monkeypatch.setattr(RunContext, "save_state", original)
    resumed = tm.experiments.run_experiment("png-diverse-multidigits", out=str(tmp_path / "b"), progress=False,
                                            config=cfg)["units"][unit]
    assert resumed["collected"] == ref["collected"]
    # PNG's own state (the threshold's running e0, the step count) continues from the checkpoint
    assert built[-1].steps == 4 and torch.equal(built[-1].state_dict()["e0"], ref_png["e0"])
    assert resumed["control_on_fraction"] == ref["control_on_fraction"] and resumed["steps"] == ref["steps"] == 4


# --------------------------------------------------------------------------------------------------
# pareto-zdt2, pareto-multidigits: what their numbers are
# --------------------------------------------------------------------------------------------------


def test_pareto_zdt2_seeds_steps_and_counts_are_the_configured_ones(tmp_path):
    from torchmoo.experiments import pareto_zdt2

    cfg = pareto_zdt2.Config(tangent_points=1, tangent_directions=1, explore_seeds=2, num_points=2, step=0.05,
                             seed_f1=[0.5, 0.6])
    res = tm.experiments.run_experiment("pareto-zdt2", out=str(tmp_path), progress=False, config=cfg)
    problem = tm.problems.ZDT2Variant()
    starts, optimal = {}, {"tangent": 0, "gradient": 0}
    for method in ("tangent", "gradient"):
        for i in range(cfg.explore_seeds):
            r = res["units"][f"{method} seed {i}"]
            F, X = torch.tensor(r["points"], dtype=torch.float64), torch.tensor(r["params"], dtype=torch.float64)
            assert cfg.seed_f1[0] - 1e-12 <= F[0, 0] <= cfg.seed_f1[1] + 1e-12  # the seed's f1 in seed_f1
            starts[method, i] = X[0]
            # the seed itself is not counted among the Pareto-optimal points found
            assert r["pareto_optimal"] == int(problem.is_pareto_optimal(X[1:], atol=1e-6).sum())
            optimal[method] += r["pareto_optimal"]
            assert res["evaluations"][f"{method} seed {i}"] == sum(r["expand"].values()) + sum(r["optimize"].values())
    # both methods of a run start from one point, each run from its own
    assert torch.equal(starts["tangent", 0], starts["gradient", 0])
    assert torch.equal(starts["tangent", 1], starts["gradient", 1])
    assert not torch.allclose(starts["tangent", 0], starts["tangent", 1])
    # a tangent step of length s along the cylinder lands on the set, where ParetoOptimize leaves it
    X = torch.tensor(res["units"]["tangent seed 0"]["params"], dtype=torch.float64)
    assert float((X[1] - X[0]).norm()) == pytest.approx(cfg.step, abs=1e-6)
    table = res["summary"]["table"]
    assert [row["Pareto optimal"] for row in table] == [optimal["tangent"], optimal["gradient"]]


def test_pareto_multidigits_hypervolumes_and_budgets_are_on_the_test_split(pareto_reference):
    res, cfg = pareto_reference, _pareto_tiny()
    ref = (math.log(10.0), math.log(10.0))  # chance loss per task
    seed, exp = res["units"]["seed linear w=0.7"], res["units"]["expand linear w=0.7"]
    assert _hv2d(exp["test_losses"], ref) > 0  # else the checks below would not see the reference
    # the explored points are evaluated on the test split: the first is the seed, with the seed unit's test loss
    assert exp["test_losses"][0] == pytest.approx(seed["test"]["loss"], abs=1e-6)
    assert exp["hv_seed"] == pytest.approx(_hv2d(exp["test_losses"][:1], ref), rel=1e-9)
    assert exp["hv_expanded"] == pytest.approx(_hv2d(exp["test_losses"], ref), rel=1e-9)
    s = res["summary"]
    assert s["hypervolume of the seeds (test, ref = chance loss)"] == pytest.approx(_hv2d([seed["test"]["loss"]], ref))
    assert s["hypervolume after expansion (seeds + explored points)"] == pytest.approx(_hv2d(exp["test_losses"], ref))
    row, n = s["table"][0], cfg.train_images
    assert row["train (epochs)"] == cfg.seed_epochs
    assert row["expand (epochs)"] == pytest.approx(exp["image_evaluations"] / n)
    ws = res["units"]["weighted-sum w=(1, 0) lr=0.01"]
    # the snapshots spread over the whole budget, the last at its end
    assert len(ws["snapshots"]) == cfg.ws_snapshots and ws["snapshots"][-1]["step"] == ws["steps"]
    expansion, sgd = s["necessity"]
    assert expansion["HV"] == pytest.approx(_hv2d(exp["test_losses"], ref))
    # SGD's front: its starting point (the seed) and its snapshots
    assert sgd["HV"] == pytest.approx(_hv2d([exp["test_losses"][0]] + [p["test_loss"] for p in ws["snapshots"]], ref))
    assert sgd["budget (epochs)"] == pytest.approx(ws["image_evaluations"] / n)
    assert expansion["budget (epochs)"] == pytest.approx(exp["image_evaluations"] / n)


def test_pareto_weighted_sum_gets_the_budget_of_ws_from(tmp_path, monkeypatch):
    from torchmoo.experiments import pareto_multidigits as pm

    costs = {"linear w=0.3": 1000, "linear w=0.7": 3000}
    budgets = []

    def weighted_sum(unit, w, lr, budget, *args):
        budgets.append(budget)
        raise KeyboardInterrupt

    monkeypatch.setattr(pm, "_train_seed", lambda name, *args: {"seed": name})
    monkeypatch.setattr(pm, "_expand", lambda name, *args: {"image_evaluations": costs[name]})
    monkeypatch.setattr(pm, "_weighted_sum", weighted_sum)
    cfg = pm.Config(train_images=64, test_images=16, seed_weights=[0.3, 0.7], ws_from=1)
    with pytest.raises(KeyboardInterrupt):
        tm.experiments.run_experiment("pareto-multidigits", out=str(tmp_path), progress=False, config=cfg)
    assert budgets == [3000]


def test_pareto_weighted_sum_starts_from_ws_from(tmp_path):
    from torchmoo.experiments import pareto_multidigits as pm

    cfg = pm.Config(train_images=16, test_images=16, seed_weights=[0.3, 0.7], ws_from=1, batch_size=16,
                    ws_snapshots=1)
    train, test = pm._load(cfg, 0)
    ctx = RunContext(tmp_path, 0, torch.device("cpu"), False, {"units": {}, "timings": {}, "evaluations": {}})
    losses = []
    for i, name in enumerate(pm._seed_names(cfg)):  # two different networks
        torch.manual_seed(i)
        model = tm.zoo.models.MultiLeNet(num_tasks=2, image_size=train[0].shape[-1])
        storage.save_checkpoint(ctx.model_path(f"seed {name}"), {"model": model.state_dict()})
        losses.append(pm._evaluate(model, *test)["loss"])
    assert losses[0] != pytest.approx(losses[1], abs=1e-3)
    unit = pm._ws_unit([1.0, 0.0], 1e-9)
    r = pm._weighted_sum(unit, [1.0, 0.0], 1e-9, 1, cfg, ctx, model, train, test)  # one step that moves nothing
    assert r["steps"] == 1 and r["snapshots"][0]["test_loss"] == pytest.approx(losses[cfg.ws_from], abs=1e-5)


def test_pareto_seeds_start_from_one_initialization(tmp_path, monkeypatch):
    from torchmoo.experiments import pareto_multidigits as pm

    starts = []
    backward = tm.backward

    def spy(losses, params, aggregator):
        starts.append(torch.cat([p.detach().flatten() for p in params]))
        return backward(losses, params, aggregator)

    def stop(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(tm, "backward", spy)
    monkeypatch.setattr(pm, "_expand", stop)
    cfg = pm.Config(train_images=64, test_images=16, seed_weights=[0.3, 0.7], mgda_seed=True, seed_epochs=1,
                    batch_size=64)
    with pytest.raises(KeyboardInterrupt):
        tm.experiments.run_experiment("pareto-multidigits", out=str(tmp_path), progress=False, config=cfg)
    assert len(starts) == 3 and all(torch.equal(s, starts[0]) for s in starts)  # one step per seed


def test_pareto_seed_stationarity_is_measured_at_the_seed():
    import functools

    from torchmoo.experiments import pareto_multidigits as pm

    problem = tm.problems.ZDT2Variant()
    x0 = torch.tensor([-2.5, 1.0, 1.2], dtype=torch.float64)  # off the Pareto set: not stationary
    x = x0.clone().requires_grad_(True)
    optimize = functools.partial(tm.methods.pareto_optimize, max_iter=500, tol=1e-14)
    ex = tm.methods.ParetoExplorer(x, lambda: problem(x), k=2, step=0.1, num_children=1, num_points=2,
                                   rhs="binary", optimize=optimize, optimize_seed=False, seed=0)
    ex.explore()  # leaves x at the last point, which ParetoOptimize made stationary
    J = torch.autograd.functional.jacobian(problem, x0)
    expected = tm.methods.pareto_stationarity(J)
    assert expected > 1e-3
    assert pm._stationarity_at(ex, lambda: problem(x)) == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------------------------------- psst-fewshot-digits
def test_psst_fewshot_regions_and_selections_follow_the_base_losses_and_validation(tmp_path, monkeypatch):
    """With the training replaced by given results: the best-overall solution is the fixed weighting with the
    smallest sum of base losses (A.1), the regions are built from its loss vector (A.2), the fixed and PSST
    models reported are those of the best validation 1-shot accuracy, and the table's numbers are the units'."""
    from torchmoo.experiments import psst_fewshot as PF
    from torchmoo.methods import psst as P

    given = {  # unit: (base losses, validation 1-shot, test 1-shot)
        "cc": ([0.1, 5.0], 0.30, 0.31),
        "fixed w=0.5": ([0.3, 1.2], 0.60, 0.81),  # the smallest L_cls, not the smallest sum; the best test
        "fixed w=1": ([0.45, 0.8], 0.50, 0.51),  # the smallest sum: pi_0
        "fixed w=2": ([1.0, 2.0], 0.70, 0.71),  # the best validation accuracy
        "psst region 1/3": ([0.3, 1.5], 0.40, 0.76),
        "psst region 2/3": ([0.2, 1.6], 0.65, 0.66),
        "psst region 3/3": ([0.1, 1.7], 0.45, 0.46),
    }
    seen = {}

    def fake_train(unit, cfg, ctx, data, seed, *, aux, method, region=None):
        seen[unit] = (aux, method, region)
        losses, val, test = given[unit]
        out = {"losses": losses, "val_1shot": val, "test_1shot": test, "test_1shot_ci95": 0.01}
        if region is not None:
            out.update(in_region=True, feasibility_fraction=0.0)
        return out

    monkeypatch.setattr(PF, "train_unit", fake_train)
    monkeypatch.setattr(PF, "_plot", lambda *args: None)
    cfg = PF.Config(shots=[1], explore=False, regions=3, epsilon_fraction=0.2, val_episodes=10, test_episodes=10)
    s = tm.experiments.run_experiment("psst-fewshot-digits", out=str(tmp_path), progress=False, config=cfg)["summary"]
    assert s["best_overall"] == "fixed w=1"
    assert s["selected_fixed"] == "fixed w=2" and s["selected_psst"] == "psst region 2/3"
    assert s["fixed 1-shot"] == "71.00 +- 1.00" and s["psst 1-shot"] == "66.00 +- 1.00"
    assert s["cc 1-shot"] == "31.00 +- 1.00"
    assert seen["cc"][0] == () and seen["cc"][1] == [1.0]
    assert seen["fixed w=2"][0] == ("rotation",) and seen["fixed w=2"][1] == [1.0, 2.0]
    expected = P.angular_regions(torch.tensor([0.45, 0.8], dtype=torch.float64), 3)
    for i, region in enumerate(expected, 1):
        _, method, got = seen[f"psst region {i}/3"]
        torch.testing.assert_close(got.lower, region.lower)
        torch.testing.assert_close(got.upper, region.upper)
        assert method.region is got and method.epsilon == pytest.approx(0.2 * float(region.widths().min()))
    assert s["pi_0 (deg)"][0] == pytest.approx(math.degrees(math.atan2(0.8, 0.45)))
    rows = {t["model"]: t for t in s["table"]}
    assert list(rows) == ["cc alone", "fixed w=0.5", "fixed w=1", "fixed w=2", "psst region 1/3",
                          "psst region 2/3", "psst region 3/3"]
    for unit, name in (("cc", "cc alone"), ("fixed w=2", "fixed w=2"), ("psst region 3/3", "psst region 3/3")):
        losses, val, test = given[unit]
        t = rows[name]
        assert (t["val 1-shot"], t["1-shot"], t["L_cls"], t["L_rotation"]) == (val, test, losses[0], losses[1])
        assert t["angle (deg)"] == pytest.approx(math.degrees(math.atan2(losses[1], losses[0])))
    assert "pi_0" in rows["fixed w=1"]["note"] and rows["fixed w=2"]["note"] == ""


def test_psst_fewshot_digits_split():
    """Base digits 0-4 (all their images), novel 5-9 split per class into a validation and a test half,
    standardized with the base images' statistics."""
    from torchmoo.experiments import psst_fewshot as PF
    from torchmoo.zoo.data.digits import load_sklearn_digits
    from torchmoo.zoo.data.image_folder import resize_square

    cfg = PF.Config()
    data = PF.load_data(cfg, 0, torch.device("cpu"))
    digits, labels = load_sklearn_digits()
    x = resize_square((digits / 16.0).unsqueeze(1), cfg.image_size)
    base = x[labels < 5]
    mean, std = base.mean(), base.std()
    torch.testing.assert_close(data.base_x, (base - mean) / std)
    assert torch.equal(data.base_y, labels[labels < 5])
    assert data.base_names == ["0", "1", "2", "3", "4"] and data.novel_names == ["5", "6", "7", "8", "9"]
    novel = (labels >= 5).sum().item()
    assert data.val_x.shape[0] + data.test_x.shape[0] == novel
    for c in range(5):
        n_val, n_test = int((data.val_y == c).sum()), int((data.test_y == c).sum())
        assert n_val + n_test == int((labels == c + 5).sum()) and n_test - n_val in (0, 1)
    # every novel image lands in exactly one half: match the standardized images back to the raw ones
    raw = ((x[labels >= 5] - mean) / std).flatten(1)
    both = torch.cat([data.val_x, data.test_x]).flatten(1)
    d = torch.cdist(both.double(), raw.double(), compute_mode="donot_use_mm_for_euclid_dist")
    assert bool((d.min(1).values < 1e-4).all())  # standardized with the base statistics
    # no image in both halves (the digits hold a few duplicate images: count matches, not indices)
    assert int((d < 1e-4).sum()) == int((torch.cdist(raw.double(), raw.double(),
                                                     compute_mode="donot_use_mm_for_euclid_dist") < 1e-4).sum())


@pytest.mark.parametrize("early_stopping, kept", [(False, 3), (True, 2)])
def test_psst_fewshot_unit_keeps_the_documented_epoch_and_scores_the_right_split(tmp_path, monkeypatch, early_stopping,
                                                                                  kept):
    """Without early stopping the last epoch is kept, with it the epoch of best validation 1-shot accuracy
    (B.3); validation accuracy is measured on the validation half, test accuracy on the test half."""
    from types import SimpleNamespace

    from torchmoo.experiments import psst_fewshot as PF
    from torchmoo.methods import psst as P

    class Trainer:  # each epoch writes its number into the classifier's scale
        def __init__(self, model, *args, **kwargs):
            self.model, self.epoch = model, 0

        def train_epoch(self):
            self.epoch += 1
            with torch.no_grad():
                self.model.heads[0].scale.fill_(float(self.epoch))
            return {"seconds": 0.0, "cpu_seconds": 0.0, "steps": 1}

        def state_dict(self):
            return {"epoch": self.epoch}

    val_by_epoch = {1: 0.5, 2: 0.7, 3: 0.6}
    calls = []

    def accuracy(model, x, y, cfg, shots, episodes, seed):
        split = "val" if x is data.val_x else "test" if x is data.test_x else "other"
        epoch = int(model.heads[0].scale.item())
        calls.append((split, epoch, seed, episodes))
        return {k: SimpleNamespace(mean=val_by_epoch[epoch] + (k if split == "test" else 0), ci95=0.01) for k in shots}

    monkeypatch.setattr(P, "FewShotTrainer", Trainer)
    monkeypatch.setattr(PF, "_accuracy", accuracy)
    g = torch.Generator().manual_seed(0)
    data = PF.FewShotData(torch.randn(10, 1, 16, 16, generator=g), torch.arange(10) % 5, None,
                          torch.randn(10, 1, 16, 16, generator=g), torch.arange(10) % 5,
                          torch.randn(10, 1, 16, 16, generator=g), torch.arange(10) % 5, 1, list("abcde"), list("fghij"))
    cfg = PF.Config(channels=4, epochs=3, early_stopping=early_stopping, shots=[1, 5], val_episodes=11,
                    test_episodes=13)
    ctx = tm.experiments.RunContext(tmp_path, 4, torch.device("cpu"), False,
                                    {"units": {}, "timings": {}, "evaluations": {}})
    r = PF.train_unit("u", cfg, ctx, data, 4, aux=("rotation",), method=[1.0, 1.0])
    assert r["best_epoch"] == kept and [h["val_1shot"] for h in r["history"]] == [0.5, 0.7, 0.6]
    assert r["val_1shot"] == val_by_epoch[kept]
    assert (r["test_1shot"], r["test_5shot"]) == (val_by_epoch[kept] + 1, val_by_epoch[kept] + 5)
    assert calls[:3] == [("val", e, 5, 11) for e in (1, 2, 3)]  # during training: validation, seed + 1
    assert sorted(calls[3:]) == [("test", kept, 6, 13), ("val", kept, 5, 11)]  # the kept model, seed + 2 for test
    assert len(r["losses"]) == 2
