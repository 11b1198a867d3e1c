"""``pareto-zdt2``: Pareto exploration on ZDT2-variant (Ma, Du & Matusik 2020, figures 2-3, supplement 3.1).

ZDT2-variant (``torchmoo.problems.ZDT2Variant``) maps ``R^3 -> R^2``; its Pareto set is a family of
cylinders ``x2^2 + x3^2 = (2k+1) pi`` (the experiment works on ``k = 0``) and its front ``f2 = 1 - f1^2``.
Two parts:

1. **Tangents** (figure 2; supplement figure 2 left): at ``tangent_points`` random Pareto-optimal points,
   ``tangent_directions`` directions from MINRES with ``k = 2`` iterations (``beta ~ N(0, I)``). Each is
   compared with the analytic tangent plane of the cylinder (the angle between the direction and
   the plane) and with the two gradients; ``f(x* + s d)`` for ``s`` in ``[-span, span]`` shows how far
   each direction leaves the front (the largest ``|f2 - (1 - f1^2)|``).
2. **Algorithm 1** (figure 3; supplement figure 2 middle/right and table 1): from ``explore_seeds`` random
   Pareto-optimal points, ``K = 1`` chains of ``N = 10`` points with step ``0.1``, expanding along the
   MINRES tangent (``k = 2``) or along the gradient of a perturbed weighted sum (the WeightedSum
   expansion, ``alpha' = alpha +- 0.1 (beta - mean beta)``), each child pushed back to the front by
   MGDA with a backtracking line search (initial step 1, factor 0.9). The evaluations of objectives,
   gradients and Hessian-vector products are counted separately for ParetoExpand (EXP) and
   ParetoOptimize (OPT).

Paper (supplement table 1, 10 seeds x 10 points; MINRES 2 iterations, MGDA + line search):

==================  =====  =====  ======
method               #f    #grad  #HVP
==================  =====  =====  ======
ours (EXP)              0     50    300
ours (OPT)            100    100      0
WeightedSum (EXP)       0     50      0
WeightedSum (OPT)   17931   1818      0
==================  =====  =====  ======

Measured here (``torchmoo run pareto-zdt2 --full``: 10 seeds, seed 0, 25 s of CPU on a shared 2-core
machine; the default, 4 seeds, takes about 10 s). A ``K = 1`` chain ends when its child is pruned, so
the totals are over the points actually collected:

========================  =====  =====  ====  ========  ==============  =====================
method                     #f    #grad  #HVP  points    Pareto optimal  max |f2 - (1 - f1^2)|
========================  =====  =====  ====  ========  ==============  =====================
tangent (EXP)               100    200   200  100 / 100            100                      0
tangent (OPT)               100    100     0
gradient (EXP)               90     90     0   85 / 100             34                   0.25
gradient (OPT)            74391   6147     0
========================  =====  =====  ====  ========  ==============  =====================

Tangents: the MINRES directions (``k = 2``) lie in the cylinder's tangent plane to rounding (median
angle 5e-15 degrees, largest 2e-12, over 200 directions at 40 points), as Proposition 3.2 predicts: the
Krylov space of dimension 2 holds the exact solution, the ``x1`` axis of the cylinder, and
``f(x* + s v)`` stays on the front; the gradients leave the plane at 74 degrees and ``f(x* + s g)``
rises up to 0.35 above the front (median over the points). Algorithm 1: a tangent step lands exactly
on the set, so ParetoOptimize only confirms stationarity (one ``f`` and one ``J`` per point, as in the
paper's 100 / 100), while the gradient step falls into the dominated interior and MGDA then needs ~72
gradient and ~870 objective evaluations per point (the paper's table: 1,818 and 17,931 in all; our
stopping test ``|J' alpha|^2 <= 1e-14`` is probably stricter than theirs, which is not given); 51 of
its 85 points slid to the segment ``f1 = 0, f2 >= 1``, Pareto-stationary but not optimal, as the
supplement notes (3.1), and 5 children were pruned as dominated. Bookkeeping differs from the
paper's: ParetoExpand here evaluates ``f`` once (the closure gives ``f`` and, by autograd, ``J``) and
counts two gradient passes (``J`` and the ``alpha``-weighted gradient with its graph that the
Hessian-vector products differentiate); with two MINRES iterations one tangent costs 2 HVPs. The
paper's counts are for two children per expansion, not a chain: its 100 points cost 100 ``f`` and 100
gradients in ParetoOptimize (one each) but only 50 gradients in ParetoExpand, i.e. 50 expansions of
``K = 2`` directions, with 300 HVPs (6 per expansion, 3 per direction); per expanded point ours spends
1 ``f``, 2 gradients and 2 HVPs for its one direction.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch

import torchmoo as tm
from torchmoo.experiments.runner import Experiment, RunContext, register
from torchmoo.methods import EvaluationCounter, ParetoExplorer, pareto_expand, pareto_optimize

F64 = torch.float64


@dataclass
class Config:
    """Defaults: a few seconds on 2 CPU cores. :func:`full` is the supplement's 10 seeds."""

    tangent_points: int = 40  # random Pareto-optimal x* (supplement figure 2 left)
    tangent_directions: int = 5  # MINRES directions per point (figure 2)
    tangent_k: int = 2  # MINRES iterations (supplement 2.1)
    span: float = 0.1  # f(x* + s d), s in [-span, span]
    explore_seeds: int = 4  # Algorithm 1 runs per strategy
    num_points: int = 10  # N
    num_children: int = 1  # K (a chain, figure 3)
    step: float = 0.1  # s
    explore_k: int = 2  # MINRES iterations of the expansion
    perturbation: float = 0.1  # weight perturbation of the WeightedSum expansion
    optimize_tol: float = 1e-14  # MGDA stops at ||J'alpha||^2 <= tol
    optimize_max_iter: int = 500
    seed_f1: List[float] = field(default_factory=lambda: [0.2, 0.8])  # f1 range of the random starting points


