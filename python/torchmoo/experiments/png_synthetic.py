r"""``png-synthetic`` and ``png-zdt2``: PNG on analytic two-objective problems (Ye & Liu, section 5.1, C.1).

``png-synthetic`` is the problem of Lin et al. (2019) with ``n = 10`` (:class:`torchmoo.problems.LinConcave`);
``png-zdt2`` is the ZDT2-variant of Ma et al. (2020) (:class:`torchmoo.problems.ZDT2Variant`, appendix C.1.2).
For each ``r_1`` in ``{0.2, 0.4, 0.6, 0.8}`` (``r_2 = 1 - r_1``) one point starts from the same seeded
initialization and runs plain gradient steps ``x <- x - lr * v`` with

* ``epo ratio``: EPO (Mahapatra & Rajan) toward :math:`r_1\ell_1 = r_2\ell_2` (figure 1a);
* ``png ratio``: PNG with the non-uniformity criterion (Eq. 16), ``alpha = 0.25``, ``gamma = 0.01``
  (appendix C.1.1; figure 1b);
* ``png weighted-distance`` and ``png complex-cosine``: PNG with :math:`F_{wd}` and :math:`F_{cs}`,
  ``alpha = 0.5``, ``gamma = 0.1`` (figure 1c-d, figure 2); on ZDT2 the complex-cosine runs start with
  MGDA steps (150 in the paper);
* ``png complex-cosine (printed sum)``: :math:`F_{cs}` as printed in the paper's text (a sum instead of
  the product; see :class:`torchmoo.methods.ComplexCosine`).

All four points of a unit are one batched PNG (``N = 4`` independent dual problems per step, one
criterion with one reference row per point). The preferred location is computed on the analytic front:
the point where :math:`r_1\ell_1 = r_2\ell_2` for the ratio units, the minimizer of ``F`` over the front
(dense grid, then golden-section refinement) for the others. Each point's result: final losses,
target, the error ``|l - l*|_inf``, the distance of ``l`` to the analytic front, ``g(theta)`` and whether
the control was still on. ``trajectories.png`` draws them as the paper's figures 1 and 2.

Measured with the small defaults (``torchmoo run png-synthetic`` / ``png-zdt2``, seed 0, 2 CPU cores,
about 20 s and 30 s); ``max |l - l*|`` over the four points, the distance of the final losses to the
analytic front, and the largest final ``g(theta)``:

=================================  =====================  =========================
unit                               LinConcave             ZDT2-variant
=================================  =====================  =========================
epo ratio                          3.0e-3 / 1e-16 / 1e-30  8.4e-3 / 2e-16 / 4e-23
png ratio                          4.1e-3 / 5.0e-3 / 5e-3  0.64 / 0.65 / 2.7
png weighted-distance              3e-9 / 3e-9 / 2e-9      9.4e-5 / 9e-8 / 3e-7
png complex-cosine (product)       9e-9 / 1e-16 / 1e-30    2.4e-3 / 3e-4 / 1.6e-3
png complex-cosine (printed sum)   1.0 / 0.27 / 0.04       0.97 / 0.02 / 0.26
=================================  =====================  =========================

The paper shows these runs as figures only (1a-d, 2): every run reaches its preferred location. We
match that for the weighted distance and the complex cosine in its product form on both problems
(to the precision of the run), and for the ratio criterion on LinConcave, where with ``gamma = 0.01``
the points stop inside :math:`P_e` (``g <= e``), 5e-3 from the front, on the preferred ray (the
non-uniformity is flat along the ray, nothing pulls further; the paper's figure 5 shows the same
offset growing with ``gamma``); EPO ends on the front, 3e-3 from the exact ratio (it switches to
descent once the non-uniformity is below 1e-4). Two differences:

* with :math:`F_{cs}` as printed (a sum), the second term is maximal at :math:`\ell_2 = r_2`: PNG goes
  where that term is small, into the region where one loss saturates (LinConcave: ``l2 -> 1``, whose
  gradient vanishes, so ``g(theta) <= e`` and PNG is free to follow ``F``). The product form has its
  minimum at ``l = r``, consistent with the paper's figure;
* on ZDT2 with the default ``gamma = 0.1`` of appendix C.1.2, the ratio runs are not all at their
  preferred ratios: ``e = gamma * e0`` follows the mean squared gradient norm, which off the front is
  of order 10-100 on ZDT2 (the ``x2, x3`` derivatives grow with the radius), so ``e`` is large and one
  run (``r1 = 0.8``) stops at ``g = 2.7 < e``, off the front; with ``gamma = 0.01`` all four stay near
  the front but creep along it slowly (``lr = 0.002`` is needed for stability on ZDT2). The weighted
  distance and the complex cosine, whose gradients are larger, reach their optima.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import Tensor

import torchmoo as tm
from torchmoo.experiments.runner import Experiment, RunContext, register

UNITS = ("epo ratio", "png ratio", "png weighted-distance", "png complex-cosine", "png complex-cosine (printed sum)")


@dataclass
class Config:
    """Small default for ``png-synthetic`` (LinConcave, ``n = 10``)."""

    r1: List[float] = field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8])
    n_var: int = 10
    steps: int = 2000
    lr: float = 0.02
    init_scale: float = 0.5  # the start is uniform in [-init_scale, init_scale]^n (one draw for all points)
    alpha: float = 0.5
    gamma: float = 0.1
    ratio_alpha: float = 0.25
    ratio_gamma: float = 0.01
    decay: float = 0.9
    mgda_warmup: int = 0  # MGDA steps before PNG in the complex-cosine units
    units: List[str] = field(default_factory=lambda: list(UNITS))
    record_every: int = 10


def full() -> Config:
    """The same problem with more steps (the default already converges)."""
    return Config(steps=5000, lr=0.01)


@dataclass
class ZDT2Config(Config):
    """Small default for ``png-zdt2`` (ZDT2-variant, ``n = 3``)."""

    n_var: int = 3
    steps: int = 4000
    lr: float = 0.002
    ratio_alpha: float = 0.5  # appendix C.1.2: the defaults for every criterion on ZDT2
    ratio_gamma: float = 0.1
    init_scale: float = 1.0  # x1 uniform in [-init_scale, init_scale]
    init_r2: List[float] = field(default_factory=lambda: [0.5 * math.pi, 0.8 * math.pi])  # x2^2 + x3^2 range
    mgda_warmup: int = 150


def zdt2_full() -> ZDT2Config:
    return ZDT2Config(steps=10000, lr=0.001)


# ---- the analytic fronts ------------------------------------------------------------------------------


def _problem(name: str, n_var: int) -> Tuple[tm.problems.Problem, Callable[[Tensor], Tensor], Tuple[float, float]]:
    """The problem, its front as a function of a scalar parameter, and the parameter's range."""
    if name == "lin-concave":
        def front(t: Tensor) -> Tensor:
            return torch.stack((-torch.expm1(-((1 - t) ** 2)), -torch.expm1(-((1 + t) ** 2))), -1)
        return tm.problems.LinConcave(n_var), front, (-1.0, 1.0)
    if name == "zdt2-variant":
        def front(f1: Tensor) -> Tensor:
            return torch.stack((f1, 1 - f1 * f1), -1)
        return tm.problems.ZDT2Variant(), front, (0.0, 1.0)
    raise ValueError(f"unknown problem {name!r}")


