"""Tests of the aggregators (MGDA, linear scalarization, PCGrad, CAGrad, improvement function), of
g(theta) and Ma et al.'s correction vector, and of torchmoo.backward.

Each method is checked against what defines it: the optimality conditions of its problem, an
independent solution of its primal problem by scipy (SLSQP on small constructed gradients), or a
literal vector-space implementation of its algorithm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import torchmoo as tm
from conftest import CountBackward
from torchmoo.autograd import jacobian
from torchmoo.methods import (
    MGDA,
    CAGrad,
    ImprovementFunction,
    LinearScalarization,
    PCGrad,
    cagrad_weights,
    min_norm_correction,
    pareto_stationarity,
)

scipy_optimize = pytest.importorskip("scipy.optimize")

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems: one intra-op thread


def _random_jacobians(seed: int, count: int = 30, dtype=F64):
    """Random (m, n) Jacobians with m in 2..8, n in 2..12, scales 1e-3..1e3, and degenerate kinds."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(count):
        m = int(torch.randint(2, 9, (1,), generator=gen))
        n = int(torch.randint(2, 13, (1,), generator=gen))
        J = torch.randn(m, n, generator=gen, dtype=F64) * 10.0 ** float(torch.randint(-3, 4, (1,), generator=gen))
        kind = k % 5
        if kind == 1:  # 0 in the hull: a pair of opposite rows
            J[1] = -J[0] * 0.5
        elif kind == 2:  # all rows collinear
            J = J[:, :1] * torch.randn(1, n, generator=gen, dtype=F64)
        elif kind == 3:  # more objectives than dimensions
            J = torch.randn(m, 1 + m // 3, generator=gen, dtype=F64)
        out.append(J.to(dtype))
    return out


def _slsqp(fun, x0, constraints, bounds=None):
    res = scipy_optimize.minimize(fun, x0, method="SLSQP", constraints=constraints, bounds=bounds,
                                  options={"ftol": 1e-15, "maxiter": 2000})
    return res.x


# --------------------------------------------------------------------------------------------------
# MGDA, g(theta), correction vector
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_mgda_common_descent(dtype):
    """<g_i, d> >= ||d||^2 for every i (Lemma 1 of the MT-SGD supplement), weights on the simplex."""
    tol = 1e-10 if dtype == F64 else 2e-4
    for J in _random_jacobians(0, dtype=dtype):
        agg = MGDA()
        d = agg(J)
        w = agg.weights
        assert d.shape == (J.shape[1],) and w.shape == (J.shape[0],) and d.dtype == dtype
        assert float(w.min()) >= 0 and abs(float(w.sum()) - 1) < tol
        Jd, dd = (J.double() @ d.double()), float(d.double() @ d.double())
        scale = float(J.double().pow(2).sum(1).max())
        assert float((Jd - dd).min()) >= -tol * scale, (Jd - dd).min()
        # d = w @ J, summed in float64 (tm.ops.combine), so compared with the float64 product
        atol = (1e-14 if dtype == F64 else 1e-6) * float(J.abs().max())
        torch.testing.assert_close(d.double(), w.double() @ J.double(), rtol=0, atol=atol)


def test_mgda_two_objectives_closed_form():
    """m = 2: w_1 = clip(<g_2 - g_1, g_2> / ||g_1 - g_2||^2, 0, 1) (Sener & Koltun, Algorithm 2)."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        J = torch.randn(2, 5, generator=gen, dtype=F64) * torch.rand(2, 1, generator=gen, dtype=F64) * 3
        g1, g2 = J
        w1 = float(((g2 - g1) @ g2) / (g1 - g2).pow(2).sum()).__float__()
        w1 = min(max(w1, 0.0), 1.0)
        agg = MGDA()
        agg(J)
        torch.testing.assert_close(agg.weights, torch.tensor([w1, 1 - w1], dtype=F64), rtol=0, atol=1e-12)


def test_mgda_zero_at_pareto_stationary_points():
    """d = 0 where 0 is in the convex hull of the gradients (built by construction)."""
    v1 = torch.tensor([1.0, 0.0, 2.0, -1.0], dtype=F64)
    v2 = torch.tensor([0.0, 2.0, -2.0, 0.5], dtype=F64)
    J = torch.stack([v1, v2, -(v1 + v2) / 2, v1 + 3 * v2])  # (1/4) v1 + (1/4) v2 + (1/2) v3 = 0
    agg = MGDA()
    d = agg(J)
    assert float(d.abs().max()) <= 1e-14
    assert pareto_stationarity(J) <= 1e-28
    # a zero gradient: that objective is stationary, so is the point
    gen = torch.Generator().manual_seed(12)
    J0 = torch.cat([torch.randn(3, 4, generator=gen, dtype=F64), torch.zeros(1, 4, dtype=F64)])
    agg = MGDA()
    assert float(agg(J0).abs().max()) <= 1e-15 * float(J0.abs().max())
    assert float(agg.weights[3]) >= 1 - 1e-12  # all the weight on the zero gradient
    # away from stationarity g(theta) = ||d||^2 > 0 and is the minimum over the simplex
    J = torch.randn(3, 6, generator=gen, dtype=F64)
    g = pareto_stationarity(J)
    d = MGDA()(J)
    assert g > 0 and math.isclose(g, float(d @ d), rel_tol=1e-12)
    W = -torch.rand(2000, 3, generator=gen, dtype=F64).log()  # Dirichlet(1, 1, 1): normalized exponentials
    W = W / W.sum(1, keepdim=True)
    assert float((W @ J).pow(2).sum(1).min()) >= g * (1 - 1e-12)


def test_mgda_normalizations():
    """Weights are those of the normalized gradients, applied to the original ones (Sener & Koltun)."""
    gen = torch.Generator().manual_seed(2)
    J = torch.randn(3, 7, generator=gen, dtype=F64)
    losses = torch.tensor([0.5, 2.0, 1.5], dtype=F64)
    norms = J.norm(dim=1)
    for norm, s in [("l2", norms), ("loss", losses), ("loss+", losses * norms)]:
        agg = MGDA(normalization=norm)
        d = agg(J, losses)
        ref = MGDA()
        ref(J / s[:, None])
        torch.testing.assert_close(agg.weights, ref.weights, rtol=0, atol=1e-12)
        torch.testing.assert_close(d, agg.weights @ J)
    # l2: invariant to positive rescaling of each gradient
    agg = MGDA("l2")
    agg(J)
    w = agg.weights
    agg(J * torch.tensor([[10.0], [0.1], [3.0]], dtype=F64))
    torch.testing.assert_close(agg.weights, w, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="needs the loss values"):
        MGDA("loss")(J)
    with pytest.raises(ValueError, match="positive"):
        MGDA("loss")(J, torch.tensor([1.0, -1.0, 2.0], dtype=F64))
    with pytest.raises(ValueError, match="normalization"):
        MGDA("max")


def test_min_norm_correction_solves_problem_5():
    """Ma et al. Problem 5 solved by scipy over (alpha, c) agrees with Proposition 4.1's closed form."""
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        m, n = 3, 4
        J = torch.randn(m, n, generator=gen, dtype=F64)
        alpha, c = min_norm_correction(J)
        # the constraint: sum_i alpha_i (g_i - c) = 0, alpha on the simplex
        torch.testing.assert_close(alpha @ (J - c), torch.zeros(n, dtype=F64), rtol=0, atol=1e-13)
        assert math.isclose(float(c @ c), pareto_stationarity(J), rel_tol=1e-12)
        Jn = J.numpy()
        cons = [
            {"type": "eq", "fun": lambda x: x[:m].sum() - 1},
            {"type": "eq", "fun": lambda x: (x[:m, None] * (Jn - x[m:])).sum(0)},
        ]
        x0 = np.concatenate([np.full(m, 1 / m), Jn.mean(0)])
        x = _slsqp(lambda x: float(x[m:] @ x[m:]), x0, cons, bounds=[(0, 1)] * m + [(None, None)] * n)
        assert float(c @ c) <= float(x[m:] @ x[m:]) + 1e-9
        np.testing.assert_allclose(c.numpy(), x[m:], atol=1e-5)


# --------------------------------------------------------------------------------------------------
# PCGrad
# --------------------------------------------------------------------------------------------------


def _pcgrad_vectors(J: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """PCGrad (Yu et al., Algorithm 1) literally, on the gradient vectors, with given orders."""
    out = []
    for i in range(J.shape[0]):
        g = J[i].clone()
        for j in orders[i].tolist():
            dot = g @ J[j]
            if dot < 0:
                g = g - dot / (J[j] @ J[j]) * J[j]
        out.append(g)
    return torch.stack(out)


def test_pcgrad_matches_the_algorithm_and_removes_conflicts():
    for J in _random_jacobians(4, count=20):
        agg = PCGrad(seed=0)
        d = agg(J)
        m = J.shape[0]
        for i in range(m):  # each row projects onto every other objective once, never onto itself
            assert sorted(agg.orders[i].tolist()) == [j for j in range(m) if j != i]
        projected = _pcgrad_vectors(J, agg.orders)
        scale = float(J.norm(dim=1).max()) ** 2
        torch.testing.assert_close(agg.projected @ J, projected, rtol=1e-9, atol=1e-10 * scale**0.5)
        torch.testing.assert_close(d, projected.sum(0), rtol=1e-9, atol=1e-10 * scale**0.5)
        # after its last projection, g_i^PC has no component against that objective's gradient
        for i in range(m):
            j = int(agg.orders[i, -1])
            assert float(projected[i] @ J[j]) >= -1e-10 * scale
    # two objectives: no conflict left at all after projection, in both directions
    J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=F64)
    agg = PCGrad()
    d = agg(J)
    P = agg.projected @ J
    assert float(P[0] @ J[1]) >= -1e-15 and float(P[1] @ J[0]) >= -1e-15
    torch.testing.assert_close(d, torch.tensor([0.5, 1.5], dtype=F64))


def test_pcgrad_without_conflict_is_the_sum_and_is_deterministic():
    J = torch.tensor([[1.0, 0.2, 0.0], [0.5, 1.0, 0.1], [0.3, 0.0, 2.0]], dtype=F64)
    torch.testing.assert_close(PCGrad()(J), J.sum(0))
    torch.testing.assert_close(PCGrad(reduction="mean")(J), J.mean(0))
    J = torch.randn(6, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    assert torch.equal(PCGrad(seed=7)(J), PCGrad(seed=7)(J))
    torch.manual_seed(3)
    a = PCGrad()(J)
    torch.manual_seed(3)
    assert torch.equal(PCGrad()(J), a)
    with pytest.raises(ValueError, match="reduction"):
        PCGrad(reduction="max")


# --------------------------------------------------------------------------------------------------
# CAGrad
# --------------------------------------------------------------------------------------------------


def _cagrad_primal_scipy(J: torch.Tensor, c: float) -> float:
    """max_{||d - g0|| <= c ||g0||} min_i <g_i, d>, by SLSQP in epigraph form over (d, s)."""
    Jn = J.numpy()
    m, n = Jn.shape
    g0 = Jn.mean(0)
    r = c * np.linalg.norm(g0)
    cons = [
        {"type": "ineq", "fun": lambda x: Jn @ x[:n] - x[n], "jac": lambda x: np.hstack([Jn, -np.ones((m, 1))])},
        {"type": "ineq", "fun": lambda x: r * r - np.sum((x[:n] - g0) ** 2),
         "jac": lambda x: np.concatenate([-2 * (x[:n] - g0), [0.0]])},
    ]
    x0 = np.concatenate([g0, [float((Jn @ g0).min())]])
    best = -np.inf
    for start in (x0, np.concatenate([g0 + r * Jn[0] / max(np.linalg.norm(Jn[0]), 1e-300), [x0[-1] - abs(x0[-1])]])):
        x = _slsqp(lambda x: -x[n], start, cons)
        if r * r - np.sum((x[:n] - g0) ** 2) >= -1e-9 * max(r * r, 1e-300):
            best = max(best, float((Jn @ x[:n]).min()))
    return best


def test_cagrad_maximizes_the_worst_improvement_in_its_ball():
    gen = torch.Generator().manual_seed(6)
    for J in _random_jacobians(6, count=25):
        J = J / J.norm(dim=1).max()  # SLSQP tolerances are absolute
        c = float(torch.rand(1, generator=gen, dtype=F64)) * 0.98
        d = CAGrad(c=c, rescale=0)(J)
        g0 = J.mean(0)
        r = c * float(g0.norm())
        assert float((d - g0).norm()) <= r * (1 + 1e-9) + 1e-15  # feasible
        ours = float((J @ d).min())
        ref = _cagrad_primal_scipy(J, c)
        assert ours >= ref - 1e-7, (ours, ref)
        # the dual certificate: F(w) = w'G b + r ||J'w|| >= our primal value for every w on the simplex,
        # so no direction in the ball does better than ours
        W = -torch.rand(3000, J.shape[0], generator=gen, dtype=F64).log()  # Dirichlet(1, ..., 1) samples
        W = W / W.sum(1, keepdim=True)
        F = W @ (J @ g0) + r * (W @ J).norm(dim=1)
        assert float(F.min()) >= ours - 1e-9


def test_cagrad_with_opposite_gradients():
    """Two conflicting gradients, opposite up to 1e-9 (g_2 = -s g_1 + e: 0 in the hull to working
    precision, G singular below the QP kernels' pivot tolerance) are the case CAGrad is made for: no
    error, a direction inside the ball, and the primal optimum (SLSQP); float32 Jacobians (a Gram
    matrix rounded to float32, slightly indefinite) give the float64 answer to float32 accuracy."""
    gen = torch.Generator().manual_seed(30)
    for _ in range(30):
        m, n = int(torch.randint(3, 9, (1,), generator=gen)), int(torch.randint(2, 12, (1,), generator=gen))
        J = torch.randn(m, n, generator=gen, dtype=F64)
        J[1] = -J[0] * float(torch.rand(1, generator=gen, dtype=F64)) + 1e-9 * torch.randn(n, generator=gen, dtype=F64)
        J = J / J.norm(dim=1).max()
        c = 0.05 + 0.9 * float(torch.rand(1, generator=gen, dtype=F64))
        g0 = J.mean(0)
        r = c * float(g0.norm())
        d = CAGrad(c=c, rescale=0)(J)
        assert float((d - g0).norm()) <= r * (1 + 1e-9) + 1e-15
        assert float((J @ d).min()) >= _cagrad_primal_scipy(J, c) - 1e-7
        J32 = J.float()
        d32 = CAGrad(c=c, rescale=0)(J32).double()
        g0 = J32.double().mean(0)
        assert float((d32 - g0).norm()) <= c * float(g0.norm()) + 1e-6
        assert float((J32.double() @ d32).min()) >= float((J @ d).min()) - 1e-5
    # a short opposite gradient and a small ball: the root lies below the resolution of a float32 G and
    # the projection of g0 onto {d : J d >= 0} outside the ball; d stays on the sphere
    for _ in range(10):
        m, n = int(torch.randint(3, 9, (1,), generator=gen)), int(torch.randint(2, 12, (1,), generator=gen))
        J32 = torch.randn(m, n, generator=gen)
        J32[1] = -J32[0] * 0.003
        c = 0.02 + 0.1 * float(torch.rand(1, generator=gen))
        J, d32 = J32.double(), CAGrad(c=c, rescale=0)(J32).double()
        g0 = J.mean(0)
        assert float((d32 - g0).norm()) <= c * float(g0.norm()) + 1e-6 * float(J.norm(dim=1).max())
        d = CAGrad(c=c, rescale=0)(J)
        assert float((J @ d32).min()) >= float((J @ d).min()) - 1e-6 * float(J.norm(dim=1).max()) ** 2


def test_cagrad_duality_gap_is_zero():
    """With w* recovered from the weights, F(w*) equals the worst improvement of d (strong duality)."""
    gen = torch.Generator().manual_seed(7)
    for _ in range(20):
        J = torch.randn(4, 6, generator=gen, dtype=F64)
        c = 0.1 + 0.8 * float(torch.rand(1, generator=gen, dtype=F64))
        G = J @ J.T
        u = cagrad_weights(G, c)
        b = torch.full((4,), 0.25, dtype=F64)
        w = (u - b) / (u - b).sum()
        r = c * float(J.mean(0).norm())
        assert float(w.min()) >= -1e-15
        F = float(w @ (J @ J.mean(0)) + r * (w @ J).norm())
        primal = float((J @ (u @ J)).min())
        assert math.isclose(F, primal, rel_tol=1e-10, abs_tol=1e-12)


def test_cagrad_special_cases_and_rescaling():
    J = torch.randn(3, 5, generator=torch.Generator().manual_seed(8), dtype=F64)
    torch.testing.assert_close(CAGrad(c=0.0)(J), J.mean(0))  # radius 0: the mean gradient
    d0 = CAGrad(c=0.4, rescale=0)(J)
    torch.testing.assert_close(CAGrad(c=0.4, rescale=1)(J), d0 / 1.16)
    torch.testing.assert_close(CAGrad(c=0.4, rescale=2)(J), d0 / 1.4)
    assert torch.equal(CAGrad()(torch.zeros(3, 5, dtype=F64)), torch.zeros(5, dtype=F64))
    for bad in (-0.1, 1.0, float("nan"), "0.5", True):  # a string or bool is not a radius
        with pytest.raises(ValueError, match="0 <= c < 1"):
            CAGrad(c=bad)
    assert CAGrad(c=np.float32(0.25)).c == 0.25
    with pytest.raises(ValueError, match="rescale"):
        CAGrad(rescale=3)


# --------------------------------------------------------------------------------------------------
# Improvement function, linear scalarization
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.5, 1.0, 4.0])
def test_improvement_function_solves_simol_eq2(lam):
    """-d = argmin_d max_i <g_i, d> + lam/2 ||d||^2 (SIMOL Eq. 2 with the first-order model, Eq. 10)."""
    for J in _random_jacobians(9, count=10):
        J = J / J.norm(dim=1).max()
        agg = ImprovementFunction(lam=lam)
        step = -agg(J)
        Jn = J.numpy()
        m, n = Jn.shape
        cons = [{"type": "ineq", "fun": lambda x: x[n] - Jn @ x[:n],
                 "jac": lambda x: np.hstack([-Jn, np.ones((m, 1))])}]
        x = _slsqp(lambda x: x[n] + lam / 2 * x[:n] @ x[:n], np.zeros(n + 1), cons)
        obj = lambda d: float((J @ d).max() + lam / 2 * d @ d)  # noqa: E731
        assert obj(step) <= obj(torch.from_numpy(x[:n])) + 1e-10
        np.testing.assert_allclose(step.numpy(), x[:n], atol=1e-5)
        torch.testing.assert_close(agg.weights * lam, MGDA().compute_weights(J), rtol=0, atol=1e-14)


