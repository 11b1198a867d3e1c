"""Tests of torchmoo.backward and of the Aggregator base class for what the method tests leave open: a
GradScaler with aggregators whose weights depend on the scale of J, the order in which the graph is freed
across the task-parameter passes, the groups of parameters, the overflow checks of mixed and many-row
Jacobians, and the state an abandoned step puts back."""

from __future__ import annotations

import pytest
import torch

import torchmoo as tm
from torchmoo.autograd import flatten, jacobian
from torchmoo.methods import MGDA, Aggregator

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems: one intra-op thread


class _GramDiagonal(Aggregator):
    """w_i = ||g_i||^2 (from G): weights that scale with J^2, unlike those of torchmoo's aggregators, so that
    an aggregator fed the scaled Jacobian of a GradScaler gives other weights."""

    def gram_weights(self, G, losses=None):
        return G.diagonal().clone()


class _JacobianDiagonal(Aggregator):
    """The same weights from J itself: tm.backward assembles J for it."""

    def compute_weights(self, J, losses=None):
        return (J * J).sum(1)


class _FixedGramWeights(Aggregator):
    def __init__(self, w) -> None:
        super().__init__()
        self.w = w

    def gram_weights(self, G, losses=None):
        return torch.tensor(self.w, dtype=G.dtype, device=G.device)


class _TwoHeads(torch.nn.Module):
    """A tanh trunk and two linear heads; ``shared_tail`` sends both heads' outputs through one tanh (a node
    with a saved tensor that both losses run through)."""

    def __init__(self, seed: int, shared_tail: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh())
        self.heads = torch.nn.ModuleList([torch.nn.Linear(5, 1) for _ in range(2)])
        self.shared_tail = shared_tail

    def losses(self, x, ys):
        z = self.trunk(x)
        out = torch.cat([h(z) for h in self.heads], dim=1)
        if self.shared_tail:
            out = out.tanh()
        return z, [((out[:, i] - y) ** 2).mean() for i, y in enumerate(ys)]


def _data(seed: int, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, generator=gen, dtype=dtype)
    return x, [torch.sin(x @ torch.randn(3, generator=gen, dtype=dtype)) for _ in range(2)]


@pytest.mark.parametrize("make", [_GramDiagonal, _JacobianDiagonal])
@pytest.mark.parametrize("representation", [False, True])
def test_grad_scaler_gives_the_unscaled_step_for_scale_dependent_weights(make, representation):
    """Under a GradScaler the aggregator sees the unscaled Jacobian J (not scale * J), on the Gram path, the
    assembled path and MGDA-UB's Jacobian w.r.t. z, and .grad holds scale * d: after unscale_ the step and
    the weights are those without a scaler, for weights that are not invariant to the scale of J."""
    model = _TwoHeads(0)
    x, ys = _data(0)
    z, losses = model.losses(x, ys)
    kwargs = dict(representation=z) if representation else {}
    w_ref = tm.backward(losses, model.trunk, make(), task_params=list(model.heads), **kwargs)
    expected = [p.grad.clone() for p in model.parameters()]
    assert float(w_ref.max()) < 1e3  # the scale (2^10) squared would show in the weights
    model.zero_grad()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    z, losses = model.losses(x, ys)
    kwargs = dict(representation=z) if representation else {}
    w = tm.backward(losses, model.trunk, make(), task_params=list(model.heads), grad_scaler=scaler, **kwargs)
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-7)
    trunk_grad = flatten([p.grad for p in model.trunk.parameters()])
    torch.testing.assert_close(trunk_grad, 2.0**10 * flatten(expected[:2]), rtol=1e-5, atol=1e-5)  # scale * d
    scaler.unscale_(torch.optim.SGD(model.parameters(), lr=0.0))
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-7)


def test_grad_scaler_does_not_hide_the_aggregators_input_errors():
    """A loss the aggregator rejects (negative, for a loss-normalized MGDA) is an error under a GradScaler
    too, before any backward pass; only a loss that overflowed becomes a skipped step."""
    model = _TwoHeads(1)
    x, ys = _data(1)
    _, losses = model.losses(x, ys)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with pytest.raises(ValueError, match="positive and finite"):
        tm.backward([losses[0], -losses[1]], model.trunk, MGDA("loss"), grad_scaler=scaler)
    assert all(p.grad is None for p in model.parameters())
    sum(losses).backward()  # the graph is intact


