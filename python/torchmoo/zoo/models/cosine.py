"""Cosine-similarity classifier (Gidaris & Komodakis 2018; the object classifier of PSST)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchmoo.zoo.models.base import _check_positive

__all__ = ["CosineClassifier"]


class CosineClassifier(nn.Module):
    r"""Logits ``scale * cos(x, w_j)`` for each class weight ``w_j`` (PSST supplement, Eq. 5).

    Softmax of these logits is :math:`C_j(x) = \mathrm{softmax}_j[\gamma \cos(x, w_j)]`; the
    inverse temperature ``gamma = scale`` is learned when ``learn_scale`` is True (then the module
    has ``num_classes * in_features + 1`` parameters).

    Args:
        in_features: feature size ``d``.
        num_classes: number of class weight vectors.
        scale: initial inverse temperature.
        learn_scale: whether ``scale`` is a parameter.

    Input ``(B, d)``; output ``(B, num_classes)``.

    Raises:
        TypeError: ``in_features`` or ``num_classes`` is not an int.
        ValueError: ``in_features`` or ``num_classes`` below 1; ``scale`` not positive and finite.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 10.0, learn_scale: bool = True) -> None:
        super().__init__()
        _check_positive(in_features=in_features, num_classes=num_classes)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale}.")
        self.weight = nn.Parameter(torch.randn(num_classes, in_features) * math.sqrt(2.0 / in_features))
        s = torch.tensor(float(scale))
        if learn_scale:
            self.scale = nn.Parameter(s)
        else:
            self.register_buffer("scale", s)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of features ``(B, d)``; ``ValueError`` for another shape."""
        if x.dim() != 2 or x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"CosineClassifier expects (B, {self.weight.shape[1]}) features, got {tuple(x.shape)}.")
        return self.scale * F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).T

    @torch.no_grad()
    def set_prototypes(self, prototypes: Tensor) -> None:
        """Replace the class weights by ``prototypes`` ``(num_classes', d)``, e.g. novel-class feature means.

        The new weight is a new parameter (an optimizer built before does not update it), in the old
        weight's dtype and device.

        Raises:
            ValueError: ``prototypes`` is not ``(num_classes', d)``.
        """
        if prototypes.dim() != 2 or prototypes.shape[1] != self.weight.shape[1]:
            raise ValueError(
                f"prototypes must be (num_classes, {self.weight.shape[1]}), got {tuple(prototypes.shape)}."
            )
        self.weight = nn.Parameter(prototypes.detach().to(self.weight).clone())

    def extra_repr(self) -> str:
        """``in_features`` and ``num_classes``, for ``repr``."""
        return f"in_features={self.weight.shape[1]}, num_classes={self.weight.shape[0]}"