def test_linear_scalarization():
    J = torch.randn(3, 4, generator=torch.Generator().manual_seed(13), dtype=F64)
    agg = LinearScalarization([1.0, -2.0, 0.5])
    torch.testing.assert_close(agg(J), J[0] - 2.0 * J[1] + 0.5 * J[2], rtol=1e-15, atol=1e-15)
    assert agg.weights.tolist() == [1.0, -2.0, 0.5]
    with pytest.raises(ValueError, match="3 weights but there are 2"):
        agg(J[:2])
    with pytest.raises(ValueError, match="finite"):
        LinearScalarization([1.0, float("nan")])


def test_aggregator_input_errors():
    with pytest.raises(ValueError, match=r"\(m, n\)"):
        MGDA()(torch.zeros(3))
    with pytest.raises(TypeError, match="floating"):
        MGDA()(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="one value per row"):
        MGDA("loss")(torch.randn(2, 3), torch.ones(3))


# --------------------------------------------------------------------------------------------------
# torchmoo.backward
# --------------------------------------------------------------------------------------------------


class MultiHead(torch.nn.Module):
    def __init__(self, m: int = 2, d_in: int = 3, hidden: int = 8, act: torch.nn.Module = None) -> None:
        super().__init__()
        self.trunk = torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.Tanh() if act is None else act)
        self.heads = torch.nn.ModuleList([torch.nn.Linear(hidden, 1) for _ in range(m)])

    def forward(self, x):
        z = self.trunk(x)
        return z, [h(z).squeeze(1) for h in self.heads]


