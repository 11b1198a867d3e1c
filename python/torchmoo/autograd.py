"""Per-objective gradients and Hessian-vector products on flattened parameters.

Every method of torchmoo works on the *Jacobian* of the objectives with respect to a list of
parameters, flattened into one vector of length ``n``: row ``i`` of ``J`` (shape ``(m, n)``) is the
gradient of objective ``i``. This module computes such Jacobians from the losses of one forward pass
(:func:`jacobian`), Hessian-vector products (:func:`hvp`, :func:`hvp_operator`), and converts between
parameter lists and flat vectors (:func:`flatten`, :func:`unflatten`, :func:`num_params`).

The flat layout is the concatenation of ``p.reshape(-1)`` over the parameters, in the order given.

Conventions shared by the functions below:

* ``params`` is a tensor, an iterable of tensors, or an :class:`torch.nn.Module` (its parameters
  that require grad: frozen ones are skipped); every tensor given explicitly must require grad, and
  none may appear twice.
* A parameter that an objective does not reach gets a zero gradient (and a zero Hessian block),
  not an error.
* ``retain_graph`` defaults to ``create_graph``, as in :func:`torch.autograd.grad`: pass
  ``retain_graph=True`` to backward through the same graph again afterwards.
* Like :func:`torch.autograd.grad`, the functions work under :func:`torch.no_grad` (stacking the
  losses, indexing them and building a graph with ``create_graph`` run with grad mode on).
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "Params",
    "Losses",
    "as_param_list",
    "flatten",
    "unflatten",
    "num_params",
    "jacobian",
    "jacobian_blocks",
    "hvp",
    "hvp_operator",
]

#: What the functions of this module accept as parameters.
Params = Union[Tensor, Iterable[Tensor], torch.nn.Module]
#: What the functions of this module accept as objectives: a sequence of scalars or an ``(m,)`` tensor.
Losses = Union[Tensor, Sequence[Tensor]]

# Errors that torch raises when a backward formula cannot run under vmap (``is_grads_batched``):
# a custom autograd.Function without a vmap rule, an in-place op on a batched tensor, ``.item()``.
_BATCHING_ERRORS = (RuntimeError, NotImplementedError, ValueError)


def as_param_list(params: Params, *, name: str = "params", require_grad: bool = True) -> List[Tensor]:
    """``params`` as a list of distinct tensors. A module gives its trainable parameters (those that
    require grad): frozen layers are left alone, as ``loss.backward()`` and the optimizers leave them.

    Args:
        params: a tensor, an iterable of tensors (e.g. ``model.parameters()``, consumed once) or an
            :class:`torch.nn.Module`.
        name: the argument name used in error messages.
        require_grad: reject tensors that do not require grad.

    Returns:
        The tensors themselves (not copies), in the given order; empty for an empty iterable.

    Raises:
        TypeError: ``params`` is not a tensor, iterable or module, or an element is not a tensor.
        ValueError: a tensor that does not require grad (when ``require_grad``) or that appears twice.
    """
    if isinstance(params, torch.nn.Module):
        out = [p for p in params.parameters() if p.requires_grad]
    elif isinstance(params, Tensor):
        out = [params]
    else:
        try:
            out = list(params)
        except TypeError:
            raise TypeError(
                f"{name} must be a tensor, an iterable of tensors or an nn.Module, got {type(params).__name__}."
            ) from None
    seen = set()
    for i, p in enumerate(out):
        if not isinstance(p, Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(p).__name__}.")
        if require_grad and not p.requires_grad:
            raise ValueError(f"{name}[{i}] (shape {tuple(p.shape)}) does not require grad.")
        if id(p) in seen:
            raise ValueError(f"{name}[{i}] (shape {tuple(p.shape)}) appears more than once.")
        seen.add(id(p))
    return out


def num_params(params: Params) -> int:
    """Total number of scalar entries ``n`` of ``params`` (the length of :func:`flatten`).

    Unlike the other functions of this module, tensors that do not require grad are counted too
    (a module still contributes only its parameters that require grad).

    Raises:
        TypeError: ``params`` is not a tensor, iterable of tensors or module.
        ValueError: a tensor appears twice.
    """
    return sum(p.numel() for p in as_param_list(params, require_grad=False))


def flatten(tensors: Iterable[Tensor]) -> Tensor:
    """Concatenate ``t.reshape(-1)`` over ``tensors``: a list of parameters (or gradients) -> ``(n,)``.

    Args:
        tensors: tensors of any shapes (a tensor, an iterable of tensors or a module); they need not
            require grad. They must lie on one device.

    Returns:
        A new ``(n,)`` tensor, ``n`` the total number of entries, in the dtype that
        :func:`torch.cat` promotes them to. It keeps the autograd graph of the inputs (``detach()``
        it for a plain copy of parameter values).

    Raises:
        TypeError: an element is not a tensor.
        ValueError: if ``tensors`` is empty (the dtype and device of the result would be unknown), or a
            tensor appears twice.
    """
    ts = as_param_list(tensors, name="tensors", require_grad=False)
    if not ts:
        raise ValueError("flatten() needs at least one tensor.")
    return torch.cat([t.reshape(-1) for t in ts])


def unflatten(vec: Tensor, like: Iterable[Tensor]) -> List[Tensor]:
    """Split ``vec`` of shape ``(..., n)`` into tensors of shapes ``(..., *p.shape)`` for ``p`` in ``like``.

    The inverse of :func:`flatten` (with leading batch dimensions kept: a ``(k, n)`` stack of flat
    vectors gives tensors of shape ``(k, *p.shape)``). The results are views of ``vec`` when it is
    contiguous.

    Args:
        vec: ``(..., n)`` tensor.
        like: the tensors whose shapes give the split (a tensor, an iterable of tensors or a module);
            only their shapes are read.

    Returns:
        One tensor per entry of ``like``, shape ``(..., *p.shape)``, in ``vec``'s dtype and device.

    Raises:
        TypeError: ``vec`` is not a tensor.
        ValueError: ``vec`` is 0-dim or ``vec.shape[-1]`` differs from the total size ``n`` of ``like``.
    """
    if not isinstance(vec, Tensor):
        raise TypeError(f"vec must be a torch.Tensor, got {type(vec).__name__}.")
    shapes = [p.shape for p in as_param_list(like, name="like", require_grad=False)]
    sizes = [s.numel() for s in shapes]
    if vec.dim() == 0 or vec.shape[-1] != sum(sizes):
        raise ValueError(
            f"vec must have shape (..., {sum(sizes)}) to match the parameters, got {tuple(vec.shape)}."
        )
    lead = vec.shape[:-1]
    return [piece.reshape((*lead, *shape)) for piece, shape in zip(vec.split(sizes, dim=-1), shapes)]


def _stack_losses(losses: Losses) -> Tensor:
    """The objectives as one ``(m,)`` tensor (stacking keeps the graph of every loss)."""
    return _losses_and_items(losses)[0]


def _losses_and_items(losses: Losses) -> Tuple[Tensor, Optional[List[Tensor]]]:
    """The objectives as one ``(m,)`` tensor, and, when they were given as ``m`` scalar tensors, those
    scalars: a backward pass from ``items[i]`` reaches only loss ``i``'s graph, where one from ``L[i]``
    also runs through every other loss's graph (the other task heads) with zero gradients."""
    if isinstance(losses, Tensor):
        if losses.dim() > 1:
            raise ValueError(f"losses must be a sequence of scalars or a 1-D tensor, got shape {tuple(losses.shape)}.")
        if losses.numel() == 0:
            raise ValueError("losses is empty: at least one objective is needed.")
        return losses.reshape(-1), None
    try:
        items = list(losses)
    except TypeError:
        raise TypeError(f"losses must be a tensor or a sequence of tensors, got {type(losses).__name__}.") from None
    for i, loss in enumerate(items):
        if not isinstance(loss, Tensor):
            raise TypeError(f"losses[{i}] must be a torch.Tensor, got {type(loss).__name__}.")
        if loss.numel() != 1:
            raise ValueError(f"losses[{i}] must be a scalar, got shape {tuple(loss.shape)}.")
    if not items:
        raise ValueError("losses is empty: at least one objective is needed.")
    items = [loss.reshape(()) for loss in items]
    return torch.stack(items), items


