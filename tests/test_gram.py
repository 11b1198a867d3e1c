"""Tests of torchmoo.ops.gram: G = J J^T for J of shape (..., m, n).

Checked against the float64 reference (torchmoo.reference.gram_reference) with error bars that plain
float32 accumulation would miss, for exact symmetry, for bitwise agreement across layouts, batch
shapes and thread counts, for the errors of the contract, the gradient, and (with a GPU) CUDA
against the CPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import torchmoo as tm
from torchmoo.reference import gram_reference

F32, F64 = torch.float32, torch.float64

#: max |G - R| / sqrt(R_ii R_jj) allowed per dtype (R the float64 reference). float32: the kernel sums
#: in float32 over at most 1024 columns and in float64 across blocks, so its error stays near the
#: rounding of G itself (measured 2-5e-8 for n = 1e6) while plain float32 accumulation drifts with n
#: (torch's J @ J.T: 6e-5 for n = 1e6, m = 10), see test_float32_accumulation_beats_plain_float32.
BAR = {F64: 1e-13, F32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def rel_error(G: torch.Tensor, J: torch.Tensor) -> float:
    """max |G - R| / sqrt(R_ii R_jj) over all entries (0 where the row norms vanish)."""
    R = gram_reference(J)
    d = R.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    scale = d.unsqueeze(-1) * d.unsqueeze(-2)
    err = (G.detach().to("cpu", F64) - R).abs()
    err = torch.where(scale > 0, err / torch.where(scale > 0, scale, torch.ones_like(scale)), err)
    return float(err.max()) if err.numel() else 0.0


def check(J: torch.Tensor, bar: float | None = None) -> torch.Tensor:
    """Contract checks shared by most tests; returns G."""
    G = tm.ops.gram(J)
    m = J.shape[-2]
    assert G.shape == (*J.shape[:-2], m, m)
    assert G.dtype == J.dtype and G.device == J.device
    assert torch.equal(G, G.mT), "G is not exactly symmetric"
    e = rel_error(G, J)
    limit = BAR[J.dtype] if bar is None else bar
    assert e <= limit, f"relative error {e:.3e} above {limit:.0e} for J {tuple(J.shape)} {J.dtype}"
    return G


def randn(*shape, dtype=F32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64).mul_(scale).to(dtype)


# --------------------------------------------------------------------------------------------------
# Agreement with the reference
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 10, 16, 23, 40, 64])
def test_reference_shapes(m, dtype):
    check(randn(m, 3001, dtype=dtype, seed=m))


# n around the vector width (8 float32 lanes), the 1024-column block and several chunks.
@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 15, 17, 1023, 1024, 1025, 1031, 3277, 40_000, 70_001])
def test_reference_lengths(n):
    for dtype in (F32, F64):
        check(randn(6, n, dtype=dtype, seed=n))


def test_m1_n1():
    J = torch.tensor([[3.0]])
    G = tm.ops.gram(J)
    assert G.shape == (1, 1) and G.item() == 9.0
    assert tm.ops.gram(torch.tensor([[1.0, 2.0, 2.0]])).item() == 9.0
    G = tm.ops.gram(torch.tensor([[1.0], [2.0]], dtype=F64))
    assert torch.equal(G, torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=F64))


def test_known_values():
    # Rows orthogonal by construction: G is diagonal with the squared norms, exactly.
    J = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, -1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 5.0]])
    assert torch.equal(tm.ops.gram(J), torch.diag(torch.tensor([2.0, 6.0, 25.0])))


def test_reference_is_exact_float64_for_float32_input():
    # The tests measure the kernel against gram_reference: a reference that summed in the input dtype
    # would share the kernel's float32 rounding and hide it. 4097^2 = 2^24 + 2^13 + 1 is odd, above
    # 2^24, so not a float32 number; the reference must give it exactly (in float64).
    J = torch.tensor([[4097.0, 0.0], [4095.0, 1.0]], dtype=F32)
    R = gram_reference(J)
    assert R.dtype == F64
    assert torch.equal(R, torch.tensor([[16785409.0, 16777215.0], [16777215.0, 16769026.0]], dtype=F64))
    assert torch.equal(tm.ops.gram(J), R.to(F32))


def test_float32_accumulation_beats_plain_float32():
    # Long rows of nearly equal entries: every product rounds the same way when it is added to a large
    # float32 running sum, so plain float32 accumulation drifts (measured 2.9e-5 here). The bar of 1e-6
    # is therefore meaningful; the kernel (float32 within blocks, float64 across) meets it (2e-8).
    n = 400_000
    J = 1.1 + randn(3, n, seed=1, scale=0.01)
    assert rel_error(tm.ops.gram(J), J) <= 1e-6
    x, y = J[0].numpy(), J[1].numpy()
    running = float(np.cumsum(x * y, dtype=np.float32)[-1])  # sequential float32 accumulation
    exact = float(gram_reference(J)[0, 1])
    assert abs(running - exact) / exact > 1e-5


@given(
    batch=st.lists(st.integers(0, 3), min_size=0, max_size=2),
    m=st.integers(0, 24),
    n=st.integers(0, 2500),
    dtype=st.sampled_from([F32, F64]),
    e=st.integers(-8, 8),
    seed=st.integers(0, 2**31 - 1),
)
def test_reference_property(batch, m, n, dtype, e, seed):
    J = randn(*batch, m, n, dtype=dtype, seed=seed, scale=10.0**e)
    check(J)


# --------------------------------------------------------------------------------------------------
# Layouts, batches, determinism
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64])
def test_layouts_bitwise(dtype):
    base = randn(3, 5, 2000, dtype=dtype, seed=3)
    G = tm.ops.gram(base)
    # Same numbers in other layouts: the kernel sees the same rows, so G is bitwise the same.
    transposed = base.mT.contiguous().mT  # (3, 5, 2000) with column-major rows: copied once
    assert transposed.stride(-1) != 1
    assert torch.equal(tm.ops.gram(transposed), G)
    wide = torch.zeros(3, 10, 2000, dtype=dtype)
    wide[:, ::2] = base
    assert torch.equal(tm.ops.gram(wide[:, ::2]), G)  # row stride 2n, no copy
    strided_cols = torch.zeros(3, 5, 4000, dtype=dtype)
    strided_cols[..., ::2] = base
    assert torch.equal(tm.ops.gram(strided_cols[..., ::2]), G)  # column stride 2
    permuted = base.permute(1, 0, 2).contiguous().permute(1, 0, 2)  # batch dim not outermost in memory
    assert torch.equal(tm.ops.gram(permuted), G)
    expanded = base[:1].expand(4, 5, 2000)  # batch stride 0
    assert torch.equal(tm.ops.gram(expanded), G[:1].expand(4, 5, 5))


def test_transposed_tall_input():
    A = randn(5000, 7, seed=4)  # e.g. gradients stored as columns
    G = check(A.mT)
    assert torch.equal(G, tm.ops.gram(A.mT.contiguous()))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_transposed_short_rows(n):
    # J (7, n) with column stride 7: even two columns must not be read as if they were adjacent.
    A = randn(2, n, 7, dtype=F64, seed=18)
    J = A.mT
    assert n == 1 or J.stride(-1) != 1
    assert torch.equal(tm.ops.gram(J), tm.ops.gram(J.contiguous()))
    check(J)


@pytest.mark.parametrize("shape", [(4, 6, 3000), (2, 3, 9, 100), (1, 1, 2, 70_001), (3, 4, 40_000)])
def test_batched_equals_single(shape):
    J = randn(*shape, seed=5)
    G = check(J)
    flat_J = J.reshape(-1, *shape[-2:])
    flat_G = G.reshape(-1, shape[-2], shape[-2])
    for b in range(flat_J.shape[0]):
        assert torch.equal(flat_G[b], tm.ops.gram(flat_J[b]))


def test_deterministic_across_thread_counts():
    J = randn(10, 300_000, seed=6)  # several column chunks
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        G1 = tm.ops.gram(J)
        torch.set_num_threads(max(2, old))
        G2 = tm.ops.gram(J)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(G1, G2)
    assert torch.equal(G2, tm.ops.gram(J))


def test_portable_path(monkeypatch):
    J = randn(2, 11, 5003, seed=7)
    G_default = tm.ops.gram(J)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")  # torch's switch to portable kernels
    for dtype in (F32, F64):
        check(J.to(dtype))
    G_portable = tm.ops.gram(J)
    assert rel_error(G_portable, J) <= BAR[F32]
    assert rel_error(G_default, J) <= BAR[F32]


@pytest.mark.parametrize("m, n", [(65, 300), (70, 64 * 70), (100, 50)])
def test_large_m(m, n):
    # m > 64: at::matmul for short rows (float32 GEMM accuracy), the kernel for long rows on AVX2 CPUs.
    J = randn(m, n, seed=m)
    check(J, bar=1e-5)
    check(J.double())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types(dtype):
    J = randn(2, 6, 3000, dtype=dtype, seed=8, scale=0.1)
    G = check(J)
    # Computed in float32 from the same values, then rounded: exactly the float32 result rounded.
    assert torch.equal(G, tm.ops.gram(J.float()).to(dtype))


# --------------------------------------------------------------------------------------------------
# Values at the edges of the range
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, scale", [(F32, 1e15), (F32, 1e-12), (F64, 1e150), (F64, 1e-140)])
def test_large_and_small_values(dtype, scale):
    check(randn(5, 3000, dtype=dtype, seed=9, scale=scale))


def test_integer_entries_give_the_correctly_rounded_result():
    # Entries in [-63, 63]: a block's float32 partial sums (at most 128 products per lane, 1024 per block)
    # stay below 2^24 and are exact, so with float64 sums across blocks and chunks G is the exact integer
    # J J^T rounded once to float32. Sums across blocks or chunks in float32 would round once the totals
    # pass 2^24 (a chunk of a single row: 32768 columns, about 4e7; a whole row: about 3.5e8).
    n = 2**18 + 3  # 8 to 32 chunks of 8 to 32 blocks, and a partial vector at the end
    for shape in [(16, 1, n), (4, 4, n)]:
        J = torch.randint(-63, 64, shape, generator=torch.Generator().manual_seed(16))
        exact = J @ J.mT
        assert torch.equal(tm.ops.gram(J.to(F32)), exact.to(F64).to(F32))
        assert torch.equal(tm.ops.gram(J.to(F64)), exact.to(F64))


def test_cancellation():
    # Rows nearly antiparallel: G is accurate relative to the row norms (the bar of rel_error).
    x = randn(1, 50_000, seed=10)
    J = torch.cat([x, -x + 1e-3 * randn(1, 50_000, seed=11)])
    check(J)


def test_zero_sized():
    assert tm.ops.gram(torch.empty(0, 5)).shape == (0, 0)
    G = tm.ops.gram(torch.empty(3, 0, dtype=F64))
    assert G.dtype == F64 and torch.equal(G, torch.zeros(3, 3, dtype=F64))
    assert tm.ops.gram(torch.empty(2, 0, 4, 6)).shape == (2, 0, 4, 4)
    assert torch.equal(tm.ops.gram(torch.empty(2, 3, 0)), torch.zeros(2, 3, 3))
    assert torch.equal(tm.ops.gram(torch.zeros(4, 100)), torch.zeros(4, 4))


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_type_errors():
    with pytest.raises(TypeError, match="torch.Tensor"):
        tm.ops.gram([[1.0, 2.0]])
    for dtype in (torch.int64, torch.int32, torch.bool, torch.complex64):
        with pytest.raises(TypeError, match="floating-point"):
            tm.ops.gram(torch.ones(2, 3, dtype=dtype))


def test_shape_errors():
    for shape in [(), (5,)]:
        with pytest.raises(ValueError, match=r"\(\.\.\., m, n\)"):
            tm.ops.gram(torch.ones(shape))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("m", [3, 80])  # the kernel and the at::matmul path
def test_non_finite_input(bad, m):
    J = randn(2, 3, m, 500, seed=12)
    J[1, 2, m - 1, 17] = bad
    with pytest.raises(ValueError, match=r"finite.*batch index \[1, 2\]"):
        tm.ops.gram(J)
    with pytest.raises(ValueError, match="finite"):
        tm.ops.gram(J[1, 2])


def test_non_finite_input_in_long_rows_names_the_first_batch_index():
    # Rows long enough for several column chunks per problem (their partial Gram matrices are summed
    # afterwards): a NaN in one chunk is still found, and with several bad problems the first is named.
    J = randn(6, 3, 70_001, seed=17)
    J[2, 1, 50_000] = math.nan
    with pytest.raises(ValueError, match=r"J must be finite.*batch index \[2\]"):
        tm.ops.gram(J)
    for b in (3, 4, 5):
        J[b, 0, 69_999] = math.inf
    with pytest.raises(ValueError, match=r"J must be finite.*batch index \[2\]"):
        tm.ops.gram(J)
    with pytest.raises(ValueError, match="overflows"):
        tm.ops.gram(torch.full((2, 70_001), 1e18))  # finite, but each chunk's sum exceeds float32


def test_overflow():
    J = torch.full((2, 1000), 1e19)  # finite, but (1e19)^2 * 1000 exceeds float32
    with pytest.raises(ValueError, match="overflows"):
        tm.ops.gram(J)
    G = tm.ops.gram(J.double())  # fine in float64
    assert torch.isfinite(G).all()
    with pytest.raises(ValueError, match="overflows"):
        tm.ops.gram(torch.full((2, 100), 300.0, dtype=torch.float16))  # 9e6 > float16 max


# --------------------------------------------------------------------------------------------------
# Autograd and tracing
# --------------------------------------------------------------------------------------------------


def test_gradient():
    J = randn(2, 4, 30, dtype=F64, seed=13).requires_grad_()
    assert torch.autograd.gradcheck(tm.ops.gram, (J,))
    assert torch.autograd.gradgradcheck(tm.ops.gram, (J,))
    W = randn(2, 4, 4, dtype=F64, seed=14)
    (g,) = torch.autograd.grad((tm.ops.gram(J) * W).sum(), J)
    (g_ref,) = torch.autograd.grad(((J @ J.mT) * W).sum(), J)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


def test_meta_and_compile():
    assert tm.ops.gram(torch.empty(2, 5, 7, device="meta")).shape == (2, 5, 5)
    # meta tensors (and torch.compile's fake ones) get the errors of real ones, not a shape made up
    with pytest.raises(ValueError, match="at least 2 dims"):
        tm.ops.gram(torch.empty(7, device="meta"))
    with pytest.raises(TypeError, match="floating-point"):
        tm.ops.gram(torch.empty(2, 7, dtype=torch.int64, device="meta"))
    f = torch.compile(lambda J: tm.ops.gram(J), backend="eager", fullgraph=True)
    J = randn(4, 100, seed=15)
    assert torch.equal(f(J), tm.ops.gram(J))
    # meta results have the shape and dtype of real ones, half types and batch dims included
    for dtype in (torch.float16, torch.bfloat16, F32, F64):
        for shape in [(3, 5), (2, 1, 4, 9), (0, 6)]:
            J = randn(*shape, dtype=dtype, seed=16)
            G, Gm = tm.ops.gram(J), tm.ops.gram(J.to("meta"))
            assert (Gm.shape, Gm.dtype) == (G.shape, G.dtype) == ((*shape[:-1], shape[-2]), dtype)


# --------------------------------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------------------------------


@pytest.mark.cuda
class TestCuda:
    @pytest.mark.parametrize("dtype", [F32, F64])
    @pytest.mark.parametrize(
        "shape", [(1, 1), (2, 1000), (10, 100_003), (16, 5000), (3, 40, 3001), (64, 777), (65, 500), (100, 2)]
    )
    def test_matches_cpu(self, shape, dtype):
        J = randn(*shape, dtype=dtype, seed=sum(shape))
        # m > 64 runs cuBLAS / torch's GEMM (float32 accumulation): a looser bar for float32.
        bar = BAR[dtype] if shape[-2] <= 64 or dtype == F64 else 1e-5
        Gc = check(J.cuda(), bar=bar)
        Gh = check(J, bar=bar)
        assert float((Gc.cpu().double() - Gh.double()).abs().max()) <= 2 * bar * float(Gh.abs().max())
        assert torch.equal(Gc, tm.ops.gram(J.cuda())), "not deterministic"

    def test_batched_and_strided(self):
        base = randn(3, 5, 2000, seed=16).cuda()
        G = check(base)
        assert torch.equal(tm.ops.gram(base.mT.contiguous().mT), G)
        assert torch.equal(tm.ops.gram(base[:1].expand(4, 5, 2000)), G[:1].expand(4, 5, 5))
        big = randn(70_000, 3, 4, seed=17).cuda()  # more problems than grid.y allows
        check(big)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_types(self, dtype):
        J = randn(2, 6, 3000, dtype=dtype, seed=18, scale=0.1)
        check(J.cuda())

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_types_above_kernel_rows(self, dtype):
        """m > 64 takes torch.matmul: still computed in float32 and rounded once to the half dtype, as on
        the CPU (a GEMM in the half dtype may reduce in it), so the two devices agree to one rounding."""
        J = randn(72, 2**18, dtype=dtype, seed=21, scale=2**-6)
        Gc, Gh = check(J.cuda()).cpu().double(), check(J).double()
        d = Gh.diagonal().sqrt()
        tol = torch.finfo(dtype).eps * Gh.abs() + 1e-5 * d.unsqueeze(1) * d.unsqueeze(0)
        assert bool(((Gc - Gh).abs() <= tol).all())

    def test_errors(self):
        J = randn(2, 3, 500, seed=19).cuda()
        J[1, 0, 3] = math.nan
        with pytest.raises(ValueError, match=r"finite.*batch index \[1\]"):
            tm.ops.gram(J)
        assert torch.equal(tm.ops.gram(torch.empty(3, 0, device="cuda")), torch.zeros(3, 3, device="cuda"))

    def test_gradient(self):
        J = randn(3, 20, dtype=F64, seed=20).cuda().requires_grad_()
        assert torch.autograd.gradcheck(tm.ops.gram, (J,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_check_finite_false_returns_non_finite_entries_instead_of_raising(dtype):
    """check_finite=False (for callers that check a sum of Gram matrices once) gives the product with its
    NaN / infinity where it stands; the default raises; finite inputs give the same G either way."""
    J = torch.randn(3, 40, generator=torch.Generator().manual_seed(0)).to(dtype)
    torch.testing.assert_close(tm.ops.gram(J, check_finite=False), tm.ops.gram(J), rtol=0, atol=0)
    J[1, 7] = float("nan")
    with pytest.raises(ValueError, match="J must be finite"):
        tm.ops.gram(J)
    G = tm.ops.gram(J, check_finite=False)
    assert bool(torch.isnan(G[1]).all()) and bool(torch.isnan(G[:, 1]).all())
    assert bool(torch.isfinite(G[0, 0])) and bool(torch.isfinite(G[2, [0, 2]]).all())
    # schema, fake and autograd registrations agree (on a finite J: opcheck compares outputs, NaN != NaN)
    torch.library.opcheck(torch.ops.torchmoo.gram.default, (torch.nan_to_num(J).float().requires_grad_(), False))


def test_blocks_gram_checks_the_sum_once_and_names_the_block_at_fault(monkeypatch):
    from torchmoo.methods import aggregator
    from torchmoo.methods.aggregator import blocks_gram

    blocks = [torch.randn(2, 5, dtype=torch.float64), None, torch.randn(2, 3, dtype=torch.float64)]
    checked = []
    real_gram = aggregator.ops.gram

    def spy(J, *, check_finite=True):
        checked.append(check_finite)
        return real_gram(J, check_finite=check_finite)

    monkeypatch.setattr(aggregator.ops, "gram", spy)
    torch.testing.assert_close(blocks_gram(blocks, 2, torch.device("cpu")),
                               sum(b @ b.T for b in blocks if b is not None))
    assert checked == [False, False]  # finite blocks: no per-block check (a CUDA sync each), one on the sum
    monkeypatch.undo()
    blocks[2][0, 1] = float("inf")
    with pytest.raises(ValueError, match="J must be finite"):
        blocks_gram(blocks, 2, torch.device("cpu"))
    huge = [torch.full((2, 4), 1e300, dtype=torch.float64)]  # J J^T of the block itself overflows
    with pytest.raises(ValueError, match="J J\\^T overflows"):
        blocks_gram(huge, 2, torch.device("cpu"))
    big = [torch.full((2, 1), 1.2e154, dtype=torch.float64)] * 2  # each Gram finite (1.44e308), their sum not
    with pytest.raises(ValueError, match="the sum of the Gram matrices"):
        blocks_gram(big, 2, torch.device("cpu"))


@pytest.mark.cuda
def test_gram_and_combine_without_the_check_do_not_synchronize():
    """On CUDA the finiteness check reads a flag back to the host; check_finite=False queues the kernels
    only (torch's sync debug mode turns any synchronization into an error)."""
    J = torch.randn(4, 10_000, device="cuda")
    w = torch.full((4,), 0.25, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        G = tm.ops.gram(J, check_finite=False)
        d = tm.ops.combine(J, w, check_finite=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(G, tm.ops.gram(J))
    torch.testing.assert_close(d, tm.ops.combine(J, w))
