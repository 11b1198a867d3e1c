"""Tests of torchmoo.ops.nonneg_qp: min over lambda >= 0 of 0.5 lambda'G lambda + c'lambda.

This is the dual of Pareto Navigation Gradient Descent (Ye & Liu, Eq. 10) with G = J J^T and
c = J grad_F - phi * 1. The operator is checked against the contract (KKT residual bars, unbounded
detection, shapes, dtypes, strides, batching, determinism), against the slow reference solver of
torchmoo.reference, against quadprog, and against closed-form answers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import torchmoo as tm
from conftest import (
    F64, KINDS, Problem, check_max_iter_budget, check_meta_outputs, gram, is_well_conditioned, random_batch, scale_of,
)
from torchmoo.reference import nonneg_kkt_residual, nonneg_qp_reference, qp_objective

BAR = {torch.float64: 1e-10, torch.float32: 1e-5}

#: c kinds that make the problem bounded below whatever G is.
BOUNDED_C = ("bounded", "nonneg_c", "zero")
#: Kinds whose singular directions are never >= 0 (so any c gives a bounded problem).
NO_NONNEG_NULL_DIRECTION = ("full", "duplicate", "parallel")


@st.composite
def bounded_problems(draw, max_m: int = 8, kinds=KINDS) -> Problem:
    kind = draw(st.sampled_from(kinds))
    c_kinds = BOUNDED_C + (("random", "png", "range") if kind in NO_NONNEG_NULL_DIRECTION else ())
    return Problem(
        kind=kind,
        m=draw(st.integers(1, max_m)),
        n=draw(st.integers(1, 6)),
        seed=draw(st.integers(0, 2**31 - 1)),
        e=draw(st.integers(-12, 12)),
        c_kind=draw(st.sampled_from(c_kinds)),
    )


@st.composite
def any_problems(draw, max_m: int = 7) -> Problem:
    """Possibly unbounded problems: rank-deficient G with arbitrary c."""
    return Problem(
        kind=draw(st.sampled_from(("lowrank", "antiparallel", "zero_rows", "zero"))),
        m=draw(st.integers(1, max_m)),
        n=draw(st.integers(1, 6)),
        seed=draw(st.integers(0, 2**31 - 1)),
        e=draw(st.integers(-12, 12)),
        c_kind=draw(st.sampled_from(("random", "png"))),
    )


def solve(G, c, **kw):
    return tm.ops.nonneg_qp(G, c, return_info=True, **kw)


def check_solution(G, c, lam, info, dtype=F64):
    """Contract checks shared by most tests; returns the residual computed here."""
    assert lam.dtype == G.dtype and lam.shape == G.shape[:-1] and lam.device == G.device
    r = nonneg_kkt_residual(G, c, lam)
    assert r.shape == G.shape[:-2]
    assert torch.all(r <= BAR[dtype]), f"KKT residual {r.max().item():.3e} above {BAR[dtype]:.0e}"
    assert torch.all(lam >= 0)
    assert info.iterations.dtype == torch.int64 and info.iterations.shape == G.shape[:-2]
    assert info.kkt_residual.dtype == F64 and info.kkt_residual.shape == G.shape[:-2]
    assert info.converged.dtype == torch.bool and info.converged.shape == G.shape[:-2]
    assert bool(info.converged.all())
    assert torch.all(info.kkt_residual <= BAR[dtype])
    return r


def objective_tolerance(G, c, lam, lam_ref, r: float) -> float:
    """|f(lam) - f*| <= 2 m r s max(1, max lam, max lam*) for a point with KKT residual r (see README)."""
    m = G.shape[-1]
    big = max(1.0, float(lam.double().max()), float(lam_ref.max()))
    return 2.0 * m * max(r, 1e-12) * scale_of(G.double(), c.double()) * big


# --------------------------------------------------------------------------------------------------
# Property tests against the reference
# --------------------------------------------------------------------------------------------------


@given(bounded_problems())
def test_matches_reference_float64(problem):
    G, c = problem.G, problem.c
    lam, info = solve(G, c)
    r = check_solution(G, c, lam, info)
    assert torch.allclose(info.kkt_residual, r, rtol=1e-6, atol=1e-13)
    lam_ref = nonneg_qp_reference(G, c)
    f, f_ref = float(qp_objective(G, c, lam)), float(qp_objective(G, c, lam_ref))
    assert abs(f - f_ref) <= objective_tolerance(G, c, lam, lam_ref, 1e-9), (f, f_ref)
    if is_well_conditioned(G):
        torch.testing.assert_close(lam, lam_ref, rtol=0, atol=1e-8 * max(1.0, float(lam_ref.max())))


@given(bounded_problems(max_m=6, kinds=("full", "duplicate", "parallel", "zero_rows", "zero")))
def test_matches_reference_float32(problem):
    # (kinds whose float32 rounding cannot make a bounded problem unbounded or vice versa)
    G, c = problem.G.float(), problem.c.float()
    lam, info = solve(G, c)
    check_solution(G, c, lam, info, dtype=torch.float32)
    lam_ref = nonneg_qp_reference(G, c)  # the reference solves the float32 data exactly
    f, f_ref = float(qp_objective(G, c, lam)), float(qp_objective(G, c, lam_ref))
    assert abs(f - f_ref) <= objective_tolerance(G, c, lam, lam_ref, 1e-5), (f, f_ref)


@given(any_problems())
def test_unbounded_detection_agrees_with_reference(problem):
    G, c = problem.G, problem.c
    try:
        lam_ref = nonneg_qp_reference(G, c)
    except ValueError as err:
        assert "unbounded" in str(err)
        with pytest.raises(ValueError, match="unbounded"):
            tm.ops.nonneg_qp(G, c)
        return
    lam, info = solve(G, c)
    check_solution(G, c, lam, info)
    f, f_ref = float(qp_objective(G, c, lam)), float(qp_objective(G, c, lam_ref))
    assert abs(f - f_ref) <= objective_tolerance(G, c, lam, lam_ref, 1e-9), (f, f_ref)


@given(bounded_problems(max_m=6))
@settings(max_examples=30)
def test_matches_quadprog(problem):
    quadprog = pytest.importorskip("quadprog")
    G, c = problem.G, problem.c
    m = G.shape[-1]
    lam, _ = solve(G, c)
    s = scale_of(G, c)
    # quadprog needs strictly positive definite G: solve the scaled problem with a tiny ridge and
    # compare objective values of the unregularized problem.
    Gs, cs = (G / s).numpy(), (c / s).numpy()
    ridge = 1e-9
    x_qp = quadprog.solve_qp(Gs + ridge * np.eye(m), -cs, np.eye(m), np.zeros(m), 0)[0]
    x_qp = np.clip(x_qp, 0.0, None)
    f_qp = 0.5 * x_qp @ Gs @ x_qp + cs @ x_qp
    f_op = float(qp_objective(G / s, c / s, lam))
    size = max(1.0, float(np.abs(x_qp).max()), float(lam.max())) ** 2
    # x_qp is feasible, so f_qp >= f*: the operator must do at least as well as quadprog
    assert f_op <= f_qp + 1e-9 * size, (f_op, f_qp)
    if is_well_conditioned(G):  # there quadprog is accurate too, and the values must agree
        assert f_op >= f_qp - 1e-9 * size, (f_op, f_qp)


@given(st.integers(1, 8), st.integers(0, 2**31 - 1), st.integers(-12, 12))
def test_interior_solution_is_minus_G_inverse_c(m, seed, e):
    # G positive definite and x = -G^{-1} c > 0 (some entries 0 with c_i > 0 there): lambda = x
    gen = torch.Generator().manual_seed(seed)
    J = torch.randn(m, m + 3, generator=gen, dtype=F64)
    G = gram(J, 10.0**e)
    x = torch.rand(m, generator=gen, dtype=F64) + 0.1
    zero = torch.rand(m, generator=gen, dtype=F64) < 0.3
    x[zero] = 0.0
    p = torch.where(zero, torch.rand(m, generator=gen, dtype=F64) + 0.1, torch.zeros(m, dtype=F64))
    c = -G @ x + p * 10.0**e  # KKT: g = p >= 0, p_i x_i = 0
    if not is_well_conditioned(G, 1e6):
        return
    lam, info = solve(G, c)
    check_solution(G, c, lam, info)
    torch.testing.assert_close(lam, x, rtol=0, atol=1e-8)


# --------------------------------------------------------------------------------------------------
# Closed-form and degenerate cases
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_singular_unbounded_and_bounded(dtype):
    G = torch.diag(torch.tensor([1.0, 0.0], dtype=dtype))
    with pytest.raises(ValueError, match="unbounded"):
        tm.ops.nonneg_qp(G, torch.tensor([0.0, -1.0], dtype=dtype))
    lam, info = solve(G, torch.tensor([-1.0, 1.0], dtype=dtype))
    check_solution(G, torch.tensor([-1.0, 1.0], dtype=dtype), lam, info, dtype)
    torch.testing.assert_close(lam, torch.tensor([1.0, 0.0], dtype=dtype), rtol=0, atol=1e-12)
    # c = 0 along the null direction: bounded, lambda_1 = 1 and lambda_2 anything >= 0 optimal
    c = torch.tensor([-1.0, 0.0], dtype=dtype)
    lam, info = solve(G, c)
    check_solution(G, c, lam, info, dtype)
    assert abs(float(lam[0]) - 1.0) <= 1e-12


@pytest.mark.parametrize("m", [5, 14])
def test_barely_unbounded_is_detected_by_operator_and_reference(m):
    # Rows 0 and 1 of B antiparallel: d = e_0 + e_1 >= 0 spans a null direction of G = B B^T, and
    # c'd = +-1e-6 (about 1e-7 of the scale s) decides boundedness. m = 14 takes the reference's
    # linear-programming test (m > 12), m = 5 its enumeration; both must agree with the operator.
    g = torch.Generator().manual_seed(7)
    B = torch.randn(m, m - 1, generator=g, dtype=F64)
    B[1] = -B[0]
    G = B @ B.T
    c = torch.rand(m, generator=g, dtype=F64) + 0.5
    c[0] = -0.5
    c[1] = 0.5 - 1e-6
    with pytest.raises(ValueError, match="unbounded"):
        nonneg_qp_reference(G, c)
    with pytest.raises(ValueError, match="unbounded"):
        tm.ops.nonneg_qp(G, c)
    c[1] = 0.5 + 1e-6
    lam_ref = nonneg_qp_reference(G, c)
    lam, info = solve(G, c)
    r = check_solution(G, c, lam, info)
    f, f_ref = float(qp_objective(G, c, lam)), float(qp_objective(G, c, lam_ref))
    assert abs(f - f_ref) <= objective_tolerance(G, c, lam, lam_ref, float(r)), (f, f_ref)


def test_unbounded_batch_raises():
    G = torch.eye(3, dtype=F64).repeat(5, 1, 1)
    G[3, 1, 1] = 0.0
    c = torch.ones(5, 3, dtype=F64)
    c[3, 1] = -2.0
    with pytest.raises(ValueError, match="unbounded"):
        tm.ops.nonneg_qp(G, c)
    c[3, 1] = 2.0  # now bounded
    lam, info = solve(G, c)
    check_solution(G, c, lam, info)
    assert torch.equal(lam, torch.zeros(5, 3, dtype=F64))


def test_opposite_gradients_make_png_infeasible():
    # l1 and l2 have opposite gradients: no v improves both, the PNG dual is unbounded for phi > 0
    a = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    J = torch.stack([a, -3.0 * a, torch.tensor([0.0, 1.0, 1.0], dtype=F64)])
    grad_F = torch.tensor([0.3, 0.1, -0.2], dtype=F64)
    with pytest.raises(ValueError, match="unbounded"):
        tm.ops.nonneg_qp(gram(J), J @ grad_F - 0.5)
    # phi < 0 (weaker constraint): bounded
    c = J @ grad_F + 0.5
    lam, info = solve(gram(J), c)
    check_solution(gram(J), c, lam, info)


def test_png_primal_feasibility():
    # lambda solves the dual of min ||v - grad_F||^2 s.t. J v >= phi: v = grad_F + J^T lambda satisfies
    # the constraints, with complementary slackness
    # (stationarity v - grad_F = J^T lambda holds by construction; with lambda >= 0, J v >= phi and
    # complementary slackness these are the KKT conditions of the convex primal: v is its solution)
    gen = torch.Generator().manual_seed(3)
    compared = 0
    for m, n in [(2, 5), (4, 10), (8, 30), (3, 3)]:
        J = torch.randn(m, n, generator=gen, dtype=F64)
        grad_F = torch.randn(n, generator=gen, dtype=F64)
        phi = 0.7
        lam, info = solve(gram(J), J @ grad_F - phi)
        assert torch.all(lam >= 0) and bool((lam > 0).any())  # an active constraint: not v = grad_F
        v = grad_F + J.T @ lam
        slack = J @ v - phi
        assert torch.all(slack >= -1e-9)
        assert torch.all((lam * slack).abs() <= 1e-9)
        # and v is the projection of grad_F: it beats every other feasible point we can build
        v_mgda = J.T @ tm.ops.min_norm_simplex(gram(J)).to(F64)
        if float((J @ v_mgda).min()) > 0:
            v_alt = v_mgda * (phi / float((J @ v_mgda).min()))  # feasible
            assert float((v - grad_F).norm()) <= float((v_alt - grad_F).norm()) + 1e-9
            compared += 1
    assert compared >= 3


@pytest.mark.parametrize("m", [1, 3, 8, 20])
def test_zero_G(m):
    G = torch.zeros(m, m, dtype=F64)
    lam, info = solve(G, torch.zeros(m, dtype=F64))
    assert torch.equal(lam, torch.zeros(m, dtype=F64))
    c = torch.rand(m, generator=torch.Generator().manual_seed(m), dtype=F64)
    c[0] = 0.0
    lam, info = solve(G, c)
    check_solution(G, c, lam, info)
    assert torch.all(lam[1:] == 0)
    c[-1] = -1e-3
    with pytest.raises(ValueError, match="unbounded"):
        tm.ops.nonneg_qp(G, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_m_equals_one(dtype):
    for g, cv, expect in [(2.0, -3.0, 1.5), (2.0, 3.0, 0.0), (1e-12, -1e-12, 1.0), (1e12, -2e12, 2.0), (0.0, 0.0, 0.0), (0.0, 5.0, 0.0)]:
        lam, info = solve(torch.tensor([[g]], dtype=dtype), torch.tensor([cv], dtype=dtype))
        torch.testing.assert_close(lam, torch.tensor([expect], dtype=dtype), rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)
    with pytest.raises(ValueError, match="unbounded"):
        tm.ops.nonneg_qp(torch.tensor([[0.0]], dtype=dtype), torch.tensor([-1.0], dtype=dtype))


@pytest.mark.parametrize("e", [-12, -6, 6, 12])
def test_scale_invariance(e):
    gen = torch.Generator().manual_seed(12)
    J = torch.randn(6, 10, generator=gen, dtype=F64)
    c = torch.randn(6, generator=gen, dtype=F64)
    G = gram(J)
    lam1 = tm.ops.nonneg_qp(G, c)
    lams = tm.ops.nonneg_qp(G * 10.0**e, c * 10.0**e)
    torch.testing.assert_close(lams, lam1, rtol=0, atol=1e-10)


@pytest.mark.parametrize("m", [2, 5, 10])
@pytest.mark.parametrize("huge", [False, True], ids=["subnormal", "huge"])
def test_extreme_scales(m, huge):
    # Subnormal G and c (1 / max|G| overflows), and off-diagonal entries of 2^1023 and more (the sum of
    # two of them overflows): the answer is that of the unscaled problem. The integer G and c scale
    # exactly; for m <= 8 the two problems may take different solvers, hence the tolerance.
    gen = torch.Generator().manual_seed(m)
    J = 4.0 + torch.randint(-1, 2, (m, m + 2), generator=gen).to(F64)  # nearly parallel rows
    G, c = J @ J.T, torch.randint(-5, 6, (m,), generator=gen).to(F64)
    off = G - torch.diag(G.diagonal())
    scale = 2.0 ** (1023 - int(torch.frexp(off.abs().max()).exponent) + 1) if huge else 2.0**-1060
    if huge:
        assert bool(torch.isfinite(G * scale).all()) and not bool(torch.isfinite(off * scale + off * scale).all())
    lam, info = tm.ops.nonneg_qp(G * scale, c * scale, return_info=True)
    lam_ref = tm.ops.nonneg_qp(G, c)
    assert bool(info.converged) and float(info.kkt_residual) <= 1e-12
    torch.testing.assert_close(lam, lam_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("m,n", [(256, 300), (256, 24)])
def test_m_256(m, n):
    p = Problem("full" if n >= m else "lowrank", m, n, seed=m + n, e=0, c_kind="bounded")
    if n >= m:
        p.G = gram(torch.randn(m, n, generator=torch.Generator().manual_seed(1), dtype=F64))
        p.c = torch.randn(m, generator=torch.Generator().manual_seed(2), dtype=F64) * 10
    G, c = p.G, p.c
    lam, info = solve(G, c)
    check_solution(G, c, lam, info)
    assert bool((lam > 0).any()) and bool((lam == 0).any())  # a non-trivial active set
    lam_ref = nonneg_qp_reference(G, c)
    f, f_ref = float(qp_objective(G, c, lam)), float(qp_objective(G, c, lam_ref))
    assert abs(f - f_ref) <= objective_tolerance(G, c, lam, lam_ref, 1e-9), (f, f_ref)


@pytest.mark.parametrize("m", [13, 33, 64])
def test_medium_m_matches_reference(m):
    for kind, n in (("lowrank", m // 3), ("full", m)):
        p = Problem(kind, m, n, seed=m, e=0, c_kind="bounded")
        lam, info = solve(p.G, p.c)
        check_solution(p.G, p.c, lam, info)
        lam_ref = nonneg_qp_reference(p.G, p.c)
        f, f_ref = float(qp_objective(p.G, p.c, lam)), float(qp_objective(p.G, p.c, lam_ref))
        assert abs(f - f_ref) <= objective_tolerance(p.G, p.c, lam, lam_ref, 1e-9), (f, f_ref)


# --------------------------------------------------------------------------------------------------
# Batching, strides, dtypes, determinism
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 9, 17])
def test_batched_equals_per_problem(m):
    G, c = random_batch(37, m, seed=m, c_kind="bounded")
    lam, info = solve(G, c)
    check_solution(G, c, lam, info)
    for b in range(G.shape[0]):
        lb, ib = solve(G[b], c[b])
        assert torch.equal(lam[b], lb), f"problem {b}: batched {lam[b].tolist()} vs alone {lb.tolist()}"
        assert torch.equal(info.iterations[b], ib.iterations)
        assert torch.equal(info.kkt_residual[b], ib.kkt_residual)


@pytest.mark.parametrize("m", [3, 8, 12])
def test_several_leading_dims(m):
    G, c = random_batch(24, m, seed=100 + m, c_kind="bounded")
    G5, c5 = G.reshape(2, 3, 4, m, m), c.reshape(2, 3, 4, m)
    lam, info = solve(G5, c5)
    assert lam.shape == (2, 3, 4, m)
    check_solution(G5, c5, lam, info)
    assert torch.equal(lam.reshape(24, m), solve(G, c)[0])
    lam_ref = nonneg_qp_reference(G5, c5)
    f, f_ref = qp_objective(G5, c5, lam), qp_objective(G5, c5, lam_ref)
    s = G5.abs().amax(dim=(-2, -1)).maximum(c5.abs().amax(-1))
    big = lam.amax(-1).maximum(lam_ref.amax(-1)).clamp_min(1.0)
    assert torch.all((f - f_ref).abs() <= 2e-9 * m * s * big)


@pytest.mark.parametrize("m", [2, 5, 8, 11])
def test_non_contiguous_inputs(m):
    G, c = random_batch(6, m, seed=200 + m, c_kind="bounded")
    lam, _ = solve(G, c)
    assert torch.equal(solve(G.mT, c)[0], lam)
    big = torch.zeros(6, 2 * m, 3 * m, dtype=F64)
    big[:, ::2, ::3] = G
    cbig = torch.zeros(6, 2 * m, dtype=F64)
    cbig[:, 1::2] = c
    Gv, cv = big[:, ::2, ::3], cbig[:, 1::2]
    assert not Gv.is_contiguous() and not cv.is_contiguous()
    assert torch.equal(solve(Gv, cv)[0], lam)
    Gp = G.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    cp = c.T.contiguous().T
    assert torch.equal(solve(Gp, cp)[0], lam)
    assert torch.equal(solve(G[2].expand(5, m, m), c[2].expand(5, m))[0], lam[2].expand(5, m))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_and_bfloat16_are_upcast(dtype):
    G, c = random_batch(20, 5, seed=7, c_kind="png")
    G = G + torch.eye(5, dtype=F64) * G.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1.0)  # PD: bounded
    s = G.abs().amax(dim=(-2, -1)).maximum(c.abs().amax(-1))
    G, c = (G / s[:, None, None]).to(dtype), (c / s[:, None]).to(dtype)
    lam = tm.ops.nonneg_qp(G, c)
    assert lam.dtype == dtype and lam.shape == (20, 5)
    # internally float64: close to the float64 solution of the (exactly upcast) input, and a KKT point
    # of it up to the output rounding (the solver may stop earlier for a half-precision result)
    lam64 = tm.ops.nonneg_qp(G.double(), c.double())
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(lam.double(), lam64, rtol=0, atol=4 * eps * float(lam64.abs().max()))
    assert torch.all(nonneg_kkt_residual(G, c, lam) <= 4 * 5 * eps)
    assert torch.all(lam >= 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4)])
def test_empty_batch(dtype, shape):
    m = 4
    lam, info = solve(torch.zeros(*shape, m, m, dtype=dtype), torch.zeros(*shape, m, dtype=dtype))
    assert lam.shape == (*shape, m) and lam.dtype == dtype
    assert info.iterations.shape == shape and info.kkt_residual.shape == shape and info.converged.shape == shape


@pytest.mark.parametrize("m", [2, 8, 10])
def test_deterministic(m):
    G, c = random_batch(3000, m, seed=300 + m, c_kind="bounded")
    l1, i1 = solve(G, c)
    l2, i2 = solve(G, c)
    assert torch.equal(l1, l2)
    assert torch.equal(i1.iterations, i2.iterations)
    assert torch.equal(i1.kkt_residual, i2.kkt_residual)
    assert torch.equal(i1.converged, i2.converged)


def test_input_is_not_modified():
    G, c = random_batch(4, 5, seed=9, c_kind="bounded")
    G0, c0 = G.clone(), c.clone()
    tm.ops.nonneg_qp(G, c)
    assert torch.equal(G, G0) and torch.equal(c, c0)


# --------------------------------------------------------------------------------------------------
# Frank-Wolfe
# --------------------------------------------------------------------------------------------------


def interior_problem(m: int = 5, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    J = torch.eye(m, dtype=F64) + 0.15 * torch.randn(m, m, generator=gen, dtype=F64)
    G = gram(J)
    x = torch.rand(m, generator=gen, dtype=F64) + 0.5
    return G, -G @ x, x


def test_frank_wolfe_is_feasible_and_approximately_optimal():
    G, c, x = interior_problem()
    lam, info = solve(G, c, method="frank_wolfe")
    assert bool((lam >= 0).all())
    r = nonneg_kkt_residual(G, c, lam)
    assert float(r) <= 1e-3
    assert float(r) > 1e-13  # approximate, not the exact active-set answer
    assert not torch.equal(lam, tm.ops.nonneg_qp(G, c))
    torch.testing.assert_close(info.kkt_residual, r, rtol=1e-6, atol=0)
    f, f_star = float(qp_objective(G, c, lam)), float(qp_objective(G, c, x))
    assert f_star - 1e-12 <= f <= f_star + 1e-3 * scale_of(G, c)


def test_frank_wolfe_radius():
    G, c, x = interior_problem()
    R = 0.5 * float(x.sum())  # smaller than the optimum's sum: the constraint binds
    lam, info = solve(G, c, method="frank_wolfe", radius=R)
    assert bool((lam >= 0).all())
    assert float(lam.sum()) <= R * (1 + 1e-9)
    assert float(lam.sum()) >= 0.9 * R
    # singular G with a user-given radius
    G = torch.diag(torch.tensor([1.0, 0.0], dtype=F64))
    c = torch.tensor([-1.0, 1.0], dtype=F64)
    lam, info = solve(G, c, method="frank_wolfe", radius=10.0)
    torch.testing.assert_close(lam, torch.tensor([1.0, 0.0], dtype=F64), rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    "m,rank,seed", [(4, 10, 0), (6, 3, 0), (9, 20, 0), (9, 3, 0), (12, 4, 0)],
    ids=["fast-path-drop-one", "m6-singular", "m9", "m9-rays", "m12-rays"],
)
def test_active_set_max_iter_bounds_the_work(m, rank, seed):
    # As for min_norm_simplex: a budget of k iterations stops the unlimited run's path after k, and
    # converged holds exactly when k covers it. c = -G x + p (x, p >= 0) keeps a singular G bounded.
    gen = torch.Generator().manual_seed(seed)
    G = gram(torch.randn(m, rank, generator=gen, dtype=F64))
    c = -G @ torch.rand(m, generator=gen, dtype=F64) + 0.1 * torch.rand(m, generator=gen, dtype=F64)
    lam_full, info_full = solve(G, c)
    check_solution(G, c, lam_full, info_full)
    check_max_iter_budget(solve, nonneg_kkt_residual, G, c, lambda lam: bool((lam >= 0).all()), BAR[F64])


def test_max_iter_is_respected():
    G, c, x = interior_problem()
    lam, info = solve(G, c, method="frank_wolfe", max_iter=2)
    assert int(info.iterations) <= 2
    assert not bool(info.converged)
    torch.testing.assert_close(info.kkt_residual, nonneg_kkt_residual(G, c, lam), rtol=1e-6, atol=0)
    assert bool((lam >= 0).all())


# --------------------------------------------------------------------------------------------------
# Autograd, meta tensors and torch.compile
# --------------------------------------------------------------------------------------------------


def test_inputs_that_require_grad_give_constant_multipliers():
    # PNG: G and c come from Jacobians in the graph; lambda is a constant (no warning from torch's
    # autograd fallback, no grad_fn).
    import warnings

    gen = torch.Generator().manual_seed(4)
    J = torch.randn(3, 20, generator=gen, dtype=F64, requires_grad=True)
    grad_F = torch.randn(20, generator=gen, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lam, info = solve(J @ J.T, J @ grad_F - 0.5)
        assert not lam.requires_grad and lam.grad_fn is None
        (grad_F + J.T @ lam).sum().backward()
    torch.testing.assert_close(J.grad, lam[:, None].expand(3, 20), rtol=0, atol=0)


def test_meta_tensors_and_compile():
    G, c = random_batch(6, 4, seed=32, c_kind="bounded")
    G, c = G.reshape(3, 2, 4, 4), c.reshape(3, 2, 4)
    lam, info = tm.ops.nonneg_qp(G.to("meta"), c.to("meta"), return_info=True)
    assert lam.shape == (3, 2, 4) and lam.dtype == F64 and lam.device.type == "meta"
    assert [(t.shape, t.dtype) for t in info] == [((3, 2), torch.int64), ((3, 2), F64), ((3, 2), torch.bool)]
    f = torch.compile(lambda G, c: tm.ops.nonneg_qp(G, c, return_info=True), backend="eager", fullgraph=True)
    lam, info = f(G, c)
    lam_ref, info_ref = solve(G, c)
    assert torch.equal(lam, lam_ref) and torch.equal(info.iterations, info_ref.iterations)
    torch.library.opcheck(torch.ops.torchmoo.nonneg_qp.default, (G, c))
    torch.library.opcheck(torch.ops.torchmoo.nonneg_qp.default, (G, c, "frank_wolfe", 20, 1e-6, 10.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
def test_meta_outputs_match_real_ones(dtype):
    g = torch.Generator().manual_seed(34)
    A = torch.randn(2, 3, 3, 3, generator=g, dtype=F64)
    G = (A @ A.mT + torch.eye(3, dtype=F64)).to(dtype)  # positive definite: Frank-Wolfe's bound exists
    c = torch.randn(2, 3, 3, generator=g, dtype=F64).to(dtype)
    for method in ("active_set", "frank_wolfe"):
        real = solve(G, c, method=method)
        check_meta_outputs(real, solve(G.to("meta"), c.to("meta"), method=method), dtype)


# --------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# --------------------------------------------------------------------------------------------------


@pytest.mark.cuda
class TestCuda:
    """CUDA results agree with the CPU ones and meet the same contract."""

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("B,m", [(4096, 8), (512, 2), (512, 3), (256, 16), (128, 33), (64, 64)])
    def test_matches_cpu(self, B, m, dtype):
        G, c = random_batch(B, m, seed=2000 + m, c_kind="bounded")
        # positive definite so that float32 rounding cannot change boundedness
        G = (G + 1e-3 * torch.eye(m, dtype=F64) * G.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-3)).to(dtype)
        c = c.to(dtype)
        lam_cpu, i_cpu = solve(G, c)
        lam_gpu, i_gpu = solve(G.cuda(), c.cuda())
        assert lam_gpu.device.type == "cuda" and lam_gpu.dtype == dtype and lam_gpu.shape == (B, m)
        assert i_gpu.iterations.dtype == torch.int64 and i_gpu.kkt_residual.dtype == F64
        assert bool(i_gpu.converged.all())
        r_gpu = nonneg_kkt_residual(G, c, lam_gpu.cpu())
        assert torch.all(r_gpu <= BAR[dtype]), float(r_gpu.max())
        f_cpu, f_gpu = qp_objective(G, c, lam_cpu), qp_objective(G, c, lam_gpu.cpu())
        s = G.double().abs().amax(dim=(-2, -1)).maximum(c.double().abs().amax(-1))
        big = lam_cpu.double().amax(-1).maximum(lam_gpu.cpu().double().amax(-1)).clamp_min(1.0)
        assert torch.all((f_cpu - f_gpu).abs() <= 2 * m * BAR[dtype] * s * big)
        if dtype == torch.float64:
            pd = torch.stack([torch.tensor(is_well_conditioned(g)) for g in G])
            torch.testing.assert_close(lam_gpu.cpu()[pd], lam_cpu[pd], rtol=1e-8, atol=1e-8)

    def test_unbounded_raises(self):
        G = torch.eye(3, dtype=F64, device="cuda").repeat(100, 1, 1)
        c = torch.ones(100, 3, dtype=F64, device="cuda")
        G[57, 2, 2] = 0.0
        c[57, 2] = -1.0
        with pytest.raises(ValueError, match="unbounded"):
            tm.ops.nonneg_qp(G, c)

    def test_deterministic_and_strided(self):
        G, c = random_batch(2048, 6, seed=78, c_kind="bounded")
        Gc, cc = G.cuda(), c.cuda()
        l1, l2 = solve(Gc, cc)[0], solve(Gc, cc)[0]
        assert torch.equal(l1, l2)
        big = torch.zeros(2048, 12, 18, dtype=F64, device="cuda")
        big[:, ::2, ::3] = Gc
        assert torch.equal(solve(big[:, ::2, ::3], cc)[0], l1)

    def test_empty(self):
        lam, info = solve(torch.zeros(0, 4, 4, device="cuda"), torch.zeros(0, 4, device="cuda"))
        assert lam.shape == (0, 4) and lam.is_cuda


@pytest.mark.parametrize("delta", [1e-6, 1e-8, 1e-9])
def test_reference_solves_bounded_problems_with_large_multipliers(delta):
    """Nearly parallel rows: lam* = (L, L), L = 0.1 / delta, is the unique minimizer (G is positive
    definite) and the problem is bounded. An exact lam* leaves rounding of size eps * L in G lam + c; the
    reference's enumeration must still accept it instead of reporting "unbounded", and the operator agrees."""
    G = torch.tensor([[1.0, -1.0], [-1.0, 1.0 + delta]], dtype=F64)
    L = 0.1 / delta
    lam_star = torch.tensor([L, L], dtype=F64)
    c = -(G @ lam_star)
    torch.testing.assert_close(nonneg_qp_reference(G, c), lam_star, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(tm.ops.nonneg_qp(G, c), lam_star, rtol=1e-6, atol=0.0)


# --------------------------------------------------------------------------------------------------
# Stopping rules, budgets and the Frank-Wolfe bound
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,rank,seed", [(9, 1, 32), (10, 2, 33), (4, 1, 36), (5, 2, 37)])
def test_budgeted_objective_never_increases(m, rank, seed):
    # The active-set method is a descent method: every subspace step and every zero-curvature ray step
    # lowers the objective, so the point returned under a budget of k iterations is no worse than under
    # k - 1. Singular G (rank < m) with c = -G x + p (bounded) makes the solver take ray steps.
    gen = torch.Generator().manual_seed(seed)
    G = gram(torch.randn(m, rank, generator=gen, dtype=F64))
    c = -G @ torch.rand(m, generator=gen, dtype=F64) + 0.1 * torch.rand(m, generator=gen, dtype=F64)
    _, info = solve(G, c)
    n = int(info.iterations)
    f = [float(qp_objective(G, c, tm.ops.nonneg_qp(G, c, max_iter=k))) for k in range(n + 1)]
    s = scale_of(G, c)
    for k in range(1, n + 1):
        assert f[k] <= f[k - 1] + 1e-12 * s, f"objective rose from {f[k - 1]} to {f[k]} at max_iter={k}"


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_tol_sets_the_active_set_stopping_rule(dtype):
    # G = I, c = (-1, -1e-9, ..., -1e-9), m = 10 (beyond the m <= 8 full-support path): index 0 enters
    # first; the others have reduced gradient -1e-9 at lambda = e_0, so a tolerance of 1e-8 (the float32
    # default) stops there, and 1e-13 (the float64 default) goes on to the exact answer.
    m = 10
    G = torch.eye(m, dtype=dtype)
    c = torch.full((m,), -1e-9, dtype=dtype)
    c[0] = -1.0
    e0 = torch.zeros(m, dtype=dtype)
    e0[0] = 1.0
    loose, info_loose = solve(G, c, tol=1e-8)
    tight, info_tight = solve(G, c, tol=1e-13)
    torch.testing.assert_close(loose, e0, rtol=0, atol=0)
    torch.testing.assert_close(tight, -c, rtol=1e-6, atol=0)
    assert int(info_loose.iterations) == 1 and int(info_tight.iterations) == m
    assert bool(info_loose.converged) and bool(info_tight.converged)
    default, _ = solve(G, c)
    torch.testing.assert_close(default, loose if dtype == torch.float32 else tight, rtol=0, atol=0)


@pytest.mark.parametrize("m", [2, 5])
def test_float32_nearly_singular_G_is_not_unbounded(m):
    # A positive definite float32 G with an eigenvalue of 1e-7 * max|G| (below float32's pivot tolerance
    # of the simplex problem) and c = -G 1: the problem is bounded, so no "unbounded" error; the answer
    # is that of the float32 values (computed here in float64), which the rounding of G moves far from 1.
    gen = torch.Generator().manual_seed(m)
    Q, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=F64))
    ev = torch.ones(m, dtype=F64)
    ev[-1] = 1e-7
    G = ((Q * ev) @ Q.T).float()
    G = (G + G.T) / 2
    c = -(G.double() @ torch.ones(m, dtype=F64)).float()
    lam, info = solve(G, c)
    assert bool(torch.isfinite(lam).all()) and bool((lam >= 0).all())
    assert float(nonneg_kkt_residual(G.double(), c.double(), lam.double())) <= 1e-5
    assert bool(info.converged)


