"""``pareto-multidigits``: Pareto expansion of multi-task LeNets (Ma, Du & Matusik 2020, table 1, figures 5-7).

The paper's MultiMNIST experiments on MultiDigits by default (MultiMNIST, MultiFashion or
MultiFashion+MNIST with ``data=...`` when their IDX files are available; ``--full`` switches to
MultiMNIST when ``$TORCHMOO_MNIST_DIR`` is set). Units, each recorded as it finishes:

1. **Seeds**: multi-task LeNets (22,350 parameters) trained by linear scalarization at
   ``seed_weights`` (and MGDA with ``mgda_seed``), all from the same initialization.
2. **Expansion** (sufficiency test, table 1 / figure 5): Algorithm 1 from each seed with ``K = 2``
   children per point, ``N`` new points, ``k = 50`` MINRES iterations on the Hessian of the
   ``alpha``-weighted training loss over a fixed sub-batch of ``hessian_images`` images (the
   authors' code computes the gradient on the data set and the Hessian on one batch), right-hand
   sides ``beta = e_1, e_2`` (``rhs="binary"``: one chain favoring each task, as in figure 7), no
   gradient correction (supplement 2.3), step ``s`` along unit tangents. ParetoOptimize is
   ``optimize_steps`` full-batch MGDA steps with line search (0, the default, keeps the tangent
   steps as they are, as the authors' MultiMNIST code does). Hypervolume of the test losses before
   (seed) and after (seed + explored points), reference point: chance loss ``ln 10`` per task.
3. **WeightedSum** (necessity test, figure 6): from seed ``ws_from``, SGD on the weighted sums
   ``ws_weights`` at learning rates ``ws_lrs``, each given the same budget as that seed's expansion,
   with a snapshot ``ws_snapshots`` times along the way.
4. **Continuous front** (figure 7): the families of all seeds stitched into one front of the test
   losses, parametrized by ``t`` in [-1, 1].

Costs are counted in *image-evaluations*: an objective evaluation, a gradient or a Hessian-vector
product on ``b`` images counts ``b`` (the paper's unit, evaluations of objectives, gradients and HVPs,
scaled by the batch they see, so that full-batch, sub-batch and mini-batch work compare); the tables
also give them in epochs (divided by the training-set size). As in the paper (supplement table 1: no
objective evaluation for ParetoExpand), a gradient includes the evaluation of the objectives it
differentiates: an SGD step on ``b`` images counts ``b``, and so does a Jacobian on ``b`` images.

Paper (MultiMNIST, 60k images, seeds from 30 epochs of SGD; table 1 and figures 5-6): the expansion
costs a small fraction of one seed's training and grows a dense front around each seed; the
expanded fronts dominate WeightedSum runs given the same time on 4 of 5 data sets.

Measured here (``torchmoo run pareto-multidigits`` = ``torchmoo demo``, seed 0, small default: two
seeds trained 4 epochs on 1,438 MultiDigits pairs, ``N = 4``, ``K = 2``, ``k = 50``, ``s = 0.2``, Hessian
on 64 images; about 1 min on 2 CPU cores), test losses, hypervolume with reference ``(ln 10, ln 10)``:

================  ==============  =====  ===============  ================  ======
seed              train (epochs)  HV     expand (epochs)  #f / #grad / #HVP  new HV
================  ==============  =====  ===============  ================  ======
linear w=0.3      4               0.979  15.0             8 / 4 / 200       1.111
linear w=0.7      4               0.870  15.0             8 / 4 / 200       0.957
================  ==============  =====  ===============  ================  ======

Both seeds together: HV 1.243 before, 1.343 with the 8 explored points, 1.346 for the stitched
continuous front (56 of 66 samples kept, 3 stitching points). The first-order predictions ``s J v``
have the sign and size of the observed changes of the training losses (e.g. predicted
``(-0.079, +0.005)``, observed ``(-0.053, +0.007)``): each chain trades one task for the other.
Necessity (from ``linear w=0.3``, same budget of 15 epochs): HV 1.111 for the expansion, 1.705 and
1.159 for SGD on task 1 / task 2 alone, none of whose snapshots the expansion dominates.

What differs from the paper, and why the necessity test does not come out as theirs: the seeds are
far from Pareto-stationary (4 epochs; ``min_w |J' w|^2`` = 2.4 and 3.2 over all parameters, heads
included, where the paper's seeds had 30 epochs on 60k images), so more SGD still improves both
tasks and WeightedSum, given 15 epochs, beats a local exploration around an unfinished network;
the data set is 40x smaller; the Hessian is estimated on 64 images; the expansion's cost is high
relative to 4 epochs of training (the paper's is a fraction of 30 epochs), 40 % of it in full-batch
passes over the small training set. ``--full`` runs the paper's setting (5 + 1 seeds of
30 SGD epochs, 20,000 pairs or MultiMNIST, Hessian batch 2,048, ``N = 10``).
"""

