"""``torchmoo.backward``: multi-objective backward pass that writes ``.grad`` for any torch optimizer.

::

    losses = [loss_a, loss_b, loss_c]                       # scalars from one forward pass
    tm.backward(losses, model.shared_parameters(), tm.methods.MGDA(),
                task_params=[model.head_a, model.head_b, model.head_c])
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # optional, after backward
    optimizer.step()

Semantics (documented in the README):

* Shared parameters receive the aggregated direction ``d = w @ J`` of the Jacobian of the losses with
  respect to them; task-specific parameters ``task_params[i]`` receive the plain gradient of
  ``losses[i]`` (unweighted, as a single-task model would).
* ``.grad`` is *accumulated* into, exactly like ``Tensor.backward``: call ``optimizer.zero_grad()``
  between steps. (Accumulating over micro-batches sums their aggregated directions; MGDA of the summed
  Jacobian is a different thing.)
* Mixed precision: pass ``grad_scaler=`` a ``torch.amp.GradScaler`` and the *unscaled* losses; see
  :func:`backward`.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from torchmoo import ops
from torchmoo.autograd import (
    Losses, Params, _accumulate, _jacobian, _losses_and_items, _promoted_dtype, as_param_list, jacobian, unflatten,
)
from torchmoo.methods.aggregator import (
    Aggregator, _all_finite, _combination_bounded, _grams_to_host, blocks_gram, check_losses,
)

__all__ = ["backward"]


_HALF = (torch.float16, torch.bfloat16)


@torch.enable_grad()  # like loss.backward(), it works under torch.no_grad()
def backward(
    losses: Losses,
    params: Params,
    aggregator: Aggregator,
    *,
    task_params: Optional[Sequence[Optional[Params]]] = None,
    representation: Optional[Tensor] = None,
    grad_scaler: Optional["torch.amp.GradScaler"] = None,
    retain_graph: bool = False,
    batched: Optional[bool] = None,
) -> Tensor:
    r"""Backward pass of ``m`` objectives through an aggregator: writes (accumulates) ``.grad``.

    Args:
        losses: ``m`` scalar losses (a sequence, or an ``(m,)`` tensor) from one forward pass.
        params: the shared parameters (tensor, iterable of tensors or module; of a module, the
            parameters that require grad: frozen ones are left alone). They receive
            ``d = aggregator(J, losses)`` where ``J`` (m, n) is the Jacobian of the losses with respect
            to them (computed as by :func:`torchmoo.autograd.jacobian_blocks`, with its ``batched``
            rule). For the aggregators that need only ``J J^T`` (all of torchmoo's) no copy of ``J`` is
            made: the Gram matrices of the per-parameter blocks (float32 for float16 / bfloat16 blocks)
            are summed in float64 and handed to the aggregator's ``gram_weights`` on the CPU (whatever the
            parameters' device: one copy of ``G`` and the losses to the host) in the precision they were formed in
            (float64 when every block is float64, else float32, like ``aggregator(J)``); each block is
            combined in place; when the ``m`` backward passes wrote one ``(m, n)`` tensor (the blocks
            are views of it), that tensor is one block. A sparse block (``nn.Embedding(sparse=True)``,
            with ``batched=False``) enters through the rows that some loss reaches, and its parameter
            gets a sparse ``.grad``. They must lie on one device. A parameter that no loss reaches
            keeps ``.grad`` as it was (``None`` stays ``None``).
        aggregator: a :class:`torchmoo.methods.Aggregator` (MGDA, PCGrad, CAGrad, ...). Aggregators
            with fixed weights (``LinearScalarization``) skip the Jacobian: one backward pass of
            ``weights @ losses``.
        task_params: optional, ``m`` entries (parameters or ``None``; a sequence, ``nn.ModuleList`` or
            ``nn.ParameterList``): ``task_params[i]`` receives the gradient of ``losses[i]`` alone.
            Must not overlap ``params`` or each other.
        representation: MGDA-UB (Sener & Koltun, Sec. 3.3). A tensor ``z`` computed from the shared
            parameters that all the task heads read (e.g. the encoder output). The weights are
            computed from the Jacobian with respect to ``z`` (cheap: only the heads are
            back-propagated ``m`` times), then the shared parameters receive the gradient of
            ``weights @ losses`` in a single backward pass.
        grad_scaler: a ``torch.amp.GradScaler`` (AMP). Pass the *unscaled* losses; they are scaled by
            the scaler before the backward pass (so float16 gradients do not underflow), the
            aggregator sees the unscaled Jacobian ``J / scale`` (normalizations and CAGrad's radius
            are not scale-invariant), and ``.grad`` receives ``scale * d``, which
            ``grad_scaler.step(optimizer)`` unscales as usual. If the scaled Jacobian has an inf or
            NaN (a loss that overflowed included, also for an aggregator whose ``check_inputs`` rejects
            it), or its Gram matrix overflows, the aggregator is skipped and NaN is written into the
            shared ``.grad``, so that ``grad_scaler.step`` skips the step and ``grad_scaler.update``
            lowers the scale; the returned weights are then NaN.
        retain_graph: keep the graph for another backward pass afterwards.
        batched: passed to :func:`torchmoo.autograd.jacobian`.

    Returns:
        The ``(m,)`` weights of the combination (detached), also in ``aggregator.weights``, in the dtype
        of ``J`` (for float16 parameters a weight beyond 65504 reads ``inf`` there; the combination takes
        the weights in float32, the dtype of its sums, so such a weight still gives a finite ``.grad``
        when ``w @ J`` fits float16).

    Raises:
        ValueError: no loss requires grad; ``losses`` is empty or a loss is not a scalar; a parameter
            does not require grad; groups of parameters overlap; ``task_params`` does not have ``m``
            entries; ``representation`` is not a tensor that requires grad; the shared parameters lie
            on several devices (Jacobian aggregators); the Jacobian, or the direction ``d = w @ J`` in
            the parameters' dtype, is not finite without a ``grad_scaler`` (with one, an overflowing
            ``d`` reaches ``.grad`` as ``inf`` and the scaler skips the step); and whatever the
            aggregator raises (e.g. a missing or non-positive loss for a loss-normalized MGDA, a
            ``LinearScalarization`` with another number of weights).
        TypeError: ``aggregator`` is not an :class:`~torchmoo.methods.Aggregator`; ``task_params`` is a
            single tensor or module instead of a sequence; a loss or parameter is not a tensor.

    Example:
        >>> losses = [criterion(head(z), y) for head, y in zip(model.heads, targets)]
        >>> w = tm.backward(losses, model.encoder, tm.methods.MGDA(), task_params=model.heads)
        >>> optimizer.step()
    """
    if not isinstance(aggregator, Aggregator):
        if isinstance(aggregator, type) and issubclass(aggregator, Aggregator):
            raise TypeError(f"aggregator must be an instance: pass {aggregator.__name__}(...), not the class.")
        raise TypeError(f"aggregator must be a torchmoo.methods.Aggregator, got {type(aggregator).__name__}.")
    L, items = _losses_and_items(losses)
    m = L.shape[0]
    shared = as_param_list(params)
    heads = _task_param_lists(task_params, m, shared)
    if not L.requires_grad:
        raise ValueError("None of the losses requires grad: there is nothing to back-propagate.")
    loss_values = L.detach()
    amp = grad_scaler is not None and grad_scaler.is_enabled()
    try:
        aggregator.check_inputs(m, loss_values)  # before any backward pass: an error leaves the graph intact
    except ValueError:
        # under a GradScaler a loss that overflowed is an overflow like any other (NaN .grad below, so that the
        # scaler skips the step and lowers the scale), not an error (checked only on this error path: on CUDA
        # a synchronization)
        if not amp or bool(torch.isfinite(loss_values).all()):
            raise
    scale = 1.0
    if amp:
        L = grad_scaler.scale(L)
        items = None if items is None else [grad_scaler.scale(loss) for loss in items]
        scale = float(grad_scaler.get_scale())

    # backward passes in order; all but the last keep the graph
    n_passes = 1 + sum(1 for h in heads if h)
    passes_done = 0

    def keep() -> bool:
        return retain_graph or passes_done < n_passes - 1

    static = aggregator.static_weights(m, dtype=L.dtype, device=L.device)
    if static is not None or representation is not None:
        # the weights come first (fixed, or from the Jacobian w.r.t. z); then one backward of w @ losses
        if static is not None:
            w = static
            aggregator.weights = w.detach()
        else:
            if not isinstance(representation, Tensor) or not representation.requires_grad:
                raise ValueError("representation must be a tensor that requires grad (the shared features z).")
            # from the scalar losses when given: pass i runs through head i only, not all m heads
            Jz = jacobian(L if items is None else items, [representation], retain_graph=True, batched=batched)
            w = _aggregate_weights(aggregator, Jz, loss_values, scale, amp=amp)
        if shared:
            # AMP overflow of the Jacobian w.r.t. z: poison the step so that the scaler skips it (fixed
            # weights are finite: no check, which on CUDA would synchronize the stream every step)
            if static is None and bool(torch.isnan(w).any()):
                _accumulate(shared, [torch.full_like(p, float("nan")) for p in shared])
            else:
                total = (L * w.to(dtype=L.dtype, device=L.device)).sum()
                _accumulate(shared, torch.autograd.grad(total, shared, retain_graph=keep(), allow_unused=True))
        passes_done += 1
    else:
        devices = sorted({str(p.device) for p in shared})
        if len(devices) > 1:
            raise ValueError(
                f"The shared parameters are on several devices ({', '.join(devices)}); the Jacobian blocks are "
                "combined on one device: move them to one device (task_params may lie anywhere)."
            )
        blocks, J_flat = _jacobian(L, shared, create_graph=False, retain_graph=keep(), batched=batched, items=items)
        passes_done += 1
        if shared:
            w = _aggregate_blocks(aggregator, blocks, shared, loss_values, scale, amp=amp, J_flat=J_flat)
        else:
            aggregator(L.new_zeros(m, 0).detach(), loss_values)  # no shared parameter: only the weights
            w = aggregator.weights

    for i, head in enumerate(heads):
        if not head:
            continue
        out = L[i] if items is None else items[i]  # loss i's own graph only
        if out.requires_grad:
            grads = torch.autograd.grad(out, head, retain_graph=keep(), allow_unused=True)
            _accumulate(head, grads)
        passes_done += 1
    return w.detach()


def _aggregate_blocks(
    aggregator: Aggregator, blocks: List[Optional[Tensor]], shared: List[Tensor], loss_values: Tensor,
    scale: float, *, amp: bool, J_flat: Optional[Tensor] = None,
) -> Tensor:
    """Weights from the Jacobian blocks (which hold ``scale * J``), then ``.grad += w @ block`` per parameter.

    For a Gram-based aggregator ``J`` is never assembled: ``G = sum_k J_k J_k^T`` (float64) and each
    block is combined where it lies. Otherwise the blocks are concatenated into ``J`` first. When the
    blocks are views of one ``(m, n)`` tensor ``J_flat`` (the backward passes wrote it), it is used as
    one block: one Gram matrix and one combination.
    """
    m = loss_values.shape[0]
    # the returned weights: in the dtype J would have (the promotion of the parameters' dtypes); the
    # blocks are combined with the aggregator's weights cast to each block's own dtype, so that a
    # float32 block is not combined with weights rounded to a bfloat16 parameter's precision
    dtype, device = _promoted_dtype(shared), shared[0].device
    # a sparse block (m, rows, *cols) enters as the dense sub-block of the rows some loss reaches: the
    # other rows add nothing to G, and the combination becomes a sparse gradient on those rows
    reached_rows = {}
    if J_flat is not None:
        flat = [J_flat]
    else:
        flat = []
        for k, b in enumerate(blocks):
            if b is not None and b.layout != torch.strided:
                b = b.coalesce()
                reached_rows[k] = b.indices()[1].unique()
                b = b.index_select(1, reached_rows[k]).to_dense()
            flat.append(None if b is None else b.reshape(m, -1))
    if aggregator.gram_based:
        # Float32 Grams for half blocks (a float16 Gram overflows at ||g||^2 > 65504), summed in float64 on the
        # blocks' device, then read on the host once with the loss values: the checks and the aggregator's
        # m x m problem run on the CPU (on a GPU one synchronization, not one per check plus tiny kernels)
        Gs, host_losses = _grams_to_host([blocks_gram(flat, m, device, check_finite=False)], [loss_values])
        G, host_losses = Gs[0], host_losses[0]
        finite = bool(torch.isfinite(G).all())
        if not finite and not amp and all(b is None or bool(torch.isfinite(b).all()) for b in flat):
            blocks_gram(flat, m, device)  # finite blocks whose Gram overflows: raises ops.gram's message
        if finite:
            # G carries the rounding of the dtype its blocks' Grams were formed in (float32 unless every
            # block is float64): it goes to the aggregator in that dtype, as from Aggregator.compute_weights,
            # since the QP kernels and CAGrad size their tolerances by G's dtype (a float32-rounded Gram of
            # a rank-deficient J is indefinite beyond float64 tolerances)
            exact = all(b is None or b.dtype == torch.float64 for b in flat)
            G = (G / (scale * scale)).to(torch.float64 if exact else torch.float32)
            finite = bool(torch.isfinite(G).all())  # the unscaled float32 G can overflow
    else:
        J = J_flat if J_flat is not None else torch.cat(
            [p.new_zeros(m, p.numel()) if b is None else blocks[k].to_dense().reshape(m, -1) if k in reached_rows
             else b for k, (b, p) in enumerate(zip(flat, shared))], dim=1)
        finite = bool(torch.isfinite(J).all())
    if not finite:
        if not amp:
            raise ValueError("The Jacobian has inf or NaN entries: a loss or a gradient overflowed.")
        # AMP overflow: write NaN, so that GradScaler.step skips the step (the sum of the rows is finite
        # when only the Gram matrix overflowed)
        _accumulate(shared, [None if b is None else torch.full_like(p, float("nan")) for b, p in zip(blocks, shared)])
        aggregator.weights = torch.full((m,), float("nan"), dtype=dtype, device=device)  # not the last step's
        return aggregator.weights
    if aggregator.gram_based:
        # the losses in G's dtype and device (the CPU), as Aggregator.__call__ passes them to compute_weights
        state = aggregator._save_state()  # put back if the combination overflows (no step is taken)
        w_host = aggregator.gram_weights(G, check_losses(host_losses, m, G))
        w_G = w_host.to(device)  # one copy to the blocks' device
        w = w_G.to(dtype)
        aggregator.weights = w.detach()
        # the blocks hold scale * J: their combination is scale * d, which GradScaler.step unscales. G and
        # w are finite, so the blocks are combined without ops.combine's check (on CUDA each check would
        # synchronize the stream). Under AMP an overflow of the combination reaches .grad as inf, where
        # GradScaler sees it; without a scaler it raises, as aggregator(J) does, before any .grad is
        # written: checked once for all the blocks, and only when the bound from G and w does not exclude it
        combined = [None if b is None else ops.combine(b, w_G.to(ops.combine_weight_dtype(b.dtype)), check_finite=False)
                    for b in flat]
        if not amp and not _combination_bounded(G, w_host, [b.dtype for b in flat if b is not None]) \
                and not _all_finite(combined):
            aggregator._restore_state(state)
            raise _overflow_error(next(d.dtype for d in combined
                                       if d is not None and not bool(torch.isfinite(d).all())), w)
        if J_flat is not None:
            pieces = unflatten(combined[0], shared)
            _accumulate(shared, [None if b is None else g for b, g in zip(blocks, pieces)])
        else:
            _accumulate(shared, [None if d is None else _sparse_rows(d, reached_rows[k], p) if k in reached_rows else d
                                 for k, (d, p) in enumerate(zip(combined, shared))])
    else:
        if J.dtype in _HALF:  # unscaling in half precision would flush small entries to zero
            J = J.float()
        d = aggregator(J / scale if scale != 1.0 else J, loss_values)
        w = aggregator.weights
        pieces = [g.to(p.dtype) for g, p in zip(unflatten(d * scale if scale != 1.0 else d, shared), shared)]
        # d was checked in J's dtype (float32 for half parameters): in a narrower parameter dtype it can
        # still overflow, which without a scaler is an error, as on the Gram path (before any .grad is written)
        if not amp and any(p.dtype != d.dtype for p in shared) and not _all_finite(
                [g for b, g in zip(blocks, pieces) if b is not None]):
            raise _overflow_error(next(p.dtype for b, g, p in zip(blocks, pieces, shared)
                                       if b is not None and not bool(torch.isfinite(g).all())), w)
        # a parameter no loss reaches keeps .grad None, as with Tensor.backward (and the Gram path)
        _accumulate(shared, [None if b is None else _sparse_rows(g[reached_rows[k]], reached_rows[k], g)
                             if k in reached_rows else g for k, (b, g) in enumerate(zip(blocks, pieces))])
    return w


def _overflow_error(dtype: torch.dtype, w: Tensor) -> ValueError:
    return ValueError(f"The combination w @ J of the Jacobian overflows {dtype} (weights {w.tolist()}): "
                      "an entry exceeds the largest finite value of the dtype.")


def _sparse_rows(values: Tensor, rows: Tensor, like: Tensor) -> Tensor:
    """The sparse tensor shaped like ``like`` with the (flattened) ``values`` in rows ``rows``."""
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values.reshape(rows.numel(), *like.shape[1:]), like.shape,
                                   dtype=values.dtype, device=values.device, check_invariants=False).coalesce()


def _aggregate_weights(aggregator: Aggregator, J: Tensor, loss_values: Tensor, scale: float, *, amp: bool) -> Tensor:
    """The aggregator's weights for the scaled Jacobian ``J`` (NaN weights if it overflowed under AMP)."""
    if not bool(torch.isfinite(J).all()):
        if not amp:
            raise ValueError("The Jacobian with respect to the representation has inf or NaN entries.")
        aggregator.weights = torch.full((J.shape[0],), float("nan"), dtype=J.dtype, device=J.device)
        return aggregator.weights
    if J.dtype in _HALF:  # e.g. z under float16 autocast: J / scale would flush small entries to zero
        J = J.float()
    aggregator(J / scale if scale != 1.0 else J, loss_values)
    return aggregator.weights


def _task_param_lists(
    task_params: Optional[Sequence[Optional[Params]]], m: int, shared: List[Tensor]
) -> List[List[Tensor]]:
    """One list of tensors per objective, checked to be disjoint from ``shared`` and from each other."""
    if task_params is None:
        return [[] for _ in range(m)]
    if isinstance(task_params, (Tensor, torch.nn.Module)) and not isinstance(
        task_params, (torch.nn.ModuleList, torch.nn.ParameterList)
    ):
        raise TypeError("task_params must be a sequence with one entry (parameters or None) per objective.")
    entries = list(task_params)
    if len(entries) != m:
        raise ValueError(f"task_params has {len(entries)} entries but there are {m} objectives.")
    seen = {id(p) for p in shared}
    out = []
    for i, entry in enumerate(entries):
        plist = [] if entry is None else as_param_list(entry, name=f"task_params[{i}]")
        for p in plist:
            if id(p) in seen:
                raise ValueError(
                    f"task_params[{i}] contains a tensor (shape {tuple(p.shape)}) that is also in params or in "
                    "another task's parameters; each parameter must belong to one group."
                )
            seen.add(id(p))
        out.append(plist)
    return out