@pytest.mark.parametrize("batched", [None, False])
def test_task_parameter_passes_keep_the_graph_until_the_last(batched):
    """Both losses run through one tanh after the heads: head 0's own pass must keep the graph that head 1's
    pass still needs; only the last pass frees it. Heads get their own gradients, the trunk MGDA's step."""
    model = _TwoHeads(2, shared_tail=True)
    x, ys = _data(2, dtype=F64)
    model.double()
    _, losses = model.losses(x, ys)
    trunk = list(model.trunk.parameters())
    J = jacobian(losses, trunk, retain_graph=True)
    heads = [torch.autograd.grad(losses[i], list(model.heads[i].parameters()), retain_graph=True) for i in range(2)]
    d = MGDA()(J)
    _, losses = model.losses(x, ys)
    tm.backward(losses, model.trunk, MGDA(), task_params=list(model.heads), batched=batched)
    torch.testing.assert_close(flatten([p.grad for p in trunk]), d, rtol=1e-12, atol=1e-14)
    for head, grads in zip(model.heads, heads):
        for p, g in zip(head.parameters(), grads):
            torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-14)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        sum(losses).backward()


def test_task_params_of_two_objectives_must_not_overlap():
    model = _TwoHeads(3)
    x, ys = _data(3)
    _, losses = model.losses(x, ys)
    with pytest.raises(ValueError, match="belong to one group"):
        tm.backward(losses, model.trunk, MGDA(), task_params=[model.heads[0], model.heads[0].weight])
    sum(losses).backward()  # checked before any backward pass


def test_backward_rejects_losses_that_do_not_require_grad():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="None of the losses requires grad"):
        tm.backward([torch.tensor(1.0), torch.tensor(2.0)], [p], MGDA())
    assert p.grad is None


def test_gram_matrix_that_overflows_float32_only_after_the_sum():
    """Two float32 blocks whose Gram matrices are finite (2e38 on the diagonal) but whose sum (4e38, summed
    in float64) is beyond float32, the dtype the aggregator gets G in: without a scaler an error before any
    .grad is written (and the aggregator's weights kept); under a GradScaler a skipped step (NaN weights and
    .grad)."""
    def losses(p, q):
        return [1e19 * (p.sum() + q.sum()), 1e19 * (p.sum() - q.sum())]

    p, q = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    agg = MGDA()
    agg.weights = before = torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match="inf or NaN"):
        tm.backward(losses(p, q), [p, q], agg)
    assert p.grad is None and q.grad is None and agg.weights is before
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    w = tm.backward(losses(p, q), [p, q], agg, grad_scaler=scaler)
    assert bool(torch.isnan(w).all()) and bool(torch.isnan(agg.weights).all())
    assert bool(torch.isnan(p.grad).all()) and bool(torch.isnan(q.grad).all())
    opt = torch.optim.SGD([p, q], lr=0.1)
    scaler.step(opt)
    scaler.update()
    assert torch.equal(p.detach(), torch.zeros(2)) and scaler.get_scale() < 1.0


def test_overflow_check_of_mixed_dtype_blocks_uses_the_narrowest_dtype():
    """A float16 block and a float32 block: the bound that lets tm.backward skip the finiteness check of the
    combinations must hold for float16 (w = 1000 on entries of 300: 3e5 > 65504), not just for float32. The
    error comes before any .grad is written, and the aggregator's weights are put back."""
    A = torch.tensor([[300.0] * 4, [150.0] * 4])
    p = torch.zeros(4, dtype=torch.float16, requires_grad=True)
    q = torch.zeros(4, requires_grad=True)
    L = (A.half() @ p).float() + A @ q
    agg = _FixedGramWeights([1000.0, 0.0])
    agg.weights = before = torch.tensor([0.25, 0.75])
    with pytest.raises(ValueError, match="overflows torch.float16"):
        tm.backward([L[0], L[1]], [p, q], agg)
    assert p.grad is None and q.grad is None and agg.weights is before
    # within float16's range: written, in each block's dtype
    L = (A.half() @ p).float() + A @ q
    w = tm.backward([L[0], L[1]], [p, q], _FixedGramWeights([100.0, 0.0]))
    assert p.grad.dtype == torch.float16 and q.grad.dtype == torch.float32
    torch.testing.assert_close(p.grad.float(), w @ A, rtol=0, atol=0)
    torch.testing.assert_close(q.grad, w @ A, rtol=0, atol=0)