def _rows(grads: Sequence[Optional[Tensor]], params: List[Tensor], lead: tuple) -> Tensor:
    """Concatenate per-parameter gradients (``None`` = unreached = zero) into ``(*lead, n)``."""
    pieces = [
        (g.reshape(*lead, -1) if g is not None else p.new_zeros(*lead, p.numel()))
        for g, p in zip(grads, params)
    ]
    return torch.cat(pieces, dim=-1)


@torch.enable_grad()
def jacobian(
    losses: Losses,
    params: Params,
    *,
    create_graph: bool = False,
    retain_graph: Optional[bool] = None,
    batched: Optional[bool] = None,
) -> Tensor:
    r"""The Jacobian ``J`` of ``m`` objectives with respect to flattened ``params``: shape ``(m, n)``.

    Row ``i`` is :math:`\nabla_\theta \ell_i` flattened as in :func:`flatten`. By default the ``m``
    vector-Jacobian products run as *one* batched backward pass (``torch.autograd.grad`` with
    ``is_grads_batched=True``, i.e. the backward graph under ``vmap``); if a backward formula of
    the graph cannot be batched, the ``m`` rows are computed by ``m`` backward passes instead.
    :func:`jacobian_blocks` gives the same numbers per parameter, without the concatenation.

    Args:
        losses: ``m`` scalar tensors (a sequence) or one ``(m,)`` tensor, from one forward pass.
        params: the parameters (tensor, iterable of tensors or module); ``n`` = their total size.
        create_graph: build the graph of the Jacobian itself (to differentiate through it).
        retain_graph: keep the forward graph for another backward afterwards; defaults to
            ``create_graph``.
        batched: ``None`` (default): batched, falling back to ``m`` passes when batching fails, and
            ``m`` passes for a CPU graph with a convolution (faster there than the batched pass);
            ``True``: batched only (errors propagate); ``False``: ``m`` passes.

    Returns:
        ``(m, n)`` tensor in the parameters' dtype and device. Parameters an objective does not reach
        get zeros in its row; an objective that does not require grad gets a zero row.

    Raises:
        TypeError: ``losses`` is not a tensor or a sequence of tensors, or ``params`` holds a non-tensor.
        ValueError: ``losses`` is empty, not 1-D or holds a non-scalar; a parameter does not require grad
            or appears twice; the parameters are on several devices (:func:`jacobian_blocks` allows that).
        RuntimeError: the batched pass failed after freeing the graph (possible only with
            ``retain_graph=False``), so no fallback was possible: the message says to pass
            ``batched=False``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> losses = model(torch.randn(8, 4)).pow(2).mean(0)      # two objectives, shape (2,)
        >>> J = jacobian(losses, model.parameters())              # (2, 10)
    """
    plist = as_param_list(params)
    L, items = _losses_and_items(losses)
    devices = sorted({str(p.device) for p in plist})
    if len(devices) > 1:  # checked before the backward pass, which would free the graph
        raise ValueError(
            f"params are on several devices ({', '.join(devices)}) but the (m, n) Jacobian lies on one: move "
            "them to one device, or use jacobian_blocks for one block per parameter."
        )
    blocks, flat = _jacobian(L, plist, create_graph=create_graph, retain_graph=retain_graph, batched=batched,
                             items=items)
    if not plist:
        return L.new_zeros(L.shape[0], 0).detach()
    if flat is not None:  # the blocks are views of it: no concatenation
        return flat
    return _rows(blocks, plist, (L.shape[0],))


