"""Tests of torchmoo.autograd: Jacobians and Hessian-vector products against torch.autograd.functional
and central finite differences (float64), batched against one-at-a-time, graph handling, and the
flatten / unflatten helpers."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import torchmoo as tm
from conftest import CountBackward
from torchmoo.autograd import flatten, hvp, hvp_operator, jacobian, num_params, unflatten

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems: one intra-op thread


class TwoHead(torch.nn.Module):
    """A small shared trunk with m heads; losses are per-head mean squared errors (smooth, non-quadratic)."""

    def __init__(self, m: int = 3, d_in: int = 4, hidden: int = 6) -> None:
        super().__init__()
        self.trunk = torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.Tanh())
        self.heads = torch.nn.ModuleList([torch.nn.Linear(hidden, 1) for _ in range(m)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.trunk(x)
        return torch.cat([h(z) for h in self.heads], dim=1)


def _setup(m: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = TwoHead(m).to(F64)
    x = torch.randn(16, 4, dtype=F64)
    y = torch.randn(16, m, dtype=F64)
    return model, x, y


def _losses(model, x, y):
    return ((model(x) - y) ** 2 * torch.linspace(0.5, 1.5, y.shape[1], dtype=F64)).mean(0).sin() + 1


def _losses_of_flat(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def f(theta: torch.Tensor) -> torch.Tensor:
        pieces = unflatten(theta, [torch.empty(s) for s in shapes])
        return _losses(lambda inp: functional_call(model, dict(zip(names, pieces)), (inp,)), x, y)

    return f


# --------------------------------------------------------------------------------------------------
# jacobian
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batched", [None, True, False])
def test_jacobian_matches_autograd_functional(batched):
    model, x, y = _setup()
    J = jacobian(_losses(model, x, y), model.parameters(), batched=batched)
    theta = flatten([p.detach() for p in model.parameters()])
    expected = torch.autograd.functional.jacobian(_losses_of_flat(model, x, y), theta)
    assert J.shape == (3, num_params(model)) == expected.shape
    torch.testing.assert_close(J, expected, rtol=1e-12, atol=1e-13)


def test_jacobian_matches_finite_differences():
    model, x, y = _setup(seed=1)
    J = jacobian(_losses(model, x, y), model.parameters())
    f = _losses_of_flat(model, x, y)
    theta = flatten([p.detach() for p in model.parameters()])
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        v = torch.randn(theta.shape, generator=gen, dtype=F64)
        eps = 1e-6
        fd = (f(theta + eps * v) - f(theta - eps * v)) / (2 * eps)
        torch.testing.assert_close(J @ v, fd, rtol=1e-7, atol=1e-8)


def test_jacobian_batched_equals_loop_and_sequence_input():
    model, x, y = _setup(m=4, seed=2)
    L = _losses(model, x, y)
    Jb = jacobian(L, model.parameters(), batched=True, retain_graph=True)
    Jl = jacobian(list(L.unbind()), list(model.parameters()), batched=False)
    torch.testing.assert_close(Jb, Jl, rtol=1e-14, atol=1e-15)


def test_default_loops_on_cpu_convolutions(monkeypatch):
    """batched=None takes m passes for a CPU graph with a convolution (faster there), batched otherwise."""
    import torchmoo.autograd as ag

    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(12, 2)).double()
    Lc = conv(torch.randn(4, 1, 4, 4, dtype=F64)).pow(2).mean(0)
    model, x, y = _setup(m=2, seed=4)
    Lm = _losses(model, x, y)
    assert ag._loop_preferred(Lc) and not ag._loop_preferred(Lm)
    calls = []
    loop = ag._jacobian_loop
    monkeypatch.setattr(ag, "_jacobian_loop", lambda *a, **k: calls.append(1) or loop(*a, **k))
    Jc = jacobian(Lc, conv.parameters(), retain_graph=True)
    assert calls == [1]
    torch.testing.assert_close(Jc, jacobian(Lc, conv.parameters(), batched=True), rtol=1e-13, atol=1e-15)
    jacobian(Lm, model.parameters())
    assert calls == [1]  # no convolution: one batched pass


def test_unreached_parameters_and_constant_losses_give_zeros():
    model, x, y = _setup(m=2, seed=3)
    out = model(x)
    extra = torch.nn.Parameter(torch.randn(5, dtype=F64))  # reached by no objective
    losses = [((out[:, 0] - y[:, 0]) ** 2).mean(), torch.tensor(1.0, dtype=F64), ((out[:, 1] - y[:, 1]) ** 2).mean()]
    params = list(model.parameters()) + [extra]
    J = jacobian(losses, params)
    assert J.shape == (3, num_params(params))
    assert torch.equal(J[1], torch.zeros_like(J[1]))  # the constant loss
    assert torch.equal(J[:, -5:], torch.zeros(3, 5, dtype=F64))  # the unreached parameter
    # head 1 is not reached by loss 0 and vice versa
    head_sizes = [num_params(model.trunk), num_params(model.heads[0]), num_params(model.heads[1])]
    off = head_sizes[0]
    head1 = slice(off + head_sizes[1], off + head_sizes[1] + head_sizes[2])
    assert torch.equal(J[0, head1], torch.zeros(head_sizes[2], dtype=F64))
    assert J[0, off: off + head_sizes[1]].abs().sum() > 0
    # no loss requires grad at all: a zero Jacobian, not an error
    J0 = jacobian([torch.tensor(1.0), torch.tensor(2.0)], params)
    assert torch.equal(J0, torch.zeros(2, num_params(params), dtype=F64))


def test_retain_graph_and_create_graph():
    model, x, y = _setup(seed=4)
    L = _losses(model, x, y)
    jacobian(L, model.parameters(), retain_graph=True)
    L.sum().backward()  # still possible
    L2 = _losses(model, x, y)
    jacobian(L2, model.parameters())
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        L2.sum().backward()  # freed, as with torch.autograd.grad
    # create_graph: the Jacobian row of one loss is its gradient, whose derivative along v is H v
    L3 = _losses(model, x, y)
    J = jacobian(L3[:1], model.parameters(), create_graph=True)
    v = torch.randn(J.shape[1], dtype=F64)
    dJv = torch.autograd.grad(J[0] @ v, list(model.parameters()))
    expected = hvp(_losses(model, x, y)[0], model.parameters(), v)
    torch.testing.assert_close(flatten(dJv), expected, rtol=1e-12, atol=1e-13)


def test_create_graph_batched_equals_loop():
    """With create_graph, the batched pass (m > 1) builds the same differentiable Jacobian as m passes:
    d/dtheta sum(J * V) = sum_i H_i V_i, checked against per-objective Hessian-vector products."""
    model, x, y = _setup(seed=9)
    params = list(model.parameters())
    V = torch.randn(3, num_params(model), dtype=F64)
    out = []
    for batched in (True, False):
        J = jacobian(_losses(model, x, y), params, create_graph=True, batched=batched)
        assert J.requires_grad
        out.append(flatten(torch.autograd.grad((J * V).sum(), params)))
    expected = sum(hvp(_losses(model, x, y)[i], params, V[i]) for i in range(3))
    torch.testing.assert_close(out[0], expected, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(out[1], expected, rtol=1e-12, atol=1e-13)


class _NoVmapSquare(torch.autograd.Function):
    """x**2 whose backward leaves torch (numpy), which cannot run under vmap (is_grads_batched)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.from_numpy(2 * x.detach().numpy() * grad.detach().numpy())


