"""Benchmarks of ``torchmoo.autograd``: Jacobians of m = 10 objectives and Hessian-vector products.

Groups (contenders of a group run in this process one after the other, the reference first; every
ratio is a contender's median over the reference's median, same run; see ``benchutil.py``):

* ``jacobian m=10 <model>``: the Jacobian of 10 losses (one per head) w.r.t. the shared trunk, on a
  LeNet-sized conv trunk (MultiMNIST LeNet: 2 conv + 1 linear layer, 21k parameters, batch 64 of
  28 x 28 images) and on an MLP-sized trunk (784-512-256, 530k parameters, batch 64). The graph
  is built once outside the timing and kept (``retain_graph=True``), so a call times the backward
  work only. Contenders: ``one backward`` (``autograd.grad`` of the summed loss: the cost of one
  pass, the reference), ``jacobian batched`` (``jacobian(..., batched=True)``: one vmapped backward
  pass) and ``jacobian loop`` (``batched=False``: 10 backward passes). The ideal Jacobian is about
  10x one backward.
* ``hvp <model>``: ``one backward`` (reference) against one ``hvp(loss, params, v)`` (the first
  gradient with its graph plus the double-backward pass) and one product of ``hvp_operator`` (the
  gradient graph built once, outside the timing: the cost per product of a Krylov solve). The
  issue's bar: ``hvp`` at most 3x one backward.
* ``hvp k=4 <model>``: 4 products with ``hvp(loss, params, V)``, ``V`` (4, n), in one batched pass
  (reference) against 4 single ``hvp`` calls.

Two measurements of the same contenders: the pytest-benchmark tests above (one contender after the
other), and ``test_autograd_interleaved``: the contenders of each group timed round-robin
(``baselines.interleaved_medians``; groups ``... interleaved``), so that a change of load on a shared
machine moves all of them alike: the ratios to trust.

Every timed call's output is checked against plain ``torch.autograd.grad`` (one call per loss for the
Jacobian, an explicit double backward for the Hessian-vector products), so a fast wrong answer fails.

Quick mode (``TORCHMOO_BENCH_QUICK=1``): batch 4, an MLP of 784-64-32, 2 rounds, only to prove the
code runs.
"""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

pytest.importorskip("pytest_benchmark")

from torchmoo.autograd import flatten, hvp, hvp_operator, jacobian, num_params  # noqa: E402

from baselines import QUICK, interleaved_medians  # noqa: E402
from benchutil import REFERENCE_CONTENDER, RESULTS, record, run_timed  # noqa: E402

M = 10
BATCH = 4 if QUICK else 64
MODELS = ("lenet", "mlp")