def _data(m: int = 2, seed: int = 0, n: int = 64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen, dtype=F64)
    ys = [torch.sin(x @ torch.randn(3, generator=gen, dtype=F64)) for _ in range(m)]
    return x, ys


def _task_losses(model, x, ys):
    z, outs = model(x)
    return z, [((o - y) ** 2).mean() for o, y in zip(outs, ys)]


def test_backward_linear_scalarization_is_the_gradient_of_the_sum():
    torch.manual_seed(0)
    model = MultiHead(3).to(F64)
    x, ys = _data(3)
    _, losses = _task_losses(model, x, ys)
    sum(losses).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    _, losses = _task_losses(model, x, ys)
    w = tm.backward(losses, model.parameters(), LinearScalarization([1.0, 1.0, 1.0]))
    assert torch.equal(w, torch.ones(3, dtype=F64))
    for p, e in zip(model.parameters(), expected):
        assert torch.equal(p.grad, e)


def test_backward_writes_direction_and_head_gradients():
    torch.manual_seed(1)
    model = MultiHead(2).to(F64)
    x, ys = _data(2, seed=1)
    _, losses = _task_losses(model, x, ys)
    shared = list(model.trunk.parameters())
    J = jacobian(losses, shared, retain_graph=True)
    head_grads = [torch.autograd.grad(losses[i], list(model.heads[i].parameters()), retain_graph=True)
                  for i in range(2)]
    agg = MGDA()
    d = agg(J)
    w = tm.backward(losses, model.trunk, MGDA(), task_params=[model.heads[0], model.heads[1]])
    torch.testing.assert_close(w, agg.weights)
    torch.testing.assert_close(tm.autograd.flatten([p.grad for p in shared]), d)
    for i in range(2):
        for p, g in zip(model.heads[i].parameters(), head_grads[i]):
            torch.testing.assert_close(p.grad, g)  # the own task's gradient, unweighted
    # .grad accumulates like Tensor.backward
    _, losses = _task_losses(model, x, ys)
    tm.backward(losses, model.trunk, MGDA(), task_params=[model.heads[0], model.heads[1]])
    torch.testing.assert_close(tm.autograd.flatten([p.grad for p in shared]), 2 * d)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):  # freed by the last pass
        sum(losses).backward()
    with pytest.raises(ValueError, match="belong to one group"):
        tm.backward(_task_losses(model, x, ys)[1], model.parameters(), MGDA(), task_params=[model.heads[0], None])
    with pytest.raises(ValueError, match="2 entries but there are 3"):
        tm.backward(_task_losses(model, x, ys)[1] + [torch.tensor(1.0, dtype=F64, requires_grad=True)],
                    model.trunk, MGDA(), task_params=[model.heads[0], None])


class _JacobianMGDA(tm.methods.Aggregator):
    """An aggregator that needs J itself (not only J J^T): tm.backward must assemble J for it."""

    def compute_weights(self, J, losses=None):
        return MGDA().compute_weights(J)


def test_backward_gram_path_equals_jacobian_path():
    torch.manual_seed(6)
    model = MultiHead(3).to(F64)
    x, ys = _data(3, seed=6)
    grads = []
    for agg in (MGDA(), _JacobianMGDA()):
        assert agg.gram_based == isinstance(agg, MGDA)
        model.zero_grad()
        _, losses = _task_losses(model, x, ys)
        tm.backward(losses, model.trunk, agg, batched=False)
        grads.append(tm.autograd.flatten([p.grad for p in model.trunk.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-14)
    # a non-finite Jacobian without a GradScaler is an error, not a silent NaN step
    for agg in (MGDA(), _JacobianMGDA()):
        _, losses = _task_losses(model, x, ys)
        with pytest.raises(ValueError, match="inf or NaN"):
            tm.backward([losses[0] * float("inf"), losses[1], losses[2]], model.trunk, agg)


def test_backward_float32_rank_deficient_jacobian():
    """float32 parameters, collinear task gradients (tasks equal up to scale: J = k v', rank 1): the Gram
    matrix goes to the aggregator in float32, the dtype it was rounded in, not cast to float64, where
    its rounding looks like an indefinite G to the QP kernels. The step is the aggregator's on J."""
    for seed in (7, 24, 32):
        gen = torch.Generator().manual_seed(seed)
        k, v = torch.randn(4, 1, generator=gen), torch.randn(1, 40, generator=gen)
        J = k * v
        tol = 1e-5 * float(J.norm(dim=1).max())
        for make in (MGDA, ImprovementFunction, lambda: CAGrad(0.5)):
            p = torch.zeros(40, requires_grad=True)
            w = tm.backward(list(J @ p + 1.0), [p], make())
            assert w.dtype == torch.float32
            torch.testing.assert_close(p.grad, make()(J), rtol=0, atol=tol)  # the aggregator on J itself
        # MGDA's min-norm point of the rows k_i v: 0 if the k_i differ in sign, else the shortest row
        expected = torch.zeros(40) if bool((k * k[0] < 0).any()) else J[k.abs().argmin()]
        p = torch.zeros(40, requires_grad=True)
        tm.backward(list(J @ p + 1.0), [p], MGDA())
        torch.testing.assert_close(p.grad, expected, rtol=0, atol=tol)


def test_backward_representation_mgda_ub():
    """MGDA-UB: weights from the Jacobian w.r.t. z, then the gradient of w @ losses for the trunk."""
    torch.manual_seed(2)
    model = MultiHead(3).to(F64)
    x, ys = _data(3, seed=2)
    z, losses = _task_losses(model, x, ys)
    Jz = jacobian(losses, [z], retain_graph=True)
    agg = MGDA()
    agg(Jz)
    expected = torch.autograd.grad(sum(wi * li for wi, li in zip(agg.weights, losses)), list(model.trunk.parameters()),
                                   retain_graph=True)
    w = tm.backward(losses, model.trunk, MGDA(), representation=z, task_params=list(model.heads))
    torch.testing.assert_close(w, agg.weights)
    for p, e in zip(model.trunk.parameters(), expected):
        torch.testing.assert_close(p.grad, e)


def test_backward_with_grad_scaler():
    """AMP: unscaled losses + scaler give the same step as without; an overflow skips the step."""
    torch.manual_seed(3)
    model = MultiHead(2)
    x, ys = _data(2, seed=3)
    x, ys = x.float(), [y.float() for y in ys]
    for agg in (MGDA("l2"), CAGrad(0.5)):  # (both have scale-invariant weights: tests/test_training.py has scale-dependent ones)
        model.zero_grad()
        _, losses = _task_losses(model, x, ys)
        tm.backward(losses, model.trunk, agg, task_params=list(model.heads))
        expected = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        _, losses = _task_losses(model, x, ys)
        tm.backward(losses, model.trunk, agg, task_params=list(model.heads), grad_scaler=scaler)
        scaler.unscale_(opt)
        for p, e in zip(model.parameters(), expected):
            torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-6)
    # overflow: the scaled Jacobian is infinite, the step is skipped and the scale lowered
    model, x, ys, opt, scaler, before = _amp_overflow_setup(3)
    _, losses = _task_losses(model, x, ys)
    losses = [losses[0] * 1e36, losses[1]]  # float32: 1e36 * 2^10 overflows in the backward pass
    _assert_amp_step_skipped(model, losses, opt, scaler, before)


def _amp_overflow_setup(seed: int):
    """A float32 two-task model, its data, an SGD optimizer, a GradScaler at 2^10 and the parameters before."""
    torch.manual_seed(seed)
    model = MultiHead(2)
    x, ys = _data(2, seed=seed)
    x, ys = x.float(), [y.float() for y in ys]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    return model, x, ys, opt, scaler, [p.detach().clone() for p in model.parameters()]


def _assert_amp_step_skipped(model, losses, opt, scaler, before, **kwargs) -> None:
    """tm.backward under a GradScaler with an overflowing Jacobian: NaN weights (returned and in
    agg.weights, not those of an earlier step), the step skipped (no parameter moves) and the scale
    lowered."""
    agg = MGDA()
    agg.weights = torch.tensor([0.5, 0.5])  # as left by an earlier step
    w = tm.backward(losses, model.trunk, agg, task_params=list(model.heads), grad_scaler=scaler, **kwargs)
    assert bool(torch.isnan(w).all()) and bool(torch.isnan(agg.weights).all())
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert scaler.get_scale() < 2.0**10


def test_training_two_heads_with_mgda_reaches_pareto_stationarity():
    """Full-batch MGDA on two conflicting regressions through a one-unit bottleneck drives g(theta) to ~0.

    The trunk (3 -> 1, linear) cannot serve both linear targets: the losses end at a genuine trade-off
    (both positive, weights inside the simplex), and g(theta) over all parameters vanishes.
    """
    torch.manual_seed(5)
    model = MultiHead(2, hidden=1, act=torch.nn.Identity()).to(F64)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(32, 3, generator=gen, dtype=F64)
    ys = [x @ torch.randn(3, generator=gen, dtype=F64) for _ in range(2)]
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    agg = MGDA()

    def g_theta() -> float:
        _, losses = _task_losses(model, x, ys)
        return pareto_stationarity(jacobian(losses, model.parameters()))

    g0 = g_theta()
    for _ in range(200):
        opt.zero_grad()
        _, losses = _task_losses(model, x, ys)
        tm.backward(losses, model.trunk, agg, task_params=list(model.heads))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)  # works after tm.backward
        opt.step()
    g = g_theta()
    assert g < 1e-20 * g0, (g0, g)
    assert 0.05 < float(agg.weights[0]) < 0.95
    assert all(float(l.detach()) > 0.1 for l in _task_losses(model, x, ys)[1])


