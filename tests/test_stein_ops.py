"""Tests of torchmoo.ops.stein_task_matrix and torchmoo.ops.stein_update (MT-SGD's Stein operators).

Checked against the loop references of torchmoo.reference (a double loop over particle pairs that adds
the four terms of the supplement's Eq. 3 with the explicit kernel derivatives), with error bars relative
to the size of those terms; for U's structure (exact symmetry, positive semi-definiteness, and the Gram
identities of the RKHS: U is the Gram matrix of the affine maps S_i -> phi_i); for the SVGD special
case against a textbook SVGD loop with autograd kernel gradients; for bitwise agreement across thread
counts and layouts; for the errors of the contract; and (with a GPU) CUDA against the CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import torchmoo as tm
from torchmoo.methods import mtsgd as mt
from torchmoo.reference import stein_task_matrix_reference, stein_update_reference

F32, F64 = torch.float32, torch.float64

#: max |U - U_ref| / (size of the terms of U) per dtype. float64: float64 everywhere except the rounding
#: of the inputs' products (measured below 1e-15). float32: sums of float32 products within column
#: blocks, float64 across them (measured 1e-8 to 2e-7; plain float32 summation over d = 1e5 terms would
#: be near 1e-5).
U_BAR = {F64: 1e-12, F32: 2e-6}
#: the same for phi (sums of K and M terms in the input dtype).
PHI_BAR = {F64: 1e-12, F32: 2e-6}


def problem(K: int, M: int, d: int, *, dtype=F64, seed: int = 0, x_scale: float = 1.0, s_scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(M, d, generator=g, dtype=F64) * x_scale
    S = torch.randn(K, M, d, generator=g, dtype=F64) * s_scale
    return X.to(dtype), S.to(dtype)


def bandwidth(X: torch.Tensor) -> float:
    return mt.median_bandwidth(X.double())


def _centered_dists(X: torch.Tensor) -> torch.Tensor:
    """(M, M) |x_a - x_0| + |x_b - x_0|: the kernels form R = Lap (X - x_0) (Lap 1 = 0), whose rounding is
    relative to these (>= |x_a - x_b|, and equal to it in the direct form for particles around x_0)."""
    n = (X - X[:1]).norm(dim=1)
    return n[:, None] + n[None, :]


def u_scale(X: torch.Tensor, S: torch.Tensor, h: float) -> torch.Tensor:
    """(K, K) bound on the terms of U_ij (absolute values of the four terms of every pair)."""
    X, S = X.double(), S.double()
    M, d = X.shape
    D2 = torch.cdist(X, X) ** 2
    k = torch.exp(-D2 / h)
    dk = (2.0 / h) * k * _centered_dists(X)  # bounds |grad k| as computed
    nS = S.norm(dim=-1)  # (K, M)
    first = nS @ k @ nS.T
    second = (nS @ dk).sum(1)  # sum_ab |S_ia| |dk_ab|
    trace = float(((2.0 / h) * k * (d + 2.0 * D2 / h)).sum())
    return (first + second[:, None] + second[None, :] + trace) / M**2


def phi_scale(X: torch.Tensor, S: torch.Tensor, w: torch.Tensor, h: float) -> torch.Tensor:
    """(M, 1) bound on the terms of phi_a[l]."""
    X, S, w = X.double(), S.double(), w.double()
    M = X.shape[0]
    D2 = torch.cdist(X, X) ** 2
    k = torch.exp(-D2 / h)
    s_inf = torch.einsum("i,iad->ad", w.abs(), S.abs()).amax(1)  # (M,)
    xc = (X - X[:1]).abs().amax(1)
    x_inf = xc[:, None] + xc[None, :]  # (M, M)
    return ((k @ s_inf) + w.abs().sum() * (2.0 / h) * (k * x_inf).sum(1))[:, None] / M


def check_u(X, S, h, bar=None) -> torch.Tensor:
    U = tm.ops.stein_task_matrix(X, S, h)
    K = S.shape[0]
    assert U.shape == (K, K) and U.dtype == F64 and U.device == X.device  # float64 for float32 inputs too
    assert torch.equal(U, U.T), "U is not exactly symmetric"
    R = stein_task_matrix_reference(X, S, h)
    err = float(((U.cpu().double() - R).abs() / u_scale(X, S, h)).max())
    limit = U_BAR[X.dtype] if bar is None else bar
    assert err <= limit, f"relative error {err:.2e} > {limit:.0e} for K, M, d = {tuple(S.shape)}, {X.dtype}"
    return U


def check_phi(X, S, w, h, bar=None) -> torch.Tensor:
    phi = tm.ops.stein_update(X, S, w, h)
    assert phi.shape == X.shape and phi.dtype == X.dtype and phi.device == X.device
    R = stein_update_reference(X, S, w, h)
    err = float(((phi.cpu().double() - R).abs() / phi_scale(X, S, w, h)).max())
    limit = PHI_BAR[X.dtype] if bar is None else bar
    assert err <= limit, f"relative error {err:.2e} > {limit:.0e} for K, M, d = {tuple(S.shape)}, {X.dtype}"
    return phi


def min_eig_ratio(U: torch.Tensor) -> float:
    """Smallest eigenvalue of U over its largest absolute entry."""
    U = U.double()
    return float(torch.linalg.eigvalsh(U).min()) / max(float(U.abs().max()), 1e-300)


# --------------------------------------------------------------------------------------------------
# Agreement with the loop references
# --------------------------------------------------------------------------------------------------

SHAPES = [(1, 1, 1), (1, 1, 5), (2, 1, 3), (3, 5, 2), (4, 3, 5), (1, 6, 1), (5, 13, 17), (40, 3, 50),
          (7, 8, 3001), (2, 4, 70_001)]


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("K, M, d", SHAPES)
def test_reference(K, M, d, dtype):
    X, S = problem(K, M, d, dtype=dtype, seed=K * 1000 + M * 10 + d)
    h = bandwidth(X)
    U = check_u(X, S, h)
    assert min_eig_ratio(U) >= -(1e-12 if dtype == F64 else 1e-5)
    w = torch.randn(K, generator=torch.Generator().manual_seed(d), dtype=F64).to(dtype)  # any real weights
    check_phi(X, S, w, h)


@given(
    K=st.integers(1, 6),
    M=st.integers(1, 8),
    d=st.integers(1, 300),
    log_h=st.floats(-2.0, 3.0),
    ex=st.integers(-3, 3),
    es=st.integers(-6, 6),
    dtype=st.sampled_from([F32, F64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_reference_property(K, M, d, log_h, ex, es, dtype, seed):
    X, S = problem(K, M, d, dtype=dtype, seed=seed, x_scale=10.0**ex, s_scale=10.0**es)
    h = 10.0**log_h * max(bandwidth(X), 1e-12)
    U = check_u(X, S, h)
    assert min_eig_ratio(U) >= -(1e-12 if dtype == F64 else 1e-5)
    w = torch.rand(K, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)
    check_phi(X, S, w, h)


@pytest.mark.parametrize("case", ["coincident", "two_clusters", "tiny_h", "huge_h", "offset"])
def test_degenerate_kernels(case):
    # The pivoted Cholesky factor of the kernel matrix has low rank (coincident particles, huge h) or is
    # the identity (tiny h); "offset" puts the particles far from the origin (cancellation in X - x_0).
    X, S = problem(3, 7, 40, seed=1)
    h = bandwidth(X)
    if case == "coincident":
        X = X[:1].expand(7, 40).clone()
        h = 1.0
    elif case == "two_clusters":
        X = torch.cat([X[:1].expand(4, 40), X[1:2].expand(3, 40)])
    elif case == "tiny_h":
        h *= 1e-4
    elif case == "huge_h":
        h *= 1e8
    else:
        X = X + 1e4
    for dtype in (F64, F32):
        Xd, Sd = X.to(dtype), S.to(dtype)
        U = check_u(Xd, Sd, h)
        assert min_eig_ratio(U) >= -(1e-12 if dtype == F64 else 1e-5)
        check_phi(Xd, Sd, torch.tensor([0.2, 0.5, 0.3], dtype=dtype), h)


def test_float32_accumulation():
    # d = 2e5 nearly equal products: plain float32 summation drifts (about 1e-5 relative); the blocked
    # float32 / float64 accumulation stays near the rounding of the result.
    g = torch.Generator().manual_seed(3)
    X = torch.randn(3, 200_000, generator=g, dtype=F64) * 0.01
    S = 1.0 + 0.01 * torch.randn(2, 3, 200_000, generator=g, dtype=F64)
    h = 1.0
    U32 = tm.ops.stein_task_matrix(X.float(), S.float(), h).double()
    U64 = tm.ops.stein_task_matrix(X.float().double(), S.float().double(), h)
    assert float(((U32 - U64) / U64).abs().max()) < 1e-6


# --------------------------------------------------------------------------------------------------
# Structure: U is the Gram matrix of the affine maps S_i -> phi_i
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, F32])
def test_gram_identities(dtype):
    # phi(S) = (K S + R) / M is affine in S, so for an affine combination S_w = sum_i w_i S_i (sum w = 1),
    # phi(S_w) = sum_i w_i phi(S_i) and <phi(S_w), phi(S_w)> = w'Uw, <phi(S_w), phi(S_j)> = (U w)_j.
    X, S = problem(4, 9, 25, dtype=dtype, seed=4)
    h = bandwidth(X)
    w = torch.tensor([0.1, 0.6, -0.3, 0.6], dtype=dtype)
    Sw = torch.einsum("i,iad->ad", w, S)
    U = tm.ops.stein_task_matrix(X, S, h).double()
    U2 = tm.ops.stein_task_matrix(X, torch.cat([Sw[None], S]), h).double()
    tol = (1e-12 if dtype == F64 else 1e-5) * float(U.abs().max())
    wd = w.double()
    assert abs(float(U2[0, 0] - wd @ U @ wd)) <= tol
    torch.testing.assert_close(U2[0, 1:], U @ wd, rtol=0, atol=tol)
    torch.testing.assert_close(U2[1:, 1:], U, rtol=0, atol=tol)
    # and the update is the same affine combination of the single-target updates
    phi = tm.ops.stein_update(X, S, w, h).double()
    phi1 = tm.ops.stein_update(X, Sw[None], torch.ones(1, dtype=dtype), h).double()
    torch.testing.assert_close(phi, phi1, rtol=0, atol=(1e-12 if dtype == F64 else 1e-5) * float(phi.abs().max()))


def _svgd_textbook(X: torch.Tensor, s: torch.Tensor, h: float) -> torch.Tensor:
    """SVGD (Liu & Wang 2016): phi(x_a) = mean_b [k(x_b, x_a) s_b + grad_{x_b} k(x_b, x_a)], the kernel
    gradient by autograd."""
    M = X.shape[0]
    out = torch.zeros_like(X)
    for a in range(M):
        for b in range(M):
            xb = X[b].clone().requires_grad_(True)
            k = torch.exp(-((xb - X[a]) ** 2).sum() / h)
            (gk,) = torch.autograd.grad(k, xb)
            out[a] += k.detach() * s[b] + gk
    return out / M


@pytest.mark.parametrize("M, d, h", [(1, 3, 1.0), (5, 2, 1.0), (7, 3, 0.3), (6, 40, 20.0)])
def test_k1_update_is_svgd(M, d, h):
    X, S = problem(1, M, d, seed=M + d)
    phi = tm.ops.stein_update(X, S, torch.ones(1, dtype=F64), h)
    torch.testing.assert_close(phi, _svgd_textbook(X, S[0], h), rtol=1e-12, atol=1e-12)
    phi32 = tm.ops.stein_update(X.float(), S.float(), torch.ones(1), h)
    torch.testing.assert_close(phi32.double(), phi, rtol=0, atol=1e-5 * float(phi.abs().max()))


# --------------------------------------------------------------------------------------------------
# Determinism, layouts, the method wrappers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64])
def test_deterministic_across_thread_counts(dtype):
    X, S = problem(5, 6, 150_001, dtype=dtype, seed=5)  # several column chunks
    h = bandwidth(X)
    w = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25], dtype=dtype)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        U1, phi1 = tm.ops.stein_task_matrix(X, S, h), tm.ops.stein_update(X, S, w, h)
        torch.set_num_threads(max(2, old))
        U2, phi2 = tm.ops.stein_task_matrix(X, S, h), tm.ops.stein_update(X, S, w, h)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(U1, U2)
    assert torch.equal(phi1, phi2)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_layouts_bitwise(dtype):
    X, S = problem(3, 5, 1000, dtype=dtype, seed=6)
    h = bandwidth(X)
    w = torch.tensor([0.5, 0.25, 0.25], dtype=dtype)
    U, phi = tm.ops.stein_task_matrix(X, S, h), tm.ops.stein_update(X, S, w, h)
    variants = [
        (X.T.contiguous().T, S.transpose(1, 2).contiguous().transpose(1, 2)),  # column-major: copied once
        (torch.zeros(5, 2000, dtype=dtype)[:, ::2].copy_(X), torch.zeros(3, 10, 1000, dtype=dtype)[:, ::2].copy_(S)),
        (X, S.permute(1, 0, 2).contiguous().permute(1, 0, 2)),  # targets not outermost in memory
    ]
    for Xv, Sv in variants:
        assert torch.equal(tm.ops.stein_task_matrix(Xv, Sv, h), U)
        assert torch.equal(tm.ops.stein_update(Xv, Sv, w, h), phi)
    Se = S[:1].expand(4, 5, 1000)  # target stride 0
    assert torch.equal(tm.ops.stein_task_matrix(X, Se, h), tm.ops.stein_task_matrix(X, Se.contiguous(), h))


def test_method_wrappers_use_the_operators():
    X, S = problem(3, 6, 20, seed=7)
    h = 1.7
    w = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    assert torch.equal(mt.stein_task_matrix(X, S, h), tm.ops.stein_task_matrix(X, S, h))
    assert torch.equal(mt.stein_update(X, S, h, w), tm.ops.stein_update(X, S, w, h))
    # half types are computed in float32; U is float64 for every input dtype
    U16 = mt.stein_task_matrix(X.half(), S.half(), h)
    assert U16.dtype == F64
    assert torch.equal(U16, tm.ops.stein_task_matrix(X.half().float(), S.half().float(), h))
    # inputs that require grad are read as constants
    Xg = X.clone().requires_grad_()
    assert not tm.ops.stein_task_matrix(Xg, S, h).requires_grad


def test_meta_shapes():
    X, S = torch.empty(5, 7, device="meta"), torch.empty(3, 5, 7, device="meta")
    assert tm.ops.stein_task_matrix(X, S, 1.0).shape == (3, 3)
    assert tm.ops.stein_update(X, S, torch.empty(3, device="meta"), 1.0).shape == (5, 7)
    # meta tensors (and torch.compile's fake ones) get the errors of real ones, not a shape made up
    with pytest.raises(ValueError, match=r"S must have shape \(K, M, d\)"):
        tm.ops.stein_task_matrix(X, torch.empty(3, 5, 6, device="meta"), 1.0)
    with pytest.raises(ValueError, match=r"X must have shape \(M, d\)"):
        tm.ops.stein_task_matrix(torch.empty(5, device="meta"), torch.empty(3, 5, device="meta"), 1.0)
    with pytest.raises(ValueError, match=r"w must have shape \(K,\)"):
        tm.ops.stein_update(X, S, torch.empty(4, device="meta"), 1.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        tm.ops.stein_update(X.half(), S.half(), torch.empty(3, device="meta").half(), 1.0)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_meta_and_compile_agree_with_the_kernels(dtype):
    """Shapes and dtypes of meta / compiled results are those of the kernels (U is float64 for float32
    input too), and meta tensors get the kernels' errors for K = 0, a w of another dtype and a bad h."""
    X, S = problem(3, 5, 4, dtype=dtype)
    w = torch.tensor([0.2, 0.3, 0.5], dtype=dtype)
    U, phi = tm.ops.stein_task_matrix(X, S, 1.5), tm.ops.stein_update(X, S, w, 1.5)
    assert U.dtype == F64 and phi.dtype == dtype
    Xm, Sm, wm = X.to("meta"), S.to("meta"), w.to("meta")
    Um, phim = tm.ops.stein_task_matrix(Xm, Sm, 1.5), tm.ops.stein_update(Xm, Sm, wm, 1.5)
    assert (Um.shape, Um.dtype) == (U.shape, U.dtype)
    assert (phim.shape, phim.dtype) == (phi.shape, phi.dtype)
    f = torch.compile(lambda X, S, w: (tm.ops.stein_task_matrix(X, S, 1.5), tm.ops.stein_update(X, S, w, 1.5)),
                      backend="eager", fullgraph=True)
    Uc, phic = f(X, S, w)
    assert torch.equal(Uc, U) and torch.equal(phic, phi)
    for x, y in [(X, S), (Xm, Sm)]:
        with pytest.raises(ValueError, match="K >= 1"):
            tm.ops.stein_task_matrix(x, y[:0], 1.0)
    other = F32 if dtype == F64 else F64
    for x, y, v in [(X, S, w), (Xm, Sm, wm)]:
        with pytest.raises(TypeError, match="dtype of X"):
            tm.ops.stein_update(x, y, v.to(other), 1.0)
        for h in (0.0, -0.0, -1.0):
            with pytest.raises(ValueError, match="positive finite"):
                tm.ops.stein_task_matrix(x, y, h)
            with pytest.raises(ValueError, match="positive finite"):
                tm.ops.stein_update(x, y, v, h)