class LeNetTrunk(torch.nn.Module):
    """The shared LeNet of MultiMNIST experiments (Sener & Koltun): 28 x 28 -> 50 features."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 10, 5), torch.nn.MaxPool2d(2), torch.nn.ReLU(),
            torch.nn.Conv2d(10, 20, 5), torch.nn.MaxPool2d(2), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(320, 50), torch.nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _trunk(kind: str):
    if kind == "lenet":
        return LeNetTrunk(), (1, 28, 28), 50
    h1, h2 = (64, 32) if QUICK else (512, 256)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, h1), torch.nn.ReLU(), torch.nn.Linear(h1, h2), torch.nn.Tanh(),
    ), (784,), h2


@lru_cache(maxsize=None)
def setup(kind: str):
    """(trunk params, losses (M,) with their graph kept alive, summed loss) of a 10-head model."""
    torch.manual_seed(0)
    trunk, in_shape, feat = _trunk(kind)
    heads = torch.nn.ModuleList([torch.nn.Linear(feat, 10) for _ in range(M)])
    x = torch.randn(BATCH, *in_shape)
    y = torch.randint(0, 10, (M, BATCH))
    z = trunk(x)
    losses = torch.stack([torch.nn.functional.cross_entropy(h(z), y[i]) for i, h in enumerate(heads)])
    params = list(trunk.parameters())
    return params, losses


@lru_cache(maxsize=None)
def reference_jacobian(kind: str) -> torch.Tensor:
    """``(M, n)``: one plain ``torch.autograd.grad`` per loss (zeros where a parameter is not reached)."""
    params, losses = setup(kind)
    rows = []
    for i in range(M):
        grads = torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True)
        rows.append(flatten([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]))
    return torch.stack(rows)


def reference_hvp(kind: str, V: torch.Tensor) -> torch.Tensor:
    """``H v`` for each row of ``V`` (``(n,)`` or ``(k, n)``) of the summed loss: an explicit double backward."""
    params, losses = setup(kind)
    grads = torch.autograd.grad(losses.sum(), params, create_graph=True)
    flat = flatten(grads)
    out = [flatten(torch.autograd.grad(flat, params, grad_outputs=v, retain_graph=True))
           for v in V.reshape(-1, V.shape[-1])]
    return torch.stack(out).reshape(V.shape)


def _assert_close(name: str, got: torch.Tensor, ref: torch.Tensor) -> None:
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)}, expected {tuple(ref.shape)}"
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()), msg=lambda m: f"{name}: {m}")


def test_jacobian_batched_equals_loop():
    """Not a benchmark: both Jacobian paths agree on the benchmark models."""
    for kind in MODELS:
        params, losses = setup(kind)
        Jb = jacobian(losses, params, batched=True, retain_graph=True)
        Jl = jacobian(losses, params, batched=False, retain_graph=True)
        assert Jb.shape == (M, num_params(params))
        torch.testing.assert_close(Jb, Jl, rtol=1e-4, atol=1e-6)


#: group kind -> (reference contender, contenders); the reference is listed first
GROUPS = {
    "jacobian": ("one backward", ("one backward", "jacobian batched", "jacobian loop")),
    "hvp": ("one backward", ("one backward", "hvp", "hvp_operator product")),
    "hvp k=4": ("hvp k=4 batched", ("hvp k=4 batched", "4 single hvps")),
}


def group_name(group: str, kind: str) -> str:
    params, _ = setup(kind)
    return f"{group}{f' m={M}' if group == 'jacobian' else ''} {kind} (n={num_params(params)}, batch {BATCH})"


def contender(group: str, kind: str, name: str):
    """``(fn, check)``: the timed call of contender ``name`` of ``group`` on model ``kind``, and the check of
    its output (asserts agreement with plain ``torch.autograd.grad``)."""
    params, losses = setup(kind)
    loss = losses.sum()
    n = num_params(params)
    if name == "one backward":
        fn = lambda: torch.autograd.grad(loss, params, retain_graph=True)  # noqa: E731
        return fn, lambda out: _assert_close(name, flatten(out), reference_jacobian(kind).sum(0))
    if group == "jacobian":
        batched = name == "jacobian batched"
        fn = lambda: jacobian(losses, params, batched=batched, retain_graph=True)  # noqa: E731
        return fn, lambda out: _assert_close(name, out, reference_jacobian(kind))
    if group == "hvp":
        v = torch.randn(n, generator=torch.Generator().manual_seed(1))
        if name == "hvp":
            fn = lambda: hvp(loss, params, v)  # noqa: E731
        else:
            op = hvp_operator(loss, params)
            fn = lambda: op(v)  # noqa: E731
        return fn, lambda out: _assert_close(name, out, reference_hvp(kind, v))
    V = torch.randn(4, n, generator=torch.Generator().manual_seed(2))
    if name == "hvp k=4 batched":
        fn = lambda: hvp(loss, params, V, batched=True)  # noqa: E731
    else:
        fn = lambda: torch.stack([hvp(loss, params, v) for v in V])  # noqa: E731
    return fn, lambda out: _assert_close(name, out, reference_hvp(kind, V))


def _sequential(benchmark, group: str, kind: str, name: str, rounds: int) -> None:
    fn, check = contender(group, kind, name)
    gname = group_name(group, kind)
    check(run_timed(benchmark, gname, fn, rounds=rounds))
    record(benchmark, gname, name, 1, reference=GROUPS[group][0])


@pytest.mark.parametrize("contender_name", GROUPS["jacobian"][1])
@pytest.mark.parametrize("kind", MODELS)
def test_jacobian(benchmark, kind, contender_name):
    _sequential(benchmark, "jacobian", kind, contender_name, rounds=7)


@pytest.mark.parametrize("contender_name", GROUPS["hvp"][1])
@pytest.mark.parametrize("kind", MODELS)
def test_hvp(benchmark, kind, contender_name):
    _sequential(benchmark, "hvp", kind, contender_name, rounds=7)


@pytest.mark.parametrize("contender_name", GROUPS["hvp k=4"][1])
@pytest.mark.parametrize("kind", MODELS)
def test_hvp_batched(benchmark, kind, contender_name):
    _sequential(benchmark, "hvp k=4", kind, contender_name, rounds=5)


@pytest.mark.parametrize("kind", MODELS)
def test_autograd_interleaved(kind):
    """Every group's contenders timed round-robin in this process; medians, ratios to the group's reference."""
    for group, (reference, names) in GROUPS.items():
        fns = {}
        for name in names:
            fn, check = contender(group, kind, name)
            check(fn())  # a wrong output fails before anything is timed
            fns[name] = fn
        med = interleaved_medians(fns, repeats=3 if QUICK else 15, warmup=1)
        gname = group_name(group, kind) + ", interleaved"
        REFERENCE_CONTENDER[gname] = reference
        RESULTS[gname] = {name: {"per_problem_s": med[name], "count": 1,
                                 **({} if name == reference else {"ratio": med[name] / med[reference]})}
                          for name in names}