def full() -> Config:
    return Config(explore_seeds=10)


def _random_pareto_point(gen: torch.Generator, f1_range: List[float]) -> torch.Tensor:
    """A uniform point of the innermost cylinder with ``f1`` uniform in ``f1_range``."""
    lo, hi = f1_range
    f1 = lo + (hi - lo) * float(torch.rand(1, generator=gen, dtype=F64))
    phi = 2 * math.pi * float(torch.rand(1, generator=gen, dtype=F64))
    rho = math.sqrt(math.pi)
    return torch.tensor([math.asin(2 * f1 - 1) - math.pi, rho * math.cos(phi), rho * math.sin(phi)], dtype=F64)


def _front_gap(F: torch.Tensor) -> torch.Tensor:
    """``|f2 - (1 - f1^2)|``: distance in f2 from the analytic front."""
    return (F[..., 1] - (1.0 - F[..., 0] ** 2)).abs()


def _tangents(cfg: Config, ctx: RunContext, problem) -> Dict[str, Any]:
    gen = torch.Generator().manual_seed(ctx.seed)
    s = torch.linspace(-cfg.span, cfg.span, 21, dtype=F64)
    angles, grad_angles, gaps_t, gaps_g, curves = [], [], [], [], []
    counter = EvaluationCounter()
    for _ in range(cfg.tangent_points):
        x0 = _random_pareto_point(gen, [0.02, 0.98])
        x = x0.clone().requires_grad_(True)
        exp = pareto_expand(lambda: problem(x), [x], num_directions=cfg.tangent_directions, k=cfg.tangent_k,
                            rhs="normal", generator=gen, counter=counter)
        normal = torch.tensor([0.0, float(x0[1]), float(x0[2])], dtype=F64)
        normal = normal / normal.norm()
        angles += torch.rad2deg(torch.asin((exp.directions @ normal).abs().clamp(max=1.0))).tolist()
        J = torch.autograd.functional.jacobian(problem, x0)  # (2, 3)
        G = J / J.norm(dim=1, keepdim=True)
        grad_angles += torch.rad2deg(torch.asin((G @ normal).abs().clamp(max=1.0))).tolist()
        with torch.no_grad():
            ft = problem(x0 + s[:, None, None] * exp.directions[None])  # (21, K, 2)
            fg = problem(x0 + s[:, None, None] * G[None])  # (21, 2, 2)
        gaps_t.append(float(_front_gap(ft).max()))
        gaps_g.append(float(_front_gap(fg).max()))
        curves.append({"x": x0.tolist(), "tangent": ft[:, 0].tolist(), "grad1": fg[:, 0].tolist(),
                       "grad2": fg[:, 1].tolist()})
    a = torch.tensor(angles, dtype=F64)
    ga = torch.tensor(grad_angles, dtype=F64)
    return {
        "angle_median_deg": float(a.median()), "angle_max_deg": float(a.max()),
        "grad_angle_median_deg": float(ga.median()), "grad_angle_min_deg": float(ga.min()),
        "front_gap_tangent_max": max(gaps_t),
        "front_gap_gradient_median": float(torch.tensor(gaps_g, dtype=F64).median()),
        "evaluations": counter.as_dict(), "curves": curves,
    }


