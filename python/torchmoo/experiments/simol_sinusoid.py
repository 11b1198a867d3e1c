"""``simol-sinusoid``: few-shot sinusoid regression (SIMOL 5.1, Table 1), MAML vs mini-batch MOO vs SIMOL.

Tasks ``y = a sin(x + b)``, ``a ~ U[0.1, 5]``, ``b ~ U[0, pi]``; the 1-32-32-1 ReLU meta-learner
(:class:`~torchmoo.zoo.models.SinusoidMLP`) adapted by MAML (Eq. 15) on ``K`` support points and
scored on the query points. Every method sees the same task mini-batches from the same
initialization; the outer loop differs only in how the ``B`` per-task meta-gradients are combined:
the mean (MAML), mini-batch MGDA / CAGrad / PCGrad / improvement function, or SIMOL (weights from a
1-32-32-1 reweighting network whose input is all the points of a task, square of the last layer).

Reported per method and shot count: the MSE over the meta-test tasks and the worst-10% MSE (mean
over the 10% worst tasks), each with a 95% confidence interval (1.96 standard errors over tasks,
pooled over seeds), beside the paper's Table 1, and the convergence curve (figure 2 of the paper).
Units (one method, shot count and seed) are recorded as they finish and checkpoint themselves at every
evaluation (``eval_every`` steps), so an interrupted run resumes with the same numbers.

Measured (``torchmoo run simol-sinusoid``, seed 0, 5-shot, 400 outer steps, 1,000 test tasks, 2-vCPU
Intel Xeon VM, 2026-11-30; MSE and worst-10% MSE with 95% intervals; paper's Table 1 after 160,000 tasks):

==========================  ============  ===============  =========  ================
method                      MSE           worst-10% MSE    paper MSE  paper worst-10%
==========================  ============  ===============  =========  ================
MAML                        1.73 ± 0.10   5.36 ± 0.31      0.43       2.13
mini-batch MGDA             1.45 ± 0.11   5.65 ± 0.38      0.60       2.62
mini-batch CAGrad           1.65 ± 0.10   5.18 ± 0.37      1.90       8.18
mini-batch PCGrad           1.47 ± 0.09   4.83 ± 0.29      1.89       6.64
mini-batch improvement fn   1.45 ± 0.11   5.65 ± 0.38      0.69       2.63
SIMOL                       1.81 ± 0.10   5.66 ± 0.27      0.34       1.69
==========================  ============  ===============  =========  ================

Depth ablation (2-shot, same budget): SIMOL with 2 hidden layers MSE 2.30 ± 0.14, worst-10% 7.65 ± 0.38;
with 3: 2.30 ± 0.15, 7.96 ± 0.40 (paper: 1.24 / 5.66 and 1.36 / 6.01). At 4% of the paper's training every
method is far from converged and the methods lie within two or three standard errors of each other; the
README lists the other reasons for the differences.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F

import torchmoo as tm
from torchmoo.experiments.runner import Experiment, RunContext, register

METHODS = ("maml", "mgda", "cagrad", "pcgrad", "improvement", "simol")

# Table 1 of the paper: (overall, worst-10%) MSE for 5-shot and 2-shot.
PAPER = {
    "maml": {5: (0.43, 2.13), 2: (1.70, 7.75)},
    "mgda": {5: (0.60, 2.62), 2: (1.73, 7.04)},
    "cagrad": {5: (1.90, 8.18), 2: (1.82, 8.23)},
    "pcgrad": {5: (1.89, 6.64), 2: (1.80, 7.73)},
    "improvement": {5: (0.69, 2.63), 2: (1.79, 8.23)},
    "simol": {5: (0.34, 1.69), 2: (1.24, 5.66)},
}


# Table 5 of the paper: SIMOL, 2-shot, (overall, worst-10%) MSE by number of hidden layers.
PAPER_TABLE5 = {2: (1.24, 5.66), 3: (1.36, 6.01), 4: (1.42, 6.22)}


@dataclass
class Config:
    """Small default (about a minute on 2 CPU cores); :func:`full` is the paper's setting."""

    shots: List[int] = field(default_factory=lambda: [5])
    methods: List[str] = field(default_factory=lambda: list(METHODS))
    seeds: int = 1
    meta_steps: int = 400  # x meta_batch tasks = meta-training tasks seen (the paper: 10,000 x 16 = 160,000)
    meta_batch: int = 16
    num_query: int = 10
    inner_lr: float = 0.01
    inner_steps: int = 1  # the paper (5.1): 5 inner steps of learning rate 0.01, see full()
    outer_lr: float = 3e-3  # Adam; the paper: 1e-3 over 160,000 tasks
    simol_lambda1: float = 10.0  # selected on validation tasks (seed 100) among {0.1, 1, 10}
    simol_lambda2: float = 1.0
    simol_lr: float = 1e-3  # Adam on the reweighting network
    simol_theta_at: str = "next"  # Algorithm 1: gradients for the ascent on theta at w^{s+1}
    improvement_lambda: float = 1.0
    cagrad_c: float = 0.4
    test_tasks: int = 1000
    eval_every: int = 100
    threads: int = 1  # tiny per-task work: one thread avoids oversubscription
    # Table 5: SIMOL with this many hidden layers of 32 (2 is the network above) on ablation_shots-shot tasks,
    # all with meta_steps steps, seed ctx.seed; [] skips the ablation.
    ablation_layers: List[int] = field(default_factory=lambda: [2, 3])
    ablation_shots: int = 2


