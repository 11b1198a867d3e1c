"""Analytic test problems against their known Pareto sets and fronts.

Pareto stationarity is checked the way MGDA sees it: the min-norm element of the convex hull of the
objective gradients (autograd), computed with ``torchmoo.ops.min_norm_simplex`` on their Gram matrix,
vanishes on the analytic Pareto set and does not vanish off it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

import torchmoo as tm
from torchmoo.problems import ZDT3, LinConcave, SIMOLToy, ThreeTargetToy, ZDT2Variant

F64 = torch.float64
TWO_OBJ = [ZDT2Variant(), ZDT3(), LinConcave(), SIMOLToy()]
IDS = [type(p).__name__ for p in TWO_OBJ]


def jacobian(problem, x: torch.Tensor) -> torch.Tensor:
    """``(N, n_obj, n_var)`` per-point objective gradients by autograd."""
    x = x.detach().clone().requires_grad_(True)
    f = problem(x)
    rows = [torch.autograd.grad(f[:, i].sum(), x, retain_graph=True)[0] for i in range(f.shape[-1])]
    return torch.stack(rows, dim=1)


def min_norm(J: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MGDA's min-norm element ``J' w`` of each ``(n_obj, n)`` slice, and the weights ``w``."""
    w = tm.ops.min_norm_simplex(J @ J.mT)
    return torch.einsum("bi,bin->bn", w, J), w


def weakly_dominated(F: torch.Tensor, front: torch.Tensor, tol: float) -> torch.Tensor:
    """``(N,)``: whether ``F`` is weakly dominated by the continuous two-objective front through the
    points ``front`` (ordered by increasing f1, decreasing f2), up to ``tol``.

    Between front points the front is taken as the linear interpolation (exact for the flat steps
    between ZDT3's pieces); the interpolation error of a dense front is far below ``tol``.
    """
    f1, f2 = front[:, 0].numpy(), front[:, 1].numpy()
    boundary = torch.from_numpy(np.interp(F[:, 0].numpy(), f1, f2))  # constant f2.min() right of the front
    return (F[:, 0] >= f1[0] - tol) & (F[:, 1] >= boundary - tol)


# --------------------------------------------------------------------------------------------------
# Shared properties of the two-objective problems
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", TWO_OBJ, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_front_is_image_of_set_and_sorted(problem, dtype):
    X = problem.pareto_set(41, dtype=dtype)
    P = problem.pareto_front(41, dtype=dtype)
    assert X.shape == (41, problem.n_var) and X.dtype == dtype
    assert P.shape == (41, problem.n_obj) and P.dtype == dtype
    tol = 1e-12 if dtype == F64 else 2e-5 * max(1.0, float(P.abs().max()))
    torch.testing.assert_close(problem(X), P, atol=tol, rtol=0)
    assert bool((P[1:, 0] >= P[:-1, 0]).all()), "front rows must be ordered by increasing f1"
    assert bool((P[1:, 1] <= P[:-1, 1] + tol).all()), "along a Pareto front f2 must not increase with f1"
    assert bool(problem.is_pareto_optimal(X.to(F64), atol=1e-6).all())
    assert problem.pareto_set(1).shape == (1, problem.n_var)


@pytest.mark.parametrize("problem", TWO_OBJ, ids=IDS)
def test_front_points_are_mutually_nondominated(problem):
    P = problem.pareto_front(300)
    assert bool(tm.metrics.nondominated(P, return_mask=True, keep_weakly=True).all())


@pytest.mark.parametrize("problem", TWO_OBJ, ids=IDS)
def test_batched_over_leading_dims(problem):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, problem.n_var, generator=gen, dtype=F64)
    f = problem(x)
    assert f.shape == (2, 3, 4, problem.n_obj)
    torch.testing.assert_close(f.reshape(-1, problem.n_obj), problem(x.reshape(-1, problem.n_var)))
    assert problem.is_pareto_optimal(x).shape == (2, 3, 4)