def test_fallback_when_batching_fails():
    torch.manual_seed(5)
    w = torch.randn(3, 4, dtype=F64, requires_grad=True)
    x = torch.randn(4, dtype=F64)
    # the custom Function is the last op: the batched pass fails before anything is freed
    L = _NoVmapSquare.apply(w @ x)
    # d(wx)_i^2 / dw = 2 (wx)_i e_i x^T
    u = (w @ x).detach()
    expected = torch.stack([torch.outer(2 * u[i] * torch.eye(3, dtype=F64)[i], x).flatten() for i in range(3)])
    with pytest.raises(RuntimeError):
        jacobian(L, [w], batched=True, retain_graph=True)
    torch.testing.assert_close(jacobian(L, [w]), expected)
    # the custom Function is the first op: the failure comes after other nodes ran and freed their
    # buffers, so the fallback cannot reuse the graph: a clear error naming the way out
    y = _NoVmapSquare.apply(w) @ x
    L2 = torch.stack([y.sin().sum(), y.cos().sum()])
    with pytest.raises(RuntimeError, match="batched=False"):
        jacobian(L2, [w])
    y = _NoVmapSquare.apply(w) @ x
    L2 = torch.stack([y.sin().sum(), y.cos().sum()])
    J = jacobian(L2, [w], batched=None, retain_graph=True)  # retained: the fallback works
    torch.testing.assert_close(J, jacobian(L2, [w], batched=False))


