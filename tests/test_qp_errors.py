"""Bad input to the QP operators raises the error type the contract promises, with a readable message.

Both operators (min_norm_simplex, nonneg_qp) share the input rules; every case is run against both.
"""

from __future__ import annotations

import re

import pytest
import torch

import torchmoo as tm
from torchmoo.reference import nonneg_kkt_residual, simplex_kkt_residual

F64 = torch.float64


def simplex(G, c=None, **kw):
    return tm.ops.min_norm_simplex(G, c, **kw)


def nonneg(G, c=None, **kw):
    if c is None:
        c = torch.ones(G.shape[:-1], dtype=G.dtype, device=G.device) if G.dim() >= 1 else torch.ones(1)
    return tm.ops.nonneg_qp(G, c, **kw)


OPS = pytest.mark.parametrize("op", [simplex, nonneg], ids=["min_norm_simplex", "nonneg_qp"])


def residual(op, G, c, x):
    """The contract's KKT residual of ``x`` for the problem ``op`` solves."""
    if op is simplex:
        return float(simplex_kkt_residual(G, c, x))
    return float(nonneg_kkt_residual(G, torch.ones(G.shape[:-1], dtype=G.dtype) if c is None else c, x))


def good(m: int = 3, dtype=F64) -> tuple[torch.Tensor, torch.Tensor]:
    J = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 0.0], [0.0, -1.0, 1.0]], dtype=F64)[:m]
    return (J @ J.T).to(dtype), torch.tensor([0.1, -0.2, 0.3], dtype=F64)[:m].to(dtype)


@OPS
def test_good_input_works(op):
    G, c = good()
    x = op(G, c)
    assert x.shape == (3,) and x.dtype == F64
    assert residual(op, G, c, x) <= 1e-12  # solved, not only accepted


# --------------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------------


@OPS
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_and_bool_dtypes_raise_type_error(op, dtype):
    G = torch.eye(3).to(dtype)
    c = torch.ones(3).to(dtype)
    with pytest.raises(TypeError, match="(?i)float"):
        op(G, c)


@OPS
@pytest.mark.parametrize("g_dtype,c_dtype", [(F64, torch.float32), (torch.float32, F64), (torch.float32, torch.float16)])
def test_mismatched_dtypes_raise_type_error(op, g_dtype, c_dtype):
    G, c = good()
    with pytest.raises(TypeError, match="dtype"):
        op(G.to(g_dtype), c.to(c_dtype))


@OPS
def test_integer_c_raises_type_error(op):
    G, _ = good()
    with pytest.raises(TypeError, match=r"c must have the dtype of G \(Double\), got Long"):
        op(G, torch.ones(3, dtype=torch.int64))


# --------------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------------


@OPS
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4), (4, 3)])
def test_non_square_G_raises_value_error(op, shape):
    G = torch.ones(shape, dtype=F64)
    c = torch.ones(shape[:-1], dtype=F64)
    with pytest.raises(ValueError, match=r"G must have shape \(\.\.\., m, m\) with square trailing dimensions"):
        op(G, c)


@OPS
def test_one_dimensional_and_scalar_G_raise_value_error(op):
    for G in (torch.ones(3, dtype=F64), torch.tensor(1.0, dtype=F64)):
        with pytest.raises(ValueError, match=r"G must have shape \(\.\.\., m, m\)"):
            op(G, torch.ones(3, dtype=F64))


@OPS
@pytest.mark.parametrize(
    "g_shape,c_shape",
    [((3, 3), (4,)), ((3, 3), (2,)), ((3, 3), (3, 1)), ((3, 3), (1, 3)), ((2, 3, 3), (3,)), ((2, 3, 3), (3, 3)), ((2, 3, 3), (2, 1, 3))],
)
def test_c_of_the_wrong_shape_raises_value_error(op, g_shape, c_shape):
    G = torch.eye(3, dtype=F64).expand(g_shape).contiguous()
    c = torch.ones(c_shape, dtype=F64)
    expected = re.escape(f"c must have shape (..., m) = {list(g_shape[:-1])} to match G of shape {list(g_shape)}, "
                         f"got {list(c_shape)}")
    with pytest.raises(ValueError, match=expected):
        op(G, c)


