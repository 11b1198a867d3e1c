r"""``simol-toy``: SIMOL's two-objective toy (Yu et al., ICLR 2023, section 3, figure 1 and appendix A).

The problem is :class:`torchmoo.problems.SIMOLToy` (``x in R^2``, two objectives, from CAGrad). Each
outer step samples *one* task, task 1 with probability 2/3 and task 2 with 1/3 (mini-batch size 1),
and moves ``x`` with Adam (learning rate 0.01, appendix A; the appendix gives the learning rates but
not the optimizer: Adam is that of CAGrad's toy). Three methods, every one from the same starting
points and with the same task draws:

* ``mgda``: full MGDA, both gradients every step (the min-norm point of their hull, Eq. 3);
* ``minibatch-mgda``: MGDA on the sampled task only; with one task the min-norm point is that task's
  gradient, so this is stochastic gradient descent on ``(2/3) f_1 + (1/3) f_2``;
* ``simol``: Algorithm 1 with :class:`~torchmoo.methods.TaskTableWeights` as the reweighting network
  (appendix A: "the meta-learner and the re-weighting network are represented by learnable vectors"):
  ``r(tau) = theta_tau^2``, ``x <- x - beta r(tau) g_tau``, then an Adam ascent step (learning rate
  0.1) of ``theta`` on :math:`\tilde K_B` with the gradient at the new ``x``.

Every (start, seed) pair is a run; the seed fixes its stream of task draws (shared by every start and
every method). All runs of one method are one batched program (Adam acts element by element, so a
batch of runs is exactly the runs side by side). The gradients of the
toy are written out analytically (:func:`toy_jacobian`, checked against autograd by the tests).

Reported per method and start, over the seeds: the distance of the final point to the Pareto front in
objective space and to the Pareto set in parameter space (both from the problem's analytic set,
:meth:`~torchmoo.problems.SIMOLToy.pareto_set`), how many runs came within ``tolerance`` of the front
and after how many steps, the final ``x1`` and the ``x1`` of the Pareto point each stochastic method
should converge to: for mini-batch MGDA the minimizer of ``(2/3) f_1 + (1/3) f_2``, ``x1 = 7/3``; for
SIMOL the Pareto point whose weighted-sum weights are ``p_tau r*_tau`` with SIMOL's single-task weight
``r*_tau = lambda'' / (lambda'' + |g_tau|^2 / lambda')`` (the maximizer of :math:`\tilde K_B` for
``|B| = 1``). Figure ``trajectories.png``: seed 0's runs in objective space with the front (as figure 1)
and in parameter space with the Pareto set.

What we got vs the paper. Default run (``torchmoo run simol-toy``: 5 starts x 8 task-sampling seeds,
10,000 steps, seed 0; 38 s on two shared CPU cores), objective-space distance of the final points to
the analytic front:

=================  ===============  ===============  ==========================  ==========================
method             runs within      median final     upper-left start (-8.5,     final ``x1`` (predicted)
                   0.01 of front    distance         7.5): reached, median step
=================  ===============  ===============  ==========================  ==========================
full MGDA          40 / 40          6.6e-4           8 / 8, step 3,100           where each run enters the
                                                                                 set (-7.0 ... 6.9)
mini-batch MGDA    34 / 40          6.5e-4           2 / 8, step 9,150 (final    2.36 (7/3 = 2.33); 2.85
                                                     distances up to 7.0)        from (9, 9)
SIMOL              40 / 40          3.2e-4           8 / 8, step 3,950           2.45-2.47 (2.42); 2.73
                                                                                 from (9, 9)
=================  ===============  ===============  ==========================  ==========================

Figure 1 of the paper shows mini-batch MGDA missing the front and SIMOL reaching it. Here mini-batch
MGDA misses it only from the upper-left start, whose runs linger along task 1's log valley
(``x1 = -7 + 2 tanh(x2)``, ``x2 > 0``, then slowly down past ``x2 = 0``); from the four other starts
all 32 runs reach the front, at the minimizer of ``(2/3) f_1 + (1/3) f_2`` as stochastic gradient
descent on that sum should (mean ``x1`` 2.36 against 7/3; the runs from (9, 9) arrive last and are
still moving along the front). Why the difference: with one task per step, mini-batch MGDA *is* SGD on
the sampling-weighted sum, which on this smooth toy converges to a Pareto point wherever it is not
trapped; the paper does not give its step count, starts or number of runs, and shows one run per
start. SIMOL leaves the valley, the likely reason being that its weight ``r*`` shrinks the task whose
gradient explodes there (``|g|^2 ~ 1 / u^2`` near the log's singularity), so the other task pulls the
iterate out; at the front the weights are nearly equal (0.99 and 0.96) and its limit (``x1 = 2.46``,
predicted 2.42) is next to mini-batch MGDA's. ``lambda'`` = 100 was selected on seed 1 among
{1, 10, 100} (36, 38, 40 of 40 runs reached the front; mini-batch MGDA 33 / 40 there). With
``lambda'`` = 1 (inside the paper's grid) SIMOL reaches the front in 36 / 40 runs of seed 0, ending near
``x1 = 6.1`` (predicted 6.14); three of the four misses sit near ``x2 = 0`` with task 1's weight at
0.002-0.06 (``r = theta^2`` has a stationary point at ``theta = 0``, where a weight stops moving).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

import torchmoo as tm
from torchmoo.experiments.runner import Experiment, RunContext, register

METHODS = ("mgda", "minibatch-mgda", "simol")
# CAGrad's three starting points and the two more of Nash-MTL's toy (its (0, 0) sits on the kink x2 = 0)
STARTS = ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))


@dataclass
class Config:
    """Small default (about a minute on 2 CPU cores); :func:`full` runs longer with more seeds."""

    methods: List[str] = field(default_factory=lambda: list(METHODS))
    starts: List[List[float]] = field(default_factory=lambda: [list(s) for s in STARTS])
    seeds: int = 8  # independent task-sampling streams per start
    steps: int = 10_000
    task_probabilities: List[float] = field(default_factory=lambda: [2.0 / 3.0, 1.0 / 3.0])
    lr: float = 0.01  # Adam on x (appendix A)
    simol_lr: float = 0.1  # Adam on the weight table theta (appendix A)
    simol_lambda1: float = 100.0  # selected on seed 1 among {1, 10, 100}: 36, 38, 40 of 40 runs reached the front
    simol_lambda2: float = 1.0
    simol_theta_at: str = "next"  # Algorithm 1: the ascent on theta uses the gradient at x^{s+1}
    tolerance: float = 0.01  # a run has reached the front once its objective-space distance is below this
    check_every: int = 50  # steps between distance checks (and trajectory points of seed 0)
    front_points: int = 20_001  # dense analytic front / Pareto set for the distances
    threads: int = 1  # the runs are tiny element-wise programs: threads only add overhead


def full() -> Config:
    """More seeds and 3x the steps (the paper gives no step count; CAGrad's toy runs 100,000 Adam steps at
    learning rate 0.001, the same path length as 10,000 steps at 0.01)."""
    return Config(seeds=20, steps=30_000)


def toy_jacobian(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Objectives ``(..., 2)`` and Jacobian ``(..., 2, 2)`` (row ``i`` = gradient of ``f_i``) of
    :class:`~torchmoo.problems.SIMOLToy`, written out: the same values as autograd on the problem at a
    fraction of its cost for a batch of 2-D points (autograd's kink conventions: ``d|u|/du = 0`` where
    the log is clamped, both one-sided slopes of ``max(tanh, 0)`` at ``x2 = 0``)."""
    x1, x2 = x[..., 0], x[..., 1]
    t = torch.tanh(-x2)
    dt = 1.0 - t * t  # d(-tanh(-x2)) / dx2
    u1 = 0.5 * (-x1 - 7.0) - t
    u2 = 0.5 * (-x1 + 3.0) - t + 2.0
    eps = 5e-6
    l1 = torch.log(torch.clamp(u1.abs(), min=eps)) + 6.0
    l2 = torch.log(torch.clamp(u2.abs(), min=eps)) + 6.0
    zero = torch.zeros_like(x1)
    il1 = torch.where(u1.abs() >= eps, 1.0 / torch.where(u1 == 0, 1.0, u1), zero)  # d l1 / d u1
    il2 = torch.where(u2.abs() >= eps, 1.0 / torch.where(u2 == 0, 1.0, u2), zero)
    q = 0.1 * (x2 + 8.0) ** 2
    g1 = ((7.0 - x1) ** 2 + q) / 10.0 - 20.0
    g2 = ((x1 + 7.0) ** 2 + q) / 10.0 - 20.0
    h = torch.tanh(0.5 * x2)
    c1, c2 = torch.clamp(h, min=0.0), torch.clamp(-h, min=0.0)
    dh = 0.5 * (1.0 - h * h)
    dc1 = torch.where(h >= 0, dh, zero)
    dc2 = torch.where(h <= 0, -dh, zero)
    dq = 0.02 * (x2 + 8.0)
    f = torch.stack((c1 * l1 + c2 * g1, c1 * l2 + c2 * g2), -1)
    row1 = torch.stack((-0.5 * c1 * il1 + c2 * (x1 - 7.0) / 5.0, dc1 * l1 + c1 * dt * il1 + dc2 * g1 + c2 * dq), -1)
    row2 = torch.stack((-0.5 * c1 * il2 + c2 * (x1 + 7.0) / 5.0, dc1 * l2 + c1 * dt * il2 + dc2 * g2 + c2 * dq), -1)
    return f, torch.stack((row1, row2), -2)