def test_backward_half_precision_parameters():
    """float16 shared parameters: the Gram matrix is formed in float32 (a float16 one overflows as soon
    as ||g||^2 > 65504), and the weights are MGDA's for the float16 Jacobian."""
    torch.manual_seed(7)
    model = MultiHead(2).half()
    x, ys = _data(2, seed=7)
    x, ys = x.half(), [y.half() for y in ys]
    _, losses = _task_losses(model, x, ys)
    losses = [losses[0] * 1500, losses[1] * 800]  # trunk gradients of norm well above 256
    J = jacobian(losses, model.trunk.parameters(), retain_graph=True)
    assert J.dtype == torch.float16 and float(J.double().norm(dim=1).min()) > 256
    w_ref = tm.ops.min_norm_simplex(J.double() @ J.double().T)
    w = tm.backward(losses, model.trunk, MGDA(), task_params=list(model.heads))
    assert w.dtype == torch.float16 and all(p.grad.dtype == torch.float16 for p in model.parameters())
    torch.testing.assert_close(w.double(), w_ref, rtol=0, atol=2e-3)
    d = tm.autograd.flatten([p.grad for p in model.trunk.parameters()]).double()
    torch.testing.assert_close(d, w_ref @ J.double(), rtol=4e-3, atol=4e-3 * float(J.double().abs().max()))
    # the aggregator itself, on a float16 Jacobian
    agg = MGDA()
    agg(J)
    torch.testing.assert_close(agg.weights.double(), w_ref, rtol=0, atol=2e-3)


def test_backward_representation_half_with_grad_scaler():
    """MGDA-UB under AMP with a float16 representation: the Jacobian w.r.t. z is unscaled in float32,
    not in float16, where its small entries would flush to zero (and the weights become uniform)."""
    torch.manual_seed(8)
    model = MultiHead(3)
    x, ys = _data(3, seed=8)
    x, ys = x.float(), [y.float() for y in ys]
    heads = [h.half() for h in model.heads]
    z = model.trunk(x).half()
    # tiny losses (as in float16 training before scaling): dL/dz ~ 1e-9, below float16's subnormals
    losses = [c * ((h(z).float().squeeze(1) - y) ** 2).mean() for c, h, y in zip((1e-7, 4e-7, 2e-6), heads, ys)]
    scale = 2.0**16
    Jz = jacobian([loss * scale for loss in losses], [z], retain_graph=True)  # scaled: representable in float16
    assert Jz.dtype == torch.float16 and bool((Jz != 0).any())
    assert float(((Jz / scale) == 0).double().mean()) > 0.9  # what unscaling in float16 would give
    ref = MGDA()
    ref(Jz.double())  # MGDA's weights do not change when J is scaled
    assert float((ref.weights - 1 / 3).abs().max()) > 0.1  # far from uniform
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    w = tm.backward(losses, model.trunk, MGDA(), representation=z, task_params=heads, grad_scaler=scaler)
    torch.testing.assert_close(w.double(), ref.weights, rtol=0, atol=1e-3)


def test_backward_unreached_parameters_keep_grad_none():
    """A shared parameter that no loss reaches gets no .grad, on the Gram path and on the J path alike
    (an optimizer skips a None gradient but would apply weight decay and momentum to a zero one)."""
    torch.manual_seed(9)
    model = MultiHead(2).to(F64)
    x, ys = _data(2, seed=9)
    extra = torch.nn.Parameter(torch.randn(4, dtype=F64))
    for agg in (MGDA(), _JacobianMGDA()):
        model.zero_grad()
        _, losses = _task_losses(model, x, ys)
        tm.backward(losses, list(model.trunk.parameters()) + [extra], agg)
        assert extra.grad is None
        assert all(p.grad is not None for p in model.trunk.parameters())


def test_backward_sparse_embedding_gradient():
    """A shared nn.Embedding(sparse=True) (a sparse Jacobian block): the same step as with a dense
    embedding, written as a sparse .grad as loss.backward() writes it, on the Gram path, the
    assembled-J path and the fixed-weight path; a sparse task head too."""
    x = torch.tensor([1, 2, 3, 2, 7])
    for make in (MGDA, _JacobianMGDA, lambda: CAGrad(0.4), lambda: LinearScalarization([0.3, 0.7])):
        grads = []
        for sparse in (True, False):
            torch.manual_seed(15)
            emb = torch.nn.Embedding(10, 3, sparse=sparse).to(F64)
            lin = torch.nn.Linear(3, 4).to(F64)
            heads = [torch.nn.Embedding(10, 4, sparse=sparse).to(F64), torch.nn.Linear(4, 1).to(F64)]
            z = torch.tanh(lin(emb(x)))
            losses = [(z * heads[0](x)).sum(1).pow(2).mean(), (heads[1](z) - 1).pow(2).mean()]
            w = tm.backward(losses, [emb.weight, lin.weight, lin.bias], make(), task_params=heads, batched=False)
            assert (emb.weight.grad.layout == torch.sparse_coo) == sparse
            assert (heads[0].weight.grad.layout == torch.sparse_coo) == sparse
            grads.append([w, emb.weight.grad.to_dense(), lin.weight.grad, heads[0].weight.grad.to_dense()])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_backward_module_inputs_frozen_parameters_and_parameter_lists():
    """A module gives its trainable parameters (frozen ones are left alone, as by loss.backward());
    task_params may be an nn.ParameterList; an explicit frozen tensor is still an error."""
    torch.manual_seed(10)
    trunk = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)).to(F64)
    trunk[0].requires_grad_(False)  # e.g. a frozen pretrained layer
    scales = torch.nn.ParameterList([torch.nn.Parameter(torch.tensor(1.0 + i, dtype=F64)) for i in range(2)])
    x, ys = _data(2, seed=10)

    def losses_fn():
        z = trunk(x)
        return [((s * z.sum(1) - y) ** 2).mean() for s, y in zip(scales, ys)]

    trainable = [p for p in trunk.parameters() if p.requires_grad]
    losses = losses_fn()
    J = jacobian(losses, trainable, retain_graph=True)
    s_grads = [torch.autograd.grad(losses[i], [scales[i]], retain_graph=True)[0] for i in range(2)]
    agg = MGDA()
    d = agg(J)
    tm.backward(losses, trunk, MGDA(), task_params=scales)
    assert trunk[0].weight.grad is None and trunk[0].bias.grad is None
    torch.testing.assert_close(tm.autograd.flatten([p.grad for p in trainable]), d)
    for s, g in zip(scales, s_grads):
        torch.testing.assert_close(s.grad, g)
    with pytest.raises(ValueError, match="does not require grad"):
        tm.backward(losses_fn(), [trunk[0].weight, trunk[2].weight], MGDA())