@OPS
@pytest.mark.parametrize("shape", [(0, 0), (3, 0, 0), (0, 0, 0)])
def test_m_zero_raises_value_error(op, shape):
    G = torch.zeros(shape, dtype=F64)
    c = torch.zeros(shape[:-1], dtype=F64)
    with pytest.raises(ValueError, match="G must have m >= 1 objectives"):
        op(G, c)


# --------------------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------------------


@OPS
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["G_diag", "G_offdiag", "c"])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_non_finite_input_raises_value_error(op, bad, where, dtype):
    G, c = good(dtype=dtype)
    G = G.repeat(4, 1, 1)
    c = c.repeat(4, 1)
    if where == "G_diag":
        G[2, 1, 1] = bad
    elif where == "G_offdiag":
        G[2, 0, 1] = bad
        G[2, 1, 0] = bad
    else:
        c[2, 2] = bad
    with pytest.raises(ValueError, match="finite"):
        op(G, c)


@OPS
def test_non_finite_input_in_a_single_problem_raises(op):
    G, c = good()
    G = G.clone()
    G[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        op(G, c)


@OPS
@pytest.mark.parametrize("dtype,rel", [(F64, 1e-6), (F64, 1e-3), (torch.float32, 1e-2), (torch.float32, 1e-3)])
def test_asymmetric_G_raises_value_error(op, dtype, rel):
    G, c = good(dtype=F64)
    G = G.clone()
    G[0, 2] += rel * float(G.abs().max())
    with pytest.raises(ValueError, match="symmetric"):
        op(G.to(dtype), c.to(dtype))


@OPS
@pytest.mark.parametrize("dtype,rel", [(F64, 1e-11), (torch.float32, 1e-6)])
def test_round_off_asymmetry_is_accepted(op, dtype, rel):
    # below the contract's tolerance (1e-8 float64, 1e-4 float32) the operators must not complain
    G, c = good(dtype=F64)
    G = G.clone()
    G[0, 2] += rel * float(G.abs().max())
    out = op(G.to(dtype), c.to(dtype))
    assert out.shape == (3,) and out.dtype == dtype
    # the answer is that of the symmetric part (to the dtype's bar), not of one triangle gone astray
    Gs = (G + G.T) / 2
    assert residual(op, Gs, c, out.double()) <= (1e-9 if dtype == F64 else 1e-5)


@OPS
def test_asymmetry_in_one_batch_entry_raises(op):
    G, c = good()
    G = G.repeat(5, 1, 1)
    G[3, 1, 2] += 0.5
    with pytest.raises(ValueError, match="symmetric"):
        op(G, c.repeat(5, 1))


@OPS
@pytest.mark.parametrize(
    "G",
    [
        [[1.0, 0.0], [0.0, -1.0]],  # negative diagonal entry
        [[-1.0, 0.0], [0.0, 0.0]],
        [[1.0, 2.0], [2.0, 1.0]],  # positive diagonal, eigenvalues 3 and -1
        [[1.0, 0.0, 0.0], [0.0, 1.0, 1.5], [0.0, 1.5, 1.0]],  # eigenvalues 1, 2.5, -0.5
    ],
    ids=["diag(1,-1)", "diag(-1,0)", "[[1,2],[2,1]]", "3x3-indefinite"],
)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_clearly_non_psd_G_raises_value_error(op, G, dtype):
    G = torch.tensor(G, dtype=dtype)
    c = torch.zeros(G.shape[0], dtype=dtype)
    with pytest.raises(ValueError, match="positive semi-definite"):
        op(G, c)


def _assert_last_curvature_counts_as_zero(op, m, dtype, diag):
    """G = I with G_mm = diag (negative, within the PSD tolerance): e_m is a zero curvature.
    min_norm_simplex puts all weight there; nonneg_qp (c = (-1, ..., -1, 1)) leaves it 0."""
    G = torch.eye(m, dtype=F64)
    G[-1, -1] = diag
    c = torch.cat([-torch.ones(m - 1, dtype=F64), torch.ones(1, dtype=F64)]) if op is nonneg else None
    x = op(G.to(dtype), None if c is None else c.to(dtype))
    expected = torch.zeros(m, dtype=dtype)
    if op is simplex:
        expected[-1] = 1.0
    else:
        expected[:-1] = 1.0
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-12)


