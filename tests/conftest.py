"""Shared pytest configuration: markers, the --runslow option and hypothesis profiles.

Markers:
    cuda: the test needs a CUDA GPU and a CUDA build of torchmoo; skipped otherwise.
    slow: full-size runs; skipped unless pytest is given ``--runslow``.

Hypothesis profiles (pick one with the environment variable ``HYPOTHESIS_PROFILE``):
    default: ``max_examples=60``, no deadline (the QP test files run in well under 2 minutes on 2 cores).
    ci:      ``max_examples=200``, no deadline, derandomized (reproducible in CI), no database.
    dev:     ``max_examples=15``, for a quick local run.
"""

from __future__ import annotations

import os

import pytest
import torch

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a test dependency; the files that use it import it themselves
    settings = None

if settings is not None:
    _common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile("default", max_examples=60, **_common)
    settings.register_profile("ci", max_examples=200, derandomize=True, database=None, print_blob=True, **_common)
    settings.register_profile("dev", max_examples=15, **_common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


class CountBackward(torch.autograd.Function):
    """Identity whose backward counts its calls (``CountBackward.calls``): how many backward passes ran
    through a part of a graph."""

    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        CountBackward.calls += 1
        return g


def count_cuda_syncs(fn, device: str) -> int:
    """Run ``fn()`` and return how many CUDA synchronizations torch's sync debug mode reported in it (0 on
    the CPU, where ``fn`` just runs)."""
    import warnings

    if device != "cuda":
        fn()
        return 0
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def check_cuda_step_against_cpu(run, max_syncs: int, **tolerances) -> None:
    """``run(device) -> (synchronizations, grads)`` on ``"cuda"`` and ``"cpu"``: at most ``max_syncs``
    synchronizations on the GPU, and the same gradients as on the CPU (``torch.testing.assert_close``)."""
    syncs, got = run("cuda")
    _, ref = run("cpu")
    assert syncs <= max_syncs, f"{syncs} synchronizations in one step (at most {max_syncs} expected)"
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **tolerances)