@torch.enable_grad()
def jacobian_blocks(
    losses: Losses,
    params: Params,
    *,
    create_graph: bool = False,
    retain_graph: Optional[bool] = None,
    batched: Optional[bool] = None,
) -> List[Optional[Tensor]]:
    """The Jacobian per parameter: block ``k`` has shape ``(m, *params[k].shape)``.

    Same arguments and computation as :func:`jacobian`, without concatenating the blocks into one
    ``(m, n)`` matrix (a full copy of ``J``): ``jacobian(...)`` is the concatenation of
    ``block.reshape(m, -1)``. A parameter that no objective reaches gets ``None`` instead of a block
    of zeros. :func:`torchmoo.backward` works on the blocks directly.

    Returns:
        One entry per parameter: an ``(m, *p.shape)`` tensor in the parameter's dtype and on its
        device (the parameters may lie on several devices here), or ``None``. A sparse gradient (e.g.
        of ``nn.Embedding(sparse=True)`` with ``batched=False``) gives a sparse block.

    Raises:
        TypeError / ValueError: bad ``losses`` or ``params``, as for :func:`jacobian`.
        RuntimeError: as for :func:`jacobian`.
    """
    L, items = _losses_and_items(losses)
    return _jacobian(L, as_param_list(params), create_graph=create_graph, retain_graph=retain_graph,
                     batched=batched, items=items)[0]