@OPS
@pytest.mark.parametrize("m", [2, 3, 10])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_round_off_negative_diagonal_is_accepted(op, m, dtype):
    # A zero-curvature index whose diagonal entry came out as -1e-17 (e.g. cancellation in an assembled
    # G): the smallest eigenvalue is -1e-17 * max|G|, far inside the PSD tolerance, so it is no error, and
    # the entry counts as 0. min_norm_simplex puts all weight there; nonneg_qp (c > 0 there) leaves it 0.
    _assert_last_curvature_counts_as_zero(op, m, dtype, -1e-17)


@OPS
def test_non_psd_G_larger_m(op):
    gen = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=F64))
    G = Q @ torch.diag(torch.tensor([3.0, 2.0, 1.0, 1.0, 0.5, -1.0], dtype=F64)) @ Q.T
    G = (G + G.T) / 2
    with pytest.raises(ValueError, match="positive semi-definite"):
        op(G, torch.zeros(6, dtype=F64))


# --------------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------------


@OPS
@pytest.mark.parametrize("method", ["", "active-set", "ActiveSet", "newton", "frank-wolfe"])
def test_unknown_method_raises_value_error(op, method):
    G, c = good()
    with pytest.raises(ValueError, match="method"):
        op(G, c, method=method)


@OPS
@pytest.mark.parametrize("tol", [float("nan"), float("inf"), 0.0, -1.0, -1e-3])
def test_bad_tol_raises_value_error(op, tol):
    # the kernels read a non-positive or NaN tol as "use the default": it must not pass silently
    G, c = good()
    with pytest.raises(ValueError, match="tol"):
        op(G, c, tol=tol)


@OPS
@pytest.mark.parametrize("max_iter,error", [(-1, ValueError), (-5, ValueError), (2.5, TypeError), (True, TypeError),
                                            ("10", TypeError)])
def test_bad_max_iter_raises(op, max_iter, error):
    # -1 is the kernels' "default" code: a user's -1 must not silently mean "50 + 10 m"
    G, c = good()
    with pytest.raises(error, match="max_iter"):
        op(G, c, max_iter=max_iter)


@OPS
def test_bad_option_types_raise_type_error(op):
    G, c = good()
    with pytest.raises(TypeError, match="method"):
        op(G, c, method=None)
    with pytest.raises(TypeError, match="tol"):
        op(G, c, tol="1e-8")


@OPS
def test_numpy_scalars_are_accepted_as_options(op):
    import numpy as np

    G, c = good()
    ref = op(G, c)
    torch.testing.assert_close(op(G, c, max_iter=np.int64(100), tol=np.float64(1e-12)), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, -2.0, -1e-3])
@pytest.mark.parametrize("method", ["active_set", "frank_wolfe"])
def test_raw_operators_reject_bad_tol_and_radius(value, method):
    # Calls through torch.ops bypass the Python checks; the kernels would read these values as
    # "use the default" (or return NaN for radius = inf), so the operators themselves must refuse them.
    G, c = good()
    with pytest.raises(ValueError, match=r"tol must be a finite number > 0"):
        torch.ops.torchmoo.min_norm_simplex(G, c, method, -1, value)
    with pytest.raises(ValueError, match=r"tol must be a finite number > 0"):
        torch.ops.torchmoo.nonneg_qp(G, c, method, -1, value, -1.0)
    with pytest.raises(ValueError, match=r"radius must be a finite number > 0"):
        torch.ops.torchmoo.nonneg_qp(G, c, method, -1, -1.0, value)


