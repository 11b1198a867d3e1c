"""PSST (Pareto self-supervised training for few-shot learning): preference vectors and regions,
the constrained direction of Eq. 3 / 4, the self-supervised label generators, exploration, the
few-shot evaluation and the ``psst-fewshot-digits`` experiment at a tiny size."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torchmoo as tm
from torchmoo.methods import psst as P


pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: one intra-op thread (conftest)


# ---- preference vectors (A.2, Eq. 1) and the partition of A.3 ------------------------------------------------


@pytest.mark.parametrize("K", [1, 2, 3, 7])
def test_preference_angles_split_the_sector_evenly(K):
    g = torch.Generator().manual_seed(K)
    for M in (2, 3, 4):
        L = torch.rand(M, generator=g, dtype=torch.float64) + 0.05
        pv = P.preference_vectors(L, K)
        assert pv.angles.shape == (M - 1, K + 1) and pv.vectors.shape == (M - 1, K + 1, 2)
        for m in range(1, M):
            # pi_0: angle of the best loss vector with e1 in the plane (e1, e_m)
            cos0 = float(L[0] / torch.sqrt(L[0] ** 2 + L[m] ** 2))
            assert math.isclose(float(pv.pi0[m - 1]), math.acos(cos0), abs_tol=1e-12)
            # Eq. 1: pi_i = i/K (pi/2 - pi_0) + pi_0
            expected = torch.tensor([i / K * (math.pi / 2 - math.acos(cos0)) + math.acos(cos0) for i in range(K + 1)],
                                    dtype=torch.float64)
            torch.testing.assert_close(pv.angles[m - 1], expected, rtol=0, atol=1e-12)
            gaps = pv.angles[m - 1].diff()
            torch.testing.assert_close(gaps, gaps.mean().expand(K), rtol=0, atol=1e-12)  # evenly
            assert float(pv.angles[m - 1, -1]) == math.pi / 2
        torch.testing.assert_close(pv.vectors[..., 0], torch.cos(pv.angles))
        torch.testing.assert_close(pv.vectors.norm(dim=-1), torch.ones(M - 1, K + 1, dtype=torch.float64))


def test_one_auxiliary_task_uses_the_whole_loss_vector_and_three_tasks_the_paper_projection():
    # end of A.2: cos pi_0 = e1 L / ||L||
    L = torch.tensor([0.3, 0.4], dtype=torch.float64)
    assert math.isclose(float(P.preference_vectors(L, 2).pi0[0]), math.acos(0.3 / 0.5), abs_tol=1e-14)
    torch.testing.assert_close(torch.rad2deg(P.preference_vectors([0.5, 0.5], 3).angles),
                               torch.tensor([[45.0, 60.0, 75.0, 90.0]], dtype=torch.float64))
    # M = 3: A.2's e1 L / ||T_m L|| (T_m zeroes component m) are the two pair cosines
    L3 = torch.tensor([0.2, 0.7, 1.1], dtype=torch.float64)
    pi0 = P.preference_vectors(L3, 3).pi0
    for m, other in ((1, 2), (2, 1)):
        T = L3.clone()
        T[m] = 0
        assert math.isclose(math.cos(float(pi0[other - 1])), float(L3[0] / T.norm()), abs_tol=1e-14)


def test_preference_vector_errors():
    with pytest.raises(ValueError, match="M >= 2"):
        P.preference_vectors([1.0], 2)
    with pytest.raises(ValueError, match="non-negative"):
        P.preference_vectors([1.0, -0.1], 2)
    with pytest.raises(ValueError, match="finite"):
        P.preference_vectors([float("nan"), 1.0], 2)
    with pytest.raises(ValueError, match="is 0"):
        P.preference_vectors([0.0, 1.0], 2)
    with pytest.raises(ValueError, match="num_regions"):
        P.preference_vectors([1.0, 1.0], 0)
    with pytest.raises(TypeError):
        P.preference_vectors("abc", 2)
    with pytest.raises(ValueError, match="lower <= upper"):
        P.AngularRegion(1.0, 0.5)
    with pytest.raises(ValueError, match="U must be"):
        P.PartitionRegion([0], 1.0, 3)
    with pytest.raises(ValueError, match="rho0"):
        P.PartitionRegion([1], 0.0, 3)
    with pytest.raises(ValueError, match="region is for 3"):
        P.psst_weights(torch.eye(2, dtype=torch.float64), [1.0, 1.0], P.angular_regions([1.0, 1.0, 1.0], 2)[0])
    thin = P.AngularRegion(0.80, 0.82)  # cosine width 0.0145: epsilon 0.01 makes both bounds active inside
    L = torch.tensor([math.cos(0.81), math.sin(0.81)], dtype=torch.float64)
    assert P.psst_weights(torch.eye(2, dtype=torch.float64), L, thin, epsilon=0.005).weights.abs().sum() > 0.5
    with pytest.raises(ValueError, match="half the region"):
        P.PSST(thin, epsilon=0.01)
    with pytest.raises(TypeError, match="the string"):
        P.task_losses(torch.nn.Identity(), torch.zeros(1, 1, 4, 4), torch.zeros(1, dtype=torch.int64), "rotation")
    with pytest.raises(ValueError, match="one per row"):
        P.fewshot_accuracy(torch.randn(10, 3), torch.arange(12))
    with pytest.raises(ValueError, match="n_way"):  # one way: accuracy 1 for any features
        P.fewshot_accuracy(torch.randn(20, 3), torch.arange(2).repeat_interleave(10), n_way=1, n_query=2, episodes=3)


def test_empty_sector_raises_and_zero_width_pairs_keep_the_epsilon_check():
    # L_0 / L_m ~ 1e-17 is L_0 = 0 in float64: pi_0 rounds to pi/2 and every region would have zero width
    for best in ([1e-17, 1.0], [1e-300, 1.0], [1e-17, 1.0, 1e-17]):
        with pytest.raises(ValueError, match="sector"):
            P.angular_regions(best, 3)
    assert float(P.initial_angles([1e-15, 1.0])[0]) < math.pi / 2  # a thin sector is still a sector
    # a region with a zero-width pair: epsilon >= half of the other pair's width is refused as for any region
    mixed = P.AngularRegion([0.5, 0.4], [0.5, 0.6])
    assert float(mixed.widths()[0]) == 0.0 and float(mixed.widths()[1]) > 0.09
    with pytest.raises(ValueError, match="half the region"):
        P.PSST(mixed, epsilon=0.05)
    with pytest.raises(ValueError, match="half the region"):
        P.psst_weights(torch.eye(3, dtype=torch.float64), [1.0, 0.5, 0.5], mixed, epsilon=0.05)
    # near the zero-width pair's ray any epsilon > 0 makes both of its bounds active: their gradients cancel
    with pytest.raises(ValueError, match="half the region"):
        P.PSST(mixed, epsilon=1e-6)
    L = torch.tensor([1.0, math.tan(0.5) + 1e-4, math.tan(0.5)], dtype=torch.float64)
    step = P.psst_weights(torch.eye(3, dtype=torch.float64), L, mixed, epsilon=0.0, feasibility=False)
    assert int(step.active.sum()) == 1  # epsilon = 0: only the violated bound of the ray is active


@pytest.mark.parametrize("M", [2, 3, 4, 5])
def test_partition_covers_every_nonempty_subset_once(M):
    pairs = P.partition_subsets(M)
    aux = set(range(1, M))
    Us = [frozenset(U) for U, _ in pairs]
    expected = {frozenset(c) for r in range(1, M) for c in itertools.combinations(sorted(aux), r)}
    assert len(Us) == 2 ** (M - 1) - 1 and set(Us) == expected and len(set(Us)) == len(Us)
    for U, V in pairs:
        assert set(U) | set(V) == aux and not set(U) & set(V)
    # the regions split {rho <= rho_0}: a loss vector there lies in exactly one of them
    best = torch.rand(M, dtype=torch.float64, generator=torch.Generator().manual_seed(M)) + 0.1
    regions = P.partition_regions(best)
    rho0 = float(best[0] / best[1:].sum())
    g = torch.Generator().manual_seed(10 + M)
    hits = 0
    for _ in range(300):
        L = torch.rand(M, generator=g, dtype=torch.float64) * 2
        inside = [r.contains(L) for r in regions]
        if float(L[0] / L[1:].sum()) <= rho0:
            assert sum(inside) == 1
            hits += 1
        else:
            assert sum(inside) == 0
    assert hits > 20


def test_angular_regions_tile_the_sector():
    best = torch.tensor([0.4, 1.0], dtype=torch.float64)
    K = 4
    regions = P.angular_regions(best, K)
    pv = P.preference_vectors(best, K)
    assert len(regions) == K
    for i, r in enumerate(regions):
        assert float(r.lower[0]) == float(pv.angles[0, i]) and float(r.upper[0]) == float(pv.angles[0, i + 1])
    for phi in torch.linspace(float(pv.pi0[0]) + 1e-3, math.pi / 2 - 1e-3, 37).tolist():
        L = torch.tensor([math.cos(phi), math.sin(phi)], dtype=torch.float64) * 2.5
        assert sum(r.contains(L) for r in regions) == 1
    assert not any(r.contains(torch.tensor([1.0, 0.1])) for r in regions)  # below pi_0
    two = P.angular_regions([0.5, 1.0, 2.0], 3)
    assert len(two) == 9  # K ** (M-1) with two auxiliary tasks, the last pair's index varying fastest
    pv2 = P.preference_vectors([0.5, 1.0, 2.0], 3)
    for (i, j), r in zip(itertools.product(range(3), repeat=2), two):
        assert r.lower.tolist() == [float(pv2.angles[0, i]), float(pv2.angles[1, j])]
        assert r.upper.tolist() == [float(pv2.angles[0, i + 1]), float(pv2.angles[1, j + 1])]


def test_constraint_jacobian_is_the_chain_rule_through_the_losses():
    L = torch.tensor([0.3, 1.2, 0.7], dtype=torch.float64)
    region = P.AngularRegion([0.2, 0.3], [1.4, 1.5])
    values, A = region.jacobian(L)
    for m in (1, 2):
        n3 = (L[0] ** 2 + L[m] ** 2) ** 1.5
        dc = torch.zeros(3, dtype=torch.float64)
        dc[0], dc[m] = L[m] ** 2 / n3, -L[0] * L[m] / n3  # d/dL of L0 / sqrt(L0^2 + Lm^2)
        torch.testing.assert_close(A[m - 1], -dc, rtol=0, atol=1e-14)  # upper-angle constraint cos(hi) - c
        torch.testing.assert_close(A[2 + m - 1], dc, rtol=0, atol=1e-14)
    pr = P.PartitionRegion([2], rho0=0.25, num_tasks=3)
    v, A = pr.jacobian(L)
    torch.testing.assert_close(A, torch.tensor([[4.0, -1, -1], [2.0, 0, -1], [-2.0, 1, 0]], dtype=torch.float64))
    torch.testing.assert_close(v, torch.tensor([1.2 - 1.9, 0.6 - 0.7, 1.2 - 0.6], dtype=torch.float64))


# ---- the constrained direction (A.4-A.5, Eq. 3-4) -------------------------------------------------------------

A_PT = torch.tensor([2.0, 0.0, 0.5], dtype=torch.float64)
B_PT = torch.tensor([0.0, 1.0, -0.5], dtype=torch.float64)


def _losses(theta):
    """Two quadratics with different curvatures: the Pareto set is a curve between A_PT and B_PT."""
    d1, d2 = theta - A_PT, theta - B_PT
    return torch.stack([0.5 * (d1 * torch.tensor([1.0, 3.0, 1.0], dtype=torch.float64) * d1).sum(),
                        0.5 * (d2 * d2).sum() + 0.1])


def _jac(theta):
    t = theta.clone().requires_grad_(True)
    L = _losses(t)
    return L.detach(), tm.autograd.jacobian(L, [t])


def _primal_direction(rows):
    """Eq. 3 by SLSQP: min alpha + 0.5 |d|^2 s.t. rows @ d <= alpha; returns d (a descent step)."""
    from scipy.optimize import minimize

    R = rows.numpy()
    n = R.shape[1]
    cons = [{"type": "ineq", "fun": (lambda z, r=r: z[n] - r @ z[:n]), "jac": (lambda z, r=r: np.r_[-r, 1.0])}
            for r in R]
    res = minimize(lambda z: z[n] + 0.5 * z[:n] @ z[:n], np.zeros(n + 1), jac=lambda z: np.r_[z[:n], 1.0],
                   constraints=cons, method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
    assert res.success
    return torch.from_numpy(res.x[:n])


def test_constrained_direction_decreases_objectives_and_active_constraints():
    theta = torch.tensor([0.2, 0.9, 0.3], dtype=torch.float64)
    L, J = _jac(theta)
    phi = math.atan2(float(L[1]), float(L[0]))
    mgda = tm.methods.MGDA()(J)
    # which way does MGDA turn the loss vector? put the region's boundary right there
    turn = float(torch.tensor([-L[1], L[0]]) @ (J @ mgda))  # d(phi)/dt * |L|^2 along -mgda is -turn
    lower, upper = (phi - 1e-3, phi + 0.3) if turn > 0 else (phi - 0.3, phi + 1e-3)
    region = P.AngularRegion(lower, upper)
    out = P.psst_direction(J, L, region, epsilon=0.01)
    d, step = out.direction, out.step
    assert step.mode == "constrained" and step.inside and int(step.active.sum()) == 1

    def h(t):  # the active constraint through theta, by autograd: independent of the A @ J route
        return region.constraints(_losses(t))[step.active][0]

    t_ = theta.clone().requires_grad_(True)
    grad_h = torch.autograd.grad(h(t_), t_)[0]
    dd = float(d @ d)
    assert dd > 1e-4  # a genuine step
    assert bool(((J @ d) >= dd - 1e-10).all())  # every objective: <g_i, d> >= |d|^2
    assert float(grad_h @ d) >= dd - 1e-10  # the active constraint as well
    assert float(grad_h @ mgda) < 0  # ... which MGDA's own direction would have violated
    for t in (1e-3, 1e-4):
        assert bool((_losses(theta - t * d) < L).all())
        assert float(h(theta - t * d)) < float(h(theta))
    # Eq. 3 solved in the primal by SLSQP: same direction (the dual is exact)
    rows = torch.cat([J, grad_h[None]])
    torch.testing.assert_close(-_primal_direction(rows), d, rtol=0, atol=1e-6)


def _check_kkt(J, region, L, out, eps):
    """Eq. 4's optimality certificate: ``dual`` on the simplex, ``d = dual @ rows`` and every row of the QP
    satisfies ``<row, d> >= |d|^2``, with equality where ``dual > 0`` (a zero ``d`` fails unless optimal)."""
    values, A = region.jacobian(L)
    step, d = out.step, out.direction
    if step.mode == "constrained":
        assert torch.equal(step.active, values >= -eps)
        rows = torch.cat([J, A[step.active] @ J])
    else:
        assert torch.equal(step.active, values > 0)
        rows = A[step.active] @ J
    lam, dd = step.dual, float(d @ d)
    assert bool((lam >= 0).all()) and math.isclose(float(lam.sum()), 1.0, abs_tol=1e-12)
    torch.testing.assert_close(lam @ rows, d, rtol=0, atol=1e-10)
    slack = rows @ d - dd
    assert bool((slack >= -1e-9).all())
    assert bool((slack[lam > 1e-9].abs() <= 1e-9).all())
    return dd


def test_random_problems_satisfy_the_dual_optimality_conditions():
    g = torch.Generator().manual_seed(0)
    modes = {"constrained": 0, "feasibility": 0, "active": 0}
    for trial in range(40):
        M = 2 + trial % 3
        J = torch.randn(M, 15, generator=g, dtype=torch.float64)
        L = torch.rand(M, generator=g, dtype=torch.float64) + 0.05
        if trial % 2:
            region = P.partition_regions(torch.rand(M, generator=g, dtype=torch.float64) + 0.1)[0] if M > 2 else \
                P.angular_regions(torch.rand(M, generator=g, dtype=torch.float64) + 0.1, 3)[trial % 3]
        else:
            region = P.angular_regions(torch.rand(M, generator=g, dtype=torch.float64) + 0.1, 2)[-1]
        eps = float(torch.rand(1, generator=g)) * 0.05
        if trial % 4 == 0:  # a loss vector inside the region, within epsilon of its upper angles: active constraints
            ang = region.upper - 0.5 * eps * torch.rand(M - 1, generator=g, dtype=torch.float64)
            L = torch.cat([torch.ones(1, dtype=torch.float64), torch.tan(ang)])
            L = L / L.max()  # losses of order 1 (the constraint gradients scale as 1 / |L|)
        out = P.psst_direction(J, L, region, epsilon=eps)
        _check_kkt(J, region, L, out, eps)
        modes[out.step.mode] += 1
        modes["active"] += int(out.step.mode == "constrained" and bool(out.step.active.any()))
    assert modes["feasibility"] >= 10 and modes["active"] >= 8  # both branches, with active constraints


def test_rounded_gram_of_parallel_gradients_is_accepted():
    # g_0 = g_1 up to rounding: G is a Gram matrix to 1e-12, which MGDA accepts. The angle bound's gradient
    # (L_1 g_0 - L_0 g_1) / |L|^3 cancels to nothing, and a^T G a is G's rounding error (negative here): the
    # QP must still see a Gram matrix, and the answer is the exact one, d = 0 (the bound is flat to first order)
    J = torch.tensor([[1.0, 0.0], [1.0, 1e-12]], dtype=torch.float64)
    G = torch.tensor([[1.0, 1.0 + 1e-12], [1.0 + 1e-12, 1.0]], dtype=torch.float64)  # J J^T, rounded
    assert float(torch.linalg.eigvalsh(G)[0]) < 0
    tm.methods.min_norm_weights(G)  # no error
    L = torch.tensor([1.0, 1.0], dtype=torch.float64)
    region = P.AngularRegion(math.pi / 4 - 0.2, math.pi / 4 + 1e-3)  # the upper bound is epsilon-active
    step = P.psst_weights(G, L, region, epsilon=0.01)
    assert step.mode == "constrained" and step.active.tolist() == [True, False]
    assert bool((step.dual >= 0).all()) and math.isclose(float(step.dual.sum()), 1.0, abs_tol=1e-12)
    assert float((step.weights @ J).norm()) < 1e-9
    # through the aggregator, as tm.backward calls it
    agg = tm.methods.PSST(region, epsilon=0.01)
    torch.testing.assert_close(agg.gram_weights(G, L), step.weights, rtol=0, atol=1e-12)
    # small losses: the bound's coefficients grow as 1 / |L| and a^T G a as 1 / |L|^2, so G's rounding in
    # B G B^T is far beyond what the QP accepts as rounding; through G's PSD part the answer is unchanged
    small = P.psst_weights(G, 1e-4 * L, region, epsilon=0.01)
    assert small.mode == "constrained" and small.active.tolist() == [True, False]
    torch.testing.assert_close(small.dual, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), rtol=0, atol=1e-9)
    _, A = region.jacobian(1e-4 * L)
    torch.testing.assert_close(small.weights, A[0], rtol=1e-9, atol=0)  # the bound's gradient a @ J alone


def test_no_active_constraint_gives_mgda():
    theta = torch.tensor([0.5, 0.4, 0.0], dtype=torch.float64)
    L, J = _jac(theta)
    phi = math.atan2(float(L[1]), float(L[0]))
    region = P.AngularRegion(phi - 0.3, phi + 0.3)
    step = P.psst_weights(tm.ops.gram(J), L, region, epsilon=0.01)
    assert step.mode == "constrained" and not bool(step.active.any())
    torch.testing.assert_close(step.weights, tm.methods.min_norm_weights(tm.ops.gram(J)), rtol=0, atol=1e-12)
    agg = tm.methods.PSST(region, epsilon=0.01)
    torch.testing.assert_close(agg(J, L), tm.methods.MGDA()(J), rtol=0, atol=1e-12)


def test_outside_the_region_restores_feasibility_first():
    theta = torch.tensor([0.5, 0.4, 0.0], dtype=torch.float64)
    L, J = _jac(theta)
    phi = math.atan2(float(L[1]), float(L[0]))
    region = P.AngularRegion(phi + 0.1, phi + 0.4)  # the loss vector's angle is below the region
    out = P.psst_direction(J, L, region)
    assert out.step.mode == "feasibility" and not out.step.inside
    before = float(region.constraints(L)[out.step.active][0])
    after = float(region.constraints(_losses(theta - 1e-3 * out.direction))[out.step.active][0])
    assert before > 0 and after < before
    # without the feasibility phase, the violated constraint is one more row of the QP
    both = P.psst_direction(J, L, region, feasibility=False)
    assert both.step.mode == "constrained" and both.step.dual.shape[0] == 2 + int(both.step.active.sum())


def test_aggregator_through_tm_backward():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2).double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    losses = ((net(x) - y) ** 2).mean(0)
    J = tm.autograd.jacobian(losses, net.parameters(), retain_graph=True)
    region = P.angular_regions(losses.detach() * torch.tensor([1.5, 1.0], dtype=torch.float64), 2)[0]
    expected = P.psst_direction(J, losses.detach(), region, epsilon=0.02)
    agg = tm.methods.PSST(region, epsilon=0.02)
    w = tm.backward(losses, net.parameters(), agg)
    torch.testing.assert_close(w, expected.step.weights)
    torch.testing.assert_close(tm.autograd.flatten([p.grad for p in net.parameters()]), expected.direction)
    assert agg.counts[expected.step.mode] == 1 and agg.last.mode == expected.step.mode
    with pytest.raises(ValueError, match="loss values"):
        agg(J)


def test_feasibility_phase_lasts_until_the_first_point_inside():
    theta = torch.tensor([0.5, 0.4, 0.0], dtype=torch.float64)
    L, J = _jac(theta)
    phi = math.atan2(float(L[1]), float(L[0]))
    outside = P.AngularRegion(phi + 0.1, phi + 0.4)  # the loss vector's angle is below the region
    L_in = torch.tensor([math.cos(phi + 0.2), math.sin(phi + 0.2)], dtype=torch.float64) * L.norm()
    agg = tm.methods.PSST(outside, epsilon=0.01)  # "initial": Pareto MTL's initialization phase
    assert agg.feasibility == "initial"
    agg(J, L)
    assert agg.last.mode == "feasibility"
    agg(J, L_in)
    assert agg.last.mode == "constrained" and agg.last.inside
    d = agg(J, L)  # outside again: Eq. 3, the violated constraint next to the objectives
    assert agg.last.mode == "constrained" and not agg.last.inside and agg.last.dual.shape[0] == 2 + 1
    dd = float(d @ d)
    assert dd > 1e-8 and bool(((J @ d) >= dd - 1e-10).all())  # no objective increases to first order
    assert agg.counts == {"constrained": 2, "feasibility": 1, "inside": 1}
    # the feasibility-only direction does increase an objective here: what the phase's end avoids
    feas = P.psst_direction(J, L, outside, feasibility=True).direction
    assert float((J @ feas).min()) < 0
    always = tm.methods.PSST(outside, epsilon=0.01, feasibility=True)
    assert always.feasibility == "always"
    for losses in (L, L_in, L):
        always(J, losses)
    assert always.counts == {"constrained": 1, "feasibility": 2, "inside": 1}
    never = tm.methods.PSST(outside, epsilon=0.01, feasibility="never")
    never(J, L)
    assert never.last.mode == "constrained" and tm.methods.PSST(outside, feasibility=False).feasibility == "never"
    with pytest.raises(ValueError, match="feasibility must be one of"):
        tm.methods.PSST(outside, feasibility="sometimes")


def test_initial_phase_is_over_after_a_first_point_inside_even_without_a_feasibility_step():
    # the phase ends at the first loss vector inside the region, whether or not a feasibility step came first
    theta = torch.tensor([0.5, 0.4, 0.0], dtype=torch.float64)
    L, J = _jac(theta)
    phi = math.atan2(float(L[1]), float(L[0]))
    region = P.AngularRegion(phi + 0.1, phi + 0.4)
    L_in = torch.tensor([math.cos(phi + 0.2), math.sin(phi + 0.2)], dtype=torch.float64) * L.norm()
    agg = tm.methods.PSST(region, epsilon=0.01)
    agg(J, L_in)
    agg(J, L)  # outside now: Eq. 3 with the violated bound, not the feasibility-only direction
    assert agg.last.mode == "constrained" and not agg.last.inside
    assert agg.counts == {"constrained": 2, "feasibility": 0, "inside": 1}


def test_an_abandoned_step_leaves_the_counts_and_the_phase_as_they_were():
    # float32 losses of 1e-21 with gradients of 1e19: G is finite, but the bound's coefficients (~1 / |L|)
    # make w @ J overflow; tm.backward refuses the step and must put back what the call changed
    p = torch.tensor([1e-40, 1e-40], dtype=torch.float32, requires_grad=True)
    region = P.AngularRegion(0.1, 0.5)  # the losses' angle, atan(1.5), is above the region
    agg = tm.methods.PSST(region, epsilon=0.01)
    for _ in range(2):  # a second refusal finds the state of the first call's start too
        with pytest.raises(ValueError, match="overflows"):
            tm.backward(1e19 * p * torch.tensor([1.0, 1.5]), [p], agg)
        assert agg.counts == {"constrained": 0, "feasibility": 0, "inside": 0}
        assert agg.last is None and agg.weights is None and p.grad is None


def _tiny_conv4():
    torch.manual_seed(0)
    return tm.zoo.models.Conv4SelfSupervised(num_classes=3, in_channels=1, image_size=16, patch_size=16,
                                             channels=(4,) * 4, rotation_channels=(4, 4), location_hidden=8)


@pytest.mark.parametrize("bound", ["upper", "lower"])
def test_trainer_step_over_all_parameters_decreases_the_active_constraint(bound):
    # Eq. 3 is posed on all of theta: the trainer's whole update, heads included, must decrease every
    # objective and every epsilon-active constraint to first order (<grad, d> >= |d|^2 for d = -step / lr)
    model = _tiny_conv4()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 16, 16, generator=g), torch.arange(16) % 3
    params = list(model.parameters())
    L = P.task_losses(model, x, y)  # train mode, the whole set: the trainer's single batch
    phi = math.atan2(float(L[1].detach()), float(L[0].detach()))
    region = P.AngularRegion(phi - 0.15, phi + 1e-4) if bound == "upper" else P.AngularRegion(phi - 1e-4, phi + 0.15)
    k = 0 if bound == "upper" else 1  # constraint order: Q (upper angle) first, then R (lower angle)
    h = region.constraints(L.double())
    hv = h.detach()
    assert -1e-3 < float(hv[k]) < 0 and float(hv[1 - k]) < -0.05  # inside, only this bound epsilon-active
    rows = [torch.autograd.grad(f, params, retain_graph=True, allow_unused=True) for f in (L[0], L[1], h[k])]
    rows = torch.stack([tm.autograd.flatten([torch.zeros_like(p) if gr is None else gr for gr, p in zip(r, params)])
                        for r in rows]).double()
    agg = tm.methods.PSST(region, epsilon=0.01)
    lr = 0.01
    trainer = P.FewShotTrainer(model, x, y, method=agg, epochs=1, batch_size=16, lr=lr, momentum=0.0,
                               weight_decay=0.0)
    before = tm.autograd.flatten(params).detach().clone()
    trainer.train_epoch()
    d = (before - tm.autograd.flatten(params).detach()).double() / lr
    assert agg.last.mode == "constrained" and agg.last.active.tolist() == [k == 0, k == 1]
    dd = float(d @ d)
    assert dd > 1e-6
    assert float(rows[2] @ d) > 0  # the active bound decreases to first order along the update -lr d
    slack = (rows @ d - dd) / (rows.norm(dim=1) * d.norm())
    assert bool((slack >= -1e-3).all()), slack  # Eq. 4's certificate: the objectives and the bound, by |d|^2
    # the heads moved too: their share of the step is part of the constrained direction
    n_trunk = sum(p.numel() for p in model.trunk.parameters())
    assert float(d[n_trunk:].norm()) > 0.1 * float(d.norm())


def test_trainer_reports_the_fractions_of_each_epoch():
    # feasibility_fraction / inside_fraction count the steps of the epoch, not every step so far
    model = _tiny_conv4()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 16, 16, generator=g), torch.arange(16) % 3
    region = P.AngularRegion(0.0, 1e-3)  # next to the main-task axis: no step gets inside
    agg = tm.methods.PSST(region, epsilon=0.0, feasibility="always")
    trainer = P.FewShotTrainer(model, x, y, method=agg, epochs=2, batch_size=8, lr=1e-4, momentum=0.0,
                               weight_decay=0.0)
    for epoch in (1, 2):
        out = trainer.train_epoch()
        assert out["steps"] == 2 and out["feasibility_fraction"] == 1.0 and out["inside_fraction"] == 0.0
        assert agg.counts == {"constrained": 0, "feasibility": 2 * epoch, "inside": 0}


def test_trainer_heads_on_their_own_losses_is_the_documented_deviation():
    # aggregate_heads=False: the trunk's step is PSST's, each head's the gradient of its own loss; the
    # whole step then need not respect the active bound (here it pushes the upper bound up)
    model = _tiny_conv4()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 16, 16, generator=g), torch.arange(16) % 3
    params = list(model.parameters())
    L = P.task_losses(model, x, y)
    phi = math.atan2(float(L[1].detach()), float(L[0].detach()))
    region = P.AngularRegion(phi - 0.15, phi + 1e-4)
    h = region.constraints(L.double())[0]
    grad_h = tm.autograd.flatten([torch.zeros_like(p) if gr is None else gr for gr, p in
                                  zip(torch.autograd.grad(h, params, allow_unused=True), params)]).double()
    trainer = P.FewShotTrainer(model, x, y, method=tm.methods.PSST(region, epsilon=0.01), epochs=1, batch_size=16,
                               lr=0.01, momentum=0.0, weight_decay=0.0, aggregate_heads=False)
    before = tm.autograd.flatten(params).detach().clone()
    trainer.train_epoch()
    step = (tm.autograd.flatten(params).detach() - before).double()
    assert float(grad_h @ step) > 0  # first order: the active upper bound rises
    with pytest.raises(TypeError, match="aggregate_heads"):
        P.FewShotTrainer(model, x, y, method=tm.methods.PSST(region, epsilon=0.01), batch_size=16, aggregate_heads=1)


def test_trainer_keeps_labels_and_patch_images_on_the_images_device():
    # the batches are indexed on the images' device: labels given as a list (or on the CPU) and the patch
    # images must follow the images there ("meta" checks devices as CUDA does)
    model = _tiny_conv4()
    x = torch.randn(16, 1, 16, 16).to("meta")
    trainer = P.FewShotTrainer(model, x, [i % 3 for i in range(16)], aux=("rotation", "location"),
                               method=[1.0, 1.0, 1.0], batch_size=16, patch_images=torch.randn(16, 1, 48, 48))
    assert trainer.labels.device.type == "meta" and trainer.labels.dtype == torch.int64
    assert trainer.patch_images.device.type == "meta" and trainer.patch_images.shape == (16, 1, 48, 48)
    with pytest.raises(ValueError, match="patch_images"):
        P.FewShotTrainer(model, x, torch.arange(16) % 3, aux=("rotation", "location"), batch_size=16,
                         method=[1.0, 1.0, 1.0], patch_images=torch.randn(16, 48, 48))


@pytest.mark.cuda
def test_trainer_on_cuda_with_cpu_labels_and_patches_matches_the_cpu():
    """CUDA images with labels given as a list and patch images on the CPU: an epoch runs on the GPU (it
    used to index CPU labels with CUDA batch indices) and ends where the CPU run ends (float64)."""
    g = torch.Generator().manual_seed(2)
    x, xp = torch.randn(32, 1, 16, 16, generator=g, dtype=torch.float64), torch.randn(32, 1, 48, 48, generator=g,
                                                                                     dtype=torch.float64)
    labels = [i % 3 for i in range(32)]

    def run(device):
        model = _tiny_conv4().double().to(device)
        trainer = P.FewShotTrainer(model, x.to(device), labels, aux=("rotation", "location"), method=[1.0, 0.5, 0.5],
                                   epochs=1, batch_size=16, lr=0.01, patch_images=xp, seed=3)
        stats = trainer.train_epoch()
        return stats, tm.autograd.flatten(list(model.parameters())).detach().cpu()

    (cpu, theta), (gpu, theta_c) = run("cpu"), run("cuda")
    assert gpu["steps"] == cpu["steps"] == 2
    for key in ("loss0", "loss1", "loss2"):
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-9)
    torch.testing.assert_close(theta_c, theta, rtol=1e-9, atol=1e-12)


# ---- self-supervised label generators -------------------------------------------------------------------------


def test_rotation_labels_on_a_hand_made_image():
    img = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    other = img + 10
    rotated, labels = P.rotate_batch(torch.cat([img, other]))
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    quarter = {0: [[1, 2], [3, 4]], 1: [[2, 4], [1, 3]], 2: [[4, 3], [2, 1]], 3: [[3, 1], [4, 2]]}  # counter-clockwise
    for r, grid in quarter.items():
        assert rotated[2 * r, 0].tolist() == grid
        assert rotated[2 * r + 1, 0].tolist() == (torch.tensor(grid, dtype=torch.float32) + 10).tolist()
    with pytest.raises(ValueError, match="square"):
        P.rotate_batch(torch.zeros(1, 1, 2, 3))


def test_patch_grid_and_pairs_on_a_hand_made_image():
    # a 9 x 12 image, 3 x 4 cells with the value of their grid cell (row-major 0..8), two channels
    cells = torch.arange(9.0).reshape(3, 3)
    img = cells.repeat_interleave(3, 0).repeat_interleave(4, 1)
    x = torch.stack([img, -img]).unsqueeze(0).repeat(2, 1, 1, 1)
    x[1] += 100
    for gen in (None, torch.Generator().manual_seed(0)):
        grid = P.patch_grid(x, 2, generator=gen, normalize=False)
        assert grid.shape == (2, 9, 2, 2, 2)
        for c in range(9):
            assert bool((grid[0, c, 0] == c).all()) and bool((grid[0, c, 1] == -c).all())
            assert bool((grid[1, c, 0] == c + 100).all())
        centre, neighbour, labels = P.patch_pairs(grid)
        assert centre.shape == neighbour.shape == (16, 2, 2, 2) and labels.tolist() == list(range(8)) * 2
        assert bool((centre[:8, 0] == 4).all())
        # lexicographic neighbours: label 0 top-left, 1 top, 2 top-right, 3 left, 4 right, ... 7 bottom-right
        positions = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
        for k, (r, c) in enumerate(positions):
            assert bool((neighbour[k, 0] == cells[r, c]).all()) and int(labels[k]) == k
    # a random crop varies inside the 3 x 4 region; normalized patches have zero mean, unit std
    ramp = torch.arange(36.0 * 36).reshape(1, 1, 36, 36)
    grids = [P.patch_grid(ramp, 8, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    assert not torch.equal(P.patch_grid(ramp, 8, generator=torch.Generator().manual_seed(0), normalize=False),
                           P.patch_grid(ramp, 8, generator=torch.Generator().manual_seed(1), normalize=False))
    flat = grids[0].flatten(2)
    torch.testing.assert_close(flat.mean(-1), torch.zeros(1, 9), atol=1e-4, rtol=0)
    torch.testing.assert_close(flat.std(-1, unbiased=False), torch.ones(1, 9), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="smaller than patch_size"):
        P.patch_grid(ramp, 13)


def test_task_losses_are_the_sums_of_eq_8_and_9():
    torch.manual_seed(0)
    model = tm.zoo.models.Conv4SelfSupervised(num_classes=3, in_channels=1, image_size=16, patch_size=16,
                                              channels=(4,) * 4, rotation_channels=(4, 4), location_hidden=8)
    model.eval()
    x, y = torch.randn(3, 1, 16, 16), torch.tensor([0, 2, 1])
    xp = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        L = P.task_losses(model, x, y, ("rotation", "location"), patch_images=xp)
        rotated, rl = P.rotate_batch(x)
        outs = model(rotated, P.patch_grid(xp, 16))
    assert math.isclose(float(L[0]), float(F.cross_entropy(outs[0][:3], y)), rel_tol=1e-6)
    rot = sum(float(F.cross_entropy(outs[1][rl == r], torch.full((3,), r))) for r in range(4))  # sum over r
    assert math.isclose(float(L[1]), rot, rel_tol=1e-5)
    c, nb, lab = P.patch_pairs(P.patch_grid(xp, 16))
    with torch.no_grad():  # the location head on (centre, neighbour) pairs, one pair at a time
        loc = model.heads[2].pair_logits(model.trunk(c).flatten(1), model.trunk(nb).flatten(1))
    assert math.isclose(float(L[2]), 8 * float(F.cross_entropy(loc, lab)), rel_tol=1e-5)


# ---- exploration (A.6 / D.2) and evaluation (C) ----------------------------------------------------------------


def test_exploration_moves_along_the_pareto_set():
    # two isotropic quadratics: the Pareto set is the segment [a, b]; its tangent is b - a
    a = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    x = (0.4 * a + 0.6 * b).clone().requires_grad_(True)
    objectives = lambda: torch.stack([0.5 * ((x - a) ** 2).sum(), 0.5 * ((x - b) ** 2).sum()])  # noqa: E731
    exp = P.explore_solution(objectives, [x], step=0.1, k=5)
    assert torch.equal(x.detach(), 0.4 * a + 0.6 * b)  # left at the solution
    u = (b - a) / (b - a).norm()
    for j in range(2):
        assert abs(float(exp.directions[j] @ u)) > 1 - 1e-10  # tangent to the Pareto set
        assert float(exp.losses[j, j]) < float(exp.base_losses[j]) < float(exp.losses[j, 1 - j]) + 1  # favours j
        assert float(exp.losses[j, j]) < float(exp.base_losses[j])
        assert float(exp.losses[j, 1 - j]) > float(exp.base_losses[1 - j])
        p = exp.params[j]
        assert tm.methods.pareto_stationarity(torch.stack([p - a, p - b])) < 1e-20  # still Pareto-stationary
    torch.testing.assert_close(exp.losses - exp.base_losses, exp.predicted, atol=0.02, rtol=0)  # first order
    # step=None: per direction, the step whose first-order change |s J v| is relative_change |L(theta*)|
    auto = P.explore_solution(objectives, [x], relative_change=0.05, k=5)
    torch.testing.assert_close(auto.predicted.norm(dim=1), 0.05 * auto.base_losses.norm().expand(2), rtol=1e-10, atol=0)
    assert torch.equal(x.detach(), 0.4 * a + 0.6 * b)


def test_fewshot_accuracy_and_confidence_interval():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat_interleave(30)
    centres = torch.randn(6, 16, generator=g) * 5
    clean = centres[labels] + 0.1 * torch.randn(180, 16, generator=g)
    r = P.fewshot_accuracy(clean, labels, n_way=5, k_shot=1, n_query=10, episodes=50)
    assert r.mean == 1.0 and r.ci95 == 0.0 and r.accuracies.shape == (50,)
    noise = torch.randn(180, 16, generator=g)
    r = P.fewshot_accuracy(noise, labels, n_way=5, k_shot=5, n_query=10, episodes=400)
    assert abs(r.mean - 0.2) < 0.03  # chance
    assert math.isclose(r.ci95, 1.96 * float(r.accuracies.std()) / math.sqrt(400))


# ---- image folders --------------------------------------------------------------------------------------------


def test_load_image_folder(tmp_path):
    from PIL import Image

    from torchmoo.zoo.data.image_folder import load_image_folder

    for name, value in (("b_class", 200), ("a_class", 50)):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (10, 6), (value, value + i, 0)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "a_class" / "notes.txt").write_text("not an image")
    x, y, names = load_image_folder(tmp_path, 8)
    assert names == ["a_class", "b_class"] and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert x.shape == (6, 3, 8, 8) and x.dtype == torch.float32
    torch.testing.assert_close(x[1, :, 4, 4], torch.tensor([50, 51, 0]) / 255.0)
    torch.testing.assert_close(x[3, 0], torch.full((8, 8), 200 / 255.0))
    with pytest.raises(tm.zoo.data.DataNotFoundError):
        load_image_folder(tmp_path / "missing", 8)
    (tmp_path / "c_empty").mkdir()
    with pytest.raises(ValueError, match="no image"):
        load_image_folder(tmp_path, 8)


# ---- the experiment -------------------------------------------------------------------------------------------


def test_experiment_tiny_run_and_resume(tmp_path):
    from torchmoo.experiments.psst_fewshot import Config

    cfg = Config(epochs=1, channels=8, regions=2, fixed_weights=[1.0], val_episodes=20, test_episodes=60,
                 explore_k=2, explore_images=16, threads=1)
    res = tm.experiments.run_experiment("psst-fewshot-digits", out=str(tmp_path), progress=False, config=cfg)
    s = res["summary"]
    models = [t["model"] for t in s["table"]]
    assert models[:4] == ["cc alone", "fixed w=1", "psst region 1/2", "  explored from 1/2, favour L0"]
    assert len(models) == 2 + 2 * 3
    for t in s["table"]:
        assert t["1-shot"] > 0.3 and t["5-shot"] > 0.3  # 5-way: chance is 0.2
        assert 0 < t["1-shot ci95"] < 0.1
    best = torch.tensor(res["units"]["fixed w=1"]["losses"], dtype=torch.float64)
    assert s["pi_0 (deg)"][0] == pytest.approx(math.degrees(math.atan2(best[1], best[0])))
    assert s["preference angles (deg)"][0][-1] == pytest.approx(90.0)
    assert (tmp_path / "psst_fewshot.png").exists()
    again = tm.experiments.run_experiment("psst-fewshot-digits", out=str(tmp_path), progress=False, config=cfg)
    assert again["resumed"] == 1 and again["summary"]["table"] == s["table"]
    with pytest.raises(ValueError, match="feasibility must be one of"):
        tm.experiments.run_experiment("psst-fewshot-digits", out=str(tmp_path / "bad"), progress=False,
                                      config=Config(feasibility="sometimes"))


def test_fewshot_accuracy_in_chunks_matches_an_episode_loop(monkeypatch):
    """The episodes are scored in chunks (bounded memory); every chunk size gives the accuracies of a plain
    loop over the episodes: prototypes = normalized mean of normalized support features, argmax cosine."""
    from torchmoo.zoo.data.episodes import EpisodeSampler

    g = torch.Generator().manual_seed(1)
    labels = torch.arange(7).repeat_interleave(12)
    features = torch.randn(7, 8, generator=g)[labels] + 0.8 * torch.randn(84, 8, generator=g)
    n, k, q, E = 4, 2, 3, 37
    sampler = EpisodeSampler(labels, n, k, q, E, 5)
    expected = []
    for e in range(E):
        idx = torch.tensor(sampler.episode(e))
        z = torch.nn.functional.normalize(features[idx].double(), dim=1)
        protos = torch.stack([torch.nn.functional.normalize(z[j * k:(j + 1) * k].mean(0), dim=0) for j in range(n)])
        pred = (z[n * k:] @ protos.T).argmax(1)
        expected.append(float((pred == torch.arange(n).repeat_interleave(q)).double().mean()))
    for elems in (1 << 25, 1, 3 * n * (k + q) * 8):  # one chunk, one episode per chunk, 3 per chunk
        monkeypatch.setattr(P, "_EPISODE_CHUNK_ELEMS", elems)
        r = P.fewshot_accuracy(features, labels, n_way=n, k_shot=k, n_query=q, episodes=E, seed=5)
        assert r.accuracies.tolist() == expected
    assert 0.0 < min(expected) and max(expected) <= 1.0 and len(set(expected)) > 1  # a non-trivial check


def test_fewshot_accuracy_memory_does_not_grow_with_the_episodes(monkeypatch):
    """The episodes are drawn chunk by chunk: holding every episode's indices as Python lists at once grows
    with E (100,000 episodes of 5 x 16 indices: about 0.4 GB), a chunk's does not."""
    import tracemalloc

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat_interleave(100)  # indices above 256: every one a separate Python int
    features = torch.randn(600, 4, generator=g)
    monkeypatch.setattr(P, "_EPISODE_CHUNK_INDICES", 80 * 200, raising=False)  # 200 episodes of 5 x (1 + 15)
    E = 2000
    tracemalloc.start()
    try:
        r = P.fewshot_accuracy(features, labels, n_way=5, k_shot=1, n_query=15, episodes=E, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.accuracies.shape == (E,) and abs(r.mean - 0.2) < 0.03  # random features: chance
    # all 2000 episodes at once: about 4 MB of lists and ints; one chunk of 200: about 0.4 MB
    assert peak < 1.5e6, peak


def test_evaluate_losses_is_the_mean_over_batches_and_accepts_label_sequences():
    """In eval mode the loss vector does not depend on the batching: batches of 5 average to the loss of the
    whole set at once; labels may be a list (as FewShotTrainer accepts them)."""
    model = _tiny_conv4()
    g = torch.Generator().manual_seed(4)
    x, xp = torch.randn(12, 1, 16, 16, generator=g), torch.randn(12, 1, 48, 48, generator=g)
    y = [i % 3 for i in range(12)]
    aux = ("rotation", "location")
    model.eval()
    with torch.no_grad():
        whole = P.task_losses(model, x, torch.tensor(y), aux, patch_images=xp).double()
    model.train()
    L = P.evaluate_losses(model, x, y, aux, patch_images=xp, batch_size=5)
    assert model.training and L.dtype == torch.float64 and L.shape == (3,)
    torch.testing.assert_close(L, whole, rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="one label per image"):
        P.evaluate_losses(model, x, y[:11], aux, patch_images=xp)
    with pytest.raises(ValueError, match="patch_images has 11"):
        P.evaluate_losses(model, x, y, aux, patch_images=xp[:11])
    with pytest.raises(ValueError, match="batch_size"):
        P.evaluate_losses(model, x, y, aux, patch_images=xp, batch_size=0)


def test_trainer_rejects_a_psst_region_for_another_number_of_objectives():
    model = _tiny_conv4()
    x, y = torch.randn(16, 1, 16, 16), torch.arange(16) % 3
    region = P.angular_regions([1.0, 1.0], 2)[0]  # M = 2, the training has 3 objectives
    with pytest.raises(ValueError, match="region is for 2 objectives, the training has 3"):
        P.FewShotTrainer(model, x, y, aux=("rotation", "location"), method=tm.methods.PSST(region, epsilon=0.01),
                         batch_size=16, patch_images=torch.randn(16, 1, 48, 48))


def test_experiment_checks_the_episodes_before_training(tmp_path, monkeypatch):
    """A split too small for the episodes (or a bad count) fails at once, not after the first unit's training."""
    from torchmoo.experiments.psst_fewshot import Config

    def no_training(self):
        raise AssertionError("trained before checking the episodes")

    monkeypatch.setattr(P.FewShotTrainer, "train_epoch", no_training)
    # about 90 test images per novel digit: 80 shots + 15 queries do not fit
    with pytest.raises(ValueError, match="test half of the novel classes cannot hold the 5-way 80-shot"):
        tm.experiments.run_experiment("psst-fewshot-digits", out=str(tmp_path / "a"), progress=False,
                                      config=Config(shots=[1, 80]))
    with pytest.raises(ValueError, match="n_query must be an int >= 1"):
        tm.experiments.run_experiment("psst-fewshot-digits", out=str(tmp_path / "b"), progress=False,
                                      config=Config(n_query=0))
    with pytest.raises(ValueError, match="n_way must be an int >= 2"):
        tm.experiments.run_experiment("psst-fewshot-digits", out=str(tmp_path / "c"), progress=False,
                                      config=Config(n_way=1))