def _golden_min(f: Callable[[float], float], a: float, b: float, iters: int = 80) -> float:
    """Golden-section search for a minimizer of ``f`` on ``[a, b]``."""
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return 0.5 * (a + b)


def _grid_then_golden(f_batch: Callable[[Tensor], Tensor], lo: float, hi: float, n_grid: int) -> float:
    """Minimizer over ``[lo, hi]`` of a function given on tensors of parameters: grid, then golden section."""
    t = torch.linspace(lo, hi, n_grid, dtype=torch.float64)
    vals = f_batch(t)
    i = int(vals.argmin())
    a, b = float(t[max(i - 1, 0)]), float(t[min(i + 1, n_grid - 1)])
    best = _golden_min(lambda x: float(f_batch(torch.tensor([x], dtype=torch.float64))[0]), a, b)
    fb = float(f_batch(torch.tensor([best], dtype=torch.float64))[0])
    return best if fb <= float(vals[i]) else float(t[i])


def front_optimum(fn: Callable[[Tensor], Tensor], front: Callable[[Tensor], Tensor], lo: float, hi: float,
                  n_grid: int = 4001) -> Tensor:
    """The front point ``front(t*)`` (2,) minimizing ``fn(losses (2,)) -> scalar`` over ``t`` in ``[lo, hi]``.

    A dense grid, then golden-section search in the bracket around the best grid point (float64).
    """
    with torch.no_grad():
        t = _grid_then_golden(lambda ts: torch.stack([fn(p) for p in front(ts)]), lo, hi, n_grid)
    return front(torch.tensor(t, dtype=torch.float64))