def test_backward_input_errors():
    """Non-scalar or empty losses and shared parameters on several devices: clear errors, raised
    before any backward pass (the graph is still usable afterwards)."""
    torch.manual_seed(11)
    model = MultiHead(2).to(F64)
    x, ys = _data(2, seed=11)
    z, losses = _task_losses(model, x, ys)
    with pytest.raises(ValueError, match=r"losses\[1\] must be a scalar, got shape \(64,\)"):
        tm.backward([losses[0], (z.sum(1) - ys[1]) ** 2], model.trunk, MGDA())
    with pytest.raises(ValueError, match="1-D tensor"):
        tm.backward(torch.stack(losses).reshape(2, 1), model.trunk, MGDA())
    with pytest.raises(ValueError, match="empty"):
        tm.backward(torch.stack(losses)[:0], model.trunk, MGDA())
    elsewhere = torch.nn.Parameter(torch.zeros(3, dtype=F64, device="meta"))
    with pytest.raises(ValueError, match="several devices"):
        tm.backward(losses, list(model.trunk.parameters()) + [elsewhere], MGDA())
    sum(losses).backward()  # nothing was freed


def test_backward_gram_overflow_under_grad_scaler_skips_the_step():
    """A finite scaled Jacobian whose Gram matrix overflows float32 (a scale grown large) is an
    overflow like an infinite one: the step is skipped and the scale lowered, not an exception."""
    model, x, ys, opt, scaler, before = _amp_overflow_setup(12)
    _, losses = _task_losses(model, x, ys)
    losses = [losses[0] * 1e18, losses[1]]
    blocks = tm.autograd.jacobian_blocks([loss * 2.0**10 for loss in losses], model.trunk, retain_graph=True)
    assert all(bool(torch.isfinite(b).all()) for b in blocks)  # finite, but ||g||^2 > 3.4e38
    _assert_amp_step_skipped(model, losses, opt, scaler, before)


def test_backward_representation_overflow_under_grad_scaler_skips_the_step():
    """MGDA-UB under AMP: an infinite Jacobian with respect to z skips the step like one with respect
    to the parameters (NaN weights, returned and in agg.weights)."""
    model, x, ys, opt, scaler, before = _amp_overflow_setup(14)
    z, losses = _task_losses(model, x, ys)
    _assert_amp_step_skipped(model, [losses[0] * 1e36, losses[1]], opt, scaler, before, representation=z)


def test_backward_retain_graph():
    """retain_graph=True keeps the graph through the Jacobian, head and representation passes."""
    torch.manual_seed(13)
    model = MultiHead(3).to(F64)
    x, ys = _data(3, seed=13)
    for use_z in (False, True):
        z, losses = _task_losses(model, x, ys)
        tm.backward(losses, model.trunk, MGDA(), task_params=list(model.heads), retain_graph=True,
                    representation=z if use_z else None)
        sum(losses).backward()  # still possible