def full() -> Config:
    """The paper's sizes: 160,000 meta-training tasks (10,000 steps of 16), 5 and 2 shots, 3 seeds, 5 inner
    steps of 0.01 (5.1; the paper's inner optimizer is Adam, here the SGD steps of Eq. 15)."""
    return Config(shots=[5, 2], seeds=3, meta_steps=10_000, inner_steps=5, outer_lr=1e-3, eval_every=500,
                  ablation_layers=[2, 3, 4])


def _stack(ds: tm.zoo.data.SinusoidTasks, idx: range, device: torch.device) -> Tuple[torch.Tensor, ...]:
    return tuple(torch.stack(t).to(device) for t in zip(*[ds[i] for i in idx]))


def _features(batch: Tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A task's description for the reweighting network: all its (x, y) points, flattened, (B, 2 (K + Q))."""
    xs, ys, xq, yq = batch
    return torch.cat([torch.cat([xs, ys], -1).flatten(1), torch.cat([xq, yq], -1).flatten(1)], 1)


def _method(name: str, cfg: Config):
    if name == "maml":
        return None
    if name == "mgda":
        return tm.methods.MGDA()
    if name == "cagrad":
        return tm.methods.CAGrad(cfg.cagrad_c)
    if name == "pcgrad":
        return tm.methods.PCGrad(seed=0)
    if name == "improvement":
        return tm.methods.ImprovementFunction(cfg.improvement_lambda)
    raise ValueError(f"unknown method {name!r}; choose from {METHODS}.")


def _test_losses(maml: tm.methods.MAML, test: Tuple[torch.Tensor, ...], chunk: int = 250) -> torch.Tensor:
    """(T,) query MSE of every meta-test task after adaptation."""
    params = {k: v.detach() for k, v in maml.params().items()}
    out = []
    for s in range(0, test[0].shape[0], chunk):
        part = tuple(t[s : s + chunk] for t in test)
        out.append(torch.func.vmap(maml.task_loss, in_dims=(None, 0, 0, 0, 0))(params, *part).detach())
    return torch.cat(out)


def _ci(x: torch.Tensor) -> float:
    return float(1.96 * x.std() / math.sqrt(x.numel())) if x.numel() > 1 else 0.0


def _train_unit(method: str, shots: int, seed: int, cfg: Config, ctx: RunContext, layers: int = 2) -> Dict[str, Any]:
    """Meta-trains one method; ``layers`` hidden layers of 32 (the paper's network has 2)."""
    unit = f"{method} {shots}-shot seed {seed}" + ("" if layers == 2 else f" {layers} layers")
    dev = ctx.device
    train = tm.zoo.data.SinusoidTasks(cfg.meta_steps * cfg.meta_batch, shots, cfg.num_query, seed=2 * seed)
    test_ds = tm.zoo.data.SinusoidTasks(cfg.test_tasks, shots, cfg.num_query, seed=2 * seed + 1)
    test = _stack(test_ds, range(cfg.test_tasks), dev)
    torch.manual_seed(seed)  # the same initialization for every method
    model = tm.zoo.models.SinusoidMLP(hidden=(32,) * layers).to(dev)
    maml = tm.methods.MAML(model, F.mse_loss, cfg.inner_lr, cfg.inner_steps)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.outer_lr)
    if method == "simol":
        torch.manual_seed(seed + 7919)
        net = tm.methods.ReweightingNetwork(2 * (shots + cfg.num_query)).to(dev)
        learner = tm.methods.MetaLearner(maml, opt, tm.methods.SIMOL(net, cfg.simol_lambda1, cfg.simol_lambda2),
                                         torch.optim.Adam(net.parameters(), lr=cfg.simol_lr), cfg.simol_theta_at)
    else:
        learner = tm.methods.MetaLearner(maml, opt, _method(method, cfg))
    curve: List[Dict[str, float]] = []
    start, seconds = 0, 0.0
    state = ctx.load_state(unit)  # an interrupted unit continues from its last evaluation
    if state is not None:
        learner.load_state_dict(state["learner"])
        start, curve, seconds = state["step"], state["curve"], state["seconds"]
    t0 = time.perf_counter()
    steps = ctx.progress(range(start, cfg.meta_steps), desc=unit, total=cfg.meta_steps, initial=start)
    for step in steps:
        batch = _stack(train, range(step * cfg.meta_batch, (step + 1) * cfg.meta_batch), dev)
        learner.step(*batch, task_features=_features(batch) if method == "simol" else None)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.meta_steps:
            curve.append({"step": step + 1, "test_mse": float(_test_losses(maml, test).mean())})
            if step + 1 < cfg.meta_steps:
                ctx.save_state(unit, {"learner": learner.state_dict(), "step": step + 1, "curve": curve,
                                      "seconds": seconds + time.perf_counter() - t0})
    seconds += time.perf_counter() - t0
    losses = _test_losses(maml, test)
    result = {"method": method, "shots": shots, "seed": seed, "test_losses": losses.tolist(), "curve": curve,
              "seconds_per_step": seconds / cfg.meta_steps}
    ctx.record(unit, result, seconds=seconds,
               evaluations=cfg.meta_steps * cfg.meta_batch)
    return result


