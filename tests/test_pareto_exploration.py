"""Continuous Pareto exploration (Ma, Du & Matusik 2020): ParetoOptimize, ParetoExpand (MINRES tangents),
Algorithm 1, the continuous parametrization, evaluation counts and the pareto-* experiments."""

from __future__ import annotations

import functools
import io
import math

import pytest
import torch

import torchmoo as tm
from torchmoo.methods import (
    ContinuousFront,
    ConvexHullFamily,
    EvaluationCounter,
    ParetoExplorer,
    pareto_expand,
    pareto_explore,
    pareto_optimize,
    stitch,
)
from torchmoo.methods.pareto_exploration import OptimizeResult, sample_beta

F64 = torch.float64
ZDT2 = tm.problems.ZDT2Variant()


def zdt2_point(f1: float, phi: float = 0.7) -> torch.Tensor:
    """A point of the innermost Pareto cylinder with the given f1."""
    rho = math.sqrt(math.pi)
    return torch.tensor([math.asin(2 * f1 - 1) - math.pi, rho * math.cos(phi), rho * math.sin(phi)], dtype=F64)


def cylinder_angle_deg(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Angle between the rows of ``v`` and the tangent plane of the cylinder through ``x``."""
    normal = torch.tensor([0.0, float(x[1]), float(x[2])], dtype=F64)
    normal = normal / normal.norm()
    cos = (v @ normal).abs() / v.norm(dim=-1)
    return torch.rad2deg(torch.asin(cos.clamp(max=1.0)))


class Quadratics:
    """f_i(x) = 0.5 (x - c_i)' A_i (x - c_i): a curved Pareto set x(w) = M(w)^-1 (w A1 c1 + (1-w) A2 c2),
    M(w) = w A1 + (1-w) A2, with tangent dx/dw = M^-1 (A1 c1 - A2 c2 - (A1 - A2) x(w))."""

    def __init__(self, n: int = 6, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        Q1, Q2 = torch.randn(n, n, generator=g, dtype=F64), torch.randn(n, n, generator=g, dtype=F64)
        self.A1, self.A2 = Q1 @ Q1.T / n + 0.5 * torch.eye(n, dtype=F64), Q2 @ Q2.T / n + 0.5 * torch.eye(n, dtype=F64)
        self.c1, self.c2 = torch.randn(n, generator=g, dtype=F64), torch.randn(n, generator=g, dtype=F64)
        self.n = n

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        d1, d2 = x - self.c1, x - self.c2
        return torch.stack([0.5 * d1 @ self.A1 @ d1, 0.5 * d2 @ self.A2 @ d2])

    def x(self, w: float) -> torch.Tensor:
        M = w * self.A1 + (1 - w) * self.A2
        return torch.linalg.solve(M, w * self.A1 @ self.c1 + (1 - w) * self.A2 @ self.c2)

    def dx(self, w: float) -> torch.Tensor:
        M = w * self.A1 + (1 - w) * self.A2
        return torch.linalg.solve(M, self.A1 @ self.c1 - self.A2 @ self.c2 - (self.A1 - self.A2) @ self.x(w))

    def set_distance(self, y: torch.Tensor) -> float:
        """Distance from ``y`` to the Pareto set: a grid over w, then golden-section refinement."""
        ws = torch.linspace(0, 1, 401, dtype=F64).tolist()
        d = [float((y - self.x(w)).norm()) for w in ws]
        i = min(range(len(d)), key=d.__getitem__)
        lo, hi = ws[max(i - 1, 0)], ws[min(i + 1, len(ws) - 1)]
        g = (math.sqrt(5) - 1) / 2
        for _ in range(80):
            a, b = hi - g * (hi - lo), lo + g * (hi - lo)
            if float((y - self.x(a)).norm()) < float((y - self.x(b)).norm()):
                hi = b
            else:
                lo = a
        return float((y - self.x((lo + hi) / 2)).norm())


# --------------------------------------------------------------------------------------------------
# ParetoExpand: MINRES tangents
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("f1", [0.1, 0.35, 0.6, 0.9])
def test_minres_tangents_lie_on_the_zdt2_cylinder(f1):
    x0 = zdt2_point(f1)
    x = x0.clone().requires_grad_(True)
    exp = pareto_expand(lambda: ZDT2(x), [x], num_directions=4, k=2, rhs="normal",
                        generator=torch.Generator().manual_seed(1))
    assert exp.directions.shape == (4, 3) and exp.predicted.shape == (4, 2)
    assert torch.allclose(exp.directions.norm(dim=1), torch.ones(4, dtype=F64))
    # Proposition 3.2 with k = 2 Krylov vectors: exactly the x1 axis of the cylinder (the front's tangent)
    assert float(cylinder_angle_deg(exp.directions, x0).max()) < 1e-8
    assert torch.allclose(exp.directions[:, 0].abs(), torch.ones(4, dtype=F64), atol=1e-10)
    # one Krylov vector (the right-hand side itself, along the gradients) is not tangent
    one = pareto_expand(lambda: ZDT2(x), [x], num_directions=2, k=1, generator=torch.Generator().manual_seed(1))
    assert float(cylinder_angle_deg(one.directions, x0).min()) > 5.0
    J = torch.autograd.functional.jacobian(ZDT2, x0)
    assert float(cylinder_angle_deg(J, x0).min()) > 60.0
    assert exp.stationarity < 1e-24 and abs(float(exp.alpha.sum()) - 1.0) < 1e-12


def test_minres_tangent_matches_a_curved_pareto_set():
    q = Quadratics()
    for w in (0.2, 0.5, 0.8):
        x = q.x(w).clone().requires_grad_(True)
        exp = pareto_expand(lambda: q(x), [x], beta=torch.tensor([[1.0, 0.0], [0.3, 0.7], [-1.0, 2.0]]), k=q.n,
                            tol=1e-14)
        t = q.dx(w)
        cos = (exp.directions @ t).abs() / t.norm()
        assert bool((cos > 1 - 1e-10).all()), cos
        assert torch.allclose(exp.alpha, torch.tensor([w, 1 - w], dtype=F64), atol=1e-10)


def test_tangent_step_leaves_the_set_at_second_order_and_gradient_at_first():
    q = Quadratics(seed=3)
    x = q.x(0.5).clone().requires_grad_(True)
    tangent = pareto_expand(lambda: q(x), [x], beta=torch.tensor([1.0, 0.0]), k=q.n, tol=1e-14).directions[0]
    grad = pareto_expand(lambda: q(x), [x], beta=torch.tensor([1.0, 0.0]), method="gradient").directions[0]
    x0 = x.detach()
    gaps = {(kind, s): q.set_distance(x0 + s * d) for kind, d in (("t", tangent), ("g", grad)) for s in (0.2, 0.1)}
    assert 3.0 < gaps[("t", 0.2)] / gaps[("t", 0.1)] < 5.0, gaps  # O(s^2)
    assert 1.7 < gaps[("g", 0.2)] / gaps[("g", 0.1)] < 2.3, gaps  # O(s)
    assert gaps[("t", 0.1)] < 0.2 * gaps[("g", 0.1)], gaps


def test_predicted_change_and_sign_rules():
    x0 = zdt2_point(0.5)
    x = x0.clone().requires_grad_(True)
    e1 = pareto_expand(lambda: ZDT2(x), [x], beta=torch.tensor([1.0, 0.0]), k=2)
    e2 = pareto_expand(lambda: ZDT2(x), [x], beta=torch.tensor([0.0, 1.0]), k=2)
    assert float(e1.predicted[0, 0]) < 0 < float(e1.predicted[0, 1])  # beta = e1 favors f1
    assert float(e2.predicted[0, 1]) < 0 < float(e2.predicted[0, 0])
    # predicted = J v: a first-order prediction of f(x + s v) - f(x)
    for s in (1e-3, 1e-4):
        with torch.no_grad():
            change = ZDT2(x0 + s * e1.directions[0]) - ZDT2(x0)
        assert torch.allclose(change, s * e1.predicted[0], atol=10 * s * s)
    # the parent rule keeps moving away from the parent, whatever beta says
    parent = ZDT2(zdt2_point(0.6)).detach()  # a parent with larger f1: go on towards smaller f1
    ep = pareto_expand(lambda: ZDT2(x), [x], beta=torch.tensor([[0.0, 1.0], [1.0, 0.0]]), k=2, parent_losses=parent)
    assert bool((ep.predicted[:, 0] < 0).all())
    none = pareto_expand(lambda: ZDT2(x), [x], beta=torch.tensor([[0.0, 1.0], [1.0, 0.0]]), k=2, sign="none")
    assert torch.allclose(none.directions[0].abs(), none.directions[1].abs())


def test_correction_and_hessian_closure_on_a_network():
    """On a two-head MLP away from stationarity: MINRES over the HVP of alpha'f (on a sub-batch)
    against a dense solve, with Problem 5's corrected right-hand side."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    X, Y = torch.randn(40, 3, dtype=F64), torch.randn(40, 2, dtype=F64)
    params = list(net.parameters())

    def losses(xs, ys):
        return ((net(xs) - ys) ** 2).mean(0)

    n = tm.autograd.num_params(params)
    beta = torch.tensor([[1.0, 0.0], [0.2, 0.5]], dtype=F64)
    exp = pareto_expand(lambda: losses(X, Y), params, beta=beta, k=3 * n, tol=1e-13, correction=True, sign="none",
                        shift=-0.5, hessian_objectives=lambda: losses(X[:25], Y[:25]))
    flat = tm.autograd.flatten(params).detach()

    def f_of(v, xs, ys):
        ws = tm.autograd.unflatten(v, params)
        h = torch.tanh(xs @ ws[0].T + ws[1])
        return ((h @ ws[2].T + ws[3] - ys) ** 2).mean(0)

    J = torch.autograd.functional.jacobian(lambda v: f_of(v, X, Y), flat)
    alpha = exp.alpha
    H = torch.autograd.functional.hessian(lambda v: alpha @ f_of(v, X[:25], Y[:25]), flat)
    c = alpha @ J
    B = beta @ J - beta.sum(1, keepdim=True) * c
    sol = torch.linalg.solve(H + 0.5 * torch.eye(n, dtype=F64), B.T).T  # shift = -0.5: (H + 0.5 I) v = b
    sol = sol / sol.norm(dim=1, keepdim=True)
    assert torch.allclose(exp.directions, sol, atol=1e-8)  # sign="none" keeps MINRES's sign
    assert abs(exp.stationarity - float(c @ c)) < 1e-12
    assert bool((exp.residuals < 1e-8).all())


# --------------------------------------------------------------------------------------------------
# ParetoOptimize
# --------------------------------------------------------------------------------------------------


def test_pareto_optimize_reaches_pareto_stationary_points():
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        x = (zdt2_point(0.2 + 0.6 * float(torch.rand(1, generator=g, dtype=F64)))
             + 0.15 * torch.randn(3, generator=g, dtype=F64)).requires_grad_(True)
        f_start = ZDT2(x).detach()
        counter = EvaluationCounter()
        res = pareto_optimize(lambda: ZDT2(x), [x], tol=1e-14, max_iter=2000, counter=counter)
        assert res.converged and res.stationarity <= 1e-14
        J = torch.autograd.functional.jacobian(ZDT2, x.detach())
        assert tm.methods.pareto_stationarity(J) <= 1e-14
        assert bool((res.losses <= f_start + 1e-15).all())  # MGDA's line search improves every objective
        assert torch.equal(res.initial_losses, f_start)
        assert counter.grad == res.iterations + 1 and counter.f >= counter.grad + res.iterations
        stationary_not_optimal = float(res.losses[0]) < 1e-6  # the f1 = 0 segment (supplement 3.1)
        assert bool(ZDT2.is_pareto_optimal(x.detach(), atol=1e-6)) or stationary_not_optimal


def test_pareto_optimize_with_another_aggregator_and_an_optimizer():
    q = Quadratics(seed=1)
    x = torch.zeros(q.n, dtype=F64, requires_grad=True)
    res = pareto_optimize(lambda: q(x), [x], aggregator=tm.methods.LinearScalarization([0.25, 0.75]), tol=1e-20,
                          max_iter=5000)
    assert torch.allclose(x.detach(), q.x(0.25), atol=1e-7)  # the weighted sum's minimizer
    assert res.stationarity < 1e-12
    y = torch.zeros(q.n, dtype=F64, requires_grad=True)
    opt = torch.optim.SGD([y], lr=0.1)
    counter = EvaluationCounter()
    res = pareto_optimize(lambda: q(y), [y], optimizer=opt, max_iter=300, tol=0.0, counter=counter)
    assert res.iterations == 300 and counter.grad == 300 and counter.f == 301
    assert res.stationarity < 1e-6
    z = torch.zeros(q.n, dtype=F64, requires_grad=True)
    counter = EvaluationCounter()
    res = pareto_optimize(lambda: q(z), [z], optimizer=torch.optim.SGD([z], lr=0.1), max_iter=300, tol=1e-8,
                          counter=counter)
    assert res.converged and res.stationarity <= 1e-8 and res.iterations < 300
    assert counter.f == counter.grad == res.iterations + 1  # the converged point is not evaluated twice
    J = torch.autograd.functional.jacobian(q, z.detach())
    assert abs(tm.methods.pareto_stationarity(J) - res.stationarity) < 1e-12
    assert torch.allclose(res.losses, q(z.detach()))
    none = pareto_optimize(lambda: q(y), [y], max_iter=0)
    assert math.isnan(none.stationarity) and none.iterations == 0


# --------------------------------------------------------------------------------------------------
# Algorithm 1
# --------------------------------------------------------------------------------------------------


def _explorer(f1=0.5, **kw):
    x = zdt2_point(f1).requires_grad_(True)
    base = dict(k=2, step=0.1, num_children=1, num_points=5, rhs="binary",
                optimize=functools.partial(pareto_optimize, tol=1e-14, max_iter=500), optimize_seed=False)
    base.update(kw)
    return x, ParetoExplorer(x, lambda: ZDT2(x), **base)


def test_expansion_moves_along_the_front():
    x, ex = _explorer(optimize=functools.partial(pareto_optimize, max_iter=0))
    pts = ex.explore()
    assert len(pts) == 6 and not ex.rejected
    F = torch.stack([p.losses for p in pts])
    assert float((F[:, 1] - (1 - F[:, 0] ** 2)).abs().max()) < 1e-12  # tangent steps stay on the front
    f1 = F[:, 0]
    assert bool((f1.diff() < 0).all()) or bool((f1.diff() > 0).all())  # a chain, no retraction
    assert bool(((f1.diff().abs() - 0.1 * 0.5).abs() < 0.02).all())  # |df1/dx1| <= 1/2
    assert torch.equal(x.detach(), pts[0].params)  # the model is left at the seed
    # the gradient expansion (WeightedSum) falls off the front
    _, exg = _explorer(method="gradient", optimize=functools.partial(pareto_optimize, max_iter=0), num_points=3)
    Fg = torch.stack([p.losses for p in exg.explore()[1:]] + [p.losses for p in exg.rejected])
    assert float((Fg[:, 1] - (1 - Fg[:, 0] ** 2)).abs().max()) > 1e-2


def test_explored_points_are_pareto_stationary_after_optimize():
    _, ex = _explorer(method="gradient", num_points=4, num_children=2)
    pts = ex.explore()
    for p in pts[1:]:
        assert p.stationarity <= 1e-14
        J = torch.autograd.functional.jacobian(ZDT2, p.params)
        assert tm.methods.pareto_stationarity(J) <= 1e-14
    # dominance pruning: no kept point is dominated by one kept before it; every rejected one is dominated
    for i, p in enumerate(pts):
        assert not any(bool((q.losses <= p.losses).all() and (q.losses < p.losses).any()) for q in pts[:i])
    for r in ex.rejected:  # dominated, or a copy of a kept point
        assert any(bool((q.losses <= r.losses).all() and (q.losses < r.losses).any())
                   or float((q.params - r.params).norm()) <= 1e-6 * 0.1 for q in pts)
    assert len(pts) - 1 == 4
    assert all(p.parent is not None and p.parent < p.index for p in pts[1:])


def test_breadth_first_order_and_children():
    _, ex = _explorer(num_children=2, num_points=6, optimize=functools.partial(pareto_optimize, max_iter=0))
    pts = ex.explore()
    parents = [p.parent for p in pts[1:]]
    assert parents == sorted(parents) and parents[:2] == [0, 0]
    assert ex.children(0) == [1, 2]
    # the seed's two children go opposite ways (beta = e1, e2); later children continue outwards
    assert float((pts[1].losses[0] - pts[0].losses[0]) * (pts[2].losses[0] - pts[0].losses[0])) < 0
    for p in pts[3:]:
        parent = pts[p.parent]
        grand = pts[parent.parent]
        assert float((p.losses[0] - parent.losses[0]) * (parent.losses[0] - grand.losses[0])) > 0


def test_counters_count_every_evaluation():
    calls = {"f": 0}
    x = zdt2_point(0.4).requires_grad_(True)

    def objectives():
        calls["f"] += 1
        return ZDT2(x)

    ex = ParetoExplorer(x, objectives, k=3, tol=0.0, step=0.05, num_children=2, num_points=3,
                        optimize=functools.partial(pareto_optimize, tol=1e-14, max_iter=50))
    ex.explore()
    total = ex.counter
    assert total.f == calls["f"]
    expansions = sum(1 for p in ex.points if p.alpha is not None)
    ec = ex.counters["expand"]
    assert ec.f == expansions and ec.grad == 2 * expansions  # J, and the weighted gradient for the HVPs
    # MINRES with tol = 0 on a 3-variable problem stops at the exact solution (<= 3 batched products of 2)
    assert ec.hvp % 2 == 0 and 2 * expansions <= ec.hvp <= 2 * 3 * expansions
    oc = ex.counters["optimize"]
    children = len(ex.points) - 1 + len(ex.rejected)
    assert oc.grad >= children and oc.hvp == 0
    assert ex.counters["seed"].grad >= 1  # optimize_seed=True
    assert total.total == total.f + total.grad + total.hvp
    # pareto_expand alone: K directions share one batched product per iteration
    c = EvaluationCounter()
    y = zdt2_point(0.3).requires_grad_(True)
    exp = pareto_expand(lambda: ZDT2(y), [y], num_directions=5, k=2, tol=0.0, counter=c)
    assert c.hvp == 5 * exp.info.matvec_calls and exp.info.matvec_calls <= 2
    assert (c.f, c.grad) == (1, 2)


def test_resume_from_state_dict_is_exact():
    _, full_run = _explorer(num_children=2, num_points=5, rhs="normal", seed=3)
    ref = full_run.explore()

    class Stop(Exception):
        pass

    saved = {}

    def interrupt(e):
        if len(e.points) + len(e.rejected) == 3:
            saved["state"] = e.state_dict()
            raise Stop

    x, first = _explorer(num_children=2, num_points=5, rhs="normal", seed=3)
    with pytest.raises(Stop):
        first.explore(callback=interrupt)
    x2, second = _explorer(f1=0.3, num_children=2, num_points=5, rhs="normal", seed=99)
    second.load_state_dict(saved["state"])
    out = second.explore()
    assert len(out) == len(ref)
    for a, b in zip(out, ref):
        assert torch.equal(a.params, b.params) and torch.equal(a.losses, b.losses) and a.parent == b.parent
    assert second.counter == full_run.counter
    assert torch.equal(x2.detach(), ref[0].params)


def test_an_interrupted_explore_continues_where_it_stopped():
    """An exception inside explore() (a KeyboardInterrupt during an expansion or a ParetoOptimize) loses no
    queued point and no child: calling explore() again gives the uninterrupted run."""

    def make(fail_at=None):
        x = zdt2_point(0.5).requires_grad_(True)
        calls = {"n": 0}

        def objectives():
            calls["n"] += 1
            if calls["n"] == fail_at:
                raise KeyboardInterrupt
            return ZDT2(x)

        # the Hessian's closure is called after the right-hand sides are drawn
        return x, ParetoExplorer(x, objectives, k=2, step=0.1, num_children=2, num_points=5, rhs="normal", seed=3,
                                 optimize_seed=False, optimize=functools.partial(pareto_optimize, max_iter=0),
                                 hessian_objectives=objectives)

    _, full_run = make()
    ref = full_run.explore()
    assert len(ref) == 6 and len(set(p.parent for p in ref[1:])) > 1
    for fail_at in range(2, 16):  # each expansion calls the closure twice, each child once
        x, ex = make(fail_at)
        with pytest.raises(KeyboardInterrupt):
            ex.explore()
        assert torch.equal(x.detach(), ex.points[0].params)
        out = ex.explore()
        assert [p.parent for p in out] == [p.parent for p in ref], fail_at
        assert all(torch.equal(a.params, b.params) for a, b in zip(out, ref)), fail_at
        assert len(ex.rejected) == len(full_run.rejected)


def test_an_interrupted_seed_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh(),
                              torch.nn.Linear(6, 2)).double()
    X, Y = torch.randn(32, 3, dtype=F64), torch.randn(32, 2, dtype=F64)
    start = tm.autograd.flatten(net.parameters()).detach().clone()
    before = {k: v.clone() for k, v in net.named_buffers()}
    calls = {"n": 0}

    def objectives():
        calls["n"] += 1
        if calls["n"] == 4:  # inside the seed's ParetoOptimize, the parameters moved
            raise KeyboardInterrupt
        return ((net(X) - Y) ** 2).mean(0)

    ex = ParetoExplorer(net, objectives, k=8, num_points=1, optimize=functools.partial(pareto_optimize, max_iter=2))
    with pytest.raises(KeyboardInterrupt):
        ex.explore()
    assert not ex.points and torch.equal(tm.autograd.flatten(net.parameters()), start)
    assert all(torch.equal(v, before[k]) for k, v in net.named_buffers())

    class Stop(Exception):
        pass

    def stop(e):
        raise Stop

    with pytest.raises(Stop):  # a callback that stops after the seed
        ex.explore(callback=stop)
    assert len(ex.points) == 1 and torch.equal(tm.autograd.flatten(net.parameters()), ex.points[0].params)
    assert all(torch.equal(v, before[k]) for k, v in net.named_buffers())