def test_jacobian_errors():
    model, x, y = _setup()
    L = _losses(model, x, y)
    frozen = torch.zeros(3, dtype=F64)
    with pytest.raises(ValueError, match="does not require grad"):
        jacobian(L, [frozen])
    p = next(model.parameters())
    with pytest.raises(ValueError, match="more than once"):
        jacobian(L, [p, p])
    with pytest.raises(ValueError, match="scalar"):
        jacobian([L, L], model.parameters())
    with pytest.raises(TypeError, match=r"params\[0\] must be a torch.Tensor, got float"):
        jacobian(L, [1.0])
    with pytest.raises(ValueError, match="empty"):
        jacobian([], model.parameters())
    with pytest.raises(ValueError, match="empty"):  # an empty (0,) tensor, too
        jacobian(L[:0], model.parameters())
    with pytest.raises(ValueError, match="1-D"):
        jacobian(L.reshape(3, 1), model.parameters())
    elsewhere = torch.zeros(3, dtype=F64, device="meta", requires_grad=True)
    with pytest.raises(ValueError, match="several devices"):
        jacobian(L, [p, elsewhere])


# --------------------------------------------------------------------------------------------------
# hvp
# --------------------------------------------------------------------------------------------------


def test_hvp_matches_autograd_functional_and_finite_differences():
    model, x, y = _setup(seed=6)
    f = _losses_of_flat(model, x, y)
    theta = flatten([p.detach() for p in model.parameters()])
    v = torch.randn(theta.shape, dtype=F64)
    loss = _losses(model, x, y).sum()
    Hv = hvp(loss, model.parameters(), v)
    _, expected = torch.autograd.functional.hvp(lambda t: f(t).sum(), theta, v)
    torch.testing.assert_close(Hv, expected, rtol=1e-12, atol=1e-13)

    def grad_at(t):
        t = t.clone().requires_grad_(True)
        return torch.autograd.grad(f(t).sum(), t)[0]

    eps = 1e-5
    fd = (grad_at(theta + eps * v) - grad_at(theta - eps * v)) / (2 * eps)
    torch.testing.assert_close(Hv, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("batched", [None, False])
def test_batched_hvp_equals_single_hvps(batched):
    model, x, y = _setup(seed=7)
    loss = _losses(model, x, y).sum()
    V = torch.randn(4, num_params(model), dtype=F64)
    H = hvp(loss, model.parameters(), V, batched=batched)
    singles = torch.stack([hvp(loss, model.parameters(), v) for v in V])
    assert H.shape == V.shape
    torch.testing.assert_close(H, singles, rtol=1e-13, atol=1e-14)
    op = hvp_operator(loss, model.parameters())
    torch.testing.assert_close(op(V), singles, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(op(V[2]), singles[2], rtol=1e-13, atol=1e-14)
    # the full Hessian, column by column, is symmetric
    Hfull = op(torch.eye(V.shape[1], dtype=F64))
    torch.testing.assert_close(Hfull, Hfull.T, rtol=1e-12, atol=1e-13)


def test_hvp_operator_matches_functional_hessian():
    """hvp_operator on the identity (k = n right-hand sides, shape (n, n)) is the Hessian of
    torch.autograd.functional.hessian; hvp with (k, n) gives (k, n) rows of it."""
    model, x, y = _setup(m=2, seed=10)
    f = _losses_of_flat(model, x, y)
    theta = flatten([p.detach() for p in model.parameters()])
    expected = torch.autograd.functional.hessian(lambda t: f(t) @ torch.tensor([1.0, -0.5], dtype=F64), theta)
    loss = _losses(model, x, y) @ torch.tensor([1.0, -0.5], dtype=F64)
    n = theta.shape[0]
    H = hvp_operator(loss, model.parameters())(torch.eye(n, dtype=F64))
    assert H.shape == (n, n)
    torch.testing.assert_close(H, expected, rtol=1e-12, atol=1e-13)
    rows = hvp(loss, model.parameters(), torch.eye(n, dtype=F64)[:5], batched=False)
    assert rows.shape == (5, n)
    torch.testing.assert_close(rows, expected[:5], rtol=1e-12, atol=1e-13)


def test_hvp_zero_blocks_and_graph_kept():
    torch.manual_seed(8)
    a = torch.randn(3, dtype=F64, requires_grad=True)  # enters quadratically
    b = torch.randn(2, dtype=F64, requires_grad=True)  # enters linearly: zero Hessian block
    c = torch.randn(2, dtype=F64, requires_grad=True)  # not reached
    loss = (a**2).sum() * 2 + (b * torch.tensor([1.0, -1.0], dtype=F64)).sum()
    v = torch.randn(7, dtype=F64)
    Hv = hvp(loss, [a, b, c], v)
    torch.testing.assert_close(Hv, torch.cat([4 * v[:3], torch.zeros(4, dtype=F64)]))
    loss.backward()  # the forward graph is still there
    assert torch.equal(c.grad if c.grad is not None else torch.zeros(2, dtype=F64), torch.zeros(2, dtype=F64))
    # a linear loss has a zero Hessian
    lin = (b * 3).sum()
    assert torch.equal(hvp(lin, [b], torch.ones(2, 2, dtype=F64)), torch.zeros(2, 2, dtype=F64))


def test_hvp_errors():
    model, x, y = _setup()
    loss = _losses(model, x, y).sum()
    n = num_params(model)
    with pytest.raises(ValueError, match=f"\\({n},\\) or \\(k, {n}\\)"):
        hvp(loss, model.parameters(), torch.zeros(n + 1, dtype=F64))
    with pytest.raises(ValueError, match="scalar"):
        hvp(_losses(model, x, y), model.parameters(), torch.zeros(n, dtype=F64))
    with pytest.raises(TypeError, match="v must be a torch.Tensor, got list"):
        hvp(loss, model.parameters(), [0.0] * n)
    with pytest.raises(ValueError, match="v is on meta but the parameters are on cpu"):
        hvp(loss, model.parameters(), torch.zeros(n, dtype=F64, device="meta"))


def test_hvp_create_graph_gives_third_derivatives():
    """f(a, b) = sum a_i^3 + a_0 a_1 b: H v against the Hessian written out; with create_graph the product
    is differentiable again (third derivatives), without it the result is a constant."""
    gen = torch.Generator().manual_seed(11)
    a = torch.randn(3, generator=gen, dtype=F64, requires_grad=True)
    b = torch.randn(1, generator=gen, dtype=F64, requires_grad=True)
    loss = (a**3).sum() + a[0] * a[1] * b[0]
    v = torch.randn(4, generator=gen, dtype=F64)
    Hv = hvp(loss, [a, b], v, create_graph=True)
    ad, bd = a.detach(), float(b.detach())
    H = torch.diag(torch.cat([6 * ad, torch.zeros(1, dtype=F64)]))
    H[0, 1] = H[1, 0] = bd
    H[0, 3] = H[3, 0] = float(ad[1])
    H[1, 3] = H[3, 1] = float(ad[0])
    torch.testing.assert_close(Hv, H @ v, rtol=1e-14, atol=1e-14)
    assert Hv.requires_grad
    (ga, gb) = torch.autograd.grad(Hv.sum(), [a, b])
    # sum(H v) = 6 sum_i a_i v_i + b (v_0 + v_1) + a_1 (v_0 + v_3) + a_0 (v_1 + v_3): its gradient
    torch.testing.assert_close(ga, torch.stack([6 * v[0] + v[1] + v[3], 6 * v[1] + v[0] + v[3], 6 * v[2]]),
                               rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(gb, (v[0] + v[1]).reshape(1), rtol=1e-14, atol=1e-14)
    assert not hvp(loss, [a, b], v).requires_grad
    # k = 2 vectors in one batched pass keep the graph too
    HV = hvp(loss, [a, b], torch.stack([v, -2 * v]), create_graph=True)
    torch.testing.assert_close(HV, torch.stack([H @ v, -2 * (H @ v)]), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(torch.autograd.grad(HV[1].sum(), a)[0], -2 * ga, rtol=1e-14, atol=1e-14)


# --------------------------------------------------------------------------------------------------
# flatten / unflatten
# --------------------------------------------------------------------------------------------------


def test_flatten_unflatten_roundtrip():
    shapes = [(2, 3), (4,), (), (1, 2, 2)]
    gen = torch.Generator().manual_seed(0)
    ts = [torch.randn(s, generator=gen) for s in shapes]
    v = flatten(ts)
    assert v.shape == (6 + 4 + 1 + 4,) == (num_params(ts),)
    # the layout of the module docstring: p.reshape(-1) concatenated in the order given (row-major)
    assert v.tolist() == [x for t in ts for x in t.reshape(-1).tolist()]
    assert torch.equal(flatten([ts[0].T]), ts[0].T.reshape(-1))  # a transposed view is read logically
    back = unflatten(v, ts)
    assert [b.shape for b in back] == [t.shape for t in ts]
    assert all(torch.equal(b, t) for b, t in zip(back, ts))
    assert all(b._base is v for b in back)  # views of a contiguous vec, as documented
    V = torch.stack([v, 2 * v])
    back2 = unflatten(V, ts)
    assert [b.shape for b in back2] == [(2, *t.shape) for t in ts]
    assert all(torch.equal(b[1], 2 * t) for b, t in zip(back2, ts))
    with pytest.raises(ValueError, match="15"):
        unflatten(torch.zeros(14), ts)
    with pytest.raises(ValueError, match="at least one tensor"):
        flatten([])
    with pytest.raises(TypeError, match="vec must be a torch.Tensor, got list"):
        unflatten([0.0], ts)


def test_public_names():
    assert tm.autograd.jacobian is jacobian and tm.autograd.hvp is hvp


def test_module_gives_its_trainable_parameters_only():
    """A module contributes the parameters that require grad (frozen layers are left alone, as by
    loss.backward()), consistently for as_param_list, num_params, flatten/unflatten and jacobian."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    for p in net[0].parameters():
        p.requires_grad_(False)
    plist = tm.autograd.as_param_list(net)
    assert [p.shape for p in plist] == [net[2].weight.shape, net[2].bias.shape]
    assert tm.autograd.num_params(net) == 4 * 2 + 2
    out = net(torch.randn(5, 3))
    J = tm.autograd.jacobian(out.pow(2).mean(0), net, retain_graph=True)
    assert J.shape == (2, 10)
    ref = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(l, plist, retain_graph=True)])
                       for l in out.pow(2).mean(0)])
    torch.testing.assert_close(J, ref)
    assert [t.shape for t in tm.autograd.unflatten(J[0], net)] == [p.shape for p in plist]
    with pytest.raises(ValueError, match="does not require grad"):
        tm.autograd.as_param_list([net[0].weight])  # an explicit frozen tensor is still an error


def test_jacobian_loop_rows_in_one_tensor_match_the_batched_pass():
    """The m backward passes write one (m, n) Jacobian (blocks are views of it): same numbers as the
    vmapped pass, in flatten's order for a channels_last weight, zeros (and a None block) where no loss
    reaches, and per-parameter blocks when the parameters have several dtypes."""
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(2, 3, 3).to(memory_format=torch.channels_last)
    head = torch.nn.Linear(3 * 4 * 4, 2)
    unused = torch.nn.Parameter(torch.randn(4))
    params = [conv.weight, conv.bias, unused, head.weight, head.bias]
    x = torch.randn(5, 2, 6, 6).to(memory_format=torch.channels_last)
    out = head(torch.tanh(conv(x)).flatten(1))
    losses = torch.stack([out[:, 0].pow(2).mean(), out[:, 1].sin().mean(), out.sum() * 0.1])
    J_loop = tm.autograd.jacobian(losses, params, retain_graph=True, batched=False)
    J_vmap = tm.autograd.jacobian(losses, params, retain_graph=True, batched=True)
    torch.testing.assert_close(J_loop, J_vmap, rtol=1e-5, atol=1e-6)
    ref = torch.stack([tm.autograd.flatten([g if g is not None else torch.zeros_like(p) for g, p in zip(
        torch.autograd.grad(l, params, retain_graph=True, allow_unused=True), params)]) for l in losses])
    torch.testing.assert_close(J_loop, ref, rtol=0, atol=0)
    blocks = tm.autograd.jacobian_blocks(losses, params, retain_graph=True, batched=False)
    start = conv.weight.numel() + conv.bias.numel()
    assert blocks[2] is None and bool((J_loop[:, start:start + 4] == 0).all())
    for b, p, got in zip(blocks, params, tm.autograd.unflatten(J_loop, params)):
        if b is not None:
            assert b.shape == (3, *p.shape)
            torch.testing.assert_close(b, got, rtol=0, atol=0)
    # parameters of two dtypes: one block each, the Jacobian in the promoted concatenation
    lin = torch.nn.Linear(3, 2).double()
    y = lin(torch.randn(4, 3, dtype=torch.float64)).float() * unused[:2]
    mixed = [lin.weight, unused]
    bl = tm.autograd.jacobian_blocks(y.mean(0), mixed, retain_graph=True, batched=False)
    assert bl[0].dtype == torch.float64 and bl[1].dtype == torch.float32


@pytest.mark.parametrize("batched", [None, False])
def test_jacobian_blocks_sparse_gradient(batched):
    """An nn.Embedding(sparse=True) gets a sparse block (the m passes stack it; no (m, n) tensor)."""
    torch.manual_seed(4)
    emb = torch.nn.Embedding(10, 3, sparse=True).double()
    lin = torch.nn.Linear(3, 2).double()
    out = lin(emb(torch.tensor([1, 2, 2, 7]))).pow(2).mean(0)  # (2,)
    params = [emb.weight, lin.weight, lin.bias]
    blocks = tm.autograd.jacobian_blocks(out, params, retain_graph=True, batched=batched)
    assert blocks[0].layout == torch.sparse_coo and blocks[0].shape == (2, 10, 3)
    for i in range(2):
        ref = torch.autograd.grad(out[i], params, retain_graph=True)
        for b, g in zip(blocks, ref):
            torch.testing.assert_close(b[i].to_dense(), g.to_dense(), rtol=1e-12, atol=1e-14)


def test_jacobian_loop_keeps_one_row_besides_the_jacobian(monkeypatch):
    """The m backward passes write their rows into the (m, n) Jacobian as they come: when pass i + 1 runs,
    the gradients returned by pass i are gone (memory: J plus one row, not 2 J); the rows are right."""
    import weakref

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x = torch.randn(6, 4)
    params = list(net.parameters())
    expected = torch.stack([tm.autograd.flatten(torch.autograd.grad(net(x).pow(2).mean(0)[i], params))
                            for i in range(3)])
    real_grad = torch.autograd.grad
    returned, alive_at_call = [], []

    def spy(*args, **kwargs):
        alive_at_call.append(sum(r() is not None for r in returned))
        out = real_grad(*args, **kwargs)
        returned.extend(weakref.ref(g) for g in out if g is not None)
        return out

    monkeypatch.setattr(torch.autograd, "grad", spy)
    J = tm.autograd.jacobian(net(x).pow(2).mean(0), params, batched=False)
    monkeypatch.undo()
    assert alive_at_call == [0, 0, 0]
    torch.testing.assert_close(J, expected)


def test_hvp_parameters_of_two_dtypes():
    """A float32 parameter before a float64 one: each piece of v is cast to its own parameter's dtype
    (the float64 block is exact, not computed from v rounded to float32), and H v is in the promoted
    dtype, zeros included."""
    gen = torch.Generator().manual_seed(12)
    a = torch.randn(3, generator=gen, dtype=F64, requires_grad=True)
    b = torch.randn(2, generator=gen).requires_grad_()
    loss = (a**3).sum() + (b.double() ** 3).sum()
    v = torch.full((5,), 1 / 3, dtype=F64)
    Hv = hvp(loss, [b, a], v)
    assert Hv.dtype == F64
    torch.testing.assert_close(Hv[2:], 6 * a.detach() * v[2:], rtol=1e-15, atol=0)
    torch.testing.assert_close(Hv[:2], (6 * b.detach().double() * v[:2]).float().double(), rtol=1e-6, atol=0)
    op = hvp_operator(loss, [b, a])
    torch.testing.assert_close(op(torch.stack([v, 2 * v]))[1, 2:], 12 * a.detach() * v[2:], rtol=1e-15, atol=0)
    lin = b.double().sum() + a.sum()  # linear: no second derivative, zeros in the promoted dtype
    assert torch.equal(hvp(lin, [b, a], v), torch.zeros(5, dtype=F64))


def test_functions_work_under_no_grad():
    """Like torch.autograd.grad, jacobian / jacobian_blocks / hvp / hvp_operator work inside torch.no_grad():
    stacking the losses there must not cut them from their graph (a silent zero Jacobian), and
    create_graph still gives a differentiable result."""
    model, x, y = _setup(seed=13)
    params = list(model.parameters())
    L = _losses(model, x, y)
    Ls = list(L)  # the losses with their graph (unbinding or summing under no_grad would cut them)
    J = jacobian(Ls, params, retain_graph=True)
    v = torch.randn(2, J.shape[1], dtype=F64, generator=torch.Generator().manual_seed(0))
    S = L.sum()
    H = hvp(S, params, v)
    assert float(J.abs().max()) > 0
    with torch.no_grad():
        torch.testing.assert_close(jacobian(Ls, params, retain_graph=True), J, rtol=0, atol=0)
        blocks = tm.autograd.jacobian_blocks(Ls, params, retain_graph=True)
        torch.testing.assert_close(torch.cat([b.reshape(3, -1) for b in blocks], 1), J, rtol=0, atol=0)
        Jc = jacobian(Ls, params, create_graph=True)
        torch.testing.assert_close(hvp(S, params, v), H, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(hvp_operator(S, params)(v), H, rtol=1e-14, atol=1e-15)
    assert Jc.requires_grad


def test_jacobian_loop_runs_each_pass_through_its_own_loss_only():
    """Given m scalar losses, pass i starts from loss i: the other losses' heads are not run with zero
    gradients (from a stacked (m,) tensor every pass runs through every head). Same Jacobian either way;
    tm.backward's task-parameter passes do the same."""
    torch.manual_seed(19)
    trunk, heads = torch.nn.Linear(4, 3), [torch.nn.Linear(3, 1) for _ in range(3)]
    x = torch.randn(5, 4)
    params = list(trunk.parameters())

    def losses():
        z = trunk(x)
        return [CountBackward.apply(h(z)).pow(2).mean() for h in heads]

    CountBackward.calls = 0
    J = jacobian(losses(), params, batched=False)
    assert CountBackward.calls == 3  # one head per pass
    CountBackward.calls = 0
    J_stacked = jacobian(torch.stack(losses()), params, batched=False)
    assert CountBackward.calls == 9
    torch.testing.assert_close(J, J_stacked, rtol=0, atol=0)
    CountBackward.calls = 0
    tm.backward(losses(), trunk, tm.methods.MGDA(), task_params=heads, batched=False)
    assert CountBackward.calls == 6  # the Jacobian's 3 passes and the 3 heads' own passes


@pytest.mark.parametrize("batched", [None, False])
def test_jacobian_blocks_sparse_gradient_with_a_loss_that_does_not_reach_it(batched):
    """A sparse-gradient embedding that only the second loss reaches: its block is sparse, with an empty
    first row (the first pass, all dense, wrote its row into the (m, n) tensor before the sparse gradient
    came); the other blocks are the dense rows. The same through tm.backward (batched=False, as the batched
    pass of a sparse gradient fails after freeing the graph), whose sparse .grad is the aggregated direction
    of the assembled Jacobian."""
    torch.manual_seed(14)
    emb = torch.nn.Embedding(10, 3, sparse=True).double()
    lin = torch.nn.Linear(3, 2).double()
    x = torch.randn(3, dtype=F64, requires_grad=True)
    params = [emb.weight, lin.weight, lin.bias, x]

    def losses():
        return [x.pow(2).sum() + lin(x).sum(), lin(emb(torch.tensor([1, 2, 2, 7]))).pow(2).mean() + x.sum()]

    L = losses()
    blocks = tm.autograd.jacobian_blocks(L, params, retain_graph=True, batched=batched)
    assert blocks[0].layout == torch.sparse_coo and blocks[0].shape == (2, 10, 3)
    assert all(b.layout == torch.strided for b in blocks[1:])
    rows = [[torch.zeros_like(p) if g is None else g.to_dense() for g, p in
             zip(torch.autograd.grad(l, params, retain_graph=True, allow_unused=True), params)] for l in L]
    assert torch.equal(rows[0][0], torch.zeros(10, 3, dtype=F64)) and rows[1][0].abs().sum() > 0
    for k, b in enumerate(blocks):
        torch.testing.assert_close(b.to_dense(), torch.stack([rows[0][k], rows[1][k]]), rtol=1e-13, atol=1e-15)
    # a dense gradient of the weight (read as a whole by the first loss) in the sparse block's column
    Lw = [emb.weight.pow(2).sum(), emb(torch.tensor([3, 3])).sum()]
    bw = tm.autograd.jacobian_blocks(Lw, [emb.weight], retain_graph=True, batched=batched)[0]
    assert bw.layout == torch.sparse_coo
    torch.testing.assert_close(bw.to_dense(), torch.stack([torch.autograd.grad(l, emb.weight, retain_graph=True)[0]
                                                           .to_dense() for l in Lw]), rtol=0, atol=0)
    J = torch.stack([flatten(r) for r in rows])
    d = tm.methods.MGDA()(J)
    tm.backward(losses(), params, tm.methods.MGDA(), batched=False)
    assert emb.weight.grad.layout == torch.sparse_coo
    torch.testing.assert_close(flatten([p.grad.to_dense() for p in params]), d, rtol=1e-12, atol=1e-14)


def test_jacobian_loop_frees_the_graph_unless_retained():
    """The m backward passes free the graph with the last one, as torch.autograd.grad does (a graph kept
    alive by every step of a training loop would hold its activations), and keep it with retain_graph."""
    model, x, y = _setup(seed=15)
    L = _losses(model, x, y)
    J = jacobian(L, model.parameters(), batched=False, retain_graph=True)
    L.sum().backward()  # retained
    torch.testing.assert_close(J, jacobian(_losses(model, x, y), model.parameters(), batched=True))
    for losses in (_losses(model, x, y), list(_losses(model, x, y))):
        jacobian(losses, model.parameters(), batched=False)
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            sum(losses).backward()


def test_constant_losses_give_a_zero_jacobian_when_batched():
    """Losses that do not require grad give a zero Jacobian with batched=True too (no batched pass is
    attempted, which would raise since batching errors propagate then)."""
    model, _, _ = _setup(seed=16)
    consts = [torch.tensor(1.0, dtype=F64), torch.tensor(2.0, dtype=F64)]
    assert torch.equal(jacobian(consts, model.parameters(), batched=True), torch.zeros(2, num_params(model), dtype=F64))
    assert tm.autograd.jacobian_blocks(consts, model.parameters(), batched=True) == [None] * len(list(model.parameters()))


def test_unflatten_rejects_a_0_dim_vector():
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\)"):
        unflatten(torch.tensor(1.0), [torch.zeros(3)])


def test_hvp_dtype_is_promoted_over_all_parameters():
    """A float64 parameter before a float32 one: H v is float64 (torch.cat's promotion, as flatten gives),
    whichever parameter comes last, also when it is all zeros."""
    gen = torch.Generator().manual_seed(17)
    a = torch.randn(3, generator=gen, dtype=F64, requires_grad=True)
    b = torch.randn(2, generator=gen).requires_grad_()
    v = torch.full((5,), 0.5, dtype=F64)
    loss = (a**3).sum() + (b.double() ** 3).sum()
    Hv = hvp(loss, [a, b], v)
    assert Hv.dtype == F64 == flatten([a, b]).dtype
    torch.testing.assert_close(Hv[:3], 6 * a.detach() * v[:3], rtol=1e-15, atol=0)
    assert hvp_operator(loss, [a, b])(torch.stack([v, v])).dtype == F64
    lin = a.sum() + b.sum()  # linear: no second derivative
    zero = hvp(lin, [a, b], v)
    assert zero.dtype == F64 and torch.equal(zero, torch.zeros(5, dtype=F64))


def test_backward_accumulates_sparse_gradients():
    """.grad accumulates as the autograd engine does for an nn.Embedding(sparse=True): sparse + sparse stays
    sparse (two tm.backward calls write twice the direction), and a dense direction added to a sparse .grad
    (left by loss.backward()) gives their dense sum."""
    torch.manual_seed(18)
    emb = torch.nn.Embedding(6, 2, sparse=True).double()
    c = torch.randn(2, 6, 2, dtype=F64)
    idx = torch.tensor([0, 3, 3])

    def losses():
        e = emb(idx)
        return [(e * c[0, :3]).sum().pow(2), (e * c[1, :3]).sum().sin()]

    J = torch.stack([flatten(torch.autograd.grad(l, emb.weight, retain_graph=True)[0].to_dense()) for l in losses()])
    d = tm.methods.MGDA()(J)
    tm.backward(losses(), [emb.weight], tm.methods.MGDA(), batched=False)  # sparse blocks need the m passes
    tm.backward(losses(), [emb.weight], tm.methods.MGDA(), batched=False)
    assert emb.weight.grad.layout == torch.sparse_coo
    torch.testing.assert_close(emb.weight.grad.to_dense().reshape(-1), 2 * d, rtol=1e-12, atol=1e-14)
    # a sparse .grad, then the losses of the weight read as a whole (dense gradients)
    emb.weight.grad = None
    emb(idx).pow(2).sum().backward()
    sparse_grad = emb.weight.grad.to_dense().clone()
    assert emb.weight.grad.layout == torch.sparse_coo
    dense_losses = [(emb.weight * c[0]).sum().pow(2), (emb.weight * c[1]).sum().sin()]
    Jd = torch.stack([torch.autograd.grad(l, emb.weight, retain_graph=True)[0].reshape(-1) for l in dense_losses])
    dd = tm.methods.MGDA()(Jd)
    tm.backward(dense_losses, [emb.weight], tm.methods.MGDA())
    assert emb.weight.grad.layout == torch.strided
    torch.testing.assert_close(emb.weight.grad.reshape(-1), sparse_grad.reshape(-1) + dd, rtol=1e-12, atol=1e-14)


def test_default_loops_for_sparse_embeddings():
    """batched=None takes the m passes for a graph with an nn.Embedding(sparse=True) (the batched pass
    cannot form its sparse gradient, and fails after freeing the graph): tm.backward works with the
    default and writes what batched=False writes; a dense embedding keeps the batched pass."""
    import torchmoo.autograd as ag

    def run(sparse, batched):
        torch.manual_seed(21)
        emb = torch.nn.Embedding(8, 3, sparse=sparse).double()
        lin = torch.nn.Linear(3, 2).double()
        h = lin(emb(torch.tensor([1, 4, 4, 6])))
        losses = [h[:, 0].pow(2).mean(), h[:, 1].exp().mean()]
        kw = {} if batched is None else {"batched": batched}
        tm.backward(losses, [emb.weight, lin.weight, lin.bias], tm.methods.MGDA(), **kw)
        return losses, [p.grad.to_dense() for p in (emb.weight, lin.weight, lin.bias)]

    L, default = run(True, None)
    assert ag._loop_preferred(torch.stack(run(True, False)[0]))
    _, looped = run(True, False)
    for a, b in zip(default, looped):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    dense_losses, dense = run(False, None)
    assert not ag._loop_preferred(torch.stack(dense_losses))
    for a, b in zip(dense, looped):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
