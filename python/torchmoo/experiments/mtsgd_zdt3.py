"""``mtsgd-zdt3``: MT-SGD and MOO-SVGD particles on ZDT3 (Phan et al. 2022, supplement 2.1.2).

ZDT3 (:class:`torchmoo.problems.ZDT3`, 30 variables in ``[0, 1]``, a front in five disconnected pieces)
as a two-target sampling problem with targets ``p_i(x) ~ exp(-f_i(x))`` on the box, i.e.
``log p_i = -f_i`` (the supplement does not print them: it runs ZDT3 "as in" MOO-SVGD, whose code
moves particles along ``-grad f_i = grad log p_i``). 50
particles start uniform in the box and move under Adam (lr 5e-4, the supplement's), clamped after every
step to ``[1e-6, 1 - 1e-6]`` as in MOO-SVGD's code (``f_2``'s slope in ``x_1`` is infinite at 0). Both
methods run with the RBF kernel in decision space at each bandwidth of ``bandwidths``: ``None`` is
SVGD's median heuristic (a real sampler of the targets), a small fixed ``h`` switches the repulsion
off between distant particles (the near-optimizer regime of MOO-SVGD's code, whose kernel is narrow).

Reported per method and bandwidth, for the final particles (and for the initial ones):

* the fraction of particles in the analytic Pareto set within ``tol`` (decision space,
  :meth:`~torchmoo.problems.ZDT3.is_pareto_optimal`: ``x1`` inside a piece and every other ``|x_j| <= tol``)
  and the fraction whose objective vector lies within ``tol`` of the analytic front (Euclidean);
* the hypervolume of the objective vectors with MOO-SVGD's reference point ``(0.9902, 6.5464)`` (and that
  of the analytic front as the ceiling), IGD+ to the analytic front and the non-dominated fraction;
* the last MT-SGD weights ``w*`` (MOO-SVGD: the mean of its per-particle weights).

Figure ``zdt3.png``: the initial and final objective vectors of every unit against the analytic front.
Each (method, bandwidth) is a unit that checkpoints every ``checkpoint_every`` steps.

What we got vs the paper
------------------------

The supplement gives the setting (50 particles, Adam lr 5e-4, 10,000 iterations, as MOO-SVGD) but no
numbers; its result is a figure of the main paper, not reproduced in the supplement.

Measured here (``torchmoo run mtsgd-zdt3``, seed 0, small default: 4,000 steps; 45 s of CPU on a
shared 2-core machine, 1 intra-op thread; ``--full``, 10,000 steps, 94 s). Fractions of the 50
particles in the Pareto set and within 0.05 of the front (tolerance 0.05 both), median distance to
the front, hypervolume (reference ``(0.9902, 6.5464)``; the analytic front has 6.519), IGD+, median
of ``max_{j>=2} x_j``; default run, with the ``--full`` values in brackets where they differ:

=====================  =========  ==========  ============  =============  =============  ==============
particles              in set     near front  median dist   HV             IGD+           tails
=====================  =========  ==========  ============  =============  =============  ==============
initial (uniform)      0          0           3.03          3.25           1.51           0.98
MT-SGD, median h       0          0           4.65          3.34           2.92           1.00
MOO-SVGD, median h     0          0           3.41          3.73           0.86           1.00
MT-SGD, h = 0.01       0          0           0.155         5.41           0.83           0.26
MOO-SVGD, h = 0.01     0.02 (.04) 0.12 (0.22) 0.19 (0.105)  6.19 (6.14)    0.150 (0.211)  0.24 (0.33)
=====================  =========  ==========  ============  =============  =============  ==============

MT-SGD's last weights are ``w* = (0.999, 0.001)`` (median ``h``) and ``(0.998, 0.002)`` (``h = 0.01``);
MOO-SVGD's per-particle weights average ``(0.92, 0.08)`` and ``(0.97, 0.03)``.

Why: ``exp(-f_i)`` at temperature 1 is a broad density on the box (``f_2`` grows by about 0.3 per unit
of each ``x_j``, ``j >= 2``), so a faithful sampler (median bandwidth) does not put its particles on the
Pareto set ``x_j = 0``: with the median bandwidth the kernel repulsion pushes tail variables to the wall
``x_j = 1`` (the median over particles of ``max_j x_j`` is 1) and neither method nears the front. Only
with a narrow kernel do the particles act as 50 separate descents. MT-SGD's one simplex QP for all
particles is then ruled by the largest scores: ``|d f_2 / d x_1|`` has a median of 9 and reaches 30 over
the box (the ``x1 sin(10 pi x1)`` term; infinite at ``x1 = 0``) against ``|grad f_1| = 1``, so
``U[2, 2]`` dwarfs ``U[1, 1]``, ``w*`` sits near ``(1, 0)``, and every particle follows ``-grad f_1`` to
``x1 ~ 0`` while the tails move only through the small ``w*_2``: the particles pile up above the first
piece (``f ~ (0, 1.15)``). MOO-SVGD's per-particle QPs give each particle its own trade-off, so its
particles spread over the pieces (figure ``zdt3.png``). MOO-SVGD's code also normalizes each coordinate
of each task's gradient over the particles and puts its kernel on the objective vectors; the library's
methods do neither. Going from 4,000 to 10,000 steps changes little.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

import torchmoo as tm
from torchmoo.experiments.runner import Experiment, RunContext, check_unique_units, register

METHODS = {"mt-sgd": tm.methods.MTSGD, "moo-svgd": tm.methods.MOOSVGD}
#: The reference point of MOO-SVGD's ZDT3 hypervolume.
HV_REF = (0.99022638, 6.54635266)


@dataclass
class Config:
    """Small default (about a minute on 2 CPU cores); :func:`full` is the supplement's setting."""

    particles: int = 50
    n_var: int = 30
    steps: int = 4000
    lr: float = 5e-4  # Adam, betas (0.9, 0.999)
    bandwidths: List[Optional[float]] = field(default_factory=lambda: [None, 0.01])  # None: median heuristic
    box_margin: float = 1e-6  # particles are clamped to [margin, 1 - margin]; > 0 (inf gradient at x1 = 0)
    tolerances: List[float] = field(default_factory=lambda: [0.01, 0.05])
    front_points: int = 5000  # samples of the analytic front (IGD+, distances, its hypervolume)
    hv_ref: List[float] = field(default_factory=lambda: list(HV_REF))
    checkpoint_every: int = 1000
    threads: int = 1  # intra-op threads: (50 x 30) tensors only lose from threading on a shared CPU