@pytest.fixture
def one_thread():
    """One intra-op thread while a test runs: tiny problems pay OpenMP start-up and contention costs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run the tests marked slow")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU and a CUDA build of torchmoo (skipped otherwise)")
    config.addinivalue_line("markers", "slow: full-size runs, only with --runslow")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    import torchmoo

    if not torch.cuda.is_available():
        skip_cuda = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    else:
        skip_cuda = pytest.mark.skip(reason="torchmoo was built without CUDA")
    skip_slow = pytest.mark.skip(reason="slow; run with --runslow")
    has_cuda = torch.cuda.is_available() and torchmoo.cuda_built
    run_slow = config.getoption("--runslow")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)


# --------------------------------------------------------------------------------------------------
# Shared problem generators (imported by the QP test files: ``from conftest import ...``)
# --------------------------------------------------------------------------------------------------

from dataclasses import dataclass, field  # noqa: E402

F64 = torch.float64

#: Kinds of Jacobians J (rows = gradients); G = scale * J J^T.
KINDS = ("full", "lowrank", "duplicate", "parallel", "antiparallel", "zero_rows", "zero")


def make_jacobian(kind: str, m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """An (m, n') float64 matrix whose rows are 'gradients' with the requested degeneracy.

    full: full row rank (G positive definite); lowrank: n' = min(n, m - 1) < m columns;
    duplicate / parallel / antiparallel / zero_rows: some rows replaced by copies, positive multiples,
    negative multiples of other rows, or zeros; zero: J = 0.
    """
    if kind == "full":
        return torch.randn(m, m + n, generator=gen, dtype=F64)
    if kind == "lowrank":
        return torch.randn(m, max(1, min(n, m - 1)), generator=gen, dtype=F64)
    # the other kinds start from independent rows: their only degeneracy is the one they make
    J = torch.randn(m, m + n, generator=gen, dtype=F64)
    if kind == "zero":
        return torch.zeros(m, n, dtype=F64)
    if m == 1:
        return J
    k = int(torch.randint(1, m, (1,), generator=gen))
    targets = torch.randperm(m, generator=gen)[:k]
    for i in targets.tolist():
        j = int(torch.randint(0, m, (1,), generator=gen))
        factor = float(torch.empty(1, dtype=F64).uniform_(0.1, 10.0, generator=gen))
        if kind == "duplicate":
            J[i] = J[j]
        elif kind == "parallel":
            J[i] = J[j] * factor
        elif kind == "antiparallel":
            J[i] = -J[j] * factor if i != j else J[j]
        elif kind == "zero_rows":
            J[i] = 0.0
        else:
            raise ValueError(kind)
    return J


def gram(J: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Exactly symmetric ``G = scale * J J^T`` in float64."""
    G = (J @ J.T) * scale
    return (G + G.T) / 2


@dataclass
class Problem:
    """A reproducible random QP: ``Problem(kind, m, n, seed, e, c_kind).G / .c``.

    ``G = 10^e * J J^T`` with ``J = make_jacobian(kind, m, n, seed)``; ``c`` by ``c_kind``:
    none (None), zero, random (N(0, 10^e)), constant (k * 1), range (G u),
    bounded (G u + p with p > 0: the nonneg QP is bounded below),
    nonneg_c (c >= 0: lambda = 0 is optimal), png (10^e (J grad_F - phi 1), the PNG dual).
    """

    kind: str
    m: int
    n: int
    seed: int
    e: int
    c_kind: str = "none"
    G: torch.Tensor = field(init=False, repr=False)
    c: object = field(init=False, repr=False)
    J: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        m, scale = self.m, 10.0**self.e
        self.J = make_jacobian(self.kind, m, self.n, gen)
        self.G = gram(self.J, scale)
        ck = self.c_kind
        if ck == "none":
            self.c = None
        elif ck == "zero":
            self.c = torch.zeros(m, dtype=F64)
        elif ck == "random":
            self.c = torch.randn(m, generator=gen, dtype=F64) * scale
        elif ck == "constant":
            self.c = torch.full((m,), float(torch.randn(1, generator=gen, dtype=F64)) * scale, dtype=F64)
        elif ck == "range":
            self.c = self.G @ torch.randn(m, generator=gen, dtype=F64)
        elif ck == "bounded":
            # p > 0 (not just >= 0): with p_i = 0 along a non-negative null direction d of J J^T the
            # problem is bounded only in exact arithmetic (c'd = 0 up to round-off), i.e. ill-posed.
            p = torch.empty(m, dtype=F64).uniform_(0.1, 1.0, generator=gen)
            self.c = self.G @ torch.randn(m, generator=gen, dtype=F64) + p * scale
        elif ck == "nonneg_c":
            self.c = torch.rand(m, generator=gen, dtype=F64) * (torch.rand(m, generator=gen, dtype=F64) < 0.6) * scale
        elif ck == "png":
            grad_F = torch.randn(self.J.shape[1], generator=gen, dtype=F64)
            phi = float(torch.rand(1, generator=gen, dtype=F64)) * 2.0
            self.c = (self.J @ grad_F - phi) * scale
        else:
            raise ValueError(ck)


def scale_of(G: torch.Tensor, c) -> float:
    """The contract's scale ``s = max(max|G|, max|c|)`` (1 if 0) of one problem, as a float."""
    s = float(G.abs().max()) if G.numel() else 0.0
    if c is not None and c.numel():
        s = max(s, float(c.abs().max()))
    return s if s > 0 else 1.0


def is_well_conditioned(G: torch.Tensor, cond: float = 1e4) -> bool:
    """True when G is positive definite with condition number below ``cond`` (unique minimizers)."""
    ev = torch.linalg.eigvalsh(G.to(F64))
    return bool(ev.min() > 0) and float(ev.max() / ev.min()) < cond


def random_batch(B: int, m: int, seed: int, dtype=F64, c_kind: str = "random"):
    """A (B, m, m) batch cycling through KINDS with scales 10^-6..10^6, and a (B, m) c of ``c_kind``."""
    gen = torch.Generator().manual_seed(seed)
    problems = [
        Problem(KINDS[b % len(KINDS)], m, 3, int(torch.randint(0, 2**31 - 1, (1,), generator=gen)),
                int(torch.randint(-6, 7, (1,), generator=gen)), c_kind)
        for b in range(B)
    ]
    G = torch.stack([p.G for p in problems]).to(dtype)
    c = None if c_kind == "none" else torch.stack([p.c for p in problems]).to(dtype)
    return G, c


def check_max_iter_budget(solve, residual, G: torch.Tensor, c, feasible, bar: float) -> None:
    """An active-set QP with a budget of ``k`` iterations follows the unlimited run's path and stops
    when it would need a ``(k+1)``-th: ``min(k, n)`` iterations reported (``n``: the unlimited run's),
    converged exactly when ``k >= n``, a feasible point whose own KKT residual is reported, the
    unlimited answer when ``k >= n`` and a residual above ``bar`` otherwise.

    ``solve(G, c, **options) -> (x, QPInfo)``; ``residual(G, c, x)``; ``feasible(x) -> bool``.
    """
    x_full, info_full = solve(G, c)
    n = int(info_full.iterations)
    assert n >= 1
    for k in range(n + 2):
        x, info = solve(G, c, max_iter=k)
        assert int(info.iterations) == min(k, n), f"max_iter={k}: {int(info.iterations)} iterations, full run {n}"
        assert bool(info.converged) == (k >= n), f"max_iter={k}, full run {n}"
        assert feasible(x), f"max_iter={k}: infeasible point"
        torch.testing.assert_close(info.kkt_residual, residual(G, c, x), rtol=1e-6, atol=1e-15)
        if k >= n:
            assert torch.equal(x, x_full)
        else:
            assert float(info.kkt_residual) > bar


def check_meta_outputs(real, meta, dtype) -> None:
    """A QP operator's ``(x, QPInfo)`` on meta tensors has the shapes and dtypes of its real result: ``x`` in
    G's dtype, the QPInfo fields int64 / float64 / bool whatever G's dtype, batch dims kept."""
    def flat(out):
        return [out[0], *out[1]]

    assert [(t.shape, t.dtype) for t in flat(meta)] == [(t.shape, t.dtype) for t in flat(real)]
    assert [t.dtype for t in real[1]] == [torch.int64, F64, torch.bool] and real[0].dtype == dtype