def _jacobian(
    L: Tensor, plist: List[Tensor], *, create_graph: bool, retain_graph: Optional[bool], batched: Optional[bool],
    items: Optional[Sequence[Tensor]] = None,
) -> Tuple[List[Optional[Tensor]], Optional[Tensor]]:
    """The blocks of :func:`jacobian_blocks`, and the ``(m, n)`` Jacobian when the blocks are views of
    one such tensor (the ``m`` backward passes write their rows into it), else ``None``. ``items``: the
    ``m`` scalar losses ``L`` was stacked from, if known (the separate passes start from them)."""
    m = L.shape[0]
    retain = create_graph if retain_graph is None else bool(retain_graph)
    if not plist or not L.requires_grad:  # no objective depends on anything: the Jacobian is zero
        return [None] * len(plist), None
    if m == 1 or (batched is None and _loop_preferred(L)):
        batched = False
    if batched is None or batched:
        try:
            eye = torch.eye(m, dtype=L.dtype, device=L.device)
            return list(torch.autograd.grad(
                L, plist, grad_outputs=eye, retain_graph=retain, create_graph=create_graph,
                allow_unused=True, is_grads_batched=True,
            )), None
        except _BATCHING_ERRORS as batch_error:
            if batched:
                raise
            try:
                return _jacobian_loop(L, plist, create_graph=create_graph, retain=retain, items=items)
            except RuntimeError as loop_error:
                raise RuntimeError(
                    "torchmoo.autograd.jacobian: the batched backward pass failed "
                    f"({type(batch_error).__name__}: {batch_error}) and the graph could not be reused for "
                    f"the fallback of {m} separate passes ({loop_error}). Pass batched=False (or "
                    "retain_graph=True) to compute the rows one backward pass at a time."
                ) from batch_error
    return _jacobian_loop(L, plist, create_graph=create_graph, retain=retain, items=items)