from __future__ import annotations

import functools
import math
import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F

import torchmoo as tm
from torchmoo.experiments import storage
from torchmoo.experiments.runner import Experiment, RunContext, check_unique_units, register
from torchmoo.methods import EvaluationCounter, ParetoExplorer, pareto_optimize, stitch
from torchmoo.methods.pareto_exploration import RHS_SAMPLERS

CHANCE_LOSS = math.log(10.0)
DATA_SETS = ("multidigits", "multimnist", "multifashion", "multifashion+mnist")


@dataclass
class Config:
    """Small default (a few minutes on 2 CPU cores); :func:`full` is the paper's setting."""

    data: str = "multidigits"
    train_images: int = 1438  # MultiDigits only (the MNIST family has 60,000 / 10,000)
    test_images: int = 359
    seed_weights: List[float] = field(default_factory=lambda: [0.3, 0.7])  # linear scalarization, weight of task 1
    mgda_seed: bool = False  # also an MGDA-trained seed
    seed_epochs: int = 4
    seed_optimizer: str = "adam"  # "adam" or "sgd" (momentum 0.9, cosine schedule: the paper's)
    seed_lr: float = 2e-3
    batch_size: int = 64
    k: int = 50  # MINRES iterations
    num_children: int = 2  # K
    num_points: int = 4  # N, new points per seed
    step: float = 0.2  # s
    rhs: str = "binary"
    correction: bool = False
    shift: float = 0.0
    hessian_images: int = 64
    optimize_steps: int = 0
    ws_weights: List[List[float]] = field(default_factory=lambda: [[1.0, 0.0], [0.0, 1.0]])  # one-hot (paper)
    ws_lrs: List[float] = field(default_factory=lambda: [0.01])
    ws_from: int = 0  # index of the seed the necessity test starts from
    ws_snapshots: int = 6
    front_resolution: int = 8


def full() -> Config:
    """The paper's setting: 5 seeds of 30 SGD epochs (batch 256, lr 0.01, momentum 0.9, cosine), N = 10,
    Hessian batch 2,048, WeightedSum at two learning rates. MultiMNIST when ``$TORCHMOO_MNIST_DIR`` is
    set, else 20,000 MultiDigits pairs."""
    data = "multimnist" if os.environ.get("TORCHMOO_MNIST_DIR") else "multidigits"
    return Config(data=data, train_images=20000, test_images=4000, seed_weights=[0.1, 0.3, 0.5, 0.7, 0.9],
                  mgda_seed=True, seed_epochs=30, seed_optimizer="sgd", seed_lr=0.01, batch_size=256,
                  num_points=10, step=0.1, hessian_images=2048, ws_weights=[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]],
                  ws_lrs=[0.01, 0.001], ws_snapshots=10)


# ---- data, model, losses ------------------------------------------------------------------------