def weighted_pareto_x1(a1: Tensor, a2: Tensor) -> Tensor:
    """``x1`` of the Pareto point minimizing ``a1 f_1 + a2 f_2`` (``a >= 0``): ``7 (a1 - a2) / (a1 + a2)``
    (stationarity in ``x1`` on the set, see :class:`~torchmoo.problems.SIMOLToy`)."""
    return 7.0 * (a1 - a2) / (a1 + a2)


def simol_limit_x1(p: Tuple[float, float], lambda1: float, lambda2: float) -> float:
    r"""``x1`` of the Pareto point where SIMOL's expected update vanishes with its weights at rest.

    With one sampled task, :math:`\tilde K_B` is maximal at ``r*_tau = lambda2 / (lambda2 + |g_tau|^2 /
    lambda1)``; the expected step is ``sum_tau p_tau r*_tau g_tau``, so the limit is the Pareto point of
    the weights ``a_tau = p_tau r*_tau(x)``, which depend on the point itself: found by bisection of
    ``x1 - weighted_pareto_x1(a)`` on ``[-7, 7]``.
    """
    toy = tm.problems.SIMOLToy()

    def gap(x1: float) -> float:
        x = torch.tensor([x1, float(toy.optimal_x2(torch.tensor(x1)))], dtype=torch.float64)
        g2 = toy_jacobian(x)[1].square().sum(-1)  # (2,) squared gradient norms
        r = lambda2 / (lambda2 + g2 / lambda1)
        return x1 - float(weighted_pareto_x1(p[0] * r[0], p[1] * r[1]))

    lo, hi = -7.0, 7.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if gap(mid) < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


