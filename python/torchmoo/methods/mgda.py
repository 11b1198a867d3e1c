r"""MGDA: the minimum-norm element of the convex hull of the gradients (Désidéri 2012; Sener & Koltun 2018).

For a Jacobian ``J`` (rows :math:`g_i = \nabla \ell_i`), the weights

.. math:: w^* = \arg\min_{w \in \Delta_m} \| J^\top w \|^2 \qquad (\Delta_m:\ w \ge 0,\ \textstyle\sum_i w_i = 1)

are the solution of the QP of SIMOL Eq. 3 / Ma et al. Problem 3 / PNG Eq. 3, solved exactly by
:func:`torchmoo.ops.min_norm_simplex` on the Gram matrix ``J J^T``. The direction
:math:`d = J^\top w^*` is a common descent direction: :math:`\langle g_i, d\rangle \ge \|d\|^2` for
every ``i`` (the optimality condition of the QP), and ``d = 0`` exactly when the point is
Pareto-stationary. :math:`\|d\|^2` is PNG's :math:`g(\theta)` (Eq. 1), see :func:`pareto_stationarity`,
and ``d`` is Ma et al.'s correction vector (Proposition 4.1), see :func:`min_norm_correction`.

MGDA-UB (Sener & Koltun, Sec. 3.3) computes the weights from the gradients with respect to a shared
representation ``z`` instead of the shared parameters: pass ``representation=z`` to
:func:`torchmoo.backward`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from torchmoo import ops
from torchmoo.methods.aggregator import Aggregator, check_gram, check_jacobian, gram_matrix

__all__ = [
    "MGDA",
    "NORMALIZATIONS",
    "min_norm_weights",
    "pareto_stationarity",
    "MinNormCorrection",
    "min_norm_correction",
]

#: Gradient normalizations of Sener & Koltun (``gradient_normalizers`` of their code).
NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def min_norm_weights(G: Tensor) -> Tensor:
    """MGDA weights ``w* = argmin_{w in simplex} w'Gw`` from a Gram matrix ``G`` (m, m), exactly.

    Returns ``(m,)`` weights in ``G``'s dtype and device (:func:`torchmoo.ops.min_norm_simplex`, whose
    errors it raises: e.g. ``ValueError`` for a non-symmetric, indefinite or non-finite ``G``).
    """
    return ops.min_norm_simplex(G)


class MGDA(Aggregator):
    r"""Multiple gradient descent: ``d = J^T w*`` with ``w*`` the min-norm point of the gradients' hull.

    Args:
        normalization: how the gradients are normalized before the weights are computed (Sener &
            Koltun's ``gradient_normalizers``): ``"none"`` (default), ``"l2"`` (:math:`g_i/\|g_i\|`),
            ``"loss"`` (:math:`g_i/\ell_i`, needs positive loss values) or ``"loss+"``
            (:math:`g_i/(\ell_i \|g_i\|)`). As in their implementation, the weights found for the
            normalized gradients are applied to the *original* gradients (their training loop
            back-propagates ``sum_t w_t * loss_t``): ``d = J^T w``. Only ``"none"`` guarantees
            :math:`\langle g_i, d\rangle \ge \|d\|^2`; with a normalization that property holds for
            the normalized gradients and their combination, not necessarily for ``d``.

    Shapes: ``J`` (m, n) -> ``d`` (n,), :attr:`weights` (m,), on the simplex. The weights are exact
    (active-set QP, KKT residual about 1e-15); a zero gradient among the rows gives ``d = 0``.

    Raises:
        ValueError: an unknown ``normalization``; at a call, ``"loss"`` / ``"loss+"`` without the loss
            values or with a loss that is not positive and finite.

    Example:
        >>> agg = MGDA()
        >>> d = agg(J)                      # (n,)
        >>> agg.weights                     # (m,)
    """

    def __init__(self, normalization: str = "none") -> None:
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
        self.normalization = normalization
        self.needs_losses = normalization in ("loss", "loss+")

    def gram_weights(self, G: Tensor, losses: Optional[Tensor] = None) -> Tensor:
        """The ``(m,)`` min-norm weights of the (normalized) Gram matrix ``G`` (m, m), in ``G``'s dtype.

        Raises:
            ValueError: ``losses`` is ``None`` or not positive and finite with a loss normalization.
        """
        G = check_gram(G)
        if self.normalization != "none":
            s = self._normalizers(G, losses)
            G = G / (s[:, None] * s[None, :])
        return min_norm_weights(G)

    def check_inputs(self, m: int, losses: Optional[Tensor]) -> None:
        """The loss normalizations divide by the losses: they must be given, positive and finite."""
        if self.normalization not in ("loss", "loss+"):
            return
        if losses is None:
            raise ValueError(f"MGDA(normalization={self.normalization!r}) needs the loss values: call agg(J, losses).")
        if not bool((torch.isfinite(losses) & (losses > 0)).all()):
            raise ValueError(
                f"MGDA(normalization={self.normalization!r}) divides by the losses, which must be positive and "
                f"finite; got {losses.tolist()}."
            )

    def _normalizers(self, G: Tensor, losses: Optional[Tensor]) -> Tensor:
        norms = G.diagonal().clamp_min(0).sqrt()
        if self.normalization == "l2":
            # a zero gradient stays zero (and makes d = 0, correctly: that objective is stationary)
            return torch.where(norms > 0, norms, torch.ones_like(norms))
        self.check_inputs(G.shape[0], losses)
        s = losses.to(dtype=G.dtype, device=G.device)
        if self.normalization == "loss+":
            s = s * torch.where(norms > 0, norms, torch.ones_like(norms))
        return s

    def __repr__(self) -> str:
        return f"MGDA(normalization={self.normalization!r})"


def pareto_stationarity(J: Tensor) -> float:
    r"""PNG's :math:`g(\theta) = \min_{w \in \Delta_m} \|J^\top w\|^2` (Ye & Liu, Eq. 1).

    Zero exactly at Pareto-stationary points; log it during training to see how far the iterate
    is from the Pareto set. Computed as the squared norm of the min-norm vector :math:`J^\top w^*`
    itself (not as ``w'Gw``, which loses the small values to cancellation).

    Args:
        J: ``(m, n)`` Jacobian.

    Returns:
        A Python float, ``>= 0``.

    Raises:
        TypeError: ``J`` is not a floating-point tensor.
        ValueError: ``J`` is not ``(m, n)`` with ``m >= 1``, or is not finite.
    """
    J = check_jacobian(J).detach()
    w = min_norm_weights(gram_matrix(J))
    d = ops.combine(J, w)
    return float(d.double().pow(2).sum())


class MinNormCorrection(NamedTuple):
    """Solution ``(alpha, c)`` of Ma et al.'s Problem 5: weights ``(m,)`` and correction vector ``(n,)``."""

    weights: Tensor
    correction: Tensor


def min_norm_correction(J: Tensor) -> MinNormCorrection:
    r"""The smallest correction ``c`` that makes the point Pareto-stationary (Ma et al., Problem 5).

    Problem 5 of Ma, Du & Matusik (ICML 2020): :math:`\min_{\alpha, c} \|c\|^2` subject to
    :math:`\alpha \in \Delta_m` and :math:`\sum_i \alpha_i (g_i - c) = 0`. By their Proposition 4.1
    the solution is :math:`\alpha = \alpha^*` (the MGDA weights, Problem 3) and
    :math:`c = J^\top \alpha^*`. With the corrected gradients :math:`g_i - c` the point is
    Pareto-stationary (weights :math:`\alpha^*`); they are the right-hand sides of the
    exploration system (their Eq. 6).

    Args:
        J: ``(m, n)`` Jacobian at (approximately) Pareto-stationary parameters.

    Returns:
        :class:`MinNormCorrection` ``(weights (m,), correction (n,))``, both in ``J``'s dtype and device,
        detached.

    Raises:
        TypeError: ``J`` is not a floating-point tensor.
        ValueError: ``J`` is not ``(m, n)`` with ``m >= 1``, or is not finite.
    """
    J = check_jacobian(J).detach()
    alpha = min_norm_weights(gram_matrix(J)).to(J.dtype)
    return MinNormCorrection(alpha, ops.combine(J, alpha))