@pytest.mark.parametrize("problem", TWO_OBJ, ids=IDS)
def test_bad_inputs(problem):
    with pytest.raises(ValueError, match=rf"\(\.\.\., {problem.n_var}\)"):
        problem(torch.zeros(4, problem.n_var + 1))
    with pytest.raises(TypeError, match="floating-point"):
        problem(torch.zeros(4, problem.n_var, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        problem(np.zeros((4, problem.n_var)))
    with pytest.raises(ValueError, match="n_points"):
        problem.pareto_set(0)
    with pytest.raises(TypeError, match="n_points"):
        problem.pareto_front(2.5)


@pytest.mark.parametrize("problem", TWO_OBJ, ids=IDS)
def test_gradients_match_finite_differences(problem):
    gen = torch.Generator().manual_seed(8)
    if isinstance(problem, ZDT3):
        problem = ZDT3(n_var=4)
        x = 0.05 + 0.9 * torch.rand(3, 4, generator=gen, dtype=F64)  # inside the box, away from x1 = 0
    else:
        x = 3 * torch.randn(3, problem.n_var, generator=gen, dtype=F64)
    if isinstance(problem, SIMOLToy):
        x[:, 1] = torch.tensor([1.5, -2.0, -8.4], dtype=F64)  # both halves, away from the kink at x2 = 0
    x.requires_grad_(True)
    torch.autograd.gradcheck(problem, (x,))
    if isinstance(problem, ZDT3):  # its square root is a custom autograd function, twice differentiable
        torch.autograd.gradgradcheck(problem, (x,))


@pytest.mark.parametrize("problem", TWO_OBJ, ids=IDS)
def test_a_single_point_is_the_middle_of_the_front(problem):
    # n_points = 1 takes the middle of the parameter range, as the middle row of a 3-point grid (ZDT2's
    # angle around the cylinder depends on the row, its objectives do not)
    middle = problem.pareto_front(3)[1:2]
    torch.testing.assert_close(problem.pareto_front(1), middle, rtol=0, atol=1e-14)
    torch.testing.assert_close(problem(problem.pareto_set(1)), middle, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------------------------------
# ZDT2-variant (Ma et al., supplement Eq. 15-17)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 2])
def test_zdt2_variant_cylinders_are_pareto_stationary(k):
    p = ZDT2Variant()
    X = p.pareto_set(33, k=k)[1:-1]  # f1 = 0 and 1 are stationary for a trivial reason (grad f1 = 0)
    assert torch.allclose(X[:, 1] ** 2 + X[:, 2] ** 2, torch.full((31,), (2 * k + 1) * math.pi, dtype=F64))
    J = jacobian(p, X)
    d, w = min_norm(J)
    scale = J.norm(dim=-1).max(dim=-1).values
    assert bool((scale > 1e-3).all())
    assert float((d.norm(dim=-1) / scale).max()) < 1e-12
    # on the set grad f2 = -2 f1 grad f1: the weights are (2 f1, 1) / (1 + 2 f1)
    f1 = p(X)[:, 0]
    torch.testing.assert_close(w[:, 0], 2 * f1 / (1 + 2 * f1), atol=1e-10, rtol=0)


def test_zdt2_variant_off_the_cylinders_is_not_stationary():
    p = ZDT2Variant()
    X = p.pareto_set(33)[1:-1]
    for factor in (1.02, 0.98):  # move off the cylinder radially
        Y = X.clone()
        Y[:, 1:] *= factor
        assert not bool(p.is_pareto_optimal(Y).any())
        J = jacobian(p, Y)
        d, _ = min_norm(J)
        assert float((d.norm(dim=-1) / J.norm(dim=-1).max(dim=-1).values).min()) > 1e-3


def test_zdt2_variant_random_points_are_dominated_by_front():
    p = ZDT2Variant()
    gen = torch.Generator().manual_seed(1)
    X = (torch.rand(20000, 3, generator=gen, dtype=F64) - 0.5) * 12
    F = p(X)
    assert bool(((F[:, 0] >= 0) & (F[:, 0] <= 1)).all())
    # f2 = g - f1^2/g >= 1 - f1^2 because g >= 1 and t -> t - f1^2/t is increasing
    assert bool((F[:, 1] >= 1 - F[:, 0] ** 2 - 1e-12).all())
    # and the bound is attained only on the cylinders: points far from them are strictly above
    far = ~p.is_pareto_optimal(X, atol=0.1)
    assert bool((F[far, 1] > 1 - F[far, 0] ** 2 + 1e-6).all())


def test_zdt2_variant_front_shape():
    P = ZDT2Variant().pareto_front(11)
    torch.testing.assert_close(P[:, 0], torch.linspace(0, 1, 11, dtype=F64))
    torch.testing.assert_close(P[:, 1], 1 - P[:, 0] ** 2)
    with pytest.raises(ValueError, match="k must be"):
        ZDT2Variant().pareto_set(3, k=-1)


def test_zdt2_variant_is_zdt2_of_the_remapped_variables():
    """The construction of Ma et al.: y = (sin(x1 + x2^2 + x3^2)/2 + 1/2, cos(x2^2 + x3^2)/2 + 1/2 twice),
    then ZDT2 on y with n = 3 variables: g = 1 + 9/(n-1) (y2 + y3), f = (y1, g (1 - (y1/g)^2))."""
    rng = np.random.default_rng(9)
    X = rng.normal(scale=2.0, size=(50, 3))
    s = X[:, 1] ** 2 + X[:, 2] ** 2
    y1 = 0.5 * np.sin(X[:, 0] + s) + 0.5
    y2 = y3 = 0.5 * np.cos(s) + 0.5
    g = 1 + 9 / 2 * (y2 + y3)
    expected = np.stack([y1, g * (1 - (y1 / g) ** 2)], axis=1)
    np.testing.assert_allclose(ZDT2Variant()(torch.from_numpy(X)).numpy(), expected, rtol=1e-13, atol=1e-13)


# --------------------------------------------------------------------------------------------------
# ZDT3 (MT-SGD supplement 2.1.2)
# --------------------------------------------------------------------------------------------------


def _h(t: float) -> float:
    return 1 - math.sqrt(t) - t * math.sin(10 * math.pi * t)


def _dh(t: float) -> float:
    return -0.5 / math.sqrt(t) - math.sin(10 * math.pi * t) - 10 * math.pi * t * math.cos(10 * math.pi * t)


def test_zdt3_regions_are_the_analytic_pieces():
    regions = ZDT3.REGIONS
    # printed in the supplement to three or four digits
    paper = [(0, 0.0830), (0.1822, 0.257), (0.4093, 0.4538), (0.6183, 0.6525), (0.8233, 0.8518)]
    for (lo, hi), (plo, phi) in zip(regions, paper):
        assert abs(lo - plo) < 1e-3 and abs(hi - phi) < 1e-3
    for k, (lo, hi) in enumerate(regions):
        # right end: a local minimum of h (root of h' found independently by brentq)
        root = brentq(_dh, hi - 0.01, hi + 0.01, xtol=1e-15)
        assert abs(root - hi) < 1e-12
        if k > 0:  # left end: same value as the previous right end, on the descending branch
            assert abs(_h(lo) - _h(regions[k - 1][1])) < 1e-12
            assert _dh(lo) < 0


def test_zdt3_front_is_the_nondominated_part_of_the_g1_curve():
    t = torch.linspace(0, 1, 200001, dtype=F64)
    curve = torch.stack((t, 1 - t.sqrt() - t * torch.sin(10 * math.pi * t)), -1)
    mask = tm.metrics.nondominated(curve, return_mask=True)
    x = ZDT3(n_var=2)
    assert bool(x.is_pareto_optimal(torch.stack((t[mask], torch.zeros_like(t[mask])), -1), atol=1e-5).all())
    inside = torch.zeros_like(mask)  # strictly inside a piece
    for lo, hi in ZDT3.REGIONS:
        inside |= (t > lo + 1e-5) & (t < hi - 1e-5)
    assert bool(mask[inside].all())
    for lo, hi in ZDT3.REGIONS:  # every piece is hit, end to end
        hit = t[mask & (t >= lo - 1e-5) & (t <= hi + 1e-5)]
        assert float(hit.min()) < lo + 2e-5 and float(hit.max()) > hi - 2e-5


def test_zdt3_pareto_set_is_stationary_with_bound_constraints():
    p = ZDT3()
    X = p.pareto_set(60)
    X = X[X[:, 0] > 1e-3]  # the derivative of sqrt(x1) is infinite at 0
    J = jacobian(p, X)
    # x1 is free: the min-norm element of the x1-components vanishes
    d, w = min_norm(J[:, :, :1])
    assert float(d.abs().max()) < 1e-12
    # x2.. sit on their lower bound 0: the combined gradient points into the box (KKT multipliers >= 0)
    combined = torch.einsum("bi,bin->bn", w, J)[:, 1:]
    assert float(combined.min()) > 1e-3
    torch.testing.assert_close(combined[:, 0], w[:, 1] * 9 / 29 * (1 - 0.5 * X[:, 0].sqrt()))


def test_zdt3_gradient_at_x1_zero():
    # f2 = g - sqrt(f1 g) - f1 sin(10 pi f1): at f1 = 0 its derivative in x_j (j >= 2) is 9 / (n - 1) dg/dx_j
    # (finite, e.g. at the Pareto-optimal end x = 0) and in x1 it is -inf
    p = ZDT3(n_var=5)
    X = torch.tensor([[0.0] * 5, [0.0, 0.1, 0.2, 0.3, 0.4]], dtype=F64)
    J = jacobian(p, X)
    torch.testing.assert_close(J[:, 1, 1:], torch.full((2, 4), 9 / 4, dtype=F64))
    assert bool((J[:, 1, 0] == -math.inf).all())
    torch.testing.assert_close(J[:, 0], torch.eye(5, dtype=F64)[:1].expand(2, 5))


def test_zdt3_dominated_points():
    p = ZDT3()
    front = p.pareto_front(40001)
    gen = torch.Generator().manual_seed(2)
    # on the g = 1 surface (every x1) and close to it, where only the pieces of REGIONS are optimal
    X = torch.rand(3000, 30, generator=gen, dtype=F64) * torch.tensor([1.0] + [0.01] * 29, dtype=F64)
    X[:1000, 1:] = 0
    F = p(X)
    assert bool(weakly_dominated(F, front, tol=1e-4).all())
    # points of the g = 1 curve outside the pieces are strictly dominated by some front point
    t = torch.linspace(0, 1, 2001, dtype=F64)
    Y = torch.zeros(2001, 30, dtype=F64)
    Y[:, 0] = t
    off = ~p.is_pareto_optimal(Y, atol=5e-3)
    G = p(Y[off])
    strict = ((front[None, ::10] <= G[:, None] - 1e-6).all(-1)).any(-1)
    assert bool(strict.all())


def test_zdt3_domain_and_projection():
    p = ZDT3()
    assert p.n_var == 30 and p.bounds[0].shape == (30,)
    x = torch.full((2, 30), 0.5, dtype=F64)
    x[0, 3] = -0.1
    with pytest.raises(ValueError, match=r"\[0, 1\]\^n_var"):
        p(x)
    y = p.project(x + torch.tensor([[0.0] * 29 + [1.0]], dtype=F64))
    assert float(y.min()) == 0.0 and float(y.max()) == 1.0
    assert torch.isfinite(p(y)).all()
    with pytest.raises(ValueError, match="n_var"):
        ZDT3(n_var=1)


def test_zdt3_refuses_points_above_the_box_and_needs_x2_zero_for_optimality():
    p = ZDT3(n_var=3)
    with pytest.raises(ValueError, match=r"\[0, 1\]\^n_var"):
        p(torch.tensor([0.5, 1.1, 0.0], dtype=F64))
    on = torch.tensor([0.05, 0.0, 0.0], dtype=F64)
    off = torch.tensor([0.05, 0.01, 0.0], dtype=F64)  # x1 in the first piece, g > 1
    assert bool(p.is_pareto_optimal(on)) and not bool(p.is_pareto_optimal(off))
    assert float(p(on)[0]) == float(p(off)[0]) and float(p(on)[1]) < float(p(off)[1])  # dominated


# --------------------------------------------------------------------------------------------------
# The problem of Lin et al. 2019 (PNG section 5.1)
# --------------------------------------------------------------------------------------------------


def test_lin_concave_segment_is_stationary_and_off_segment_is_not():
    p = LinConcave()
    X = p.pareto_set(21)
    eta = torch.full((10,), 10 ** -0.5, dtype=F64)
    assert float(eta.norm()) == pytest.approx(1.0)
    torch.testing.assert_close(X[0], eta)
    torch.testing.assert_close(X[-1], -eta)
    J = jacobian(p, X)
    d, _ = min_norm(J)
    assert float(d.norm(dim=-1).max()) < 1e-12
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(21, 10, generator=gen, dtype=F64)
    v -= (v @ eta)[:, None] * eta  # orthogonal to the segment
    Y = X + 0.1 * v / v.norm(dim=-1, keepdim=True)
    assert not bool(p.is_pareto_optimal(Y).any())
    d, _ = min_norm(jacobian(p, Y))
    assert float(d.norm(dim=-1).min()) > 1e-3


def test_lin_concave_random_points_are_dominated_by_front():
    p = LinConcave()
    gen = torch.Generator().manual_seed(4)
    X = torch.randn(20000, 10, generator=gen, dtype=F64) * torch.rand(20000, 1, generator=gen, dtype=F64)
    F = p(X)
    # closed form of the front: f2 = 1 - exp(-(2 - sqrt(-log(1 - f1)))^2) for f1 <= 1 - e^-4
    f1_max = 1 - math.exp(-4)
    inside = F[:, 0] <= f1_max
    a = torch.sqrt(-torch.log1p(-F[inside, 0]))
    assert bool((F[inside, 1] >= 1 - torch.exp(-((2 - a) ** 2)) - 1e-12).all())
    assert bool(weakly_dominated(F, p.pareto_front(20001), tol=1e-7).all())
    # non-convex front: its middle (t = 0, both losses 1 - 1/e) lies above the chord between its ends,
    # so equal-weight linear scalarization prefers the ends
    P = p.pareto_front(101)
    torch.testing.assert_close(P[50], torch.full((2,), 1 - math.exp(-1), dtype=F64))
    assert float(P[50].sum()) > float(P[0].sum()) + 0.2


def test_lin_concave_set_ends_at_plus_minus_eta():
    p = LinConcave()
    eta = torch.full((10,), 10 ** -0.5, dtype=F64)
    for t in (1.5, -1.5):  # on the line through the segment, beyond its ends: dominated by the end
        assert not bool(p.is_pareto_optimal(t * eta))
        end = p(math.copysign(1.0, t) * eta)
        assert bool((end < p(t * eta)).all())
    assert bool(p.is_pareto_optimal(torch.stack((eta, -eta, 0.3 * eta))).all())


# --------------------------------------------------------------------------------------------------
# SIMOL appendix A toy
# --------------------------------------------------------------------------------------------------


def test_simol_toy_pareto_curve_is_stationary_with_predicted_weights():
    p = SIMOLToy()
    X = p.pareto_set(29)
    J = jacobian(p, X)
    d, w = min_norm(J)
    assert float((d.norm(dim=-1) / J.norm(dim=-1).max(-1).values).max()) < 1e-10
    # x1 = 7 (w1 - w2)
    torch.testing.assert_close(w[:, 0], (X[:, 0] + 7) / 14, atol=1e-8, rtol=0)
    # CAGrad draws the set as the segment x2 = -8.3552; that is its middle point
    assert float(p.optimal_x2(torch.zeros((), dtype=F64))) == pytest.approx(-8.3552, abs=1e-4)


def test_simol_toy_weighted_sums_are_minimized_along_x2():
    p = SIMOLToy()
    X = p.pareto_set(15)
    w1 = (X[:, 0] + 7) / 14
    w = torch.stack((w1, 1 - w1), -1)
    base = (p(X) * w).sum(-1)
    for delta in (-1e-3, 1e-3, -0.5, 0.5):
        Y = X + torch.tensor([0.0, delta], dtype=F64)
        assert bool(((p(Y) * w).sum(-1) > base).all())
    Y = X + torch.tensor([0.0, 0.05], dtype=F64)
    assert not bool(p.is_pareto_optimal(Y).any())
    assert float(min_norm(jacobian(p, Y))[0].norm(dim=-1).min()) > 1e-3


def test_simol_toy_random_points_are_dominated_by_front():
    p = SIMOLToy()
    front = p.pareto_front(20001)
    gen = torch.Generator().manual_seed(5)
    X = (torch.rand(20000, 2, generator=gen, dtype=F64) - 0.5) * 20
    near = p.pareto_set(2000) + 0.2 * torch.randn(2000, 2, generator=gen, dtype=F64)
    F = p(torch.cat((X, near)))
    assert bool(weakly_dominated(F, front, tol=1e-6).all())
    assert SIMOLToy.task_probabilities == pytest.approx((2 / 3, 1 / 3))


def test_simol_toy_follows_the_papers_formula():
    p = SIMOLToy()
    x1, x2 = 1.3, 0.8  # upper half-plane, where the l-terms are active
    t = math.tanh(-x2)
    l1 = math.log(max(abs(0.5 * (-x1 - 7) - t), 5e-6)) + 6
    l2 = math.log(max(abs(0.5 * (-x1 + 3) - t + 2), 5e-6)) + 6
    c1 = math.tanh(0.5 * x2)
    f = p(torch.tensor([x1, x2], dtype=F64))
    assert f.tolist() == pytest.approx([c1 * l1, c1 * l2], rel=1e-14)
    x1, x2 = -2.0, -3.0
    g1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    g2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    c2 = math.tanh(-0.5 * x2)
    assert p(torch.tensor([x1, x2], dtype=F64)).tolist() == pytest.approx([c2 * g1, c2 * g2], rel=1e-14)


def test_simol_toy_set_ends_at_x1_plus_minus_7():
    p = SIMOLToy()
    for x1 in (7.0, -7.0):
        end = torch.tensor([x1, float(p.optimal_x2(torch.tensor(x1, dtype=F64)))], dtype=F64)
        beyond = end + torch.tensor([math.copysign(1.0, x1), 0.0], dtype=F64)
        assert bool(p.is_pareto_optimal(end)) and not bool(p.is_pareto_optimal(beyond))
        assert bool((p(end) < p(beyond)).all())  # |x1| > 7 is dominated by the end of the set


# --------------------------------------------------------------------------------------------------
# MT-SGD three-target sampling toy
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grid():
    h = 0.04
    axis = torch.arange(-11, 11 + h / 2, h, dtype=F64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack((xx, yy), -1).reshape(-1, 2), h


def test_three_targets_are_normalized_with_analytic_moments(grid):
    toy = ThreeTargetToy()
    pts, h = grid
    dens = toy.log_prob(pts).exp()  # (N, 3)
    mass = dens.sum(0) * h * h
    torch.testing.assert_close(mass, torch.ones(3, dtype=F64), atol=1e-9, rtol=0)
    mean = (dens[:, :, None] * pts[:, None, :]).sum(0) * h * h
    torch.testing.assert_close(mean, toy.mean(), atol=1e-8, rtol=0)
    torch.testing.assert_close(toy.mean()[0], torch.tensor([0.7 * 4, 0.7 * -4 + 0.3 * 0.5], dtype=F64))
    centered = pts[:, None, :] - mean[None]
    cov = torch.einsum("nk,nki,nkj->kij", dens, centered, centered) * h * h
    torch.testing.assert_close(cov, toy.covariance(), atol=1e-7, rtol=0)


def test_three_targets_match_torch_distributions_and_autograd_scores():
    toy = ThreeTargetToy()
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(4, 50, 2, generator=gen, dtype=F64) * 4
    lp = toy.log_prob(x)
    assert lp.shape == (4, 50, 3)
    for k in range(3):
        mix = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(torch.tensor(toy.weights[k], dtype=F64)),
            torch.distributions.MultivariateNormal(torch.tensor(toy.means[k], dtype=F64),
                                                   covariance_matrix=0.5 * torch.eye(2, dtype=F64)))
        torch.testing.assert_close(lp[..., k], mix.log_prob(x))
    torch.testing.assert_close(toy(x), -lp)
    xr = x.clone().requires_grad_(True)
    auto = torch.stack([torch.autograd.grad(toy.log_prob(xr)[..., k].sum(), xr)[0] for k in range(3)], -2)
    torch.testing.assert_close(toy.score(x), auto)
    assert toy.score(x).shape == (4, 50, 3, 2)


def test_three_targets_modes():
    toy = ThreeTargetToy()
    heavy = torch.tensor([m[0] for m in toy.means], dtype=F64)  # (3, 2)
    for k in range(3):
        s = toy.score(heavy[k])[k]
        # the far light component pulls by about |dmu| / v * exp(-|dmu|^2 / (2 v)) < 1e-6
        assert float(s.norm()) < 1e-6
        around = heavy[k] + 0.05 * torch.tensor([[1, 0], [-1, 0], [0, 1], [0, -1]], dtype=F64)
        assert bool((toy.log_prob(around)[:, k] < toy.log_prob(heavy[k])[k]).all())
    # the light components overlap: the origin is far more likely under all three than any heavy mode
    joint = toy.log_prob(torch.zeros(2, dtype=F64)).sum()
    assert all(float(toy.log_prob(heavy[k]).sum()) < float(joint) for k in range(3))


def test_three_targets_sampling():
    toy = ThreeTargetToy()
    gen = torch.Generator().manual_seed(7)
    for k in range(3):
        s = toy.sample(20000, k, generator=gen)
        assert s.shape == (20000, 2)
        se = toy.covariance()[k].diagonal().sqrt() / math.sqrt(20000)
        assert bool(((s.mean(0) - toy.mean()[k]).abs() < 5 * se).all())
        # the components are far apart (|dmu| > 5 sigma): the nearest mean names a sample's component, whose
        # frequency is its weight and whose scatter is v I (a wrong variance or std passes the mean above)
        mu = torch.tensor(toy.means[k], dtype=F64)
        comp = torch.cdist(s, mu).argmin(1)
        for c, w in enumerate(toy.weights[k]):
            part = s[comp == c]
            assert abs(len(part) / 20000 - w) < 5 * math.sqrt(w * (1 - w) / 20000)
            cov = torch.cov(part.T)
            torch.testing.assert_close(cov, toy.variance * torch.eye(2, dtype=F64), rtol=0, atol=0.05)
    init = toy.initial_particles(20000, generator=gen)
    assert float(init.std()) == pytest.approx(5.0, rel=0.03)
    with pytest.raises(ValueError, match="target"):
        toy.sample(3, 3)


def test_three_targets_errors_name_the_count_argument():
    # the argument is n (not the problems' n_points): an error must name what the caller passed
    toy = ThreeTargetToy()
    for call in (lambda v: toy.sample(v, 0), lambda v: toy.initial_particles(v)):
        with pytest.raises(ValueError, match=r"^n must be at least 1, got 0\.$"):
            call(0)
        with pytest.raises(TypeError, match=r"^n must be an int, got float\.$"):
            call(2.0)
    with pytest.raises(ValueError, match=r"^n_points must be at least 1"):  # the other problems keep theirs
        ZDT3().pareto_set(0)