# --------------------------------------------------------------------------------------------------
# continuous parametrization
# --------------------------------------------------------------------------------------------------


def test_continuous_front_passes_through_the_explored_points():
    x, ex = _explorer(num_children=2, num_points=6, optimize=functools.partial(pareto_optimize, max_iter=0))
    ex.explore()
    front = ex.front(resolution=4)
    assert isinstance(front, ContinuousFront)
    assert front.values.shape[0] == len(ex.points) + 3 * (len(ex.points) - 1)
    assert front.evaluations == 3 * (len(ex.points) - 1)
    # every explored point lies on the front at its t, and solution(t) gives back its parameters
    ts = []
    for p in ex.points:
        t = front.point_t(p.index)
        assert t is not None
        ts.append(t)
        assert torch.allclose(torch.cat([v.reshape(-1) for v in ex.solution(t)]), p.params, atol=1e-12)
        assert torch.allclose(front.objectives_at(t), p.losses.double(), atol=1e-12)
    F = torch.stack([p.losses for p in ex.points])
    order = torch.argsort(F[:, 0])
    assert torch.tensor(ts)[order].diff().min() > 0  # t increases with f1: -1 favors f1, 1 favors f2
    assert min(ts) == -1.0 and max(ts) == 1.0
    # one family, sampled on its segments: no stitching; f along t matches evaluations of solution(t)
    assert front.num_stitches == 0 and len(front) == front.values.shape[0]
    for t in torch.linspace(-1, 1, 13).tolist():
        ex.load_solution(t)
        with torch.no_grad():
            f = ZDT2(x)
        assert torch.allclose(f, front.objectives_at(t), atol=2e-3)
    fv = front.front_values
    assert bool((fv[:, 0].diff() >= 0).all()) and bool((fv[:, 1].diff() <= 0).all())
    import matplotlib.pyplot as plt

    fig = ex.plot(reference=ZDT2.pareto_front(50))
    assert len(fig.axes) == 2  # the front and its colorbar of t
    plt.close(fig)