def full() -> Config:
    """Supplement 2.1.2: 50 particles, Adam lr 5e-4, 10,000 iterations."""
    return Config(steps=10000)


def _label(name: str, h: Optional[float]) -> str:
    return f"{name} h={'median' if h is None else f'{h:g}'}"


def initial_particles(cfg: Config, seed: int) -> torch.Tensor:
    """``(particles, n_var)`` float64, uniform in the box (as MOO-SVGD's code), clamped to the margin."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.rand(cfg.particles, cfg.n_var, generator=gen, dtype=torch.float64)
    return X.clamp(cfg.box_margin, 1.0 - cfg.box_margin)


def particle_metrics(problem: tm.problems.ZDT3, X: torch.Tensor, front: torch.Tensor, cfg: Config) -> Dict[str, Any]:
    """Pareto-set membership, distance to the front, hypervolume, IGD+ and non-dominance of ``X`` ``(M, n)``."""
    X = X.detach().to(torch.float64).cpu()
    F = problem(X)
    dist = torch.cdist(F, front).min(1).values  # (M,) to the nearest analytic front sample
    return {
        "objectives": F.tolist(),
        "in_pareto_set": {f"{t:g}": float(problem.is_pareto_optimal(X, atol=t).double().mean())
                          for t in cfg.tolerances},
        "near_front": {f"{t:g}": float((dist <= t).double().mean()) for t in cfg.tolerances},
        "median_distance_to_front": float(dist.median()),
        "hypervolume": tm.metrics.hypervolume(F, cfg.hv_ref),
        "igd_plus": tm.metrics.igd_plus(F, front),
        "nondominated_fraction": float(tm.metrics.nondominated(F, return_mask=True).double().mean()),
        "median_tail_max": float(X[:, 1:].abs().amax(1).median()),
        "x1": X[:, 0].tolist(),
    }


def _sample(unit: str, name: str, h: Optional[float], cfg: Config, ctx: RunContext, problem, front) -> Dict[str, Any]:
    X = initial_particles(cfg, ctx.seed).to(ctx.device).requires_grad_()
    lo, hi = cfg.box_margin, 1.0 - cfg.box_margin
    method = METHODS[name](X, lambda Z: -problem(Z), bandwidth=h)  # log p_i = -f_i
    opt = torch.optim.Adam([X], lr=cfg.lr)
    state = ctx.load_state(unit)
    start, seconds, weights = 0, 0.0, None
    if state is not None:
        with torch.no_grad():
            X.copy_(state["X"].to(X))
        opt.load_state_dict(state["optimizer"])
        start, seconds, weights = state["step"], state["seconds"], state["weights"]
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        t0 = time.perf_counter()
        for step in ctx.progress(range(start, cfg.steps), desc=unit, total=cfg.steps, initial=start):
            opt.zero_grad(set_to_none=True)
            out = method.backward()
            opt.step()
            with torch.no_grad():
                X.clamp_(lo, hi)
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                w = out.weights if out.weights.dim() == 1 else out.weights.mean(0)
                ctx.save_state(unit, {"X": X.detach().cpu(), "optimizer": opt.state_dict(), "step": step + 1,
                                      "seconds": seconds + time.perf_counter() - t0, "weights": w.tolist()})
            if step + 1 == cfg.steps:
                w = out.weights if out.weights.dim() == 1 else out.weights.mean(0)
                weights = w.tolist()
        seconds += time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    result = {"method": name, "bandwidth": h, **particle_metrics(problem, X, front, cfg), "weights_last_step": weights}
    ctx.record(unit, result, seconds=seconds, evaluations=cfg.steps * cfg.particles * 2)
    return result


def run(cfg: Config, ctx: RunContext) -> Dict[str, Any]:
    if cfg.particles < 2 or cfg.steps < 1 or cfg.n_var < 2 or cfg.checkpoint_every < 1 or cfg.threads < 1:
        raise ValueError("particles and n_var must be >= 2; steps, checkpoint_every and threads >= 1.")
    if not cfg.bandwidths or any(h is not None and not h > 0 for h in cfg.bandwidths):
        raise ValueError(f"bandwidths must be a non-empty list of positive numbers or None, got {cfg.bandwidths}.")
    check_unique_units([_label("", h) for h in cfg.bandwidths],
                       f"bandwidths must differ in their first 6 significant digits, got {cfg.bandwidths}.")
    if not 0.0 < cfg.box_margin < 0.5:
        # at x1 = 0 the slope of f2 = g - sqrt(f1 g) - ... in x1 is -inf: a particle clamped there has a
        # non-finite score, which stops the sampler mid-run
        raise ValueError(f"box_margin must lie in (0, 0.5): ZDT3's gradient is infinite at x1 = 0, got "
                         f"{cfg.box_margin}.")
    if not cfg.tolerances or min(cfg.tolerances) <= 0 or len(cfg.hv_ref) != 2:
        raise ValueError("tolerances must be positive and hv_ref have 2 entries.")
    problem = tm.problems.ZDT3(cfg.n_var)
    front = problem.pareto_front(cfg.front_points)
    initial = particle_metrics(problem, initial_particles(cfg, ctx.seed), front, cfg)
    results = {}
    for h in cfg.bandwidths:
        for name in METHODS:
            unit = _label(name, h)
            results[unit] = ctx.result(unit) if ctx.done(unit) else _sample(unit, name, h, cfg, ctx, problem, front)
    _plot(cfg, initial, results, front, ctx)

    def row(label: str, r: Dict[str, Any], seconds: Optional[float]) -> Dict[str, Any]:
        out = {"particles": label}
        for t in cfg.tolerances:
            out[f"in Pareto set (tol {t:g})"] = r["in_pareto_set"][f"{t:g}"]
        for t in cfg.tolerances:
            out[f"near front (tol {t:g})"] = r["near_front"][f"{t:g}"]
        out.update({"median dist to front": r["median_distance_to_front"], "HV": r["hypervolume"],
                    "IGD+": r["igd_plus"], "non-dominated": r["nondominated_fraction"],
                    "median max_j>=2 x_j": r["median_tail_max"], "seconds": seconds})
        return out

    table = [row("initial (uniform)", initial, None)]
    table += [row(u, r, ctx.results["timings"][u]) for u, r in results.items()]
    return {
        "table": table,
        "hypervolume of the analytic front (same reference)": tm.metrics.hypervolume(front, cfg.hv_ref),
        "hypervolume reference point": list(cfg.hv_ref),
        "weights at the last step": {u: r["weights_last_step"] for u, r in results.items()},
        "initial": {k: v for k, v in initial.items() if k not in ("objectives", "x1")},
    }


def _plot(cfg: Config, initial, results, front: torch.Tensor, ctx: RunContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.2), squeeze=False)
    F0 = torch.tensor(initial["objectives"])
    # the five pieces drawn apart (front samples are ordered by f1; a gap larger than a step is a new piece)
    gaps = torch.nonzero(front[1:, 0] - front[:-1, 0] > 0.05).flatten().tolist()
    cuts = [0] + [g + 1 for g in gaps] + [front.shape[0]]
    for ax, (unit, r) in zip(axes[0], results.items()):
        for a, b in zip(cuts[:-1], cuts[1:]):
            ax.plot(front[a:b, 0], front[a:b, 1], c="k", lw=2, label="analytic front" if a == 0 else None)
        ax.scatter(F0[:, 0], F0[:, 1], s=8, c="tab:blue", alpha=0.35, label="start")
        F = torch.tensor(r["objectives"])
        ax.scatter(F[:, 0], F[:, 1], s=14, c="tab:red", label=f"after {cfg.steps} steps")
        ax.set_xlabel("f1")
        ax.set_ylabel("f2")
        ax.set_title(f"{unit}\nHV {r['hypervolume']:.2f}, IGD+ {r['igd_plus']:.3f}", fontsize=9)
        ax.legend(fontsize=7)
    ctx.save_figure(fig, "zdt3")


EXPERIMENT = register(
    Experiment(
        name="mtsgd-zdt3",
        description="ZDT3 with 50 particles: MT-SGD vs MOO-SVGD, Pareto-set fraction, hypervolume, "
                    "particles vs the front",
        config=Config,
        full=full,
        run=run,
    )
)
