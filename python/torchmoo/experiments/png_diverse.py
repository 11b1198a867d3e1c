r"""``png-diverse-multidigits`` and ``png-ablation-multidigits``: diverse Pareto models (Ye & Liu, 5.2, C.2).

``N = 5`` two-head LeNets approximate the Pareto front of the two digit-classification tasks:

* ``linear``: linear scalarization, model ``k`` with the ``k``-th of ``N`` equally spread preferences
  (EPO's ``circle_points``: angles from ~0 to ~pi/2, weights normalized to sum 1);
* ``mgda``: linear scalarization for the first 60 % of the epochs, then MGDA (the paper's protocol: MGDA
  alone does not diversify);
* ``epo``: EPO toward the ratio preference ``r_k`` (the same vectors; :class:`torchmoo.methods.EPO`);
* ``png``: the ``N`` models trained jointly by PNG with the energy-distance criterion (Eq. 6), one
  batched dual problem per step, ``alpha = 0.5``, ``gamma = 0.1``.

Every method sees the same ``N`` initializations and the same mini-batches; each model's Jacobian
covers all its parameters (both heads included). As in appendix C.2.1, the approximation of the front
is the set of every model's test (losses, accuracies) at every epoch from 60 % of the training on.
Metrics (appendix C.2.2): hypervolume of the test losses (reference ``loss_ref`` per task; the paper's
0.6) and of the accuracies (maximized, reference ``acc_ref``; the paper's 0.6), and IGD+ against the
non-dominated union of all methods' sets (same data set and seed). Mean and standard deviation over
``seeds`` seeds (``seed, seed + 1, ...``). ``png-ablation-multidigits`` runs PNG alone for
``alpha in {0.25, 0.5, 0.75}`` (``gamma = 0.1``) and ``gamma in {0.01, 0.1, 0.25}`` (``alpha = 0.5``), Table 4.

Data: the embedded MultiDigits by default (28 x 28 pairs of scikit-learn digits); ``datasets`` may name
``multimnist``, ``multifashion`` and ``multifashion+mnist``, built from the IDX files in
``$TORCHMOO_MNIST_DIR`` / ``$TORCHMOO_FASHION_MNIST_DIR`` (``full()`` uses those whose folder is set).
The default reference points are the paper's 0.6 on those data sets and chance level (``ln 10`` for
losses, 0.1 for accuracies) on MultiDigits, whose small runs do not reach 0.6.

Measured with the small default (``torchmoo run png-diverse-multidigits``: MultiDigits, 768 training
pairs, 359 test pairs, 4 epochs, batch 32, Adam 2e-3, 2 seeds, about 40 s on 2 CPU cores; mean +- std over
the 2 seeds, x 1e-2; references ``ln 10`` for losses and 0.1 for accuracies):

======  ===============  ==============  ==============  =============
method  HV loss          IGD+ loss       HV acc          IGD+ acc
======  ===============  ==============  ==============  =============
linear  69.1 +- 17.7     4.03 +- 0.77    15.2 +- 2.5     2.06 +- 0.86
mgda    71.2 +- 15.3     3.72 +- 0.57    15.8 +- 1.9     2.37 +- 0.32
epo     53.0 +- 3.5      15.0 +- 3.4     13.1 +- 0.1     4.48 +- 1.52
png     67.9 +- 11.9     9.5 +- 2.9      15.9 +- 2.1     3.46 +- 0.47
======  ===============  ==============  ==============  =============

``png-ablation-multidigits`` (same size, 1 seed), HV loss / IGD+ loss: alpha 0.25 / 0.5 / 0.75 at
gamma 0.1: 62.5 / 76.3 / 75.5 and 16.8 / 9.5 / 7.9; gamma 0.01 / 0.25 at alpha 0.5: 76.3 / 71.5 and
9.5 / 8.7 (gamma 0.01 and 0.1 are the same run: the control stayed on at every step). The ablation's
IGD+ is measured against the union of its own runs (PNG alone), so it is not on the scale of the table
above, whose reference is the union of all four methods' sets.

The paper's Table 1 (MultiMNIST, 100 epochs on 120k pairs, reference 0.6): HV loss 7.48 / 7.69 / 7.87
/ 7.86 and IGD+ loss 0.14 / 0.051 / 0.069 / 0.042 (x 1e-2) for linear / MGD / EPO / PNG, PNG best or
tied on every data set; its Table 4 finds PNG insensitive to ``alpha`` and ``gamma``. What differs here:

* scale: 4 epochs on 768 pairs leave every model far from the front (test losses 1-2 against about
  0.3 in the paper), so the metrics measure mostly how fast each method descends; the standard
  deviations over 2 seeds are of the order of the differences between methods. ``--full`` runs the
  paper's protocol (on MultiMNIST and variants when their IDX folders are set; they are 60,000 28 x 28
  training pairs built as Ma et al.'s, not the 120,000 36 x 36 pairs of Lin et al.'s files);
* the energy criterion at a common start: the ``N`` models begin with nearly equal losses, so
  :math:`\nabla F` is of order :math:`d^{-3}` and dominates every step; with Adam (the paper's
  optimizer, which rescales each coordinate, so the guarantee :math:`\langle\nabla\ell_i, v\rangle
  \ge \phi` does not carry over to the update) the losses then *rose* above chance level in our runs
  (HV loss 0.24 x 1e-2 against 85 for linear scalarization, 1,438 pairs, 3 epochs). We therefore run PNG with ``criterion_clip = 1`` (:class:`~torchmoo.methods.PNG`:
  :math:`\|\nabla F\|^2` at most the mean squared task-gradient norm), which keeps Assumption 1's
  bounded :math:`\nabla F`; ``criterion_clip=None`` in the config reproduces the unclipped run. The
  paper does not say how it handled this;
* EPO follows the authors' LP; in short runs its balancing steps cost descent (it is the slowest here).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

import torchmoo as tm
from torchmoo.experiments.runner import Experiment, RunContext, check_unique_units, register

METHODS = ("linear", "mgda", "epo", "png")
DATASETS = ("multidigits", "multimnist", "multifashion", "multifashion+mnist")
_ENV = {"multimnist": ("TORCHMOO_MNIST_DIR",), "multifashion": ("TORCHMOO_FASHION_MNIST_DIR",),
        "multifashion+mnist": ("TORCHMOO_MNIST_DIR", "TORCHMOO_FASHION_MNIST_DIR")}


@dataclass
class Config:
    """Small default (under a minute on 2 idle CPU cores); :func:`full` is the paper's setting."""

    datasets: List[str] = field(default_factory=lambda: ["multidigits"])
    methods: List[str] = field(default_factory=lambda: list(METHODS))
    num_models: int = 5
    seeds: int = 2
    epochs: int = 4
    collect_from: float = 0.6  # fraction of the epochs after which every epoch's models are collected
    mgda_switch: float = 0.6  # MGDA takes over from linear scalarization after this fraction of the epochs
    batch_size: int = 32
    lr: float = 2e-3  # Adam
    train_images: Optional[int] = 768  # None: the whole training split
    test_images: Optional[int] = 359
    alpha: float = 0.5
    gamma: float = 0.1
    decay: float = 0.9
    criterion_clip: Optional[float] = 1.0  # see PNG(criterion_clip=); None: the energy gradient as it is
    loss_ref: Optional[float] = None  # None: 0.6 on the MNIST family, ln 10 on MultiDigits
    acc_ref: Optional[float] = None  # None: 0.6 on the MNIST family, 0.1 on MultiDigits