def _good_and_bad_families():
    """Two explored families from one ZDT2 point: tangent steps along the front, and a family in the
    dominated interior (short gradient steps from the same seed, not optimized)."""
    x = zdt2_point(0.5).requires_grad_(True)
    common = dict(k=2, num_children=2, rhs="binary", optimize_seed=False,
                  optimize=functools.partial(pareto_optimize, max_iter=0))
    good = ParetoExplorer(x, lambda: ZDT2(x), step=0.1, num_points=8, **common)
    good.explore()
    bad = ParetoExplorer(x, lambda: ZDT2(x), method="gradient", step=0.03, num_points=4, **common)
    bad.explore()
    return good, bad


def test_stitching_crops_dominated_samples():
    good, bad = _good_and_bad_families()
    front = stitch([good, bad], resolution=4)
    V, kept = front.values, front.kept
    dominated = torch.tensor([any(bool((V[j] <= V[i]).all() and (V[j] < V[i]).any()) for j in range(len(V)))
                              for i in range(len(V))])
    assert torch.equal(kept, ~dominated)
    assert int((~kept).sum()) > 0 and front.num_stitches > 0
    assert front.point_t(0, explorer=0) is not None
    # a cropped explored point has no t
    cropped_nodes = [i for i, (e, p) in enumerate(front.node_owner) if not bool(kept[int(front.node_sample[i])])]
    assert cropped_nodes and all(front.point_t(front.node_owner[i][1], front.node_owner[i][0]) is None
                                 for i in cropped_nodes)
    assert front.hypervolume([1.1, 1.1]) >= tm.metrics.hypervolume(torch.stack([p.losses for p in good.points]),
                                                                   [1.1, 1.1])


