"""``mgda-multidigits``: a two-task LeNet on MultiDigits, linear scalarization at several weights vs MGDA.

The runner's first experiment, and the classic picture of multi-task learning as multi-objective
optimization (Sener & Koltun 2018): each linear scalarization ``w * l_1 + (1 - w) * l_2`` trains one
model (the gradient of the weighted sum in every parameter, heads included), MGDA trains one model
whose every gradient is a common descent direction of both tasks (the min-norm combination on the
shared trunk, each head its own task's gradient: Sener & Koltun's algorithm 2), which Adam then
scales per coordinate. The experiment reports per-task test accuracy and loss of every model, the
hypervolume of their test losses with respect to chance level (``ln 10`` per task), and a plot of the
models in loss space.

Every model starts from the same initialization (seeded), sees the same mini-batches (seeded per
epoch) and checkpoints after every epoch, so an interrupted run resumes exactly.

Measured (``torchmoo run mgda-multidigits``, seed 0, 2-vCPU Intel Xeon VM, 11 s; test set of MultiDigits):

========================  ==========  ==========  ===========  ===========
method                    acc task 1  acc task 2  loss task 1  loss task 2
========================  ==========  ==========  ===========  ===========
linear w=0.1              0.262       0.655       2.079        1.014
linear w=0.3              0.429       0.694       1.574        0.959
linear w=0.5              0.543       0.644       1.282        1.050
linear w=0.7              0.563       0.515       1.257        1.471
linear w=0.9              0.535       0.318       1.264        1.938
mgda                      0.540       0.671       1.256        1.034
========================  ==========  ==========  ===========  ===========

Hypervolume of the test losses (reference ``ln 10`` per task): 1.382 with MGDA's model, 1.365 for the five
linear-scalarization models alone; MGDA's model is not dominated by any of them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F

import torchmoo as tm
from torchmoo.experiments.runner import Experiment, RunContext, check_unique_units, register

CHANCE_LOSS = math.log(10.0)  # cross-entropy of a uniform 10-way prediction


@dataclass
class Config:
    """Small default (about 15 s on 2 CPU cores); :func:`full` is the long setting."""

    weights: List[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])  # of task 1 (upper-left)
    mgda_normalization: str = "none"
    epochs: int = 4
    batch_size: int = 64
    lr: float = 2e-3  # Adam
    train_images: int = 1438  # the default train split of MultiDigits
    test_images: int = 359


def full() -> Config:
    """More pairs of the same source digits (each image a new pairing and placement), more epochs."""
    return Config(weights=[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95], epochs=30, train_images=20000,
                  test_images=4000)


def _data(cfg: Config, seed: int, device: torch.device) -> Tuple[Tuple[torch.Tensor, torch.Tensor], ...]:
    train = tm.zoo.data.MultiDigits("train", seed=seed, num_images=cfg.train_images)
    test = tm.zoo.data.MultiDigits("test", seed=seed, num_images=cfg.test_images)
    return tuple(tuple(t.to(device) for t in ds.tensors()) for ds in (train, test))


def _losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> List[torch.Tensor]:
    return [F.cross_entropy(out, y[:, i]) for i, out in enumerate(model(x))]


@torch.no_grad()
def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Dict[str, List[float]]:
    model.eval()
    outs = model(x)
    model.train()
    return {
        "loss": [float(F.cross_entropy(o, y[:, i])) for i, o in enumerate(outs)],
        "accuracy": [float((o.argmax(1) == y[:, i]).float().mean()) for i, o in enumerate(outs)],
    }


def _train_unit(unit: str, aggregator, cfg: Config, ctx: RunContext, data, unit_index: int) -> Dict[str, Any]:
    (x_train, y_train), (x_test, y_test) = data
    # the same initialization for every unit, seeded under a fork: the caller's random streams are left as
    # they were
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(ctx.seed)
        model = tm.zoo.models.MultiLeNet(num_tasks=2, image_size=x_train.shape[-1]).to(ctx.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if isinstance(aggregator, tm.methods.LinearScalarization):
        # the gradient of w * l_1 + (1 - w) * l_2 in every parameter: each head gets its task's weight
        # (with w = 1 the head of task 2 is not trained), as Sener & Koltun's weighted-sum baseline
        shared, heads = list(model.parameters()), None
    else:  # MGDA on the shared parameters, each head its own task's gradient (Sener & Koltun, Alg. 2)
        shared = model.shared_parameters()
        heads = [model.task_parameters(i) for i in range(2)]
    state = ctx.load_state(unit)
    start_epoch, history, steps, seconds, last_weights = 0, [], 0, 0.0, None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, history, steps, seconds = state["epoch"], state["history"], state["steps"], state["seconds"]
        # the aggregator's weights of the last step: a run stopped after its last epoch takes no step
        last_weights = state.get("weights_last_step")
    n = x_train.shape[0]
    epochs = ctx.progress(range(start_epoch, cfg.epochs), desc=unit, total=cfg.epochs, initial=start_epoch)
    for epoch in epochs:
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + epoch)  # same batches for every unit
        order = torch.randperm(n, generator=gen).to(ctx.device)
        for k in range(0, n, cfg.batch_size):
            idx = order[k : k + cfg.batch_size]
            losses = _losses(model, x_train[idx], y_train[idx])
            opt.zero_grad(set_to_none=True)
            tm.backward(losses, shared, aggregator, task_params=heads)
            opt.step()
            steps += 1
        ev = _evaluate(model, x_test, y_test)
        history.append({"epoch": epoch + 1, "test_loss": ev["loss"], "test_accuracy": ev["accuracy"]})
        last_weights = [float(v) for v in aggregator.weights.tolist()]
        seconds += time.perf_counter() - t0
        ctx.save_state(
            unit,
            {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1, "history": history,
             "steps": steps, "seconds": seconds, "weights_last_step": last_weights},
        )
    final = _evaluate(model, x_test, y_test)
    train_final = _evaluate(model, x_train, y_train)
    result = {
        "method": unit,
        "test_loss": final["loss"],
        "test_accuracy": final["accuracy"],
        "train_loss": train_final["loss"],
        "history": history,
        "steps": steps,
        "weights_last_step": last_weights,
    }
    ctx.record(unit, result, seconds=seconds, evaluations=steps * 2)  # two task gradients per step
    return result


def run(cfg: Config, ctx: RunContext) -> Dict[str, Any]:
    if not cfg.weights or any(not 0.0 <= w <= 1.0 for w in cfg.weights):
        raise ValueError(f"weights must be a non-empty list of numbers in [0, 1], got {cfg.weights}.")
    # before any data or training: a batch size <= 0 would skip every step (or fail mid-unit)
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {cfg.epochs} and {cfg.batch_size}.")
    if not 0.0 < cfg.lr < math.inf:
        raise ValueError(f"lr must be a positive finite number, got {cfg.lr}.")
    names = [f"linear w={w:g}" for w in cfg.weights]
    check_unique_units(names, f"weights must differ in their first 6 significant digits, got {cfg.weights}.")
    units: List[Tuple[str, Any]] = [
        (name, tm.methods.LinearScalarization([w, 1.0 - w])) for name, w in zip(names, cfg.weights)
    ]
    units.append(("mgda", tm.methods.MGDA(normalization=cfg.mgda_normalization)))  # checks the normalization
    data = _data(cfg, ctx.seed, ctx.device)
    results = {}
    for i, (unit, aggregator) in enumerate(units):
        results[unit] = ctx.result(unit) if ctx.done(unit) else _train_unit(unit, aggregator, cfg, ctx, data, i)

    losses = torch.tensor([results[u]["test_loss"] for u, _ in units], dtype=torch.float64)
    ref = [CHANCE_LOSS, CHANCE_LOSS]
    hv_all = tm.metrics.hypervolume(losses, ref)
    hv_linear = tm.metrics.hypervolume(losses[:-1], ref)
    _plot(units, results, ctx)
    table = [
        {
            "method": u,
            "acc task 1": results[u]["test_accuracy"][0],
            "acc task 2": results[u]["test_accuracy"][1],
            "loss task 1": results[u]["test_loss"][0],
            "loss task 2": results[u]["test_loss"][1],
            "seconds": ctx.results["timings"][u],
        }
        for u, _ in units
    ]
    return {
        "table": table,
        "hypervolume (all models, ref = chance loss)": hv_all,
        "hypervolume (linear scalarization only)": hv_linear,
        "mgda non-dominated by the linear models": bool(
            tm.metrics.nondominated(losses, keep_weakly=True, return_mask=True)[-1]
        ),
    }


def _plot(units, results, ctx: RunContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_front, ax_curve) = plt.subplots(1, 2, figsize=(10, 4))
    for u, _ in units:
        l1, l2 = results[u]["test_loss"]
        marker = "*" if u == "mgda" else "o"
        ax_front.scatter([l1], [l2], marker=marker, s=120 if u == "mgda" else 40, label=u)
        hist = results[u]["history"]
        ax_curve.plot([h["epoch"] for h in hist], [sum(h["test_loss"]) for h in hist], marker=".", label=u)
    ax_front.set_xlabel("test loss, task 1 (upper-left digit)")
    ax_front.set_ylabel("test loss, task 2 (lower-right digit)")
    ax_front.set_title("models in loss space")
    ax_front.legend(fontsize=7)
    ax_curve.set_xlabel("epoch")
    ax_curve.set_ylabel("sum of test losses")
    ax_curve.set_title("training curves")
    ctx.save_figure(fig, "front")


EXPERIMENT = register(
    Experiment(
        name="mgda-multidigits",
        description="two-task LeNet on MultiDigits: linear scalarization at several weights vs MGDA",
        config=Config,
        full=full,
        run=run,
    )
)