def _explore(cfg: Config, ctx: RunContext, problem, method: str, run: int) -> Dict[str, Any]:
    gen = torch.Generator().manual_seed(ctx.seed * 7919 + run)
    x0 = _random_pareto_point(gen, cfg.seed_f1)
    x = x0.clone().requires_grad_(True)
    optimize = functools.partial(pareto_optimize, max_iter=cfg.optimize_max_iter, tol=cfg.optimize_tol,
                                 step=1.0, decay=0.9)
    ex = ParetoExplorer(x, lambda: problem(x), k=cfg.explore_k, step=cfg.step, num_children=cfg.num_children,
                        num_points=cfg.num_points, method=method, rhs="binary", perturbation=cfg.perturbation,
                        optimize=optimize, optimize_seed=False, seed=ctx.seed * 7919 + run)
    ex.explore()
    F = torch.stack([p.losses for p in ex.points])
    X = torch.stack([p.params for p in ex.points])
    optimal = problem.is_pareto_optimal(X, atol=1e-6)
    return {
        "points": F.tolist(),
        "params": X.tolist(),
        "expanded": [p.expanded_losses.tolist() for p in ex.points[1:]],
        "parents": [p.parent for p in ex.points],
        "rejected": [p.losses.tolist() for p in ex.rejected],
        "collected": len(ex.points) - 1,
        "pareto_optimal": int(optimal[1:].sum()),
        "max_front_gap": float(_front_gap(F).max()),
        "stationarity_max": max(p.stationarity for p in ex.points[1:]) if len(ex.points) > 1 else 0.0,
        "expand": ex.counters["expand"].as_dict(),
        "optimize": ex.counters["optimize"].as_dict(),
    }


def run(cfg: Config, ctx: RunContext) -> Dict[str, Any]:
    for name in ("tangent_points", "tangent_directions", "tangent_k", "explore_seeds", "num_points", "num_children",
                 "explore_k"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}.")
    # checked before the tangents unit: the explorations (which would reject them) come after it
    lo_hi = list(cfg.seed_f1)
    if len(lo_hi) != 2 or not 0.0 <= lo_hi[0] <= lo_hi[1] <= 1.0:
        raise ValueError(f"seed_f1 must be [low, high] with 0 <= low <= high <= 1 (a range of f1), got {lo_hi}.")
    for name in ("span", "step", "perturbation", "optimize_tol"):
        if not 0.0 < getattr(cfg, name) < math.inf:
            raise ValueError(f"{name} must be a positive finite number, got {getattr(cfg, name)}.")
    if cfg.optimize_max_iter < 1:
        raise ValueError(f"optimize_max_iter must be >= 1, got {cfg.optimize_max_iter}.")
    problem = tm.problems.ZDT2Variant()
    if ctx.done("tangents"):
        tangents = ctx.result("tangents")
    else:
        t0 = time.perf_counter()
        tangents = _tangents(cfg, ctx, problem)
        ctx.record("tangents", tangents, time.perf_counter() - t0, sum(tangents["evaluations"].values()))
    runs: Dict[str, List[Dict[str, Any]]] = {"tangent": [], "gradient": []}
    units = [(method, i) for i in range(cfg.explore_seeds) for method in ("tangent", "gradient")]
    for method, i in ctx.progress(units, desc="pareto-zdt2"):
        unit = f"{method} seed {i}"
        if ctx.done(unit):
            res = ctx.result(unit)
        else:
            t0 = time.perf_counter()
            res = _explore(cfg, ctx, problem, method, i)
            ctx.record(unit, res, time.perf_counter() - t0,
                       sum(res["expand"].values()) + sum(res["optimize"].values()))
        runs[method].append(res)

    table = []
    for method, label in (("tangent", f"tangent (MINRES k={cfg.explore_k})"), ("gradient", "gradient (WeightedSum)")):
        rs = runs[method]
        exp = {k: sum(r["expand"][k] for r in rs) for k in ("f", "grad", "hvp")}
        opt = {k: sum(r["optimize"][k] for r in rs) for k in ("f", "grad", "hvp")}
        collected = sum(r["collected"] for r in rs)
        table.append({
            "method": label,
            "#f EXP": exp["f"], "#grad EXP": exp["grad"], "#HVP EXP": exp["hvp"],
            "#f OPT": opt["f"], "#grad OPT": opt["grad"], "#HVP OPT": opt["hvp"],
            "points": f"{collected} / {cfg.explore_seeds * cfg.num_points}",
            "Pareto optimal": sum(r["pareto_optimal"] for r in rs),
            "max front gap": max(r["max_front_gap"] for r in rs),
            "grad evals per point (OPT)": opt["grad"] / max(collected, 1),
        })
    _plot(cfg, ctx, problem, tangents, runs)
    return {
        "table": table,
        "tangent angle to the cylinder, median (deg)": tangents["angle_median_deg"],
        "tangent angle to the cylinder, max (deg)": tangents["angle_max_deg"],
        "gradient angle to the cylinder, median (deg)": tangents["grad_angle_median_deg"],
        "max |f2 - (1 - f1^2)| along tangents": tangents["front_gap_tangent_max"],
        "median max |f2 - (1 - f1^2)| along gradients": tangents["front_gap_gradient_median"],
    }