def _available_paper_datasets() -> List[str]:
    return [d for d in DATASETS[1:] if all(os.environ.get(v) for v in _ENV[d])]


def full() -> Config:
    """Appendix C.2.1: 100 epochs, Adam 1e-3, batch 256, 5 seeds, every training image; the MNIST family
    where its folders are set (``$TORCHMOO_MNIST_DIR``, ``$TORCHMOO_FASHION_MNIST_DIR``), else MultiDigits
    with 20,000 training and 4,000 test pairs on the same schedule (60 epochs of linear scalarization before
    MGDA, the front collected from epoch 60 on)."""
    paper = _available_paper_datasets()
    if paper:
        return Config(datasets=paper, seeds=5, epochs=100, batch_size=256, lr=1e-3, train_images=None,
                      test_images=None)
    return Config(seeds=5, epochs=100, batch_size=256, lr=1e-3, train_images=20000, test_images=4000)


@dataclass
class AblationConfig(Config):
    """PNG alone over ``(alpha, gamma)`` pairs (Table 4); small default: 1 seed."""

    methods: List[str] = field(default_factory=lambda: ["png"])
    seeds: int = 1
    settings: List[List[float]] = field(default_factory=lambda: [
        [0.25, 0.1], [0.5, 0.1], [0.75, 0.1], [0.5, 0.01], [0.5, 0.25]])