def test_tensor_and_numpy_bandwidths():
    """A one-element tensor or a numpy scalar is a bandwidth like the number it holds; a tensor of another
    size is a ValueError that names h, not the RuntimeError of ``Tensor.item``."""
    X, S = problem(2, 4, 3)
    w = torch.tensor([0.7, 0.3], dtype=F64)
    assert torch.equal(tm.ops.stein_task_matrix(X, S, torch.tensor([1.25])), tm.ops.stein_task_matrix(X, S, 1.25))
    assert torch.equal(tm.ops.stein_update(X, S, w, torch.tensor(1.25)), tm.ops.stein_update(X, S, w, 1.25))
    # numpy scalars are numbers too (as for the QP options)
    np = pytest.importorskip("numpy")
    for h in (np.float32(1.25), np.float64(1.25)):
        assert torch.equal(tm.ops.stein_task_matrix(X, S, h), tm.ops.stein_task_matrix(X, S, 1.25))
        assert torch.equal(tm.ops.stein_update(X, S, w, h), tm.ops.stein_update(X, S, w, 1.25))
    assert torch.equal(tm.ops.stein_update(X, S, w, np.int64(2)), tm.ops.stein_update(X, S, w, 2.0))
    with pytest.raises(TypeError, match="bandwidth"):
        tm.ops.stein_task_matrix(X, S, True)
    for h in (torch.tensor([1.0, 2.0]), torch.ones(1, 2), torch.empty(0)):
        with pytest.raises(ValueError, match="bandwidth h"):
            tm.ops.stein_task_matrix(X, S, h)
        with pytest.raises(ValueError, match="bandwidth h"):
            tm.ops.stein_update(X, S, w, h)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_type_errors():
    X, S = problem(2, 3, 4)
    w = torch.ones(2, dtype=F64)
    with pytest.raises(TypeError, match="torch.Tensor"):
        tm.ops.stein_task_matrix(X.numpy(), S, 1.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        tm.ops.stein_update(X, S, [0.5, 0.5], 1.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        tm.ops.stein_task_matrix(X.half(), S.half(), 1.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        tm.ops.stein_task_matrix(X.long(), S.long(), 1.0)
    with pytest.raises(TypeError, match="dtype of X"):
        tm.ops.stein_task_matrix(X, S.float(), 1.0)
    with pytest.raises(TypeError, match="dtype of X"):
        tm.ops.stein_update(X, S, w.float(), 1.0)
    with pytest.raises(TypeError, match="bandwidth"):
        tm.ops.stein_task_matrix(X, S, "1.0")


def test_value_errors():
    X, S = problem(2, 3, 4)
    w = torch.ones(2, dtype=F64)
    with pytest.raises(ValueError, match=r"\(K, M, d\) = \(K, 3, 4\)"):
        tm.ops.stein_task_matrix(X, S[:, :2], 1.0)
    with pytest.raises(ValueError, match=r"\(M, d\)"):
        tm.ops.stein_task_matrix(X[0], S, 1.0)
    with pytest.raises(ValueError, match=r"\(M, d\)"):
        tm.ops.stein_task_matrix(X[:, :0], S[:, :, :0], 1.0)
    with pytest.raises(ValueError, match="K >= 1"):
        tm.ops.stein_task_matrix(X, S[:0], 1.0)
    for h in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="positive finite"):
            tm.ops.stein_task_matrix(X, S, h)
        with pytest.raises(ValueError, match="positive finite"):
            tm.ops.stein_update(X, S, w, h)
    with pytest.raises(ValueError, match="same device"):
        tm.ops.stein_task_matrix(X, S.to("meta"), 1.0)
    with pytest.raises(ValueError, match="same device"):
        tm.ops.stein_update(X, S, w.to("meta"), 1.0)
    with pytest.raises(ValueError, match=r"w must have shape \(K,\) = \(2,\)"):
        tm.ops.stein_update(X, S, torch.ones(3, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="w must be finite"):
        tm.ops.stein_update(X, S, torch.tensor([1.0, math.nan], dtype=F64), 1.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("M", [1, 4])
def test_non_finite_input(bad, M):
    X, S = problem(2, M, 3000, seed=8)
    w = torch.tensor([0.0, 1.0], dtype=F64)  # a zero weight on the bad target still finds it
    Xb = X.clone()
    Xb[M - 1, 1234] = bad
    with pytest.raises(ValueError, match="X must be finite"):
        tm.ops.stein_task_matrix(Xb, S, 1.0)
    with pytest.raises(ValueError, match="X must be finite"):
        tm.ops.stein_update(Xb, S, w, 1.0)
    Sb = S.clone()
    Sb[0, M - 1, 2999] = bad
    with pytest.raises(ValueError, match="S must be finite"):
        tm.ops.stein_task_matrix(X, Sb, 1.0)
    with pytest.raises(ValueError, match="S must be finite"):
        tm.ops.stein_update(X, Sb, w, 1.0)


def test_overflow():
    X, S = problem(2, 3, 100, dtype=F32)
    with pytest.raises(ValueError, match="overflows"):
        tm.ops.stein_task_matrix(X, S * 1e20, 1.0)  # |S|^2 ~ 1e42 > float32 max
    assert torch.isfinite(tm.ops.stein_task_matrix(X.double(), S.double() * 1e20, 1.0)).all()
    with pytest.raises(ValueError, match="overflows"):
        tm.ops.stein_update(X, torch.full_like(S, 2e38), torch.ones(2), 1.0)  # S_w = 4e38


# --------------------------------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------------------------------


@pytest.mark.cuda
class TestCuda:
    @pytest.mark.parametrize("dtype", [F32, F64])
    @pytest.mark.parametrize("K, M, d", [(1, 1, 1), (3, 5, 2), (5, 13, 17), (7, 50, 10_000), (40, 5, 100_003),
                                         (70, 3, 500), (2, 300, 64)])
    def test_matches_cpu(self, K, M, d, dtype):
        X, S = problem(K, M, d, dtype=dtype, seed=K + M + d)
        h = bandwidth(X)
        w = torch.rand(K, generator=torch.Generator().manual_seed(d), dtype=F64).to(dtype)
        Xc, Sc, wc = X.cuda(), S.cuda(), w.cuda()
        U, Uc = tm.ops.stein_task_matrix(X, S, h), tm.ops.stein_task_matrix(Xc, Sc, h)
        assert Uc.device.type == "cuda" and Uc.dtype == F64 and torch.equal(Uc, Uc.T)
        bar = U_BAR[dtype] * 10
        scale = u_scale(X, S, h) if M * M * K * K * d <= 5e7 else float(U.abs().max()) * torch.ones(K, K, dtype=F64)
        assert float(((Uc.cpu().double() - U.double()).abs() / scale).max()) <= bar
        assert torch.equal(Uc, tm.ops.stein_task_matrix(Xc, Sc, h)), "not deterministic"
        phi, phic = tm.ops.stein_update(X, S, w, h), tm.ops.stein_update(Xc, Sc, wc, h)
        assert phic.shape == (M, d) and phic.dtype == dtype
        tol = PHI_BAR[dtype] * 10 * float(phi.abs().max())
        torch.testing.assert_close(phic.cpu(), phi, rtol=0, atol=tol)

    def test_reference_small(self):
        X, S = problem(4, 6, 33, seed=9)
        check_u(X.cuda(), S.cuda(), 1.3)
        check_phi(X.cuda(), S.cuda(), torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64).cuda(), 1.3)

    def test_errors(self):
        X, S = problem(2, 3, 500, seed=10)
        Sb = S.clone()
        Sb[1, 2, 7] = math.nan
        with pytest.raises(ValueError, match="S must be finite"):
            tm.ops.stein_task_matrix(X.cuda(), Sb.cuda(), 1.0)
        with pytest.raises(ValueError, match="same device"):
            tm.ops.stein_task_matrix(X, S.cuda(), 1.0)
        # the operators themselves (not only the wrappers) check devices before taking a CUDA guard
        with pytest.raises(ValueError, match="device"):
            torch.ops.torchmoo.stein_task_matrix(X, S.cuda(), 1.0)
        with pytest.raises(ValueError, match="is on"):
            torch.ops.torchmoo.stein_update(X, S, torch.ones(2, dtype=X.dtype).cuda(), 1.0)

    def test_low_rank_kernel_matrix_memory_is_bounded(self):
        """Coinciding particles (kernel matrix of rank 1): the work buffers stay bounded (the segment
        width is divided by max(K r, M), not K r)."""
        X = torch.zeros(64, 2**22).cuda()
        S = torch.randn(1, 64, 2**22, generator=torch.Generator().manual_seed(3)).cuda()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        tm.ops.stein_task_matrix(X, S, 1.0)
        torch.cuda.synchronize()
        assert torch.cuda.max_memory_allocated() - base < 512 * 2**20