def test_float16_parameters_with_weights_beyond_float16s_range():
    """Weights of 1e5 and 7e4 (beyond float16's 65504) on float16 gradients of 1e-3: d = (100, 140) fits
    float16, so .grad is written: the blocks are combined with float32 weights, where weights rounded to
    float16 (inf) made tm.backward raise an overflow that d does not have."""
    def losses(p):
        return [1e-3 * p[0] + 1.0, 2e-3 * p[1] + 1.0]

    expected = torch.tensor([1e5 * float(torch.tensor(1e-3, dtype=torch.float16)),
                             7e4 * float(torch.tensor(2e-3, dtype=torch.float16)), 0.0]).half()
    p = torch.zeros(3, dtype=torch.float16, requires_grad=True)
    tm.backward(losses(p), [p], _FixedGramWeights([1e5, 7e4]))
    assert torch.equal(p.grad, expected)


def test_overflow_bound_of_many_small_rows():
    """24 rows of norm 0.1, all along the same entry, with weights of 3e4 (each fits float16): d = 7.2e4
    overflows float16. The bound sum_i |w_i| ||g_i|| = 7.2e4 must see it (sum_i |w_i| ||g_i||^2 = 7.2e3
    would not): tm.backward raises before any .grad is written and keeps the weights it had."""
    m = 24
    p = torch.zeros(3, dtype=torch.float16, requires_grad=True)
    losses = [0.1 * p[0] + 1.0 for _ in range(m)]
    agg = _FixedGramWeights([3e4] * m)
    with pytest.raises(ValueError, match="overflows torch.float16"):
        tm.backward(losses, [p], agg)
    assert p.grad is None and agg.weights is None


def test_aggregator_that_needs_losses_rejects_a_call_without_them():
    """Aggregator.__call__ enforces needs_losses for every subclass (not only those that check themselves)."""

    class _LossWeights(Aggregator):
        needs_losses = True

        def gram_weights(self, G, losses=None):
            return torch.ones(G.shape[0], dtype=G.dtype) if losses is None else losses / losses.sum()

    J = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    agg = _LossWeights()
    with pytest.raises(ValueError, match="needs the loss values"):
        agg(J)
    assert agg.weights is None
    torch.testing.assert_close(agg(J, [1.0, 3.0]), torch.tensor([0.25, 1.5]))


def test_disabled_grad_scaler_is_no_scaler():
    """GradScaler(enabled=False) (AMP switched off by a flag) behaves as no scaler: the same step, and an
    overflowing Jacobian is an error, not a NaN .grad (a disabled scaler's step would apply it)."""
    model = _TwoHeads(4)
    x, ys = _data(4)
    _, losses = model.losses(x, ys)
    w_ref = tm.backward(losses, model.trunk, MGDA())
    expected = [p.grad.clone() for p in model.trunk.parameters()]
    model.zero_grad()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    _, losses = model.losses(x, ys)
    w = tm.backward(losses, model.trunk, MGDA(), grad_scaler=scaler)
    torch.testing.assert_close(w, w_ref, rtol=0, atol=0)
    for p, e in zip(model.trunk.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=0, atol=0)
    model.zero_grad()
    _, losses = model.losses(x, ys)
    with pytest.raises(ValueError, match="inf or NaN"):
        tm.backward([losses[0] * float("inf"), losses[1]], model.trunk, MGDA(), grad_scaler=scaler)
    assert all(p.grad is None for p in model.parameters())


def test_head_of_a_constant_loss_and_static_weights():
    """A loss that does not require grad leaves its head's .grad None (no backward pass from it); fixed
    weights skip the Jacobian and are still recorded in aggregator.weights, and the trunk gets the gradient
    of their combination."""
    model = _TwoHeads(5)
    x, ys = _data(5)
    _, losses = model.losses(x, ys)
    tm.backward([losses[0], torch.tensor(1.0)], model.trunk, MGDA(), task_params=list(model.heads))
    assert all(p.grad is None for p in model.heads[1].parameters())
    assert all(p.grad is not None for p in model.heads[0].parameters())
    model.zero_grad()
    _, losses = model.losses(x, ys)
    expected = torch.autograd.grad(losses[0] + 2 * losses[1], list(model.trunk.parameters()), retain_graph=True)
    agg = tm.methods.LinearScalarization([1.0, 2.0])
    w = tm.backward(losses, model.trunk, agg, task_params=list(model.heads))
    assert w.tolist() == [1.0, 2.0] and agg.weights.tolist() == [1.0, 2.0]
    for p, e in zip(model.trunk.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-6, atol=1e-7)
