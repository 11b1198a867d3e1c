"""Tests of ``torchmoo.ops.minres``: scipy's iterates, the reference, dense solves and Hessian-vector products.

What a wrong implementation would violate:

* the iterates ``x_j`` of ``scipy.sparse.linalg.minres`` (recorded by its callback), to rounding, on
  SPD, indefinite, shifted and singular (consistent and inconsistent) matrices;
* the true residual ``||b - (H - shift I) x_j||`` (the reported residual norms are the recurrence's);
* the monotone decrease of the residual norms and the meaning of every stop reason;
* ``k`` right-hand sides at once == ``k`` separate solves; ``minres_reference`` (same recurrence in torch);
* a dense solve with the Hessian of a small network built by ``torch.autograd.functional.hessian``,
  with ``matvec`` the double-backward HVP of ``torchmoo.autograd``;
* clear errors for bad input and for a bad ``matvec``.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import pytest
import torch
from torch import Tensor

import torchmoo as tm
from torchmoo.reference import minres_reference

sla = pytest.importorskip("scipy.sparse.linalg")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

F64 = torch.float64


def sym_matrix(eigs, seed: int, dtype=F64) -> Tuple[Tensor, Tensor]:
    """``Q diag(eigs) Q^T`` (exactly symmetric) and ``Q``, with ``Q`` a random orthogonal matrix."""
    g = torch.Generator().manual_seed(seed)
    eigs = torch.as_tensor(eigs, dtype=F64)
    n = eigs.numel()
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=g))
    A = (Q * eigs) @ Q.T
    return ((A + A.T) / 2).to(dtype), Q


def randn(*shape, seed: int, dtype=F64) -> Tensor:
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed)).to(dtype)


def matvec_of(A: Tensor):
    """``v -> A v`` for ``v`` of shape ``(n,)`` or ``(k, n)`` (A symmetric)."""
    return lambda v: v @ A


def scipy_iterates(A: Tensor, b: Tensor, iters: int, shift: float = 0.0) -> List[np.ndarray]:
    """``x_1, x_2, ...`` of scipy's MINRES (its own tests may stop it before ``iters``)."""
    xs: List[np.ndarray] = []
    sla.minres(A.numpy(), b.numpy(), rtol=1e-300, shift=shift, maxiter=iters, callback=lambda xk: xs.append(xk.copy()))
    return xs


def true_residual(A: Tensor, b: Tensor, x: Tensor, shift: float = 0.0) -> Tensor:
    return torch.linalg.vector_norm(b - (x @ A - shift * x), dim=-1)


# --------------------------------------------------------------------------------------------------
# Agreement with scipy, iterate by iterate
# --------------------------------------------------------------------------------------------------