def _loop_preferred(L: Tensor) -> bool:
    """Whether ``batched=None`` takes ``m`` passes, from one walk of the graph of ``L``:

    * a convolution on the CPU, whose backward under ``vmap`` costs more than ``m`` plain passes (LeNet,
      batch 256: 2.9x vs 1.8x a backward for m = 2, 12.9x vs 10.1x for m = 10), while for linear layers
      the batched pass wins;
    * an ``nn.Embedding(sparse=True)`` on any device, whose sparse gradient the batched pass cannot form
      (it fails after freeing the graph, so trying it first is not an option)."""
    cpu = L.device.type == "cpu"
    seen, stack = set(), [L.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = node.name()
        if (cpu and "Convolution" in name) or (name == "EmbeddingBackward0" and getattr(node, "_saved_sparse", False)):
            return True
        stack.extend(fn for fn, _ in node.next_functions)
    return False


def _jacobian_loop(
    L: Tensor, plist: List[Tensor], *, create_graph: bool, retain: bool, items: Optional[Sequence[Tensor]] = None
) -> Tuple[List[Optional[Tensor]], Optional[Tensor]]:
    """``m`` backward passes, one row each; the graph is freed by the last one unless ``retain``. Pass
    ``i`` starts from ``items[i]`` when the scalar losses are known, so that it runs through loss ``i``'s
    graph only (from ``L[i]`` it would also run zeros through the other losses' heads).

    When the parameters share a dtype and a device (and no graph of the Jacobian is built, and every
    gradient is dense), each row is written into one ``(m, n)`` tensor as soon as its pass returns, and
    the blocks are views of it: one copy of ``J`` plus one row in memory at any time, and :func:`jacobian`
    returns it as it is. Otherwise the blocks are stacked per parameter (a sparse gradient, e.g. of
    ``nn.Embedding(sparse=True)``, gives a sparse block)."""
    m = L.shape[0]
    one_tensor = not create_graph and len({(p.dtype, p.device) for p in plist}) == 1
    flat: Optional[Tensor] = None
    rows: List[Sequence[Optional[Tensor]]] = []  # rows kept as they are (stacked at the end)
    reached = [False] * len(plist)
    for i in range(m):
        out = L[i] if items is None else items[i]
        if out.requires_grad:
            row = torch.autograd.grad(
                out, plist, retain_graph=retain or i < m - 1, create_graph=create_graph, allow_unused=True
            )
        else:
            row = (None,) * len(plist)
        reached = [r or g is not None for r, g in zip(reached, row)]
        if one_tensor and any(g is not None and g.layout != torch.strided for g in row):
            # a sparse gradient: stack per parameter, the rows written so far included
            one_tensor = False
            if flat is not None:
                rows = [tuple(g if d else None for g, d in zip(unflatten(flat[j], plist), done))
                        for j, done in enumerate(rows)]
                flat = None
        if one_tensor:
            if flat is None:
                ref = plist[0]
                flat = torch.empty(m, sum(p.numel() for p in plist), dtype=ref.dtype, device=ref.device)
            # one concatenation per row, in flatten's order (a channels_last gradient is read logically)
            torch.cat([g.reshape(-1) if g is not None else p.new_zeros(p.numel()) for g, p in zip(row, plist)],
                      out=flat[i])
            rows.append(tuple(g is not None for g in row))  # which entries of the row were reached
        else:
            rows.append(row)
        del row
    if one_tensor and flat is not None:  # the blocks are views of flat
        return [b if r else None for b, r in zip(unflatten(flat, plist), reached)], flat
    blocks: List[Optional[Tensor]] = []
    for k, p in enumerate(plist):
        if not reached[k]:
            blocks.append(None)
            continue
        column = [row[k] for row in rows]
        sparse = next((g for g in column if g is not None and g.layout != torch.strided), None)
        if sparse is None:
            blocks.append(torch.stack([g if g is not None else torch.zeros_like(p) for g in column]))
        else:
            # torch.stack does not mix layouts: in a sparse column, a row no loss reaches is an empty sparse
            # tensor (and a dense row is made sparse) with the sparse gradients' sparse/dense dimensions
            blocks.append(torch.stack([torch.zeros_like(sparse) if g is None else g if g.layout != torch.strided
                                       else g.to_sparse(sparse.sparse_dim()) for g in column]))
    return blocks, None



def _accumulate(params: List[Tensor], grads: Sequence[Optional[Tensor]]) -> None:
    """``p.grad += g`` (created when ``None``, in the parameter's layout), like the autograd engine. The
    dense copies and additions run as one multi-tensor (``_foreach``) call each, as torch's optimizers do:
    on a GPU a few kernel launches for all the parameters instead of one per parameter."""
    new_params, new_grads, new_values, old_grads, old_values = [], [], [], [], []
    for p, g in zip(params, grads):
        if g is None:
            continue
        if g.layout != torch.strided:  # a sparse gradient (nn.Embedding(sparse=True)) stays sparse
            g = g.detach().to(p.dtype)
            if p.grad is None:
                p.grad = g
            elif p.grad.layout == torch.strided:
                p.grad.add_(g)
            else:
                p.grad = p.grad + g
            continue
        g = g.detach().reshape(p.shape).to(p.dtype)
        if p.grad is None:
            new_params.append(p)
            new_grads.append(torch.empty_like(p, memory_format=torch.preserve_format))
            new_values.append(g)
        elif p.grad.layout != torch.strided:  # sparse + dense is dense, as in the autograd engine
            p.grad = g + p.grad
        else:
            old_grads.append(p.grad)
            old_values.append(g)
    if new_grads:
        torch._foreach_copy_(new_grads, new_values)
        for p, g in zip(new_params, new_grads):  # set once written
            p.grad = g
    if old_grads:
        torch._foreach_add_(old_grads, old_values)


def _check_vectors(v: Tensor, n: int, ref: Tensor) -> Tensor:
    """``v`` checked against ``n`` and ``ref``'s device; its dtype is kept (each piece is cast to its own
    parameter's dtype: one cast of the whole ``v`` to the first parameter's dtype would round the pieces of
    the float64 parameters of a mixed list to float32)."""
    if not isinstance(v, Tensor):
        raise TypeError(f"v must be a torch.Tensor, got {type(v).__name__}.")
    if v.dim() not in (1, 2) or v.shape[-1] != n:
        raise ValueError(f"v must have shape ({n},) or (k, {n}) to match the parameters, got {tuple(v.shape)}.")
    if v.device != ref.device:
        raise ValueError(f"v is on {v.device} but the parameters are on {ref.device}.")
    return v


def _promoted_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    """The dtype ``torch.cat`` gives the tensors (that of a flat vector over parameters of several dtypes)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


class _GradientGraph:
    """The gradient of ``loss`` with its graph (``create_graph=True``), ready for double backward."""

    def __init__(self, loss: Tensor, params: Params) -> None:
        if not isinstance(loss, Tensor):
            raise TypeError(f"loss must be a torch.Tensor, got {type(loss).__name__}.")
        if loss.numel() != 1:
            raise ValueError(f"loss must be a scalar, got shape {tuple(loss.shape)}.")
        self.plist = as_param_list(params)
        if not self.plist:
            raise ValueError("params is empty.")
        self.n = sum(p.numel() for p in self.plist)
        self.dtype = _promoted_dtype(self.plist)  # that of the flat H v
        if loss.requires_grad:
            grads = torch.autograd.grad(loss.reshape(()), self.plist, create_graph=True, allow_unused=True)
        else:
            grads = (None,) * len(self.plist)
        # Only gradient pieces that still depend on the parameters have a second derivative: a loss that
        # is linear in a parameter gives a constant piece (Hessian block zero), an unreached one None.
        self.active = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self.outputs = [grads[i] for i in self.active]

    def apply(self, v: Tensor, *, create_graph: bool, batched: Optional[bool]) -> Tensor:
        """``H v`` for ``v`` of shape ``(n,)`` or ``(k, n)`` (the same shape is returned)."""
        v = _check_vectors(v, self.n, self.plist[0])
        if not self.outputs:
            return torch.zeros(v.shape, dtype=self.dtype, device=v.device)
        single = v.dim() == 1
        V = v.unsqueeze(0) if single else v
        k = V.shape[0]
        pieces = unflatten(V, self.plist)
        # (k, *shape) pieces paired with self.outputs, each in its parameter's dtype
        vs = [pieces[i].to(self.plist[i].dtype) for i in self.active]
        # The graph is always retained: hvp's first gradient keeps the forward graph alive anyway, and
        # hvp_operator calls apply repeatedly.
        if k > 1 and batched is not False:
            try:
                out = torch.autograd.grad(
                    self.outputs, self.plist, grad_outputs=vs, retain_graph=True,
                    create_graph=create_graph, allow_unused=True, is_grads_batched=True,
                )
                return _rows(out, self.plist, (k,))
            except _BATCHING_ERRORS:
                if batched:
                    raise
        rows = []
        for j in range(k):
            out = torch.autograd.grad(
                self.outputs, self.plist, grad_outputs=[p[j] for p in vs],
                retain_graph=True, create_graph=create_graph, allow_unused=True,
            )
            rows.append(_rows(out, self.plist, ()))
        return rows[0] if single else torch.stack(rows)


@torch.enable_grad()
def hvp(
    loss: Tensor,
    params: Params,
    v: Tensor,
    *,
    create_graph: bool = False,
    batched: Optional[bool] = None,
) -> Tensor:
    r"""Hessian-vector products :math:`\nabla^2_\theta \ell \, v` by double backward (Pearlmutter).

    Computes the gradient of ``loss`` with its graph, then one more backward pass with ``v`` as the
    incoming gradient. ``k`` vectors (``v`` of shape ``(k, n)``) share the first gradient and run as
    one batched pass (``is_grads_batched``), falling back to ``k`` passes when batching fails.
    For many products at the same point (Krylov solvers) use :func:`hvp_operator`, which computes
    the gradient once.

    Args:
        loss: a scalar tensor.
        params: the parameters (``n`` entries in total).
        v: ``(n,)`` or ``(k, n)``, same device as the parameters (each piece cast to its parameter's dtype).
        create_graph: build the graph of the result (third-order derivatives).
        batched: as in :func:`jacobian`, for ``k > 1``.

    Returns:
        ``H v`` with the shape of ``v``, in the parameters' (promoted) dtype and device. Parameters the loss does
        not reach, or reaches linearly, give zero blocks. The graph of ``loss`` is retained (the first
        gradient needs ``create_graph=True``), so ``loss.backward()`` still works afterwards.

    Raises:
        TypeError: ``loss`` or ``v`` is not a tensor, or ``params`` holds a non-tensor.
        ValueError: ``loss`` is not a scalar; ``params`` is empty, holds a tensor that does not require
            grad or holds one twice; ``v`` is not ``(n,)`` or ``(k, n)`` or lies on another device.

    Example:
        >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> hvp((x ** 3).sum(), x, torch.tensor([1.0, 0.0]))    # H = diag(6 x)
        tensor([6., 0.])
    """
    return _GradientGraph(loss, params).apply(v, create_graph=create_graph, batched=batched)


@torch.enable_grad()
def hvp_operator(loss: Tensor, params: Params, *, batched: Optional[bool] = None) -> Callable[[Tensor], Tensor]:
    r"""A function ``v -> H v`` at the current point that computes the gradient of ``loss`` only once.

    Each call costs one backward pass through the gradient's graph (about twice a plain backward),
    instead of the first-gradient pass plus that one for :func:`hvp`. ``v`` is ``(n,)`` or ``(k, n)``.
    The graphs stay alive as long as the returned function does.

    Args:
        loss: a scalar tensor.
        params: the parameters (``n`` entries in total).
        batched: as in :func:`hvp`.

    Returns:
        ``matvec(v) -> H v``, with ``H v`` of the shape of ``v`` in the parameters' (promoted) dtype (the results do
        not require grad). ``matvec`` raises as :func:`hvp` does for a bad ``v``.

    Raises:
        TypeError / ValueError: a bad ``loss`` or ``params``, as for :func:`hvp` (checked at once).

    Example:
        >>> matvec = hvp_operator(loss, model.parameters())   # e.g. the operator of a Krylov solve
        >>> Hv = matvec(v)                                    # (n,) -> (n,); (k, n) -> (k, n)
    """
    gg = _GradientGraph(loss, params)

    def matvec(v: Tensor) -> Tensor:
        return gg.apply(v, create_graph=False, batched=batched)

    return matvec
