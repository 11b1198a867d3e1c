r"""Pareto Navigation Gradient Descent (PNG; Ye & Liu, "Optimization in the Pareto set", OPT-in-Pareto).

PNG minimizes a criterion ``F`` inside the Pareto set of losses :math:`\ell_1, \dots, \ell_m`. Each step
follows (Eq. 7)

.. math:: v_t = \arg\min_v \tfrac12 \|\nabla F(\theta_t) - v\|^2 \quad\text{s.t.}\quad
          \langle \nabla \ell_i(\theta_t), v\rangle \ge \phi_t\ \ \forall i,

(the optimizer *subtracts* ``v``, like a gradient), with the control of Eq. 8:
:math:`\phi_t = \alpha_t\, g(\theta_t)` while :math:`g(\theta_t) > e` (every loss must decrease at rate
:math:`\phi_t`, so the iterate moves toward the Pareto set), :math:`\phi_t = -\infty` once
:math:`g(\theta_t) \le e` (pure descent on ``F``). :math:`g(\theta) = \min_{w \in \Delta} \|J^\top w\|^2`
is the Pareto-stationarity measure of Eq. 1. By Theorem 1, :math:`v = \nabla F + J^\top \lambda` with
``lambda`` the solution of the dual (Eq. 10)

.. math:: \min_{\lambda \ge 0}\ \tfrac12 \lambda^\top G \lambda + (J\nabla F - \phi\,\mathbf 1)^\top \lambda,
          \qquad G = J J^\top,

an ``m``-dimensional QP solved exactly by :func:`torchmoo.ops.nonneg_qp` (the paper uses 100 steps of
projected gradient). The tolerance is ``e = gamma * e0`` with ``e0`` an exponentially discounted average
of the mean squared task-gradient norm :math:`\frac1m\sum_i\|\nabla\ell_i\|^2` (Appendix B).

Everything comes from Gram matrices: for a criterion of the losses,
:math:`\nabla F = J^\top u` with :math:`u = \partial F/\partial\ell`, so :math:`J\nabla F = G u` and
:math:`v = J^\top (u + \lambda)`. PNG is therefore a Gram-based :class:`~torchmoo.methods.Aggregator`
with weights ``u + lambda``, and :func:`torchmoo.backward` runs it without assembling ``J``. A criterion
that depends on the parameters directly (not only through the losses) enters as one more row of the
Jacobian (its gradient), with weight 1.

Multi-point OPT-in-Pareto (Eq. 5): ``N`` models, a criterion of all their losses (e.g. the energy
distance); model ``k`` gets :math:`v_k = \nabla_{\theta_k} F + J_k^\top \lambda_k` with its own dual
problem and its own control, and the ``N`` dual problems are solved in one batched call.

Entry points:

* :class:`PNG`: the stateful method (``e0``, step count, diagnostics). ``PNG.backward(losses, params)``
  writes ``.grad`` for one model or for ``N`` models; ``tm.backward(losses, params, png)`` works too
  (one model); ``png.batch_weights(G, losses)`` is the step on precomputed Gram matrices.
* :func:`png_direction`: the functional direction from a Jacobian and :math:`\nabla F`.
* :func:`png_dual`: the dual QP alone.

What the experiments show (``torchmoo run png-synthetic``, ``png-zdt2``, ``png-diverse-multidigits``,
``png-ablation-multidigits``) is summarized in the README and in the docstrings of
:mod:`torchmoo.experiments.png_synthetic` and :mod:`torchmoo.experiments.png_diverse`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from torchmoo import ops
from torchmoo.autograd import Losses, Params, _accumulate, _jacobian, _losses_and_items, as_param_list, unflatten
from torchmoo.methods.aggregator import (
    Aggregator, _all_finite, _combination_bounded, _grams_to_host, blocks_gram, check_gram,
)
from torchmoo.methods.png_criteria import (
    ComplexCosine,
    Criterion,
    EnergyDistance,
    LossCriterion,
    NonUniformity,
    WeightedDistance,
    as_criterion,
)

__all__ = [
    "PNG",
    "PNGStats",
    "PNGDirection",
    "png_direction",
    "png_dual",
    "gram_stationarity",
    "Criterion",
    "WeightedDistance",
    "ComplexCosine",
    "NonUniformity",
    "EnergyDistance",
    "LossCriterion",
]

METHODS = ("active_set", "frank_wolfe")


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    return method


def gram_stationarity(G: Tensor) -> Tensor:
    r""":math:`g(\theta) = \min_{w \in \Delta} w^\top G w` (Eq. 1) from Gram matrices ``G`` (..., m, m).

    Returns a tensor of shape ``(...)`` in ``G``'s dtype and device, clamped at 0. (From ``J`` itself,
    :func:`torchmoo.methods.pareto_stationarity` avoids the cancellation of ``w'Gw`` for tiny values.)
    """
    w = ops.min_norm_simplex(G)
    return torch.einsum("...i,...ij,...j->...", w, G, w).clamp_min(0)


def png_dual(G: Tensor, b: Tensor, phi: Tensor, *, method: str = "active_set") -> Tensor:
    r"""The PNG dual (Eq. 10): :math:`\lambda = \arg\min_{\lambda\ge0} \tfrac12\lambda^\top G\lambda + (b - \phi\mathbf1)^\top\lambda`.

    Args:
        G: ``(..., m, m)`` Gram matrices :math:`J J^\top`.
        b: ``(..., m)``, :math:`J \nabla F`.
        phi: ``(...)`` control values; ``-inf`` (control off) gives :math:`\lambda = 0`.
        method: ``"active_set"`` (exact) or ``"frank_wolfe"``, see :func:`torchmoo.ops.nonneg_qp`.

    Returns:
        ``lambda`` ``(..., m)``, in ``G``'s dtype and device. Only the problems with finite ``phi`` are
        solved (in one batched call); with ``phi = alpha * g(theta) > 0`` each of them is bounded (0 is
        not in the convex hull of the gradients).

    Raises:
        TypeError: ``G`` or ``b`` is not a floating-point tensor.
        ValueError: ``G`` not ``(..., m, m)``; ``b`` or ``phi`` of the wrong shape; ``phi`` NaN or
            ``+inf``; an unknown ``method``; and the errors of
            :func:`torchmoo.ops.nonneg_qp` (e.g. an unbounded problem).
    """
    G = _as_tensor(G, "G")
    b = _as_tensor(b, "b")
    method = _check_method(method)  # also when the control is off everywhere: a typo must not pass
    phi = torch.as_tensor(phi, dtype=G.dtype, device=G.device)
    if G.dim() < 2 or G.shape[-1] != G.shape[-2]:
        raise ValueError(f"G must have shape (..., m, m), got {tuple(G.shape)}.")
    batch, m = G.shape[:-2], G.shape[-1]
    if tuple(b.shape) != (*batch, m):
        raise ValueError(f"b must have shape {(*batch, m)} to match G {tuple(G.shape)}, got {tuple(b.shape)}.")
    phi = phi.expand(batch) if phi.dim() == 0 else phi
    if tuple(phi.shape) != tuple(batch):
        raise ValueError(f"phi must be a scalar or have shape {tuple(batch)}, got {tuple(phi.shape)}.")
    if bool(torch.isnan(phi).any()) or bool((phi == math.inf).any()):
        raise ValueError("phi must be finite or -inf (control off).")
    Gf, bf, pf = G.reshape(-1, m, m), b.to(G.dtype).reshape(-1, m), phi.reshape(-1)
    lam = torch.zeros_like(bf)
    on = torch.isfinite(pf)
    if bool(on.any()):
        idx = on.nonzero().squeeze(1)
        c = bf[idx] - pf[idx, None]
        lam[idx] = ops.nonneg_qp(Gf[idx].contiguous(), c.contiguous(), method=method)
    return lam.reshape(*batch, m)


def _psd_part(G: Tensor) -> Tensor:
    """The nearest positive semi-definite matrices (negative eigenvalues set to 0) of symmetric ``G``
    ``(..., k, k)``, exactly symmetric."""
    evals, evecs = torch.linalg.eigh(G)
    P = (evecs * evals.clamp_min(0.0).unsqueeze(-2)) @ evecs.mT
    return 0.5 * (P + P.mT)


def _as_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}.")
    return x


class PNGDirection(NamedTuple):
    """Result of :func:`png_direction` (shapes for a batch ``(...)`` of ``m`` x ``n`` problems).

    Attributes:
        direction: ``(..., n)`` the update :math:`v = \\nabla F + J^\\top\\lambda` (subtract it).
        lam: ``(..., m)`` dual solution (0 where the control is off).
        phi: ``(...)`` the control :math:`\\phi` (``-inf`` where off).
        g: ``(...)`` :math:`g(\\theta)`.
        control: ``(...)`` bool, :math:`g(\\theta) > e`.
    """

    direction: Tensor
    lam: Tensor
    phi: Tensor
    g: Tensor
    control: Tensor


def png_direction(
    J: Tensor,
    grad_F: Tensor,
    g_theta: Optional[Union[Tensor, float]] = None,
    *,
    alpha: float = 0.5,
    threshold: float = 0.0,
    method: str = "active_set",
) -> PNGDirection:
    r"""The PNG update direction of Eq. 7 with the control of Eq. 8, batched.

    Args:
        J: ``(..., m, n)`` Jacobians (rows :math:`\nabla\ell_i`).
        grad_F: ``(..., n)`` criterion gradients :math:`\nabla F`.
        g_theta: ``(...)`` or a float: :math:`g(\theta) \ge 0`; by default computed from ``J`` exactly (the
            squared norm of MGDA's min-norm vector).
        alpha: :math:`\alpha_t \ge 0`.
        threshold: ``e``: the control is on where :math:`g(\theta) > e` (``inf``: never).
        method: dual solver, see :func:`png_dual`.

    Returns:
        :class:`PNGDirection`, detached, in ``J``'s dtype and device (``control`` bool). Where the
        control is on, :math:`\langle\nabla\ell_i, v\rangle \ge \phi` for every ``i``; where it is
        off, :math:`v = \nabla F`.

    Raises:
        TypeError: ``J`` or ``grad_F`` is not a floating-point tensor.
        ValueError: ``J`` not ``(..., m, n)`` with ``m >= 1``; ``grad_F`` not ``(..., n)``; ``alpha`` not a
            finite number ``>= 0``; ``threshold`` not a number ``>= 0``; ``g_theta`` not finite and
            ``>= 0`` (a NaN would turn the control off silently); the errors of :func:`png_dual`.

    Example:
        >>> J = torch.randn(2, 10, dtype=torch.float64); gF = torch.randn(10, dtype=torch.float64)
        >>> out = png_direction(J, gF, alpha=0.5)
        >>> (J @ out.direction >= out.phi - 1e-9).all()
        tensor(True)
    """
    J = _as_tensor(J, "J")
    grad_F = _as_tensor(grad_F, "grad_F")
    if J.dim() < 2 or J.shape[-2] == 0:
        raise ValueError(f"J must have shape (..., m, n) with m >= 1, got {tuple(J.shape)}.")
    batch, n = J.shape[:-2], J.shape[-1]
    if tuple(grad_F.shape) != (*batch, n):
        raise ValueError(f"grad_F must have shape {(*batch, n)} to match J {tuple(J.shape)}, got {tuple(grad_F.shape)}.")
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}.")
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and threshold >= 0):
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}.")
    J, grad_F = J.detach(), grad_F.detach().to(J.dtype)
    G = ops.gram(J)
    if g_theta is None:
        w = ops.min_norm_simplex(G.double()).to(J.dtype)
        g = (w.unsqueeze(-2) @ J).squeeze(-2).double().pow(2).sum(-1)
    else:
        g = torch.as_tensor(g_theta, dtype=torch.float64, device=J.device).expand(batch)
        if not bool((torch.isfinite(g) & (g >= 0)).all()):
            raise ValueError(f"g_theta must be finite and >= 0 (a squared norm), got {g.tolist()}.")
    control = g > threshold
    phi = torch.where(control, alpha * g, torch.full_like(g, -math.inf))
    b = (J @ grad_F.unsqueeze(-1)).squeeze(-1)
    lam = png_dual(G.double(), b.double(), phi, method=method).to(J.dtype)
    v = grad_F + (lam.unsqueeze(-2) @ J).squeeze(-2)
    return PNGDirection(v, lam, phi.to(J.dtype), g.to(J.dtype), control)


class PNGStats(NamedTuple):
    """Diagnostics of the last PNG step, for ``N`` models (``N = 1`` for one model). The tensors are
    float64 (``control`` bool) on the CPU, where the ``k x k`` step runs: reading them costs no device
    synchronization.

    Attributes:
        criterion: the value of ``F`` (a float; with a parameter-dependent part, its value is included
            when it was passed).
        losses: ``(N, m)`` loss values.
        g: ``(N,)`` :math:`g(\\theta)` of each model.
        threshold: ``(N,)`` the tolerance ``e`` of each model.
        control: ``(N,)`` bool, whether the control was on (:math:`g > e`).
        phi: ``(N,)`` :math:`\\phi` (``-inf`` where off).
        lam: ``(N, m)`` dual solution.
        weights: ``(N, k)`` the combination weights of the rows (``u + lambda``, then 1 for a criterion row).
        alpha: :math:`\\alpha_t` of the step.
        step: index of the step (0 for the first).
    """

    criterion: float
    losses: Tensor
    g: Tensor
    threshold: Tensor
    control: Tensor
    phi: Tensor
    lam: Tensor
    weights: Tensor
    alpha: float
    step: int


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class PNG(Aggregator):
    r"""Pareto Navigation Gradient Descent: optimize ``criterion`` inside the Pareto set of the losses.

    Args:
        criterion: a :class:`Criterion` of the losses (:class:`WeightedDistance`, :class:`ComplexCosine`,
            :class:`NonUniformity`, :class:`EnergyDistance`), a callable ``f(losses) -> scalar`` (wrapped
            in :class:`LossCriterion`), or ``None`` when the criterion depends on the parameters
            directly and its value is passed at each step (``backward(..., criterion_value=F)``, or as
            the last of the losses given to :func:`torchmoo.backward`).
        alpha: :math:`\alpha_t \ge 0` (Eq. 8), a number or a function of the step index. Larger values
            push harder toward the Pareto set before optimizing ``F`` (paper default 0.5).
        gamma: ``e = gamma * e0`` (Appendix B, paper default 0.1).
        decay: discount factor of the running average ``e0`` of :math:`\frac1m\sum_i\|\nabla\ell_i\|^2`
            (the paper does not give it): ``e0 <- decay * e0 + (1 - decay) * s_t``, ``e0 = s_0`` at the
            first step.
        threshold: a fixed ``e`` instead of ``gamma * e0``.
        method: dual solver: ``"active_set"`` (exact, default) or ``"frank_wolfe"``.
        criterion_clip: optional ``c``: the gradient of a criterion of the losses, :math:`J^\top u`, is
            scaled down to :math:`\|J^\top u\|^2 \le c \cdot \frac1m\sum_i\|\nabla\ell_i\|^2` when
            it is longer (computed from ``G``: :math:`u^\top G u`). The paper's analysis assumes a
            bounded :math:`\nabla F` (Assumption 1); the energy distance violates it when two models
            have nearly equal losses (at a common start it is of order :math:`d^{-3}`), and then
            dominates every step. ``None`` (default) leaves ``F`` as it is.

    The step: ``v = J^T (u + lambda)`` for a criterion of the losses (``u = dF/dl``), plus the criterion
    row with weight 1 when ``F`` depends on the parameters directly. Usage with any optimizer::

        png = tm.methods.PNG(tm.methods.WeightedDistance([0.2, 0.8]), alpha=0.5, gamma=0.1)
        for x, y in loader:
            optimizer.zero_grad()
            losses = [loss_fn(out, y[:, i]) for i, out in enumerate(model(x))]
            png.backward(losses, model.parameters())     # or tm.backward(losses, model.parameters(), png)
            optimizer.step()
            png.stats.g, png.stats.control               # diagnostics of the step

    The guarantee of Eq. 7 (every loss decreases at rate :math:`\phi` to first order) is about the
    direction ``v``: plain SGD follows it; an adaptive optimizer such as Adam rescales each coordinate
    of the step, which can break it when :math:`\nabla F` dominates ``v`` (see ``criterion_clip``).

    ``N`` models (multi-point OPT-in-Pareto)::

        png = tm.methods.PNG(tm.methods.EnergyDistance())
        png.backward([[l11, l12], [l21, l22], ...], [model1, model2, ...])

    Attributes:
        e0: ``(N,)`` float64 running average on the CPU (``None`` before the first step).
        steps: number of steps taken.
        stats: :class:`PNGStats` of the last step.
        weights: ``(k,)`` weights of the last single-model step (Aggregator interface; ``None`` after
            a step of ``N`` models).

    Raises:
        TypeError: ``criterion`` is neither a :class:`Criterion`, a callable nor ``None``.
        ValueError: ``alpha``, ``gamma``, ``threshold`` not finite numbers ``>= 0`` (``alpha`` may be a
            callable); ``decay`` outside ``[0, 1)``; an unknown ``method``; ``criterion_clip`` not
            ``None`` or a finite number ``> 0``.
    """

    needs_losses = True

    def __init__(
        self,
        criterion: Optional[Union[Criterion, Callable[[Tensor], Tensor]]],
        alpha: Union[float, Callable[[int], float]] = 0.5,
        gamma: float = 0.1,
        *,
        decay: float = 0.9,
        threshold: Optional[float] = None,
        method: str = "active_set",
        criterion_clip: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.criterion: Optional[Criterion] = None if criterion is None else as_criterion(criterion)
        if not callable(alpha) and not (_is_number(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0 or a function of the step, got {alpha!r}.")
        if not (_is_number(gamma) and gamma >= 0):
            raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}.")
        if not (_is_number(decay) and 0 <= decay < 1):
            raise ValueError(f"decay must be in [0, 1), got {decay!r}.")
        if threshold is not None and not (_is_number(threshold) and threshold >= 0):
            raise ValueError(f"threshold must be None or a finite number >= 0, got {threshold!r}.")
        self.alpha = alpha
        self.gamma = float(gamma)
        self.decay = float(decay)
        self.threshold = None if threshold is None else float(threshold)
        self.method = _check_method(method)
        if criterion_clip is not None and not (_is_number(criterion_clip) and criterion_clip > 0):
            raise ValueError(f"criterion_clip must be None or a finite number > 0, got {criterion_clip!r}.")
        self.criterion_clip = None if criterion_clip is None else float(criterion_clip)
        self.e0: Optional[Tensor] = None
        self.steps = 0
        self.stats: Optional[PNGStats] = None

    # ---- state -----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget ``e0``, the step count and the diagnostics."""
        self.e0, self.steps, self.stats, self.weights = None, 0, None, None

    def state_dict(self) -> Dict[str, Any]:
        """``{"e0": tensor or None, "steps": int}``: what a resumed run needs to continue exactly."""
        return {"e0": None if self.e0 is None else self.e0.clone(), "steps": self.steps}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore ``e0`` (to the CPU, where the step runs) and the step count from a :meth:`state_dict`;
        the diagnostics of an earlier step (:attr:`stats`, :attr:`weights`) are cleared, not restored.

        Raises:
            KeyError: ``state`` lacks ``"e0"`` or ``"steps"``.
            ValueError: ``e0`` is not ``None`` or a 1-D tensor of finite numbers ``>= 0`` (a NaN ``e0``
                would turn the control off at every step), or ``steps`` is not an integer ``>= 0``.
        """
        e0 = state["e0"]
        e0 = None if e0 is None else torch.as_tensor(e0, dtype=torch.float64, device="cpu").clone()
        if e0 is not None and e0.dim() != 1:
            raise ValueError(f"state['e0'] must be None or have shape (N,), got shape {tuple(e0.shape)}.")
        if e0 is not None and not bool((torch.isfinite(e0) & (e0 >= 0)).all()):
            raise ValueError(f"state['e0'] must hold finite numbers >= 0, got {e0.tolist()}.")
        steps = state["steps"]
        try:
            valid = not isinstance(steps, bool) and int(steps) == steps and steps >= 0
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise ValueError(f"state['steps'] must be an integer >= 0, got {steps!r}.")
        self.e0, self.steps = e0, int(steps)
        self.stats, self.weights = None, None

    def alpha_at(self, step: int) -> float:
        """:math:`\\alpha_t` at step ``t`` (a float).

        Raises:
            ValueError: ``alpha`` (or ``alpha(step)``) is not a finite number ``>= 0``.
        """
        a = self.alpha(step) if callable(self.alpha) else self.alpha
        if not (_is_number(a) and a >= 0):
            raise ValueError(f"alpha({step}) must be a finite number >= 0, got {a!r}.")
        return float(a)

    # ---- the step on Gram matrices ----------------------------------------------------------------
    def batch_weights(self, G: Tensor, losses: Tensor, *, criterion_value: Optional[float] = None) -> Tensor:
        r"""One PNG step for ``N`` models from their Gram matrices: the row weights ``(N, k)``.

        Args:
            G: ``(N, k, k)``: model ``k``'s Gram matrix of its ``m`` loss gradients (``k = m``) or of
                the ``m`` loss gradients followed by the gradient of the parameter-dependent part of
                the criterion (``k = m + 1``).
            losses: ``(N, m)`` loss values (detached).
            criterion_value: value of the parameter-dependent part of ``F`` (for :attr:`stats` only).

        Returns:
            ``(N, k)`` weights, in ``G``'s dtype and device: model ``k``'s direction is
            ``weights[k] @ J_k``. Updates ``e0``, :attr:`steps` and :attr:`stats` (none of them when it
            raises).

        Raises:
            TypeError: ``G`` or ``losses`` is not floating-point.
            ValueError: ``G`` not ``(N, k, k)``; ``losses`` not ``(N, m)`` with ``m >= 1`` and
                ``k`` in ``(m, m + 1)``; ``k = m`` with ``criterion=None``; inf or NaN entries; another
                ``N`` than the previous steps' (call :meth:`reset`); the errors of the criterion and of
                :func:`png_dual`.
        """
        return self._step(G, losses, criterion_value=criterion_value, single=False)

    def _step(self, G: Tensor, losses: Tensor, *, criterion_value: Optional[float], single: bool) -> Tensor:
        """:meth:`batch_weights`; ``single``: one model (``N = 1``), whose criterion sees ``(m,)`` losses."""
        G = _as_tensor(G, "G")
        losses = _as_tensor(torch.as_tensor(losses), "losses")
        if G.dim() != 3 or G.shape[-1] != G.shape[-2]:
            raise ValueError(f"G must have shape (N, k, k), got {tuple(G.shape)}.")
        if losses.dim() != 2 or losses.shape[0] != G.shape[0]:
            raise ValueError(f"losses must have shape (N, m) with N = {G.shape[0]}, got {tuple(losses.shape)}.")
        N, k = G.shape[0], G.shape[-1]
        m = losses.shape[1]
        if m == 0:
            raise ValueError("PNG needs at least one loss per model, got losses of shape "
                             f"{tuple(losses.shape)}.")
        if k not in (m, m + 1):
            raise ValueError(f"G is {k} x {k} but there are {m} losses: expected {m} (losses only) or {m + 1} "
                             "(losses and the gradient of the criterion).")
        external = k == m + 1
        if self.criterion is None and not external:
            raise ValueError("PNG(criterion=None) needs the gradient of the criterion as an extra row: pass "
                             "criterion_value= to PNG.backward, or the criterion as the last loss to tm.backward.")
        # The k x k step runs on the CPU in float64 whatever G's device: on a GPU its dozens of tiny kernels
        # (criterion, QPs) and their host reads would cost more than the one copy of G and the losses
        Gd = G.detach().to(device="cpu", dtype=torch.float64)
        Ld = losses.detach().to(device="cpu", dtype=torch.float64)
        if not bool(torch.isfinite(Gd).all()) or not bool(torch.isfinite(Ld).all()):
            raise ValueError("PNG: the Gram matrices or the losses have inf or NaN entries.")
        Gl = Gd[:, :m, :m]
        try:
            g = gram_stationarity(Gl)
        except ValueError as err:
            if "positive semi-definite" not in str(err):
                raise
            # A Gram matrix formed in float32 (or summed from float32 blocks) is PSD only up to float32
            # rounding; when the gradients are nearly collinear (or m > n) that can fall below the
            # float64 QPs' tolerance. Its PSD part differs from it by that rounding only.
            Gd = _psd_part(Gd)
            Gl = Gd[:, :m, :m]
            g = gram_stationarity(Gl)
        if self.criterion is not None:
            if single:  # one model: the criterion is a function of its (m,) losses
                F, u = self.criterion.value_and_grad(Ld[0])
                u = u.unsqueeze(0)
            else:
                F, u = self.criterion.value_and_grad(Ld)
            F = float(F)
        else:
            F, u = 0.0, torch.zeros_like(Ld)
        s = Gl.diagonal(dim1=-2, dim2=-1).mean(-1)  # mean squared gradient norm of each model
        if self.criterion_clip is not None and self.criterion is not None:
            norm2 = torch.einsum("ni,nij,nj->n", u, Gl, u).clamp_min(0)
            cap = self.criterion_clip * s
            u = u * torch.where(norm2 > cap, torch.sqrt(cap / norm2.clamp_min(1e-300)), torch.ones_like(norm2))[:, None]
        b = (Gl @ u.unsqueeze(-1)).squeeze(-1)  # J grad_F = G u
        if external:
            b = b + Gd[:, :m, m]
            if criterion_value is not None:
                F += float(criterion_value)
        # the state (e0, steps, stats) is committed only once the step has succeeded
        if self.e0 is None:
            e0 = s.clone()
        else:
            if self.e0.shape != s.shape:
                raise ValueError(f"this PNG was stepped with {self.e0.shape[0]} model(s), now {N}; call reset() "
                                 "to start over.")
            e0 = self.decay * self.e0.cpu() + (1.0 - self.decay) * s
        e = torch.full_like(s, self.threshold) if self.threshold is not None else self.gamma * e0
        alpha = self.alpha_at(self.steps)
        control = g > e
        phi = torch.where(control, alpha * g, torch.full_like(g, -math.inf))
        lam = png_dual(Gl, b, phi, method=self.method)
        w = u + lam
        if external:
            w = torch.cat([w, torch.ones_like(w[:, :1])], dim=1)
        self.e0 = e0
        self.stats = PNGStats(F, Ld, g, e, control, phi, lam, w, alpha, self.steps)
        self.steps += 1
        return w.to(device=G.device, dtype=G.dtype)

    def _save_state(self) -> Any:
        return self.e0, self.steps, self.stats, self.weights

    def _restore_state(self, state: Any) -> None:
        self.e0, self.steps, self.stats, self.weights = state

    # ---- Aggregator interface (one model, through tm.backward or png(J, losses)) --------------------
    def check_inputs(self, m: int, losses: Optional[Tensor]) -> None:
        """One model's ``m`` losses (the criterion's value last with ``criterion=None``): given, and in the
        criterion's domain (e.g. a reference of ``m`` entries, positive losses for :class:`NonUniformity`);
        :func:`torchmoo.backward` calls it before any backward pass."""
        if losses is None:
            raise ValueError("PNG needs the loss values: call png(J, losses) or use tm.backward / PNG.backward.")
        if self.criterion is None:
            if m < 2:
                raise ValueError("PNG(criterion=None) needs at least one loss and the criterion's value as the last "
                                 f"loss, got {m} value(s).")
            return
        self.criterion.value_and_grad(losses.detach().to(device="cpu", dtype=torch.float64).reshape(-1))

    def gram_weights(self, G: Tensor, losses: Optional[Tensor] = None) -> Tensor:
        """One model: ``G`` (k, k) and ``losses`` (k,) -> weights (k,) in ``G``'s dtype. With
        ``criterion=None`` the last row is the criterion's (its value is the last entry of ``losses``).

        Raises:
            ValueError: ``losses`` is ``None`` or does not have ``k`` entries; as :meth:`batch_weights`.
        """
        G = check_gram(G)
        if losses is None:
            raise ValueError("PNG needs the loss values: call png(J, losses) or use tm.backward / PNG.backward.")
        losses = losses.reshape(-1)
        if losses.shape[0] != G.shape[0]:
            raise ValueError(f"losses has {losses.shape[0]} entries for a {G.shape[0]} x {G.shape[0]} Gram matrix.")
        if self.criterion is None:
            w = self._step(G[None], losses[None, :-1], criterion_value=float(losses[-1]), single=True)
        else:
            w = self._step(G[None], losses[None], criterion_value=None, single=True)
        return w[0]

    # ---- backward ----------------------------------------------------------------------------------
    def backward(
        self,
        losses: Union[Tensor, Sequence[Tensor], Sequence[Sequence[Tensor]], Sequence[Callable[[], Losses]]],
        params: Union[Params, Sequence[Params]],
        *,
        criterion_value: Optional[Tensor] = None,
        retain_graph: bool = False,
        batched: Optional[bool] = None,
    ) -> Tensor:
        r"""PNG step: accumulate :math:`v_k` into the ``.grad`` of every model's parameters.

        Args:
            losses: one model: ``m`` scalar losses (sequence or ``(m,)`` tensor); ``N`` models: an
                ``(N, m)`` tensor, ``N`` sequences of ``m`` scalars, or ``N`` closures, closure ``k``
                computing model ``k``'s ``m`` losses (a sequence or an ``(m,)`` tensor). With closures,
                model ``k``'s gradients are taken right after its forward pass, before the next model's
                (its activations are still in cache) and its graph is freed at once, so that the
                ``N`` graphs are never alive together: the fastest form for ``N`` models, same result.
                Closures whose graphs share nodes on the way to the parameters need
                ``retain_graph=True``.
            params: one model: a module, a tensor or an iterable of tensors; ``N`` models: a list (or
                tuple) of ``N`` modules or iterables of tensors (``[m.parameters() for m in models]``),
                possibly on different devices. All the parameters of a model should be given (PNG's
                :math:`\theta`), heads included; model ``k``'s losses must reach its parameters.
            criterion_value: optional scalar tensor: a part of ``F`` that depends on the parameters
                directly (it is differentiated with respect to each model's parameters and enters
                with weight 1); required when ``criterion`` is None.
            retain_graph: keep the graph after the step.
            batched: passed to :func:`torchmoo.autograd.jacobian_blocks`.

        Returns:
            The weights: ``(k,)`` for one model, ``(N, k)`` for ``N`` models (``k = m`` or ``m + 1``),
            float64 (the Gram matrices are summed in float64) on the device of the first model's losses.

        Raises:
            TypeError: ``criterion_value`` is not a scalar tensor; ``losses`` of the wrong kind (e.g. loss
                closures for one model, or a closure that does not return ``m`` scalar losses).
            ValueError: ``criterion_value`` missing with ``criterion=None``; models sharing a tensor;
                as many loss rows (or closures) as parameter groups is required, and the same number
                of losses per model; no loss requires grad; a model's losses reach none of its
                parameters; the errors of :meth:`batch_weights`; a direction ``w @ J`` that overflows the
                parameters' dtype.
            RuntimeError: closures whose graphs share nodes, without ``retain_graph=True``.

        These errors, and any failure while the directions are formed (e.g. out of memory), are raised
        before any ``.grad`` is written and leave the state (``e0``, :attr:`steps`, :attr:`stats`) as it was.

        Example (``N`` models, closures)::

            png.backward([lambda m=m: losses_of(m(x), y) for m in models], models)
        """
        # N models: a list whose entries are groups (modules or iterables of tensors), not tensors
        multi = isinstance(params, (list, tuple)) and len(params) > 0 and all(
            isinstance(p, torch.nn.Module) or (not isinstance(p, Tensor) and hasattr(p, "__iter__")) for p in params
        )
        groups = [as_param_list(p, name=f"params[{i}]") for i, p in enumerate(params)] if multi else [as_param_list(params)]
        seen: set = set()
        for i, plist in enumerate(groups):
            for p in plist:
                if id(p) in seen:
                    raise ValueError(f"params[{i}] shares a tensor (shape {tuple(p.shape)}) with another model.")
                seen.add(id(p))
        if criterion_value is None and self.criterion is None:
            raise ValueError("PNG(criterion=None): pass criterion_value= (a scalar tensor) at each step.")
        if criterion_value is not None:
            if not isinstance(criterion_value, Tensor) or criterion_value.numel() != 1:
                raise TypeError("criterion_value must be a scalar tensor.")
            criterion_value = criterion_value.reshape(())
        if multi and not isinstance(losses, Tensor):
            try:
                losses = list(losses)  # a generator of rows or of closures
            except TypeError:
                raise TypeError("for N models, losses must be an (N, m) tensor, N sequences of m scalar losses or "
                                f"N loss closures, got {type(losses).__name__}.") from None
        closures = multi and not isinstance(losses, Tensor) and len(losses) > 0 and all(callable(c) for c in losses)
        if closures:
            if len(losses) != len(groups):
                raise ValueError(f"there are {len(losses)} loss closures but {len(groups)} parameter groups.")
            rows_of = lambda k: _closure_losses(losses[k], k)  # noqa: E731
        else:
            L = _loss_rows(losses, multi)
            if len(L) != len(groups):
                raise ValueError(f"there are {len(L)} rows of losses but {len(groups)} parameter groups.")
            if not any(r.requires_grad for r, _ in L) and (criterion_value is None or not criterion_value.requires_grad):
                raise ValueError("None of the losses requires grad: there is nothing to back-propagate.")
            rows_of = lambda k: L[k]  # noqa: E731
        N = len(groups)
        all_blocks: List[List[Optional[Tensor]]] = [[] for _ in range(N)]
        grams: List[Optional[Tensor]] = [None] * N
        jacobians: List[Optional[Tensor]] = [None] * N  # (k, n) when the blocks are views of one tensor
        loss_rows: List[Optional[Tensor]] = [None] * N
        for k_model in range(N):
            rows, items = rows_of(k_model)
            if k_model > 0 and rows.shape[0] != loss_rows[0].shape[0]:
                raise ValueError("every model must have the same number of losses.")
            loss_rows[k_model] = rows.detach()
            if criterion_value is not None:
                rows = torch.cat([rows, criterion_value[None].to(rows.device)])
                items = None if items is None else [*items, criterion_value.to(rows.device)]
            if closures and not rows.requires_grad:
                raise ValueError(f"none of the losses of model {k_model} requires grad: there is nothing to "
                                 "back-propagate.")
            # graphs may share nodes across models (a stacked (N, m) tensor, criterion_value): keep them
            # for every model but the last one. A closure builds its own graph: free it at once (the
            # N graphs are never alive together)
            keep = retain_graph or (k_model < N - 1 and not (closures and criterion_value is None))
            try:
                blocks, J = _jacobian(rows, groups[k_model], create_graph=False, retain_graph=keep, batched=batched,
                                      items=items)
            except RuntimeError as err:
                # (not when jacobian's batched pass failed and took the graph with it: its message says
                # what to do, and the graphs need not share anything)
                if closures and k_model > 0 and "second time" in str(err) and not str(err).startswith(
                        "torchmoo.autograd.jacobian: the batched backward pass failed"):
                    raise RuntimeError(
                        f"the graph of model {k_model}'s losses shares nodes with an earlier model's, whose graph "
                        "PNG.backward freed after that model's backward passes: pass retain_graph=True when "
                        "the loss closures share a part of their graph."
                    ) from err
                raise
            if multi and groups[k_model] and all(b is None for b in blocks):
                raise ValueError(
                    f"the losses of model {k_model} reach none of its parameters (params[{k_model}]): the losses "
                    "and the parameter groups must be in the same order, and closure k must compute model k's "
                    "losses (in a loop, bind the model: lambda m=m: ...)."
                )
            k = rows.shape[0]
            if J is not None:  # the m backward passes wrote one (k, n) Jacobian: one Gram, one combination
                jacobians[k_model] = J
            else:  # one block per parameter (the vmapped pass, or parameters of several dtypes)
                blocks = [None if b is None else b.reshape(k, -1) for b in blocks]
            # (checked for inf / NaN on the host below, with the losses: on a GPU one synchronization per
            # step rather than one per model)
            grams[k_model] = blocks_gram([J] if J is not None else blocks, k, rows.device, check_finite=False)
            all_blocks[k_model] = blocks
            del rows, items
        # The k x k step runs on the CPU: the N Gram matrices and loss rows (the models may live on different
        # devices) reach the host in one copy, and the weights go back once per device
        first = grams[0].device
        Gs, Ls = _grams_to_host(grams, loss_rows)
        k = Gs.shape[-1]
        for G, blocks, J in zip(Gs, all_blocks, jacobians):
            if not bool(torch.isfinite(G).all()):  # the block at fault raises ops.gram's message
                blocks_gram([J] if J is not None else blocks, k, first)
        state = self._save_state()  # put back if no .grad is written (see below)
        W = self._step(Gs, Ls, criterion_value=None if criterion_value is None else float(criterion_value.detach()),
                       single=not multi)
        # The weights go once to every device that holds a Jacobian: a model's losses (where its Gram matrix
        # was summed) need not lie where its parameters are (losses moved to the CPU, or the (N, m) losses
        # of models on several devices stacked on one)
        devices = {G.device for G in grams}
        for blocks, J in zip(all_blocks, jacobians):
            devices.update([J.device] if J is not None else [b.device for b in blocks if b is not None])
        try:
            W_on = {d: W.to(d) for d in devices}
            # G and W are finite: the combinations skip ops.combine's check (on CUDA a synchronization each)
            # and are checked together, once per device, before any .grad is written (as png(J, losses)
            # raises)
            all_pieces = []
            for k_model, (plist, blocks, J) in enumerate(zip(groups, all_blocks, jacobians)):
                if J is not None:
                    # (float32 weights for a half J: a weight beyond float16's range can give a finite d)
                    d = ops.combine(J, W_on[J.device][k_model].to(ops.combine_weight_dtype(J.dtype)),
                                    check_finite=False)
                    all_pieces.append((unflatten(d, plist), d))  # views of d
                else:
                    pieces = [None if b is None else ops.combine(
                        b, W_on[b.device][k_model].to(ops.combine_weight_dtype(b.dtype)), check_finite=False)
                        for b in blocks]
                    all_pieces.append((pieces, None))
            # (only the models whose bound from G and w does not exclude an overflow: float32 / float64
            # directions practically never need the check, and on CUDA it is a synchronization)
            unsure = [t for (pieces, d), G, w, blocks in zip(all_pieces, Gs, W, all_blocks)
                      if not _combination_bounded(G, w, [b.dtype for b in blocks if b is not None])
                      for t in ([d] if d is not None else pieces)]
            if not _all_finite(unsure):
                raise ValueError("PNG.backward: the combination w @ J of a model's Jacobian overflows its dtype (an "
                                 "entry exceeds the largest finite value); no .grad was written.")
        except Exception:  # (an overflow, or e.g. running out of memory): no step was taken
            self._restore_state(state)
            raise
        for plist, blocks, (pieces, _) in zip(groups, all_blocks, all_pieces):
            # a parameter no loss reaches keeps its .grad as it was
            _accumulate(plist, [None if blk is None else piece for blk, piece in zip(blocks, pieces)])
        W = W_on[first]
        self.weights = W[0].detach() if not multi else None
        return W[0] if not multi else W

    def __repr__(self) -> str:
        e = f"threshold={self.threshold}" if self.threshold is not None else f"gamma={self.gamma}"
        clip = "" if self.criterion_clip is None else f", criterion_clip={self.criterion_clip}"
        return f"PNG({self.criterion!r}, alpha={self.alpha!r}, {e}, decay={self.decay}, method={self.method!r}{clip})"


def _closure_losses(closure: Callable[[], Any], k: int) -> Tuple[Tensor, Optional[List[Tensor]]]:
    """Model ``k``'s losses from its closure, as an ``(m,)`` tensor that keeps the graph, and the scalar
    losses it was stacked from (``None`` if the closure returned a tensor)."""
    out = closure()
    try:
        return _losses_and_items(out)
    except (TypeError, ValueError) as err:
        raise TypeError(f"the loss closure of model {k} must return m scalar losses (a sequence or an (m,) "
                        f"tensor): {err}") from None


def _loss_rows(losses: Any, multi: bool) -> List[Tuple[Tensor, Optional[List[Tensor]]]]:
    """Losses as ``N`` tensors of shape ``(m,)`` that keep the graph (``N = 1`` for one model), each with
    the scalar losses it was stacked from when they were given (else ``None``); the rows are not stacked,
    so that the models may live on different devices."""
    if not multi:
        if not isinstance(losses, Tensor) and isinstance(losses, (list, tuple)) and any(callable(c) for c in losses):
            raise TypeError("loss closures are for N models: pass params as a list of N modules or parameter "
                            "lists (for one model, [model]).")
        return [_losses_and_items(losses)]
    if isinstance(losses, Tensor):
        if losses.dim() != 2:
            raise ValueError(f"for N models, losses must have shape (N, m), got {tuple(losses.shape)}.")
        return [(losses[k], None) for k in range(losses.shape[0])]
    rows = []
    for k, r in enumerate(losses):
        if isinstance(r, Tensor) and r.dim() == 0:
            # a flat list of scalars with params given as a list of modules: one model split over several
            # modules, not one loss per model
            raise ValueError(
                f"for N models, losses[{k}] must be a sequence of m scalar losses or an (m,) tensor, got a "
                "scalar (for one loss per model: [[l_1], ..., [l_N]]). For one model whose parameters span "
                "several modules, pass its parameters (e.g. itertools.chain(encoder.parameters(), "
                "head.parameters())), not a list of modules."
            )
        try:
            rows.append(_losses_and_items(r))
        except TypeError:
            raise TypeError("for N models, losses must be an (N, m) tensor or N sequences of m scalar losses.") from None
    if not rows or len({r.shape[0] for r, _ in rows}) != 1:
        raise ValueError("every model must have the same number of losses.")
    return rows