def ablation_full() -> AblationConfig:
    base = full()
    return AblationConfig(**{**base.__dict__, "methods": ["png"]})


# ---- data and references -------------------------------------------------------------------------------


def _references(dataset: str, cfg: Config) -> Tuple[float, float]:
    if dataset == "multidigits":
        loss_ref, acc_ref = math.log(10.0), 0.1
    else:
        loss_ref, acc_ref = 0.6, 0.6
    return (cfg.loss_ref if cfg.loss_ref is not None else loss_ref,
            cfg.acc_ref if cfg.acc_ref is not None else acc_ref)


def _subset(x: torch.Tensor, y: torch.Tensor, n: Optional[int], seed: int):
    if n is None or n >= x.shape[0]:
        return x, y
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def load_data(dataset: str, cfg: Config, seed: int, device: torch.device):
    """``((x_train, y_train), (x_test, y_test))`` on ``device``."""
    d = tm.zoo.data
    if dataset == "multidigits":
        train = d.MultiDigits("train", seed=seed, num_images=cfg.train_images)
        test = d.MultiDigits("test", seed=seed, num_images=cfg.test_images)
    elif dataset == "multimnist":
        train, test = d.MultiMNIST(split="train", seed=seed), d.MultiMNIST(split="test", seed=seed)
    elif dataset == "multifashion":
        train, test = d.MultiFashion(split="train", seed=seed), d.MultiFashion(split="test", seed=seed)
    elif dataset == "multifashion+mnist":
        train, test = d.MultiFashionMNIST(split="train", seed=seed), d.MultiFashionMNIST(split="test", seed=seed)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; known: {list(DATASETS)}.")
    xtr, ytr = _subset(*train.tensors(), cfg.train_images, seed)
    xte, yte = _subset(*test.tensors(), cfg.test_images, seed + 1)
    return (xtr.to(device), ytr.to(device)), (xte.to(device), yte.to(device))


def preferences(n: int) -> torch.Tensor:
    """EPO's ``circle_points``: ``(cos a, sin a)`` for ``n`` angles from ``1e-4 pi/2`` to ``0.9999 pi/2``,
    reversed, as ``(n, 2)`` float64: row 0 is about ``(0, 1)`` (all the weight on task 2), the last row
    about ``(1, 0)``."""
    a = torch.linspace(0.0001 * math.pi / 2, 0.9999 * math.pi / 2, n, dtype=torch.float64)
    return torch.stack((torch.cos(a), torch.sin(a)), 1).flip(0)


# ---- training ----------------------------------------------------------------------------------------------


def _losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> List[torch.Tensor]:
    return [F.cross_entropy(out, y[:, i]) for i, out in enumerate(model(x))]


@torch.no_grad()
def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> Tuple[List[float], List[float]]:
    model.eval()
    loss = torch.zeros(2, dtype=torch.float64)
    correct = torch.zeros(2, dtype=torch.float64)
    for k in range(0, x.shape[0], chunk):
        outs = model(x[k : k + chunk])
        for i, o in enumerate(outs):
            loss[i] += float(F.cross_entropy(o, y[k : k + chunk, i], reduction="sum"))
            correct[i] += float((o.argmax(1) == y[k : k + chunk, i]).sum())
    model.train()
    n = x.shape[0]
    return (loss / n).tolist(), (correct / n).tolist()