def _fw_reference(G, c, R):
    """min 0.5 l'Gl + c'l over {l >= 0, sum(l) <= R} by quadprog (G positive definite)."""
    quadprog = pytest.importorskip("quadprog")
    m = G.shape[-1]
    C = np.concatenate([np.eye(m), -np.ones((m, 1))], axis=1)
    b = np.concatenate([np.zeros(m), [-R]])
    return torch.from_numpy(quadprog.solve_qp(G.numpy(), -c.numpy(), C, b, 0)[0])


@pytest.mark.parametrize("seed", [0, 2, 3, 6])
@pytest.mark.parametrize("radius", [None, 0.3])
def test_frank_wolfe_converges_to_its_tolerance(seed, radius):
    # Away-step Frank-Wolfe converges linearly on a strongly convex problem, and its stopping test bounds
    # the suboptimality: f(lambda) - f* <= tol * s on {lambda >= 0, sum <= R} (the certified R contains
    # the unconstrained minimizer; R = 0.3 binds).
    gen = torch.Generator().manual_seed(seed)
    m = 3 + seed % 4
    G = gram(torch.randn(m, m + 2, generator=gen, dtype=F64))
    c = torch.randn(m, generator=gen, dtype=F64)
    tol = 1e-9
    lam, info = solve(G, c, method="frank_wolfe", tol=tol, max_iter=20000, radius=radius)
    assert bool(info.converged)
    assert bool((lam >= 0).all())
    ref = nonneg_qp_reference(G, c) if radius is None else _fw_reference(G, c, radius)
    if radius is not None:
        assert float(lam.sum()) <= radius * (1 + 1e-12)
    f, f_ref = float(qp_objective(G, c, lam)), float(qp_objective(G, c, ref))
    assert f_ref - 1e-12 <= f <= f_ref + tol * scale_of(G, c) + 1e-12, (f, f_ref)


@pytest.mark.parametrize("seed", range(6))
def test_frank_wolfe_without_a_certified_bound_raises(seed):
    # Rows a and -0.7 a: G is singular on the simplex, w'Gw = 0 at w ~ (0.7, 1, 0) up to round-off, so no
    # bound on sum(lambda) can be certified (and with c < 0 there the problem is unbounded).
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(4, generator=gen, dtype=F64)
    J = torch.stack([a, -0.7 * a, torch.randn(4, generator=gen, dtype=F64)])
    G = gram(J)
    c = torch.tensor([-1.0, -0.5, 0.3], dtype=F64)
    with pytest.raises(ValueError, match="bound"):
        solve(G, c, method="frank_wolfe")