def run(cfg: Config, ctx: RunContext) -> Dict[str, Any]:
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad or not cfg.methods:
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {cfg.methods}.")
    if not cfg.shots or any(not isinstance(k, int) or k < 1 for k in cfg.shots):
        raise ValueError(f"shots must be positive ints, got {cfg.shots}.")
    if cfg.seeds < 1 or cfg.meta_steps < 1 or cfg.meta_batch < 1 or cfg.eval_every < 1 or cfg.test_tasks < 10:
        raise ValueError("seeds, meta_steps, meta_batch and eval_every must be >= 1 and test_tasks >= 10.")
    if cfg.simol_theta_at not in ("next", "current"):
        raise ValueError(f"simol_theta_at must be 'next' or 'current', got {cfg.simol_theta_at!r}.")
    if any(not isinstance(n, int) or n < 1 for n in cfg.ablation_layers) or cfg.ablation_shots < 1:
        raise ValueError(f"ablation_layers must be positive ints and ablation_shots >= 1, got "
                         f"{cfg.ablation_layers}, {cfg.ablation_shots}.")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.threads))
    try:
        results: Dict[Tuple[str, int], List[Dict[str, Any]]] = {}
        for shots in cfg.shots:
            for s in range(cfg.seeds):
                seed = ctx.seed + s
                for m in cfg.methods:
                    unit = f"{m} {shots}-shot seed {seed}"
                    r = ctx.result(unit) if ctx.done(unit) else _train_unit(m, shots, seed, cfg, ctx)
                    results.setdefault((m, shots), []).append(r)
        ablation = []
        for layers in cfg.ablation_layers:
            unit = f"simol {cfg.ablation_shots}-shot seed {ctx.seed}" + ("" if layers == 2 else f" {layers} layers")
            r = ctx.result(unit) if ctx.done(unit) else _train_unit("simol", cfg.ablation_shots, ctx.seed, cfg, ctx, layers)
            x = torch.tensor(r["test_losses"], dtype=torch.float64)
            worst = x.sort(descending=True).values[: math.ceil(0.1 * x.numel())]
            ablation.append({"layers": layers, "shots": cfg.ablation_shots, "mse": float(x.mean()), "mse ci95": _ci(x),
                             "worst-10% mse": float(tm.metrics.worst_fraction_mean(x, 0.1)),
                             "worst-10% ci95": _ci(worst), "paper mse": PAPER_TABLE5.get(layers, (None, None))[0],
                             "paper worst-10%": PAPER_TABLE5.get(layers, (None, None))[1]})
    finally:
        torch.set_num_threads(threads)
    table = []
    for (m, shots), runs in results.items():
        per_seed = [torch.tensor(r["test_losses"], dtype=torch.float64) for r in runs]
        pooled = torch.cat(per_seed)
        worst = torch.cat([x.sort(descending=True).values[: math.ceil(0.1 * x.numel())] for x in per_seed])
        paper = PAPER[m].get(shots)
        table.append({
            "method": m,
            "shots": shots,
            "mse": float(pooled.mean()),
            "mse ci95": _ci(pooled),
            "worst-10% mse": sum(float(tm.metrics.worst_fraction_mean(x, 0.1)) for x in per_seed) / len(per_seed),
            "worst-10% ci95": _ci(worst),
            "paper mse": paper[0] if paper else None,
            "paper worst-10%": paper[1] if paper else None,
            "seconds/step": sum(r["seconds_per_step"] for r in runs) / len(runs),
        })
    _plot(results, ctx)
    return {"table": table, "depth ablation (Table 5)": ablation}


def _plot(results: Dict[Tuple[str, int], List[Dict[str, Any]]], ctx: RunContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = sorted({k for _, k in results})
    fig, axes = plt.subplots(1, len(shots), figsize=(5 * len(shots), 4), squeeze=False)
    for ax, k in zip(axes[0], shots):
        for (m, kk), runs in results.items():
            if kk != k:
                continue
            steps = [c["step"] for c in runs[0]["curve"]]
            mse = [sum(r["curve"][i]["test_mse"] for r in runs) / len(runs) for i in range(len(steps))]
            ax.plot(steps, mse, marker=".", label=m)
        ax.set_xlabel("meta-training step")
        ax.set_ylabel("meta-test MSE")
        ax.set_yscale("log")
        ax.set_title(f"{k}-shot sinusoid regression")
        ax.legend(fontsize=7)
    ctx.save_figure(fig, "convergence")


EXPERIMENT = register(
    Experiment(
        name="simol-sinusoid",
        description="few-shot sinusoid regression: MAML, mini-batch MGDA/CAGrad/PCGrad/improvement function, SIMOL",
        config=Config,
        full=full,
        run=run,
    )
)
