"""Tests of torchmoo.ops.min_norm_simplex: min over the probability simplex of 0.5 w'Gw + c'w.

The operator is checked against the contract (KKT residual bars, shapes, dtypes, strides, batching,
determinism), against the slow reference solver of torchmoo.reference (objective values; w itself
only where G is positive definite, so the minimizer is unique), against quadprog, and against
closed-form answers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import torchmoo as tm
from conftest import (
    F64, KINDS, Problem, check_max_iter_budget, check_meta_outputs, gram, is_well_conditioned,
    make_jacobian, random_batch, scale_of,
)
from torchmoo.reference import (
    min_norm_simplex_reference,
    qp_objective,
    simplex_kkt_residual,
)

BAR = {torch.float64: 1e-10, torch.float32: 1e-5}

# --------------------------------------------------------------------------------------------------
# Problem generators
# --------------------------------------------------------------------------------------------------

SIMPLEX_C_KINDS = ("none", "zero", "random", "constant", "range")


@st.composite
def problems(draw, max_m: int = 8, kinds=KINDS, c_kinds=SIMPLEX_C_KINDS) -> Problem:
    """A Problem with m <= max_m, scale 10^e for e in [-12, 12]; its repr reproduces it."""
    return Problem(
        kind=draw(st.sampled_from(kinds)),
        m=draw(st.integers(1, max_m)),
        n=draw(st.integers(1, 6)),
        seed=draw(st.integers(0, 2**31 - 1)),
        e=draw(st.integers(-12, 12)),
        c_kind=draw(st.sampled_from(c_kinds)),
    )


def solve(G, c=None, **kw):
    return tm.ops.min_norm_simplex(G, c, return_info=True, **kw)


def check_solution(G, c, w, info, dtype=F64):
    """Contract checks shared by most tests; returns the residual computed here."""
    assert w.dtype == G.dtype and w.shape == G.shape[:-1] and w.device == G.device
    r = simplex_kkt_residual(G, c, w)
    assert r.shape == G.shape[:-2]
    assert torch.all(r <= BAR[dtype]), f"KKT residual {r.max().item():.3e} above {BAR[dtype]:.0e}"
    assert info.iterations.dtype == torch.int64 and info.iterations.shape == G.shape[:-2]
    assert info.kkt_residual.dtype == F64 and info.kkt_residual.shape == G.shape[:-2]
    assert info.converged.dtype == torch.bool and info.converged.shape == G.shape[:-2]
    assert bool(info.converged.all())
    assert torch.all(info.kkt_residual <= BAR[dtype])
    return r


# --------------------------------------------------------------------------------------------------
# Property tests against the reference
# --------------------------------------------------------------------------------------------------


@given(problems())
def test_matches_reference_float64(problem):
    G, c = problem.G, problem.c
    w, info = solve(G, c)
    r = check_solution(G, c, w, info)
    # the operator's own residual is the contract's residual of the returned point
    assert torch.allclose(info.kkt_residual, r, rtol=1e-6, atol=1e-13)
    w_ref = min_norm_simplex_reference(G, c)
    s = scale_of(G, c)
    f, f_ref = float(qp_objective(G, c, w)), float(qp_objective(G, c, w_ref))
    assert abs(f - f_ref) <= 1e-9 * s, (f, f_ref)
    if is_well_conditioned(G):
        torch.testing.assert_close(w, w_ref, rtol=0, atol=1e-8)


@given(problems(max_m=6))
@example(Problem("lowrank", m=3, n=1, seed=0, e=0, c_kind="none"))
@example(Problem("parallel", m=4, n=3, seed=2432, e=-5, c_kind="range"))  # active set cycled here
def test_matches_reference_float32(problem):
    G64, c64 = problem.G, problem.c
    G = G64.float()
    c = None if c64 is None else c64.float()
    w, info = solve(G, c)
    check_solution(G, c, w, info, dtype=torch.float32)
    w_ref = min_norm_simplex_reference(G, c)  # the reference solves the float32 data exactly
    s = scale_of(G.double(), None if c is None else c.double())
    f, f_ref = float(qp_objective(G, c, w)), float(qp_objective(G, c, w_ref))
    assert abs(f - f_ref) <= 1e-5 * s, (f, f_ref)


@pytest.mark.parametrize("kind", ["lowrank", "duplicate", "parallel", "antiparallel", "zero_rows"])
def test_float32_rank_deficient_grams(kind):
    # Rounding a singular Gram matrix to float32 leaves eigenvalues of about +-1e-8 * max|G|: such G are
    # "rank-deficient", not "clearly non-PSD", and must be solved to the float32 bar.
    failures = []
    for seed in range(150):
        p = Problem(kind, m=3 + seed % 4, n=1 + seed % 3, seed=seed, e=seed % 9 - 4)
        G = p.G.float()
        try:
            w, info = solve(G)
        except ValueError as err:
            failures.append((p, f"raised {err}"))
            continue
        r = float(simplex_kkt_residual(G, None, w))
        if r > BAR[torch.float32] or bool(info.converged) and float(info.kkt_residual) > BAR[torch.float32]:
            failures.append((p, f"residual {r:.2e}, sum(w) - 1 = {float(w.double().sum()) - 1:.1e}, {info}"))
    assert not failures, f"{len(failures)} of 150 failed, e.g. {failures[:3]}"


@given(problems(max_m=6))
@settings(max_examples=30)
def test_matches_quadprog(problem):
    quadprog = pytest.importorskip("quadprog")
    G, c = problem.G, problem.c
    m = G.shape[-1]
    w, _ = solve(G, c)
    s = scale_of(G, c)
    # quadprog needs strictly positive definite G: solve the scaled problem with a tiny ridge and
    # compare objective values of the unregularized problem (the ridge moves them by <= 5e-10).
    Gs = (G / s).numpy()
    cs = np.zeros(m) if c is None else (c / s).numpy()
    ridge = 1e-9
    C = np.concatenate([np.ones((m, 1)), np.eye(m)], axis=1)
    b = np.concatenate([[1.0], np.zeros(m)])
    x_qp = quadprog.solve_qp(Gs + ridge * np.eye(m), -cs, C, b, 1)[0]
    x_qp = np.clip(x_qp, 0.0, None)
    x_qp /= x_qp.sum()
    f_qp = 0.5 * x_qp @ Gs @ x_qp + cs @ x_qp
    f_op = float(qp_objective(G / s, None if c is None else c / s, w))
    # x_qp is feasible, so f_qp >= f*: the operator must do at least as well as quadprog
    assert f_op <= f_qp + 1e-9, (f_op, f_qp)
    if is_well_conditioned(G):  # there quadprog is accurate too, and the values must agree
        assert f_op >= f_qp - 1e-9, (f_op, f_qp)


@given(
    st.integers(1, 6),
    st.integers(0, 2**31 - 1),
    st.integers(-12, 12),
)
def test_two_gradients_closed_form(n, seed, e):
    gen = torch.Generator().manual_seed(seed)
    g1 = torch.randn(n, generator=gen, dtype=F64)
    g2 = torch.randn(n, generator=gen, dtype=F64) * float(torch.empty(1, dtype=F64).uniform_(0.2, 5, generator=gen))
    diff = float((g1 - g2).dot(g1 - g2))
    if diff < 1e-3 * float(g1.dot(g1) + g2.dot(g2)):
        return  # nearly equal gradients: w is ill-determined
    J = torch.stack([g1, g2])
    G = gram(J, 10.0**e)
    w = tm.ops.min_norm_simplex(G)
    w1 = min(max(float((g2 - g1).dot(g2)) / diff, 0.0), 1.0)
    torch.testing.assert_close(w, torch.tensor([w1, 1.0 - w1], dtype=F64), rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# Closed-form and degenerate cases
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 3, 7, 8, 9, 16, 64, 256])
@pytest.mark.parametrize("scale", [1e-12, 1.0, 1e12])
def test_identity_gives_uniform(m, scale):
    G = torch.eye(m, dtype=F64) * scale
    w, info = solve(G)
    check_solution(G, None, w, info)
    torch.testing.assert_close(w, torch.full((m,), 1.0 / m, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("m", [1, 2, 5, 8, 13])
def test_zero_problem_gives_uniform(m):
    for c in (None, torch.zeros(m, dtype=F64)):
        w, info = solve(torch.zeros(m, m, dtype=F64), c)
        assert torch.equal(w, torch.full((m,), 1.0 / m, dtype=F64))
    w, info = solve(torch.zeros(3, m, m, dtype=torch.float32))
    assert torch.equal(w, torch.full((3, m), 1.0 / m, dtype=torch.float32))


def test_zero_G_linear_term_picks_smallest_c():
    G = torch.zeros(4, 4, dtype=F64)
    c = torch.tensor([3.0, -1.0, 2.0, 0.5], dtype=F64)
    w, info = solve(G, c)
    check_solution(G, c, w, info)
    torch.testing.assert_close(w, torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=F64), rtol=0, atol=1e-12)
    # a tie: every split between the two smallest entries is optimal
    c = torch.tensor([-2.0, 1.0, -2.0], dtype=F64)
    w, info = solve(torch.zeros(3, 3, dtype=F64), c)
    check_solution(torch.zeros(3, 3, dtype=F64), c, w, info)
    assert abs(float(w[1])) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_m_equals_one(dtype):
    for g, cv in [(0.0, None), (2.5, None), (1e-12, 3.0), (1e12, -7.0), (0.0, -1.0)]:
        G = torch.tensor([[g]], dtype=dtype)
        c = None if cv is None else torch.tensor([cv], dtype=dtype)
        w, info = solve(G, c)
        assert torch.equal(w, torch.ones(1, dtype=dtype))
        assert bool(info.converged)


def test_known_three_gradient_answer():
    # g1 = (1, 0), g2 = (0, 1), g3 = (1, 1): the min-norm point of the hull is (1/2, 1/2) = (g1 + g2)/2
    J = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=F64)
    w, info = solve(gram(J))
    check_solution(gram(J), None, w, info)
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5, 0.0], dtype=F64), rtol=0, atol=1e-12)
    # opposite gradients: 0 is in the hull, min norm 0
    J = torch.tensor([[1.0, 2.0], [-2.0, -4.0]], dtype=F64)
    w, _ = solve(gram(J))
    torch.testing.assert_close(w, torch.tensor([2.0 / 3.0, 1.0 / 3.0], dtype=F64), rtol=0, atol=1e-12)


def test_duplicated_gradients_split_the_weight_of_one():
    # duplicating a gradient does not change the hull: the duplicates' weights add up to the weight the
    # gradient gets without the duplicate (the unique problem has a positive definite G)
    gen = torch.Generator().manual_seed(5)
    J = torch.randn(4, 9, generator=gen, dtype=F64)
    w_unique = min_norm_simplex_reference(gram(J))
    J_dup = torch.cat([J, J[1:2], J[1:2]])  # gradient 1 three times
    w, info = solve(gram(J_dup))
    check_solution(gram(J_dup), None, w, info)
    merged = torch.stack([w[0], w[1] + w[4] + w[5], w[2], w[3]])
    torch.testing.assert_close(merged, w_unique, rtol=0, atol=1e-10)


@pytest.mark.parametrize("e", [-12, -8, -4, 4, 8, 12])
def test_scale_invariance(e):
    gen = torch.Generator().manual_seed(11)
    J = torch.randn(6, 10, generator=gen, dtype=F64)
    c = torch.randn(6, generator=gen, dtype=F64)
    G = gram(J)
    w1 = tm.ops.min_norm_simplex(G, c)
    ws = tm.ops.min_norm_simplex(G * 10.0**e, c * 10.0**e)
    torch.testing.assert_close(ws, w1, rtol=0, atol=1e-10)


@pytest.mark.parametrize("m", [2, 5, 10])
@pytest.mark.parametrize("with_c", [False, True])
def test_subnormal_scale(m, with_c):
    # G and c scaled by 2^-1060 (subnormal float64, exact for these integer matrices): 1 / max|G| overflows,
    # so the solver must rescale; the scaled problem then is the unscaled one, bit for bit for the general
    # solver (m > 8). For m <= 8 the unscaled one takes the CPU fast path, the subnormal one the general
    # solver: the same answer to rounding.
    gen = torch.Generator().manual_seed(m)
    J = torch.randint(-3, 4, (m, m + 1), generator=gen).to(F64)
    G, c = J @ J.T, (torch.randint(-5, 6, (m,), generator=gen).to(F64) if with_c else None)
    tiny = 2.0**-1060
    w, info = solve(G * tiny, None if c is None else c * tiny)
    w_ref, info_ref = solve(G, c)
    assert bool(info.converged) and float(info.kkt_residual) <= 1e-14
    if m > 8:
        assert torch.equal(w, w_ref) and torch.equal(info.kkt_residual, info_ref.kkt_residual)
    else:
        torch.testing.assert_close(w, w_ref, rtol=0, atol=1e-14)
    # a decimal subnormal scale (not exact): the answer of G itself up to the rounding of the input
    G2 = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=F64)
    torch.testing.assert_close(tm.ops.min_norm_simplex(G2 * 1e-310), torch.tensor([2 / 3, 1 / 3], dtype=F64))


@pytest.mark.parametrize("m", [2, 10])
def test_entries_near_the_float64_limit(m):
    # Off-diagonal entries of 2^1023: (a + b) / 2 must not overflow on the way. G = 2^1023 (I / 2 + 11')
    # has entries 2^1023 and 1.5 * 2^1023 (finite); its simplex minimizer is uniform.
    G = (0.5 * torch.eye(m, dtype=F64) + torch.ones(m, m, dtype=F64)) * 2.0**1023
    assert bool(torch.isfinite(G).all()) and not bool(torch.isfinite(G[0, 1] + G[1, 0]))
    w = tm.ops.min_norm_simplex(G)
    torch.testing.assert_close(w, torch.full((m,), 1.0 / m, dtype=F64), rtol=0, atol=1e-15)
    G2 = torch.tensor([[1.7e308, -1.7e308], [-1.7e308, 1.7e308]], dtype=F64)  # singular, symmetric
    c = torch.tensor([1.0, 0.0], dtype=F64) * 1e307
    torch.testing.assert_close(
        tm.ops.min_norm_simplex(G2, c), min_norm_simplex_reference(G2 / 1e307, c / 1e307), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("m,n", [(256, 300), (256, 24)])
def test_m_256(m, n):
    gen = torch.Generator().manual_seed(m + n)
    J = torch.randn(m, n, generator=gen, dtype=F64)
    G = gram(J)
    c = torch.randn(m, generator=gen, dtype=F64) * 0.1
    for cc in (None, c):
        w, info = solve(G, cc)
        check_solution(G, cc, w, info)
        w_ref = min_norm_simplex_reference(G, cc)
        f, f_ref = float(qp_objective(G, cc, w)), float(qp_objective(G, cc, w_ref))
        assert abs(f - f_ref) <= 1e-9 * scale_of(G, cc), (f, f_ref)


@pytest.mark.parametrize("m", [13, 33, 64])
def test_medium_m_matches_reference(m):
    gen = torch.Generator().manual_seed(m)
    for n in (m // 3, 2 * m):
        J = torch.randn(m, n, generator=gen, dtype=F64)
        G = gram(J)
        w, info = solve(G)
        check_solution(G, None, w, info)
        w_ref = min_norm_simplex_reference(G)
        assert abs(float(qp_objective(G, None, w) - qp_objective(G, None, w_ref))) <= 1e-9 * scale_of(G, None)


# --------------------------------------------------------------------------------------------------
# Batching, strides, dtypes, determinism
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 9, 17])
def test_batched_equals_per_problem(m):
    G, c = random_batch(37, m, seed=m)
    w, info = solve(G, c)
    check_solution(G, c, w, info)
    for b in range(G.shape[0]):
        wb, ib = solve(G[b], c[b])
        assert torch.equal(w[b], wb), f"problem {b}: batched {w[b].tolist()} vs alone {wb.tolist()}"
        assert torch.equal(info.iterations[b], ib.iterations)
        assert torch.equal(info.kkt_residual[b], ib.kkt_residual)


@pytest.mark.parametrize("m", [2, 5, 8])
def test_partial_supports_in_a_batch_match_reference(m):
    # Gradient norms spread over e^N(0, 1): many solutions have one or more zero weights, so the CPU
    # batch exercises the full-support pass, the drop-one pass (gathered across blocks) and the
    # active-set fallback together.
    gen = torch.Generator().manual_seed(m)
    J = torch.randn(200, m, 3 * m, generator=gen, dtype=F64)
    J = J * torch.randn(200, m, 1, generator=gen, dtype=F64).exp()
    G = J @ J.mT
    w, info = solve(G)
    check_solution(G, None, w, info)
    support = (w > 0).sum(-1)
    assert int((support == m).sum()) > 0 and int((support == m - 1).sum()) > 0
    assert m < 5 or int((support < m - 1).sum()) > 0
    w_ref = min_norm_simplex_reference(G)
    f, f_ref = qp_objective(G, None, w), qp_objective(G, None, w_ref)
    s = G.abs().amax(dim=(-2, -1))
    assert torch.all(f - f_ref <= 1e-12 * s), float((f - f_ref).max())


@pytest.mark.parametrize("m", [3, 8, 12])
def test_several_leading_dims(m):
    G, c = random_batch(24, m, seed=100 + m)
    G5, c5 = G.reshape(2, 3, 4, m, m), c.reshape(2, 3, 4, m)
    w, info = solve(G5, c5)
    assert w.shape == (2, 3, 4, m)
    check_solution(G5, c5, w, info)
    w_flat, _ = solve(G, c)
    assert torch.equal(w.reshape(24, m), w_flat)
    w_ref = min_norm_simplex_reference(G5, c5)
    s = G5.abs().amax(dim=(-2, -1)).maximum(c5.abs().amax(-1))
    assert torch.all((qp_objective(G5, c5, w) - qp_objective(G5, c5, w_ref)).abs() <= 1e-9 * s)


@pytest.mark.parametrize("m", [2, 5, 8, 11])
def test_non_contiguous_inputs(m):
    G, c = random_batch(6, m, seed=200 + m)
    w, _ = solve(G, c)
    # transposed view (G symmetric so G.mT is the same matrix with swapped strides)
    Gt = G.mT
    assert not Gt.is_contiguous()
    assert torch.equal(solve(Gt, c)[0], w)
    # strided view of a larger tensor
    big = torch.zeros(6, 2 * m, 3 * m, dtype=F64)
    big[:, ::2, ::3] = G
    cbig = torch.zeros(6, 2 * m, dtype=F64)
    cbig[:, 1::2] = c
    Gv, cv = big[:, ::2, ::3], cbig[:, 1::2]
    assert not Gv.is_contiguous() and not cv.is_contiguous()
    assert torch.equal(solve(Gv, cv)[0], w)
    # batch dimension last, permuted to the front
    Gp = G.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    cp = c.T.contiguous().T
    assert torch.equal(solve(Gp, cp)[0], w)
    # stride-0 batch (expand)
    Ge, ce = G[2].expand(5, m, m), c[2].expand(5, m)
    we = solve(Ge, ce)[0]
    assert torch.equal(we, w[2].expand(5, m))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_and_bfloat16_are_upcast(dtype):
    G, c = random_batch(20, 5, seed=7)
    # positive definite: rounding a singular G to half precision can make it indefinite at the 1e-3 level
    G = G + torch.eye(5, dtype=F64) * G.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1.0)
    s = G.abs().amax(dim=(-2, -1)).maximum(c.abs().amax(-1)).clamp_min(1e-300)
    G, c = (G / s[:, None, None]).to(dtype), (c / s[:, None]).to(dtype)  # keep the values in half's range
    w = tm.ops.min_norm_simplex(G, c)
    assert w.dtype == dtype and w.shape == (20, 5)
    # internally float64: close to the float64 solution of the (exactly upcast) input, and a KKT point
    # of it up to the output rounding (the solver may stop earlier for a half-precision result)
    w64 = tm.ops.min_norm_simplex(G.double(), c.double())
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(w.double(), w64, rtol=0, atol=4 * eps)
    assert torch.all(simplex_kkt_residual(G, c, w) <= 4 * 5 * eps)
    assert torch.all(w >= 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4)])
def test_empty_batch(dtype, shape):
    m = 4
    G = torch.zeros(*shape, m, m, dtype=dtype)
    c = torch.zeros(*shape, m, dtype=dtype)
    for cc in (None, c):
        w, info = solve(G, cc)
        assert w.shape == (*shape, m) and w.dtype == dtype
        assert info.iterations.shape == shape and info.kkt_residual.shape == shape
        assert info.converged.shape == shape


@pytest.mark.parametrize("m", [2, 8, 10])
def test_deterministic(m):
    G, c = random_batch(3000, m, seed=300 + m)  # big enough to be split over threads
    w1, i1 = solve(G, c)
    w2, i2 = solve(G, c)
    assert torch.equal(w1, w2)
    assert torch.equal(i1.iterations, i2.iterations)
    assert torch.equal(i1.kkt_residual, i2.kkt_residual)
    assert torch.equal(i1.converged, i2.converged)


def test_output_does_not_alias_or_modify_input():
    G, c = random_batch(4, 5, seed=9)
    G0, c0 = G.clone(), c.clone()
    w = tm.ops.min_norm_simplex(G, c)
    assert torch.equal(G, G0) and torch.equal(c, c0)
    w.add_(1.0)
    assert torch.equal(G, G0)


# --------------------------------------------------------------------------------------------------
# Frank-Wolfe and iteration control
# --------------------------------------------------------------------------------------------------


def interior_problem(m: int = 5, seed: int = 1):
    """Well-conditioned G whose minimizer on the simplex has full support (checked)."""
    gen = torch.Generator().manual_seed(seed)
    J = torch.eye(m, dtype=F64) + 0.15 * torch.randn(m, m, generator=gen, dtype=F64)
    G = gram(J)
    w = min_norm_simplex_reference(G)
    assert bool((w > 0.02).all()) and is_well_conditioned(G, 100.0)
    return G, w


def test_frank_wolfe_is_feasible_and_approximately_optimal():
    G, w_star = interior_problem()
    w, info = solve(G, method="frank_wolfe")
    assert w.dtype == F64
    assert bool((w >= 0).all()) and abs(float(w.sum()) - 1.0) <= 1e-12
    r = simplex_kkt_residual(G, None, w)
    assert float(r) <= 1e-3
    # approximate, not exact: the active-set answer is much more accurate
    assert not torch.equal(w, tm.ops.min_norm_simplex(G))
    assert float(r) > 1e-13
    torch.testing.assert_close(info.kkt_residual, r, rtol=1e-6, atol=0)
    f, f_star = float(qp_objective(G, None, w)), float(qp_objective(G, None, w_star))
    assert f_star - 1e-12 <= f <= f_star + 1e-3 * float(G.abs().max())


def test_frank_wolfe_batched_and_float32():
    G, c = random_batch(50, 4, seed=21)
    G = G + torch.eye(4, dtype=F64) * G.abs().amax(dim=(-2, -1), keepdim=True)  # well conditioned
    for dtype in (torch.float64, torch.float32):
        Gd, cd = G.to(dtype), c.to(dtype)
        w, info = solve(Gd, cd, method="frank_wolfe")
        assert w.dtype == dtype
        r = simplex_kkt_residual(Gd, cd, w)
        assert torch.all(r <= 1e-3)
        assert torch.all(w >= 0)


def test_max_iter_is_respected():
    G, _ = interior_problem()
    w, info = solve(G, method="frank_wolfe", max_iter=3)
    assert int(info.iterations) <= 3
    assert not bool(info.converged)
    r = simplex_kkt_residual(G, None, w)
    torch.testing.assert_close(info.kkt_residual, r, rtol=1e-6, atol=0)
    assert float(r) > 1e-6  # three Frank-Wolfe steps cannot solve an interior problem
    # feasible even when stopped early
    assert bool((w >= 0).all()) and abs(float(w.sum()) - 1.0) <= 1e-12


def budget_problem(m: int, rank: int, seed: int, with_c: bool):
    """G = J J^T with J (m, rank) random, optionally a random c; rank < m makes the active set take ray steps."""
    gen = torch.Generator().manual_seed(seed)
    G = gram(torch.randn(m, rank, generator=gen, dtype=F64))
    c = torch.randn(m, generator=gen, dtype=F64) if with_c else None
    return G, c


@pytest.mark.parametrize(
    "m,rank,seed,with_c",
    [(3, 10, 0, False), (5, 10, 0, True), (5, 10, 1, True), (8, 3, 4, True), (9, 20, 0, False),
     (12, 20, 0, False), (9, 3, 6, True), (12, 4, 1, True)],
    ids=["fast-path", "fast-path-drop-one", "m5-fallback", "m8-singular", "m9-drops", "m12-drops", "m9-rays",
         "m12-rays"],
)
def test_active_set_max_iter_bounds_the_work(m, rank, seed, with_c):
    # With a budget of k iterations the solver follows the unlimited run's path and stops when it
    # would need a (k+1)-th: at most k are reported, and converged holds exactly when k covers the
    # unlimited run (a stopped run used to report converged with a KKT residual of 1e-2, and
    # iterations above the cap: 2 for m = 9 and max_iter = 0).
    G, c = budget_problem(m, rank, seed, with_c)
    w_full, info_full = solve(G, c)
    check_solution(G, c, w_full, info_full)
    check_max_iter_budget(solve, simplex_kkt_residual, G, c,
                          lambda w: bool((w >= 0).all()) and abs(float(w.sum()) - 1.0) <= 1e-12, BAR[F64])


def test_frank_wolfe_tolerance_changes_the_answer():
    G, _ = interior_problem()
    w_loose, i_loose = solve(G, method="frank_wolfe", tol=1e-2)
    w_tight, i_tight = solve(G, method="frank_wolfe", tol=1e-8, max_iter=100000)
    assert int(i_loose.iterations) < int(i_tight.iterations)
    assert float(i_tight.kkt_residual) < float(i_loose.kkt_residual)


# --------------------------------------------------------------------------------------------------
# Autograd, meta tensors and torch.compile
# --------------------------------------------------------------------------------------------------


def test_inputs_that_require_grad_give_constant_weights():
    # MGDA: G = J J^T is built from a Jacobian in the graph; w is a constant weight, so the gradient
    # of a loss of d = J^T w is that of J alone (no warning from torch's autograd fallback).
    import warnings

    gen = torch.Generator().manual_seed(3)
    J = torch.randn(3, 20, generator=gen, dtype=F64, requires_grad=True)
    c = torch.randn(3, generator=gen, dtype=F64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w, info = solve(J @ J.T, c)
        assert not w.requires_grad and w.grad_fn is None
        ((J.T @ w) ** 2).sum().backward()
    torch.testing.assert_close(w, tm.ops.min_norm_simplex((J @ J.T).detach(), c.detach()), rtol=0, atol=0)
    torch.testing.assert_close(J.grad, 2 * torch.outer(w, J.detach().T @ w), rtol=1e-14, atol=1e-14)


def test_meta_tensors_and_compile():
    G, c = random_batch(6, 4, seed=31)
    G, c = G.reshape(2, 3, 4, 4), c.reshape(2, 3, 4)
    w, info = tm.ops.min_norm_simplex(G.to("meta"), c.to("meta"), return_info=True)
    assert w.shape == (2, 3, 4) and w.dtype == F64 and w.device.type == "meta"
    assert [(t.shape, t.dtype) for t in info] == [((2, 3), torch.int64), ((2, 3), F64), ((2, 3), torch.bool)]
    assert tm.ops.min_norm_simplex(torch.empty(5, 2, 2, dtype=torch.float16, device="meta")).dtype == torch.float16
    f = torch.compile(lambda G, c: tm.ops.min_norm_simplex(G, c, return_info=True), backend="eager", fullgraph=True)
    w, info = f(G, c)
    w_ref, info_ref = solve(G, c)
    assert torch.equal(w, w_ref) and torch.equal(info.iterations, info_ref.iterations)
    torch.library.opcheck(torch.ops.torchmoo.min_norm_simplex.default, (G, c))
    torch.library.opcheck(torch.ops.torchmoo.min_norm_simplex.default, (G[:0], None, "frank_wolfe", 10, 1e-6))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
def test_meta_outputs_match_real_ones(dtype):
    G, c = random_batch(6, 3, seed=33)
    G, c = G.reshape(3, 2, 3, 3).to(dtype), c.reshape(3, 2, 3).to(dtype)
    for cc in (None, c):
        real = solve(G, cc)
        check_meta_outputs(real, solve(G.to("meta"), None if cc is None else cc.to("meta")), dtype)


def test_kkt_residual_of_infeasible_and_suboptimal_points():
    # The residual the tests hold the operator to, at points with analytic values. G = 0, c = 0: every
    # point of the simplex is optimal, so only the negativity and the sum terms can be nonzero.
    Z = torch.zeros(2, 2, dtype=F64)
    for w, expected in [((1.0, 0.0), 0.0), ((1.5, -0.5), 0.5), ((0.5, 0.4), 0.1), ((0.7, 0.7), 0.4)]:
        assert float(simplex_kkt_residual(Z, None, torch.tensor(w, dtype=F64))) == pytest.approx(expected, abs=1e-15)
    # G = I, c = (0, 1): g = w + c. At w = (0.5, 0.5), g = (0.5, 1.5) and sum w_i (g_i - min g) = 0.5,
    # relative to s = max(max|G|, max|c|), so scaling the problem does not change it.
    G, c, w = torch.eye(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), torch.tensor([0.5, 0.5], dtype=F64)
    for scale in (1.0, 1e6, 1e-6):
        assert float(simplex_kkt_residual(scale * G, scale * c, w)) == pytest.approx(0.5, abs=1e-14)
    assert float(simplex_kkt_residual(G, c, torch.tensor([1.0, 0.0], dtype=F64))) == 0.0


def test_ill_conditioned_small_problems_meet_the_bar():
    # Condition number 1e10, m = 3: the full-support solve of the m <= 8 path loses about cond * eps in
    # its weights, so only its KKT check keeps such lanes to the contract's residual (the rest go to the
    # active-set method).
    gen = torch.Generator().manual_seed(0)
    B, m = 600, 3
    Q, _ = torch.linalg.qr(torch.randn(B, m, m, generator=gen, dtype=F64))
    ev = torch.tensor([1.0, 1e-5, 1e-10], dtype=F64)
    G = (Q * ev) @ Q.mT
    G = (G + G.mT) / 2
    c = 1e-3 * torch.randn(B, m, generator=gen, dtype=F64)
    w, info = solve(G, c)
    check_solution(G, c, w, info)


# --------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# --------------------------------------------------------------------------------------------------


@pytest.mark.cuda
class TestCuda:
    """CUDA results agree with the CPU ones and meet the same contract."""

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("B,m", [(4096, 8), (512, 2), (512, 3), (256, 16), (128, 33), (64, 64)])
    def test_matches_cpu(self, B, m, dtype):
        G, c = random_batch(B, m, seed=1000 + m, dtype=dtype)
        if dtype == torch.float32:  # keep to problems whose float32 rounding stays clearly PSD
            G = G + 1e-3 * torch.eye(m, dtype=dtype) * G.abs().amax(dim=(-2, -1), keepdim=True)
        for cc in (None, c):
            w_cpu, i_cpu = solve(G, cc)
            w_gpu, i_gpu = solve(G.cuda(), None if cc is None else cc.cuda())
            assert w_gpu.device.type == "cuda" and w_gpu.dtype == dtype and w_gpu.shape == (B, m)
            assert i_gpu.iterations.dtype == torch.int64 and i_gpu.kkt_residual.dtype == F64
            assert i_gpu.converged.dtype == torch.bool and i_gpu.kkt_residual.shape == (B,)
            assert bool(i_gpu.converged.all())
            r_gpu = simplex_kkt_residual(G, cc, w_gpu.cpu())
            assert torch.all(r_gpu <= BAR[dtype]), float(r_gpu.max())
            f_cpu, f_gpu = qp_objective(G, cc, w_cpu), qp_objective(G, cc, w_gpu.cpu())
            s = G.double().abs().amax(dim=(-2, -1))
            if cc is not None:
                s = s.maximum(cc.double().abs().amax(-1))
            assert torch.all((f_cpu - f_gpu).abs() <= BAR[dtype] * 10 * s.clamp_min(1e-300))
            if dtype == torch.float64:
                pd = torch.stack([torch.tensor(is_well_conditioned(g)) for g in G])
                torch.testing.assert_close(w_gpu.cpu()[pd], w_cpu[pd], rtol=0, atol=1e-8)

    def test_deterministic_and_strided(self):
        G, c = random_batch(2048, 6, seed=77)
        Gc, cc = G.cuda(), c.cuda()
        w1, w2 = solve(Gc, cc)[0], solve(Gc, cc)[0]
        assert torch.equal(w1, w2)
        big = torch.zeros(2048, 12, 18, dtype=F64, device="cuda")
        big[:, ::2, ::3] = Gc
        assert torch.equal(solve(big[:, ::2, ::3], cc)[0], w1)
        assert torch.equal(solve(Gc.mT, cc)[0], w1)

    def test_empty_and_half(self):
        w, info = solve(torch.zeros(0, 4, 4, device="cuda"), None)
        assert w.shape == (0, 4) and w.is_cuda and info.kkt_residual.shape == (0,)
        G = torch.eye(5, device="cuda", dtype=torch.float16).expand(3, 5, 5)
        w = tm.ops.min_norm_simplex(G)
        assert w.dtype == torch.float16 and torch.allclose(w.float(), torch.full((3, 5), 0.2, device="cuda"), atol=1e-3)

    def test_m_256(self):
        gen = torch.Generator().manual_seed(4)
        J = torch.randn(2, 256, 64, generator=gen, dtype=F64)
        G = J @ J.mT
        G = (G + G.mT) / 2
        w = tm.ops.min_norm_simplex(G.cuda()).cpu()
        assert torch.all(simplex_kkt_residual(G, None, w) <= 1e-10)
        ref = tm.ops.min_norm_simplex(G)
        assert torch.allclose(qp_objective(G, None, w), qp_objective(G, None, ref), rtol=1e-9, atol=1e-12)