N = 30
CASES = {
    "spd": (np.linspace(1.0, 20.0, N), 0.0, "generic"),
    "indefinite": (np.linspace(-10.0, 10.0, N), 0.0, "generic"),
    "spd shifted into indefinite": (np.linspace(1.0, 20.0, N), 7.3, "generic"),
    "singular consistent": (np.r_[np.zeros(4), np.linspace(-5.0, 5.0, N - 4)], 0.0, "range"),
    "singular inconsistent": (np.r_[np.zeros(4), np.linspace(-5.0, 5.0, N - 4)], 0.0, "generic"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_iterates_match_scipy(case):
    eigs, shift, kind = CASES[case]
    A, _ = sym_matrix(eigs, seed=1)
    b = randn(N, seed=2)
    if kind == "range":
        b = A @ b
    # Where this solver stops at tol = 1e-8 (rounding differences with scipy are then still ~1e-10).
    _, info = tm.ops.minres(matvec_of(A), b, max_iter=3 * N, tol=1e-8, shift=shift)
    stop = int(info.iterations)
    expected = {"singular inconsistent": "least_squares"}.get(case, "converged")
    assert info.stop_reason == expected
    assert 5 < stop <= 2 * N
    xs = scipy_iterates(A, b, stop, shift)
    assert len(xs) == stop
    for j in range(1, stop + 1):
        x, info_j = tm.ops.minres(matvec_of(A), b, max_iter=j, tol=0.0, shift=shift)
        assert int(info_j.iterations) == j and info_j.stop_reason == "max_iter"
        ref = torch.from_numpy(xs[j - 1])
        scale = max(1.0, float(ref.abs().max()))
        # Rounding differences grow once Ritz values converge (here from about iteration 20 of
        # 25-30: ~1e-15 before, up to ~1e-9 in the last steps, as the Krylov space nears exhaustion).
        tol = 1e-10 if j <= stop - 5 else 1e-8
        assert float((x - ref).abs().max()) <= tol * scale, f"iteration {j}"
        # The reported residual norm is the true one of x_j.
        r = float(true_residual(A, b, x, shift))
        assert abs(float(info_j.residual_norms[-1]) - r) <= 1e-9 * float(b.norm()), f"iteration {j}"


def test_singular_consistent_gives_min_norm_solution():
    eigs, _, _ = CASES["singular consistent"]
    A, _ = sym_matrix(eigs, seed=1)
    b = A @ randn(N, seed=2)
    x, info = tm.ops.minres(matvec_of(A), b, max_iter=100, tol=1e-12)
    assert info.stop_reason == "converged"
    # Iterates stay in range(A), so MINRES returns the pseudo-inverse solution.
    torch.testing.assert_close(x, torch.linalg.pinv(A) @ b, atol=1e-9, rtol=0)


def test_singular_inconsistent_gives_least_squares_solution():
    eigs, _, _ = CASES["singular inconsistent"]
    A, Q = sym_matrix(eigs, seed=1)
    b = randn(N, seed=2)
    x, info = tm.ops.minres(matvec_of(A), b, max_iter=100, tol=1e-8)
    assert info.stop_reason == "least_squares"
    r = b - A @ x
    # Normal equations A r = 0 to the tolerance, and the residual is b's null-space part (the minimum).
    assert float(torch.linalg.vector_norm(A @ r)) <= 1e-7 * float(torch.linalg.matrix_norm(A)) * float(r.norm())
    null_part = Q[:, :4] @ (Q[:, :4].T @ b)
    assert abs(float(r.norm()) - float(null_part.norm())) <= 1e-8 * float(b.norm())
    assert abs(float(info.residual_norms[-1]) - float(r.norm())) <= 1e-8 * float(b.norm())


# --------------------------------------------------------------------------------------------------
# Residual norms, stop reasons, special right-hand sides
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_residual_norms_monotone_and_start_at_norm_b(case):
    eigs, shift, _ = CASES[case]
    A, _ = sym_matrix(eigs, seed=3)
    b = randn(3, N, seed=4)
    _, info = tm.ops.minres(matvec_of(A), b, max_iter=40, tol=1e-10, shift=shift)
    res = info.residual_norms
    assert res.shape == (3, int(info.iterations.max()) + 1) and res.dtype == F64
    torch.testing.assert_close(res[:, 0], torch.linalg.vector_norm(b, dim=1), rtol=1e-15, atol=0)
    assert bool((res[:, 1:] <= res[:, :-1]).all())


def test_eigenvector_breaks_down_after_one_iteration():
    eigs = np.linspace(-4.0, 6.0, 12)
    A, Q = sym_matrix(eigs, seed=5)
    for i, shift in [(0, 0.0), (3, 0.0), (7, 1.5)]:
        b = 2.5 * Q[:, i]
        lam = float(eigs[i]) - shift
        x, info = tm.ops.minres(matvec_of(A), b, max_iter=10, tol=0.0, shift=shift)
        # beta_2 is rounding-sized: the Krylov space span{b} is invariant, x_1 = b / lambda is exact.
        assert int(info.iterations) == 1 and info.stop_reason == "breakdown" and info.matvec_calls == 1
        torch.testing.assert_close(x, b / lam, rtol=1e-13, atol=1e-13)
        # With a reachable tolerance the same step is reported as converged.
        x, info = tm.ops.minres(matvec_of(A), b, max_iter=10, tol=1e-6, shift=shift)
        assert int(info.iterations) == 1 and info.stop_reason == "converged"


def test_breakdown_threshold_is_ten_eps_norm_h():
    """b = e_1 of [[1, d], [d, 2]]: beta_2 = d after one step with ||T|| = 1 to rounding; "breakdown"
    means beta_2 <= 10 eps ||H||, so d = 5 eps stops there and d = 20 eps goes on to the exact solve.
    The reference follows the same rule."""
    eps = torch.finfo(F64).eps
    e1 = torch.tensor([1.0, 0.0], dtype=F64)
    for d, its, why in [(5 * eps, 1, "breakdown"), (20 * eps, 2, "converged")]:
        A = torch.tensor([[1.0, d], [d, 2.0]], dtype=F64)
        for solve in (tm.ops.minres, minres_reference):
            x, info = solve(matvec_of(A), e1, max_iter=5, tol=1e-20)
            assert (int(info.iterations), info.stop_reason) == (its, why), (d / eps, solve)
            torch.testing.assert_close(x @ A, e1, rtol=0, atol=2 * d)


@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_stopping_tests_do_not_depend_on_the_scale_of_h(scale):
    """The breakdown test is relative to ||H||: the matrix of test_breakdown_threshold_is_ten_eps_norm_h
    times 1e-6 or 1e6 stops (or goes on) exactly as it does at scale 1; so does the least-squares test."""
    eps = torch.finfo(F64).eps
    e1 = torch.tensor([1.0, 0.0], dtype=F64)
    for d, its, why in [(5 * eps, 1, "breakdown"), (20 * eps, 2, "converged")]:
        A = scale * torch.tensor([[1.0, d], [d, 2.0]], dtype=F64)
        x, info = tm.ops.minres(matvec_of(A), e1, max_iter=5, tol=1e-20)
        assert (int(info.iterations), info.stop_reason) == (its, why), (scale, d / eps)
        torch.testing.assert_close(x @ A, e1, rtol=0, atol=2 * d)
    A = scale * torch.diag(torch.tensor([1e-17, 1.0], dtype=F64))
    x, info = tm.ops.minres(matvec_of(A), torch.tensor([1.0, 2.0], dtype=F64), max_iter=5, tol=1e-20)
    assert (int(info.iterations), info.stop_reason) == (1, "least_squares")


def test_least_squares_test_uses_at_least_eps():
    """H = diag(1e-17, 1), b = (1, 2): x_1 = b leaves r_1 = (1, 0) with ||H r_1|| / ||r_1|| = 1e-17,
    below eps ||H||, so x_1 is reported as a least-squares solution even for a tol below eps (the next
    step would divide by about 1e-17). The reference follows the same rule."""
    A = torch.diag(torch.tensor([1e-17, 1.0], dtype=F64))
    b = torch.tensor([1.0, 2.0], dtype=F64)
    for solve in (tm.ops.minres, minres_reference):
        x, info = solve(matvec_of(A), b, max_iter=5, tol=1e-20)
        assert (int(info.iterations), info.stop_reason, info.matvec_calls) == (1, "least_squares", 2), solve
        torch.testing.assert_close(x, b, rtol=1e-15, atol=0)


def test_matvec_receives_the_shape_of_b_and_may_return_strided_tensors():
    """matvec gets (n,) for b of shape (n,) and (k, n) for (k, n); a non-contiguous result (here every
    other entry of a wider tensor) gives bitwise the solve of its contiguous copy."""
    A, _ = sym_matrix(np.linspace(-3.0, 5.0, 9), seed=43)
    for b in (randn(9, seed=44), randn(3, 9, seed=45)):
        shapes = []

        def strided(v):
            shapes.append(tuple(v.shape))
            hv = v @ A
            out = torch.stack([hv, torch.full_like(hv, float("nan"))], dim=-1)[..., 0]  # stride 2
            assert not out.is_contiguous()
            return out

        x, info = tm.ops.minres(strided, b, max_iter=20, tol=1e-12)
        x0, info0 = tm.ops.minres(matvec_of(A), b, max_iter=20, tol=1e-12)
        assert shapes and set(shapes) == {tuple(b.shape)} and len(shapes) == info.matvec_calls
        assert torch.equal(x, x0) and torch.equal(info.residual_norms, info0.residual_norms)
        assert info.stop_reason == info0.stop_reason


def test_identity_matvec_returning_its_input():
    """matvec may return v itself (H = I): x = b / (1 - shift) after one iteration."""
    b = randn(2, 50, seed=6)
    x, info = tm.ops.minres(lambda v: v, b, max_iter=5, shift=0.25)
    torch.testing.assert_close(x, b / 0.75, rtol=1e-14, atol=1e-14)
    assert info.iterations.tolist() == [1, 1]


def test_b_zero():
    A, _ = sym_matrix(np.linspace(1.0, 2.0, 8), seed=7)
    calls = []

    def mv(v):
        calls.append(v.shape)
        return v @ A

    x, info = tm.ops.minres(mv, torch.zeros(8, dtype=F64))
    assert not calls and bool((x == 0).all()) and x.shape == (8,)
    assert info.stop_reason == "b_zero" and int(info.iterations) == 0 and info.residual_norms.tolist() == [0.0]
    # A zero row among others: x row 0, the others solved.
    b = torch.stack([randn(8, seed=8), torch.zeros(8, dtype=F64), randn(8, seed=9)])
    x, info = tm.ops.minres(mv, b, tol=1e-12)
    assert info.stop_reason == ("converged", "b_zero", "converged")
    assert bool((x[1] == 0).all()) and int(info.iterations[1]) == 0
    assert bool((info.residual_norms[1] == 0).all())
    torch.testing.assert_close(x[[0, 2]] @ A, b[[0, 2]], atol=1e-10, rtol=0)


def test_empty_b():
    """n = 0 or k = 0: nothing to solve, matvec is not called; rows of length 0 are zero rows."""
    def mv(v):
        raise AssertionError("matvec called")

    x, info = tm.ops.minres(mv, torch.zeros(0, dtype=F64))
    assert x.shape == (0,) and info.stop_reason == "b_zero" and info.matvec_calls == 0
    x, info = tm.ops.minres(mv, torch.zeros(3, 0, dtype=F64))
    assert x.shape == (3, 0) and info.stop_reason == ("b_zero",) * 3 and info.residual_norms.tolist() == [[0.0]] * 3
    x, info = tm.ops.minres(mv, torch.zeros(0, 5, dtype=F64))
    assert x.shape == (0, 5) and info.stop_reason == () and info.iterations.shape == (0,)
    assert info.residual_norms.shape == (0, 1)


@pytest.mark.parametrize("p", [-560, -1040, 560, 900])
def test_extreme_scales_of_b(p):
    """MINRES is homogeneous in b: x(2^p b) = 2^p x(b), also where ||b||^2 under- or overflows float64
    (here it would be 0 or infinity: b read as zero, or a NaN blamed on the matvec)."""
    A, _ = sym_matrix(CASES["indefinite"][0], seed=1)
    b = torch.stack([randn(N, seed=2), torch.zeros(N, dtype=F64), randn(N, seed=3)])
    scale = torch.tensor([2.0**p, 1.0, 1.0], dtype=F64)[:, None]  # one extreme row beside a plain one
    b_extreme = b * scale
    b = b_extreme / scale  # b itself, or (p = -1040) what is left of it as a subnormal
    x0, info0 = tm.ops.minres(rowwise(A), b, max_iter=60, tol=1e-10)
    x, info = tm.ops.minres(rowwise(A), b_extreme, max_iter=60, tol=1e-10)
    assert info.stop_reason == info0.stop_reason == ("converged", "b_zero", "converged")
    assert torch.equal(info.iterations, info0.iterations) and info.matvec_calls == info0.matvec_calls
    # A power of two commutes with every rounding.
    assert torch.equal(x, x0 * scale) and torch.equal(info.residual_norms, info0.residual_norms * scale)


def test_extreme_scales_of_b_float32():
    # Entries of b, H b and x below the float32 limit (2^128) but ||b|| above it, which the float32 step
    # cannot hold (it would read beta_1 = inf): the same solve as for b / 2^126.
    A = torch.diag(torch.linspace(1.0, 2.0, 200, dtype=torch.float32))
    b = randn(200, seed=4)
    b = (1.5 * b / b.abs().max()).to(torch.float32)
    assert float(b.double().norm()) * 2.0**126 > torch.finfo(torch.float32).max
    x0, info0 = tm.ops.minres(matvec_of(A), b, max_iter=60, tol=1e-5)
    x, info = tm.ops.minres(matvec_of(A), b * 2.0**126, max_iter=60, tol=1e-5)
    assert info.stop_reason == info0.stop_reason == "converged" and bool(x.isfinite().all())
    assert torch.equal(x, x0 * 2.0**126) and torch.equal(info.residual_norms, info0.residual_norms * 2.0**126)


def test_huge_max_iter_allocates_only_what_is_used():
    # The residual history grows with the iterations: max_iter is a bound, not an allocation size.
    A, _ = sym_matrix(np.linspace(1.0, 50.0, 200), seed=33)
    b = randn(2, 200, seed=34)
    x, info = tm.ops.minres(matvec_of(A), b, max_iter=10**15, tol=1e-12)
    x_ref, info_ref = tm.ops.minres(matvec_of(A), b, max_iter=500, tol=1e-12)
    assert info.stop_reason == ("converged", "converged") and int(info.iterations.max()) > 64
    assert torch.equal(x, x_ref) and torch.equal(info.residual_norms, info_ref.residual_norms)
    assert info.residual_norms.shape == (2, int(info.iterations.max()) + 1)


def test_residual_history_keeps_every_column_as_it_grows(monkeypatch):
    """100 iterations cross the first allocation of the history (64 iterations) and stop at max_iter
    just below its doubled size: every column, the one written right after each growth and the last
    one included, is the reference's residual norm (a column lost to a late growth would read 0), with
    the summaries read at once or lagged."""
    A, _ = sym_matrix(np.linspace(1.0, 1000.0, 200), seed=41)  # slow convergence: no breakdown by 100
    b = randn(2, 200, seed=42)
    xr, ir = minres_reference(matvec_of(A), b[0], max_iter=100, tol=0.0)
    runs = []
    for lag in (False, True):
        monkeypatch.setattr(tm.ops._StepSummaries, "lag_on_cpu", lag)
        runs.append(tm.ops.minres(matvec_of(A), b, max_iter=100, tol=0.0))
    (x, info), (x_lag, info_lag) = runs
    assert torch.equal(x, x_lag) and torch.equal(info.residual_norms, info_lag.residual_norms)
    assert info.stop_reason == info_lag.stop_reason == ("max_iter", "max_iter") and info.matvec_calls == 100
    res = info.residual_norms
    assert res.shape == (2, 101) and bool((res > 0).all()) and bool((res[:, 1:] <= res[:, :-1]).all())
    assert ir.stop_reason == "max_iter"
    torch.testing.assert_close(res[0], ir.residual_norms, rtol=1e-7, atol=0)
    torch.testing.assert_close(x[0], xr, rtol=0, atol=1e-12 * float(xr.abs().max()))


def test_max_iter_zero_and_limit():
    A, _ = sym_matrix(np.linspace(-3.0, 3.0, 10), seed=10)
    b = randn(10, seed=11)
    x, info = tm.ops.minres(matvec_of(A), b, max_iter=0)
    assert bool((x == 0).all()) and info.stop_reason == "max_iter" and info.matvec_calls == 0
    assert info.residual_norms.shape == (1,)
    assert float(info.residual_norms[0]) == pytest.approx(float(b.norm()), rel=1e-15)
    x, info = tm.ops.minres(matvec_of(A), b, max_iter=3, tol=1e-12)
    assert info.stop_reason == "max_iter" and int(info.iterations) == 3 and info.matvec_calls == 3
    assert info.residual_norms.shape == (4,)


def test_converged_means_relative_residual_below_tol():
    A, _ = sym_matrix(np.r_[np.linspace(-8.0, -0.5, 20), np.linspace(0.3, 9.0, 20)], seed=12)
    b = randn(40, seed=13)
    for tol in (1e-2, 1e-5, 1e-9):
        x, info = tm.ops.minres(matvec_of(A), b, max_iter=200, tol=tol)
        assert info.stop_reason == "converged"
        rel = float(true_residual(A, b, x)) / float(b.norm())
        assert rel <= tol * (1 + 1e-6)
        # ... and not one iteration later than needed.
        assert float(info.residual_norms[-2]) > tol * float(b.norm())


# --------------------------------------------------------------------------------------------------
# Several right-hand sides, the reference, determinism
# --------------------------------------------------------------------------------------------------


def rowwise(A: Tensor):
    """``v -> A v`` computed row by row, so that a row of a batch gets exactly the product it gets alone."""
    def mv(v: Tensor) -> Tensor:
        return v @ A if v.dim() == 1 else torch.stack([row @ A for row in v])
    return mv


def test_k_right_hand_sides_equal_separate_solves():
    A, Q = sym_matrix(np.r_[np.zeros(2), np.linspace(-6.0, 6.0, 22)], seed=14)
    zero = torch.zeros(24, dtype=F64)
    b = torch.stack([randn(24, seed=15), Q[:, 5], A @ randn(24, seed=16), zero, randn(24, seed=17)])
    calls = []
    row_mv = rowwise(A)

    def mv(v):
        calls.append(tuple(v.shape))
        return row_mv(v)

    x, info = tm.ops.minres(mv, b, max_iter=60, tol=1e-9)
    assert all(c == (5, 24) for c in calls) and info.matvec_calls == len(calls)
    assert info.stop_reason == ("least_squares", "converged", "converged", "b_zero", "least_squares")
    # A least-squares stop is decided by the product after the last applied iteration.
    its = info.iterations.tolist()
    assert info.matvec_calls == max(it + (why == "least_squares") for it, why in zip(its, info.stop_reason))
    for i in range(b.shape[0]):
        xi, ii = tm.ops.minres(row_mv, b[i], max_iter=60, tol=1e-9)
        # Each recurrence only sees its own row: bitwise the same as solving it alone.
        assert ii.stop_reason == info.stop_reason[i] and int(ii.iterations) == int(info.iterations[i])
        assert torch.equal(x[i], xi)
        t = int(ii.iterations)
        assert torch.equal(info.residual_norms[i, : t + 1], ii.residual_norms)
        # Past its own stop, a row's residual repeats its last value.
        assert bool((info.residual_norms[i, t:] == info.residual_norms[i, t]).all())


# Problems that converge well before Lanczos loses orthogonality (n = 100, <= 40 iterations): past that
# point two correct implementations part at the level of their rounding differences times a growth
# factor that reaches 1e10 within a few dozen more iterations, in the iterates and in the residual
# estimates alike (both runs remain valid MINRES runs in floating point).
M = 100
REF_CASES = {
    "spd": (np.linspace(1.0, 10.0, M), 0.0, "generic"),
    "indefinite": (np.r_[np.linspace(-3.0, -1.0, M // 2), np.linspace(1.0, 3.0, M // 2)], 0.0, "generic"),
    "shifted into indefinite": (np.r_[np.linspace(1.0, 3.0, M // 2), np.linspace(8.0, 10.0, M // 2)], 5.5, "generic"),
    "singular consistent": (np.r_[np.zeros(5), np.linspace(1.0, 10.0, M - 5)], 0.0, "range"),
    "singular inconsistent": (
        np.r_[np.zeros(5), np.linspace(-3.0, -1.0, 47), np.linspace(1.0, 3.0, 48)], 0.0, "generic"),
}


@pytest.mark.parametrize("case", list(REF_CASES))
def test_matches_reference(case):
    eigs, shift, kind = REF_CASES[case]
    A, _ = sym_matrix(eigs, seed=18)
    b = randn(2, M, seed=19)
    if kind == "range":
        b = b @ A
    x, info = tm.ops.minres(matvec_of(A), b, max_iter=80, tol=1e-6, shift=shift)
    xr, ir = minres_reference(matvec_of(A), b, max_iter=80, tol=1e-6, shift=shift)
    assert info.stop_reason == ir.stop_reason
    assert set(info.stop_reason) == {"least_squares" if case == "singular inconsistent" else "converged"}
    assert info.iterations.tolist() == ir.iterations.tolist()
    assert info.matvec_calls == int(info.iterations.max()) + (case == "singular inconsistent")
    torch.testing.assert_close(info.residual_norms, ir.residual_norms, rtol=0, atol=1e-13 * float(b.norm(dim=1).max()))
    torch.testing.assert_close(x @ A, xr @ A, rtol=0, atol=1e-10 * float(b.norm(dim=1).max()))
    # For an inconsistent system the null-space part of x is rounding noise amplified by 1 / gamma
    # (it does not change the residual); elsewhere x itself agrees to rounding.
    atol = 1e-5 if case == "singular inconsistent" else 1e-13
    torch.testing.assert_close(x, xr, rtol=0, atol=atol * max(1.0, float(xr.abs().max())))


@pytest.mark.parametrize("n", [4097, 10_000])
def test_vectors_longer_than_a_chunk(n):
    """The dot products of a step are summed over chunks of 4096 entries: vectors of a few chunks (the last
    one partial) reach the true residual that "converged" promises, and agree with the reference."""
    H = torch.linspace(1.0, 3.0, n, dtype=F64)
    b = randn(2, n, seed=30)
    x, info = tm.ops.minres(lambda v: H * v, b, max_iter=60, tol=1e-10)
    xr, ir = minres_reference(lambda v: H * v, b, max_iter=60, tol=1e-10)
    assert info.stop_reason == ("converged", "converged") and info.iterations.tolist() == ir.iterations.tolist()
    assert bool((torch.linalg.vector_norm(b - H * x, dim=1) <= 2e-10 * torch.linalg.vector_norm(b, dim=1)).all())
    torch.testing.assert_close(x, xr, rtol=0, atol=1e-12)
    torch.testing.assert_close(info.residual_norms, ir.residual_norms, rtol=1e-10, atol=0)


def test_float32_eigenvector_breaks_down_after_one_iteration():
    """b = 1.1 (1, ..., 1) is an eigenvector of H = 2 I: in float32 too, beta_2 is at most a few float32
    ulps of the Lanczos vector (exactly 0 without FMA contraction, which tol = 0 reports as "converged")
    and x_1 = b / 2. The dot products are accumulated in float64: a float32 sum of the 8192 equal
    products would be off by about 1e-5 relative, and beta_2 would not vanish."""
    b = torch.full((8192,), 1.1)
    x, info = tm.ops.minres(lambda v: 2.0 * v, b, max_iter=5, tol=0.0)
    assert (int(info.iterations), info.matvec_calls) == (1, 1)
    assert info.stop_reason == "breakdown" or (info.stop_reason == "converged" and float(info.residual_norms[1]) == 0.0)
    torch.testing.assert_close(x, b / 2, rtol=2e-7, atol=0)


def test_deterministic_across_thread_counts():
    """Dot products are summed over fixed chunks: bitwise the same result for 1 and 2 threads."""
    n = 50_000
    d = torch.linspace(-2.0, 3.0, n, dtype=F64)
    b = randn(2, n, seed=20)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        x1, i1 = tm.ops.minres(lambda v: v * d, b, max_iter=15)
        torch.set_num_threads(2)
        x2, i2 = tm.ops.minres(lambda v: v * d, b, max_iter=15)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(x1, x2) and torch.equal(i1.residual_norms, i2.residual_norms)


# --------------------------------------------------------------------------------------------------
# Random problems (hypothesis): properties of every stop reason
# --------------------------------------------------------------------------------------------------


@st.composite
def problems(draw):
    n = draw(st.integers(1, 10))
    k = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    eigs = torch.randn(n, dtype=F64, generator=g) * 3
    zeros = draw(st.integers(0, n - 1 if n > 1 else 0))
    eigs[:zeros] = 0.0
    A, _ = sym_matrix(eigs, seed=seed)
    b = torch.randn(k, n, dtype=F64, generator=g)
    if draw(st.booleans()):  # some rows zero or in the range of A
        b[0] = 0.0
    if k > 1 and draw(st.booleans()):
        b[1] = A @ b[1]
    shift = draw(st.sampled_from([0.0, 0.0, 0.7, -1.3]))
    tol = draw(st.sampled_from([1e-4, 1e-8]))
    return A, b, shift, tol


@given(problems())
def test_random_problems_properties(problem):
    A, b, shift, tol = problem
    n = A.shape[0]
    As = A - shift * torch.eye(n, dtype=F64)
    max_iter = 4 * n + 5
    x, info = tm.ops.minres(matvec_of(A), b, max_iter=max_iter, tol=tol, shift=shift)
    res = info.residual_norms
    assert bool((res[:, 1:] <= res[:, :-1]).all())
    anorm = float(torch.linalg.matrix_norm(As))
    for i in range(b.shape[0]):
        bn = float(b[i].norm())
        r = b[i] - As @ x[i]
        slack = 1e-9 * (bn + anorm * float(x[i].norm()))
        assert abs(float(res[i, -1]) - float(r.norm())) <= slack + 1e-6 * bn
        reason = info.stop_reason[i]
        if bn == 0:
            assert reason == "b_zero" and bool((x[i] == 0).all())
        elif reason == "converged":
            assert float(r.norm()) <= tol * bn + slack
        elif reason == "least_squares":
            # ||A_s r|| <= tol ||T||_F ||r|| with ||T||_F <= sqrt(iterations) ||A_s||_2-ish: use ||A_s||_F * n.
            assert float((As @ r).norm()) <= tol * anorm * n * float(r.norm()) + 1e-8 * anorm * bn
        else:
            assert reason in ("breakdown", "max_iter")
    # The same rows one at a time (with row-wise products: bitwise the same).
    xb, ib = tm.ops.minres(rowwise(A), b, max_iter=max_iter, tol=tol, shift=shift)
    for i in range(b.shape[0]):
        xi, ii = tm.ops.minres(rowwise(A), b[i], max_iter=max_iter, tol=tol, shift=shift)
        assert ii.stop_reason == ib.stop_reason[i] and torch.equal(xi, xb[i])


# --------------------------------------------------------------------------------------------------
# A network's Hessian through Hessian-vector products
# --------------------------------------------------------------------------------------------------


def tiny_network(dtype=F64, device="cpu"):
    """A 3-4-2 tanh MLP on 16 points (n = 26 parameters): its params, loss and dense Hessian."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).to(dtype)
    X = torch.randn(16, 3, dtype=dtype)
    Y = torch.randn(16, 2, dtype=dtype)
    net, X, Y = net.to(device), X.to(device), Y.to(device)
    params = list(net.parameters())
    names = [name for name, _ in net.named_parameters()]

    def loss_of(theta: Tensor) -> Tensor:
        pieces = tm.autograd.unflatten(theta, params)
        out = torch.func.functional_call(net, dict(zip(names, pieces)), (X,))
        return torch.nn.functional.mse_loss(out, Y)

    theta = tm.autograd.flatten([p.detach() for p in params])
    H = torch.autograd.functional.hessian(loss_of, theta)
    loss = torch.nn.functional.mse_loss(net(X), Y)
    return params, loss, H


def test_network_hessian_through_hvp():
    params, loss, H = tiny_network()
    n = H.shape[0]
    assert n == 26
    eig = torch.linalg.eigvalsh(H)
    assert float(eig.min()) < 0 < float(eig.max())  # indefinite: the case MINRES is for
    matvec = tm.autograd.hvp_operator(loss, params)
    b = randn(3, n, seed=21)
    x, info = tm.ops.minres(matvec, b, max_iter=200, tol=1e-11)
    assert info.stop_reason == ("converged",) * 3
    torch.testing.assert_close(x, torch.linalg.solve(H, b.T).T, rtol=1e-7, atol=1e-7)
    # Iterate by iterate against scipy on the dense Hessian, through torchmoo.autograd.hvp itself.
    xs = scipy_iterates(H, b[0], 12)
    for j in (1, 2, 5, 12):
        xj, _ = tm.ops.minres(lambda v: tm.autograd.hvp(loss, params, v), b[0], max_iter=j, tol=0.0)
        torch.testing.assert_close(xj, torch.from_numpy(xs[j - 1]), rtol=1e-10, atol=1e-10)


def test_network_hessian_float32():
    params, loss, H = tiny_network(torch.float32)
    n = H.shape[0]
    b = randn(2, n, seed=22, dtype=torch.float32)
    x, info = tm.ops.minres(tm.autograd.hvp_operator(loss, params), b, max_iter=100, tol=1e-5)
    assert x.dtype == torch.float32
    exact = torch.linalg.solve(H.double(), b.double().T).T
    # cond(H) ~ 200: float32 rounding allows ~1e-4 relative error.
    err = (x.double() - exact).norm(dim=1) / exact.norm(dim=1)
    assert float(err.max()) <= 1e-3, err
    assert bool((info.residual_norms[:, 1:] <= info.residual_norms[:, :-1]).all())


def test_float32_matches_float64():
    A, _ = sym_matrix(np.r_[np.linspace(-5.0, -1.0, 20), np.linspace(1.0, 5.0, 20)], seed=23)
    b = randn(2, 40, seed=24)
    x64, i64 = tm.ops.minres(matvec_of(A), b, max_iter=100, tol=1e-5)
    A32, b32 = A.float(), b.float()
    x32, i32 = tm.ops.minres(matvec_of(A32), b32, max_iter=100, tol=1e-5)
    assert x32.dtype == torch.float32 and i32.residual_norms.dtype == F64
    assert i32.stop_reason == ("converged", "converged")
    torch.testing.assert_close(x32.double(), x64, rtol=0, atol=1e-4)
    rel = true_residual(A, b, x32.double()) / b.norm(dim=1)
    assert float(rel.max()) <= 2e-5
    # The float32 iterates follow scipy's run on the same float32 data (scipy returns float64).
    xs = scipy_iterates(A32, b32[0], 8)
    xj, _ = tm.ops.minres(matvec_of(A32), b32[0], max_iter=8, tol=0.0)
    torch.testing.assert_close(xj.double(), torch.from_numpy(xs[-1]), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_errors_for_bad_arguments():
    A, _ = sym_matrix(np.linspace(1.0, 2.0, 4), seed=25)
    mv = matvec_of(A)
    b = randn(4, seed=26)
    with pytest.raises(TypeError, match="matvec must be callable"):
        tm.ops.minres(A, b)
    with pytest.raises(TypeError, match="b must be a torch.Tensor"):
        tm.ops.minres(mv, b.numpy())
    with pytest.raises(TypeError, match="float32 or float64"):
        tm.ops.minres(mv, torch.ones(4, dtype=torch.int64))
    with pytest.raises(TypeError, match="float32 or float64"):
        tm.ops.minres(mv, b.half())
    with pytest.raises(ValueError, match=r"shape \(n,\) or \(k, n\)"):
        tm.ops.minres(mv, b.reshape(1, 2, 2))
    with pytest.raises(ValueError, match="b must be finite"):
        tm.ops.minres(mv, torch.tensor([1.0, float("nan"), 0.0, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="b must be finite"):
        tm.ops.minres(mv, torch.tensor([1.0, float("inf"), 0.0, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="max_iter must be >= 0"):
        tm.ops.minres(mv, b, max_iter=-1)
    with pytest.raises(TypeError, match="max_iter must be an int"):
        tm.ops.minres(mv, b, max_iter=5.0)
    with pytest.raises(TypeError, match="max_iter must be an int"):
        tm.ops.minres(mv, b, max_iter=True)
    with pytest.raises(ValueError, match="tol must be >= 0"):
        tm.ops.minres(mv, b, tol=-1e-3)
    with pytest.raises(ValueError, match="tol must be finite"):
        tm.ops.minres(mv, b, tol=float("nan"))
    with pytest.raises(TypeError, match="tol must be a real number"):
        tm.ops.minres(mv, b, tol="1e-6")
    with pytest.raises(TypeError, match="tol must be a real number"):
        tm.ops.minres(mv, b, tol=True)
    with pytest.raises(TypeError, match="shift must be a real number"):
        tm.ops.minres(mv, b, shift=False)
    with pytest.raises(ValueError, match="shift must be finite"):
        tm.ops.minres(mv, b, shift=float("inf"))


def test_errors_for_bad_matvec():
    A, _ = sym_matrix(np.linspace(1.0, 2.0, 4), seed=27)
    b = randn(2, 4, seed=28)
    with pytest.raises(TypeError, match="must return a torch.Tensor, got ndarray"):
        tm.ops.minres(lambda v: (v @ A).numpy(), b)
    with pytest.raises(ValueError, match=r"returned shape \(2, 3\) for v of shape \(2, 4\)"):
        tm.ops.minres(lambda v: (v @ A)[:, :3], b)
    with pytest.raises(ValueError, match=r"returned shape \(4,\) for v of shape \(2, 4\)"):
        tm.ops.minres(lambda v: (v @ A)[0], b)
    seen = []  # a wrong shape from the third call on: the message names that call
    with pytest.raises(ValueError, match=r"matvec \(call 3\) returned shape \(2, 3\)"):
        tm.ops.minres(lambda v: seen.append(1) or (v @ A if len(seen) < 3 else (v @ A)[:, :3]), b, tol=0.0)
    with pytest.raises(TypeError, match="returned torch.float32 for v of dtype torch.float64"):
        tm.ops.minres(lambda v: (v @ A).float(), b)
    with pytest.raises(ValueError, match="returned a tensor on meta for v on cpu"):
        tm.ops.minres(lambda v: (v @ A).to("meta"), b)
    calls = []

    def nan_on_third_call(v):
        calls.append(1)
        out = v @ A
        if len(calls) == 3:
            out = out.clone()
            out[1, 2] = float("nan")
        return out

    nan_message = r"matvec returned NaN or infinity \(for right-hand side 1 of 2, at iteration 3\)"
    with pytest.raises(ValueError, match=nan_message):
        tm.ops.minres(nan_on_third_call, b, tol=0.0)
    with pytest.raises(ValueError, match="NaN or infinity"):
        tm.ops.minres(lambda v: v @ A + float("inf"), b[0])


def test_step_operator_rejects_layouts_it_cannot_read():
    """The compiled step reads every vector as a dense (k, n) array and writes yprev, w, wprev and x: a
    strided y, or buffers that share memory, must raise rather than give wrong iterates."""
    ops = torch.ops.torchmoo
    A, _ = sym_matrix(np.linspace(1.0, 2.0, 6), seed=33)
    b = randn(3, 6, seed=34)

    def fresh():
        y, yprev, w, wprev, x, state, history = ops.minres_init.default(b, 4)
        return [y @ A, y, yprev, w, wprev, x, state, history, torch.empty(2, dtype=torch.int32)]

    args = fresh()
    ops.minres_step.default(*args, 0.0, 0.0)  # the valid call works
    assert args[8].tolist() == [3, 2**31 - 1]  # its summary: 3 rows still run, no non-finite product
    column_major = torch.empty_strided((3, 6), (1, 3), dtype=F64).copy_(b)
    expanded = b[:1].expand(3, 6)  # stride 0 along k: reading it as (3, 6) runs past its storage
    for y_bad in (column_major, expanded):
        args = fresh()
        args[1] = y_bad
        with pytest.raises(ValueError, match="the vectors must be contiguous"):
            ops.minres_step.default(*args, 0.0, 0.0)
    args = fresh()
    args[2] = args[3]  # yprev is w
    with pytest.raises(ValueError, match="yprev and w share memory"):
        ops.minres_step.default(*args, 0.0, 0.0)
    args = fresh()
    args[0] = args[5]  # hv is x, which the step overwrites
    with pytest.raises(ValueError, match="hv shares memory with x"):
        ops.minres_step.default(*args, 0.0, 0.0)
    args = fresh()
    args[0] = args[1]  # hv is y (H = I): only read, allowed
    ops.minres_step.default(*args, 0.0, 0.0)
    # H = I: every row's b is an eigenvector, so all three stop (breakdown) and none was non-finite.
    assert args[8].tolist() == [0, 2**31 - 1]
    for bad_summary in (torch.empty(2, dtype=torch.int64), torch.empty(3, dtype=torch.int32)):
        args = fresh()
        args[8] = bad_summary
        with pytest.raises(ValueError, match=r"summary must be a contiguous \(2,\) int32 tensor"):
            ops.minres_step.default(*args, 0.0, 0.0)


# --------------------------------------------------------------------------------------------------
# The lagged stopping test (CUDA reads each step's summary one product later; forced here on the CPU)
# --------------------------------------------------------------------------------------------------


LAG_SCENARIOS = {
    **{f"reference {case}": case for case in REF_CASES},
    "rows stopping at different iterations": "rows",
    "eigenvector breakdown": "eigenvector",
    "max_iter": "max_iter",
}


@pytest.mark.parametrize("scenario", list(LAG_SCENARIOS))
def test_lagged_stopping_test_gives_the_same_solve(monkeypatch, scenario):
    """Reading a step's summary one product late changes nothing but, when the solve stops before
    ``max_iter``, one more (discarded) product: x, iterations, residuals and stop reasons are bitwise
    those of the loop that reads every summary at once."""
    what = LAG_SCENARIOS[scenario]
    kw = dict(max_iter=80, tol=1e-6)
    if what in REF_CASES:
        eigs, shift, kind = REF_CASES[what]
        A, _ = sym_matrix(eigs, seed=18)
        b = randn(2, M, seed=19)
        b = b @ A if kind == "range" else b
        kw["shift"] = shift
    elif what == "rows":
        A, Q = sym_matrix(np.r_[np.zeros(2), np.linspace(-6.0, 6.0, 22)], seed=14)
        b = torch.stack([randn(24, seed=15), Q[:, 5], A @ randn(24, seed=16), torch.zeros(24, dtype=F64),
                         randn(24, seed=17)])
        kw = dict(max_iter=60, tol=1e-9)
    elif what == "eigenvector":
        A, Q = sym_matrix(np.linspace(-4.0, 6.0, 12), seed=5)
        b = 2.5 * Q[:, 3]
        kw = dict(max_iter=10, tol=0.0)
    else:
        A, _ = sym_matrix(np.linspace(1.0, 20.0, N), seed=3)
        b = randn(3, N, seed=4)
        kw = dict(max_iter=7, tol=0.0)
    calls = [0, 0]
    lag = [False]

    def mv(v):
        calls[lag[0]] += 1
        return rowwise(A)(v)

    monkeypatch.setattr(tm.ops._StepSummaries, "lag_on_cpu", False)
    x0, i0 = tm.ops.minres(mv, b, **kw)
    lag[0] = True
    monkeypatch.setattr(tm.ops._StepSummaries, "lag_on_cpu", True)
    x1, i1 = tm.ops.minres(mv, b, **kw)
    assert torch.equal(x0, x1) and torch.equal(i0.iterations, i1.iterations)
    assert torch.equal(i0.residual_norms, i1.residual_norms) and i0.stop_reason == i1.stop_reason
    assert (i0.matvec_calls, i1.matvec_calls) == tuple(calls)
    stopped_early = i0.matvec_calls < kw["max_iter"]
    assert i1.matvec_calls == i0.matvec_calls + stopped_early
    assert stopped_early == (what != "max_iter")


def test_lagged_stopping_test_errors(monkeypatch):
    """With the lagged reading: a non-finite product still raises with its iteration (also in the last
    step, read after the loop), a product after the solve stopped may fail without hiding the result,
    and a failing product while the solve runs still raises."""
    monkeypatch.setattr(tm.ops._StepSummaries, "lag_on_cpu", True)
    A, Q = sym_matrix(np.linspace(1.0, 2.0, 4), seed=38)
    b = randn(2, 4, seed=39)

    def nan_on_call(k):
        calls = []

        def mv(v):
            calls.append(1)
            out = v @ A
            return out + float("nan") if len(calls) == k else out
        return mv

    with pytest.raises(ValueError, match=r"right-hand side 0 of 2, at iteration 3\)"):
        tm.ops.minres(nan_on_call(3), b, tol=0.0)
    with pytest.raises(ValueError, match=r"at iteration 3\)"):  # the last product: found by the drain
        tm.ops.minres(nan_on_call(3), b, max_iter=3, tol=0.0)
    # An eigenvector stops the solve after one product; the second (speculative) one fails.
    e = Q[:, 1] * 3.0
    seen = []

    def fails_after_first(v):
        seen.append(1)
        if len(seen) > 1:
            raise RuntimeError("called after the solve stopped")
        return v @ A

    x, info = tm.ops.minres(fails_after_first, e, max_iter=10, tol=0.0)
    assert info.stop_reason == "breakdown" and int(info.iterations) == 1 and len(seen) == 2
    torch.testing.assert_close(x @ A, e, rtol=1e-12, atol=1e-12)
    # ... or returns something wrong (here a wrong shape): the same finished solve either way.
    seen.clear()
    x2, info2 = tm.ops.minres(lambda v: seen.append(1) or (v @ A if len(seen) == 1 else v[:2]), e, max_iter=10,
                              tol=0.0)
    assert torch.equal(x2, x) and info2.stop_reason == "breakdown" and len(seen) == 2

    def fails_on_third(v):
        seen.append(1)
        if len(seen) == 3:
            raise RuntimeError("a genuine failure")
        return v @ A

    seen.clear()
    with pytest.raises(RuntimeError, match="a genuine failure"):
        tm.ops.minres(fails_on_third, randn(4, seed=40), max_iter=10, tol=0.0)


def test_info_shapes_and_types():
    A, _ = sym_matrix(np.linspace(-2.0, 2.0, 6), seed=29)
    x, info = tm.ops.minres(matvec_of(A), randn(6, seed=30))
    assert x.shape == (6,) and info.iterations.shape == () and info.iterations.dtype == torch.int64
    assert isinstance(info.stop_reason, str) and info.residual_norms.shape == (int(info.iterations) + 1,)
    x, info = tm.ops.minres(matvec_of(A), randn(3, 6, seed=31))
    assert x.shape == (3, 6) and info.iterations.shape == (3,)
    assert isinstance(info.stop_reason, tuple) and len(info.stop_reason) == 3
    assert isinstance(info, tm.ops.MinresInfo) and isinstance(info.matvec_calls, int)
    # b is not modified and x does not share its memory.
    b = randn(6, seed=32)
    b0 = b.clone()
    x, _ = tm.ops.minres(matvec_of(A), b)
    assert torch.equal(b, b0) and x.data_ptr() != b.data_ptr()


# --------------------------------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------------------------------


@pytest.mark.cuda
class TestCuda:
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_matches_cpu(self, dtype):
        # A diagonal H: its products are exactly rounded on both devices, so the runs differ only by
        # the summation order of the float64 dot products.
        d = torch.as_tensor(np.r_[np.zeros(3), np.linspace(-3.0, -1.0, 18), np.linspace(1.0, 3.0, 19)], dtype=dtype)
        e5 = torch.zeros(40, dtype=dtype)
        e5[5] = 1.0
        b = torch.stack([randn(40, seed=34, dtype=dtype), 3 * e5, d * randn(40, seed=35, dtype=dtype),
                         torch.zeros(40, dtype=dtype)])
        xc, ic = tm.ops.minres(lambda v: v * d, b, max_iter=25, tol=1e-4)
        assert ic.stop_reason == ("least_squares", "converged", "converged", "b_zero")
        assert ic.iterations.tolist() == [22, 1, 24, 0]
        dg, bg = d.cuda(), b.cuda()
        xg, ig = tm.ops.minres(lambda v: v * dg, bg, max_iter=25, tol=1e-4)
        assert xg.device.type == "cuda" and xg.dtype == dtype
        assert ig.stop_reason == ic.stop_reason and ig.iterations.tolist() == ic.iterations.tolist()
        tol = 1e-10 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(xg.cpu(), xc, rtol=tol, atol=tol)
        torch.testing.assert_close(ig.residual_norms.cpu(), ic.residual_norms, rtol=tol, atol=tol)

    def test_large_vectors_match_cpu(self):
        n = 300_000  # several blocks per row and several rows
        d = torch.linspace(-2.0, 3.0, n, dtype=F64)
        b = randn(3, n, seed=36)
        xc, ic = tm.ops.minres(lambda v: v * d, b, max_iter=30)
        dg = d.cuda()
        xg, ig = tm.ops.minres(lambda v: v * dg, b.cuda(), max_iter=30)
        torch.testing.assert_close(xg.cpu(), xc, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(ig.residual_norms.cpu(), ic.residual_norms, rtol=1e-9, atol=1e-12)
        # Deterministic on the GPU.
        xg2, _ = tm.ops.minres(lambda v: v * dg, b.cuda(), max_iter=30)
        assert torch.equal(xg, xg2)

    def test_network_hvp_on_cuda(self):
        params, loss, H = tiny_network(device="cuda")
        b = randn(2, H.shape[0], seed=37).cuda()
        x, info = tm.ops.minres(tm.autograd.hvp_operator(loss, params), b, max_iter=200, tol=1e-11)
        assert info.stop_reason == ("converged", "converged")
        torch.testing.assert_close(x, torch.linalg.solve(H, b.T).T, rtol=1e-7, atol=1e-7)

    def test_errors_on_cuda(self):
        A = sym_matrix(np.linspace(1.0, 2.0, 4), seed=38)[0].cuda()
        b = randn(2, 4, seed=39).cuda()
        with pytest.raises(ValueError, match="NaN or infinity"):
            tm.ops.minres(lambda v: v @ A + float("nan"), b)
        with pytest.raises(ValueError, match="returned a tensor on cpu"):
            tm.ops.minres(lambda v: (v @ A).cpu(), b)
        x, info = tm.ops.minres(lambda v: v @ A, torch.zeros(2, 4, dtype=F64, device="cuda"))
        assert info.stop_reason == ("b_zero", "b_zero") and bool((x == 0).all())

    def test_no_synchronization_per_iteration(self):
        """The loop reads each step's summary from pinned memory one product later: a solve synchronizes
        the stream a fixed number of times (the checks of b, the diagnostics), not once per iteration; the
        solve is the CPU's."""
        from conftest import count_cuda_syncs

        d = torch.linspace(1.0, 100.0, 5000, dtype=F64)
        b = randn(2, 5000, seed=41)
        xc, ic = tm.ops.minres(lambda v: v * d, b, max_iter=30, tol=0.0)
        dg, bg, out = d.cuda(), b.cuda(), {}
        syncs = count_cuda_syncs(lambda: out.update(r=tm.ops.minres(lambda v: v * dg, bg, max_iter=30, tol=0.0)),
                                 "cuda")
        xg, ig = out["r"]
        assert ic.iterations.tolist() == ig.iterations.tolist() == [30, 30] and ig.matvec_calls == 30
        assert syncs <= 4, f"{syncs} synchronizations in a 30-iteration solve"
        torch.testing.assert_close(xg.cpu(), xc, rtol=1e-9, atol=1e-12)
        # Stopping early costs at most one discarded product, and changes nothing else.
        xc, ic = tm.ops.minres(lambda v: v * d, b, max_iter=200, tol=1e-8)
        xg, ig = tm.ops.minres(lambda v: v * dg, bg, max_iter=200, tol=1e-8)
        assert ig.stop_reason == ic.stop_reason == ("converged", "converged")
        assert ig.iterations.tolist() == ic.iterations.tolist()
        assert ig.matvec_calls in (ic.matvec_calls, ic.matvec_calls + 1)
        torch.testing.assert_close(xg.cpu(), xc, rtol=1e-9, atol=1e-12)

    def test_info_checks_devices_before_the_guard(self):
        """One of state / history on the CPU still dispatches to the CUDA kernel: it must raise the
        ValueError, not the RuntimeError of a CUDA guard on a CPU device or of mixed-device ops."""
        *_, state, history = torch.ops.torchmoo.minres_init(randn(2, 5, seed=40).cuda(), 3)
        for s, h in [(state.cpu(), history), (state, history.cpu())]:
            with pytest.raises(ValueError, match="same device"):
                torch.ops.torchmoo.minres_info(s, h)
        iterations, residuals, codes = torch.ops.torchmoo.minres_info(state, history)
        assert iterations.device.type == "cuda" and residuals.shape == (2, 1) and codes.tolist() == [5, 5]