def _load(cfg: Config, seed: int) -> Tuple[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    d = tm.zoo.data
    if cfg.data == "multidigits":
        sets = [d.MultiDigits(s, seed=seed, num_images=n) for s, n in (("train", cfg.train_images),
                                                                        ("test", cfg.test_images))]
    elif cfg.data == "multimnist":
        sets = [d.MultiMNIST(split=s, seed=seed) for s in ("train", "test")]
    elif cfg.data == "multifashion":
        sets = [d.MultiFashion(split=s, seed=seed) for s in ("train", "test")]
    else:
        sets = [d.MultiFashionMNIST(split=s, seed=seed) for s in ("train", "test")]
    return sets[0].tensors(), sets[1].tensors()


def _losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([F.cross_entropy(out, y[:, i]) for i, out in enumerate(model(x))])


@torch.no_grad()
def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Dict[str, List[float]]:
    outs = model(x)
    return {
        "loss": [float(F.cross_entropy(o, y[:, i])) for i, o in enumerate(outs)],
        "accuracy": [float((o.argmax(1) == y[:, i]).float().mean()) for i, o in enumerate(outs)],
    }


def _seed_names(cfg: Config) -> List[str]:
    names = [f"linear w={w:g}" for w in cfg.seed_weights]
    if cfg.mgda_seed:
        names.append("mgda")
    return names


def _ws_unit(w: List[float], lr: float) -> str:
    return f"weighted-sum w=({w[0]:g}, {w[1]:g}) lr={lr:g}"


# ---- units ----------------------------------------------------------------------------------------


def _train_seed(name: str, cfg: Config, ctx: RunContext, model, train, test) -> Dict[str, Any]:
    x, y = train
    unit = f"seed {name}"
    torch.manual_seed(ctx.seed)  # one initialization for every seed
    model.load_state_dict(tm.zoo.models.MultiLeNet(num_tasks=2, image_size=x.shape[-1]).to(ctx.device).state_dict())
    params = list(model.parameters())
    if cfg.seed_optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.seed_lr)
    else:
        opt = torch.optim.SGD(params, lr=cfg.seed_lr, momentum=0.9)
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.seed_epochs * steps_per_epoch) \
        if cfg.seed_optimizer == "sgd" else None
    if name == "mgda":
        agg = tm.methods.MGDA()
    else:  # the configured weight, not the one read back from the unit's name (6 significant digits)
        w = dict(zip(_seed_names(cfg), cfg.seed_weights))[name]
        agg = tm.methods.LinearScalarization([w, 1.0 - w])
    state = ctx.load_state(unit)
    start, seconds = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        start, seconds = state["epoch"], state["seconds"]
    for epoch in ctx.progress(range(start, cfg.seed_epochs), desc=unit, total=cfg.seed_epochs, initial=start):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen).to(ctx.device)
        for s in range(0, n, cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            tm.backward(_losses(model, x[idx], y[idx]), params, agg)
            opt.step()
            if sched is not None:
                sched.step()
        seconds += time.perf_counter() - t0
        ctx.save_state(unit, {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                              "seconds": seconds, "scheduler": sched.state_dict() if sched is not None else {}})
    storage.save_checkpoint(ctx.model_path(unit), {"model": model.state_dict()})
    images = cfg.seed_epochs * n  # one gradient per image per epoch (MGDA: one Jacobian, counted once)
    result = {"seed": name, "train": _evaluate(model, x, y), "test": _evaluate(model, *test),
              "train_image_evaluations": images, "train_epochs": cfg.seed_epochs}
    ctx.record(unit, result, seconds, images)
    return result


def _closures(cfg: Config, ctx: RunContext, model, train, test):
    x, y = train
    gen = torch.Generator().manual_seed(ctx.seed + 17)
    sub = torch.randperm(x.shape[0], generator=gen)[: min(cfg.hessian_images, x.shape[0])].to(x.device)
    xh, yh = x[sub], y[sub]
    calls = {"hessian": 0}

    def objectives():
        return _losses(model, x, y)

    def hessian_objectives():
        calls["hessian"] += 1
        return _losses(model, xh, yh)

    def test_objectives():
        return _losses(model, *test)

    return objectives, hessian_objectives, test_objectives, calls, xh.shape[0]


def _explorer(cfg: Config, ctx: RunContext, model, objectives, hessian_objectives, unit: str) -> ParetoExplorer:
    optimize = functools.partial(pareto_optimize, max_iter=cfg.optimize_steps, decay=0.5, max_backtracks=10)
    return ParetoExplorer(model, objectives, k=cfg.k, step=cfg.step, num_children=cfg.num_children,
                          num_points=cfg.num_points, rhs=cfg.rhs, correction=cfg.correction, shift=cfg.shift,
                          hessian_objectives=hessian_objectives, optimize=optimize, optimize_seed=False,
                          # the stream of the right-hand sides is the unit's own: an expansion does not
                          # change with the other seeds listed before it
                          seed=ctx.seed * 1009 + zlib.crc32(unit.encode()))


def _expand(name: str, cfg: Config, ctx: RunContext, model, train, test) -> Dict[str, Any]:
    unit = f"expand {name}"
    model.load_state_dict(storage.load_checkpoint(ctx.model_path(f"seed {name}"))["model"])
    objectives, hobj, test_obj, calls, h = _closures(cfg, ctx, model, train, test)
    ex = _explorer(cfg, ctx, model, objectives, hobj, unit)
    state = ctx.load_state(unit)
    seconds = 0.0
    if state is not None:
        ex.load_state_dict(state["explorer"])
        calls["hessian"], seconds = state["hessian_calls"], state["seconds"]
    t0 = time.perf_counter()

    def checkpoint(e: ParetoExplorer) -> None:
        ctx.save_state(unit, {"explorer": e.state_dict(), "hessian_calls": calls["hessian"],
                              "seconds": seconds + time.perf_counter() - t0})

    bar = None
    if ctx.show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=unit, total=cfg.num_points, initial=len(ex.points) - 1 if ex.points else 0, leave=False)

    def callback(e: ParetoExplorer) -> None:
        checkpoint(e)
        if bar is not None:
            bar.n = len(e.points) - 1
            bar.refresh()

    ex.explore(callback=callback)
    if bar is not None:
        bar.close()
    seconds += time.perf_counter() - t0
    storage.save_checkpoint(ctx.model_path(unit), {"explorer": ex.state_dict()})
    n = train[0].shape[0]
    images = _expansion_images(ex.counters["expand"] + ex.counters["optimize"], calls["hessian"], n, h)
    test_losses = []
    for p in ex.points:
        ex._set(p.params)
        test_losses.append(_evaluate(model, *test)["loss"])
    ex._set(ex.points[0].params)
    hv_seed = tm.metrics.hypervolume(test_losses[:1], [CHANCE_LOSS] * 2)
    hv_all = tm.metrics.hypervolume(test_losses, [CHANCE_LOSS] * 2)
    result = {
        "seed": name,
        "train_losses": [p.losses.tolist() for p in ex.points],
        "test_losses": test_losses,
        "parents": [p.parent for p in ex.points],
        "expanded_train_losses": [p.expanded_losses.tolist() for p in ex.points[1:]],
        "predicted_change": [p.predicted.tolist() for p in ex.points[1:]],
        "rejected": len(ex.rejected),
        "seed_stationarity": _stationarity_at(ex, objectives),
        "alpha_seed": ex.points[0].alpha.tolist() if ex.points[0].alpha is not None else None,
        "evaluations": {"expand": ex.counters["expand"].as_dict(), "optimize": ex.counters["optimize"].as_dict()},
        "image_evaluations": images,
        "hv_seed": hv_seed,
        "hv_expanded": hv_all,
    }
    ctx.record(unit, result, seconds, images)
    return result


