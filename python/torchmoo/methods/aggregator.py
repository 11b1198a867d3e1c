"""The aggregator interface: a Jacobian ``J`` (m, n) in, one update direction (n,) out.

Every gradient-combination method of torchmoo is an :class:`Aggregator`. It turns the Jacobian of
``m`` objectives (rows = per-objective gradients, see :func:`torchmoo.autograd.jacobian`) into the
direction that goes into ``.grad`` (the optimizer *subtracts* it, like a gradient). All aggregators
here return a non-negative or signed combination of the rows, ``d = w @ J``; the weights ``w`` of
the last call are kept in :attr:`Aggregator.weights`, so ``d`` costs one pass over ``J`` and the
weights can be logged or reused (MGDA-UB applies weights found on one Jacobian to other
parameters, see :func:`torchmoo.backward`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch
from torch import Tensor

from torchmoo import ops

__all__ = ["Aggregator", "gram_matrix", "blocks_gram", "check_jacobian", "check_gram", "check_losses"]


def check_jacobian(J: Tensor) -> Tensor:
    """Validate a Jacobian: a floating-point tensor of shape ``(m, n)`` with ``m >= 1``; returns ``J``.

    Raises:
        TypeError: ``J`` is not a tensor or not floating-point.
        ValueError: ``J`` is not 2-D or has no row.
    """
    if not isinstance(J, Tensor):
        raise TypeError(f"J must be a torch.Tensor, got {type(J).__name__}.")
    if not J.is_floating_point():
        raise TypeError(f"J must have a floating-point dtype, got {J.dtype}.")
    if J.dim() != 2 or J.shape[0] == 0:
        raise ValueError(f"J must have shape (m, n) with m >= 1 (one row per objective), got {tuple(J.shape)}.")
    return J


def check_gram(G: Tensor) -> Tensor:
    """Validate a Gram matrix: a floating-point tensor of shape ``(m, m)`` with ``m >= 1``; returns ``G``.

    Raises:
        TypeError: ``G`` is not a tensor or not floating-point.
        ValueError: ``G`` is not square 2-D or is empty.
    """
    if not isinstance(G, Tensor):
        raise TypeError(f"G must be a torch.Tensor, got {type(G).__name__}.")
    if not G.is_floating_point():
        raise TypeError(f"G must have a floating-point dtype, got {G.dtype}.")
    if G.dim() != 2 or G.shape[0] != G.shape[1] or G.shape[0] == 0:
        raise ValueError(f"G must have shape (m, m) with m >= 1, got {tuple(G.shape)}.")
    return G


def check_losses(losses: Optional[Tensor], m: int, ref: Tensor) -> Optional[Tensor]:
    """Validate optional loss values: ``(m,)``, detached, on ``ref``'s device, in ``ref``'s dtype, or in
    float32 for a float16 / bfloat16 ``ref`` (the dtype of its Gram matrix: a loss above 65504 or below
    6e-8 has no float16 value, and the loss-normalized MGDA and EPO would reject it as not positive
    and finite).

    ``losses`` may be any tensor or sequence (of numbers or of tensors, e.g. the losses of a forward
    pass) with ``m`` entries in all (it is flattened); ``None`` passes through.

    Raises:
        ValueError: ``losses`` does not have ``m`` entries.
    """
    if losses is None:
        return None
    dtype = ops.combine_weight_dtype(ref.dtype)  # the weights' dtype: float32 for a half J
    if not isinstance(losses, Tensor):
        try:
            items = list(losses)
        except TypeError:  # a single number
            items = [losses]
        # entry by entry: torch.as_tensor on a list of tensors reads each one as a Python number (a
        # warning for a loss that requires grad), and on Python floats it rounds them to float32 first
        losses = torch.cat([v.detach().reshape(-1).to(dtype=dtype, device=ref.device) if isinstance(v, Tensor)
                            else torch.as_tensor(v, dtype=dtype, device=ref.device).reshape(-1) for v in items]
                           ) if items else torch.zeros(0, dtype=dtype, device=ref.device)
    losses = losses.detach().reshape(-1)
    if losses.shape[0] != m:
        raise ValueError(f"losses must have one value per row of J ({m}), got {losses.shape[0]}.")
    return losses.to(dtype=dtype, device=ref.device)


def gram_matrix(J: Tensor, *, check_finite: bool = True) -> Tensor:
    """``G = J J^T`` (m, m) of a Jacobian by :func:`torchmoo.ops.gram` (one pass over ``J``, exactly
    symmetric), from a detached ``J``: the weights are not differentiated. Float32 for a float16 /
    bfloat16 ``J`` (a float16 Gram overflows as soon as ``||g_i||^2 > 65504``), else ``J``'s dtype.
    ``check_finite``: as in :func:`torchmoo.ops.gram`."""
    J = J.detach()
    return ops.gram(J.float() if J.dtype in (torch.float16, torch.bfloat16) else J, check_finite=check_finite)


def blocks_gram(
    blocks: Sequence[Optional[Tensor]], m: int, device: torch.device, *, check_finite: bool = True
) -> Tensor:
    """``G = sum_k B_k B_k^T`` (m, m), float64 on ``device``, over Jacobian blocks ``B_k`` of shape
    ``(m, n_k)`` (``None``: a parameter no objective reaches), each by :func:`gram_matrix`. The
    Jacobian of a model split per parameter needs no concatenation for its Gram matrix.

    With ``check_finite`` the sum is checked once for NaN / infinity (one stream synchronization on
    CUDA, not one per block); if it has any, the block at fault raises the ``ValueError`` of
    :func:`torchmoo.ops.gram`. A caller that reads ``G`` on the host anyway checks it there and calls
    this again with the check to raise that error."""
    G = torch.zeros(m, m, dtype=torch.float64, device=device)
    for b in blocks:
        if b is not None:
            G += gram_matrix(b, check_finite=False).to(device=device, dtype=torch.float64)
    if check_finite and not bool(torch.isfinite(G).all()):
        for b in blocks:  # the error path: find the block and say what is wrong with it
            if b is not None:
                gram_matrix(b)
        raise ValueError("the sum of the Gram matrices of the Jacobian blocks overflows float64.")
    return G


def _grams_to_host(grams: Sequence[Tensor], losses: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    """``N`` Gram matrices ``(k, k)`` and loss rows ``(m,)`` (any devices) as float64 CPU tensors ``(N, k, k)``
    and ``(N, m)``, read in one copy: where the small weight problems run (on a GPU one synchronization
    instead of one per check, and no tiny kernels)."""
    first = grams[0].device
    host = torch.stack([torch.cat([G.reshape(-1).to(torch.float64), r.reshape(-1).to(torch.float64)]).to(first)
                        for G, r in zip(grams, losses)]).cpu()
    k = grams[0].shape[-1]
    return host[:, : k * k].reshape(-1, k, k), host[:, k * k:]


def _combination_bounded(G: Tensor, w: Tensor, dtypes: Sequence[torch.dtype]) -> bool:
    r"""Whether ``w @ J`` is certainly finite in every dtype of ``dtypes``, from the host tensors
    ``G = J J^T`` (m, m) and ``w`` (m,) alone: :math:`|(w^\top J)_j| \le \sum_i |w_i| \|J_i\| =
    \sum_i |w_i| \sqrt{G_{ii}}`, against half the dtype's largest value (room for the rounding of the
    sums). When it holds, the combinations need no finiteness check (on CUDA a synchronization); float32
    and float64 directions practically always pass, float16 ones often not (65504). The weights are cast
    to :func:`torchmoo.ops.combine_weight_dtype` of each dtype (float32 for half blocks) before the
    combination, so they must fit there too: a weight beyond that range is inf, and inf times a zero (or
    tiny) entry of ``J`` is NaN (or inf) whatever the bound. Without any dtype (no block: nothing is
    combined) it holds."""
    if not dtypes:
        return True
    limit = 0.5 * min(torch.finfo(d).max for d in dtypes)
    w_limit = 0.5 * min(torch.finfo(ops.combine_weight_dtype(d)).max for d in dtypes)
    w_abs = w.detach().double().abs()
    bound = float((w_abs * G.detach().double().diagonal().clamp_min(0).sqrt()).sum())
    return bound < limit and float(w_abs.max()) < w_limit  # False for a NaN bound or weight


def _all_finite(pieces: Sequence[Optional[Tensor]]) -> bool:
    """Whether every tensor of ``pieces`` (``None`` skipped) is finite: the check of
    :func:`torchmoo.ops.combine` for combinations made with ``check_finite=False``, with one host read
    (on CUDA one stream synchronization) per device instead of one per tensor."""
    flags = {}
    for t in pieces:
        if t is not None:
            flags.setdefault(t.device, []).append(torch.isfinite(t).all())
    return all(bool(torch.stack(f).all()) for f in flags.values())


class Aggregator:
    """Base class: ``aggregator(J, losses=None) -> d`` with ``d = weights @ J``.

    A subclass implements either :meth:`gram_weights` (weights from the Gram matrix ``J J^T`` alone,
    like every aggregator of torchmoo) or :meth:`compute_weights` (weights from ``J`` itself).
    Gram-based aggregators let :func:`torchmoo.backward` skip assembling ``J``: it sums the Gram
    matrices of the per-parameter Jacobian blocks and combines each block in place.

    ``losses`` (the ``m`` loss values) is needed only by aggregators that use them
    (``needs_losses = True``, e.g. MGDA with loss normalization); :func:`torchmoo.backward` always
    passes them.

    Attributes:
        weights: the ``(m,)`` weights of the last call (detached), ``None`` before the first call.
        needs_losses: whether the weights depend on the loss values.
    """

    needs_losses: bool = False

    def __init__(self) -> None:
        self.weights: Optional[Tensor] = None

    @property
    def gram_based(self) -> bool:
        """True when the weights depend on ``J`` only through ``J J^T`` (:meth:`gram_weights` is defined)."""
        return type(self).gram_weights is not Aggregator.gram_weights

    def gram_weights(self, G: Tensor, losses: Optional[Tensor] = None) -> Tensor:
        """The ``(m,)`` weights from the Gram matrix ``G = J J^T`` (m, m), in ``G``'s dtype and device.

        ``losses``: the ``(m,)`` loss values in ``G``'s dtype and device, or ``None``.

        Raises:
            NotImplementedError: the aggregator computes its weights from ``J`` (:meth:`compute_weights`).
        """
        raise NotImplementedError(f"{type(self).__name__} computes its weights from J, not from J J^T.")

    def compute_weights(self, J: Tensor, losses: Optional[Tensor] = None) -> Tensor:
        """The ``(m,)`` weights for Jacobian ``J`` (m, n), on ``J``'s device, in ``J``'s dtype (float32 for a
        float16 / bfloat16 ``J``: :func:`torchmoo.ops.combine_weight_dtype`, the dtype its combination sums in).

        ``losses``: ``(m,)`` as :func:`check_losses` gives them (in ``J``'s dtype, float32 for a
        float16 / bfloat16 ``J``), or ``None``. The default computes ``G = J J^T`` with
        :func:`torchmoo.ops.gram` and calls :meth:`gram_weights`.
        """
        J = check_jacobian(J)
        return self.gram_weights(gram_matrix(J), losses).to(dtype=ops.combine_weight_dtype(J.dtype), device=J.device)

    def _save_state(self) -> Any:
        """What one weight computation changes (``weights`` and any running state of a subclass), to be put
        back by :meth:`_restore_state` when the step it served is abandoned (an overflowing combination)."""
        return self.weights

    def _restore_state(self, state: Any) -> None:
        self.weights = state

    def check_inputs(self, m: int, losses: Optional[Tensor]) -> None:
        """Raise the aggregator's own errors about the number of objectives ``m`` and the ``(m,)`` loss
        values (detached, any device) that do not depend on ``J``. :func:`torchmoo.backward` calls it
        before any backward pass, so that such an error leaves the graph intact (the step can be retried);
        the weight computations raise the same errors when called directly. The default checks nothing.
        """

    def static_weights(self, m: int, *, dtype: torch.dtype, device: torch.device) -> Optional[Tensor]:
        """``(m,)`` weights in ``dtype`` on ``device`` that do not depend on ``J`` (``None`` when they do).

        When they do not, :func:`torchmoo.backward` skips the Jacobian and runs a single backward
        pass of ``weights @ losses``.
        """
        return None

    def __call__(self, J: Tensor, losses: Optional[Tensor] = None) -> Tensor:
        """The update direction ``d = w @ J`` (shape ``(n,)``); ``w`` is stored in :attr:`weights`.

        Args:
            J: ``(m, n)`` Jacobian, floating-point, any device (rows: per-objective gradients).
            losses: optional ``(m,)`` loss values (a tensor or a sequence); required when
                :attr:`needs_losses`.

        Returns:
            ``d`` ``(n,)`` in ``J``'s dtype and device (not differentiated through the weights).

        Raises:
            TypeError: ``J`` is not a floating-point tensor.
            ValueError: ``J`` is not ``(m, n)`` with ``m >= 1``; ``losses`` does not have ``m`` entries,
                or is missing when :attr:`needs_losses`; and the aggregator's own errors.
        """
        J = check_jacobian(J)
        losses = check_losses(losses, J.shape[0], J)
        if self.needs_losses and losses is None:
            raise ValueError(f"{self!r} needs the loss values: call it as aggregator(J, losses).")
        w = self.compute_weights(J, losses)
        self.weights = w.to(J.dtype).detach()
        # w @ J in one pass over J; a half J with float32 weights, so that a weight beyond float16's range
        # still gives a finite d when the combination fits
        return ops.combine(J, w.to(ops.combine_weight_dtype(J.dtype)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
