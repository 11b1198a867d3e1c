"""Tests of torchmoo.ops.combine: d = sum_i w_i J_i for J (..., m, n), w (..., m).

Checked against the float64 reference (torchmoo.reference.combine_reference) within the error bound of
a sum of m products in the dtype, for the order of the sum, batch shapes, layouts and thread counts
(bitwise), the errors of the contract, the gradient, the aggregators that use it, and (with a GPU) CUDA
against the CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import torchmoo as tm
from torchmoo.reference import combine_reference

F32, F64 = torch.float32, torch.float64


def randn(*shape, dtype=F32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64).mul_(scale).to(dtype)


def check(J: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Shape, dtype, device, and the error bound of a sum of m products in the dtype: every entry within
    m eps sum_i |w_i J_i| of the float64 reference (eps of the dtype)."""
    d = tm.ops.combine(J, w)
    assert d.shape == (*J.shape[:-2], J.shape[-1]) and d.dtype == J.dtype and d.device == J.device
    ref = combine_reference(J, w)
    size = combine_reference(J.abs(), w.abs())
    m = J.shape[-2]
    eps = torch.finfo(J.dtype).eps
    err = (d.cpu().double() - ref).abs()
    assert bool((err <= max(m, 1) * eps * size + 1e-300).all()), float((err / size.clamp_min(1e-300)).max())
    return d


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("m, n", [(1, 1), (2, 7), (3, 31), (10, 1000), (10, 100_003), (40, 3001), (100, 65)])
def test_reference(m, n, dtype):
    check(randn(m, n, dtype=dtype, seed=m + n), randn(m, dtype=dtype, seed=n))


@given(
    batch=st.lists(st.integers(0, 3), min_size=0, max_size=2),
    m=st.integers(0, 20),
    n=st.integers(0, 700),
    dtype=st.sampled_from([F32, F64]),
    e=st.integers(-8, 8),
    seed=st.integers(0, 2**31 - 1),
)
def test_reference_property(batch, m, n, dtype, e, seed):
    J = randn(*batch, m, n, dtype=dtype, seed=seed, scale=10.0**e)
    w = randn(*batch, m, dtype=dtype, seed=seed + 1)
    check(J, w)


def test_matches_matmul_and_zero_rows():
    J, w = randn(10, 5000, dtype=F64), randn(10, dtype=F64, seed=1)
    torch.testing.assert_close(tm.ops.combine(J, w), w @ J, rtol=1e-14, atol=1e-14)
    assert torch.equal(tm.ops.combine(torch.empty(0, 6), torch.empty(0)), torch.zeros(6))
    assert tm.ops.combine(torch.empty(4, 0), torch.ones(4)).shape == (0,)
    assert tm.ops.combine(torch.empty(0, 3, 5), torch.empty(0, 3)).shape == (0, 5)


def test_rows_summed_in_order():
    # Each entry is w_0 J_0 + w_1 J_1 + ... in this order, in the dtype: (1e8 + 1) - 1e8 loses the 1 in
    # float32 (1e8 + 1 rounds to 1e8) and keeps it in float64; (1e8 - 1e8) + 1 keeps it in both.
    J = torch.tensor([[1e8, 1e8], [1.0, -1e8], [-1e8, 1.0]])
    assert tm.ops.combine(J, torch.ones(3)).tolist() == [0.0, 1.0]
    assert tm.ops.combine(J.double(), torch.ones(3, dtype=F64)).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("dtype", [F32, F64])
def test_batched_equals_single_and_layouts(dtype):
    J, w = randn(3, 4, 5, 2000, dtype=dtype, seed=2), randn(3, 4, 5, dtype=dtype, seed=3)
    d = check(J, w)
    for b in range(3):
        for c in range(4):
            assert torch.equal(d[b, c], tm.ops.combine(J[b, c], w[b, c]))
    assert torch.equal(tm.ops.combine(J.mT.contiguous().mT, w), d)  # column-major rows: copied once
    wide = torch.zeros(3, 4, 10, 2000, dtype=dtype)
    wide[:, :, ::2] = J
    assert torch.equal(tm.ops.combine(wide[:, :, ::2], w), d)  # row stride 2n
    assert torch.equal(tm.ops.combine(J[:1].expand(3, 4, 5, 2000), w[:1].expand(3, 4, 5)), d[:1].expand(3, 4, 2000))
    assert torch.equal(tm.ops.combine(J, w.mT.contiguous().mT), d)