def test_convex_hull_family():
    _, ex = _explorer(num_children=2, num_points=2, optimize=functools.partial(pareto_optimize, max_iter=0))
    ex.explore()
    fam = ex.family(0)
    assert isinstance(fam, ConvexHullFamily) and fam.num_children == 2
    assert torch.allclose(fam.point(torch.tensor([0.0, 0.0], dtype=F64)), ex.points[0].params)
    assert torch.allclose(fam.point(torch.tensor([1.0, 0.0], dtype=F64)), ex.points[1].params)
    pts, r = fam.sample(50, generator=torch.Generator().manual_seed(0))
    assert pts.shape == (50, 3) and bool((r >= 0).all()) and bool((r.sum(1) <= 1 + 1e-12).all())
    assert torch.allclose(pts, fam.point(r))
    for bad in ([0.7, 0.7], [-0.1, 0.2], [0.5]):
        with pytest.raises(ValueError):
            fam.point(torch.tensor(bad, dtype=F64))
    with pytest.raises(ValueError, match="no kept children"):
        ex.family(1)


def test_stitching_goes_through_a_seed_shared_by_two_explorers():
    """Two explorers from one seed, one chain each way: the two copies of the seed are one point of the
    front, so the traversal goes on through it (no stitch, parameters continuous in t)."""
    common = dict(k=2, step=0.1, num_children=1, num_points=2, rhs="binary", optimize_seed=False,
                  optimize=functools.partial(pareto_optimize, max_iter=0))
    x = zdt2_point(0.5).requires_grad_(True)
    right = ParetoExplorer(x, lambda: ZDT2(x), seed=1, **common)  # beta = e2: f1 increases
    left = ParetoExplorer(x, lambda: ZDT2(x), seed=0, **common)   # beta = e1: f1 decreases
    right.explore()
    left.explore()
    assert float(right.points[1].losses[0]) > 0.5 > float(left.points[1].losses[0])
    front = stitch([right, left], resolution=4)  # the copy of the seed listed first is on the right
    assert len(front) == front.values.shape[0] and front.num_stitches == 0
    ts = torch.linspace(-1, 1, 201, dtype=F64).tolist()
    xs = torch.stack([front.solution(t) for t in ts])
    # steps of 0.1 / 4 in parameter space per sample, spread over ~201 / 16 values of t: no jump
    assert float((xs[1:] - xs[:-1]).norm(dim=1).max()) < 0.01
    i = int(torch.nonzero(front.order == int(front.node_sample[0])).flatten()[0])
    for j in (i - 1, i + 1):  # through the seed, along the segments of both explorers
        mid = 0.5 * (float(front.t[i]) + float(front.t[j]))
        a, b = front.sample_params(int(front.order[i])), front.sample_params(int(front.order[j]))
        assert torch.allclose(front.solution(mid), 0.5 * (a + b), atol=1e-12)


def test_buffers_are_restored_by_explore_and_front():
    """Batch norm in training mode updates its statistics at every evaluation of the closure: the
    explorer leaves them (with the parameters) as they were."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh(),
                              torch.nn.Linear(6, 2)).double()
    X, Y = torch.randn(32, 3, dtype=F64), torch.randn(32, 2, dtype=F64)
    before = {k: v.clone() for k, v in net.named_buffers()}
    ex = ParetoExplorer(net, lambda: ((net(X) - Y) ** 2).mean(0), k=8, num_children=2, num_points=2,
                        optimize=functools.partial(pareto_optimize, max_iter=2), seed=0)
    ex.explore()
    assert ex.counter.f > 4
    for _ in range(2):  # after explore(), then after front()
        assert torch.equal(tm.autograd.flatten(net.parameters()), ex.points[0].params)
        for key, value in net.named_buffers():
            assert torch.equal(value, before[key]), key
        ex.front(resolution=3)
    assert len(ex.buffers) == len(before) == 3


def test_objectives_in_another_dtype_than_the_parameters():
    """float32 parameters, objectives computed in float64: the same directions as in float64."""
    x0 = zdt2_point(0.4)
    x32 = x0.float().requires_grad_(True)
    x64 = x0.clone().requires_grad_(True)
    beta = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    e32 = pareto_expand(lambda: ZDT2(x32.double()), [x32], beta=beta, k=2)
    e64 = pareto_expand(lambda: ZDT2(x64), [x64], beta=beta, k=2)
    assert e32.directions.dtype == torch.float32
    assert torch.allclose(e32.directions.double(), e64.directions, atol=1e-5)
    y = (x0 + torch.tensor([0.1, 0.2, -0.1], dtype=F64)).float().requires_grad_(True)
    start = ZDT2(y.detach().double())
    res = pareto_optimize(lambda: ZDT2(y.double()), [y], tol=1e-8, max_iter=200)
    assert res.iterations > 0 and res.stationarity < 1e-6 and bool((res.losses < start).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [1.0, 2.0 ** -10])
def test_half_precision_model_expands_as_in_float64(dtype, scale):
    """A float16 / bfloat16 linear regression (two outputs, one loss each) is solved by MINRES in float32:
    its directions are those of the same weights and data in float64, in the model's dtype. With the
    losses scaled by 2^-10, ||H|| ~ 1e-3: the products of float16 Lanczos vectors of that norm would
    underflow unless each vector is scaled before its rounding."""
    g = torch.Generator().manual_seed(0)
    # weights and data rounded to the half dtype first, so that both models compute the same function
    x = torch.randn(32, 6, generator=g, dtype=F64).to(dtype)
    y = torch.randn(32, 2, generator=g, dtype=F64).to(dtype)
    half = torch.nn.Linear(6, 2, dtype=dtype)
    with torch.no_grad():
        half.weight.copy_(torch.randn(2, 6, generator=g, dtype=F64))
        half.bias.copy_(torch.randn(2, generator=g, dtype=F64))
    full = torch.nn.Linear(6, 2, dtype=F64)
    full.load_state_dict({k: v.double() for k, v in half.state_dict().items()})

    def objectives(model, xs, ys):
        return lambda: [scale * ((model(xs)[:, i] - ys[:, i]) ** 2).mean() for i in range(2)]

    beta = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, -1.0]], dtype=F64)
    ref = pareto_expand(objectives(full, x.double(), y.double()), full, beta=beta, k=20, correction=True)
    got = pareto_expand(objectives(half, x, y), half, beta=beta, k=20, correction=True)
    assert got.directions.dtype == dtype and got.predicted.dtype == dtype
    # the operator and J carry the half dtype's rounding (eps 2^-11 / 2^-8): directions within a few eps
    eps = torch.finfo(dtype).eps
    assert (got.directions.double() - ref.directions).norm(dim=1).max() < 4 * eps
    assert torch.allclose(got.predicted.double(), ref.predicted, rtol=4 * eps, atol=4 * eps * ref.predicted.abs().max())


def test_parent_rule_compares_the_objectives_in_their_dtype():
    """float32 parameters, float64 objectives near 1000: f(x*) - f(parent) = (-1e-6, 1e-6) must not be
    rounded to the parameters' dtype, where it would point the other way and make both directions retract."""
    x = zdt2_point(0.37).float().requires_grad_(True)
    objectives = lambda: ZDT2(x.double()) + 1000.0  # noqa: E731
    parent = objectives().detach() + torch.tensor([1e-6, -1e-6], dtype=F64)  # the parent has the larger f1
    exp = pareto_expand(objectives, [x], beta=torch.tensor([[0.0, 1.0], [1.0, 0.0]]), k=2, parent_losses=parent)
    assert bool((exp.predicted[:, 0] < 0).all())  # on towards smaller f1, away from the parent