class _Front:
    """Distances to the analytic Pareto front (objective space) and set (parameter space)."""

    def __init__(self, n_points: int) -> None:
        toy = tm.problems.SIMOLToy()
        self.pareto_set = toy.pareto_set(n_points)
        self.front = toy.pareto_front(n_points)

    def objective_distance(self, f: Tensor) -> Tensor:
        return torch.cdist(f.to(torch.float64), self.front).min(1).values

    def parameter_distance(self, x: Tensor) -> Tensor:
        return torch.cdist(x.to(torch.float64), self.pareto_set).min(1).values


def _run_method(method: str, cfg: Config, ctx: RunContext, front: _Front) -> Dict[str, Any]:
    starts = torch.tensor(cfg.starts, dtype=torch.float64)
    S, R = starts.shape[0], cfg.seeds
    N = S * R  # run k: start k // R, seed k % R
    x = starts.repeat_interleave(R, 0).clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=cfg.lr)
    # one stream per seed, shared by the methods: every method sees the same task draws
    gens = [torch.Generator().manual_seed(10_007 * (ctx.seed + 1) + s) for s in range(R)]
    rows = torch.arange(N)
    p1 = float(cfg.task_probabilities[0]) / float(sum(cfg.task_probabilities))
    if method == "simol":
        table = tm.methods.TaskTableWeights(2 * N).double()  # theta of run k, task tau at 2 k + tau
        simol = tm.methods.SIMOL(table, cfg.simol_lambda1, cfg.simol_lambda2)
        opt_theta = torch.optim.Adam(table.parameters(), lr=cfg.simol_lr)
        batched_objective = torch.func.vmap(simol.objective)  # one K~_B (|B| = 1) per run
    reached = torch.full((N,), -1, dtype=torch.long)
    trajectory: List[List[List[float]]] = []  # seed 0 of every start: [step][start] -> (x1, x2)
    seed0 = rows[::R]
    t0 = time.perf_counter()
    for step in ctx.progress(range(cfg.steps + 1), desc=method, total=cfg.steps + 1):
        f, J = toy_jacobian(x.detach())
        if step % cfg.check_every == 0 or step == cfg.steps:
            dist = front.objective_distance(f)
            reached = torch.where((reached < 0) & (dist < cfg.tolerance), step, reached)
            trajectory.append(x.detach()[seed0].tolist())
        if step == cfg.steps:
            break
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in gens])  # (R,)
        tau = (u >= p1).long().repeat(S)  # task 0 with probability p1; one draw per seed, shared by the starts
        if method == "mgda":
            d = _mgda_direction(J)
        elif method == "minibatch-mgda":
            d = J[rows, tau]  # the min-norm point of one gradient is the gradient itself
        else:
            r = table(2 * rows + tau)
            d = r.detach()[:, None] * J[rows, tau]  # Algorithm 1, line 6 with |B| = 1
        opt.zero_grad(set_to_none=True)
        x.grad = d.clone()
        opt.step()
        if method == "simol":
            J_theta = toy_jacobian(x.detach())[1] if cfg.simol_theta_at == "next" else J
            opt_theta.zero_grad(set_to_none=True)
            # -sum of the runs' K~_B: each run's theta only enters its own term
            (-batched_objective(r[:, None], J_theta[rows, tau][:, None, :]).sum()).backward()
            opt_theta.step()
    seconds = time.perf_counter() - t0
    xf = x.detach()
    f = toy_jacobian(xf)[0]
    result: Dict[str, Any] = {
        "method": method,
        "final_x": xf.tolist(),
        "final_f": f.tolist(),
        "objective_distance": front.objective_distance(f).tolist(),
        "parameter_distance": front.parameter_distance(xf).tolist(),
        "reached_at": reached.tolist(),
        "trajectory_seed0": trajectory,
        "seconds_per_step": seconds / cfg.steps,
    }
    if method == "simol":
        result["final_weights"] = table.theta.detach().square().reshape(N, 2).tolist()
    ctx.record(method, result, seconds=seconds, evaluations=cfg.steps * N)
    return result