def test_deterministic_across_thread_counts():
    J, w = randn(10, 500_001, seed=4), randn(10, seed=5)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        d1 = tm.ops.combine(J, w)
        torch.set_num_threads(max(2, old))
        d2 = tm.ops.combine(J, w)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(d1, d2)


def test_portable_path(monkeypatch):
    J, w = randn(7, 3001, dtype=F64, seed=6), randn(7, dtype=F64, seed=7)
    d = tm.ops.combine(J, w)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    check(J, w)
    check(J.float(), w.float())
    torch.testing.assert_close(tm.ops.combine(J, w), d, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types(dtype):
    J, w = randn(6, 3000, dtype=dtype, seed=8), randn(6, dtype=dtype, seed=9)
    assert torch.equal(tm.ops.combine(J, w), tm.ops.combine(J.float(), w.float()).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_j_takes_float32_weights(dtype):
    """A half J takes float32 weights as they are (its sums are float32): weights beyond float16's range
    (1e5 > 65504) on small entries give a finite d, bitwise the float32 combination rounded once; on the
    meta device too. Other dtype pairs stay errors."""
    J = 1e-3 * randn(3, 500, dtype=dtype, seed=30)
    w = torch.tensor([1e5, -4e4, 7e4])
    d = tm.ops.combine(J, w)
    assert d.dtype == dtype and bool(torch.isfinite(d).all())
    assert torch.equal(d, tm.ops.combine(J.float(), w).to(dtype))
    assert tm.ops.combine_weight_dtype(dtype) == torch.float32
    assert tm.ops.combine(J.to("meta"), w.to("meta")).dtype == dtype
    # the gradient w.r.t. the float32 weights is float32
    wg = w.clone().requires_grad_()
    (gw,) = torch.autograd.grad(tm.ops.combine(J, wg).float().sum(), wg)
    assert gw.dtype == torch.float32
    torch.testing.assert_close(gw, J.float().sum(1), rtol=1e-3, atol=1e-3)
    for Jx, wx in [(J, w.double()), (J.float(), w.double()), (J.double(), w), (J.float(), w.half())]:
        with pytest.raises(TypeError, match="dtype of J"):
            tm.ops.combine(Jx, wx)
        with pytest.raises(TypeError, match="dtype of J"):
            tm.ops.combine(Jx.to("meta"), wx.to("meta"))
    for t in (torch.float32, torch.float64):
        assert tm.ops.combine_weight_dtype(t) == t


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_errors():
    J, w = randn(3, 10), randn(3)
    with pytest.raises(TypeError, match="torch.Tensor"):
        tm.ops.combine(J, [1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="floating-point"):
        tm.ops.combine(J.long(), w.long())
    with pytest.raises(TypeError, match="dtype of J"):
        tm.ops.combine(J, w.double())
    with pytest.raises(ValueError, match=r"\(\.\.\., m, n\)"):
        tm.ops.combine(J[0], w)
    with pytest.raises(ValueError, match=r"w must have shape \(\.\.\., m\)"):
        tm.ops.combine(J, randn(4))
    with pytest.raises(ValueError, match="batch dims"):
        tm.ops.combine(randn(2, 3, 10), w)  # no broadcasting
    with pytest.raises(ValueError, match="same device"):
        tm.ops.combine(J, w.to("meta"))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite(bad):
    J, w = randn(2, 3, 4, 500, seed=10), randn(2, 3, 4, seed=11)
    Jb = J.clone()
    Jb[1, 2, 3, 17] = bad
    with pytest.raises(ValueError, match=r"J must be finite.*batch index \[1, 2\]"):
        tm.ops.combine(Jb, w)
    wb = w.clone()
    wb[0, 1, 0] = bad
    with pytest.raises(ValueError, match=r"w must be finite.*batch index \[0, 1\]"):
        tm.ops.combine(J, wb)
    with pytest.raises(ValueError, match="overflows"):
        tm.ops.combine(torch.full((2, 100), 3e38), torch.ones(2))


@pytest.mark.parametrize("n", [5, 100, 1000])
def test_overflow_in_any_column_is_found(n):
    # Overflow in one column only: a column of a full SIMD group or one of the columns past the last group.
    for col in sorted({0, n // 2, n - 1}):
        J = torch.ones(2, n)
        J[:, col] = 3e38
        with pytest.raises(ValueError, match="overflows"):
            tm.ops.combine(J, torch.ones(2))
        d = tm.ops.combine(J, torch.ones(2), check_finite=False)
        assert torch.isinf(d[col]) and int(torch.isinf(d).sum()) == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_result_overflow(dtype):
    # A float32 sum that is finite (3/1024 above the half type's largest value, below float32's) but
    # overflows when it is rounded to the half type.
    big = torch.finfo(dtype).max
    J = torch.full((2, 40), big, dtype=dtype)
    w = torch.tensor([1.0, 3.0 / 1024])
    assert bool(torch.isfinite(tm.ops.combine(J.float(), w)).all())
    with pytest.raises(ValueError, match="overflows"):
        tm.ops.combine(J, w)
    assert torch.isinf(tm.ops.combine(J, w, check_finite=False)).all()
    assert torch.equal(tm.ops.combine(J, torch.tensor([1.0, -0.5], dtype=dtype)), (0.5 * J[0].float()).to(dtype))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_transposed_short_rows(n):
    # J (7, n) with column stride 7: even two columns must not be read as if they were adjacent.
    J = randn(2, n, 7, dtype=F64, seed=14).mT
    w = randn(2, 7, dtype=F64, seed=15)
    d = check(J, w)
    assert torch.equal(d, tm.ops.combine(J.contiguous(), w))


def test_non_finite_in_long_rows_names_the_batch_index():
    # Rows long enough for several column chunks per problem.
    J, w = randn(3, 4, 40_000, seed=16), randn(3, 4, seed=17)
    for b, col in [(0, 39_999), (2, 30_000), (1, 20_000)]:
        Jb = J.clone()
        Jb[b, 1, col] = math.nan
        with pytest.raises(ValueError, match=rf"J must be finite.*batch index \[{b}\]"):
            tm.ops.combine(Jb, w)


# --------------------------------------------------------------------------------------------------
# Autograd, tracing, users
# --------------------------------------------------------------------------------------------------


def test_gradient():
    J = randn(2, 4, 30, dtype=F64, seed=12).requires_grad_()
    w = randn(2, 4, dtype=F64, seed=13).requires_grad_()
    assert torch.autograd.gradcheck(tm.ops.combine, (J, w))
    assert torch.autograd.gradgradcheck(tm.ops.combine, (J, w))
    (gJ,) = torch.autograd.grad(tm.ops.combine(J, w.detach()).sum(), J)
    torch.testing.assert_close(gJ, w.detach()[..., None].expand_as(J))


def test_meta_and_compile():
    assert tm.ops.combine(torch.empty(2, 5, 7, device="meta"), torch.empty(2, 5, device="meta")).shape == (2, 7)
    # meta tensors (and torch.compile's fake ones) get the errors of real ones, not a shape made up
    meta = lambda *shape, dtype=torch.float32: torch.empty(*shape, dtype=dtype, device="meta")  # noqa: E731
    for J, w in [(meta(2, 5, 7), meta(5)), (meta(5, 7), meta(7)), (meta(5, 7), meta(2, 5))]:
        with pytest.raises(ValueError, match=r"w must have shape \(\.\.\., m\)"):
            tm.ops.combine(J, w)
    with pytest.raises(ValueError, match="at least 2 dims"):
        tm.ops.combine(meta(7), meta(()))
    with pytest.raises(TypeError, match="dtype of J"):
        tm.ops.combine(meta(5, 7), meta(5, dtype=F64))
    f = torch.compile(lambda J, w: tm.ops.combine(J, w), backend="eager", fullgraph=True)
    J, w = randn(4, 100, seed=14), randn(4, seed=15)
    assert torch.equal(f(J, w), tm.ops.combine(J, w))


def test_aggregators_use_it():
    J = randn(5, 4000, seed=16)
    agg = tm.methods.MGDA()
    d = agg(J)
    assert torch.equal(d, tm.ops.combine(J, agg.weights))
    # MGDA's common descent property <g_i, d> >= |d|^2
    G = J.double() @ J.double().T
    dd = float(agg.weights.double() @ G @ agg.weights.double())
    assert bool(((J.double() @ d.double()) >= dd * (1 - 1e-5)).all())


# --------------------------------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------------------------------


@pytest.mark.cuda
class TestCuda:
    @pytest.mark.parametrize("dtype", [F32, F64])
    @pytest.mark.parametrize("shape", [(1, 1), (10, 1_000_003), (40, 3001), (3, 4, 5, 777), (70_000, 2, 3)])
    def test_matches_cpu(self, shape, dtype):
        J = randn(*shape, dtype=dtype, seed=sum(shape))
        w = randn(*shape[:-1], dtype=dtype, seed=1)
        dc = check(J.cuda(), w.cuda())
        d = tm.ops.combine(J, w)
        # the same sums in the same order; rounding may differ where one device contracts to FMA
        size = combine_reference(J.abs(), w.abs())
        m = J.shape[-2]
        assert bool(((dc.cpu().double() - d.double()).abs() <= 2 * m * torch.finfo(dtype).eps * size).all())
        assert torch.equal(dc, tm.ops.combine(J.cuda(), w.cuda())), "not deterministic"

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_j_takes_float32_weights(self, dtype):
        J = 1e-3 * randn(3, 5000, dtype=dtype, seed=31)
        w = torch.tensor([1e5, -4e4, 7e4])  # beyond float16's range, d fits
        dc = tm.ops.combine(J.cuda(), w.cuda())
        assert dc.dtype == dtype and bool(torch.isfinite(dc).all())
        ref = tm.ops.combine(J.float(), w)
        assert bool(((dc.cpu().float() - ref).abs() <= 4 * torch.finfo(dtype).eps * ref.abs() + 1e-6).all())

    def test_errors_and_gradient(self):
        J = randn(3, 500, seed=17).cuda()
        w = randn(3, seed=18).cuda()
        Jb = J.clone()
        Jb[1, 3] = math.nan
        with pytest.raises(ValueError, match="J must be finite"):
            tm.ops.combine(Jb, w)
        Jg = J.double().requires_grad_()
        wg = w.double().requires_grad_()
        assert torch.autograd.gradcheck(tm.ops.combine, (Jg, wg))
        # the operator itself (not only the wrapper) checks devices before taking a CUDA guard
        with pytest.raises(ValueError, match="device"):
            torch.ops.torchmoo.combine(J.cpu(), w)


def test_check_finite_false_returns_non_finite_entries_instead_of_raising():
    J = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    w = torch.tensor([0.2, 0.3, 0.5])
    torch.testing.assert_close(tm.ops.combine(J, w, check_finite=False), tm.ops.combine(J, w), rtol=0, atol=0)
    J[2, 4] = float("inf")
    with pytest.raises(ValueError, match="J must be finite"):
        tm.ops.combine(J, w)
    d = tm.ops.combine(J, w, check_finite=False)
    assert d[4] == float("inf") and bool(torch.isfinite(torch.cat([d[:4], d[5:]])).all())
    torch.library.opcheck(torch.ops.torchmoo.combine.default, (J.clone().fill_(1.0), w, False))