@pytest.mark.parametrize("method", ["active_set", "frank_wolfe"])
def test_raw_operators_take_minus_one_as_the_default(method):
    # -1 is what the Python wrappers pass for tol=None / radius=None: same answer as the wrappers.
    G, c = good()
    w = torch.ops.torchmoo.min_norm_simplex(G, c, method, -1, -1.0)[0]
    torch.testing.assert_close(w, tm.ops.min_norm_simplex(G, c, method=method), rtol=0, atol=0)
    lam = torch.ops.torchmoo.nonneg_qp(G, c, method, -1, -1.0, -1.0)[0]
    torch.testing.assert_close(lam, tm.ops.nonneg_qp(G, c, method=method), rtol=0, atol=0)
    assert bool(torch.isfinite(lam).all())


@pytest.mark.parametrize("radius", [float("nan"), float("inf"), 0.0, -3.0])
@pytest.mark.parametrize("method", ["frank_wolfe", "active_set"])
def test_bad_radius_raises_value_error(radius, method):
    # radius <= 0 / NaN used to fall back to the certified bound and radius = inf returned NaN
    G, c = good()
    with pytest.raises(ValueError, match="radius"):
        tm.ops.nonneg_qp(G, c, method=method, radius=radius)


@OPS
def test_meta_tensors_raise_the_same_errors(op):
    # the shape propagation for meta tensors and torch.compile checks what the kernels check first
    meta = lambda *shape, dtype=F64: torch.empty(*shape, dtype=dtype, device="meta")  # noqa: E731
    with pytest.raises(TypeError, match="floating-point"):
        op(meta(3, 3, dtype=torch.int64), meta(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="dtype of G"):
        op(meta(3, 3), meta(3, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"c must have shape \(\.\.\., m\)"):
        op(meta(3, 3), meta(4))
    with pytest.raises(ValueError, match="G must have shape"):
        op(meta(3, 4), meta(3))
    with pytest.raises(ValueError, match="m >= 1"):
        op(meta(0, 0), meta(0))
    with pytest.raises(ValueError, match="m >= 1"):
        op(meta(2, 0, 0), meta(2, 0))


@OPS
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_bad_options_raise_before_dispatch(op, device):
    # The options are checked in Python, so meta tensors and torch.compile's tracing (which never reach a
    # kernel) refuse them too, with the errors of real input.
    G, c = (t.to(device) for t in good())
    for kw, error, pattern in [
        (dict(method="newton"), ValueError, "method must be 'active_set' or 'frank_wolfe', got 'newton'"),
        (dict(method=None), TypeError, "method must be a str"),
        (dict(max_iter=-1), ValueError, "max_iter must be >= 0"),
        (dict(max_iter=True), TypeError, "max_iter must be an int"),
        (dict(tol=0.0), ValueError, "tol must be a finite number > 0"),
        (dict(tol=float("inf")), ValueError, "tol must be a finite number > 0"),
        (dict(tol=-1.0), ValueError, "tol must be a finite number > 0"),
    ]:
        with pytest.raises(error, match=pattern):
            op(G, c, **kw)
    if op is nonneg:
        for radius in (0.0, float("inf"), -1.0):
            with pytest.raises(ValueError, match="radius must be a finite number > 0"):
                op(G, c, method="frank_wolfe", radius=radius)
    # max_iter = 0 is a valid cap (the starting point, not converged), not an error
    x, info = op(G, c, max_iter=0, return_info=True)
    assert x.shape == (3,) and info.iterations.shape == ()


@OPS
def test_non_tensor_input_raises_type_error(op):
    with pytest.raises(TypeError, match="Tensor"):
        op([[1.0, 0.0], [0.0, 1.0]], torch.zeros(2, dtype=F64))


# --------------------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@OPS
def test_device_mismatch_raises_value_error(op):
    G, c = good()
    with pytest.raises(ValueError, match="device"):
        op(G.cuda(), c)
    with pytest.raises(ValueError, match="device"):
        op(G, c.cuda())


# --------------------------------------------------------------------------------------------------
# tolerances of the input checks
# --------------------------------------------------------------------------------------------------


@OPS
@pytest.mark.parametrize("m", [3, 10])
def test_asymmetry_is_judged_against_G_not_c(op, m):
    # The contract's test is |G - G'| > tol * max|G|: a large c must not hide an asymmetry of G (1e-6 is
    # 100x the float64 tolerance), whichever path loads G. The solution has full support for both
    # operators, so for m <= 8 the lane-parallel full-support solve would accept it.
    gen = torch.Generator().manual_seed(m)
    G = torch.eye(m, dtype=F64) + 0.1 * torch.ones(m, m, dtype=F64)
    G[0, 1] += 1e-6 * float(G.abs().max())
    c = 0.05 * torch.rand(m, generator=gen, dtype=F64) - 1e6
    with pytest.raises(ValueError, match="symmetric"):
        op(G, c)


@OPS
@pytest.mark.parametrize("m", [4, 10])
def test_accepted_asymmetry_gives_the_answer_of_the_symmetric_part(op, m):
    # Below the tolerance G and G' are both accepted and both mean (G + G') / 2 (averaged exactly), so all
    # three give the same answer; taking one triangle would answer G and G' differently. m = 4 with
    # c = (-1, -1, 3, 3) leaves two weights at zero, which the active-set method (not the full-support
    # solve) finds.
    gen = torch.Generator().manual_seed(m)
    G = torch.eye(m, dtype=F64) + 0.1 * torch.ones(m, m, dtype=F64)
    G = G + 1e-9 * torch.randn(m, m, generator=gen, dtype=F64)  # |G - G'| about 3e-9 * max|G|
    c = torch.tensor([-1.0, -1.0] + [3.0] * (m - 2), dtype=F64)
    x, xt, xs = op(G, c), op(G.mT, c), op((G + G.mT) / 2, c)
    assert int((x == 0).sum()) >= 2
    torch.testing.assert_close(x, xs, rtol=0, atol=1e-15)
    torch.testing.assert_close(xt, xs, rtol=0, atol=1e-15)


@OPS
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_round_off_asymmetry_is_accepted(op, dtype):
    # The half types' asymmetry tolerance is 1e-2 * max|G| (a Gram matrix summed in half precision is
    # asymmetric at about its epsilon); 3e-3 is round-off for them, not an error.
    G, c = good(dtype=F64)
    G = G.clone()
    G[0, 2] += 3e-3 * float(G.abs().max())
    out = op(G.to(dtype), c.to(dtype))
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    assert residual(op, (G + G.T) / 2, c, out.double()) <= 1e-2


@OPS
@pytest.mark.parametrize("m", [3, 10])
@pytest.mark.parametrize("dtype,k", [(F64, 1e-7), (torch.float32, 1e-5)])
def test_eigenvalue_inside_the_psd_tolerance_is_accepted(op, m, dtype, k):
    # An eigenvalue of -k m max|G| / 2 is inside the documented PSD tolerance (k m max|G|) although it is
    # outside k max|G|: accepted, and the entry counts as a zero curvature (as for -1e-17 above).
    _assert_last_curvature_counts_as_zero(op, m, dtype, -0.5 * k * m)


@pytest.mark.parametrize("m", [2, 10])
def test_round_off_negative_diagonal_along_an_unbounded_direction(m):
    # G_mm = -1e-17 is a zero curvature (inside the PSD tolerance) and c_m < 0: the objective decreases
    # without limit along e_m, which is the error to report, not "not positive semi-definite".
    G = torch.eye(m, dtype=F64)
    G[-1, -1] = -1e-17
    c = -torch.ones(m, dtype=F64)
    with pytest.raises(ValueError, match="unbounded"):
        nonneg(G, c)
