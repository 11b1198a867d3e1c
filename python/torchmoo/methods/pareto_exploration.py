r"""Efficient continuous Pareto exploration (Ma, Du & Matusik, ICML 2020).

From one Pareto-stationary point :math:`x^*` of :math:`m` objectives, the tangent plane of the Pareto
set is found without forming a Hessian: by Hillermeier's Proposition 3.2, a tangent :math:`v` of any
curve in the Pareto set through :math:`x^*` satisfies

.. math:: H(x^*)\, v = \nabla f(x^*)^\top \beta, \qquad H = \textstyle\sum_i \alpha_i \nabla^2 f_i(x^*)

for some :math:`\beta \in \mathbb{R}^m`, with :math:`\alpha` the weights of Definition 3.1 (the
min-norm QP, Problem 3). The paper samples :math:`\beta`, solves this symmetric (indefinite,
often singular) system with ``k`` iterations of MINRES over Hessian-vector products
(:func:`torchmoo.ops.minres` and :func:`torchmoo.autograd.hvp_operator`) and steps along the
result (Eq. 6, with the optional correction of Problem 5). This module implements

* :func:`pareto_optimize`: the ParetoOptimize of Algorithm 1 (MGDA plus a backtracking line search,
  as in the paper's synthetic examples, or any aggregator with any ``torch.optim`` optimizer);
* :func:`pareto_expand`: ParetoExpand, ``K`` directions at once (one batched MINRES: the ``K`` right-hand
  sides share their Hessian), with the sign that expands rather than retracts;
* :class:`ParetoExplorer` / :func:`pareto_explore`: Algorithm 1 (breadth-first, ``K`` children per point,
  dominance pruning, ``N`` outputs), resumable through ``state_dict``;
* the continuous parametrization of section 5 in :mod:`torchmoo.methods.continuous_front`
  (:meth:`ParetoExplorer.front`, :meth:`ParetoExplorer.solution`).

Objectives are given as a *closure* (as for ``torch.optim.LBFGS``): a function of no argument that
computes the ``m`` objectives (a sequence of scalar tensors or an ``(m,)`` tensor) from the current
values of the parameters; it is called with autograd enabled, also under ``torch.no_grad()``. The
functions move the parameters in place. Costs are counted as the paper measures time: evaluations of
the objective vector, of its Jacobian and Hessian-vector products (:class:`EvaluationCounter`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from torchmoo import ops
from torchmoo.autograd import Losses, Params, _stack_losses, as_param_list, flatten, hvp_operator, jacobian, unflatten
from torchmoo.methods.aggregator import Aggregator, gram_matrix
from torchmoo.methods.mgda import MGDA, min_norm_weights
from torchmoo.training import backward as _mtl_backward

if TYPE_CHECKING:  # imported where used: continuous_front and matplotlib load only when needed
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from torchmoo.methods.continuous_front import ContinuousFront, ConvexHullFamily

__all__ = [
    "Objectives",
    "EvaluationCounter",
    "OptimizeResult",
    "Expansion",
    "ExploredPoint",
    "RHS_SAMPLERS",
    "SIGN_RULES",
    "sample_beta",
    "pareto_optimize",
    "pareto_expand",
    "pareto_explore",
    "ParetoExplorer",
]

#: A closure computing the ``m`` objectives at the current parameters.
Objectives = Callable[[], Losses]

#: How :func:`pareto_expand` samples the weights ``beta`` of the right-hand side ``J^T beta``
#: (supplement of Ma et al.: "normal" for MultiMNIST-subset, "simplex" for MultiMNIST and its
#: variants, "binary" for Census-Income and UTKFace).
RHS_SAMPLERS = ("normal", "simplex", "binary")
#: How :func:`pareto_expand` orients each direction (``v`` and ``-v`` both solve the system).
SIGN_RULES = ("auto", "beta", "parent", "none")
_METHODS = ("tangent", "gradient")


# --------------------------------------------------------------------------------------------------
# evaluation counts
# --------------------------------------------------------------------------------------------------


@dataclass
class EvaluationCounter:
    """Evaluations spent, in the units of Ma et al. (section 6.1: "we measure the time cost by counting
    the evaluations of objectives, gradients, and Hessian-vector products").

    Attributes:
        f: evaluations of the objective vector (one call of the closure, all ``m`` objectives).
        grad: evaluations of the Jacobian (all ``m`` gradients at one point), and of the weighted
            gradient with its graph that Hessian-vector products differentiate.
        hvp: Hessian-vector products; a batched product of ``k`` vectors counts ``k``.
    """

    f: int = 0
    grad: int = 0
    hvp: int = 0

    @property
    def total(self) -> int:
        """``f + grad + hvp``."""
        return self.f + self.grad + self.hvp

    def copy(self) -> "EvaluationCounter":
        """An independent copy (a snapshot: ``counter - snapshot`` is what was spent since)."""
        return dataclasses.replace(self)

    def __add__(self, other: "EvaluationCounter") -> "EvaluationCounter":
        return EvaluationCounter(self.f + other.f, self.grad + other.grad, self.hvp + other.hvp)

    def __sub__(self, other: "EvaluationCounter") -> "EvaluationCounter":
        return EvaluationCounter(self.f - other.f, self.grad - other.grad, self.hvp - other.hvp)

    def as_dict(self) -> Dict[str, int]:
        """``{"f": ..., "grad": ..., "hvp": ...}`` (``EvaluationCounter(**d)`` restores it)."""
        return {"f": self.f, "grad": self.grad, "hvp": self.hvp}


def _check_counter(counter: Optional[EvaluationCounter]) -> EvaluationCounter:
    if counter is None:
        return EvaluationCounter()
    if not isinstance(counter, EvaluationCounter):
        raise TypeError(f"counter must be an EvaluationCounter, got {type(counter).__name__}.")
    return counter


# --------------------------------------------------------------------------------------------------
# the objectives closure over a flat parameter vector
# --------------------------------------------------------------------------------------------------


class _Problem:
    """The closure, the parameter list and the counter, with flat get / set of the parameters."""

    def __init__(self, objectives: Objectives, params: Params, counter: Optional[EvaluationCounter]) -> None:
        if not callable(objectives):
            raise TypeError(
                f"objectives must be a callable of no argument returning the m losses, got {type(objectives).__name__}."
            )
        self.objectives = objectives
        self.params = as_param_list(params)
        if not self.params:
            raise ValueError("params is empty: there is nothing to explore.")
        self.counter = _check_counter(counter)

    def losses(self, *, grad: bool = True) -> Tensor:
        """The ``(m,)`` objectives at the current parameters (with their graph when ``grad``)."""
        self.counter.f += 1
        # like torch.optim.LBFGS's closure and torchmoo.backward: the graph is built even when the caller
        # runs under torch.no_grad() (e.g. an evaluation loop)
        with torch.set_grad_enabled(grad):
            L = _stack_losses(self.objectives())  # stacked (or reshaped: a view) with the graph too
        if not L.is_floating_point():
            raise TypeError(f"the objectives must be floating-point tensors, got {L.dtype}.")
        if not bool(torch.isfinite(L.detach()).all()):
            raise ValueError(f"the objectives are not finite at the current parameters: {L.detach().tolist()}.")
        return L

    def jacobian(self, L: Tensor, *, retain_graph: bool = False) -> Tensor:
        if not L.requires_grad:
            raise ValueError(
                "the objectives do not require grad: the closure must compute them from the parameters "
                "(with autograd enabled)."
            )
        self.counter.grad += 1
        return jacobian(L, self.params, retain_graph=retain_graph)

    def get(self) -> Tensor:
        return flatten(self.params).detach().clone()

    @torch.no_grad()
    def set(self, vec: Tensor) -> None:
        for p, piece in zip(self.params, unflatten(vec, self.params)):
            p.copy_(piece)


# --------------------------------------------------------------------------------------------------
# ParetoOptimize
# --------------------------------------------------------------------------------------------------


class OptimizeResult(NamedTuple):
    """What :func:`pareto_optimize` returns.

    Attributes:
        losses: ``(m,)`` objectives at the final parameters (detached).
        initial_losses: ``(m,)`` objectives at the starting parameters (for Algorithm 1: the point
            that ParetoExpand reached, before it is optimized).
        stationarity: :math:`\\min_{w \\in \\Delta}\\|J^\\top w\\|^2` at the final parameters (``0`` exactly
            at a Pareto-stationary point; see :func:`torchmoo.methods.pareto_stationarity`); with an
            optimizer, at the last point whose Jacobian was computed; ``nan`` when no Jacobian was
            computed (``max_iter=0``).
        iterations: steps taken.
        converged: ``stationarity <= tol`` was reached.
    """

    losses: Tensor
    initial_losses: Tensor
    stationarity: float
    iterations: int
    converged: bool


def _stationarity(J: Tensor) -> float:
    w = min_norm_weights(gram_matrix(J)).to(J.dtype)
    return float((w @ J.detach()).double().pow(2).sum())


def pareto_optimize(
    objectives: Objectives,
    params: Params,
    *,
    aggregator: Optional[Aggregator] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    max_iter: int = 100,
    tol: float = 1e-12,
    step: float = 1.0,
    decay: float = 0.9,
    armijo: float = 1e-4,
    max_backtracks: int = 100,
    counter: Optional[EvaluationCounter] = None,
) -> OptimizeResult:
    r"""ParetoOptimize: move the parameters (in place) to a Pareto-stationary point.

    Without ``optimizer`` (default), the deterministic method of the paper's synthetic examples
    (supplement 2.1): the aggregator's direction ``d = aggregator(J)`` (MGDA by default) with a
    backtracking line search that starts at ``step`` and multiplies it by ``decay`` until the Armijo
    condition holds for the weighted sum :math:`w^\top f` (``w`` the aggregator's weights:
    :math:`w^\top f(x - t d) \le w^\top f(x) - \sigma t \|d\|^2`) and for every objective that ``d``
    decreases to first order (:math:`f_i(x - t d) \le f_i(x) - \sigma t \langle g_i, d\rangle` when
    :math:`\langle g_i, d\rangle > 0`; for MGDA that is every objective, so each step improves all
    of them). It stops when :math:`\min_w \|J^\top w\|^2 \le` ``tol``, after ``max_iter`` steps, or when
    no step passes the test in ``max_backtracks`` trials (the parameters then stay where they were).

    With an ``optimizer`` (mini-batch training of a network: the closure may draw a new batch at
    each call), ``max_iter`` steps of ``optimizer`` on the direction that
    :func:`torchmoo.backward` writes into ``.grad``; ``tol`` stops early when the aggregator is MGDA
    (its direction's squared norm is the stationarity measure).

    Args:
        objectives: closure returning the ``m`` objectives at the current parameters.
        params: the parameters to move (tensor, iterable of tensors or module).
        aggregator: an :class:`~torchmoo.methods.Aggregator`; default :class:`~torchmoo.methods.MGDA`.
        optimizer: a ``torch.optim`` optimizer over ``params``, or ``None`` for the line search.
        max_iter: at most this many steps; ``0`` only evaluates the objectives.
        tol: stationarity threshold (absolute, on the squared norm of the min-norm vector).
        step, decay, armijo, max_backtracks: the line search (initial step ``t``, factor, Armijo
            constant :math:`\sigma`, trials per step).
        counter: an :class:`EvaluationCounter` to add the evaluations to.

    Returns:
        :class:`OptimizeResult`; its losses are detached, in the objectives' dtype and device.

    Raises:
        TypeError: ``objectives`` not callable; ``aggregator`` not an Aggregator; ``optimizer`` not a
            ``torch.optim.Optimizer``; ``counter`` not an :class:`EvaluationCounter`; non-floating
            objectives.
        ValueError: ``params`` empty; ``max_iter`` not an int ``>= 0``; ``max_backtracks`` not an int
            ``>= 1``; ``tol``, ``step``, ``decay``, ``armijo`` not finite or out of range (``tol >= 0``,
            ``step > 0``, ``0 < decay < 1``, ``0 <= armijo <= 1``); objectives that are not finite or do
            not require grad.

    Example:
        >>> x = torch.tensor([0.3, 1.2, -0.4], dtype=torch.float64, requires_grad=True)
        >>> zdt2 = torchmoo.problems.ZDT2Variant()
        >>> res = pareto_optimize(lambda: zdt2(x), [x])   # x is now (nearly) Pareto-stationary
    """
    prob = _Problem(objectives, params, counter)
    agg = MGDA() if aggregator is None else aggregator
    if not isinstance(agg, Aggregator):
        raise TypeError(f"aggregator must be a torchmoo.methods.Aggregator, got {type(agg).__name__}.")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}.")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be an int >= 0, got {max_iter!r}.")
    if isinstance(max_backtracks, bool) or not isinstance(max_backtracks, int) or max_backtracks < 1:
        raise ValueError(f"max_backtracks must be an int >= 1, got {max_backtracks!r}.")
    for name, value, lo, hi in (("tol", tol, 0.0, math.inf), ("step", step, 0.0, math.inf),
                                ("decay", decay, 0.0, 1.0), ("armijo", armijo, 0.0, 1.0)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}.")
        if not lo <= value <= hi or (name in ("step", "decay") and value == 0.0) or (name == "decay" and value == 1.0):
            raise ValueError(f"{name}={value} is out of range.")

    if max_iter == 0:
        L = prob.losses(grad=False).detach()
        return OptimizeResult(L, L, float("nan"), 0, False)
    if optimizer is not None:
        return _optimize_with(prob, agg, optimizer, max_iter, tol)

    initial: Optional[Tensor] = None
    stationarity = float("nan")
    converged = False
    iterations = 0
    while True:
        L = prob.losses()
        if initial is None:
            initial = L.detach()
        J = prob.jacobian(L)
        f0 = L.detach()
        stationarity = _stationarity(J)
        if stationarity <= tol:
            converged = True
            break
        if iterations == max_iter:
            break
        d = agg(J, f0).detach()
        w = agg.weights.to(J.dtype)
        slope = J @ d  # first-order decrease of each objective per unit step
        dd = float(d @ d)
        if dd == 0.0:  # the aggregator cannot move (e.g. opposite gradients under fixed weights)
            break
        x0 = prob.get()
        t = float(step)
        accepted = False
        for _ in range(max_backtracks):
            prob.set(x0 - t * d)
            fn = prob.losses(grad=False).detach()
            ok = float(w.to(fn.dtype) @ (fn - f0)) <= -armijo * t * dd  # J's dtype may differ from f's
            descending = slope > 0
            if ok and bool(descending.any()):
                ok = bool((fn[descending] - f0[descending] <= -armijo * t * slope[descending]).all())
            if ok:
                accepted = True
                break
            t *= decay
        if not accepted:
            prob.set(x0)
            break
        iterations += 1
    return OptimizeResult(f0, initial, stationarity, iterations, converged)


def _optimize_with(prob: _Problem, agg: Aggregator, optimizer: torch.optim.Optimizer, max_iter: int,
                   tol: float) -> OptimizeResult:
    initial: Optional[Tensor] = None
    stationarity = float("nan")
    converged = False
    is_mgda = isinstance(agg, MGDA) and agg.normalization == "none"
    steps = 0
    while steps < max_iter:
        optimizer.zero_grad(set_to_none=True)
        L = prob.losses()
        if initial is None:
            initial = L.detach()
        prob.counter.grad += 1
        _mtl_backward(L, prob.params, agg)
        if is_mgda:  # .grad holds exactly MGDA's min-norm vector: its squared norm is the stationarity
            d = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in prob.params])
            stationarity = float(d.double().pow(2).sum())
            if stationarity <= tol:
                converged = True
                break
        optimizer.step()
        steps += 1
    # after a step the objectives changed: evaluate them once more (a converged point was just evaluated)
    final = L.detach() if converged else prob.losses(grad=False).detach()
    return OptimizeResult(final, initial, stationarity, steps, converged)


# --------------------------------------------------------------------------------------------------
# ParetoExpand
# --------------------------------------------------------------------------------------------------


class Expansion(NamedTuple):
    """What :func:`pareto_expand` returns (``K`` directions at one point).

    Attributes:
        directions: ``(K, n)`` unit vectors (a zero row where the right-hand side or the solution
            vanished), in the parameters' dtype; step ``x + s * directions[j]``.
        predicted: ``(K, m)``: ``J v``, the first-order change of the objectives per unit step along
            each direction (Ma et al. section 4.3: :math:`f(x^* + s v) - f(x^*) \\approx s \\nabla f v`).
        alpha: ``(m,)`` the weights of Problem 3 at the point (the Hessian is :math:`\\sum_i \\alpha_i \\nabla^2 f_i`).
        beta: ``(K, m)`` the right-hand-side weights (``b_j = J^T beta_j``, minus ``sum(beta_j) c`` with the
            correction).
        losses: ``(m,)`` objectives at the point.
        stationarity: :math:`\\|c\\|^2`, the squared norm of the correction of Problem 5
            (:math:`c = J^\\top \\alpha`; 0 at a Pareto-stationary point).
        residuals: ``(K,)`` float64 on the CPU: relative MINRES residuals :math:`\\|b - Hv\\| / \\|b\\|` of
            the (unnormalized) solutions (``nan`` for ``method="gradient"`` or a zero right-hand side).
        info: the :class:`~torchmoo.ops.MinresInfo` of the batched solve (``None`` for ``"gradient"``).
    """

    directions: Tensor
    predicted: Tensor
    alpha: Tensor
    beta: Tensor
    losses: Tensor
    stationarity: float
    residuals: Tensor
    info: Optional[ops.MinresInfo]


def sample_beta(m: int, num: int, rhs: str = "normal", *, generator: Optional[torch.Generator] = None,
                dtype: torch.dtype = torch.float64) -> Tensor:
    """``num`` right-hand-side weight vectors ``beta`` of length ``m``: ``(num, m)`` in ``dtype``, on the CPU.

    ``rhs`` chooses the distribution (:data:`RHS_SAMPLERS`); ``generator`` the random source (default:
    torch's global generator).

    * ``"normal"``: :math:`\\beta \\sim N(0, I_m)` (supplement 2.2, MultiMNIST subset).
    * ``"simplex"``: uniform on the probability simplex (Dirichlet(1)): the right-hand side lies
      "between" the gradients (supplement 2.3, MultiMNIST and its variants).
    * ``"binary"``: a fair coin per objective, skipping all-zero and all-one labels (supplement 2.4,
      Census-Income and UTKFace): the right-hand side is the sum of a subset of the gradients. The
      ``2^m - 2`` label vectors are drawn without replacement (a fresh random order each time they
      are used up), so for ``m = 2`` and ``num = 2`` the two directions are ``e_1`` and ``e_2``.

    Raises:
        ValueError: ``m`` or ``num`` not an int ``>= 1``; an unknown ``rhs``; ``"binary"`` with ``m < 2``.
    """
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be an int >= 1, got {m!r}.")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be an int >= 1, got {num!r}.")
    if rhs == "normal":
        out = torch.randn(num, m, generator=generator, dtype=torch.float64)
    elif rhs == "simplex":
        e = -torch.log(torch.rand(num, m, generator=generator, dtype=torch.float64).clamp_min(1e-300))
        out = e / e.sum(1, keepdim=True)
    elif rhs == "binary":
        if m < 2:
            raise ValueError("rhs='binary' needs m >= 2 objectives (all-equal labels are skipped).")
        if m <= 12:
            codes = torch.arange(1, 2**m - 1)
            table = ((codes[:, None] >> torch.arange(m)) & 1).to(torch.float64)
            rows: List[Tensor] = []
            while len(rows) < num:
                perm = torch.randperm(table.shape[0], generator=generator)
                rows.extend(table[perm].unbind(0))
            out = torch.stack(rows[:num])
        else:
            rows = []
            while len(rows) < num:
                lab = (torch.rand(m, generator=generator) < 0.5).to(torch.float64)
                if 0 < float(lab.sum()) < m:
                    rows.append(lab)
            out = torch.stack(rows)
    else:
        raise ValueError(f"rhs must be one of {RHS_SAMPLERS} or a tensor of weights, got {rhs!r}.")
    return out.to(dtype)


def _check_beta(beta: Any, m: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    if not isinstance(beta, Tensor):
        try:
            beta = torch.as_tensor(beta, dtype=torch.float64)
        except Exception:
            raise TypeError(f"beta must be a tensor of shape (m,) or (K, m), got {type(beta).__name__}.") from None
    if beta.dim() == 1:
        beta = beta.unsqueeze(0)
    if beta.dim() != 2 or beta.shape[1] != m or beta.shape[0] == 0:
        raise ValueError(f"beta must have shape ({m},) or (K, {m}) with K >= 1, got {tuple(beta.shape)}.")
    if not beta.is_floating_point() and beta.dtype != torch.int64:
        raise TypeError(f"beta must be real, got {beta.dtype}.")
    beta = beta.to(dtype=dtype, device=device)
    if not bool(torch.isfinite(beta).all()):
        raise ValueError("beta must be finite.")
    return beta


def _score(predicted: Tensor, beta: Tensor, losses: Tensor, parent_losses: Optional[Tensor], sign: str) -> Tensor:
    """``(K,)``: how well each direction with first-order changes ``predicted`` (K, m) expands (> 0: it
    expands, < 0: it retracts) under the rule ``sign`` (not ``"none"``)."""
    if sign == "parent" or (sign == "auto" and parent_losses is not None):
        if parent_losses is None:
            raise ValueError("sign='parent' needs parent_losses (the objectives at the parent point).")
        return predicted @ (losses - parent_losses).to(predicted)  # moving on, away from the parent
    return -(predicted * beta.to(predicted)).sum(1)  # the beta-weighted objectives improve


def _orient(predicted: Tensor, beta: Tensor, losses: Tensor, parent_losses: Optional[Tensor], sign: str) -> Tensor:
    """``(K,)`` signs in {+1, -1} that make the directions expand rather than retract."""
    if sign == "none":
        return torch.ones(predicted.shape[0], dtype=predicted.dtype, device=predicted.device)
    score = _score(predicted, beta, losses, parent_losses, sign)
    return torch.where(score < 0, -1.0, 1.0).to(predicted.dtype)


def pareto_expand(
    objectives: Objectives,
    params: Params,
    *,
    num_directions: int = 1,
    beta: Optional[Tensor] = None,
    rhs: str = "normal",
    k: int = 50,
    tol: float = 1e-6,
    shift: float = 0.0,
    correction: bool = False,
    method: str = "tangent",
    perturbation: float = 0.1,
    sign: str = "auto",
    parent_losses: Optional[Tensor] = None,
    hessian_objectives: Optional[Objectives] = None,
    generator: Optional[torch.Generator] = None,
    counter: Optional[EvaluationCounter] = None,
) -> Expansion:
    r"""ParetoExpand: ``K`` exploration directions on the tangent plane of the Pareto set at the current point.

    1. ``losses`` and the Jacobian ``J`` (m, n) at the current parameters; :math:`\alpha` from the
       min-norm QP (Problem 3, :func:`torchmoo.ops.min_norm_simplex`) and the correction
       :math:`c = J^\top\alpha` (Problem 5, Proposition 4.1).
    2. ``beta`` (K, m): given, or sampled by ``rhs`` (:func:`sample_beta`); right-hand sides
       :math:`b_j = J^\top\beta_j` (Eq. 4), or :math:`(J - \mathbf{1}c^\top)^\top\beta_j` with
       ``correction=True`` (Eq. 6).
    3. ``k`` iterations of MINRES on :math:`(H - \text{shift}\, I)\, v_j = b_j`, :math:`H = \sum_i \alpha_i
       \nabla^2 f_i` applied by Hessian-vector products (:func:`torchmoo.autograd.hvp_operator` of
       :math:`\alpha^\top f`), all ``K`` systems in one batched :func:`torchmoo.ops.minres` (one batched
       product per iteration). ``shift=-0.1`` is the authors' "damping" 0.1 (their MultiMNIST code).
       The solve runs in the parameters' dtype, or in float32 when they are float16 / bfloat16 (each
       product computed in their dtype and cast to float32; the directions cast back at the end).
    4. Orientation (``sign``): ``v`` and ``-v`` both solve the system, and one of them retracts. With
       ``"parent"`` the predicted change :math:`J v` must point away from the parent's objectives
       (:math:`\langle Jv, f(x^*) - f(\text{parent})\rangle \ge 0`, section 4.3); with ``"beta"`` it must
       improve the ``beta``-weighted objectives (:math:`\beta^\top J v \le 0`: for ``m = 2`` and
       :math:`\beta = e_i`, objective ``i`` decreases); ``"auto"`` (default) is ``"parent"`` when
       ``parent_losses`` is given and ``"beta"`` otherwise; ``"none"`` keeps MINRES's sign.
    5. Normalization to unit length (Algorithm 1: ``v /= ||v||``).

    ``method="gradient"`` is the paper's WeightedSum expansion (supplement 2.1): no Hessian;
    :math:`v = -J^\top\alpha'` with perturbed weights :math:`\alpha' = \alpha \pm \epsilon(\beta - \bar\beta)`
    (clamped to the simplex, :math:`\epsilon` = ``perturbation``), i.e. one gradient step on a perturbed
    weighted sum, the sign of the perturbation chosen by the same rule.

    Args:
        objectives: closure returning the ``m >= 2`` objectives at the current parameters.
        params: the parameters (tensor, iterable of tensors or module); they are not moved.
        num_directions: ``K``, used when ``beta`` is not given.
        beta: ``(m,)`` or ``(K, m)`` right-hand-side weights, or ``None`` to sample them.
        rhs: sampler of ``beta`` (:data:`RHS_SAMPLERS`).
        k: MINRES iterations (Hessian-vector products per direction); the paper uses 50.
        tol: MINRES relative residual tolerance.
        shift: solve :math:`(H - \text{shift}\, I) v = b`.
        correction: use the corrected gradients of Problem 5 in the right-hand side.
        method: ``"tangent"`` (MINRES) or ``"gradient"`` (WeightedSum baseline).
        perturbation: :math:`\epsilon` of ``method="gradient"``.
        sign: :data:`SIGN_RULES`.
        parent_losses: ``(m,)`` objectives at the parent point (for ``sign="parent"``/``"auto"``).
        hessian_objectives: optional closure for the Hessian only (e.g. a fixed sub-batch, as the
            authors' code computes the gradient on the data set and the Hessian on one batch).
        generator: random source for ``beta``.
        counter: an :class:`EvaluationCounter` to add the evaluations to.

    Returns:
        :class:`Expansion`. The parameters are left where they were.

    Raises:
        TypeError: ``objectives`` or ``hessian_objectives`` not callable; ``beta`` not real.
        ValueError: fewer than 2 objectives, unknown ``rhs``/``sign``/``method``, ``k`` or
            ``num_directions`` not an int ``>= 1``, ``perturbation <= 0``, bad ``beta`` shape or non-finite
            ``beta``, ``parent_losses`` without ``m`` entries, ``sign="parent"`` without ``parent_losses``,
            non-finite objectives, objectives (or ``hessian_objectives``) that do not require grad, or
            ``hessian_objectives`` returning another number of objectives; the errors of
            :func:`torchmoo.ops.minres` (e.g. ``tol < 0``).
    """
    prob = _Problem(objectives, params, counter)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")
    if sign not in SIGN_RULES:
        raise ValueError(f"sign must be one of {SIGN_RULES}, got {sign!r}.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (MINRES iterations) must be an int >= 1, got {k!r}.")
    if isinstance(num_directions, bool) or not isinstance(num_directions, int) or num_directions < 1:
        raise ValueError(f"num_directions must be an int >= 1, got {num_directions!r}.")
    if hessian_objectives is not None and not callable(hessian_objectives):
        raise TypeError(f"hessian_objectives must be callable or None, got {type(hessian_objectives).__name__}.")
    if not isinstance(perturbation, (int, float)) or isinstance(perturbation, bool) or not perturbation > 0:
        raise ValueError(f"perturbation must be a positive number, got {perturbation!r}.")

    L = prob.losses()
    m = L.shape[0]
    if m < 2:
        raise ValueError(f"Pareto exploration needs at least 2 objectives, got {m}.")
    need_graph = method == "tangent" and hessian_objectives is None
    J = prob.jacobian(L, retain_graph=need_graph)
    dtype, device = J.dtype, J.device
    losses = L.detach()
    alpha = min_norm_weights(gram_matrix(J)).to(dtype)
    c = alpha @ J
    stationarity = float(c.double().pow(2).sum())
    if parent_losses is not None:
        # in the objectives' dtype: f(x*) - f(parent) is a small difference of large numbers, which float32
        # parameters' rounding would swamp when the objectives are computed in float64
        parent_losses = torch.as_tensor(parent_losses, dtype=losses.dtype, device=device).reshape(-1)
        if parent_losses.shape[0] != m:
            raise ValueError(f"parent_losses must have {m} entries, got {parent_losses.shape[0]}.")

    if beta is None:
        beta = sample_beta(m, num_directions, rhs, generator=generator, dtype=dtype).to(device)
    else:
        beta = _check_beta(beta, m, dtype, device)
    K = beta.shape[0]

    if method == "gradient":
        centered = beta - beta.mean(1, keepdim=True)
        cands = []
        for s in (1.0, -1.0):
            a = (alpha + s * perturbation * centered).clamp_min(0)
            a = a / a.sum(1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
            cands.append(-(a @ J))  # (K, n): one gradient step on the perturbed weighted sum
        if sign == "none":
            V = cands[0]
        else:  # the perturbation (+ or -) whose step expands more
            scores = [_score(v @ J.T, beta, losses, parent_losses, sign) / v.norm(dim=1).clamp_min(1e-300)
                      for v in cands]
            V = torch.where((scores[0] >= scores[1])[:, None], cands[0], cands[1])
        residuals = torch.full((K,), float("nan"), dtype=torch.float64)
        info = None
    else:
        # MINRES works in float32 or float64: the systems of a float16 / bfloat16 model are solved in float32
        # (right-hand sides from J in float32; each Hessian-vector product in the parameters' dtype, cast back)
        work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        Jw = J.to(work)
        B = beta.to(work) @ Jw
        if correction:
            B = B - beta.to(work).sum(1, keepdim=True) * (alpha.to(work) @ Jw)
        Lh = L  # the objectives whose alpha-weighted Hessian is applied
        if hessian_objectives is not None:
            Lh = _Problem(hessian_objectives, prob.params, prob.counter).losses()
            if Lh.shape[0] != m:
                raise ValueError(f"hessian_objectives returned {Lh.shape[0]} objectives, objectives {m}.")
            if not Lh.requires_grad:  # its Hessian would be 0: every direction would silently vanish
                raise ValueError(
                    "hessian_objectives do not require grad: the closure must compute them from the parameters."
                )
        with torch.enable_grad():  # under torch.no_grad() the product would have no graph, H would be 0
            weighted = alpha.to(Lh.dtype) @ Lh  # the objectives' dtype may differ from the parameters'
        prob.counter.grad += 1  # the weighted gradient with its graph
        hv = hvp_operator(weighted, prob.params)
        counter_ref = prob.counter

        def matvec(v: Tensor) -> Tensor:
            counter_ref.hvp += v.shape[0] if v.dim() == 2 else 1
            if work == dtype:
                return hv(v)
            # Each row scaled by a power of two to a largest entry in [0.5, 1) before it is rounded to
            # the parameters' dtype (float16 would flush the small entries of a Lanczos vector of small
            # norm to 0), and the product scaled back in float32 (H is linear: the scaling loses nothing).
            _, e = torch.frexp(v.abs().amax(-1, keepdim=True))
            return torch.ldexp(hv(torch.ldexp(v, -e)).to(work), e)

        V, info = ops.minres(matvec, B.contiguous(), max_iter=k, tol=tol, shift=shift)
        bn = B.double().norm(dim=1)
        last = info.residual_norms[:, -1]
        residuals = torch.where(bn > 0, last / bn.clamp_min(1e-300), torch.full_like(bn, float("nan"))).cpu()
        del hv
        P = V @ Jw.T
        s = _orient(P, beta, losses, parent_losses, sign)
        V = V * s[:, None]
    # normalized in the solve's dtype (the unnormalized solution may overflow float16), then cast to the
    # parameters' dtype
    norms = V.norm(dim=1, keepdim=True)
    V = torch.where(norms > 0, V / norms.clamp_min(torch.finfo(V.dtype).tiny), torch.zeros_like(V)).to(dtype)
    P = V @ J.T
    return Expansion(V.detach(), P.detach(), alpha.detach(), beta.detach(), losses, stationarity, residuals, info)


# --------------------------------------------------------------------------------------------------
# Algorithm 1
# --------------------------------------------------------------------------------------------------


@dataclass
class ExploredPoint:
    """One network (parameter vector) of Algorithm 1.

    Attributes:
        index: position in :attr:`ParetoExplorer.points` (or in :attr:`ParetoExplorer.rejected`).
        params: ``(n,)`` flattened parameters (detached copy).
        losses: ``(m,)`` objectives at ``params``.
        parent: index of the point it was expanded from (``None`` for the seed).
        stationarity: :math:`\\min_w\\|J^\\top w\\|^2` after ParetoOptimize (``nan`` if not computed).
        expanded_losses: ``(m,)`` objectives at ``parent + s v`` before ParetoOptimize (``None`` for the seed).
        predicted: ``(m,)`` the first-order prediction ``s J v`` of ``expanded_losses - parent.losses``.
        alpha: ``(m,)`` the weights of Problem 3, set when the point is expanded.
    """

    index: int
    params: Tensor
    losses: Tensor
    parent: Optional[int] = None
    stationarity: float = float("nan")
    expanded_losses: Optional[Tensor] = None
    predicted: Optional[Tensor] = None
    alpha: Optional[Tensor] = None

    def as_dict(self) -> Dict[str, Any]:
        """The fields as a dict (tensors are deep-copied), loadable with ``torch.load(weights_only=True)``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ExploredPoint":
        """The point of :meth:`as_dict` ``d`` (a ``TypeError`` for unknown or missing fields)."""
        return cls(**d)


def _module_buffers(model: Any) -> List[Tensor]:
    """The buffers of ``model`` when it is an ``nn.Module`` (none for tensors)."""
    return list(model.buffers()) if isinstance(model, torch.nn.Module) else []


def _save(buffers: List[Tensor]) -> List[Tensor]:
    return [b.detach().clone() for b in buffers]


@torch.no_grad()
def _restore(buffers: List[Tensor], saved: List[Tensor]) -> None:
    for b, v in zip(buffers, saved):
        b.copy_(v)


def _dominates(a: Tensor, b: Tensor) -> bool:
    """``a`` dominates ``b``: no worse in every objective and better in one (on ``a``'s device: a point
    loaded from a checkpoint keeps its objectives on the CPU)."""
    b = b.to(a.device)
    return bool((a <= b).all()) and bool((a < b).any())


class ParetoExplorer:
    r"""Algorithm 1 of Ma, Du & Matusik (efficient Pareto set exploration) and its continuous front.

    Starting from the current parameters of ``model`` (optimized first when ``optimize_seed``), the
    explorer keeps a queue of Pareto-stationary points. It pops one, computes ``K = num_children``
    directions with :func:`pareto_expand` (one batched MINRES of ``k`` iterations), steps ``step``
    along each, runs ParetoOptimize from there, and keeps the result unless a point already found
    dominates it or coincides with it (closer than ``1e-6 * step`` in parameter space); kept points
    join the queue. It stops when ``num_points`` new points are kept (the
    seed is not counted, as in the paper's pseudo-code) or the queue is empty.

    After :meth:`explore`, :meth:`front` builds the continuous parametrization of section 5 (convex
    hulls of each point and its children, stitched; a scalar ``t`` in [-1, 1] traverses the front of
    two objectives), :meth:`solution` gives the parameters at ``t``, :meth:`plot` draws it all.

    Args:
        model: the parameters to explore (an ``nn.Module``, a tensor or an iterable of tensors).
        objectives: closure returning the ``m`` objectives at the current parameters.
        k: MINRES iterations per expansion (the paper uses 50; ZDT2-variant 2).
        step: the step ``s`` along each unit direction.
        num_children: ``K``, directions per expanded point.
        num_points: ``N``, new points to collect.
        method: ``"tangent"`` or ``"gradient"`` (the WeightedSum expansion baseline).
        rhs, correction, shift, tol, sign, perturbation, hessian_objectives: as in :func:`pareto_expand`
            (``sign="parent"`` is refused: the seed has no parent; ``"auto"`` uses it for the other points).
        optimize: the ParetoOptimize, called as ``optimize(objectives, params, counter=counter)`` and
            returning an :class:`OptimizeResult`; default :func:`pareto_optimize` (MGDA with line search).
            ``functools.partial(pareto_optimize, max_iter=0)`` skips it (the expanded point is kept
            as is, as in the authors' MultiMNIST code).
        optimize_seed: run ``optimize`` on the starting point first (Algorithm 1's first line).
        seed: seed of the random stream of the right-hand sides.

    Raises:
        TypeError: ``objectives``, ``hessian_objectives`` or ``optimize`` not callable.
        ValueError: ``model`` without parameters; ``k`` or ``num_children`` not an int ``>= 1``;
            ``num_points`` not an int ``>= 0``; ``step`` not a positive number; an unknown ``method``,
            ``sign`` or ``rhs``; ``sign="parent"``; ``tol``, ``shift`` or ``perturbation`` not finite or out
            of range (``tol >= 0``, ``perturbation > 0``).

    Attributes:
        points: the kept :class:`ExploredPoint` (index 0 is the seed).
        rejected: children pruned because a kept point dominates them or coincides with them (or whose
            direction vanished: they carry the parent's parameters and objectives).
        counters: :class:`EvaluationCounter` per phase: ``"seed"``, ``"expand"``, ``"optimize"``.
        buffers: the buffers of ``model`` when it is a module. They are not explored (every point
            shares them) and :meth:`explore` and :meth:`front` restore them, e.g. batch-norm
            statistics that the closure updates in training mode.

    Example:
        >>> x = torch.tensor([-2.6, 1.0, 1.4], dtype=torch.float64, requires_grad=True)
        >>> zdt2 = torchmoo.problems.ZDT2Variant()
        >>> ex = ParetoExplorer(x, lambda: zdt2(x), k=2, step=0.1, num_children=2, num_points=10)
        >>> points = ex.explore()
        >>> front = ex.front()              # the stitched, continuous front
        >>> x_at = ex.solution(0.5)         # parameters at t = 0.5
    """

    def __init__(
        self,
        model: Params,
        objectives: Objectives,
        *,
        k: int = 50,
        step: float = 0.1,
        num_children: int = 2,
        num_points: int = 10,
        method: str = "tangent",
        rhs: str = "normal",
        correction: bool = False,
        shift: float = 0.0,
        tol: float = 1e-6,
        sign: str = "auto",
        perturbation: float = 0.1,
        hessian_objectives: Optional[Objectives] = None,
        optimize: Optional[Callable[..., OptimizeResult]] = None,
        optimize_seed: bool = True,
        seed: int = 0,
    ) -> None:
        if not callable(objectives):
            raise TypeError(f"objectives must be a callable of no argument, got {type(objectives).__name__}.")
        self.params = as_param_list(model, name="model")
        if not self.params:
            raise ValueError("model has no parameters to explore.")
        # a module's buffers (e.g. batch-norm statistics in training mode) change at every evaluation of
        # the closure; they are not explored, and explore() / front() put them back as they were
        self.buffers: List[Tensor] = _module_buffers(model)
        self.objectives = objectives
        for name, value in (("k", k), ("num_children", num_children)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 0:
            raise ValueError(f"num_points must be an int >= 0, got {num_points!r}.")
        if not isinstance(step, (int, float)) or isinstance(step, bool) or not (math.isfinite(step) and step > 0):
            raise ValueError(f"step must be a positive number, got {step!r}.")
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")
        if sign not in SIGN_RULES:
            raise ValueError(f"sign must be one of {SIGN_RULES}, got {sign!r}.")
        if sign == "parent":  # the seed's directions would have nothing to be oriented by
            raise ValueError(
                "sign='parent' cannot orient the seed's directions (the seed has no parent); use sign='auto', "
                "which orients every other point's directions away from its parent."
            )
        if rhs not in RHS_SAMPLERS:
            raise ValueError(f"rhs must be one of {RHS_SAMPLERS}, got {rhs!r}.")
        # checked here rather than at the first expansion, after a possibly long ParetoOptimize of the seed
        for name, value, lo in (("tol", tol, 0.0), ("shift", shift, -math.inf), ("perturbation", perturbation, 0.0)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}.")
            if value < lo or (name == "perturbation" and value == 0):
                raise ValueError(f"{name}={value} is out of range.")
        if hessian_objectives is not None and not callable(hessian_objectives):
            raise TypeError(f"hessian_objectives must be callable or None, got {type(hessian_objectives).__name__}.")
        if optimize is not None and not callable(optimize):
            raise TypeError(f"optimize must be callable or None, got {type(optimize).__name__}.")
        self.k, self.step, self.num_children, self.num_points = k, float(step), num_children, num_points
        self.method, self.rhs, self.correction, self.shift, self.tol = method, rhs, correction, shift, tol
        self.sign, self.perturbation, self.hessian_objectives = sign, perturbation, hessian_objectives
        self.optimize = optimize if optimize is not None else pareto_optimize
        self.optimize_seed = optimize_seed
        self.generator = torch.Generator().manual_seed(int(seed))
        self.points: List[ExploredPoint] = []
        self.rejected: List[ExploredPoint] = []
        self.counters: Dict[str, EvaluationCounter] = {
            "seed": EvaluationCounter(), "expand": EvaluationCounter(), "optimize": EvaluationCounter(),
        }
        self._queue: List[int] = []
        self._pending: Optional[Dict[str, Any]] = None
        self._front = None

    # ---- bookkeeping --------------------------------------------------------------------------
    @property
    def counter(self) -> EvaluationCounter:
        """All evaluations so far (the sum of :attr:`counters`)."""
        total = EvaluationCounter()
        for c in self.counters.values():
            total = total + c
        return total

    @property
    def finished(self) -> bool:
        """True when ``num_points`` new points are kept or nothing is left to expand."""
        return bool(self.points) and (
            len(self.points) - 1 >= self.num_points or (not self._queue and self._pending is None)
        )

    def _set(self, vec: Tensor) -> None:
        with torch.no_grad():
            for p, piece in zip(self.params, unflatten(vec, self.params)):
                p.copy_(piece)

    def _get(self) -> Tensor:
        return flatten(self.params).detach().clone()

    def _run_optimize(self, counter: EvaluationCounter) -> OptimizeResult:
        res = self.optimize(self.objectives, self.params, counter=counter)
        if not isinstance(res, OptimizeResult):
            raise TypeError(f"optimize must return an OptimizeResult, got {type(res).__name__}.")
        return res

    # ---- Algorithm 1 --------------------------------------------------------------------------
    def explore(self, num_points: Optional[int] = None, *,
                callback: Optional[Callable[["ParetoExplorer"], None]] = None) -> List[ExploredPoint]:
        """Run (or continue) Algorithm 1 until ``num_points`` new points are kept.

        Args:
            num_points: overrides the constructor's ``N`` (a larger value continues a finished run).
            callback: called with the explorer after the seed and after every child (kept or not),
                e.g. to save :meth:`state_dict` so that an interrupted run resumes where it stopped.

        Returns:
            :attr:`points`. The parameters of the model are left at the seed's values, its buffers as
            they were before the call.

        Raises:
            ValueError: ``num_points`` not an int ``>= 0``; the errors of :func:`pareto_expand` and of
                ``optimize`` (the state stays consistent: calling :meth:`explore` again continues).
            TypeError: ``callback`` not callable (checked before any work); ``optimize`` does not return an
                :class:`OptimizeResult`.
        """
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None, got {type(callback).__name__}.")
        if num_points is not None:
            if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 0:
                raise ValueError(f"num_points must be an int >= 0, got {num_points!r}.")
            self.num_points = num_points
        self._front = None
        saved_buffers = _save(self.buffers)
        start = self._get()
        # The state (queue, expansion in progress, random stream) only changes once a step is complete, so
        # that an exception (e.g. KeyboardInterrupt during a long ParetoOptimize) loses no point: explore()
        # or state_dict() afterwards continue with the interrupted expansion or child.
        try:
            if not self.points:
                if self.optimize_seed:
                    res = self._run_optimize(self.counters["seed"])
                    losses, stat = res.losses, res.stationarity
                else:
                    losses = _Problem(self.objectives, self.params, self.counters["seed"]).losses(grad=False).detach()
                    stat = float("nan")
                self.points.append(ExploredPoint(0, self._get(), losses.detach().clone(), None, stat))
                self._queue = [0]
                if callback is not None:
                    callback(self)
            while len(self.points) - 1 < self.num_points:
                if self._pending is None:
                    if not self._queue:
                        break
                    idx = self._queue[0]
                    node = self.points[idx]
                    self._set(node.params)
                    parent_losses = self.points[node.parent].losses if node.parent is not None else None
                    random_state = self.generator.get_state()
                    try:
                        exp = pareto_expand(
                            self.objectives, self.params, num_directions=self.num_children, rhs=self.rhs, k=self.k,
                            tol=self.tol, shift=self.shift, correction=self.correction, method=self.method,
                            perturbation=self.perturbation, sign=self.sign, parent_losses=parent_losses,
                            hessian_objectives=self.hessian_objectives, generator=self.generator,
                            counter=self.counters["expand"],
                        )
                    except BaseException:
                        self.generator.set_state(random_state)  # the retry draws the same right-hand sides
                        raise
                    self._queue.pop(0)
                    node.alpha = exp.alpha.detach().clone()
                    self._pending = {"node": idx, "directions": exp.directions, "predicted": exp.predicted, "next": 0}
                pend = self._pending
                j = pend["next"]
                parent = self.points[pend["node"]]
                v = pend["directions"][j]
                if bool((v == 0).all()):  # a vanished right-hand side: nothing to explore that way
                    self.rejected.append(ExploredPoint(len(self.rejected), parent.params.clone(),
                                                       parent.losses.clone(), parent.index))
                else:
                    self._set(parent.params + self.step * v)
                    res = self._run_optimize(self.counters["optimize"])
                    child = ExploredPoint(
                        len(self.points), self._get(), res.losses.detach().clone(), parent.index, res.stationarity,
                        res.initial_losses.detach().clone(), (self.step * pend["predicted"][j]).detach().clone(),
                    )
                    # pruned: dominated by a kept point, or a copy of one (closer than 1e-6 step: two
                    # directions that coincide, as the tangents of a one-dimensional Pareto set can)
                    close = 1e-6 * self.step
                    if any(_dominates(p.losses, child.losses) or float((p.params - child.params).norm()) <= close
                           for p in self.points):
                        child.index = len(self.rejected)
                        self.rejected.append(child)
                    else:
                        self.points.append(child)
                        self._queue.append(child.index)
                pend["next"] = j + 1
                if pend["next"] >= pend["directions"].shape[0]:
                    self._pending = None
                if callback is not None:
                    callback(self)
        finally:
            # the seed (or, if the seed's ParetoOptimize was interrupted, the starting point) and the buffers
            self._set(self.points[0].params if self.points else start)
            _restore(self.buffers, saved_buffers)
        return self.points

    # ---- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything :meth:`explore` needs to continue exactly: points, queue, the expansion in
        progress, counters and the random state (tensors, numbers, strings: ``torch.save``-able and
        loadable with ``weights_only=True``)."""
        return {
            "points": [p.as_dict() for p in self.points],
            "rejected": [p.as_dict() for p in self.rejected],
            "queue": list(self._queue),
            "pending": dict(self._pending) if self._pending is not None else None,
            "counters": {k: c.as_dict() for k, c in self.counters.items()},
            "generator": self.generator.get_state(),
            "num_points": self.num_points,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores a :meth:`state_dict` (the model's parameters are set to the seed's).

        Tensors loaded on the CPU are moved to the model's device.

        Raises:
            ValueError: ``state`` is not a ParetoExplorer state dict, or holds another number of
                parameters than the model.
        """
        try:
            points = [ExploredPoint.from_dict(d) for d in state["points"]]
            rejected = [ExploredPoint.from_dict(d) for d in state["rejected"]]
            queue = [int(i) for i in state["queue"]]
            pending = dict(state["pending"]) if state["pending"] is not None else None
            if pending is not None:  # the expansion in progress: its directions, predictions and position
                pending = {key: pending[key] for key in ("node", "directions", "predicted", "next")}
            counters = {k: EvaluationCounter(**v) for k, v in state["counters"].items()}
            generator = state["generator"]
            num_points = int(state["num_points"])
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"not a ParetoExplorer state_dict ({type(err).__name__}: {err}).") from None
        n = sum(p.numel() for p in self.params)
        if points and points[0].params.numel() != n:
            raise ValueError(f"the state holds {points[0].params.numel()} parameters, the model has {n}.")
        # a checkpoint is loaded on the CPU: every tensor of the points and of the expansion in progress
        # goes back to the model's device, where the new points are made (the random state stays with
        # the CPU generator)
        device = self.params[0].device if self.params else torch.device("cpu")
        for p in points + rejected:
            for f in dataclasses.fields(p):
                if isinstance(getattr(p, f.name), Tensor):
                    setattr(p, f.name, getattr(p, f.name).to(device))
        if pending is not None:
            pending["directions"] = pending["directions"].to(device)
            pending["predicted"] = pending["predicted"].to(device)
        self.generator.set_state(generator)
        self.points, self.rejected, self._queue, self._pending = points, rejected, queue, pending
        self.counters, self.num_points = counters, num_points
        self._front = None
        if self.points:
            self._set(self.points[0].params)

    # ---- continuous parametrization -------------------------------------------------------------
    def children(self, index: int) -> List[int]:
        """Indices of the kept points expanded from point ``index``."""
        return [p.index for p in self.points if p.parent == index]

    def family(self, index: int) -> ConvexHullFamily:
        """The convex hull of point ``index`` and its children (Eq. 7), a
        :class:`~torchmoo.methods.continuous_front.ConvexHullFamily` (center ``(n,)``, ``K`` children).

        Raises:
            ValueError: ``index`` out of range, or point ``index`` has no kept child.
        """
        from torchmoo.methods.continuous_front import ConvexHullFamily

        if not 0 <= index < len(self.points):
            raise ValueError(f"index {index} is out of range ({len(self.points)} points).")
        kids = self.children(index)
        if not kids:
            raise ValueError(f"point {index} has no kept children: its family is the point itself.")
        return ConvexHullFamily(self.points[index].params, torch.stack([self.points[i].params for i in kids]))

    def front(self, *, objectives: Optional[Objectives] = None, resolution: int = 8) -> ContinuousFront:
        """The stitched continuous front of this exploration
        (:func:`torchmoo.methods.continuous_front.stitch` of this explorer alone); kept for
        :meth:`solution`. ``objectives`` evaluates the samples (default: the exploration's closure,
        e.g. pass test losses); ``resolution``: steps per parent -> child segment (``resolution - 1``
        samples between its ends).

        Raises:
            ValueError: nothing explored yet, ``resolution`` not an int ``>= 1``, not exactly two
                objectives, or non-finite objectives at a sample.
        """
        from torchmoo.methods.continuous_front import stitch

        self._front = stitch([self], objectives=objectives, resolution=resolution)
        return self._front

    def solution(self, t: float) -> List[Tensor]:
        """The parameters at ``t`` in [-1, 1] on the last :meth:`front` (built with defaults if
        none), as tensors shaped like the model's parameters. ``t = -1`` favors the first objective.

        Raises:
            ValueError: ``t`` is not a number in [-1, 1]; the errors of :meth:`front`.
        """
        if self._front is None:
            self.front()
        return unflatten(self._front.solution(t), self.params)

    def load_solution(self, t: float) -> None:
        """Writes :meth:`solution` ``(t)`` into the model's parameters."""
        with torch.no_grad():
            for p, v in zip(self.params, self.solution(t)):
                p.copy_(v)

    def plot(self, ax: Optional[Axes] = None, *, front: bool = True, reference: Optional[Tensor] = None,
             objectives_labels: Sequence[str] = ("f1", "f2")) -> Figure:
        """Draws the exploration in objective space (two objectives): seed (star), kept points with an
        arrow from their parent through the expanded point, rejected points (grey), and the
        continuous front colored by ``t`` (when ``front``). ``reference``: an ``(p, 2)`` curve to
        draw (e.g. an analytic Pareto front). ``ax``: the matplotlib axes to draw on (default: a new
        figure). Returns the matplotlib figure (matplotlib is imported on first use).

        Raises:
            ValueError: nothing explored yet, or not two objectives.
        """
        from torchmoo.methods.continuous_front import plot_exploration

        fr = None
        if front and len(self.points) > 1 and self.points[0].losses.numel() == 2:  # else plot_exploration raises
            fr = self._front if self._front is not None else self.front()
        return plot_exploration([self], fr, ax=ax, reference=reference, labels=objectives_labels)


def pareto_explore(objectives: Objectives, params: Params, **kwargs: Any) -> List[ExploredPoint]:
    """Algorithm 1 as a function: ``ParetoExplorer(params, objectives, **kwargs).explore()``.

    ``kwargs`` are the keyword arguments of :class:`ParetoExplorer` (``k``, ``step``, ``num_children``,
    ``num_points``, ...). Returns the kept :class:`ExploredPoint` list (index 0 is the seed); the
    parameters are left at the seed's values. Raises as :class:`ParetoExplorer` and
    :meth:`ParetoExplorer.explore`.
    """
    return ParetoExplorer(params, objectives, **kwargs).explore()