def front_distance(losses: Tensor, front: Callable[[Tensor], Tensor], lo: float, hi: float) -> Tensor:
    """Euclidean distance of each row of ``losses`` (N, 2) to the analytic front (grid, then golden section)."""
    out = []
    for row in losses.double():
        t = _grid_then_golden(lambda ts: (front(ts) - row).norm(dim=-1), lo, hi, 2001)
        out.append(float((front(torch.tensor(t, dtype=torch.float64)) - row).norm()))
    return torch.tensor(out, dtype=torch.float64)


def _criterion(unit: str, R: Tensor):
    if unit == "png ratio":
        return tm.methods.NonUniformity(R)
    if unit == "png weighted-distance":
        return tm.methods.WeightedDistance(R)
    if unit == "png complex-cosine":
        return tm.methods.ComplexCosine(R)
    if unit == "png complex-cosine (printed sum)":
        return tm.methods.ComplexCosine(R, form="sum")
    raise ValueError(unit)


def _jacobian(problem: tm.problems.Problem, x: Tensor) -> Tuple[Tensor, Tensor]:
    """Losses (N, 2) and Jacobians (N, 2, n) of N independent points."""
    x = x.detach().requires_grad_(True)
    L = problem(x)
    rows = [torch.autograd.grad(L[:, i].sum(), x, retain_graph=i == 0)[0] for i in range(L.shape[1])]
    return L.detach(), torch.stack(rows, 1)


def _initial_point(problem_name: str, cfg: Config, seed: int) -> Tensor:
    """The seeded start shared by every point and unit.

    LinConcave: uniform in ``[-init_scale, init_scale]^n``. ZDT2-variant: ``x1`` uniform in
    ``[-init_scale, init_scale]``, ``(x2, x3)`` at a uniform angle with ``x2^2 + x3^2`` uniform in
    ``init_r2``: away from the axis ``x2 = x3 = 0``, a set of Pareto-stationary points that are not
    Pareto optimal (``g`` is maximal there and both gradients are parallel to the one in ``x1``).
    """
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(3 if problem_name == "zdt2-variant" else cfg.n_var, generator=gen, dtype=torch.float64)
    if problem_name != "zdt2-variant":
        return (u * 2 - 1) * cfg.init_scale
    lo, hi = cfg.init_r2
    rho = math.sqrt(lo + (hi - lo) * float(u[1]))
    phi = 2 * math.pi * float(u[2])
    return torch.tensor([(2 * float(u[0]) - 1) * cfg.init_scale, rho * math.cos(phi), rho * math.sin(phi)],
                        dtype=torch.float64)