def _expansion_images(c: EvaluationCounter, hessian_calls: int, n: int, h: int) -> int:
    """Image-evaluations of an expansion from its counts ``c`` (:class:`EvaluationCounter`, ParetoExpand +
    ParetoOptimize) and the calls of the Hessian closure (``h`` images each; the objectives see ``n``).

    Every gradient of ``c`` (a Jacobian on the training set, or the weighted gradient of the Hessian's
    sub-batch) differentiates an objective evaluation that ``c.f`` counts too: that forward pass is part
    of the gradient, as in an SGD step, and is not counted twice. What remains of ``c.f`` is the
    training-set evaluations without a gradient (the children, the line search).
    """
    jacobians = c.grad - hessian_calls  # on the training set
    plain = c.f - c.grad  # objective evaluations without a gradient, all on the training set
    if jacobians < 0 or plain < 0:
        raise ValueError(f"inconsistent counts {c.as_dict()} for {hessian_calls} Hessian closure calls.")
    return (plain + jacobians) * n + (hessian_calls + c.hvp) * h


def _stationarity_at(ex: ParetoExplorer, objectives) -> float:
    """``min_w |J'w|^2`` at the seed (one more Jacobian, not counted in the expansion's cost)."""
    ex._set(ex.points[0].params)
    J = tm.autograd.jacobian(objectives(), ex.params)
    return tm.methods.pareto_stationarity(J)