def _plot(cfg: Config, ctx: RunContext, problem, tangents: Dict[str, Any], runs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = problem.pareto_front(200)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    ax.plot(front[:, 0], front[:, 1], "k-.", lw=1, label="Pareto front")
    for i, c in enumerate(tangents["curves"]):
        for key, color, style, lab in (("grad1", "tab:blue", "-", "along grad f1"),
                                       ("grad2", "tab:green", ":", "along grad f2 (anti-parallel on the set)"),
                                       ("tangent", "tab:orange", "-", "along tangent (MINRES)")):
            pts = torch.tensor(c[key])
            ax.plot(pts[:, 0], pts[:, 1], color=color, ls=style, lw=1, label=lab if i == 0 else None)
    ax.set_title(f"f(x* + s d), s in [-{cfg.span}, {cfg.span}]")
    ax.set_xlabel("f1")
    ax.set_ylabel("f2")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.6)
    ax.legend(fontsize=7)
    for ax, method, title in ((axes[1], "tangent", "Algorithm 1, tangent expansion"),
                              (axes[2], "gradient", "Algorithm 1, gradient (WeightedSum) expansion")):
        ax.plot(front[:, 0], front[:, 1], "k-.", lw=1)
        for i, r in enumerate(runs[method]):
            P = torch.tensor(r["points"])
            for j, e in enumerate(r["expanded"]):
                src = P[r["parents"][j + 1]]
                ax.annotate("", xy=e, xytext=src.tolist(), arrowprops=dict(arrowstyle="->", color="orange", lw=0.7))
                ax.annotate("", xy=P[j + 1].tolist(), xytext=e, arrowprops=dict(arrowstyle="->", color="red", lw=0.7))
            E = torch.tensor(r["expanded"]).reshape(-1, 2)
            ax.scatter(E[:, 0], E[:, 1], marker="*", s=25, c="orange", label="ParetoExpand" if i == 0 else None)
            ax.scatter(P[:, 0], P[:, 1], s=16, facecolors="none", edgecolors="red",
                       label="ParetoOptimize" if i == 0 else None)
            ax.scatter(P[:1, 0], P[:1, 1], marker="*", s=80, c="red", edgecolors="k", label="seed" if i == 0 else None)
        ax.set_title(title)
        ax.set_xlabel("f1")
        ax.set_ylabel("f2")
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.6)
        ax.legend(fontsize=7)
    ctx.save_figure(fig, "zdt2")


EXPERIMENT = register(
    Experiment(
        name="pareto-zdt2",
        description="ZDT2-variant: MINRES tangents vs the analytic cylinder; Algorithm 1 with tangents vs gradients",
        config=Config,
        full=full,
        run=run,
    )
)