def run_unit(unit: str, problem_name: str, cfg: Config, seed: int) -> Dict[str, Any]:
    """One unit: the ``len(cfg.r1)`` points of one method; returns the per-point results and trajectories."""
    problem, front, (lo, hi) = _problem(problem_name, cfg.n_var)
    r1 = torch.tensor(cfg.r1, dtype=torch.float64)
    R = torch.stack((r1, 1 - r1), 1)
    N = R.shape[0]
    x0 = _initial_point(problem_name, cfg, seed)
    x = x0.repeat(N, 1)
    if unit == "epo ratio":
        aggs = [tm.methods.EPO(R[k]) for k in range(N)]
        png = None
        targets = torch.stack([front_optimum(tm.methods.NonUniformity(R[k]), front, lo + 1e-9, hi - 1e-9)
                               for k in range(N)])
    else:
        crit = _criterion(unit, R)
        ratio = unit == "png ratio"
        png = tm.methods.PNG(crit, alpha=cfg.ratio_alpha if ratio else cfg.alpha,
                             gamma=cfg.ratio_gamma if ratio else cfg.gamma, decay=cfg.decay)
        targets = []
        for k in range(N):
            ck = (tm.methods.ComplexCosine(R[k], form=crit.form) if isinstance(crit, tm.methods.ComplexCosine)
                  else type(crit)(R[k]))
            targets.append(front_optimum(ck, front, lo + 1e-9, hi - 1e-9))
        targets = torch.stack(targets)
    mgda = tm.methods.MGDA()
    warmup = cfg.mgda_warmup if "complex-cosine" in unit else 0
    traj: List[List[List[float]]] = []
    control_steps = 0
    for step in range(cfg.steps):
        L, J = _jacobian(problem, x)
        if step % cfg.record_every == 0:
            traj.append(L.tolist())
        if png is None:
            v = torch.stack([aggs[k](J[k], L[k]) for k in range(N)])
        elif step < warmup:
            v = torch.stack([mgda(J[k]) for k in range(N)])
        else:
            W = png.batch_weights(tm.ops.gram(J), L)
            v = torch.einsum("nm,nmd->nd", W, J)
            control_steps += int(png.stats.control.sum())
        x = x - cfg.lr * v
    L, J = _jacobian(problem, x)
    traj.append(L.tolist())
    g = torch.tensor([tm.methods.pareto_stationarity(J[k]) for k in range(N)], dtype=torch.float64)
    err = (L - targets).abs().amax(dim=1)
    dist = front_distance(L, front, lo, hi)
    points = []
    for k in range(N):
        points.append({
            "r1": float(r1[k]),
            "losses": L[k].tolist(),
            "target": targets[k].tolist(),
            "error": float(err[k]),
            "front_distance": float(dist[k]),
            "g": float(g[k]),
            "x": x[k].tolist(),
        })
    out: Dict[str, Any] = {"method": unit, "points": points, "trajectory": traj, "start": x0.tolist()}
    if png is not None:
        out["threshold_final"] = png.stats.threshold.tolist() if png.stats is not None else None
        out["control_on_final"] = png.stats.control.tolist() if png.stats is not None else None
        out["control_steps"] = control_steps
    return out


def _check(problem_name: str, cfg: Config) -> None:
    """``ValueError`` for a setting that would fail (or silently do nothing) only once a unit runs:
    checked before the first unit, so a bad PNG setting does not wait for the EPO unit to finish."""
    if cfg.steps < 1 or cfg.record_every < 1 or cfg.mgda_warmup < 0:
        raise ValueError(f"steps and record_every must be >= 1 and mgda_warmup >= 0, got {cfg.steps}, "
                         f"{cfg.record_every} and {cfg.mgda_warmup}.")
    if not 0.0 < cfg.lr < math.inf or not 0.0 <= cfg.init_scale < math.inf:
        raise ValueError(f"lr must be positive and init_scale >= 0 (both finite), got {cfg.lr} and {cfg.init_scale}.")
    _problem(problem_name, cfg.n_var)  # the problem's own checks (n_var)
    if problem_name == "zdt2-variant":
        if cfg.n_var != 3:  # the ZDT2-variant is defined on R^3 only
            raise ValueError(f"n_var must be 3 for the ZDT2-variant, got {cfg.n_var}.")
        r2 = list(getattr(cfg, "init_r2", []))
        if len(r2) != 2 or not 0.0 <= r2[0] <= r2[1] < math.inf:
            raise ValueError(f"init_r2 must be [low, high] with 0 <= low <= high (a range of x2^2 + x3^2), got {r2}.")
    # PNG's own checks of alpha, gamma and decay, for the settings the configured units use
    if "png ratio" in cfg.units:
        tm.methods.PNG(None, alpha=cfg.ratio_alpha, gamma=cfg.ratio_gamma, decay=cfg.decay)
    if any(u.startswith("png") and u != "png ratio" for u in cfg.units):
        tm.methods.PNG(None, alpha=cfg.alpha, gamma=cfg.gamma, decay=cfg.decay)