def _weighted_sum(unit: str, w: List[float], lr: float, budget: int, cfg: Config, ctx: RunContext, model, train,
                  test) -> Dict[str, Any]:
    seed_name = _seed_names(cfg)[cfg.ws_from]
    x, y = train
    n = x.shape[0]
    per_epoch = math.ceil(n / cfg.batch_size)
    sizes = [min(cfg.batch_size, n - pos * cfg.batch_size) for pos in range(per_epoch)]  # the last may be short
    steps, seen = 0, 0
    while seen < budget or steps == 0:  # the fewest steps whose images reach the budget
        seen += sizes[steps % per_epoch]
        steps += 1
    marks = sorted({max(1, round(steps * (i + 1) / cfg.ws_snapshots)) for i in range(cfg.ws_snapshots)})
    model.load_state_dict(storage.load_checkpoint(ctx.model_path(f"seed {seed_name}"))["model"])
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    weights = torch.tensor(w, dtype=x.dtype, device=x.device)
    state = ctx.load_state(unit)
    step, seconds, snaps = 0, 0.0, []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, seconds, snaps = state["step"], state["seconds"], state["snapshots"]
    t0 = time.perf_counter()
    while step < steps:
        epoch, pos = divmod(step, per_epoch)
        gen = torch.Generator().manual_seed(ctx.seed * 2_000_003 + epoch)
        order = torch.randperm(n, generator=gen).to(x.device)
        idx = order[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
        opt.zero_grad(set_to_none=True)
        (weights @ _losses(model, x[idx], y[idx])).backward()
        opt.step()
        step += 1
        if step in marks:
            snaps.append({"step": step, "test_loss": _evaluate(model, *test)["loss"]})
            ctx.save_state(unit, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                                  "seconds": seconds + time.perf_counter() - t0, "snapshots": snaps})
    seconds += time.perf_counter() - t0
    result = {"weights": w, "lr": lr, "steps": steps, "image_evaluations": seen, "snapshots": snaps}
    ctx.record(unit, result, seconds, seen)
    return result


# ---- the experiment ---------------------------------------------------------------------------------


def _check(cfg: Config) -> None:
    if cfg.data not in DATA_SETS:
        raise ValueError(f"data must be one of {DATA_SETS}, got {cfg.data!r}.")
    if cfg.seed_optimizer not in ("adam", "sgd"):
        raise ValueError(f"seed_optimizer must be 'adam' or 'sgd', got {cfg.seed_optimizer!r}.")
    names = _seed_names(cfg)
    if not names:
        raise ValueError("no seed: give seed_weights or mgda_seed=True.")
    if any(not 0.0 <= w <= 1.0 for w in cfg.seed_weights):
        raise ValueError(f"seed_weights must lie in [0, 1], got {cfg.seed_weights}.")
    check_unique_units(names, f"seed_weights must differ in their first 6 significant digits, got {cfg.seed_weights}.")
    if not 0 <= cfg.ws_from < len(names):
        raise ValueError(f"ws_from={cfg.ws_from} is not the index of a seed (0..{len(names) - 1}).")
    for name in ("seed_epochs", "batch_size", "k", "num_children", "hessian_images", "ws_snapshots",
                 "front_resolution"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}.")
    # the explorer's settings, checked before the seeds are trained rather than after
    for name in ("num_points", "optimize_steps"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}.")
    if cfg.rhs not in RHS_SAMPLERS:
        raise ValueError(f"rhs must be one of {RHS_SAMPLERS}, got {cfg.rhs!r}.")
    for name in ("step", "seed_lr"):
        if not (math.isfinite(getattr(cfg, name)) and getattr(cfg, name) > 0):
            raise ValueError(f"{name} must be a positive number, got {getattr(cfg, name)}.")
    if not math.isfinite(cfg.shift):
        raise ValueError(f"shift must be finite, got {cfg.shift}.")
    if any(not (math.isfinite(lr) and lr > 0) for lr in cfg.ws_lrs):
        raise ValueError(f"ws_lrs must be positive numbers, got {cfg.ws_lrs}.")
    if any(len(w) != 2 for w in cfg.ws_weights):
        raise ValueError(f"ws_weights must be pairs of task weights, got {cfg.ws_weights}.")
    check_unique_units([_ws_unit(w, lr) for w in cfg.ws_weights for lr in cfg.ws_lrs],
                       f"ws_weights and ws_lrs must not repeat a pair, got {cfg.ws_weights} and {cfg.ws_lrs}.")