def _mgda_direction(J: Tensor) -> Tensor:
    """Full MGDA's direction for a batch of ``(N, 2, 2)`` Jacobians: the min-norm point of each hull."""
    w = tm.ops.min_norm_simplex(J @ J.mT)  # (N, 2), one batched QP
    return (w[..., None] * J).sum(-2)


def _predicted_x1(method: str, cfg: Config) -> Optional[float]:
    p = float(cfg.task_probabilities[0]) / float(sum(cfg.task_probabilities))
    if method == "minibatch-mgda":
        return 7.0 * (2.0 * p - 1.0)  # weighted_pareto_x1(p, 1 - p)
    if method == "simol":
        return simol_limit_x1((p, 1.0 - p), cfg.simol_lambda1, cfg.simol_lambda2)
    return None  # full MGDA stops at the first Pareto-stationary point on its path


def run(cfg: Config, ctx: RunContext) -> Dict[str, Any]:
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad or not cfg.methods:
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {cfg.methods}.")
    if not cfg.starts or any(len(s) != 2 for s in cfg.starts):
        raise ValueError(f"starts must be a non-empty list of (x1, x2) pairs, got {cfg.starts}.")
    if cfg.seeds < 1 or cfg.steps < 1 or cfg.check_every < 1:
        raise ValueError("seeds, steps and check_every must be >= 1.")
    p = cfg.task_probabilities
    if len(p) != 2 or min(p) <= 0:
        raise ValueError(f"task_probabilities must be two positive numbers, got {p}.")
    if cfg.simol_theta_at not in ("next", "current"):
        raise ValueError(f"simol_theta_at must be 'next' or 'current', got {cfg.simol_theta_at!r}.")
    # checked before the first unit: the simol unit runs last, after the two MGDA units
    if not all(0.0 < v < math.inf for v in (cfg.lr, cfg.simol_lr, cfg.tolerance)):
        raise ValueError(f"lr, simol_lr and tolerance must be positive finite numbers, got {cfg.lr}, "
                         f"{cfg.simol_lr} and {cfg.tolerance}.")
    if "simol" in cfg.methods:
        tm.methods.SIMOL(tm.methods.TaskTableWeights(2), cfg.simol_lambda1, cfg.simol_lambda2)  # its own checks
    front = _Front(cfg.front_points)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.threads))
    try:
        results = {m: ctx.result(m) if ctx.done(m) else _run_method(m, cfg, ctx, front) for m in cfg.methods}
    finally:
        torch.set_num_threads(threads)
    R = cfg.seeds
    table = []
    predicted = {m: _predicted_x1(m, cfg) for m in cfg.methods}
    for m, res in results.items():
        dist = torch.tensor(res["objective_distance"]).reshape(-1, R)
        xdist = torch.tensor(res["parameter_distance"]).reshape(-1, R)
        hit = torch.tensor(res["reached_at"]).reshape(-1, R)
        x1 = torch.tensor(res["final_x"])[:, 0].reshape(-1, R)
        for k, start in enumerate(cfg.starts):
            ok = hit[k] >= 0
            table.append({
                "method": m,
                "start": f"({start[0]:g}, {start[1]:g})",
                "reached": f"{int(ok.sum())}/{R}",
                "median distance": float(dist[k].median()),
                "max distance": float(dist[k].max()),
                "median x-distance": float(xdist[k].median()),
                "median steps to reach": float(hit[k][ok].double().median()) if bool(ok.any()) else None,
                "mean final x1": float(x1[k].mean()),
                "predicted x1": predicted[m],
            })
    _plot(results, cfg, front, ctx)
    summary: Dict[str, Any] = {"table": table}
    for m, res in results.items():
        dist = torch.tensor(res["objective_distance"])
        summary[f"{m}: runs within tolerance of the front"] = f"{int((dist < cfg.tolerance).sum())}/{dist.numel()}"
        summary[f"{m}: median final distance"] = float(dist.median())
        summary[f"{m}: seconds per step"] = res["seconds_per_step"]
        if predicted[m] is not None:
            summary[f"{m}: predicted limit x1"] = predicted[m]
    return summary