def _run(problem_name: str, cfg: Config, ctx: RunContext) -> Dict[str, Any]:
    if not cfg.r1 or any(not 0.0 < r < 1.0 for r in cfg.r1):
        raise ValueError(f"r1 must be a non-empty list of numbers in (0, 1), got {cfg.r1}.")
    unknown = [u for u in cfg.units if u not in UNITS]
    if unknown or not cfg.units:
        raise ValueError(f"units must be a non-empty subset of {list(UNITS)}, got {cfg.units}.")
    _check(problem_name, cfg)
    results = {}
    for unit in cfg.units:
        if ctx.done(unit):
            results[unit] = ctx.result(unit)
            continue
        t0 = time.perf_counter()
        res = run_unit(unit, problem_name, cfg, ctx.seed)
        ctx.record(unit, res, seconds=time.perf_counter() - t0, evaluations=cfg.steps * len(cfg.r1) * 2)
        results[unit] = res
    _plot(problem_name, cfg, results, ctx)
    table = []
    for unit in cfg.units:
        pts = results[unit]["points"]
        table.append({
            "method": unit,
            "max |l - l*|": max(p["error"] for p in pts),
            "max distance to front": max(p["front_distance"] for p in pts),
            "max g(theta)": max(p["g"] for p in pts),
            "final losses": [[round(v, 4) for v in p["losses"]] for p in pts],
            "targets": [[round(v, 4) for v in p["target"]] for p in pts],
            "seconds": ctx.results["timings"][unit],
        })
    return {"table": table, "problem": problem_name}


def run(cfg: Config, ctx: RunContext) -> Dict[str, Any]:
    return _run("lin-concave", cfg, ctx)


def run_zdt2(cfg: ZDT2Config, ctx: RunContext) -> Dict[str, Any]:
    return _run("zdt2-variant", cfg, ctx)


def _plot(problem_name: str, cfg: Config, results: Dict[str, Dict[str, Any]], ctx: RunContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, front, (lo, hi) = _problem(problem_name, cfg.n_var)
    curve = front(torch.linspace(lo, hi, 400, dtype=torch.float64))
    units = list(cfg.units)
    fig, axes = plt.subplots(1, len(units), figsize=(4 * len(units), 4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, unit in zip(axes[0], units):
        res = results[unit]
        traj = torch.tensor(res["trajectory"])  # (T, N, 2)
        ax.plot(curve[:, 0], curve[:, 1], color="0.6", lw=2, label="Pareto front")
        for k, p in enumerate(res["points"]):
            c = colors[k % len(colors)]
            ax.plot(traj[:, k, 0], traj[:, k, 1], color=c, lw=1, label=f"r1 = {p['r1']:g}")
            ax.scatter([p["target"][0]], [p["target"][1]], marker="*", s=160, color=c, edgecolor="k", zorder=3)
            ax.scatter([p["losses"][0]], [p["losses"][1]], s=30, color="tab:green", edgecolor="k", zorder=4)
        ax.set_title(unit, fontsize=9)
        ax.set_xlabel("l1")
        ax.set_ylabel("l2")
    axes[0][0].legend(fontsize=7)
    ctx.save_figure(fig, "trajectories")


EXPERIMENT = register(
    Experiment(
        name="png-synthetic",
        description="PNG on Lin et al.'s concave problem: ratio (vs EPO), weighted distance, complex cosine",
        config=Config,
        full=full,
        run=run,
    )
)
EXPERIMENT_ZDT2 = register(
    Experiment(
        name="png-zdt2",
        description="PNG on the ZDT2-variant (cylindrical Pareto set): the same criteria and EPO",
        config=ZDT2Config,
        full=zdt2_full,
        run=run_zdt2,
    )
)