def run(cfg: Config, ctx: RunContext) -> Dict[str, Any]:
    _check(cfg)
    train, test = _load(cfg, ctx.seed)
    train = tuple(t.to(ctx.device) for t in train)
    test = tuple(t.to(ctx.device) for t in test)
    model = tm.zoo.models.MultiLeNet(num_tasks=2, image_size=train[0].shape[-1]).to(ctx.device)
    names = _seed_names(cfg)
    seeds, expansions = {}, {}
    for name in names:
        unit = f"seed {name}"
        seeds[name] = ctx.result(unit) if ctx.done(unit) else _train_seed(name, cfg, ctx, model, train, test)
    for name in names:
        unit = f"expand {name}"
        expansions[name] = ctx.result(unit) if ctx.done(unit) else _expand(name, cfg, ctx, model, train, test)
    budget = expansions[names[cfg.ws_from]]["image_evaluations"]
    ws = {}
    for w in cfg.ws_weights:
        for lr in cfg.ws_lrs:
            unit = _ws_unit(w, lr)
            ws[unit] = ctx.result(unit) if ctx.done(unit) else _weighted_sum(unit, w, lr, budget, cfg, ctx, model,
                                                                              train, test)

    # continuous front of all families, on the test losses
    objectives, hobj, test_obj, _, _ = _closures(cfg, ctx, model, train, test)
    explorers = []
    for name in names:
        ex = _explorer(cfg, ctx, model, objectives, hobj, f"expand {name}")
        ex.load_state_dict(storage.load_checkpoint(ctx.model_path(f"expand {name}"))["explorer"])
        explorers.append(ex)
    front = stitch(explorers, objectives=test_obj, resolution=cfg.front_resolution)
    ref = [CHANCE_LOSS, CHANCE_LOSS]
    n = train[0].shape[0]
    seed_losses = torch.tensor([seeds[s]["test"]["loss"] for s in names], dtype=torch.float64)
    all_points = torch.tensor([l for s in names for l in expansions[s]["test_losses"]], dtype=torch.float64)
    table = []
    for name in names:
        e = expansions[name]
        ev = e["evaluations"]
        table.append({
            "seed": name,
            "train (epochs)": seeds[name]["train_image_evaluations"] / n,
            "HV": e["hv_seed"],
            "expand (epochs)": e["image_evaluations"] / n,
            "#f / #grad / #HVP": f"{ev['expand']['f'] + ev['optimize']['f']} / "
                                 f"{ev['expand']['grad'] + ev['optimize']['grad']} / {ev['expand']['hvp']}",
            "new HV": e["hv_expanded"],
            "new points": len(e["test_losses"]) - 1,
            "seed stationarity": e["seed_stationarity"],
        })
    ws_from = names[cfg.ws_from]
    ours = torch.tensor(expansions[ws_from]["test_losses"], dtype=torch.float64)
    necessity = []
    for unit, r in ws.items():
        snaps = torch.tensor([s["test_loss"] for s in r["snapshots"]], dtype=torch.float64)
        pts = torch.cat([ours[:1], snaps])
        dominated = sum(any(bool((o <= s).all() and (o < s).any()) for o in ours) for s in snaps)
        necessity.append({"method": unit, "HV": tm.metrics.hypervolume(pts, ref),
                          "snapshots dominated by the expansion": f"{dominated} / {len(snaps)}",
                          "budget (epochs)": r["image_evaluations"] / n})
    necessity.insert(0, {"method": f"expansion from {ws_from}", "HV": tm.metrics.hypervolume(ours, ref),
                         "snapshots dominated by the expansion": "", "budget (epochs)": budget / n})
    figure = _plot(cfg, ctx, names, seeds, expansions, ws, ws_from, front, explorers)
    return {
        "table": table,
        "necessity": necessity,
        "hypervolume of the seeds (test, ref = chance loss)": tm.metrics.hypervolume(seed_losses, ref),
        "hypervolume after expansion (seeds + explored points)": tm.metrics.hypervolume(all_points, ref),
        "hypervolume of the continuous front": front.hypervolume(ref),
        "continuous front: samples kept / total": f"{len(front)} / {front.values.shape[0]}",
        "continuous front: stitching points": front.num_stitches,
        "t of the seeds on the front": [front.point_t(0, i) for i in range(len(names))],
        "figure": str(figure),
    }