def _plot(results: Dict[str, Dict[str, Any]], cfg: Config, front: _Front, ctx: RunContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"mgda": "MGDA (both tasks)", "minibatch-mgda": "mini-batch MGDA (batch 1)", "simol": "SIMOL (batch 1)"}
    fig, axes = plt.subplots(2, len(results), figsize=(4.6 * len(results), 9.0), squeeze=False, constrained_layout=True)
    colors = plt.cm.tab10.colors
    toy = tm.problems.SIMOLToy()
    F = front.front.numpy()
    PS = front.pareto_set.numpy()
    for col, (m, res) in enumerate(results.items()):
        traj = torch.tensor(res["trajectory_seed0"], dtype=torch.float64)  # (T, S, 2)
        fs = toy(traj)
        ax_f, ax_x = axes[0][col], axes[1][col]
        ax_f.plot(F[:, 0], F[:, 1], color="black", lw=2.5, label="Pareto front", zorder=1)
        ax_x.plot(PS[:, 0], PS[:, 1], color="black", lw=2.5, label="Pareto set", zorder=1)
        for k in range(traj.shape[1]):
            c = colors[k % len(colors)]
            ax_f.plot(fs[:, k, 0], fs[:, k, 1], color=c, lw=1, zorder=2)
            ax_f.scatter(fs[-1, k, 0], fs[-1, k, 1], color=c, marker="*", s=80, zorder=3)
            ax_x.plot(traj[:, k, 0], traj[:, k, 1], color=c, lw=1, zorder=2)
            ax_x.scatter(traj[0, k, 0], traj[0, k, 1], color=c, marker="o", s=25, zorder=3)
            ax_x.scatter(traj[-1, k, 0], traj[-1, k, 1], color=c, marker="*", s=80, zorder=3)
        ax_f.set_xlabel("$f_1$")
        ax_f.set_ylabel("$f_2$")
        ax_f.set_title(names[m])
        ax_f.set_xlim(-21.0, 25.0)
        ax_f.set_ylim(-21.0, 25.0)
        ax_x.set_xlabel("$x_1$")
        ax_x.set_ylabel("$x_2$")
        ax_x.set_xlim(-10.0, 10.0)
        ax_x.set_ylim(-10.0, 10.0)
        ax_x.set_title(f"{names[m]}: parameter space")
        ax_f.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"SIMOL toy, tasks sampled with p = ({cfg.task_probabilities[0]:.3g}, "
                 f"{cfg.task_probabilities[1]:.3g}), seed 0 of every start, {cfg.steps} steps")
    ctx.save_figure(fig, "trajectories")


EXPERIMENT = register(
    Experiment(
        name="simol-toy",
        description="SIMOL's two-objective toy (figure 1): MGDA vs mini-batch MGDA vs SIMOL with mini-batch size 1",
        config=Config,
        full=full,
        run=run,
    )
)