def test_cagrad_weights_checks_c():
    G = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)
    for bad in (-0.1, float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(ValueError, match="c must be a finite number >= 0"):
            cagrad_weights(G, bad)
    torch.testing.assert_close(cagrad_weights(G, 0.0), torch.full((2,), 0.5, dtype=F64))  # c = 0: d = g0


@pytest.mark.parametrize("batched", [True, False])
def test_backward_overflowing_direction_raises_without_a_scaler(batched):
    """G and w finite, d = w @ J beyond float16 (w = 1000 on a gradient of entries 300): tm.backward raises
    as aggregator(J) does, before writing .grad (the blocks are combined without ops.combine's check and
    checked once); under a GradScaler the inf reaches .grad instead, and the scaler skips the step."""
    A = torch.tensor([[300.0] * 4 + [1.0] * 4, [150.0] * 4 + [0.5] * 4], dtype=torch.float16)
    with pytest.raises(ValueError, match="overflows"):
        ImprovementFunction(lam=1e-3)(A)
    p, q = (torch.zeros(4, dtype=torch.float16, requires_grad=True) for _ in range(2))
    L = A @ torch.cat([p, q])
    with pytest.raises(ValueError, match="overflows"):  # two blocks, or one (m, n) tensor with batched=False
        tm.backward([L[0], L[1]], [p, q], ImprovementFunction(lam=1e-3), batched=batched)
    assert p.grad is None and q.grad is None
    # float32 under a GradScaler: w = 1e30 on a gradient of 1e9 overflows float32 in d, not in G
    x = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([x], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    B = torch.tensor([[1e9, 2e9, 1.0], [5e8, 1e9, 0.5]])
    Lx = B @ x
    tm.backward([Lx[0], Lx[1]], [x], ImprovementFunction(lam=1e-30), grad_scaler=scaler, batched=batched)
    assert bool(torch.isinf(x.grad[:2]).all())
    scaler.step(opt)
    scaler.update()
    assert torch.equal(x.detach(), torch.zeros(3)) and scaler.get_scale() < 2.0


def test_backward_mixed_dtype_parameters_combine_with_unrounded_weights():
    """Shared parameters of two dtypes (a bfloat16 one first, then float32 ones): the float32 blocks get
    the aggregator's weights for the Jacobian (promoted to float32, as jacobian() concatenates it), not
    weights rounded to the first parameter's bfloat16 (relative error 4e-3); the weights are returned in
    that promoted dtype."""
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        p = torch.randn(4, generator=gen).bfloat16().requires_grad_()
        q = torch.randn(6, generator=gen).requires_grad_()
        A, B = torch.randn(3, 4, generator=gen), torch.randn(3, 6, generator=gen)
        for make in (MGDA, lambda: CAGrad(0.4)):
            p.grad = q.grad = None
            L = A @ p.float() + B @ q + (q * q).sum()
            J = jacobian(L, [p, q], retain_graph=True)
            assert J.dtype == torch.float32
            ref = make()
            d = ref(J)
            w = tm.backward(list(L), [p, q], make())
            assert w.dtype == torch.float32
            torch.testing.assert_close(w, ref.weights, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(q.grad, d[4:], rtol=1e-6, atol=1e-6 * float(J.abs().max()))
            assert p.grad.dtype == torch.bfloat16


class _JacobianImprovement(tm.methods.Aggregator):
    """ImprovementFunction's weights (pi* / lam, large for a small lam) computed from J itself."""

    def __init__(self, lam: float) -> None:
        super().__init__()
        self.lam = lam

    def compute_weights(self, J, losses=None):
        return ImprovementFunction(self.lam).compute_weights(J)


@pytest.mark.parametrize("batched", [True, False])
def test_backward_jacobian_path_raises_when_the_direction_overflows_half_parameters(batched):
    """On the assembled-J path a float16 Jacobian is combined in float32; a direction beyond float16
    (w = 1000 on entries of 300) is an error there too, as on the Gram path, before any .grad is written,
    instead of an inf written silently into .grad."""
    A = torch.tensor([[300.0] * 4 + [1.0] * 4, [150.0] * 4 + [0.5] * 4], dtype=torch.float16)
    p, q = (torch.zeros(4, dtype=torch.float16, requires_grad=True) for _ in range(2))
    L = A @ torch.cat([p, q])
    with pytest.raises(ValueError, match="overflows torch.float16"):
        tm.backward([L[0], L[1]], [p, q], _JacobianImprovement(1e-3), batched=batched)
    assert p.grad is None and q.grad is None
    # a direction that fits in float16 is written, the same as the Gram path's
    grads = []
    for agg in (_JacobianImprovement(0.5), ImprovementFunction(0.5)):
        p.grad = q.grad = None
        L = A @ torch.cat([p, q])
        tm.backward([L[0], L[1]], [p, q], agg, batched=batched)
        grads.append(torch.cat([p.grad, q.grad]).float())
    torch.testing.assert_close(grads[0], grads[1], rtol=2e-3, atol=0)


def test_aggregator_loss_values_keep_their_precision():
    """The loss values reach the weights in the precision of the Gram matrix: float32 for a float16 J
    (a loss of 1e5 or 1e-8 has no float16 value: EPO and the loss-normalized MGDA would reject it);
    Python floats are not rounded to float32 on the way to a float64 J; a list of losses that require
    grad is read without a warning."""
    import warnings

    from torchmoo.methods import EPO
    from torchmoo.methods.aggregator import check_losses

    J = torch.randn(2, 5, generator=torch.Generator().manual_seed(21)).half()
    for make, losses in ((lambda: EPO([1.0, 2.0]), [7e4, 1e5]), (lambda: MGDA("loss"), [1e-8, 3e-8])):
        agg, ref = make(), make()
        d = agg(J, torch.tensor(losses))
        ref(J.float(), torch.tensor(losses))
        assert d.dtype == torch.float16
        torch.testing.assert_close(agg.weights.float(), ref.weights, rtol=2e-3, atol=1e-3)
    J64 = J.double()
    assert torch.equal(check_losses([0.1, 0.3], 2, J64), torch.tensor([0.1, 0.3], dtype=F64))
    x = torch.randn(3, dtype=F64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = check_losses([x.pow(2).sum(), (x - 1).pow(2).sum()], 2, J64)
    assert not got.requires_grad
    torch.testing.assert_close(got, torch.stack([x.pow(2).sum(), (x - 1).pow(2).sum()]).detach(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="one value per row"):
        check_losses([1.0, 2.0, 3.0], 2, J64)


def test_backward_rejects_an_aggregator_class():
    x = torch.zeros(2, requires_grad=True)
    with pytest.raises(TypeError, match=r"pass MGDA\(...\), not the class"):
        tm.backward([x.sum(), x.pow(2).sum()], [x], MGDA)


def test_backward_under_no_grad():
    """tm.backward inside torch.no_grad() writes the same .grad as outside (as loss.backward() does),
    shared and task-specific, on the Jacobian, fixed-weight and representation paths."""
    torch.manual_seed(16)
    model = MultiHead(2).to(F64)
    x, ys = _data(2, seed=16)
    for agg, use_z in ((MGDA(), False), (LinearScalarization([0.3, 0.7]), False), (MGDA(), True)):
        grads = []
        for no_grad in (False, True):
            model.zero_grad()
            z, losses = _task_losses(model, x, ys)
            with torch.no_grad() if no_grad else torch.enable_grad():
                w = tm.backward(losses, model.trunk, agg, task_params=list(model.heads),
                                representation=z if use_z else None)
            grads.append([w] + [p.grad for p in model.parameters()])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("batched", [False, True])
def test_backward_applies_tensor_hooks_once(batched):
    """A tensor hook on a parameter (``p.register_hook``) acts on each gradient autograd computes for it,
    so on each row of the Jacobian: with a hook that doubles, tm.backward and PNG.backward write twice
    the unhooked direction, as loss.backward() would write twice the gradient, not four times (which
    writing .grad through the autograd engine a second time would give)."""
    x, ys = _data(2, seed=17)
    results = []
    for hooked in (False, True):
        torch.manual_seed(17)
        model = MultiHead(2).to(F64)
        if hooked:
            for p in model.parameters():
                p.register_hook(lambda g: 2.0 * g)
        _, losses = _task_losses(model, x, ys)
        tm.backward(losses, model.trunk, MGDA(), task_params=list(model.heads), batched=batched)
        mgda = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        _, losses = _task_losses(model, x, ys)
        tm.methods.PNG(tm.methods.WeightedDistance([0.5, 0.5]), threshold=0.0).backward(losses, model, batched=batched)
        results.append(mgda + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(b, 2.0 * a, rtol=1e-12, atol=0)


def test_backward_checks_the_aggregator_inputs_before_any_backward_pass():
    """An aggregator error that does not depend on J (a non-positive loss for MGDA("loss") or EPO, a
    preference or region for another number of objectives) is raised before the backward passes: the
    graph survives, the same losses can be stepped with another aggregator, and no .grad is written."""
    from torchmoo.methods import EPO
    from torchmoo.methods.psst import PSST, AngularRegion

    torch.manual_seed(18)
    model = MultiHead(2).to(F64)
    x, ys = _data(2, seed=18)
    _, losses = _task_losses(model, x, ys)
    shifted = [losses[0] - losses[0].detach() - 1.0, losses[1]]  # a loss of -1: same graph, same gradients
    bad = [(MGDA("loss"), shifted, "positive"), (EPO([1.0, 2.0, 3.0]), losses, "3 objectives"),
           (EPO([1.0, 2.0]), shifted, "positive"),
           (PSST(AngularRegion([0.1, 0.2], [0.5, 0.6])), losses, "3 objectives")]
    for agg, L, match in bad:
        with pytest.raises(ValueError, match=match):
            tm.backward(L, model, agg)  # one backward pass, which would free the graph
        assert all(p.grad is None for p in model.parameters())
    tm.backward(losses, model, MGDA())  # the graph is intact
    assert all(p.grad is not None for p in model.parameters())


def test_direction_check_is_skipped_only_when_the_bound_excludes_an_overflow(monkeypatch):
    """The finiteness check of the combined direction (on CUDA a synchronization) runs only when
    sum_i |w_i| sqrt(G_ii), a bound on every entry of w @ J, does not stay below half the dtype's
    largest value: never for an ordinary float32 model, always when a float16 direction could overflow
    (and then it still raises, before any .grad is written)."""
    import torchmoo.methods.png as png_module
    import torchmoo.training as training

    calls = []

    def counting(pieces):
        calls.append(len(pieces))
        return all(bool(torch.isfinite(t).all()) for t in pieces if t is not None)

    monkeypatch.setattr(training, "_all_finite", counting)
    monkeypatch.setattr(png_module, "_all_finite", counting)
    torch.manual_seed(20)
    model = MultiHead(2)  # float32
    x, ys = _data(2, seed=20)
    _, losses = _task_losses(model, x.float(), [y.float() for y in ys])
    tm.backward(losses, model, MGDA())
    _, losses = _task_losses(model, x.float(), [y.float() for y in ys])
    tm.methods.PNG(tm.methods.WeightedDistance([0.5, 0.5])).backward(losses, model)
    assert sum(calls) == 0  # float32: the bound holds, nothing to check
    A = 4 * torch.tensor([[1.0, 0.5, -0.25, 2.0], [0.5, -1.0, 1.0, 0.25]], dtype=torch.float16)
    p = torch.zeros(4, dtype=torch.float16, requires_grad=True)
    with pytest.raises(ValueError, match="overflows"):  # weights of 2e4 on rows of norm ~9: d reaches 1.8e5
        tm.methods.PNG(tm.methods.WeightedDistance([1e-4, 1e-4])).backward(A @ p + 1.0, [p])
    assert sum(calls) > 0 and p.grad is None


@pytest.mark.cuda
def test_backward_on_cuda_synchronizes_at_most_twice():
    """tm.backward with MGDA on a GPU model synchronizes twice at most (the Gram matrix and losses read in
    one copy, the weights sent back; no finiteness check of a float32 direction) and writes what the CPU
    writes."""
    from conftest import check_cuda_step_against_cpu, count_cuda_syncs

    x, ys = _data(2, seed=21)

    def run(device):
        torch.manual_seed(21)
        model = MultiHead(2).to(device)
        xd, yd = x.float().to(device), [y.float().to(device) for y in ys]
        _, losses = _task_losses(model, xd, yd)
        syncs = count_cuda_syncs(lambda: tm.backward(losses, model.trunk, MGDA(), task_params=list(model.heads)),
                                 device)
        return syncs, [p.grad.cpu() for p in model.parameters()]

    check_cuda_step_against_cpu(run, 2, rtol=1e-4, atol=1e-6)


class _FixedGramWeights(tm.methods.Aggregator):
    """Gram-based aggregator that returns fixed weights (in G's dtype)."""

    def __init__(self, w) -> None:
        super().__init__()
        self.w = w

    def gram_weights(self, G, losses=None):
        return torch.tensor(self.w, dtype=G.dtype, device=G.device)


def test_backward_with_weights_beyond_a_half_dtype():
    """The combination of a float16 block takes float32 weights (float16's sums are float32): a weight of
    1e5 (inf in float16) on a row of entries 1e-3 gives d of about 200, which fits float16 and is written.
    The bound that skips the finiteness check (sum_i |w_i| sqrt(G_ii), here 1e5 * 2.2e-3 = 220) holds for
    float16 then; it fails for a weight beyond float32's range, which would be inf in the combination
    (inf times a zero entry is NaN), and for a bound beyond float16's range, where tm.backward checks the
    combination and raises before any .grad is written."""
    from torchmoo.methods.aggregator import _combination_bounded

    A = torch.tensor([[1e-3, 2e-3, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    G = A @ A.T
    w = torch.tensor([1e5, 1.0])
    assert _combination_bounded(G, w, [torch.float16]) and _combination_bounded(G, w, [torch.float32])
    assert not _combination_bounded(G, torch.tensor([1e39, 0.0], dtype=torch.float64), [torch.float16])
    assert not _combination_bounded(G, torch.tensor([0.0, 1e5]), [torch.float16])  # 2e5 > 65504 / 2
    assert _combination_bounded(G, w, [])  # no block: nothing is combined
    p = torch.zeros(4, dtype=torch.float16, requires_grad=True)
    L = A.half() @ p
    tm.backward([L[0], L[1]], [p], _FixedGramWeights([1e5, 1.0]))
    assert p.grad.dtype == torch.float16
    torch.testing.assert_close(p.grad, (w @ A.half().float()).half(), rtol=0, atol=0)
    p = torch.zeros(4, dtype=torch.float16, requires_grad=True)
    L = A.half() @ p
    with pytest.raises(ValueError, match="overflows torch.float16"):
        tm.backward([L[0], L[1]], [p], _FixedGramWeights([1.0, 1e5]))
    assert p.grad is None
    q = torch.zeros(4, requires_grad=True)
    L = A @ q
    tm.backward([L[0], L[1]], [q], _FixedGramWeights([1e5, 1.0]))
    torch.testing.assert_close(q.grad, w @ A)


@pytest.mark.parametrize("batched", [False, True])
def test_backward_when_no_loss_reaches_the_shared_parameters(batched):
    """Shared parameters that no loss reaches (all blocks None) keep .grad None, on the Gram path as on the
    assembled one; the task parameters get their gradients (no error from the overflow bound of an empty
    combination)."""
    x = torch.randn(3, dtype=F64, requires_grad=True)
    p = torch.randn(2, dtype=F64, requires_grad=True)
    for agg in (MGDA(), _JacobianImprovement(0.5)):
        x.grad = None
        tm.backward([x.sum(), x.pow(2).sum()], [p], agg, task_params=[[x], None], batched=batched)
        assert p.grad is None
        torch.testing.assert_close(x.grad, torch.ones(3, dtype=F64))


@pytest.mark.parametrize("which", ["mgda-loss", "epo", "png"])
def test_backward_amp_overflowing_loss_skips_the_step_for_aggregators_that_check_losses(which):
    """Under a GradScaler a loss that overflowed to inf is an overflow, for the scaler to skip (NaN weights
    and .grad, parameters unchanged, the scale lowered), also for the aggregators whose check_inputs rejects
    non-finite losses (MGDA("loss"), EPO, PNG's criterion); without a scaler the same losses are their
    error, raised before any backward pass."""
    from torchmoo.methods import EPO

    def make():
        return {"mgda-loss": lambda: MGDA("loss"), "epo": lambda: EPO([1.0, 2.0]),
                "png": lambda: tm.methods.PNG(tm.methods.NonUniformity([1.0, 1.0]))}[which]()

    model, x, ys, opt, scaler, before = _amp_overflow_setup(22)
    _, losses = _task_losses(model, x, ys)
    losses = [losses[0] * 1e30 * 1e10, losses[1]]  # inf in float32, and so is its gradient
    w = tm.backward(losses, model.trunk, make(), task_params=list(model.heads), grad_scaler=scaler)
    assert bool(torch.isnan(w).all())
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert scaler.get_scale() < 2.0**10
    opt.zero_grad(set_to_none=True)
    _, losses = _task_losses(model, x, ys)
    with pytest.raises(ValueError):
        tm.backward([losses[0] * 1e30 * 1e10, losses[1]], model.trunk, make(), task_params=list(model.heads))
    assert all(p.grad is None for p in model.parameters())


def test_backward_representation_jacobian_runs_each_pass_through_its_own_head():
    """MGDA-UB (representation=z) with m scalar losses: pass i of the Jacobian with respect to z starts from
    loss i, so it runs through head i only (3 head backward calls, not 9), then one backward of w @ losses
    through every head (3 more); the weights and .grad are those from the stacked losses."""
    torch.manual_seed(23)
    model = MultiHead(3).to(F64)
    x, ys = _data(3, seed=23)
    results = []
    for stacked in (False, True):
        model.zero_grad(set_to_none=True)
        z, outs = model(x)
        losses = [((CountBackward.apply(o) - y) ** 2).mean() for o, y in zip(outs, ys)]
        CountBackward.calls = 0
        w = tm.backward(torch.stack(losses) if stacked else losses, model.trunk, MGDA(), representation=z,
                        task_params=list(model.heads), batched=False)
        results.append((CountBackward.calls, [w] + [p.grad.clone() for p in model.parameters()]))
    assert results[0][0] == 3 + 3 + 3  # the Jacobian's 3 passes, w @ losses, the heads' own passes
    assert results[1][0] == 9 + 3 + 3
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------------------------------
# further checks of MGDA, EPO, PCGrad and CAGrad against analytic answers
# --------------------------------------------------------------------------------------------------


def test_mgda_normalized_with_a_zero_gradient_is_stationary():
    """A zero gradient has no direction to normalize: with "l2" and "loss+" it stays zero, so the point is
    Pareto-stationary (d = 0, all the weight on that objective), as without normalization."""
    gen = torch.Generator().manual_seed(40)
    J = torch.cat([torch.randn(2, 5, generator=gen, dtype=F64), torch.zeros(1, 5, dtype=F64)])
    losses = torch.tensor([0.5, 2.0, 1.5], dtype=F64)
    for norm in ("l2", "loss+"):
        agg = MGDA(norm)
        d = agg(J, losses)
        assert bool(torch.isfinite(agg.weights).all()) and float(agg.weights[2]) >= 1 - 1e-12, agg.weights
        assert float(d.abs().max()) <= 1e-15


def test_mgda_loss_normalization_rejects_zero_and_infinite_losses():
    """g_i / l_i needs 0 < l_i < inf: a zero loss would divide by zero, an infinite one would silently zero
    that objective's normalized gradient (and put all the weight on it)."""
    J = torch.randn(3, 4, generator=torch.Generator().manual_seed(41), dtype=F64)
    for norm in ("loss", "loss+"):
        for bad in ([0.0, 1.0, 2.0], [float("inf"), 1.0, 2.0], [float("nan"), 1.0, 2.0]):
            with pytest.raises(ValueError, match="positive and finite"):
                MGDA(norm)(J, torch.tensor(bad, dtype=F64))


def test_pareto_stationarity_keeps_small_values_of_large_gradients():
    """g1 = (a, e), g2 = (-a, e) with a = 1e4, e = 1e-4: the min-norm point is (0, e), g(theta) = e^2 = 1e-8,
    which w'Gw loses entirely (the entries a^2 + e^2 of G round to a^2)."""
    a, e = 1e4, 1e-4
    J = torch.tensor([[a, e], [-a, e]], dtype=F64)
    assert math.isclose(pareto_stationarity(J), e * e, rel_tol=1e-10)
    _, c = min_norm_correction(J)
    torch.testing.assert_close(c, torch.tensor([0.0, e], dtype=F64), rtol=0, atol=1e-14)


def _epo_lp_reference(G, losses, r, eps, relax):
    """EPO's LP (Mahapatra & Rajan, the authors' EPO_LP) written out densely and solved by HiGHS.

    Returns (mode, mu, objective c, A_ub, b_ub, linprog result) of max c'beta over the simplex with
    A_ub beta <= b_ub."""
    from scipy.special import rel_entr

    m = len(losses)
    rl = r * losses
    q = rl / rl.sum()
    mu = float(rel_entr(q, np.full(m, 1.0 / m)).sum())  # KL(q || uniform), PNG's Eq. 16
    a = r * (np.log(m * q) - mu)
    Ca = G @ a
    if mu > eps:
        mode, obj = "balance", Ca
        if np.any(Ca > 0):  # keep (C beta)_j >= (Ca)_j where (Ca)_j <= 0, and (C beta)_j >= 0 for argmax r l
            top = rl == rl.max()
            keep = (Ca <= 0) | top
            A, b = -G[keep], -np.where(top, 0.0, Ca)[keep]
        else:
            A, b = -G, np.zeros(m)
    else:
        mode, obj = "descent", G.sum(1)
        A, b = -G, np.zeros(m)
        if not relax:
            A, b = np.vstack([A, -Ca]), np.append(b, -min(Ca.max(), 0.0))
    res = scipy_optimize.linprog(-obj, A_ub=A, b_ub=b, A_eq=np.ones((1, m)), b_eq=[1.0], bounds=[(0, None)] * m,
                                 method="highs")
    return mode, mu, obj, A, b, res


def test_epo_weights_solve_the_epo_lp():
    """EPO's weights m * beta: beta is feasible and optimal for the LP of its mode (an independent dense
    formulation solved by HiGHS; LP solutions need not be unique, the optimal value is), the mode and mu are
    the reference's, and the fallback m r / sum(r) comes exactly when that LP is infeasible. Random problems
    with m = 2 (the exact segment solver) and m = 3, 4 (HiGHS), far from and close to the ratio, relaxed or
    not, reach every branch."""
    from torchmoo.methods.epo import epo_weights

    rng = np.random.default_rng(42)
    seen = set()
    for k in range(80):
        m, n = int(rng.integers(2, 5)), int(rng.integers(1, 6))
        J = rng.normal(size=(m, n))
        G = J @ J.T
        r = rng.uniform(0.2, 3.0, m)
        if k % 3 == 0:
            losses = rng.uniform(0.1, 2.0, m)  # far from the ratio: balance
        else:
            losses = (1 + 1e-3 * rng.normal(size=m)) * rng.uniform(0.5, 2.0) / r  # r l nearly uniform
        relax = bool(k % 2)
        w, mode, mu = epo_weights(G, losses, r, 1e-4, relax)
        ref_mode, ref_mu, obj, A, b, res = _epo_lp_reference(G, losses, r, 1e-4, relax)
        assert math.isclose(mu, ref_mu, rel_tol=1e-9, abs_tol=1e-15)
        # balance: obj is Ca, and the constraints differ when no (Ca)_j is positive
        seen.add((mode, m == 2, bool(np.any(obj > 0))) if mode == "balance" else (mode, m == 2))
        if mode == "fallback":
            assert ref_mode == "descent" and res.status == 2
            np.testing.assert_allclose(w, m * r / r.sum(), rtol=1e-15)
            continue
        assert mode == ref_mode and res.status == 0
        beta = w / m
        scale = float(np.abs(G).max())
        assert beta.min() >= 0 and math.isclose(beta.sum(), 1.0, rel_tol=1e-12)
        assert np.all(A @ beta <= b + 1e-9 * scale), A @ beta - b
        tol = 1e-9 * scale * max(1.0, float(np.abs(obj).max()))
        assert abs(obj @ beta + res.fun) <= tol, (obj @ beta, -res.fun)
    # every branch: balance with and without a positive (Ca)_j, descent and fallback, both LP solvers
    assert {("balance", True, True), ("balance", True, False), ("balance", False, True), ("balance", False, False),
            ("descent", True), ("descent", False), ("fallback", False)} <= seen, seen


def test_epo_lp_simplex_small_cases():
    """The simplex LP on cases solved by hand: a constraint that does not depend on s (equal entries) is
    either always or never satisfied; with three objectives and no constraint the maximum of c'beta is the
    vertex of the largest c_i (not the smallest, not unbounded)."""
    from torchmoo.methods.epo import _lp_simplex

    c = np.array([1.0, 0.0])
    assert _lp_simplex(c, np.array([[1.0, 1.0]]), np.array([-1.0])) is None  # beta_1 + beta_2 = 1 <= -1
    np.testing.assert_array_equal(_lp_simplex(c, np.array([[1.0, 1.0]]), np.array([2.0])), [1.0, 0.0])
    np.testing.assert_array_equal(_lp_simplex(c, np.array([[2.0, 0.0]]), np.array([0.5])), [0.25, 0.75])
    none = np.zeros((0, 3)), np.zeros(0)
    np.testing.assert_allclose(_lp_simplex(np.array([0.0, 2.0, -1.0]), *none), [0.0, 1.0, 0.0], atol=1e-12)
    # beta_1 <= 0.25 binds: the rest goes to the next best vertex
    got = _lp_simplex(np.array([3.0, 2.0, -1.0]), np.array([[1.0, 0.0, 0.0]]), np.array([0.25]))
    np.testing.assert_allclose(got, [0.25, 0.75, 0.0], atol=1e-12)
    assert _lp_simplex(np.array([1.0, 0.0, 0.0]), np.array([[1.0, 1.0, 1.0]]), np.array([0.5])) is None


def test_epo_on_the_ratio_is_descent_even_with_eps_zero():
    """r l exactly uniform: mu = 0 <= eps = 0, so EPO is in descent mode (mu <= eps, not balance mode),
    relaxed or not, and the step is a common descent: J d >= 0."""
    from torchmoo.methods import EPO

    J = torch.tensor([[1.0, 0.2, 0.0], [-0.5, 1.0, 0.3], [0.1, -0.4, 1.0]], dtype=F64)
    for relax in (False, True):
        epo = EPO([1.0, 3.0, 2.0], eps=0.0, relax=relax)
        d = epo(J, torch.tensor([6.0, 2.0, 3.0], dtype=F64))  # r l = (6, 6, 6)
        assert epo.mode == "descent" and epo.non_uniformity == 0.0
        assert float((J @ d).min()) >= -1e-12


def test_pcgrad_orders_are_random():
    """Algorithm 1 visits the other objectives in a random order, drawn anew at each call: over 40 calls
    with m = 4 each row sees most of the 3! = 6 orders (fewer than 4 has probability below 1e-10), and
    two seeds give different sequences of orders."""
    J = torch.randn(4, 3, generator=torch.Generator().manual_seed(43), dtype=F64)
    agg = PCGrad(seed=1)
    seen = [set() for _ in range(4)]
    for _ in range(40):
        agg(J)
        for i in range(4):
            seen[i].add(tuple(agg.orders[i].tolist()))
    assert min(len(s) for s in seen) >= 4, seen

    def orders(seed):
        agg = PCGrad(seed=seed)
        out = []
        for _ in range(5):
            agg(J)
            out.append(agg.orders)
        return torch.stack(out)

    assert torch.equal(orders(1), orders(1)) and not torch.equal(orders(1), orders(2))


def test_cagrad_is_positively_homogeneous():
    """Scaling J by s > 0 scales d by s (the ball and the worst improvement scale alike): the weights do not
    change, for gradients of norm 1e-12 as for 1e4 (the path's root is found to a relative tolerance)."""
    gen = torch.Generator().manual_seed(44)
    for _ in range(8):
        m, n = int(torch.randint(2, 6, (1,), generator=gen)), int(torch.randint(2, 8, (1,), generator=gen))
        J = torch.randn(m, n, generator=gen, dtype=F64)
        c = 0.1 + 0.8 * float(torch.rand(1, generator=gen, dtype=F64))
        u = cagrad_weights(J @ J.T, c)
        for s in (1e-12, 1e-6, 1e4):
            Js = J * s
            torch.testing.assert_close(cagrad_weights(Js @ Js.T, c), u, rtol=1e-9, atol=0)


def test_cagrad_finds_the_root_in_a_few_qps(monkeypatch):
    """On a piece of the QP path w(nu) is affine and the root of ||J'w(nu)|| = r nu is that of a quadratic,
    tried at every step: a few QPs per call (here 3 to 15), not the ~40 of a bisection to rtol = 1e-12."""
    calls = []
    solve = tm.ops.min_norm_simplex

    def counting(*args, **kwargs):
        calls.append(1)
        return solve(*args, **kwargs)

    monkeypatch.setattr(tm.ops, "min_norm_simplex", counting)
    gen = torch.Generator().manual_seed(50)
    counts = []
    for _ in range(30):
        m, n = int(torch.randint(2, 7, (1,), generator=gen)), int(torch.randint(2, 8, (1,), generator=gen))
        J = torch.randn(m, n, generator=gen, dtype=F64)
        c = 0.1 + 0.8 * float(torch.rand(1, generator=gen, dtype=F64))
        calls.clear()
        cagrad_weights(J @ J.T, c)
        counts.append(len(calls))
    assert max(counts) <= 30 and sum(counts) <= 15 * len(counts), counts


def test_cagrad_and_pcgrad_defaults():
    """The documented defaults: CAGrad(c=0.5, rescale=1), PCGrad(reduction="sum")."""
    J = torch.randn(3, 5, generator=torch.Generator().manual_seed(45), dtype=F64)
    torch.testing.assert_close(CAGrad()(J), CAGrad(c=0.5, rescale=1)(J), rtol=0, atol=0)
    torch.testing.assert_close(CAGrad()(J), CAGrad(c=0.5, rescale=0)(J) / 1.25, rtol=1e-14, atol=0)
    torch.testing.assert_close(PCGrad(seed=3)(J), PCGrad(seed=3, reduction="sum")(J), rtol=0, atol=0)


def test_epo_weights_do_not_depend_on_the_scale_of_the_gradients():
    """EPO's LP is linear in C = J J^T (objective and constraints), so scaling every gradient by s leaves
    beta, the mode and mu unchanged: gradients of norm 1e-7 (C ~ 1e-14) get the step of gradients of norm 1,
    and in descent mode it is still a common descent (C beta >= 0), for the exact two-objective solver and
    for HiGHS alike (whose tolerances are absolute)."""
    from torchmoo.methods.epo import epo_weights

    rng = np.random.default_rng(46)
    for k in range(24):
        m, n = 2 + k % 3, int(rng.integers(1, 5))
        J = rng.normal(size=(m, n))
        G = J @ J.T
        r = rng.uniform(0.2, 3.0, m)
        losses = rng.uniform(0.1, 2.0, m) if k % 4 == 3 else (1 + 1e-3 * rng.normal(size=m)) / r
        w, mode, mu = epo_weights(G, losses, r)
        for s in (1e-14, 1e-8, 1e6):
            ws, modes, mus = epo_weights(G * s, losses, r)
            assert modes == mode and mus == mu
            np.testing.assert_allclose(ws, w, rtol=0, atol=1e-7)
            if modes == "descent":
                assert float((G @ ws).min()) >= -1e-9 * float(np.abs(G).max())