def _plot(cfg, ctx, names, seeds, expansions, ws, ws_from, front, explorers):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from torchmoo.methods.continuous_front import plot_exploration

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    ax = axes[0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(names):
        e = expansions[name]
        P = torch.tensor(e["test_losses"])
        for j, parent in enumerate(e["parents"][1:], start=1):
            ax.plot([P[parent, 0], P[j, 0]], [P[parent, 1], P[j, 1]], color=colors[i % len(colors)], lw=0.8)
        ax.scatter(P[1:, 0], P[1:, 1], s=18, color=colors[i % len(colors)])
        ax.scatter(P[:1, 0], P[:1, 1], marker="s", s=60, color=colors[i % len(colors)], edgecolors="k", label=name)
    ax.set_title("sufficiency: expansion from each seed (test)")
    ax.set_xlabel("test loss, task 1")
    ax.set_ylabel("test loss, task 2")
    ax.legend(fontsize=7)
    ax = axes[1]
    ours = torch.tensor(expansions[ws_from]["test_losses"])
    ax.scatter(ours[1:, 0], ours[1:, 1], s=18, c="tab:orange", label="ours (tangent expansion)", zorder=3)
    for j, parent in enumerate(expansions[ws_from]["parents"][1:], start=1):
        ax.plot([ours[parent, 0], ours[j, 0]], [ours[parent, 1], ours[j, 1]], c="tab:orange", lw=0.8)
    for k, (unit, r) in enumerate(ws.items()):
        S = torch.tensor([ours[0].tolist()] + [s["test_loss"] for s in r["snapshots"]])
        ax.plot(S[:, 0], S[:, 1], marker=".", lw=0.8, color=colors[(k + 1) % len(colors)],
                label=f"SGD {r['weights'][0]:g}/{r['lr']:g}")
    ax.scatter(ours[:1, 0], ours[:1, 1], marker="*", s=120, c="red", edgecolors="k", label=f"start ({ws_from})",
               zorder=4)
    ax.set_title("necessity: same budget (test)")
    ax.set_xlabel("test loss, task 1")
    ax.set_ylabel("test loss, task 2")
    ax.legend(fontsize=7)
    plot_exploration(explorers, front, ax=axes[2], labels=("test loss, task 1", "test loss, task 2"))
    axes[2].set_title("continuous front, t in [-1, 1] (stitched)")
    return ctx.save_figure(fig, "front")


EXPERIMENT = register(
    Experiment(
        name="pareto-multidigits",
        description="multi-task LeNet: Pareto expansion (MINRES k=50) from seeds, vs WeightedSum; continuous front",
        config=Config,
        full=full,
        run=run,
    )
)
