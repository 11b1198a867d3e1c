"""Analytic test problems with known Pareto sets and fronts, as differentiable torch functions.

Every problem maps decision vectors ``x`` of shape ``(..., n_var)`` to objective values of shape
``(..., n_obj)`` (all objectives are minimized), batched over any leading dims, in the dtype and on
the device of ``x``, and differentiable by autograd. The two-objective problems also give their
analytic Pareto set and front:

- ``pareto_set(n_points)``: ``(n_points, n_var)`` Pareto-optimal decision vectors;
- ``pareto_front(n_points)``: ``(n_points, n_obj)``, the image of ``pareto_set(n_points)`` row by row,
  ordered by increasing ``f1``;
- ``is_pareto_optimal(x, atol=...)``: ``(...)`` bool, membership of the analytic Pareto set.

| class | source | ``n_var`` | Pareto set |
|---|---|---|---|
| :class:`ZDT2Variant` | Ma et al. (2020), supplement Eq. 15-17 | 3 | cylinders ``x2^2 + x3^2 = (2k+1) pi`` |
| :class:`ZDT3` | Zitzler et al. (2000); MT-SGD supplement 2.1.2 | 30 | five pieces of ``x1``, ``x2.. = 0`` |
| :class:`LinConcave` | Lin et al. (2019); PNG section 5.1 | 10 | segment from ``-eta`` to ``eta`` |
| :class:`SIMOLToy` | SIMOL appendix A (from Liu et al. 2021) | 2 | a curve over ``x1 in [-7, 7]`` |
| :class:`ThreeTargetToy` | MT-SGD supplement 2.1.1 (three target densities) | 2 | (sampling problem) |
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "Problem",
    "ZDT2Variant",
    "ZDT3",
    "LinConcave",
    "SIMOLToy",
    "ThreeTargetToy",
    "PROBLEMS",
]

_GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


def _check_x(x: object, n_var: int, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}.")
    if x.dim() < 1 or x.shape[-1] != n_var:
        raise ValueError(f"{name} must have shape (..., {n_var}), got {tuple(x.shape)}.")


def _check_n_points(n_points: int, name: str = "n_points") -> int:
    """``n_points`` checked to be an int ``>= 1``; the errors call it ``name`` (the caller's argument)."""
    if isinstance(n_points, bool) or not isinstance(n_points, int):
        raise TypeError(f"{name} must be an int, got {type(n_points).__name__}.")
    if n_points < 1:
        raise ValueError(f"{name} must be at least 1, got {n_points}.")
    return n_points


def _unit_grid(n_points: int, dtype: torch.dtype, device: Optional[torch.device]) -> Tensor:
    """``n_points`` equally spaced values in [0, 1] (0.5 when ``n_points == 1``)."""
    if n_points == 1:
        return torch.full((1,), 0.5, dtype=dtype, device=device)
    return torch.linspace(0.0, 1.0, n_points, dtype=dtype, device=device)


class _SqrtAtZero(torch.autograd.Function):
    """``sqrt(x)`` for ``x >= 0`` whose backward sends a zero incoming gradient to zero, also at
    ``x = 0``: plain ``sqrt`` gives ``0 * inf = NaN`` there, so the gradient of any other output of the
    same graph (ZDT3's ``f1``) would be NaN. A non-zero incoming gradient gives ``+-inf`` at 0, the
    true derivative. Twice differentiable; batched under ``vmap``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.sqrt(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (root,) = ctx.saved_tensors
        return torch.where(grad == 0, torch.zeros_like(grad), grad / (2.0 * root))


class Problem:
    """Base class: an analytic multi-objective problem ``x (..., n_var) -> f (..., n_obj)``.

    Attributes:
        n_var: number of decision variables.
        n_obj: number of objectives (all minimized).
        bounds: ``(lower, upper)`` float64 tensors of shape ``(n_var,)``, or None when the domain is
            all of ``R^n_var``.

    Every method that takes ``x`` raises ``TypeError`` for a non-tensor or non-floating ``x`` and
    ``ValueError`` for one whose last dim is not ``n_var``; those that take ``n_points`` raise
    ``TypeError`` for a non-int and ``ValueError`` for ``n_points < 1``.

    Example:
        >>> zdt = ZDT2Variant()
        >>> x = torch.randn(8, 3, requires_grad=True)
        >>> f = zdt(x)                              # (8, 2), differentiable
        >>> front = zdt.pareto_front(100)           # (100, 2) float64
    """

    n_var: int
    n_obj: int
    bounds: Optional[Tuple[Tensor, Tensor]] = None

    def __call__(self, x: Tensor) -> Tensor:
        """The objectives ``(..., n_obj)`` of ``x`` ``(..., n_var)``, in ``x``'s dtype and device,
        differentiable.

        Raises:
            TypeError: ``x`` is not a floating-point tensor.
            ValueError: ``x`` is not ``(..., n_var)`` (and, for :class:`ZDT3`, outside its box).
        """
        _check_x(x, self.n_var)
        return self._evaluate(x)

    def _evaluate(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def project(self, x: Tensor) -> Tensor:
        """Clamp ``x`` (..., n_var) into the box ``bounds`` (the identity on an unbounded domain)."""
        _check_x(x, self.n_var)
        if self.bounds is None:
            return x
        lower, upper = (b.to(dtype=x.dtype, device=x.device) for b in self.bounds)
        return torch.maximum(torch.minimum(x, upper), lower)

    def pareto_set(self, n_points: int, *, dtype: torch.dtype = torch.float64,
                   device: Optional[torch.device] = None) -> Tensor:
        """``(n_points, n_var)`` points of the analytic Pareto set (see the subclass)."""
        raise NotImplementedError(f"{type(self).__name__} has no analytic Pareto set.")

    def pareto_front(self, n_points: int, *, dtype: torch.dtype = torch.float64,
                     device: Optional[torch.device] = None) -> Tensor:
        """``(n_points, n_obj)``: the objective values of ``pareto_set(n_points)``, row by row."""
        return self(self.pareto_set(n_points, dtype=dtype, device=device))

    def is_pareto_optimal(self, x: Tensor, *, atol: float = 1e-6) -> Tensor:
        """``(...)`` bool: whether each row of ``x (..., n_var)`` lies within ``atol`` of the Pareto set."""
        raise NotImplementedError(f"{type(self).__name__} has no analytic Pareto set.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_var={self.n_var}, n_obj={self.n_obj})"


class ZDT2Variant(Problem):
    r"""ZDT2-variant of Ma, Du & Matusik (ICML 2020), supplement Eq. 15-17: ``R^3 -> R^2``.

    .. math::
        y_1 = \tfrac12(\sin(x_1 + x_2^2 + x_3^2) + 1),\quad
        y_2 = y_3 = \tfrac12(\cos(x_2^2 + x_3^2) + 1),\quad
        g = 1 + \tfrac92 (y_2 + y_3),\quad
        f_1 = y_1,\quad f_2 = g - y_1^2 / g.

    Pareto front (Eq. 16): ``f2 = 1 - f1^2``, ``f1 in [0, 1]``. Pareto set (Eq. 17): the concentric
    cylinders ``x2^2 + x3^2 = (2k + 1) pi``, ``k = 0, 1, 2, ...`` (every ``x1``); the paper works on the
    innermost one (``k = 0``). The domain is all of ``R^3`` (``bounds`` is None). Points with
    ``f1 = 0`` (``sin = -1``) are Pareto-stationary for any ``g`` without being Pareto optimal (the
    segment ``f1 = 0, f2 >= 1`` where MGDA stalls, supplement 3.1).
    """

    n_var = 3
    n_obj = 2

    def _evaluate(self, x: Tensor) -> Tensor:
        r2 = x[..., 1] ** 2 + x[..., 2] ** 2
        y1 = 0.5 * (torch.sin(x[..., 0] + r2) + 1.0)
        y2 = 0.5 * (torch.cos(r2) + 1.0)
        g = 1.0 + 4.5 * (y2 + y2)  # y3 = y2
        return torch.stack((y1, g - y1 * y1 / g), dim=-1)

    def pareto_set(self, n_points: int, *, k: int = 0, dtype: torch.dtype = torch.float64,
                   device: Optional[torch.device] = None) -> Tensor:
        """``(n_points, 3)`` points on the cylinder ``x2^2 + x3^2 = (2k+1) pi`` with ``f1`` equally spaced
        in [0, 1] (``x1 = arcsin(2 f1 - 1) - (2k+1) pi``) and angles around the axis spread by the golden
        angle."""
        _check_n_points(n_points)
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative int (the cylinder index), got {k!r}.")
        f1 = _unit_grid(n_points, dtype, device)
        r2 = (2 * k + 1) * math.pi
        x1 = torch.asin(2.0 * f1 - 1.0) - r2
        phi = torch.arange(n_points, dtype=dtype, device=device) * _GOLDEN_ANGLE
        rho = math.sqrt(r2)
        return torch.stack((x1, rho * torch.cos(phi), rho * torch.sin(phi)), dim=-1)

    def pareto_front(self, n_points: int, *, dtype: torch.dtype = torch.float64,
                     device: Optional[torch.device] = None) -> Tensor:
        """``(n_points, 2)``: ``f1`` equally spaced in [0, 1], ``f2 = 1 - f1^2`` (Eq. 16)."""
        f1 = _unit_grid(_check_n_points(n_points), dtype, device)
        return torch.stack((f1, 1.0 - f1 * f1), dim=-1)

    def is_pareto_optimal(self, x: Tensor, *, atol: float = 1e-6) -> Tensor:
        """Whether ``x2^2 + x3^2`` is within ``atol`` of ``(2k+1) pi`` for some ``k >= 0``."""
        _check_x(x, self.n_var)
        r2 = x[..., 1] ** 2 + x[..., 2] ** 2
        k = torch.clamp(torch.round((r2 / math.pi - 1.0) / 2.0), min=0.0)
        return (r2 - (2.0 * k + 1.0) * math.pi).abs() <= atol


class ZDT3(Problem):
    r"""ZDT3 (Zitzler, Deb & Thiele 2000), as in the MT-SGD supplement 2.1.2: ``[0, 1]^n -> R^2``.

    .. math::
        f_1 = x_1,\quad g = 1 + \tfrac{9}{n-1}\sum_{i=2}^{n} x_i,\quad
        h = 1 - \sqrt{f_1/g} - (f_1/g)\sin(10\pi f_1),\quad f_2 = g\,h.

    ``n_var = 30`` in the paper. The Pareto set is ``x_i = 0`` (``i >= 2``) with ``x1`` in five
    disconnected pieces, :attr:`REGIONS`; the front is ``f2 = 1 - sqrt(f1) - f1 sin(10 pi f1)`` over them.
    The supplement prints the pieces to three or four digits (``0.257`` for ``0.25776...``);
    :attr:`REGIONS` holds them to double precision: each right end is a local minimum of
    ``1 - sqrt(t) - t sin(10 pi t)`` and each left end the point on the next descending branch with the
    same value (the tests check both). Outside ``[0, 1]^n`` the square root is undefined: evaluating
    there raises ``ValueError`` (use :meth:`project`). The derivative of ``f2`` in ``x1`` is infinite at
    ``x1 = 0`` (autograd gives ``-inf``); the other derivatives are finite there (``9 / (n - 1)`` for
    ``f2`` in each ``x_j``, ``j >= 2``; ``f1``'s gradient is ``e_1``).
    """

    REGIONS: Tuple[Tuple[float, float], ...] = (
        (0.0, 0.08300153492691177),
        (0.1822287280293998, 0.25776236338783026),
        (0.4093136748086569, 0.4538821040888302),
        (0.6183967944392659, 0.6525117038046625),
        (0.8233317983266327, 0.8518328654364139),
    )

    n_obj = 2

    def __init__(self, n_var: int = 30) -> None:
        if isinstance(n_var, bool) or not isinstance(n_var, int) or n_var < 2:
            raise ValueError(f"n_var must be an int >= 2, got {n_var!r}.")
        self.n_var = n_var
        self.bounds = (torch.zeros(n_var, dtype=torch.float64), torch.ones(n_var, dtype=torch.float64))

    def _evaluate(self, x: Tensor) -> Tensor:
        # one host sync: a point outside the box would silently give NaN through the square root
        if bool(((x < 0) | (x > 1)).any()):
            raise ValueError("ZDT3 is defined on [0, 1]^n_var; x has entries outside it "
                             "(clamp with ZDT3.project(x)).")
        f1 = x[..., 0]
        g = 1.0 + 9.0 / (self.n_var - 1) * x[..., 1:].sum(dim=-1)
        # g h expanded, with sqrt(f1) apart: through sqrt(f1 / g) the derivatives in x2.. would be
        # inf * 0 = NaN at x1 = 0, and through a plain sqrt(f1) so would f1's own gradient
        f2 = g - _SqrtAtZero.apply(f1) * torch.sqrt(g) - f1 * torch.sin(10.0 * math.pi * f1)
        return torch.stack((f1, f2), dim=-1)

    def _front_x1(self, n_points: int, dtype: torch.dtype, device: Optional[torch.device]) -> Tensor:
        # equally spaced along the concatenated pieces, both outer ends included
        regions = torch.tensor(self.REGIONS, dtype=torch.float64)
        lengths = regions[:, 1] - regions[:, 0]
        ends = torch.cumsum(lengths, 0)
        u = _unit_grid(n_points, torch.float64, None) * ends[-1]
        piece = torch.clamp(torch.searchsorted(ends, u), max=len(self.REGIONS) - 1)
        x1 = regions[piece, 0] + (u - (ends[piece] - lengths[piece]))
        return torch.minimum(x1, regions[piece, 1]).to(dtype=dtype, device=device)

    def pareto_set(self, n_points: int, *, dtype: torch.dtype = torch.float64,
                   device: Optional[torch.device] = None) -> Tensor:
        """``(n_points, n_var)``: ``x1`` equally spaced along the five pieces of :attr:`REGIONS`, the rest 0."""
        x1 = self._front_x1(_check_n_points(n_points), dtype, device)
        x = torch.zeros(n_points, self.n_var, dtype=dtype, device=device)
        x[:, 0] = x1
        return x

    def pareto_front(self, n_points: int, *, dtype: torch.dtype = torch.float64,
                     device: Optional[torch.device] = None) -> Tensor:
        """``(n_points, 2)``: ``f2 = 1 - sqrt(f1) - f1 sin(10 pi f1)`` over the pieces of :attr:`REGIONS`."""
        f1 = self._front_x1(_check_n_points(n_points), dtype, device)
        return torch.stack((f1, 1.0 - torch.sqrt(f1) - f1 * torch.sin(10.0 * math.pi * f1)), dim=-1)

    def is_pareto_optimal(self, x: Tensor, *, atol: float = 1e-6) -> Tensor:
        """Whether ``x1`` lies in a piece of :attr:`REGIONS` and ``x2.. = 0``, both within ``atol``."""
        _check_x(x, self.n_var)
        x1 = x[..., 0]
        in_piece = torch.zeros_like(x1, dtype=torch.bool)
        for lo, hi in self.REGIONS:
            in_piece |= (x1 >= lo - atol) & (x1 <= hi + atol)
        return in_piece & (x[..., 1:].abs().amax(dim=-1) <= atol)


class LinConcave(Problem):
    r"""The concave two-objective problem of Lin et al. (2019), PNG (Ye & Liu) section 5.1.

    .. math::
        \ell_1(\theta) = 1 - \exp(-\|\theta - \eta\|^2),\quad
        \ell_2(\theta) = 1 - \exp(-\|\theta + \eta\|^2),\quad \eta = n^{-1/2}\,\mathbf 1,

    with ``n = n_var = 10`` in the paper, so ``|eta| = 1``. The Pareto set is the segment
    ``theta = t eta``, ``t in [-1, 1]`` (where the two gradients are anti-parallel), and the front
    ``(1 - exp(-(1 - t)^2), 1 - exp(-(1 + t)^2))`` is concave. The domain is ``R^n``.
    """

    n_obj = 2

    def __init__(self, n_var: int = 10) -> None:
        if isinstance(n_var, bool) or not isinstance(n_var, int) or n_var < 1:
            raise ValueError(f"n_var must be a positive int, got {n_var!r}.")
        self.n_var = n_var

    def _evaluate(self, x: Tensor) -> Tensor:
        eta = self.n_var ** -0.5
        d1 = ((x - eta) ** 2).sum(dim=-1)
        d2 = ((x + eta) ** 2).sum(dim=-1)
        return torch.stack((-torch.expm1(-d1), -torch.expm1(-d2)), dim=-1)

    def _t(self, n_points: int, dtype: torch.dtype, device: Optional[torch.device]) -> Tensor:
        # t from 1 to -1: increasing l1
        return 1.0 - 2.0 * _unit_grid(n_points, dtype, device)

    def pareto_set(self, n_points: int, *, dtype: torch.dtype = torch.float64,
                   device: Optional[torch.device] = None) -> Tensor:
        """``(n_points, n_var)``: ``t eta`` for ``t`` from 1 to -1 (increasing ``l1``)."""
        t = self._t(_check_n_points(n_points), dtype, device)
        return t[:, None] * torch.full((self.n_var,), self.n_var ** -0.5, dtype=dtype, device=device)

    def pareto_front(self, n_points: int, *, dtype: torch.dtype = torch.float64,
                     device: Optional[torch.device] = None) -> Tensor:
        """``(n_points, 2)``: ``(1 - exp(-(1-t)^2), 1 - exp(-(1+t)^2))`` for ``t`` from 1 to -1."""
        t = self._t(_check_n_points(n_points), dtype, device)
        return torch.stack((-torch.expm1(-((1.0 - t) ** 2)), -torch.expm1(-((1.0 + t) ** 2))), dim=-1)

    def is_pareto_optimal(self, x: Tensor, *, atol: float = 1e-6) -> Tensor:
        """Whether ``x`` is within Euclidean distance ``atol`` of the segment ``[-eta, eta]``."""
        _check_x(x, self.n_var)
        u = self.n_var ** -0.5  # eta is the unit vector u * 1
        t = torch.clamp(x.sum(dim=-1) * u, -1.0, 1.0)
        return torch.linalg.vector_norm(x - t[..., None] * u, dim=-1) <= atol


class SIMOLToy(Problem):
    r"""The two-objective toy of SIMOL (Yu et al., ICLR 2023), appendix A: ``R^2 -> R^2``.

    .. math::
        f_1 = c_1 l_1 + c_2 g_1,\quad f_2 = c_1 l_2 + c_2 g_2,\\
        l_1 = \log\max(|0.5(-x_1 - 7) - \tanh(-x_2)|, 5\cdot10^{-6}) + 6,\quad
        l_2 = \log\max(|0.5(-x_1 + 3) - \tanh(-x_2) + 2|, 5\cdot10^{-6}) + 6,\\
        g_1 = ((-x_1 + 7)^2 + 0.1(-x_2 - 8)^2)/10 - 20,\quad
        g_2 = ((-x_1 - 7)^2 + 0.1(-x_2 - 8)^2)/10 - 20,\\
        c_1 = \max(\tanh(0.5 x_2), 0),\quad c_2 = \max(\tanh(-0.5 x_2), 0).

    The problem comes from CAGrad (Liu et al. 2021), whose code has ``+ tanh(-x2)`` in ``l2``; this
    class follows SIMOL's text. The sign only matters for ``x2 > 0``, away from the Pareto set.

    Pareto set (derived here): with ``s = -x2 > 0`` both objectives are ``tanh(s/2) (a_i(x1) + q(s))``.
    Pareto stationarity in ``x1`` gives ``x1 = 7 (w1 - w2)``, ``x1 in [-7, 7]``, and in ``x2`` the
    weighted sum ``tanh(s/2) (B + 0.01 (s - 8)^2)``, ``B = (w1 (x1-7)^2 + w2 (x1+7)^2)/10 - 20``, is
    minimized at the unique root ``s*(x1)`` in ``(8, 12)`` of its derivative (found by bisection to
    double precision). Each such point minimizes a weighted sum globally, hence is Pareto optimal; the
    set is the curve ``x2 = -s*(x1)`` (``x2`` from -8.4345 at ``x1 = +-7`` to -8.3551 at ``x1 = 0``;
    CAGrad draws it as the segment ``x2 = -8.3552``). SIMOL samples task 1 with probability 2/3 and task 2 with 1/3
    (:attr:`task_probabilities`).
    """

    n_var = 2
    n_obj = 2
    task_probabilities: Tuple[float, float] = (2.0 / 3.0, 1.0 / 3.0)

    def _evaluate(self, x: Tensor) -> Tensor:
        x1, x2 = x[..., 0], x[..., 1]
        t = torch.tanh(-x2)
        l1 = torch.log(torch.clamp((0.5 * (-x1 - 7.0) - t).abs(), min=5e-6)) + 6.0
        l2 = torch.log(torch.clamp((0.5 * (-x1 + 3.0) - t + 2.0).abs(), min=5e-6)) + 6.0
        q = 0.1 * (-x2 - 8.0) ** 2
        g1 = ((-x1 + 7.0) ** 2 + q) / 10.0 - 20.0
        g2 = ((-x1 - 7.0) ** 2 + q) / 10.0 - 20.0
        c1 = torch.clamp(torch.tanh(0.5 * x2), min=0.0)
        c2 = torch.clamp(torch.tanh(-0.5 * x2), min=0.0)
        return torch.stack((c1 * l1 + c2 * g1, c1 * l2 + c2 * g2), dim=-1)

    @staticmethod
    def optimal_x2(x1: Tensor) -> Tensor:
        """``x2 = -s*(x1)`` on the Pareto set for ``x1 (...)`` in [-7, 7] (float64 bisection)."""
        x1 = x1.to(torch.float64)
        w1 = (x1 + 7.0) / 14.0
        b = (w1 * (x1 - 7.0) ** 2 + (1.0 - w1) * (x1 + 7.0) ** 2) / 10.0 - 20.0

        def slope(s: Tensor) -> Tensor:  # d/ds [tanh(s/2) (b + 0.01 (s-8)^2)], increasing on (8, 12)
            return (0.5 / torch.cosh(0.5 * s) ** 2 * (b + 0.01 * (s - 8.0) ** 2)
                    + 0.02 * torch.tanh(0.5 * s) * (s - 8.0))

        lo = torch.full_like(x1, 8.0)
        hi = torch.full_like(x1, 12.0)
        for _ in range(60):  # 4 / 2^60 is below double resolution
            mid = 0.5 * (lo + hi)
            neg = slope(mid) < 0
            lo = torch.where(neg, mid, lo)
            hi = torch.where(neg, hi, mid)
        return -0.5 * (lo + hi)

    def pareto_set(self, n_points: int, *, dtype: torch.dtype = torch.float64,
                   device: Optional[torch.device] = None) -> Tensor:
        """``(n_points, 2)``: ``x1`` from 7 to -7 (increasing ``f1``), ``x2 = optimal_x2(x1)``."""
        x1 = 7.0 - 14.0 * _unit_grid(_check_n_points(n_points), torch.float64, None)
        return torch.stack((x1, self.optimal_x2(x1)), dim=-1).to(dtype=dtype, device=device)

    def pareto_front(self, n_points: int, *, dtype: torch.dtype = torch.float64,
                     device: Optional[torch.device] = None) -> Tensor:
        """``(n_points, 2)``: the objectives of :meth:`pareto_set` (evaluated in float64)."""
        return self(self.pareto_set(n_points)).to(dtype=dtype, device=device)

    def is_pareto_optimal(self, x: Tensor, *, atol: float = 1e-6) -> Tensor:
        """Whether ``|x1| <= 7`` and ``x2`` is within ``atol`` of ``optimal_x2(x1)``."""
        _check_x(x, self.n_var)
        x1 = x[..., 0].detach().to(torch.float64)
        x2 = x[..., 1].detach().to(torch.float64)
        inside = x1.abs() <= 7.0 + atol
        return inside & ((x2 - self.optimal_x2(x1.clamp(-7.0, 7.0))).abs() <= atol)


class ThreeTargetToy:
    r"""The three target densities of the MT-SGD sampling toy (Phan et al., NeurIPS 2022; supplement 2.1.1).

    Each target is a mixture of two 2-D Gaussians with weights (0.7, 0.3) and covariance ``0.5 I``
    (the parameters of the authors' public code; the supplement refers to the main paper for them):

    ================  ================  ================
    target            component 1 (0.7) component 2 (0.3)
    ================  ================  ================
    ``p1``            (4, -4)           (0, 0.5)
    ``p2``            (-4, 4)           (0.5, 0)
    ``p3``            (-3, -3)          (0, 0)
    ================  ================  ================

    The light components overlap near the origin: the joint high-density region MT-SGD should find.
    As a multi-objective problem the objectives are ``-log p_i(x)`` (:meth:`__call__`); the sampling
    problem is ``min_q (KL(q || p_1), ..., KL(q || p_K))``. Particles start from ``N(0, 5^2 I)``
    (:meth:`initial_particles`; the supplement writes ``N(0, 5)``, the code scales by 5).

    Attributes:
        n_var: 2 (dimension of a particle). n_obj: 3 (number of targets).
        weights ``(3, 2)``, means ``(3, 2, 2)`` (target, component, coordinate), variance ``0.5``.
    """

    n_var = 2
    n_obj = 3
    variance = 0.5
    weights = ((0.7, 0.3), (0.7, 0.3), (0.7, 0.3))
    means = (((4.0, -4.0), (0.0, 0.5)), ((-4.0, 4.0), (0.5, 0.0)), ((-3.0, -3.0), (0.0, 0.0)))

    def _params(self, like: Tensor) -> Tuple[Tensor, Tensor]:
        mu = torch.tensor(self.means, dtype=like.dtype, device=like.device)
        log_w = torch.tensor(self.weights, dtype=like.dtype, device=like.device).log()
        return mu, log_w

    def _component_terms(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``log w_kc + log N(x; mu_kc, v I)`` as ``(..., 3, 2)`` and ``x - mu`` as ``(..., 3, 2, 2)``."""
        mu, log_w = self._params(x)
        diff = x[..., None, None, :] - mu
        v = self.variance
        log_n = -0.5 * (diff ** 2).sum(-1) / v - math.log(2.0 * math.pi * v)
        return log_w + log_n, diff

    def log_prob(self, x: Tensor) -> Tensor:
        """``(..., 3)`` normalized log-densities ``log p_i(x)`` of ``x (..., 2)``."""
        _check_x(x, self.n_var)
        terms, _ = self._component_terms(x)
        return torch.logsumexp(terms, dim=-1)

    def __call__(self, x: Tensor) -> Tensor:
        """``(..., 3)`` objectives ``-log p_i(x)``."""
        return -self.log_prob(x)

    def score(self, x: Tensor) -> Tensor:
        """``(..., 3, 2)`` analytic scores ``grad_x log p_i(x)`` (for MT-SGD's ``(K, M, d)`` layout use
        ``score(X).movedim(-2, 0)``)."""
        _check_x(x, self.n_var)
        terms, diff = self._component_terms(x)
        resp = torch.softmax(terms, dim=-1)  # responsibilities of the two components
        return -(resp[..., None] * diff).sum(-2) / self.variance

    def mean(self, *, dtype: torch.dtype = torch.float64, device: Optional[torch.device] = None) -> Tensor:
        """``(3, 2)`` means ``sum_c w_c mu_c`` of the targets."""
        mu = torch.tensor(self.means, dtype=dtype, device=device)
        w = torch.tensor(self.weights, dtype=dtype, device=device)
        return (w[..., None] * mu).sum(-2)

    def covariance(self, *, dtype: torch.dtype = torch.float64,
                   device: Optional[torch.device] = None) -> Tensor:
        """``(3, 2, 2)`` covariances ``v I + sum_c w_c mu_c mu_c' - m m'`` of the targets."""
        mu = torch.tensor(self.means, dtype=dtype, device=device)
        w = torch.tensor(self.weights, dtype=dtype, device=device)
        m = self.mean(dtype=dtype, device=device)
        second = (w[..., None, None] * mu[..., :, None] * mu[..., None, :]).sum(-3)
        eye = torch.eye(2, dtype=dtype, device=device)
        return self.variance * eye + second - m[..., :, None] * m[..., None, :]

    def sample(self, n: int, target: int, *, generator: Optional[torch.Generator] = None,
               dtype: torch.dtype = torch.float64) -> Tensor:
        """``(n, 2)`` exact samples of target ``target`` (0, 1 or 2), on the CPU."""
        _check_n_points(n, "n")
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < self.n_obj:
            raise ValueError(f"target must be 0, 1 or 2, got {target!r}.")
        w = torch.tensor(self.weights[target], dtype=torch.float64)
        mu = torch.tensor(self.means[target], dtype=torch.float64)
        comp = torch.multinomial(w, n, replacement=True, generator=generator)
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return (mu[comp] + math.sqrt(self.variance) * noise).to(dtype)

    def initial_particles(self, n: int, *, generator: Optional[torch.Generator] = None,
                          dtype: torch.dtype = torch.float64) -> Tensor:
        """``(n, 2)`` starting particles drawn from ``N(0, 5^2 I)`` (supplement 2.1.1)."""
        _check_n_points(n, "n")
        return (5.0 * torch.randn(n, 2, generator=generator, dtype=torch.float64)).to(dtype)

    def __repr__(self) -> str:
        return "ThreeTargetToy(n_var=2, n_obj=3)"


#: Problems by name (the names used in configs and on the command line).
PROBLEMS: Dict[str, type] = {
    "zdt2-variant": ZDT2Variant,
    "zdt3": ZDT3,
    "lin-concave": LinConcave,
    "simol-toy": SIMOLToy,
    "three-target-toy": ThreeTargetToy,
}
