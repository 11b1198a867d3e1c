r"""Reference criteria ``F`` for optimization inside the Pareto set (Ye & Liu, OPT-in-Pareto).

A criterion maps the loss values of one model, ``(m,)``, or of ``N`` models, ``(N, m)``, to a scalar
``F`` that :class:`torchmoo.methods.PNG` minimizes inside the Pareto set. All the criteria of the
paper are functions of the losses, so :math:`\nabla_\theta F = J^\top \partial F/\partial \ell` and
PNG needs only the ``m`` numbers :math:`u = \partial F / \partial \ell` (computed here by autograd)
besides the Jacobian of the losses: no extra backward pass through the model.

| class | formula | paper |
|---|---|---|
| :class:`WeightedDistance` | :math:`\sum_i (\ell_i - r_i)^2 / r_i` | section 5.1, :math:`F_{wd}` |
| :class:`ComplexCosine` | :math:`-\cos(\pi(\ell_1 - r_1)/2)\,(\cos(\pi(\ell_2 - r_2)) + 1)^2` (or the printed sum) | section 5.1, :math:`F_{cs}` |
| :class:`NonUniformity` | :math:`\sum_t \hat\ell_t \log(m \hat\ell_t)`, :math:`\hat\ell_t = r_t\ell_t / \sum_s r_s \ell_s` | Eq. 16 (EPO's score) |
| :class:`EnergyDistance` | :math:`\sum_{i \ne j} \|\ell(\theta_i) - \ell(\theta_j)\|^{-2}` over ``N`` models | Eq. 6 |
| :class:`LossCriterion` | any differentiable callable of the losses | |

The single-model criteria take a reference ``r`` of shape ``(m,)`` or ``(N, m)`` (one per model) and,
given ``(N, m)`` losses, return the sum of the ``N`` per-model values: ``N`` independent OPT-in-Pareto
problems solved together (each model's update depends only on its own term).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "Criterion",
    "WeightedDistance",
    "ComplexCosine",
    "NonUniformity",
    "EnergyDistance",
    "LossCriterion",
    "as_criterion",
]

ArrayLike = Union[Tensor, Sequence[float], Sequence[Sequence[float]]]


def _check_losses(losses: object) -> Tensor:
    if not isinstance(losses, Tensor):
        raise TypeError(f"losses must be a torch.Tensor of shape (m,) or (N, m), got {type(losses).__name__}.")
    if not losses.is_floating_point():
        raise TypeError(f"losses must have a floating-point dtype, got {losses.dtype}.")
    if losses.dim() not in (1, 2) or losses.shape[-1] == 0 or losses.numel() == 0:
        raise ValueError(f"losses must have shape (m,) or (N, m) with m >= 1, got {tuple(losses.shape)}.")
    return losses


class Criterion:
    """Base class: ``F = criterion(losses)`` for losses ``(m,)`` (one model) or ``(N, m)`` (``N`` models).

    Subclasses implement :meth:`evaluate`. :meth:`value_and_grad` gives ``F`` and
    :math:`\\partial F / \\partial \\ell` (same shape as the losses), which is all PNG needs.

    Attributes:
        multi_point: True when ``F`` couples the models (it needs ``(N, m)`` losses with ``N >= 2``).
    """

    multi_point: bool = False

    def evaluate(self, losses: Tensor) -> Tensor:
        """``F`` (a 0-dim tensor) from validated losses ``(m,)`` or ``(N, m)``, differentiably."""
        raise NotImplementedError

    def __call__(self, losses: Tensor) -> Tensor:
        """``F`` (0-dim, in ``losses``' dtype and device, differentiable) at ``losses`` ``(m,)`` or ``(N, m)``.

        Raises:
            TypeError: ``losses`` is not a floating-point tensor.
            ValueError: ``losses`` is not ``(m,)`` or ``(N, m)`` with ``m >= 1``; a multi-point criterion
                got fewer than 2 models; the criterion does not return a scalar; its own domain errors.
        """
        losses = _check_losses(losses)
        if self.multi_point and (losses.dim() != 2 or losses.shape[0] < 2):
            raise ValueError(
                f"{type(self).__name__} compares several models: losses must have shape (N, m) with N >= 2, "
                f"got {tuple(losses.shape)}."
            )
        value = self.evaluate(losses)
        if value.dim() != 0:
            raise ValueError(f"{type(self).__name__} must return a scalar, got shape {tuple(value.shape)}.")
        return value

    def value_and_grad(self, losses: Tensor) -> Tuple[Tensor, Tensor]:
        """``(F, dF/dlosses)`` at the (detached) loss values; the gradient has the shape of ``losses``.

        Both are detached, in ``losses``' dtype and device (``F`` 0-dim).

        Raises:
            ValueError: ``F`` or its gradient is not finite (outside the criterion's domain), and the
                errors of :meth:`__call__`.
        """
        losses = _check_losses(losses)
        with torch.enable_grad():
            x = losses.detach().clone().requires_grad_(True)
            value = self(x)
            if not value.requires_grad:  # a constant criterion
                return value.detach(), torch.zeros_like(x)
            (grad,) = torch.autograd.grad(value, x)
        if not bool(torch.isfinite(value)) or not bool(torch.isfinite(grad).all()):
            raise ValueError(
                f"{type(self).__name__} is not finite at losses {losses.detach().tolist()} "
                f"(F = {float(value.detach())}); see its documentation for its domain."
            )
        return value.detach(), grad

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _ReferenceCriterion(Criterion):
    """A per-model criterion with a reference vector ``r`` of shape ``(m,)`` or ``(N, m)``."""

    positive_reference = True

    def __init__(self, reference: ArrayLike) -> None:
        r = torch.as_tensor(reference, dtype=torch.float64)
        if r.dim() not in (1, 2) or r.shape[-1] == 0:
            raise ValueError(f"reference must have shape (m,) or (N, m), got {tuple(r.shape)}.")
        if not bool(torch.isfinite(r).all()):
            raise ValueError(f"reference must be finite, got {r.tolist()}.")
        if self.positive_reference and not bool((r > 0).all()):
            raise ValueError(f"{type(self).__name__} divides by the reference: its entries must be > 0, got {r.tolist()}.")
        self.reference = r

    def _r(self, losses: Tensor) -> Tensor:
        r = self.reference.to(dtype=losses.dtype, device=losses.device)
        if r.shape[-1] != losses.shape[-1]:
            raise ValueError(f"reference has {r.shape[-1]} entries per model but there are {losses.shape[-1]} losses.")
        if r.dim() == 2 and r.shape[0] == 1 and losses.dim() == 1:  # one row for one model's (m,) losses
            return r[0]
        if r.dim() == 2 and (losses.dim() != 2 or r.shape[0] != losses.shape[0]):
            raise ValueError(
                f"reference has shape {tuple(r.shape)} (one row per model): losses must have shape "
                f"({r.shape[0]}, {r.shape[1]}), got {tuple(losses.shape)}."
            )
        return r

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reference.tolist()})"


class WeightedDistance(_ReferenceCriterion):
    r"""Weighted squared distance to a reference point: :math:`F_{wd} = \sum_i (\ell_i - r_i)^2 / r_i`.

    Args:
        reference: ``r`` with positive entries, ``(m,)`` or ``(N, m)`` (one row per model).

    Raises:
        ValueError: ``reference`` not ``(m,)`` / ``(N, m)``, not finite or not positive; at a call,
            losses whose shape does not match it.
    """

    def evaluate(self, losses: Tensor) -> Tensor:
        """:math:`F_{wd}` summed over the models (0-dim)."""
        r = self._r(losses)
        return ((losses - r) ** 2 / r).sum()


class ComplexCosine(_ReferenceCriterion):
    r"""The "complex cosine" criterion of the paper (section 5.1), two objectives.

    ``form="product"`` (default):

    .. math:: F_{cs} = -\cos\big(\pi(\ell_1 - r_1)/2\big)\,\big(\cos(\pi(\ell_2 - r_2)) + 1\big)^2,

    whose minimum over :math:`[0, 1]^2` is :math:`-4` at :math:`\ell = r` (so that, with ``r`` below the
    front, the optimum in the Pareto set is a front point near ``r``, as the paper's Figure 1(d) shows).
    ``form="sum"`` is the formula as printed in the paper's text,
    :math:`-\cos(\pi(\ell_1 - r_1)/2) + (\cos(\pi(\ell_2 - r_2)) + 1)^2`, whose second term is
    *maximal* at :math:`\ell_2 = r_2` and pushes :math:`\ell_2` away from it (to 0 or to 1); the
    experiment ``png-synthetic`` runs both and shows the difference.

    Args:
        reference: ``r``, ``(2,)`` or ``(N, 2)`` (the paper takes ``r_2 = 1 - r_1``).
        form: ``"product"`` or ``"sum"``.

    Raises:
        ValueError: ``reference`` without 2 entries per model or not finite; an unknown ``form``.
    """

    positive_reference = False
    FORMS = ("product", "sum")

    def __init__(self, reference: ArrayLike, form: str = "product") -> None:
        super().__init__(reference)
        if self.reference.shape[-1] != 2:
            raise ValueError(f"ComplexCosine is defined for two objectives, got a reference with "
                             f"{self.reference.shape[-1]} entries.")
        if form not in self.FORMS:
            raise ValueError(f"form must be one of {self.FORMS}, got {form!r}.")
        self.form = form

    def evaluate(self, losses: Tensor) -> Tensor:
        """:math:`F_{cs}` summed over the models (0-dim)."""
        r = self._r(losses)
        first = torch.cos(math.pi * (losses[..., 0] - r[..., 0]) / 2)
        second = (torch.cos(math.pi * (losses[..., 1] - r[..., 1])) + 1) ** 2
        return (-first * second).sum() if self.form == "product" else (-first + second).sum()

    def __repr__(self) -> str:
        return f"ComplexCosine({self.reference.tolist()}, form={self.form!r})"


class NonUniformity(_ReferenceCriterion):
    r"""EPO's non-uniformity score (Mahapatra & Rajan 2020; PNG Eq. 16) for a ratio preference ``r``:

    .. math:: F_{NU} = \sum_{t=1}^m \hat\ell_t \log\frac{\hat\ell_t}{1/m},\qquad
              \hat\ell_t = \frac{r_t \ell_t}{\sum_s r_s \ell_s},

    the Kullback-Leibler divergence of :math:`\hat\ell` from uniform: zero exactly when
    :math:`r_1 \ell_1 = \dots = r_m \ell_m`. The losses must be positive.

    Args:
        reference: the preference ``r`` (positive), ``(m,)`` or ``(N, m)``.

    Raises:
        ValueError: as :class:`WeightedDistance`; at a call, a loss ``<= 0``.
    """

    def evaluate(self, losses: Tensor) -> Tensor:
        """:math:`F_{NU}` summed over the models (0-dim); raises ``ValueError`` for a loss ``<= 0``."""
        r = self._r(losses)
        if not bool((losses > 0).all()):
            raise ValueError(f"NonUniformity takes logarithms of the losses, which must be > 0; got "
                             f"{losses.detach().tolist()}.")
        rl = r * losses
        lhat = rl / rl.sum(dim=-1, keepdim=True)
        return (lhat * torch.log(lhat * losses.shape[-1])).sum()


class EnergyDistance(Criterion):
    r"""Energy of ``N`` models in loss space (Eq. 6): :math:`E = \sum_{i \ne j} \|\ell_i - \ell_j\|^{-2}`.

    The sum runs over ordered pairs (each pair counted twice, as in the paper). Its minimizers spread
    the models evenly over the Pareto front (Hardin & Saff 2004).

    Args:
        eps: added to every squared distance, :math:`(\|\ell_i - \ell_j\|^2 + \epsilon)^{-1}`; with the
            default ``0`` two models with equal losses make ``F`` infinite (an error).

    Raises:
        ValueError: ``eps`` is not a finite number ``>= 0``; at a call, two models with identical losses
            (with ``eps = 0``) or fewer than 2 models.
    """

    multi_point = True

    def __init__(self, eps: float = 0.0) -> None:
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0 or not math.isfinite(eps):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}.")
        self.eps = float(eps)

    def evaluate(self, losses: Tensor) -> Tensor:
        """The energy of the ``(N, m)`` losses (0-dim)."""
        N = losses.shape[0]
        diff = losses[:, None, :] - losses[None, :, :]
        sq = (diff**2).sum(-1) + self.eps
        off = ~torch.eye(N, dtype=torch.bool, device=losses.device)
        sq = sq[off]
        if not bool((sq > 0).all()):
            raise ValueError("EnergyDistance: two models have identical losses (infinite energy); start the models "
                             "from different initializations or pass eps > 0.")
        return (1.0 / sq).sum()

    def __repr__(self) -> str:
        return f"EnergyDistance(eps={self.eps})"


class LossCriterion(Criterion):
    """A user-supplied criterion: ``fn(losses) -> scalar tensor``, differentiable by autograd.

    Args:
        fn: called with the losses ``(m,)`` (or ``(N, m)``); must return a one-element tensor.
        multi_point: set when ``fn`` couples several models.

    Raises:
        TypeError: ``fn`` is not callable; at a call, ``fn`` does not return a tensor.

    Example:
        >>> F = LossCriterion(lambda l: (l - 0.5).pow(2).sum())
        >>> png = PNG(F)
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], multi_point: bool = False) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}.")
        self.fn = fn
        self.multi_point = bool(multi_point)

    def evaluate(self, losses: Tensor) -> Tensor:
        """``fn(losses)`` as a 0-dim tensor."""
        value = self.fn(losses)
        if not isinstance(value, Tensor):
            raise TypeError(f"the criterion callable must return a tensor, got {type(value).__name__}.")
        return value.reshape(()) if value.numel() == 1 else value

    def __repr__(self) -> str:
        return f"LossCriterion({getattr(self.fn, '__name__', self.fn)!r}, multi_point={self.multi_point})"


def as_criterion(criterion: Union[Criterion, Callable[[Tensor], Tensor]]) -> Criterion:
    """A :class:`Criterion` as is; a plain callable of the losses wrapped in :class:`LossCriterion`."""
    if isinstance(criterion, Criterion):
        return criterion
    if callable(criterion):
        return LossCriterion(criterion)
    raise TypeError(f"criterion must be a torchmoo.methods.Criterion or a callable of the losses, "
                    f"got {type(criterion).__name__}.")