def train_unit(unit: str, method: str, cfg: Config, ctx: RunContext, data, seed: int, *,
               alpha: Optional[float] = None, gamma: Optional[float] = None) -> Dict[str, Any]:
    """Trains the ``N`` models of one method; checkpoints every epoch; returns the collected evaluations."""
    (x_train, y_train), (x_test, y_test) = data
    N = cfg.num_models
    models = []
    # model k starts from the same weights in every method; seeded under a fork, which leaves the caller's
    # random streams as they were
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        for k in range(N):
            torch.manual_seed(seed * 1000 + k)
            models.append(tm.zoo.models.MultiLeNet(num_tasks=2, image_size=x_train.shape[-1]).to(ctx.device))
    params = [p for m in models for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    pref = preferences(N)
    weights = pref / pref.sum(1, keepdim=True)
    linear = [tm.methods.LinearScalarization(weights[k].tolist()) for k in range(N)]
    mgda = tm.methods.MGDA()
    epo = [tm.methods.EPO(pref[k]) for k in range(N)]
    png = tm.methods.PNG(tm.methods.EnergyDistance(), alpha=cfg.alpha if alpha is None else alpha,
                         gamma=cfg.gamma if gamma is None else gamma, decay=cfg.decay,
                         criterion_clip=cfg.criterion_clip)
    switch = math.ceil(cfg.mgda_switch * cfg.epochs)
    collect = min(math.floor(cfg.collect_from * cfg.epochs), cfg.epochs - 1)  # 0-based first collected epoch

    state = ctx.load_state(unit)
    start, collected, steps, seconds, control = 0, [], 0, 0.0, 0
    if state is not None:
        for m, sd in zip(models, state["models"]):
            m.load_state_dict(sd)
        opt.load_state_dict(state["optimizer"])
        png.load_state_dict(state["png"])
        start, collected, steps, seconds = state["epoch"], state["collected"], state["steps"], state["seconds"]
        control = state["control"]
    n = x_train.shape[0]
    for epoch in ctx.progress(range(start, cfg.epochs), desc=unit, total=cfg.epochs, initial=start):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # the same batches for every method
        order = torch.randperm(n, generator=gen).to(ctx.device)
        for b in range(0, n, cfg.batch_size):
            idx = order[b : b + cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            opt.zero_grad(set_to_none=True)
            if method == "png":
                # one closure per model: each model's gradients follow its own forward pass
                png.backward([lambda m=m: _losses(m, xb, yb) for m in models], models)
                control += int(png.stats.control.sum())
            else:
                losses = [_losses(m, xb, yb) for m in models]
                for k, m in enumerate(models):
                    if method == "linear" or (method == "mgda" and epoch < switch):
                        agg = linear[k]
                    elif method == "mgda":
                        agg = mgda
                    else:
                        agg = epo[k]
                    tm.backward(losses[k], m.parameters(), agg)
            opt.step()
            steps += 1
        if epoch >= collect:
            for k, m in enumerate(models):
                loss, acc = _evaluate(m, x_test, y_test)
                collected.append({"epoch": epoch + 1, "model": k, "loss": loss, "accuracy": acc})
        seconds += time.perf_counter() - t0
        ctx.save_state(unit, {
            "models": [m.state_dict() for m in models], "optimizer": opt.state_dict(), "png": png.state_dict(),
            "epoch": epoch + 1, "collected": collected, "steps": steps, "seconds": seconds, "control": control,
        })
    result = {"method": method, "collected": collected, "steps": steps,
              "final": [c for c in collected if c["epoch"] == cfg.epochs]}
    if method == "png":
        result["control_on_fraction"] = control / max(1, steps * N)
        result["alpha"], result["gamma"] = png.alpha, png.gamma
    ctx.record(unit, result, seconds=seconds, evaluations=steps * N * 2)
    return result


# ---- metrics ------------------------------------------------------------------------------------------------


def _points(result: Dict[str, Any], key: str) -> torch.Tensor:
    return torch.tensor([c[key] for c in result["collected"]], dtype=torch.float64)


def unit_metrics(results: Dict[str, Dict[str, Any]], loss_ref: float, acc_ref: float) -> Dict[str, Dict[str, float]]:
    """HV and IGD+ (losses and accuracies) of each method's collected set; IGD+ against the
    non-dominated union of all the given methods."""
    losses = {u: _points(r, "loss") for u, r in results.items()}
    accs = {u: _points(r, "accuracy") for u, r in results.items()}
    ref_loss = tm.metrics.nondominated(torch.cat(list(losses.values())))
    ref_acc = tm.metrics.nondominated(torch.cat(list(accs.values())), maximize=True)
    out = {}
    for u in results:
        out[u] = {
            "hv_loss": tm.metrics.hypervolume(losses[u], [loss_ref, loss_ref]),
            "igd_loss": tm.metrics.igd_plus(losses[u], ref_loss),
            "hv_acc": tm.metrics.hypervolume(accs[u], [acc_ref, acc_ref], maximize=True),
            "igd_acc": tm.metrics.igd_plus(accs[u], ref_acc, maximize=True),
        }
    return out


def _mean_std(values: List[float]) -> Tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _summarize(labels: List[str], per_seed: List[Dict[str, Dict[str, float]]], dataset: str,
               timings: Dict[str, float]) -> List[Dict[str, Any]]:
    rows = []
    for label in labels:
        row: Dict[str, Any] = {"dataset": dataset, "method": label}
        for key, name in (("hv_loss", "HV loss x1e-2"), ("igd_loss", "IGD+ loss x1e-2"),
                          ("hv_acc", "HV acc x1e-2"), ("igd_acc", "IGD+ acc x1e-2")):
            mean, std = _mean_std([100.0 * s[label][key] for s in per_seed])
            row[name] = f"{mean:.3f} +- {std:.3f}"
        row["seconds"] = timings.get(label, 0.0)
        rows.append(row)
    return rows


def mean_std_table(per_seed: List[Dict[str, Dict[str, float]]]) -> Dict[str, Dict[str, List[float]]]:
    """``{label: {metric: [mean, std]}}`` over the seeds (raw values, not scaled)."""
    labels = list(per_seed[0])
    keys = list(per_seed[0][labels[0]])
    return {lab: {k: list(_mean_std([s[lab][k] for s in per_seed])) for k in keys} for lab in labels}


def _check(cfg: Config, methods_known: Tuple[str, ...]) -> None:
    bad = [m for m in cfg.methods if m not in methods_known]
    if not cfg.methods or bad:
        raise ValueError(f"methods must be a non-empty subset of {list(methods_known)}, got {cfg.methods}.")
    bad = [d for d in cfg.datasets if d not in DATASETS]
    if not cfg.datasets or bad:
        raise ValueError(f"datasets must be a non-empty subset of {list(DATASETS)}, got {cfg.datasets}.")
    if cfg.num_models < 2:
        raise ValueError(f"num_models must be at least 2 (the energy distance compares models), got {cfg.num_models}.")
    if cfg.seeds < 1 or cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"seeds, epochs and batch_size must be >= 1, got {cfg.seeds}, {cfg.epochs} and "
                         f"{cfg.batch_size}.")
    if not 0.0 < cfg.lr < math.inf:
        raise ValueError(f"lr must be a positive finite number, got {cfg.lr}.")
    # the MNIST family's folders, before the units of an earlier data set train
    for d in cfg.datasets:
        missing = [v for v in _ENV.get(d, ()) if not os.environ.get(v, "").strip()]
        if missing:
            raise ValueError(f"data set {d!r} is built from IDX files that are not shipped with torchmoo: "
                             f"set {' and '.join(missing)} to the folder that holds them.")


def run(cfg: Config, ctx: RunContext) -> Dict[str, Any]:
    _check(cfg, METHODS)
    table, details = [], {}
    for dataset in cfg.datasets:
        loss_ref, acc_ref = _references(dataset, cfg)
        per_seed, timings = [], {m: 0.0 for m in cfg.methods}
        for s in range(cfg.seeds):
            seed = ctx.seed + s
            data = None
            results = {}
            for method in cfg.methods:
                unit = f"{dataset} seed={seed} {method}"
                if ctx.done(unit):
                    results[method] = ctx.result(unit)
                else:
                    data = data or load_data(dataset, cfg, seed, ctx.device)
                    results[method] = train_unit(unit, method, cfg, ctx, data, seed)
                timings[method] += ctx.results["timings"][unit]
            per_seed.append(unit_metrics(results, loss_ref, acc_ref))
            if s == 0:
                _plot(results, dataset, seed, ctx, loss_ref)
        table += _summarize(list(cfg.methods), per_seed, dataset, timings)
        details[dataset] = {"references": {"loss": loss_ref, "accuracy": acc_ref}, "per_seed": per_seed,
                            "mean_std": mean_std_table(per_seed)}
    return {"table": table, "details": details}


def run_ablation(cfg: AblationConfig, ctx: RunContext) -> Dict[str, Any]:
    _check(cfg, ("png",))
    if not cfg.settings or any(len(s) != 2 for s in cfg.settings):
        raise ValueError(f"settings must be a non-empty list of [alpha, gamma] pairs, got {cfg.settings}.")
    for a, g in cfg.settings:  # PNG's own checks, before the first setting trains
        tm.methods.PNG(None, alpha=a, gamma=g, decay=cfg.decay, criterion_clip=cfg.criterion_clip)
    labels = [f"alpha={a:g} gamma={g:g}" for a, g in cfg.settings]
    check_unique_units(labels, f"settings must differ in their first 6 significant digits, got {cfg.settings}.")
    table, details = [], {}
    for dataset in cfg.datasets:
        loss_ref, acc_ref = _references(dataset, cfg)
        per_seed, timings = [], {lab: 0.0 for lab in labels}
        for s in range(cfg.seeds):
            seed = ctx.seed + s
            data = None
            results = {}
            for label, (a, g) in zip(labels, cfg.settings):
                unit = f"{dataset} seed={seed} png {label}"
                if ctx.done(unit):
                    results[label] = ctx.result(unit)
                else:
                    data = data or load_data(dataset, cfg, seed, ctx.device)
                    results[label] = train_unit(unit, "png", cfg, ctx, data, seed, alpha=a, gamma=g)
                timings[label] += ctx.results["timings"][unit]
            per_seed.append(unit_metrics(results, loss_ref, acc_ref))
        table += _summarize(labels, per_seed, dataset, timings)
        details[dataset] = {"references": {"loss": loss_ref, "accuracy": acc_ref}, "per_seed": per_seed,
                            "mean_std": mean_std_table(per_seed)}
    return {"table": table, "details": details}


def _plot(results: Dict[str, Dict[str, Any]], dataset: str, seed: int, ctx: RunContext, loss_ref: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    markers = {"linear": "o", "mgda": "s", "epo": "^", "png": "*"}
    for method, res in results.items():
        pts = _points(res, "loss")
        final = torch.tensor([c["loss"] for c in res["final"]], dtype=torch.float64)
        ax.scatter(pts[:, 0], pts[:, 1], s=10, alpha=0.35, marker=markers.get(method, "o"))
        ax.scatter(final[:, 0], final[:, 1], s=70, marker=markers.get(method, "o"), label=f"{method} (final)",
                   edgecolor="k")
    ax.set_xlabel("test loss, task 1 (upper-left)")
    ax.set_ylabel("test loss, task 2 (lower-right)")
    ax.set_title(f"{dataset}, seed {seed}: collected models (small) and final models")
    ax.legend(fontsize=7)
    ctx.save_figure(fig, f"front-{dataset.replace('+', '-')}")


EXPERIMENT = register(
    Experiment(
        name="png-diverse-multidigits",
        description="N = 5 LeNets: PNG with the energy distance vs linear scalarization, MGDA and EPO (HV, IGD+)",
        config=Config,
        full=full,
        run=run,
    )
)
EXPERIMENT_ABLATION = register(
    Experiment(
        name="png-ablation-multidigits",
        description="PNG with the energy distance over alpha in {0.25, 0.5, 0.75} and gamma in {0.01, 0.1, 0.25}",
        config=AblationConfig,
        full=ablation_full,
        run=run_ablation,
    )
)