def test_exploration_under_no_grad_builds_its_graphs():
    """Called under torch.no_grad() (an evaluation loop), the closures still get their graphs, as for
    torchmoo.backward and LBFGS: the same directions, steps and points as with autograd enabled (the
    Hessian of a graph-less product would be 0 and every direction would vanish)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    X, Y = torch.randn(20, 3, dtype=F64), torch.randn(20, 2, dtype=F64)
    params = list(net.parameters())
    start = tm.autograd.flatten(params).detach().clone()

    def run():
        with torch.no_grad():
            for p, v in zip(params, tm.autograd.unflatten(start, params)):
                p.copy_(v)
        obj = lambda: ((net(X) - Y) ** 2).mean(0)  # noqa: E731
        exp = pareto_expand(obj, params, beta=torch.tensor([[1.0, 0.0], [0.0, 1.0]]), k=10,
                            hessian_objectives=lambda: ((net(X[:10]) - Y[:10]) ** 2).mean(0))
        line = pareto_optimize(obj, params, max_iter=3).losses
        sgd = pareto_optimize(obj, params, optimizer=torch.optim.SGD(params, lr=0.1), max_iter=3).losses
        ex = ParetoExplorer(net, obj, k=6, num_children=2, num_points=2, optimize_seed=False,
                            optimize=functools.partial(pareto_optimize, max_iter=0))
        return exp.directions, line, sgd, torch.stack([p.params for p in ex.explore()])

    ref = run()
    with torch.no_grad():
        out = run()
    assert bool((ref[0].norm(dim=1) > 0.99).all()) and ref[3].shape[0] == 3
    assert all(torch.equal(a, b) for a, b in zip(out, ref))


def test_a_hessian_closure_without_graph_is_refused():
    x = zdt2_point(0.5).requires_grad_(True)
    with pytest.raises(ValueError, match="hessian_objectives do not require grad"):
        pareto_expand(lambda: ZDT2(x), [x], k=2, hessian_objectives=lambda: ZDT2(x.detach()))


def test_explore_checks_its_callback_before_any_work_and_state_dicts_their_expansion():
    x, ex = _explorer(num_children=2, num_points=3, optimize_seed=True)
    start = x.detach().clone()
    with pytest.raises(TypeError, match="callback must be callable"):
        ex.explore(callback="save")
    assert not ex.points and ex.counter.total == 0 and torch.equal(x.detach(), start)  # the seed was not optimized
    state = _interrupted_state(zdt2_point(0.5).requires_grad_(True), after=2)
    del state["pending"]["directions"]
    with pytest.raises(ValueError, match="not a ParetoExplorer state_dict"):
        ex.load_state_dict(state)


def test_plot_refuses_other_than_two_objectives_and_solution_takes_numpy_scalars():
    import matplotlib.pyplot as plt
    import numpy as np

    y = torch.zeros(4, dtype=F64, requires_grad=True)
    centers = torch.eye(3, 4, dtype=F64)
    ex3 = ParetoExplorer(y, lambda: ((y - centers) ** 2).sum(1), k=4, num_points=2, rhs="binary", optimize_seed=False,
                         optimize=functools.partial(pareto_optimize, max_iter=0))
    ex3.explore()
    for front in (False, True):
        with pytest.raises(ValueError, match="the plot shows two objectives; explorer 0 has 3"):
            ex3.plot(front=front)
    plt.close("all")
    _, ex = _explorer(num_points=2, optimize=functools.partial(pareto_optimize, max_iter=0))
    ex.explore()
    for t in (np.float32(0.25), torch.tensor(0.25)):
        assert all(torch.equal(a, b) for a, b in zip(ex.solution(t), ex.solution(0.25)))


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_readable_errors():
    x = zdt2_point(0.5).requires_grad_(True)
    obj = lambda: ZDT2(x)  # noqa: E731
    with pytest.raises(ValueError, match="at least 2 objectives"):
        pareto_expand(lambda: ZDT2(x)[:1], [x])
    with pytest.raises(ValueError, match="rhs"):
        pareto_expand(obj, [x], rhs="uniform")
    with pytest.raises(ValueError, match="sign"):
        pareto_expand(obj, [x], sign="up")
    with pytest.raises(ValueError, match="method"):
        pareto_expand(obj, [x], method="random")
    with pytest.raises(ValueError, match="beta"):
        pareto_expand(obj, [x], beta=torch.ones(3))
    with pytest.raises(ValueError, match="parent_losses"):
        pareto_expand(obj, [x], sign="parent")
    with pytest.raises(TypeError, match="callable"):
        pareto_expand(ZDT2(x), [x])
    with pytest.raises(ValueError, match="require grad"):
        pareto_expand(lambda: ZDT2(x.detach()), [x])
    with pytest.raises(ValueError, match="not finite"):
        pareto_optimize(lambda: ZDT2(x) * float("nan"), [x])
    with pytest.raises(ValueError, match="max_iter"):
        pareto_optimize(obj, [x], max_iter=-1)
    with pytest.raises(ValueError, match="k"):
        ParetoExplorer(x, obj, k=0)
    with pytest.raises(ValueError, match="step"):
        ParetoExplorer(x, obj, step=-0.1)
    # refused at construction, before the seed is optimized
    with pytest.raises(ValueError, match="seed has no parent"):
        ParetoExplorer(x, obj, sign="parent")
    for bad in (dict(perturbation=0.0), dict(tol=-1.0), dict(shift=float("nan"))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ParetoExplorer(x, obj, **bad)
    with pytest.raises(TypeError, match="hessian_objectives"):
        ParetoExplorer(x, obj, hessian_objectives=1.0)
    _, ex = _explorer(num_points=2, optimize=functools.partial(pareto_optimize, max_iter=0))
    ex.explore()
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        ex.solution(1.5)
    with pytest.raises(ValueError, match="not a ParetoExplorer state_dict"):
        ex.load_state_dict({"points": []})
    with pytest.raises(ValueError, match="two objectives"):
        ex.front(objectives=lambda: torch.cat([ZDT2(x), ZDT2(x)[:1]]))
    with pytest.raises(ValueError, match="binary"):
        sample_beta(1, 2, "binary")


def test_beta_samplers():
    g = torch.Generator().manual_seed(0)
    b = sample_beta(2, 2, "binary", generator=g)
    assert sorted(b.tolist()) == [[0.0, 1.0], [1.0, 0.0]]  # the two chains of figure 7
    b3 = sample_beta(3, 12, "binary", generator=g)
    assert bool(((b3.sum(1) > 0) & (b3.sum(1) < 3)).all())
    s = sample_beta(4, 100, "simplex", generator=g)
    assert bool((s >= 0).all()) and torch.allclose(s.sum(1), torch.ones(100, dtype=F64))
    assert sample_beta(3, 5, "normal", generator=g).shape == (5, 3)


def test_pareto_explore_function():
    x = zdt2_point(0.5).requires_grad_(True)
    pts = pareto_explore(lambda: ZDT2(x), [x], k=2, num_points=3, num_children=2)
    assert [p.index for p in pts] == [0, 1, 2, 3] and pts[0].parent is None


# --------------------------------------------------------------------------------------------------
# experiments at their smallest size
# --------------------------------------------------------------------------------------------------


def test_pareto_zdt2_experiment_tiny(tmp_path):
    from torchmoo.experiments import pareto_zdt2

    cfg = pareto_zdt2.Config(tangent_points=3, tangent_directions=2, explore_seeds=1, num_points=3)
    res = tm.experiments.run_experiment("pareto-zdt2", out=str(tmp_path / "z"), progress=False, config=cfg)
    s = res["summary"]
    assert res["complete"] and (tmp_path / "z" / "zdt2.png").stat().st_size > 1000
    assert s["tangent angle to the cylinder, max (deg)"] < 1e-6
    assert s["gradient angle to the cylinder, median (deg)"] > 60
    assert s["max |f2 - (1 - f1^2)| along tangents"] < 1e-9 < s["median max |f2 - (1 - f1^2)| along gradients"]
    tangent, gradient = s["table"]
    assert tangent["#HVP EXP"] > 0 and gradient["#HVP EXP"] == 0
    assert tangent["points"] == "3 / 3" and tangent["max front gap"] < 1e-9
    assert gradient["#grad OPT"] > tangent["#grad OPT"]  # tangent steps land on the set


def test_pareto_multidigits_experiment_tiny(tmp_path):
    from torchmoo.experiments import pareto_multidigits

    cfg = pareto_multidigits.Config(train_images=128, test_images=32, seed_weights=[0.5], seed_epochs=1,
                                    batch_size=64, k=4, num_points=2, hessian_images=32, ws_weights=[[1.0, 0.0]],
                                    ws_snapshots=2, front_resolution=2)
    out = tmp_path / "md"
    res = tm.experiments.run_experiment("pareto-multidigits", out=str(out), progress=False, config=cfg)
    assert res["complete"] and (out / "front.png").stat().st_size > 1000
    exp = res["units"]["expand linear w=0.5"]
    assert len(exp["test_losses"]) == 3 and exp["parents"][:2] == [None, 0] and exp["parents"][2] in (0, 1)
    ev = exp["evaluations"]["expand"]
    expansions = ev["f"] // 2  # each expansion evaluates the objectives and the Hessian's sub-batch once
    assert ev["f"] == 2 * expansions and ev["hvp"] == 2 * cfg.k * expansions  # K = 2 directions, k iterations
    ws = res["units"]["weighted-sum w=(1, 0) lr=0.01"]
    assert 0 <= ws["image_evaluations"] - exp["image_evaluations"] < cfg.batch_size  # the same budget
    s = res["summary"]
    assert s["hypervolume after expansion (seeds + explored points)"] >= s[
        "hypervolume of the seeds (test, ref = chance loss)"]
    assert s["t of the seeds on the front"][0] is None or -1 <= s["t of the seeds on the front"][0] <= 1
    again = tm.experiments.run_experiment("pareto-multidigits", out=str(out), progress=False, config=cfg)
    assert again["units"] == res["units"] and again["resumed"] == 1


def test_pareto_multidigits_refuses_bad_explorer_settings_before_training():
    from torchmoo.experiments import pareto_multidigits

    for bad, message in [(dict(rhs="uniform"), "rhs"), (dict(step=0.0), "step"), (dict(num_points=-1), "num_points"),
                         (dict(optimize_steps=-1), "optimize_steps"), (dict(shift=float("nan")), "shift"),
                         (dict(ws_lrs=[0.0]), "ws_lrs")]:
        with pytest.raises(ValueError, match=message):  # raised before the data set is touched (no context)
            pareto_multidigits.run(pareto_multidigits.Config(**bad), None)


def test_pareto_multidigits_budget_counts_each_pass_once(tmp_path):
    # One unit for both sides of the necessity test: a forward + backward pass over b images counts b,
    # whether it is an SGD step or a Jacobian of ParetoExpand (the paper counts no f for ParetoExpand).
    from torchmoo.experiments import pareto_multidigits

    n, h, bs = 100, 16, 64  # 100 images: every epoch of batches of 64 ends with a batch of 36
    cfg = pareto_multidigits.Config(train_images=n, test_images=16, seed_weights=[0.5], seed_epochs=1,
                                    batch_size=bs, k=3, num_points=2, hessian_images=h, ws_weights=[[0.0, 1.0]],
                                    ws_snapshots=1, front_resolution=2)
    res = tm.experiments.run_experiment("pareto-multidigits", out=str(tmp_path / "md"), progress=False, config=cfg)
    exp = res["units"]["expand linear w=0.5"]
    ev = exp["evaluations"]
    expansions = ev["expand"]["f"] // 2  # the objectives and the Hessian's sub-batch, once each
    children = ev["optimize"]["f"]  # optimize_steps=0: one evaluation of the objectives per child
    assert ev["expand"]["grad"] == 2 * expansions and ev["optimize"]["grad"] == 0 and children >= 2
    # per expansion a Jacobian on the n images and the weighted gradient on h, plus the HVPs on h
    # and one plain evaluation of the n images per child
    assert exp["image_evaluations"] == (expansions + children) * n + (expansions + ev["expand"]["hvp"]) * h
    ws = res["units"]["weighted-sum w=(0, 1) lr=0.01"]
    seen = sum(min(bs, n - (s % 2) * bs) for s in range(ws["steps"]))  # batches 64, 36, 64, 36, ...
    assert ws["image_evaluations"] == seen
    assert 0 <= seen - exp["image_evaluations"] < min(bs, n - ((ws["steps"] - 1) % 2) * bs)  # the fewest steps


@pytest.mark.cuda
def test_expansion_on_cuda_matches_the_cpu():
    """ParetoExpand of a network on the GPU (the batched MINRES kernel over CUDA HVPs) gives the CPU's
    directions; the diagnostics (residuals) come back on the CPU either way."""

    def run(device):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double().to(device)
        X, Y = torch.randn(40, 3, dtype=F64).to(device), torch.randn(40, 2, dtype=F64).to(device)
        beta = torch.tensor([[1.0, 0.0], [0.2, 0.5]], dtype=F64)
        return pareto_expand(lambda: ((net(X) - Y) ** 2).mean(0), list(net.parameters()), beta=beta, k=20,
                             tol=1e-13, correction=True, shift=-0.5)

    cpu, gpu = run("cpu"), run("cuda")
    assert gpu.directions.device.type == "cuda" and gpu.residuals.device.type == "cpu"
    torch.testing.assert_close(gpu.directions.cpu(), cpu.directions, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gpu.residuals, cpu.residuals, rtol=1e-6, atol=1e-12)


@pytest.mark.cuda
def test_resume_on_cuda_from_a_checkpoint_loaded_on_the_cpu(tmp_path):
    """A checkpoint saved mid-exploration of a CUDA model and loaded on the CPU (as the runner does)
    continues on the GPU and ends where an uninterrupted run ends."""

    def explorer():
        x = zdt2_point(0.5).cuda().requires_grad_(True)
        opt = functools.partial(pareto_optimize, tol=1e-14, max_iter=500)
        return x, ParetoExplorer(x, lambda: ZDT2(x), k=2, step=0.1, num_children=2, num_points=5, rhs="normal",
                                 optimize=opt, optimize_seed=False, seed=3)

    _, full_run = explorer()
    ref = full_run.explore()

    class Stop(Exception):
        pass

    def interrupt(e):
        if len(e.points) + len(e.rejected) == 3:
            torch.save(e.state_dict(), tmp_path / "state.pt")
            raise Stop

    _, first = explorer()
    with pytest.raises(Stop):
        first.explore(callback=interrupt)
    x2, second = explorer()
    second.load_state_dict(torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=True))
    out = second.explore()
    assert len(out) == len(ref) and out[-1].params.device.type == "cuda"
    for a, b in zip(out, ref):
        torch.testing.assert_close(a.params, b.params, rtol=0, atol=1e-12)
        torch.testing.assert_close(a.losses.cpu(), b.losses.cpu(), rtol=0, atol=1e-12)


def _interrupted_state(x: torch.Tensor, after: int) -> dict:
    """The state_dict of a ZDT2 exploration of ``x`` stopped once ``after`` children were made (an
    expansion in progress), as ``torch.load(map_location="cpu")`` returns it."""
    opt = functools.partial(pareto_optimize, tol=1e-14, max_iter=500)
    ex = ParetoExplorer(x, lambda: ZDT2(x), k=2, step=0.1, num_children=2, num_points=5, rhs="normal",
                        optimize=opt, optimize_seed=False, seed=3)

    class Stop(Exception):
        pass

    def interrupt(e):
        if len(e.points) + len(e.rejected) == after:
            raise Stop

    with pytest.raises(Stop):
        ex.explore(callback=interrupt)
    buf = io.BytesIO()
    torch.save(ex.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, map_location="cpu", weights_only=True)


def test_load_state_dict_moves_every_point_tensor_to_the_model_device():
    """A checkpoint loaded on the CPU into an explorer of a model on another device ("meta" checks devices
    as CUDA does): every tensor of the points (parameters, objectives, expanded objectives, predictions,
    weights) and of the expansion in progress lands on the model's device, so that the loaded points mix
    with the new ones (``torch.stack([p.losses for p in points])``)."""
    state = _interrupted_state(zdt2_point(0.5).requires_grad_(True), after=2)
    assert state["pending"] is not None and state["points"][1]["expanded_losses"] is not None
    x = torch.zeros(3, dtype=F64, device="meta", requires_grad=True)
    ex = ParetoExplorer(x, lambda: ZDT2(x), k=2, step=0.1, num_children=2, num_points=5, optimize_seed=False)
    ex.load_state_dict(state)
    tensors = [v for p in ex.points + ex.rejected for v in vars(p).values() if isinstance(v, torch.Tensor)]
    tensors += [v for v in ex._pending.values() if isinstance(v, torch.Tensor)]
    assert len(tensors) >= 9 and all(t.device.type == "meta" for t in tensors)
    assert ex.generator.device.type == "cpu"  # the random stream stays with the CPU generator


@pytest.mark.cuda
def test_resumed_cuda_exploration_keeps_its_points_on_one_device():
    """After a resume on the GPU from a CPU-loaded checkpoint, the loaded points and the new ones live on
    the GPU together: their objectives stack, and the predictions agree with an uninterrupted run."""
    state = _interrupted_state(zdt2_point(0.5).cuda().requires_grad_(True), after=3)
    x = zdt2_point(0.5).cuda().requires_grad_(True)
    opt = functools.partial(pareto_optimize, tol=1e-14, max_iter=500)
    ex = ParetoExplorer(x, lambda: ZDT2(x), k=2, step=0.1, num_children=2, num_points=5, rhs="normal",
                        optimize=opt, optimize_seed=False, seed=3)
    ex.load_state_dict(state)
    out = ex.explore()
    ref_x = zdt2_point(0.5).cuda().requires_grad_(True)
    ref = ParetoExplorer(ref_x, lambda: ZDT2(ref_x), k=2, step=0.1, num_children=2, num_points=5, rhs="normal",
                         optimize=opt, optimize_seed=False, seed=3).explore()
    F = torch.stack([p.losses for p in out])
    P = torch.stack([p.predicted for p in out[1:]])
    assert F.device.type == "cuda" and P.device.type == "cuda" and len(out) == len(ref)
    torch.testing.assert_close(F, torch.stack([p.losses for p in ref]), rtol=0, atol=1e-12)
    torch.testing.assert_close(P, torch.stack([p.predicted for p in ref[1:]]), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# continuous parametrization: invariants of t, segments and stitches
# --------------------------------------------------------------------------------------------------


def _mirrored_seeds_front(resolution: int):
    """Two explorers from mirror-image seeds ``(x1, x2, x3)`` and ``(x1, -x2, -x3)`` of the innermost ZDT2
    cylinder (one chain each way along ``x1``): the seeds have the same objective values but different
    parameters, so the traversal must jump between the families, never interpolate across the axis."""
    common = dict(k=2, step=0.1, num_children=1, num_points=3, rhs="binary", optimize_seed=False,
                  optimize=functools.partial(pareto_optimize, max_iter=0))
    x = zdt2_point(0.5).requires_grad_(True)
    right = ParetoExplorer(x, lambda: ZDT2(x), seed=1, **common)  # f1 increases
    right.explore()
    with torch.no_grad():
        x[1:] *= -1
    left = ParetoExplorer(x, lambda: ZDT2(x), seed=0, **common)  # f1 decreases
    left.explore()
    assert torch.equal(right.points[0].losses, left.points[0].losses)
    return stitch([right, left], resolution=resolution)


def _check_t_and_stitches(front: ContinuousFront) -> None:
    fv = front.front_values
    steps = (fv[1:] - fv[:-1]).norm(dim=1)
    # t is the Euclidean arc length of the sampled front in objective space, mapped onto [-1, 1]
    assert float(front.t[0]) == -1.0 and float(front.t[-1]) == 1.0
    torch.testing.assert_close(front.t.diff(), 2 * steps / steps.sum(), rtol=0, atol=1e-12)
    # across a stitch, solution and objectives_at give the nearer end (no blend of two families)
    for i in torch.nonzero(~front.segment).flatten().tolist():
        t0, t1 = float(front.t[i]), float(front.t[i + 1])
        if t1 - t0 < 1e-9:
            continue
        for lam, end in ((0.25, i), (0.75, i + 1)):
            s = int(front.order[end])
            t = t0 + lam * (t1 - t0)
            assert torch.equal(front.solution(t), front.sample_params(s))
            assert torch.equal(front.objectives_at(t), front.values[s])


@pytest.mark.parametrize("resolution", [1, 4])
def test_mirrored_seeds_stitch_without_leaving_the_pareto_set(resolution):
    front = _mirrored_seeds_front(resolution)
    assert len(front) == front.values.shape[0] and front.num_stitches >= 1
    edge = (front.node_params[front.edges[:, 1]] - front.node_params[front.edges[:, 0]]).norm(dim=1)
    torch.testing.assert_close(edge, torch.full_like(edge, 0.1), rtol=0, atol=1e-12)
    # a segment joins two consecutive samples of one edge: exactly one sampling step apart in parameters
    X = torch.stack([front.sample_params(int(s)) for s in front.order])
    d = (X[1:] - X[:-1]).norm(dim=1)[front.segment]
    torch.testing.assert_close(d, torch.full_like(d, 0.1 / resolution), rtol=0, atol=1e-12)
    # so the parameters at every t stay on the cylinder (chains along x1): the objectives are on the front
    for t in torch.linspace(-1, 1, 41, dtype=F64).tolist():
        x = front.solution(t)
        assert abs(float(x[1] ** 2 + x[2] ** 2) - math.pi) < 1e-12
        f = ZDT2(x)
        assert abs(float(f[1] - (1 - f[0] ** 2))) < 1e-12
    _check_t_and_stitches(front)


def test_stitched_front_t_segments_and_jumps():
    good, bad = _good_and_bad_families()
    resolution = 4
    front = stitch([good, bad], resolution=resolution)
    assert front.num_stitches > 0
    _check_t_and_stitches(front)
    # a segment never skips a cropped sample: its two samples are one step of one edge apart
    X = torch.stack([front.sample_params(int(s)) for s in front.order])
    d = (X[1:] - X[:-1]).norm(dim=1)
    edge = (front.node_params[front.edges[:, 1]] - front.node_params[front.edges[:, 0]]).norm(dim=1)
    assert float(d[front.segment].max()) <= float(edge.max()) / resolution + 1e-12


def test_convex_hull_sample_is_uniform():
    """Uniform in the hull of the center and K children: the hull coordinates ``r`` are the last K of
    Dirichlet(1, ..., 1) weights, so each ``r_j`` follows Beta(1, K) and ``sum r`` follows Beta(K, 1)."""
    from scipy import stats

    center = torch.zeros(4, dtype=F64)
    fam = ConvexHullFamily(center, torch.eye(3, 4, dtype=F64))
    _, r = fam.sample(4000, generator=torch.Generator().manual_seed(0))
    assert stats.kstest(r[:, 0].numpy(), stats.beta(1, 3).cdf).pvalue > 1e-3
    assert stats.kstest(r.sum(1).numpy(), stats.beta(3, 1).cdf).pvalue > 1e-3


def test_a_segment_through_a_cropped_sample_is_cut_at_a_stitch():
    """Test objectives with a narrow bump at the middle of the first segment: the middle sample is
    dominated by the two ends of its own segment and cropped, so the traversal must not join those ends
    (``solution`` would pass through the bump); it jumps between them instead."""
    x = zdt2_point(0.5).requires_grad_(True)
    ex = ParetoExplorer(x, lambda: ZDT2(x), k=2, step=0.1, num_children=1, num_points=2, rhs="binary",
                        optimize_seed=False, optimize=functools.partial(pareto_optimize, max_iter=0))
    ex.explore()
    middle = 0.5 * (ex.points[0].params + ex.points[1].params)

    def bumped(z: torch.Tensor) -> torch.Tensor:
        return ZDT2(z) + torch.exp(-((z - middle) ** 2).sum() / 1e-4)

    front = ex.front(objectives=lambda: bumped(x), resolution=2)
    assert int((~front.kept).sum()) == 1 and len(front) == front.values.shape[0] - 1
    assert front.num_stitches == 1
    # away from the bump every sample is on the front; solution(t) never reaches the bump
    for t in torch.linspace(-1, 1, 41, dtype=F64).tolist():
        with torch.no_grad():
            f = bumped(front.solution(t))
        assert float((f - front.objectives_at(t)).abs().max()) < 1e-3


# --------------------------------------------------------------------------------------------------
# the documented rules, checked one by one
# --------------------------------------------------------------------------------------------------


def test_pruning_queue_order_and_predictions_with_a_scripted_optimize():
    """Two paraboloids around (0, 0) and (1, 0) and an ``optimize`` that sends the children to chosen
    points: the seed's children dominate it (kept), two children with equal objectives but distinct
    parameters are both kept, a near-copy of a kept point and a dominated child are rejected, and the
    queue is first-in first-out (the second child of the seed is expanded after the first)."""
    x = torch.tensor([0.5, 0.5], dtype=F64, requires_grad=True)

    def objectives():
        return torch.stack([x[0] ** 2 + x[1] ** 2, (x[0] - 1) ** 2 + x[1] ** 2])

    targets = [[0.5, 0.3], [0.5, -0.3],  # children of the seed (0.34, 0.34) twice, both dominate the seed
               [0.5 + 1e-9, 0.3], [0.5, 0.6],  # children of point 1: a near-copy of it, then a dominated one
               [0.4, 0.0], [0.9, 0.0]]  # children of point 2: (0.16, 0.36), not dominated
    calls = []

    def scripted(objectives_, params, counter=None):
        start = pareto_optimize(objectives_, params, max_iter=0, counter=counter)  # at parent + s v
        with torch.no_grad():
            x.copy_(torch.tensor(targets[len(calls)], dtype=F64))
        calls.append(len(calls))
        end = pareto_optimize(objectives_, params, max_iter=0, counter=counter)
        return OptimizeResult(end.losses, start.initial_losses, float("nan"), 0, False)

    step = 0.1
    ex = ParetoExplorer(x, objectives, k=2, step=step, num_children=2, num_points=3, rhs="binary",
                        optimize=scripted, optimize_seed=False)
    finished = []
    pts = ex.explore(callback=lambda e: finished.append(e.finished))
    assert finished == [False] * 5 + [True]  # the seed, then 5 children: the 3rd new point is the last
    assert [p.parent for p in pts] == [None, 0, 0, 2]
    assert [p.params.tolist() for p in pts[1:]] == [targets[0], targets[1], targets[4]]
    assert [r.params.tolist() for r in ex.rejected] == [targets[2], targets[3]]
    assert [r.parent for r in ex.rejected] == [1, 1]
    # predicted = s J v, the first-order part of expanded - parent; both objectives have Hessian 2 I and
    # |v| = 1, so the rest is exactly s^2
    for p in pts[1:] + ex.rejected:
        change = p.expanded_losses - pts[p.parent].losses
        assert torch.allclose(change - p.predicted, torch.full((2,), step ** 2, dtype=F64), atol=1e-12)


def test_pareto_optimize_iteration_limit_failed_line_search_and_step_restart():
    # max_iter steps at most, one Jacobian per step plus the final one
    x = (zdt2_point(0.4) + torch.tensor([0.0, 0.3, -0.2], dtype=F64)).requires_grad_(True)
    counter = EvaluationCounter()
    res = pareto_optimize(lambda: ZDT2(x), [x], max_iter=3, tol=0.0, counter=counter)
    assert res.iterations == 3 and counter.grad == 4 and not res.converged
    # no step passes the test: the parameters stay where they were
    y0 = x.detach().clone()
    res = pareto_optimize(lambda: ZDT2(x), [x], max_iter=5, step=1e3, max_backtracks=1, tol=0.0)
    assert res.iterations == 0 and torch.equal(x.detach(), y0)
    # every iteration's line search starts again at `step`: the first trial after each Jacobian is x - step d
    # (two identical objectives: MGDA's d is the gradient 2 z; step 1.5 overshoots and is cut back each time)
    z = torch.tensor([1.0, -0.5], dtype=F64, requires_grad=True)
    trace = []

    def objectives():
        trace.append((torch.is_grad_enabled(), z.detach().clone()))
        return torch.stack([(z ** 2).sum(), (z ** 2).sum()])

    res = pareto_optimize(objectives, [z], max_iter=3, step=1.5, tol=0.0)
    assert res.iterations == 3
    firsts = [(trace[i][1], trace[i + 1][1]) for i in range(len(trace) - 1) if trace[i][0]]
    assert len(firsts) == 3
    for at, trial in firsts:
        assert torch.allclose(trial, at - 1.5 * 2 * at, atol=1e-15)


def test_minres_residuals_are_relative_and_match_one_krylov_step():
    """With k = 1, MINRES minimizes ||b - c H b|| over c: the relative residual is
    sqrt(1 - (b'Hb)^2 / (||b||^2 ||Hb||^2)), whatever the scale of beta."""
    q = Quadratics()
    x = (q.x(0.3) + 0.2).requires_grad_(True)  # off the Pareto set: the rows of J are not parallel
    beta = torch.tensor([[1.0, 0.0], [0.3, 0.7], [-1.0, 2.0]], dtype=F64)
    alpha = pareto_expand(lambda: q(x), [x], beta=beta, k=1).alpha
    H = alpha[0] * q.A1 + alpha[1] * q.A2
    J = torch.autograd.functional.jacobian(q, x.detach())
    B = beta @ J
    HB = B @ H
    ref = (1 - ((B * HB).sum(1) ** 2) / (B.pow(2).sum(1) * HB.pow(2).sum(1))).clamp_min(0).sqrt()
    for scale in (1.0, 1e3):
        exp = pareto_expand(lambda: q(x), [x], beta=scale * beta, k=1, tol=0.0)
        assert exp.residuals.dtype == F64
        assert torch.allclose(exp.residuals, ref, rtol=1e-8, atol=1e-12), (scale, exp.residuals, ref)


def test_gradient_expansion_follows_its_formula():
    """method="gradient": v = -J' a, a = alpha +- eps (beta - mean(beta)) clamped to the simplex, the sign of
    the perturbation chosen so that the beta-weighted objectives improve most per unit step."""
    q = Quadratics(seed=2)
    # off the Pareto set (alpha' J != 0: the size of the perturbation shows, not only its direction)
    x = (q.x(0.4) + 0.1).requires_grad_(True)
    beta = torch.tensor([[1.0, 0.0], [0.2, 0.9], [-1.0, 2.0], [0.0, 1.0]], dtype=F64)
    eps = 0.15
    exp = pareto_expand(lambda: q(x), [x], beta=beta, method="gradient", perturbation=eps)
    J = torch.autograd.functional.jacobian(q, x.detach())
    centered = beta - beta.mean(1, keepdim=True)
    cands, scores = [], []
    for s in (1.0, -1.0):
        a = (exp.alpha + s * eps * centered).clamp_min(0)
        v = -(a / a.sum(1, keepdim=True)) @ J
        cands.append(v / v.norm(dim=1, keepdim=True))
        scores.append(-((cands[-1] @ J.T) * beta).sum(1))
    assert bool((scores[0] != scores[1]).all())
    ref = torch.where((scores[0] >= scores[1])[:, None], cands[0], cands[1])
    assert torch.allclose(exp.directions, ref, atol=1e-12)
    assert torch.isnan(exp.residuals).all() and exp.info is None


def test_simplex_sampler_is_uniform_on_the_simplex():
    # Dirichlet(1, 1): the first weight is uniform on [0, 1] (normalized uniforms would give P(<= 1/4) = 1/6)
    s = sample_beta(2, 4000, "simplex", generator=torch.Generator().manual_seed(0))
    for q in (0.1, 0.25, 0.5, 0.75):
        assert abs(float((s[:, 0] <= q).double().mean()) - q) < 0.03


def test_every_accepted_line_search_step_satisfies_the_armijo_conditions():
    """Fixed weights (d = J'w, sigma = 0.5): each accepted step
    x - t d satisfies w'f(x - t d) <= w'f(x) - sigma t |d|^2, and f_i(x - t d) <= f_i(x) - sigma t <g_i, d>
    for the objectives that d decreases (t recovered from the trace of the closure)."""
    q = Quadratics(seed=1)
    # near the Pareto point of weights (0.8, 0.2): d = J'w raises f1, only the weighted test bounds the step
    x = (q.x(0.8) + 0.3).requires_grad_(True)
    w = torch.tensor([0.25, 0.75], dtype=F64)
    trace = []

    def objectives():
        f = q(x)
        trace.append((torch.is_grad_enabled(), x.detach().clone(), f.detach().clone()))
        return f

    sigma = 0.5
    res = pareto_optimize(objectives, [x], aggregator=tm.methods.LinearScalarization(w.tolist()), armijo=sigma,
                          max_iter=8, tol=0.0)
    assert res.iterations == 8
    starts = [i for i, (g, _, _) in enumerate(trace) if g]
    for i, nxt in zip(starts, starts[1:]):
        x0, f0 = trace[i][1], trace[i][2]
        x1, f1 = trace[nxt - 1][1], trace[nxt - 1][2]  # the accepted trial, evaluated just before the next J
        J = torch.autograd.functional.jacobian(q, x0)
        d = w @ J
        t = float((x0 - x1) @ d / (d @ d))
        assert torch.allclose(x1, x0 - t * d, atol=1e-12) and 0 < t <= 1.0
        assert float(w @ (f1 - f0)) <= -sigma * t * float(d @ d) + 1e-12
        slope = J @ d
        assert bool((f1 - f0 <= -sigma * t * slope + 1e-12)[slope > 0].all())


def test_a_float16_solution_beyond_the_float16_range_is_normalized_before_its_cast():
    """A float16 least-squares model with small inputs (H ~ 1e-4) and large residuals (losses computed in
    float32): the unnormalized MINRES solutions exceed float16's range (65504), the unit directions do not,
    and agree with float64's."""
    g = torch.Generator().manual_seed(0)
    x = (1e-2 * torch.randn(32, 6, generator=g, dtype=F64)).half()
    y = (3e3 * torch.randn(32, 2, generator=g, dtype=F64)).half()
    half = torch.nn.Linear(6, 2, bias=False, dtype=torch.float16)
    with torch.no_grad():
        half.weight.copy_(torch.randn(2, 6, generator=g, dtype=F64))
    full = torch.nn.Linear(6, 2, bias=False, dtype=F64)
    full.load_state_dict({k: v.double() for k, v in half.state_dict().items()})
    beta = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, -1.0]], dtype=F64)
    ref = pareto_expand(lambda: ((full(x.double()) - y.double()) ** 2).mean(0), full, beta=beta, k=20)
    got = pareto_expand(lambda: ((half(x).float() - y.float()) ** 2).mean(0), half, beta=beta, k=20)
    assert got.directions.dtype == torch.float16 and bool(torch.isfinite(got.directions).all())
    assert (got.directions.double() - ref.directions).norm(dim=1).max() < 4 * torch.finfo(torch.float16).eps


def test_a_state_dict_is_a_snapshot_and_loading_it_sets_the_seed():
    """A state saved mid-run does not follow the run as it goes on; loading it puts the seed's parameters
    into the model at once, and exploring from it gives the uninterrupted run."""
    _, full_run = _explorer(num_children=2, num_points=5, rhs="normal", seed=3)
    saved = {}

    def save(e):
        if len(e.points) + len(e.rejected) == 3:
            saved["state"] = e.state_dict()

    ref = full_run.explore(callback=save)  # the run goes on after the state was saved
    x2, second = _explorer(f1=0.3, num_children=2, num_points=5, rhs="normal", seed=99)
    second.load_state_dict(saved["state"])
    assert torch.equal(x2.detach(), ref[0].params)
    out = second.explore()
    assert [p.parent for p in out] == [p.parent for p in ref]
    assert all(torch.equal(a.params, b.params) for a, b in zip(out, ref))
    assert second.counter == full_run.counter
