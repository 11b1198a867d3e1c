r"""PSST: Pareto self-supervised training for few-shot learning (Chen, Ge, Zhan, Huang & Wang).

A few-shot learner (a feature extractor with a cosine classifier trained on base classes, supplement
C, Eq. 5-6) is trained together with self-supervised auxiliary tasks (rotation prediction, Eq. 8;
relative patch location, Eq. 9). Instead of one fixed weighting of the losses (Eq. 7), PSST splits
the objective space into *preference regions* and finds one Pareto solution inside each:

1. The best-overall solution :math:`\theta^*_{\pi_0}` (the minimizer of :math:`\sum_m L_m`) gives the
   angle :math:`\pi_0` of its loss vector with the main-task axis :math:`e_1`
   (:math:`\cos\pi_0 = L_1/\|L\|` with one auxiliary task, end of A.2). The sector
   :math:`[\pi_0, \pi/2]`, where the main task is relatively better than at :math:`\theta^*_{\pi_0}`
   (Lemma 2), is split evenly by the preference vectors :math:`u_i = (\cos\pi_i, \sin\pi_i)`,
   :math:`\pi_i = \frac{i}{K}(\frac{\pi}{2} - \pi_0) + \pi_0` (Eq. 1): :func:`preference_vectors`,
   :func:`angular_regions`. With several auxiliary tasks the main task is paired with each of them
   (A.2: "dividing multi-dimensional space is equivalent to dividing multiple two-dimensional
   spaces"), or the space is partitioned by the index sets ``(U, V)`` of A.3 (Eq. 2):
   :func:`partition_subsets`, :func:`partition_regions`.
2. In each region the sub-problem of A.4 is solved by a descent method: the direction of Eq. 3
   (A.5) decreases every objective and every :math:`\epsilon`-active constraint at once; its dual
   (Eq. 4) is a QP over the simplex on the objective gradients and the active constraint gradients,
   solved exactly by :func:`torchmoo.ops.min_norm_simplex`. The constraints are functions of the
   loss vector, so a constraint's gradient is :math:`\nabla h = \sum_i \frac{\partial h}{\partial
   L_i}\nabla L_i = a^\top J` (``a`` by autograd on the ``m`` loss values): the QP's Gram matrix is
   :math:`B\,(JJ^\top)B^\top` with :math:`B = [I; A_{\text{active}}]`, so :class:`PSST` is a Gram-based
   aggregator for :func:`torchmoo.backward` and never forms a constraint gradient.
3. Around a solution, the Pareto set is explored along tangent directions (A.6 / D.2:
   :math:`H\,d\theta/dx = \nabla L^\top\beta`, MINRES over Hessian-vector products):
   :func:`explore_solution`, on top of :func:`torchmoo.methods.pareto_expand`.

The self-supervised label generators (:func:`rotate_batch`, :func:`patch_grid`,
:func:`patch_pairs`), the task losses (:func:`task_losses`), the training routine of B.3
(:class:`FewShotTrainer`) and the few-shot evaluation of section C (:func:`extract_features`,
:func:`fewshot_accuracy`) complete the method.

Conventions: objectives are numbered from 0 here; objective 0 is the main (few-shot classification)
task, the paper's :math:`L_1`, and objectives ``1..M-1`` are the auxiliary tasks (the paper's
:math:`\{2, \dots, M\}`). Every objective is assumed non-negative (as A.3 does).
"""

from __future__ import annotations

import itertools
import math
import numbers
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchmoo import ops
from torchmoo.autograd import Params, as_param_list, flatten
from torchmoo.methods.aggregator import Aggregator, check_gram, gram_matrix
from torchmoo.methods.pareto_exploration import Objectives, pareto_expand
from torchmoo.training import backward as _mtl_backward

__all__ = [
    "PreferenceVectors",
    "initial_angles",
    "preference_vectors",
    "PreferenceRegion",
    "AngularRegion",
    "PartitionRegion",
    "angular_regions",
    "partition_subsets",
    "partition_regions",
    "PSSTStep",
    "PSSTDirection",
    "psst_weights",
    "psst_direction",
    "PSST",
    "FEASIBILITY_MODES",
    "PSSTExploration",
    "explore_solution",
    "assign_flat",
    "AUX_TASKS",
    "rotate_batch",
    "patch_grid",
    "patch_pairs",
    "task_losses",
    "evaluate_losses",
    "FewShotTrainer",
    "FewShotAccuracy",
    "extract_features",
    "fewshot_accuracy",
]

# --------------------------------------------------------------------------------------------------
# Preference vectors (A.2) and the (U, V) partition (A.3)
# --------------------------------------------------------------------------------------------------


def _check_loss_vector(losses: object, name: str = "losses") -> Tensor:
    """A finite, non-negative ``(M,)`` float64 copy with ``M >= 2``."""
    if not isinstance(losses, Tensor):
        try:
            losses = torch.as_tensor(losses, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a tensor or a sequence of numbers, got {type(losses).__name__}.") from None
    if not (losses.is_floating_point() or losses.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold real numbers, got dtype {losses.dtype}.")
    L = losses.detach().to(torch.float64).cpu()
    if L.dim() != 1 or L.shape[0] < 2:
        raise ValueError(
            f"{name} must be a loss vector of shape (M,) with M >= 2 (the main task and at least one auxiliary "
            f"task), got shape {tuple(L.shape)}."
        )
    if not bool(torch.isfinite(L).all()):
        raise ValueError(f"{name} must be finite, got {L.tolist()}.")
    if bool((L < 0).any()):
        raise ValueError(f"{name} must be non-negative (PSST's construction assumes losses >= 0), got {L.tolist()}.")
    return L


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    return value


def _pair_cosines(L: Tensor) -> Tensor:
    r""":math:`\cos` of the angle between :math:`e_1` and the projection of ``L`` (..., M) onto the plane
    :math:`(e_1, e_m)`, for ``m = 1..M-1``: ``L_0 / sqrt(L_0^2 + L_m^2)``, shape ``(..., M-1)``.

    For ``M = 2`` this is A.2's one-auxiliary-task formula :math:`e_1 L / \|L\|`; for ``M = 3`` the two
    values are A.2's :math:`e_1 L / \|T_m L\|` (:math:`T_m L` zeroes component ``m``, leaving the plane
    of the main task and the other auxiliary task). For ``M >= 4``, :math:`T_m L` keeps ``M - 1``
    components and is no plane; the pairs (main, ``m``) of A.2's text are used instead."""
    main = L[..., :1]
    norm = torch.sqrt(main * main + L[..., 1:] * L[..., 1:])
    return main / norm.clamp_min(torch.finfo(L.dtype).tiny)


class PreferenceVectors(NamedTuple):
    """The preference vectors of A.2 for each pair (main task, auxiliary task ``m``), ``m = 1..M-1``.

    Attributes:
        pi0: ``(M-1,)`` the angle :math:`\\pi_0` (radians) of the best-overall loss vector with :math:`e_1`
            in each pair's plane.
        angles: ``(M-1, K+1)`` :math:`\\pi_0, \\pi_1, \\dots, \\pi_K` (Eq. 1; :math:`\\pi_K = \\pi/2`).
        vectors: ``(M-1, K+1, 2)`` the unit vectors :math:`u_i = (\\cos\\pi_i, \\sin\\pi_i)` (``u_0`` is the
            direction of the best-overall loss vector).
    """

    pi0: Tensor
    angles: Tensor
    vectors: Tensor


def initial_angles(best_losses: Union[Tensor, Sequence[float]]) -> Tensor:
    r""":math:`\pi_0` of A.2 for each auxiliary task: :math:`\arccos(L_1 / \sqrt{L_1^2 + L_m^2})` of the
    best-overall solution's loss vector (the one that minimizes :math:`\sum_m L_m`).

    Args:
        best_losses: ``(M,)`` non-negative losses, main task first, ``M >= 2``.

    Returns:
        ``(M-1,)`` float64 angles in :math:`[0, \pi/2)` (radians), on the CPU.

    Raises:
        TypeError: ``best_losses`` is not a tensor or sequence of real numbers.
        ValueError: not ``(M,)`` with ``M >= 2``, not finite, negative, or a main-task loss that is 0 (or
            negligible next to an auxiliary loss: the sector would be empty).
    """
    L = _check_loss_vector(best_losses, "best_losses")
    if float(L[0]) == 0.0:
        raise ValueError(
            "best_losses[0] (the main task's loss) is 0: then pi_0 = pi/2 and the sector [pi_0, pi/2] that the "
            "preference vectors divide is empty."
        )
    pi0 = torch.arccos(_pair_cosines(L).clamp(-1.0, 1.0))
    empty = pi0 >= math.pi / 2
    if bool(empty.any()):
        # L_0 / L_m below about 1e-16: cos(pi_0) rounds to 0, the sector [pi_0, pi/2] to a single ray and
        # every region to zero width, the same degenerate case as L_0 = 0
        m = int(torch.nonzero(empty)[0]) + 1
        raise ValueError(
            f"best_losses[0] = {float(L[0]):.3g} is negligible next to best_losses[{m}] = {float(L[m]):.3g}: "
            "pi_0 rounds to pi/2 and the sector [pi_0, pi/2] that the preference vectors divide is empty."
        )
    return pi0


def preference_vectors(best_losses: Union[Tensor, Sequence[float]], num_regions: int) -> PreferenceVectors:
    r"""The preference vectors :math:`u_0, \dots, u_K` of A.2 (Eq. 1) for each (main, auxiliary) pair.

    :math:`\pi_i = \frac{i}{K}(\frac{\pi}{2} - \pi_0) + \pi_0`, ``i = 0..K``: the sector between the
    best-overall loss vector and the auxiliary axis, where the main task does relatively better than at
    the best-overall solution (Lemma 2), split into ``K`` equal angles.

    Args:
        best_losses: ``(M,)`` losses of the best-overall solution, main task first.
        num_regions: ``K >= 1``.

    Returns:
        :class:`PreferenceVectors` (float64, on the CPU).

    Raises:
        ValueError: ``num_regions`` not an int ``>= 1``; the errors of :func:`initial_angles`.

    Example:
        >>> pv = preference_vectors([0.5, 0.5], 3)     # pi_0 = 45 degrees
        >>> torch.rad2deg(pv.angles)                   # [[45, 60, 75, 90]]
    """
    K = _check_count("num_regions", num_regions)
    pi0 = initial_angles(best_losses)
    steps = torch.arange(K + 1, dtype=torch.float64) / K
    angles = pi0[:, None] + steps[None, :] * (math.pi / 2 - pi0[:, None])
    angles[:, -1] = math.pi / 2  # exactly, not up to rounding
    vectors = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    return PreferenceVectors(pi0, angles, vectors)


class PreferenceRegion:
    r"""A region of the objective space given by constraints :math:`h_j(L) \le 0` on the loss vector.

    Subclasses define :meth:`constraints`, a differentiable torch function of the ``(M,)`` loss vector.
    :meth:`jacobian` differentiates it with autograd (in float64): the constraint gradients in
    parameter space are then ``A @ J`` (chain rule through the loss vector).
    """

    num_tasks: int

    def constraints(self, losses: Tensor) -> Tensor:
        """The ``(k,)`` constraint values at the loss vector ``losses`` ``(M,)`` (``<= 0`` inside)."""
        raise NotImplementedError

    def constraint_names(self) -> List[str]:
        """One readable name per constraint (for diagnostics)."""
        raise NotImplementedError

    def _check(self, losses: object) -> Tensor:
        if not isinstance(losses, Tensor):
            losses = torch.as_tensor(losses, dtype=torch.float64)
        if losses.dim() != 1 or losses.shape[0] != self.num_tasks:
            raise ValueError(
                f"{type(self).__name__} is a region for {self.num_tasks} objectives; got losses of shape "
                f"{tuple(losses.shape)}."
            )
        if not losses.is_floating_point():
            losses = losses.to(torch.float64)
        if not bool(torch.isfinite(losses.detach()).all()):
            raise ValueError(f"losses must be finite, got {losses.detach().tolist()}.")
        return losses

    def jacobian(self, losses: Tensor) -> Tuple[Tensor, Tensor]:
        """Constraint values ``(k,)`` and their derivatives ``A`` ``(k, M)`` with respect to the losses,
        by autograd, in float64 on the CPU."""
        L = self._check(losses).detach().to(device="cpu", dtype=torch.float64).requires_grad_(True)
        with torch.enable_grad():
            values = self.constraints(L)
            rows = [torch.autograd.grad(values[j], L, retain_graph=True)[0] for j in range(values.shape[0])]
        A = torch.stack(rows) if rows else L.new_zeros(0, self.num_tasks)
        return values.detach(), A.detach()

    def contains(self, losses: Union[Tensor, Sequence[float]], tol: float = 0.0) -> bool:
        """Whether every constraint is ``<= tol`` at ``losses``."""
        L = self._check(losses).detach().to(device="cpu", dtype=torch.float64)
        return bool((self.constraints(L) <= tol).all())


class AngularRegion(PreferenceRegion):
    r"""The region between two preference vectors in each (main, auxiliary) plane (A.4):
    :math:`\text{lower}_m \le \angle(e_1, P_m L) \le \text{upper}_m`, written as the cosine constraints

    .. math:: h^Q_m = \cos(\text{upper}_m) - c_m(L) \le 0, \qquad h^R_m = c_m(L) - \cos(\text{lower}_m) \le 0,

    with :math:`c_m(L) = L_1/\sqrt{L_1^2 + L_m^2}`. A.4 writes :math:`u_i e_1^\top \le e_1 L/\|L\| \le
    u_{i+1} e_1^\top`, which is empty as printed (:math:`\cos\pi_i > \cos\pi_{i+1}`); the region between
    :math:`u_i` and :math:`u_{i+1}` is :math:`\cos\pi_{i+1} \le c \le \cos\pi_i`. ``2 (M-1)`` constraints: the ``Q``
    (upper angle) ones first, then the ``R`` (lower angle) ones.

    Args:
        lower: ``(M-1,)`` (or a number for ``M = 2``) lower angles in radians.
        upper: ``(M-1,)`` (or a number) upper angles, ``0 <= lower <= upper <= pi/2``.

    Raises:
        ValueError: ``lower`` and ``upper`` of different sizes or empty, not finite, or not
            ``0 <= lower <= upper <= pi/2``.
    """

    def __init__(
        self, lower: Union[Tensor, float, Sequence[float]], upper: Union[Tensor, float, Sequence[float]]
    ) -> None:
        lo = torch.as_tensor(lower, dtype=torch.float64).reshape(-1).clone()
        hi = torch.as_tensor(upper, dtype=torch.float64).reshape(-1).clone()
        if lo.shape != hi.shape or lo.numel() == 0:
            raise ValueError(
                f"lower and upper must have one angle per auxiliary task each, got {lo.numel()} and {hi.numel()}."
            )
        if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise ValueError("lower and upper must be finite angles (radians).")
        eps = 1e-12
        if bool((lo < -eps).any() or (hi > math.pi / 2 + eps).any() or (lo > hi).any()):
            raise ValueError(
                f"the angles must satisfy 0 <= lower <= upper <= pi/2 (radians), got lower={lo.tolist()}, "
                f"upper={hi.tolist()}."
            )
        self.lower, self.upper = lo.clamp(0, math.pi / 2), hi.clamp(0, math.pi / 2)
        self.num_tasks = lo.numel() + 1
        self._cos_lo, self._cos_hi = torch.cos(self.lower), torch.cos(self.upper)

    def constraints(self, losses: Tensor) -> Tensor:
        """The ``2 (M-1)`` values ``[h^Q, h^R]`` at ``losses`` ``(M,)`` (``<= 0`` inside), differentiable."""
        c = _pair_cosines(losses)
        return torch.cat([self._cos_hi.to(c) - c, c - self._cos_lo.to(c)])

    def constraint_names(self) -> List[str]:
        """``"angle(L0, Lm) <= upper"`` for each ``m``, then ``"angle(L0, Lm) >= lower"``."""
        aux = range(1, self.num_tasks)
        return [f"angle(L0, L{m}) <= upper" for m in aux] + [f"angle(L0, L{m}) >= lower" for m in aux]

    def widths(self) -> Tensor:
        """``(M-1,)`` cosine widths ``cos(lower) - cos(upper)`` of the region (the scale of its constraints)."""
        return self._cos_lo - self._cos_hi

    def angles(self, losses: Union[Tensor, Sequence[float]]) -> Tensor:
        """``(M-1,)`` angles (radians) of ``losses`` with :math:`e_1` in each pair's plane."""
        L = self._check(losses).detach().to(device="cpu", dtype=torch.float64)
        return torch.arccos(_pair_cosines(L).clamp(-1.0, 1.0))

    def __repr__(self) -> str:
        deg = lambda t: [round(math.degrees(v), 3) for v in t.tolist()]  # noqa: E731
        return f"AngularRegion(lower={deg(self.lower)} deg, upper={deg(self.upper)} deg)"


def angular_regions(best_losses: Union[Tensor, Sequence[float]], num_regions: int) -> List[AngularRegion]:
    r"""The preference regions of A.2 / A.4 between consecutive preference vectors (Eq. 1).

    For ``M = 2`` (one auxiliary task) region ``i`` (``i = 1..K``) is :math:`[\pi_{i-1}, \pi_i]`. With
    ``M - 1 > 1`` auxiliary tasks each (main, auxiliary) plane is split the same way and the regions
    are all combinations: ``K ** (M-1)`` regions, the last pair's index varying fastest.

    Args:
        best_losses: ``(M,)`` losses of the best-overall solution, main task first.
        num_regions: ``K >= 1`` (per pair).

    Returns:
        A list of :class:`AngularRegion`.

    Raises:
        ValueError: as :func:`preference_vectors`.
    """
    pv = preference_vectors(best_losses, num_regions)
    K = pv.angles.shape[1] - 1
    regions = []
    for combo in itertools.product(range(K), repeat=pv.angles.shape[0]):
        idx = torch.tensor(combo)
        rows = torch.arange(pv.angles.shape[0])
        regions.append(AngularRegion(pv.angles[rows, idx], pv.angles[rows, idx + 1]))
    return regions


def partition_subsets(num_tasks: int) -> List[Tuple[Tuple[int, ...], Tuple[int, ...]]]:
    r"""Every pair ``(U, V)`` of A.3: ``U`` a non-empty subset of the auxiliary tasks ``{1..M-1}`` and
    ``V`` its complement, ``2 ** (M-1) - 1`` pairs (ordered by the size of ``U``, then lexicographically).

    Args:
        num_tasks: ``M >= 2`` (main task included).

    Returns:
        A list of ``(U, V)`` pairs of sorted index tuples.

    Raises:
        ValueError: ``num_tasks`` is not an int ``>= 2``.
    """
    M = _check_count("num_tasks", num_tasks)
    if M < 2:
        raise ValueError(f"num_tasks must be >= 2 (the main task and at least one auxiliary task), got {M}.")
    aux = tuple(range(1, M))
    out = []
    for size in range(1, M):
        for U in itertools.combinations(aux, size):
            out.append((U, tuple(m for m in aux if m not in U)))
    return out


class PartitionRegion(PreferenceRegion):
    r"""A region of A.3 (Eq. 2) for an index set ``U`` and :math:`\rho_0 = \rho(\theta^*_{\pi_0})`,
    :math:`\rho = L_1 / \sum_{m \ge 2} L_m`:

    .. math:: \frac{L_1}{\rho_0} - \sum_{m \ge 2} L_m \le 0, \qquad
              \frac{L_1}{(M-1)\rho_0} - L_m \le 0 \ (m \in U), \qquad
              L_m - \frac{L_1}{(M-1)\rho_0} \le 0 \ (m \in V).

    (The paper's strict inequality for ``V`` is closed here: descent methods need closed sets.)
    Constraints in this order: the first, then ``U`` in increasing order, then ``V``.

    Args:
        U: the auxiliary tasks (indices in ``1..M-1``) that do worse than the scaled main task.
        rho0: :math:`\rho_0 > 0`.
        num_tasks: ``M``.

    Raises:
        ValueError: ``num_tasks`` not an int ``>= 2``; ``U`` empty, with repeats or outside ``1..M-1``;
            ``rho0`` not positive and finite.
    """

    def __init__(self, U: Sequence[int], rho0: float, num_tasks: int) -> None:
        M = _check_count("num_tasks", num_tasks)
        if M < 2:
            raise ValueError(f"num_tasks must be >= 2, got {M}.")
        U = tuple(int(u) for u in U)
        if not U or len(set(U)) != len(U) or any(u < 1 or u >= M for u in U):
            raise ValueError(f"U must be a non-empty set of distinct auxiliary tasks in 1..{M - 1}, got {U}.")
        rho0 = float(rho0)
        if not math.isfinite(rho0) or rho0 <= 0:
            raise ValueError(f"rho0 must be a positive finite number, got {rho0}.")
        self.U = tuple(sorted(U))
        self.V = tuple(m for m in range(1, M) if m not in self.U)
        self.rho0, self.num_tasks = rho0, M

    def constraints(self, losses: Tensor) -> Tensor:
        """The ``M`` values of Eq. 2 at ``losses`` ``(M,)`` (``<= 0`` inside), differentiable."""
        M, r = self.num_tasks, self.rho0
        scaled = losses[0] / ((M - 1) * r)
        first = losses[0] / r - losses[1:].sum()
        parts = [first.reshape(1)]
        if self.U:
            parts.append(scaled - losses[list(self.U)])
        if self.V:
            parts.append(losses[list(self.V)] - scaled)
        return torch.cat(parts)

    def constraint_names(self) -> List[str]:
        """One readable name per constraint, in the order of :meth:`constraints`."""
        return (["L0 / rho0 <= sum_m Lm"] + [f"L0 / ((M-1) rho0) <= L{m}" for m in self.U]
                + [f"L{m} <= L0 / ((M-1) rho0)" for m in self.V])

    def __repr__(self) -> str:
        return f"PartitionRegion(U={self.U}, V={self.V}, rho0={self.rho0:.6g})"


def partition_regions(best_losses: Union[Tensor, Sequence[float]]) -> List[PartitionRegion]:
    r"""The regions of A.3, one per ``(U, V)`` of :func:`partition_subsets`, with
    :math:`\rho_0 = L_1 / \sum_{m \ge 2} L_m` of the best-overall solution.

    For ``M = 2`` there is one region, :math:`\rho \le \rho_0` (the whole sector :math:`[\pi_0, \pi/2]`,
    as A.3 remarks); use :func:`angular_regions` to divide it.

    Args:
        best_losses: ``(M,)`` losses of the best-overall solution, main task first.

    Returns:
        ``2 ** (M-1) - 1`` :class:`PartitionRegion` objects, in the order of :func:`partition_subsets`.

    Raises:
        TypeError / ValueError: as :func:`initial_angles`; a zero main-task loss or auxiliary sum.
    """
    L = _check_loss_vector(best_losses, "best_losses")
    if float(L[0]) == 0.0 or float(L[1:].sum()) == 0.0:
        raise ValueError(
            f"rho0 = L0 / sum(L1..) needs a positive main-task loss and a positive auxiliary sum, got {L.tolist()}."
        )
    rho0 = float(L[0] / L[1:].sum())
    return [PartitionRegion(U, rho0, L.shape[0]) for U, _ in partition_subsets(L.shape[0])]


# --------------------------------------------------------------------------------------------------
# The constrained sub-problem (A.4, Eq. 3) and its dual (Eq. 4)
# --------------------------------------------------------------------------------------------------


class PSSTStep(NamedTuple):
    """One solve of the sub-problem at a loss vector.

    Attributes:
        weights: ``(M,)`` the direction is ``weights @ J`` (signed: a constraint gradient ``a @ J``
            enters with its coefficients ``a``).
        dual: ``(r,)`` the simplex weights of Eq. 4: the ``M`` objectives first (``constrained`` mode),
            then the active constraints in order; in ``feasibility`` mode only the violated constraints.
        values: ``(k,)`` the constraint values :math:`h_j(L)`.
        active: ``(k,)`` bool, the constraints that entered the QP.
        mode: ``"constrained"`` (Eq. 3 with the :math:`\\epsilon`-active sets) or ``"feasibility"``
            (the loss vector is outside the region: descent on the violated constraints only).
        inside: whether every constraint is ``<= 0``.
    """

    weights: Tensor
    dual: Tensor
    values: Tensor
    active: Tensor
    mode: str
    inside: bool


class PSSTDirection(NamedTuple):
    """:func:`psst_direction`'s result: the direction ``(n,)`` (subtract it, like a gradient) and the step."""

    direction: Tensor
    step: PSSTStep


def _check_epsilon(epsilon: object, region: Optional[PreferenceRegion] = None) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not math.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}.")
    if isinstance(region, AngularRegion):
        # every pair counts, a zero-width one too (there any epsilon > 0 makes both bounds active near the ray)
        width = float(region.widths().min())
        if epsilon > 0 and epsilon >= width / 2:  # both bounds of a pair epsilon-active: opposite gradients, d = 0
            raise ValueError(
                f"epsilon={epsilon:g} must be below half the region's smallest cosine width {width:.4g} "
                f"(AngularRegion.widths()): else, inside the region, both bounds are active and the direction is 0."
            )
    return float(epsilon)


def psst_weights(
    G: Tensor,
    losses: Union[Tensor, Sequence[float]],
    region: PreferenceRegion,
    *,
    epsilon: float = 0.01,
    feasibility: bool = True,
) -> PSSTStep:
    r"""The weights of the PSST direction from the Gram matrix ``G = J J^T`` (M, M) and the loss values.

    Eq. 3: :math:`\min_{d, \alpha} \alpha + \frac12\|d\|^2` s.t. :math:`\nabla L_m^\top d \le \alpha`
    for every objective and :math:`\nabla h_j^\top d \le \alpha` for the :math:`\epsilon`-active
    constraints :math:`h_j(L) \ge -\epsilon`. Its dual (Eq. 4) is the min-norm point of the convex hull
    of those gradients: with :math:`\nabla h_j = a_j^\top J` (``A`` = :meth:`PreferenceRegion.jacobian`)
    and :math:`B = [I_M; A_{\text{active}}]`, :math:`\lambda^* = \arg\min_{\lambda \in \Delta}
    \lambda^\top B G B^\top \lambda` (:func:`torchmoo.ops.min_norm_simplex`) and the descent step is
    :math:`-d^* = J^\top B^\top \lambda^*`: the returned weights are :math:`B^\top\lambda^*`. At the
    optimum every objective and every active constraint satisfies :math:`\langle \nabla, J^\top w\rangle
    \ge \|J^\top w\|^2`, so a small step against ``w @ J`` decreases all of them; with no active
    constraint this is MGDA's direction.

    ``feasibility=True``: when the loss vector is outside the region (some :math:`h_j > 0`), the QP is
    over the violated constraints only (the initial-solution search of Pareto MTL, Lin et al. 2019,
    which PSST's sub-problem follows), which moves the loss vector into the region first but may
    increase objectives. ``feasibility=False``: Eq. 3 as written, the violated constraints being
    :math:`\epsilon`-active rows of the QP next to the objectives (no objective increases).

    Args:
        G: ``(M, M)`` Gram matrix of the objective gradients.
        losses: ``(M,)`` the loss values at which ``G`` was computed.
        region: the preference region (a :class:`PreferenceRegion` for ``M`` objectives).
        epsilon: the :math:`\epsilon` of the active sets, in the units of the region's constraints.
        feasibility: restore feasibility first (see above).

    Returns:
        :class:`PSSTStep` (weights in ``G``'s dtype and device, the rest float64 on the CPU).

    Raises:
        TypeError: ``G`` not a floating-point tensor; ``region`` not a :class:`PreferenceRegion`.
        ValueError: ``G`` not ``(M, M)`` for the region's ``M``; ``losses`` not ``(M,)`` or not finite;
            ``epsilon`` not a finite number ``>= 0`` (for an :class:`AngularRegion`, not below half its
            smallest width); a non-finite ``G`` (from the QP).
    """
    G = check_gram(G)
    if not isinstance(region, PreferenceRegion):
        raise TypeError(
            f"region must be a PreferenceRegion (AngularRegion, PartitionRegion), got {type(region).__name__}."
        )
    M = G.shape[0]
    if region.num_tasks != M:
        raise ValueError(f"region is for {region.num_tasks} objectives but the Gram matrix is {M} x {M}.")
    epsilon = _check_epsilon(epsilon, region)
    if not isinstance(losses, Tensor):
        losses = torch.as_tensor(losses, dtype=torch.float64)
    values, A = region.jacobian(losses.detach().reshape(-1))
    violated = values > 0
    inside = not bool(violated.any())
    if feasibility and not inside:
        mode, active = "feasibility", violated
        B = A[active]
    else:
        mode, active = "constrained", values >= -epsilon
        B = torch.cat([torch.eye(M, dtype=torch.float64), A[active]])
    Gd = G.detach().to(device="cpu", dtype=torch.float64)
    Gd = 0.5 * (Gd + Gd.T)
    finite = bool(torch.isfinite(Gd).all())  # else the QP reports the NaN / inf
    evals, evecs = torch.linalg.eigh(Gd) if finite else (None, None)
    if finite and bool(evals[0] < 0):
        # G is a Gram matrix up to rounding only. A constraint row a of mixed signs (an angle bound:
        # a ~ (L_m, -L_0)) cancels nearly parallel gradients, and a^T G a is then G's rounding error,
        # possibly negative: a "Gram" matrix the QP rejects. Through G's PSD part, B G B^T = F F^T is
        # a Gram matrix itself (a non-negative diagonal, no eigenvalue below rounding).
        factor = B @ (evecs * evals.clamp_min(0).sqrt())
        Gb = factor @ factor.T
    else:
        Gb = B @ Gd @ B.T
    Gb = 0.5 * (Gb + Gb.T)  # exactly symmetric for the QP's check
    dual = ops.min_norm_simplex(Gb)
    w = dual @ B
    return PSSTStep(w.to(dtype=G.dtype, device=G.device), dual, values, active, mode, inside)


def psst_direction(
    J: Tensor,
    losses: Union[Tensor, Sequence[float]],
    region: PreferenceRegion,
    *,
    epsilon: float = 0.01,
    feasibility: bool = True,
) -> PSSTDirection:
    """The PSST direction for a Jacobian ``J`` ``(M, n)`` at loss values ``losses`` ``(M,)``: see
    :func:`psst_weights`. Returns ``direction = weights @ J`` ``(n,)`` (subtract it; detached, in
    ``J``'s dtype and device) and the step. Raises as :func:`psst_weights`, and ``TypeError`` /
    ``ValueError`` for a ``J`` that is not a floating-point ``(M, n)`` tensor."""
    from torchmoo.methods.aggregator import check_jacobian

    J = check_jacobian(J)
    step = psst_weights(gram_matrix(J), losses, region, epsilon=epsilon, feasibility=feasibility)
    return PSSTDirection(ops.combine(J.detach(), step.weights.to(ops.combine_weight_dtype(J.dtype))), step)


#: The ``feasibility`` settings of :class:`PSST`.
FEASIBILITY_MODES = ("initial", "always", "never")


class PSST(Aggregator):
    r"""The PSST sub-problem solver as an aggregator: ``tm.backward(losses, params, PSST(region))``.

    Each call reads the current loss vector (``tm.backward`` passes it), evaluates the region's
    constraints and their derivatives with respect to the losses, and returns the direction of Eq. 3
    (:func:`psst_weights`): every objective and every :math:`\epsilon`-active constraint decreases to
    first order. A violated constraint (:math:`h_j > 0 \ge -\epsilon`) is one of the active ones, so
    outside the region Eq. 3 moves the loss vector back in while still decreasing every objective.
    Gram-based: ``tm.backward`` never assembles ``J``. Eq. 3 is posed on all of :math:`\theta`: pass
    every parameter that the losses depend on as ``params`` (with ``task_params``, the heads' steps
    are not constrained and can push the loss vector out of the region).

    ``feasibility`` chooses when the violated constraints are descended *alone* (objectives left out
    of the QP, :func:`psst_weights` with ``feasibility=True``), Pareto MTL's search for an initial
    solution (Lin et al. 2019, which PSST's sub-problem follows):

    * ``"initial"`` (default): until the first call whose loss vector is inside the region, as Pareto
      MTL does (its initialization phase stops at the first feasible point; later, violated
      constraints enter the QP with the objectives). The phase is over once ``counts["inside"] > 0``.
    * ``"always"`` (``True``): at every call outside the region. Leaving the objectives out of the QP
      lets a step *increase* them: a violated angle bound is lowered by raising the other loss too,
      and through a task head an unbounded cross-entropy rises fast. With mini-batch losses that
      leave a narrow region often, training can then drift away and stay outside.
    * ``"never"`` (``False``): Eq. 3 at every call.

    Args:
        region: the :class:`PreferenceRegion` (may be replaced through :attr:`region`; reset
            :attr:`counts` to start a new initial phase).
        epsilon: :math:`\epsilon` of the active sets (constraint units; for an :class:`AngularRegion`
            a cosine, below half of :meth:`AngularRegion.widths`).
        feasibility: ``"initial"``, ``"always"`` or ``"never"`` (see above; ``True`` / ``False`` mean
            ``"always"`` / ``"never"``).

    Attributes:
        weights: ``(M,)`` of the last call. last: the :class:`PSSTStep` of the last call.
        counts: ``{"constrained": n1, "feasibility": n2, "inside": n3}`` over the calls so far.

    Raises:
        TypeError: ``region`` is not a :class:`PreferenceRegion`.
        ValueError: a bad ``epsilon`` (see :func:`psst_weights`); an unknown ``feasibility``; at a call,
            missing losses and the errors of :func:`psst_weights`.

    Example:
        >>> regions = angular_regions(best_losses, num_regions=3)
        >>> psst = PSST(regions[0], epsilon=0.01)
        >>> tm.backward(losses, model.parameters(), psst); optimizer.step()
    """

    needs_losses = True

    def __init__(
        self, region: PreferenceRegion, epsilon: float = 0.01, feasibility: Union[bool, str] = "initial"
    ) -> None:
        super().__init__()
        if not isinstance(region, PreferenceRegion):
            raise TypeError(f"region must be a PreferenceRegion, got {type(region).__name__}.")
        self.region = region
        self.epsilon = _check_epsilon(epsilon, region)
        if isinstance(feasibility, bool):
            feasibility = "always" if feasibility else "never"
        if feasibility not in FEASIBILITY_MODES:
            raise ValueError(f"feasibility must be one of {FEASIBILITY_MODES} (or a bool), got {feasibility!r}.")
        self.feasibility: str = feasibility
        self.last: Optional[PSSTStep] = None
        self.counts: Dict[str, int] = {"constrained": 0, "feasibility": 0, "inside": 0}

    def _save_state(self) -> Any:
        return self.weights, self.last, dict(self.counts)

    def _restore_state(self, state: Any) -> None:
        self.weights, self.last, self.counts = state

    def check_inputs(self, m: int, losses: Optional[Tensor]) -> None:
        """Losses given, finite, one per objective of the region."""
        if losses is None:
            raise ValueError("PSST needs the loss values: call it as aggregator(J, losses) or through tm.backward.")
        self.region._check(losses.reshape(-1))

    def gram_weights(self, G: Tensor, losses: Optional[Tensor] = None) -> Tensor:
        """The ``(M,)`` weights of :func:`psst_weights` from ``G`` (M, M) and the ``(M,)`` losses, in
        ``G``'s dtype and device; updates :attr:`last` and :attr:`counts`.

        Raises:
            ValueError: ``losses`` is ``None``; the errors of :func:`psst_weights`.
        """
        if losses is None:
            raise ValueError("PSST needs the loss values: call it as aggregator(J, losses) or through tm.backward.")
        restore = self.feasibility == "always" or (self.feasibility == "initial" and self.counts["inside"] == 0)
        step = psst_weights(G, losses, self.region, epsilon=self.epsilon, feasibility=restore)
        self.last = step
        self.counts[step.mode] += 1
        self.counts["inside"] += int(step.inside)
        return step.weights

    def __repr__(self) -> str:
        return f"PSST({self.region!r}, epsilon={self.epsilon:g}, feasibility={self.feasibility!r})"


# --------------------------------------------------------------------------------------------------
# Pareto exploration around a solution (A.6 / D.2)
# --------------------------------------------------------------------------------------------------


class PSSTExploration(NamedTuple):
    """:func:`explore_solution`'s result.

    Attributes:
        params: ``(K, n)`` the explored parameter vectors :math:`\\theta^* + s_j v_j` (flattened; load
            one with ``torchmoo.autograd.unflatten``).
        losses: ``(K, M)`` the objectives there.
        base_losses: ``(M,)`` the objectives at :math:`\\theta^*`.
        predicted: ``(K, M)`` the first-order predictions :math:`s_j J v_j` of ``losses - base_losses``.
        steps: ``(K,)`` the step lengths :math:`s_j`.
        directions: ``(K, n)`` unit tangent directions (MINRES solutions of :math:`H v = J^\\top\\beta`).
        beta: ``(K, M)``. alpha: ``(M,)`` the MGDA weights at :math:`\\theta^*` (the Hessian's weights).
        residuals: ``(K,)`` relative MINRES residuals.
    """

    params: Tensor
    losses: Tensor
    base_losses: Tensor
    predicted: Tensor
    steps: Tensor
    directions: Tensor
    beta: Tensor
    alpha: Tensor
    residuals: Tensor


def explore_solution(
    objectives: Objectives,
    params: Params,
    *,
    step: Optional[float] = None,
    relative_change: float = 0.1,
    beta: Optional[Tensor] = None,
    k: int = 20,
    shift: float = 0.0,
    hessian_objectives: Optional[Objectives] = None,
) -> PSSTExploration:
    r"""Explore the Pareto set around a PSST solution :math:`\theta^*` (A.6, D.2).

    The tangent :math:`d\theta/dx(0)` solves :math:`H(\theta^*)\,v = \nabla L(\theta^*)^\top\beta`
    with :math:`H = \sum_m \lambda_m \nabla^2 L_m` and :math:`\lambda` from the min-norm QP (A.6);
    ``k`` MINRES iterations over Hessian-vector products solve it (D.2), by
    :func:`torchmoo.methods.pareto_expand` (oriented so that :math:`\beta^\top J v \le 0`). Then
    :math:`\theta_1 = \theta^* + s\,v` (D.2's first-order approximation) is evaluated for each direction.
    The parameters are left at :math:`\theta^*`.

    Args:
        objectives: closure computing the ``M`` objectives at the current parameters (deterministic:
            a fixed batch, BatchNorm in eval mode).
        params: the parameters explored (tensor, iterable or module).
        step: step length ``s`` (the directions have unit norm); ``None``: per direction, the ``s``
            whose first-order change :math:`\|s J v\|` is ``relative_change`` times :math:`\|L(\theta^*)\|`.
        relative_change: see ``step``.
        beta: ``(K, M)`` right-hand-side weights; default the identity (direction ``j`` trades the other
            objectives for objective ``j``).
        k: MINRES iterations.
        shift: solve :math:`(H - \text{shift}\,I) v = b` (a negative shift damps an indefinite ``H``).
        hessian_objectives: optional closure for the Hessian only (e.g. a smaller batch).

    Returns:
        :class:`PSSTExploration` (``params`` in the parameters' dtype and device).

    Raises:
        ValueError: ``step`` not ``None`` or a positive number; ``relative_change`` not positive; the
            errors of :func:`torchmoo.methods.pareto_expand` (e.g. fewer than 2 objectives, a ``beta``
            not ``(K, M)``).
    """
    plist = as_param_list(params)
    if step is not None and (not isinstance(step, (int, float)) or isinstance(step, bool) or not step > 0):
        raise ValueError(f"step must be a positive number or None, got {step!r}.")
    if not isinstance(relative_change, (int, float)) or not relative_change > 0:
        raise ValueError(f"relative_change must be a positive number, got {relative_change!r}.")
    theta = flatten(plist).detach().clone()
    if beta is None:  # one direction per objective: the number of objectives is needed first
        with torch.no_grad():
            probe = objectives()
        M = len(probe) if not isinstance(probe, Tensor) else probe.reshape(-1).shape[0]
        beta = torch.eye(M, dtype=theta.dtype, device=theta.device)
    exp = pareto_expand(objectives, plist, beta=beta, k=k, shift=shift, sign="beta",
                        hessian_objectives=hessian_objectives)
    base = exp.losses
    pn = exp.predicted.norm(dim=1)
    if step is None:
        s = torch.where(pn > 0, relative_change * base.norm() / pn.clamp_min(1e-300), torch.zeros_like(pn))
    else:
        s = torch.full_like(pn, float(step))
    points, values = [], []
    try:
        for j in range(exp.directions.shape[0]):
            vec = theta + s[j] * exp.directions[j]
            assign_flat(plist, vec)
            with torch.no_grad():
                out = objectives()
                values.append(torch.stack(list(out)) if not isinstance(out, Tensor) else out.reshape(-1))
            points.append(vec)
    finally:
        assign_flat(plist, theta)
    return PSSTExploration(torch.stack(points), torch.stack(values).detach().to(base.dtype), base,
                           exp.predicted * s[:, None], s, exp.directions, exp.beta, exp.alpha, exp.residuals)


@torch.no_grad()
def assign_flat(params: Params, vec: Tensor) -> None:
    """Copy the flat vector ``vec`` ``(n,)`` into ``params`` (the layout of :func:`torchmoo.autograd.flatten`)."""
    plist = as_param_list(params)
    if vec.shape != (sum(p.numel() for p in plist),):
        raise ValueError(f"vec must have shape ({sum(p.numel() for p in plist)},), got {tuple(vec.shape)}.")
    offset = 0
    for p in plist:
        n = p.numel()
        p.copy_(vec[offset : offset + n].view_as(p))
        offset += n


# --------------------------------------------------------------------------------------------------
# Self-supervised tasks (C, Eq. 8-9; B.2)
# --------------------------------------------------------------------------------------------------

#: The auxiliary tasks :func:`task_losses` knows.
AUX_TASKS = ("rotation", "location")


def _check_images(images: object, name: str = "images") -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}.")
    if images.dim() != 4:
        raise ValueError(f"{name} must be a batch (B, C, H, W), got shape {tuple(images.shape)}.")
    return images


def rotate_batch(images: Tensor) -> Tuple[Tensor, Tensor]:
    """The rotation task's inputs and labels (Eq. 8): every image rotated by 0, 90, 180, 270 degrees.

    Args:
        images: ``(B, C, S, S)`` square images.

    Returns:
        ``(rotated, labels)``: ``rotated`` ``(4B, C, S, S)``, rotation-major (``rotated[r * B + b]`` is
        image ``b`` turned ``r`` quarter turns counter-clockwise, ``torch.rot90`` on the last two dims),
        ``labels`` ``(4B,)`` int64 with ``labels[r * B + b] = r``. The first ``B`` are the upright images.
    """
    x = _check_images(images)
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation prediction needs square images, got {x.shape[-2]} x {x.shape[-1]}.")
    B = x.shape[0]
    rotated = torch.cat([torch.rot90(x, r, dims=(-2, -1)) for r in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(B)
    return rotated, labels


def patch_grid(
    images: Tensor,
    patch_size: int,
    *,
    generator: Optional[torch.Generator] = None,
    normalize: bool = True,
) -> Tensor:
    """The 3 x 3 patch grid of each image for the relative-location task (C, B.2).

    The image is divided into 9 regions of ``H // 3`` x ``W // 3`` pixels (row-major; the centre is
    number 4); one ``patch_size`` x ``patch_size`` patch is taken in each region, at a random offset
    when ``generator`` is given (B.2's random crop, per image and region) and centred otherwise.
    With ``normalize`` every patch is scaled to zero mean and unit standard deviation over its pixels
    and channels (B.2 step 5; a constant patch becomes zeros).

    Args:
        images: ``(B, C, H, W)`` with ``H // 3 >= patch_size`` and ``W // 3 >= patch_size``.
        patch_size: side of the patches.
        generator: random offsets; ``None`` for centred crops.
        normalize: per-patch standardization.

    Returns:
        ``(B, 9, C, patch_size, patch_size)``.
    """
    x = _check_images(images)
    p = _check_count("patch_size", patch_size)
    B, C, H, W = x.shape
    rh, rw = H // 3, W // 3
    if rh < p or rw < p:
        raise ValueError(f"images of {H} x {W} have 3 x 3 regions of {rh} x {rw}, smaller than patch_size={p}.")
    cells = torch.arange(9)
    base_y, base_x = (cells // 3) * rh, (cells % 3) * rw  # (9,)
    if generator is None:
        oy = torch.full((B, 9), (rh - p) // 2)
        ox = torch.full((B, 9), (rw - p) // 2)
    else:
        oy = torch.randint(0, rh - p + 1, (B, 9), generator=generator)
        ox = torch.randint(0, rw - p + 1, (B, 9), generator=generator)
    ar = torch.arange(p)
    rows = (base_y[None, :] + oy)[..., None] + ar  # (B, 9, p)
    cols = (base_x[None, :] + ox)[..., None] + ar
    dev = x.device
    b = torch.arange(B, device=dev)[:, None, None, None]
    patches = x.permute(0, 2, 3, 1)[b, rows.to(dev)[..., :, None], cols.to(dev)[..., None, :]]  # (B, 9, p, p, C)
    patches = patches.permute(0, 1, 4, 2, 3).contiguous()
    if normalize:
        flat = patches.flatten(2)
        mean = flat.mean(-1, keepdim=True)
        std = flat.std(-1, unbiased=False, keepdim=True)
        patches = ((flat - mean) / (std + 1e-5)).view_as(patches)
    return patches


#: Grid cells of the 8 neighbours of the centre, in the paper's lexicographic order:
#: label ``k`` is cell ``NEIGHBOURS[k]``.
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)


def patch_pairs(grid: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The (centre, neighbour, label) triples of the relative-location task (Eq. 9) from a patch grid.

    Args:
        grid: ``(B, 9, C, p, p)`` from :func:`patch_grid`.

    Returns:
        ``(centre, neighbour, labels)``: ``(8B, C, p, p)`` each and ``(8B,)`` int64; row ``8 b + k``
        pairs image ``b``'s centre patch (cell 4) with its neighbour ``NEIGHBOURS[k]`` (cells numbered
        row-major: 0 = top left, 1 = top, 2 = top right, 3 = left, 5 = right, 6 = bottom left,
        7 = bottom, 8 = bottom right) and has label ``k``.
    """
    if not isinstance(grid, Tensor) or grid.dim() != 5 or grid.shape[1] != 9:
        shape = tuple(grid.shape) if isinstance(grid, Tensor) else type(grid).__name__
        raise ValueError(f"grid must be (B, 9, C, p, p), got {shape}.")
    B = grid.shape[0]
    centre = grid[:, 4:5].expand(B, 8, *grid.shape[2:]).reshape(B * 8, *grid.shape[2:])
    neighbour = grid[:, list(NEIGHBOURS)].reshape(B * 8, *grid.shape[2:])
    labels = torch.arange(8, device=grid.device).repeat(B)
    return centre, neighbour, labels


def _check_aux(aux: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(aux, str):
        raise TypeError(f"aux must be a sequence of task names, e.g. ({aux!r},), got the string {aux!r}.")
    aux = tuple(aux)
    bad = [a for a in aux if a not in AUX_TASKS]
    if bad or len(set(aux)) != len(aux):
        raise ValueError(f"aux must be distinct names from {AUX_TASKS}, got {list(aux)}.")
    return aux


def task_losses(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    aux: Sequence[str] = ("rotation",),
    *,
    patch_images: Optional[Tensor] = None,
    patch_size: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""The loss vector of PSST: few-shot classification (Eq. 6) and the auxiliary tasks, ``(1 + len(aux),)``.

    * :math:`L_1`: cross-entropy of the cosine classifier (Eq. 5-6) on the upright images.
    * ``"rotation"`` (Eq. 8): :math:`\mathbb{E}_x \sum_{r} -\log \theta_2(\theta_{sh}(x_r))`, the
      per-image *sum* over the 4 rotations (4 times the mean cross-entropy), on the images of the batch.
    * ``"location"`` (Eq. 9): :math:`\mathbb{E}_x \sum_{p=1}^{8} -\log\theta_3(\theta_{sh}(x_0), \theta_{sh}(x_p))`
      (8 times the mean cross-entropy) on the 3 x 3 grid of ``patch_images``.

    Not applied from B.2: the object classification of the rotated copies (B.2 uses it for CC models
    trained with rotation augmentation; here :math:`L_1` sees the upright images only), the extra
    object classification loss on the patches and the random grayscale conversion of the patch images.

    Args:
        model: a :class:`~torchmoo.zoo.models.Conv4SelfSupervised` (or any module with the same
            ``forward(images, patches=None) -> [class logits, rotation logits, (location logits)]``).
        images: ``(B, C, S, S)`` normalized images; labels: ``(B,)`` base-class labels.
        aux: auxiliary tasks, in the order of the returned losses.
        patch_images: ``(B, C, H', W')`` the same images at the size the patch grid is cut from
            (needed for ``"location"``).
        patch_size: side of the patches (default ``model.patch_size``).
        generator: random patch offsets (``None``: centred).
    """
    aux = _check_aux(aux)
    x = _check_images(images)
    B = x.shape[0]
    patches = None
    if "location" in aux:
        if patch_images is None:
            raise ValueError("the location task needs patch_images (the images at the size of the 3 x 3 grid).")
        if patch_images.shape[0] != B:
            raise ValueError(f"patch_images has {patch_images.shape[0]} images, images {B}.")
        p = patch_size if patch_size is not None else getattr(model, "patch_size", None)
        if p is None:
            raise ValueError("pass patch_size (the model has no patch_size attribute).")
        patches = patch_grid(patch_images, p, generator=generator)
    if "rotation" in aux:
        inputs, rot_labels = rotate_batch(x)
    else:
        inputs, rot_labels = x, None
    outs = model(inputs, patches)
    losses = [F.cross_entropy(outs[0][:B], labels)]
    for name in aux:
        if name == "rotation":
            losses.append(F.cross_entropy(outs[1], rot_labels, reduction="sum") / B)
        else:
            loc = outs[2]
            target = torch.arange(8, device=loc.device).repeat(B)
            losses.append(F.cross_entropy(loc.reshape(B * 8, -1), target, reduction="sum") / B)
    return torch.stack(losses)


@torch.no_grad()
def evaluate_losses(
    model: nn.Module,
    images: Tensor,
    labels: Union[Tensor, Sequence[int]],
    aux: Sequence[str] = ("rotation",),
    *,
    patch_images: Optional[Tensor] = None,
    patch_size: Optional[int] = None,
    batch_size: int = 256,
) -> Tensor:
    """The loss vector of :func:`task_losses` over a whole data set, in eval mode (BatchNorm running
    statistics, centred patches), averaged over the images.

    Args:
        model: as in :func:`task_losses`.
        images: ``(N, C, S, S)``; labels: ``(N,)`` (a tensor or a sequence; moved to the images' device,
            as ``patch_images`` ``(N, C, H', W')`` are, one batch at a time).
        aux, patch_size: as in :func:`task_losses`.
        batch_size: images per forward pass.

    Returns:
        ``(1 + len(aux),)`` float64 on the CPU.
    """
    n = _check_images(images).shape[0]
    labels = torch.as_tensor(labels, device=images.device)
    if n == 0 or labels.shape != (n,):
        raise ValueError(f"need at least one image and one label per image, got {n} images and labels of shape "
                         f"{tuple(labels.shape)}.")
    if patch_images is not None:
        if _check_images(patch_images, "patch_images").shape[0] != n:
            raise ValueError(f"patch_images has {patch_images.shape[0]} images, images {n}.")
    batch_size = _check_count("batch_size", batch_size)
    was_training = model.training
    model.eval()
    try:
        total = None
        for s in range(0, n, batch_size):
            sl = slice(s, s + batch_size)
            L = task_losses(model, images[sl], labels[sl], aux,
                            patch_images=None if patch_images is None else patch_images[sl].to(images.device),
                            patch_size=patch_size).double() * images[sl].shape[0]
            total = L if total is None else total + L
        return (total / n).cpu()
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------------
# Training routine (B.3) and few-shot evaluation (C)
# --------------------------------------------------------------------------------------------------


class FewShotTrainer:
    r"""The training stage of B.3 for a few-shot learner with self-supervised auxiliary tasks.

    Mini-batch SGD (momentum 0.9, weight decay 5e-4, learning rate 0.1 divided by 10 at one and two
    thirds of the epochs: 60 epochs with decays at 20 and 40 in the paper) on the loss vector of
    :func:`task_losses`, combined by ``method``:

    * a sequence of ``1 + len(aux)`` weights: Eq. 7's fixed weighting, one backward pass of
      :math:`\sum_m \omega_m L_m` through every parameter (``aux=()`` and ``[1.0]``: the cosine
      classifier alone);
    * an :class:`~torchmoo.methods.Aggregator` (e.g. :class:`PSST`, MGDA): ``tm.backward`` with the
      aggregated direction over every parameter the losses reach, the trunk and the heads of the tasks
      in use (``aggregate_heads=True``, the default). For :class:`PSST` this is the paper's Eq. 3,
      posed on all of :math:`\theta`: the whole step decreases every objective and every
      :math:`\epsilon`-active constraint to first order.
      ``aggregate_heads=False``: the aggregator on ``model.trunk`` only, each head receiving the plain
      gradient of its own loss (``tm.backward``'s ``task_params``, Sener & Koltun's convention for
      MGDA). With :class:`PSST` this deviates from the paper: only the trunk's step honours the
      region's constraints, and a head's step, lowering its own loss, can push the loss vector out of
      the region (or an active bound further up).

    Epoch ``e`` shuffles with a generator seeded by ``(seed, e)`` (and draws the patch offsets from
    another), so a run restored from :meth:`state_dict` continues exactly. The last incomplete batch
    of an epoch is dropped.

    Args:
        model: a :class:`~torchmoo.zoo.models.Conv4SelfSupervised` (``trunk``, ``heads`` = [classifier,
            rotation, location]).
        images: ``(N, C, S, S)`` base-class training images; labels: ``(N,)`` in ``0..num_classes-1``
            (a tensor or a sequence; kept on the images' device, as ``patch_images``).
        aux: auxiliary tasks (:data:`AUX_TASKS`).
        method: weights or an aggregator (see above).
        epochs, batch_size, lr, momentum, weight_decay: B.3's routine.
        milestones: epochs at which the learning rate is divided by 10 (default ``[E/3, 2E/3]``).
        patch_images: ``(N, C, H', W')`` for the location task.
        seed: the shuffling and patch offsets.
        aggregate_heads: with an aggregator, whether the heads are in the aggregated direction
            (default, Eq. 3 on all of :math:`\theta`) or get their own loss's gradient (see above).

    Raises:
        TypeError: ``images`` not a tensor; ``aux`` a string; ``aggregate_heads`` not a bool.
        ValueError: ``labels`` not ``(N,)``; the location task without ``patch_images``; weights that are
            not ``1 + len(aux)`` finite numbers; a :class:`PSST` whose region is for another number of
            objectives; ``epochs`` or ``batch_size`` not an int ``>= 1``, or more than ``N``.
    """

    def __init__(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        *,
        aux: Sequence[str] = ("rotation",),
        method: Union[Sequence[float], Aggregator] = (1.0, 1.0),
        epochs: int = 60,
        batch_size: int = 128,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        milestones: Optional[Sequence[int]] = None,
        patch_images: Optional[Tensor] = None,
        seed: int = 0,
        aggregate_heads: bool = True,
    ) -> None:
        self.aux = _check_aux(aux)
        self.model = model
        # the batches are indexed on the images' device: labels (e.g. a list) and patch images go there too
        self.images = _check_images(images)
        self.labels = torch.as_tensor(labels, device=self.images.device)
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be ({self.images.shape[0]},), got {tuple(self.labels.shape)}.")
        if "location" in self.aux and patch_images is None:
            raise ValueError("the location task needs patch_images.")
        self.patch_images = None if patch_images is None else _check_images(patch_images, "patch_images").to(
            self.images.device)
        M = 1 + len(self.aux)
        if isinstance(method, Aggregator):
            if isinstance(method, PSST) and method.region.num_tasks != M:
                # else the first step fails, possibly after a long start-up
                raise ValueError(f"the PSST region is for {method.region.num_tasks} objectives, the training has {M} "
                                 f"(1 + len(aux) = 1 + {len(self.aux)}).")
            self.aggregator: Optional[Aggregator] = method
            self.weights: Optional[Tensor] = None
        else:
            try:
                w = torch.as_tensor(method, dtype=torch.float32).reshape(-1)
            except (TypeError, ValueError, RuntimeError):
                w = None
            if w is None or isinstance(method, (str, bytes)) or w.shape[0] != M or not bool(torch.isfinite(w).all()):
                raise ValueError(
                    f"method must be an Aggregator or a sequence of {M} finite weights (1 + len(aux)), got {method!r}."
                )
            self.aggregator, self.weights = None, w
        self.epochs = _check_count("epochs", epochs)
        self.batch_size = _check_count("batch_size", batch_size)
        if self.images.shape[0] < self.batch_size:
            raise ValueError(f"batch_size={batch_size} is larger than the {self.images.shape[0]} training images.")
        self.seed = int(seed)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        if milestones is None:
            milestones = sorted({max(1, round(self.epochs / 3)), max(1, round(2 * self.epochs / 3))})
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, list(milestones), gamma=0.1)
        self.epoch = 0
        if not isinstance(aggregate_heads, bool):
            raise TypeError(f"aggregate_heads must be a bool, got {type(aggregate_heads).__name__}.")
        self.aggregate_heads = aggregate_heads
        heads = list(model.heads)
        self._task_params = [heads[0]] + [heads[1] if a == "rotation" else heads[2] for a in self.aux]
        # the parameters of the aggregated direction: the trunk, and the heads of the tasks in use
        # (an unused head, e.g. the location head without the location task, gets no gradient)
        self._params = list(model.trunk.parameters())
        if aggregate_heads:
            for head in self._task_params:
                self._params += list(head.parameters())

    def train_epoch(self) -> Dict[str, float]:
        """One epoch; returns the mean training losses (``loss0``, ``loss1``, ...), the wall-clock and
        process CPU seconds, the number of steps and (for :class:`PSST`) the share of steps in
        feasibility mode and inside the region."""
        self.model.train()
        dev = self.images.device
        n = self.images.shape[0]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        gp = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 500_009)
        order = torch.randperm(n, generator=g).to(dev)
        counts = dict(self.aggregator.counts) if isinstance(self.aggregator, PSST) else None
        total, steps = None, 0
        t0, c0 = time.perf_counter(), time.process_time()
        for s in range(0, n - self.batch_size + 1, self.batch_size):
            idx = order[s : s + self.batch_size]
            L = task_losses(self.model, self.images[idx], self.labels[idx], self.aux,
                            patch_images=None if self.patch_images is None else self.patch_images[idx],
                            generator=gp)
            self.optimizer.zero_grad(set_to_none=True)
            if self.aggregator is None:
                (self.weights.to(L) @ L).backward()
            else:
                if self.aggregate_heads:
                    _mtl_backward(L, self._params, self.aggregator)
                else:
                    _mtl_backward(L, self._params, self.aggregator, task_params=self._task_params)
            self.optimizer.step()
            total = L.detach().double() if total is None else total + L.detach().double()
            steps += 1
        self.scheduler.step()
        self.epoch += 1
        out: Dict[str, float] = {"epoch": self.epoch, "seconds": time.perf_counter() - t0,
                                 "cpu_seconds": time.process_time() - c0, "steps": steps}
        out.update({f"loss{i}": float(v) for i, v in enumerate((total / steps).tolist())})
        if counts is not None:
            now = self.aggregator.counts  # type: ignore[union-attr]
            for key in ("feasibility", "inside"):
                out[f"{key}_fraction"] = (now[key] - counts[key]) / steps
        return out

    def state_dict(self) -> Dict[str, object]:
        state: Dict[str, object] = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                                    "scheduler": self.scheduler.state_dict(), "epoch": self.epoch}
        if isinstance(self.aggregator, PSST):
            state["psst_counts"] = dict(self.aggregator.counts)
        return state

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        self.scheduler.load_state_dict(state["scheduler"])  # type: ignore[arg-type]
        self.epoch = int(state["epoch"])  # type: ignore[arg-type]
        if isinstance(self.aggregator, PSST) and "psst_counts" in state:
            self.aggregator.counts = {k: int(v) for k, v in state["psst_counts"].items()}  # type: ignore[union-attr]


@torch.no_grad()
def extract_features(model: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """Flattened features of the shared extractor ``model.trunk`` (eval mode), ``(N, d)``."""
    was_training = model.training
    model.eval()
    try:
        trunk = getattr(model, "trunk", model)
        return torch.cat([trunk(images[s : s + batch_size]).flatten(1) for s in range(0, images.shape[0], batch_size)])
    finally:
        model.train(was_training)


class FewShotAccuracy(NamedTuple):
    """Mean accuracy over episodes, its 95% confidence interval half-width (1.96 standard errors) and
    the ``(E,)`` per-episode accuracies."""

    mean: float
    ci95: float
    accuracies: Tensor


_EPISODE_CHUNK_ELEMS = 1 << 25  # float64 numbers gathered at once by fewshot_accuracy (256 MiB)
_EPISODE_CHUNK_INDICES = 1 << 18  # episode indices drawn at once (as Python ints first: about 10 MiB)


def fewshot_accuracy(
    features: Tensor,
    labels: Union[Tensor, Sequence[int]],
    *,
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 15,
    episodes: int = 600,
    seed: int = 0,
) -> FewShotAccuracy:
    r"""N-way K-shot accuracy on novel classes with the cosine classifier of section C.

    Each episode (:class:`~torchmoo.zoo.data.EpisodeSampler`) draws ``n_way`` classes with ``k_shot``
    support and ``n_query`` query examples; the class weight :math:`w_j` is the average of the
    L2-normalized support features of class ``j`` (C: "simple averaging of associated K samples") and
    a query goes to the class of highest :math:`\cos(\theta_{sh}(x), w_j)` (the softmax's inverse
    temperature does not change the argmax). Episode ``e`` depends on ``(seed, e)`` only, and the
    episodes are drawn and scored in chunks: memory does not grow with ``episodes`` (beyond the
    ``(E,)`` accuracies).

    Args:
        features: ``(N, d)`` features of the novel-class images (any device; scored in float64).
        labels: ``(N,)`` integer class labels (a tensor or a sequence).
        n_way: classes per episode, ``>= 2``.
        k_shot: support examples per class, ``>= 1``.
        n_query: query examples per class, ``>= 1``.
        episodes: ``E >= 1``.
        seed: seed of the episodes, ``>= 0``.

    Returns:
        :class:`FewShotAccuracy`: mean, 95% half-width ``1.96 s / sqrt(E)`` (``s`` the standard deviation
        of the per-episode accuracies; 0 for ``E = 1``) and the ``(E,)`` float64 accuracies on the CPU.

    Raises:
        ValueError: ``features`` not ``(N, d)``; ``labels`` not ``(N,)``; a count out of range; fewer than
            ``n_way`` classes with ``k_shot + n_query`` examples.
        TypeError: ``labels`` not integers.
    """
    from torchmoo.zoo.data.episodes import EpisodeSampler

    if not isinstance(features, Tensor) or features.dim() != 2:
        raise ValueError(f"features must be (N, d), got {getattr(features, 'shape', type(features).__name__)}.")
    label_shape = tuple(torch.as_tensor(labels).shape)
    if label_shape != (features.shape[0],):
        raise ValueError(f"labels must be ({features.shape[0]},), one per row of features, got {label_shape}.")
    if isinstance(n_query, bool) or not isinstance(n_query, int) or n_query < 1:
        raise ValueError(f"n_query must be an int >= 1 (the accuracy is measured on the queries), got {n_query!r}.")
    if isinstance(n_way, bool) or not isinstance(n_way, int) or n_way < 2:
        # a 1-way episode has nothing to tell apart: its accuracy would be 1 whatever the features
        raise ValueError(f"n_way must be an int >= 2, got {n_way!r}.")
    sampler = EpisodeSampler(torch.as_tensor(labels).cpu(), n_way, k_shot, n_query, episodes, seed)  # host-side indexing
    dev = features.device
    width = n_way * (k_shot + n_query)
    ns = n_way * k_shot
    truth = torch.arange(n_way, device=dev).repeat_interleave(n_query)
    # episodes in chunks of about _EPISODE_CHUNK_ELEMS gathered numbers (600 episodes of 80 MiniImageNet
    # features, d = 1600, would gather 0.6 GB at once) and _EPISODE_CHUNK_INDICES indices, drawn per
    # chunk (all the episodes' indices as Python lists would grow with E: 100,000 episodes, 0.4 GB)
    chunk = max(1, min(_EPISODE_CHUNK_ELEMS // max(1, width * features.shape[1]), _EPISODE_CHUNK_INDICES // width))
    accs = []
    with torch.no_grad():  # accuracies only: no graph through features that require grad
        normalized = F.normalize(features.double(), dim=-1)
        for start in range(0, episodes, chunk):
            stop = min(episodes, start + chunk)
            idx = torch.tensor([sampler.episode(e) for e in range(start, stop)], device=dev)  # (e, n(k+q))
            z = normalized[idx]  # (e, n(k+q), d)
            protos = F.normalize(z[:, :ns].reshape(z.shape[0], n_way, k_shot, -1).mean(2), dim=-1)  # (e, n, d)
            scores = z[:, ns:] @ protos.mT  # (e, n q, n)
            accs.append((scores.argmax(-1) == truth).double().mean(1).cpu())
    acc = torch.cat(accs)
    ci = float(1.96 * acc.std() / math.sqrt(episodes)) if episodes > 1 else 0.0
    return FewShotAccuracy(float(acc.mean()), ci, acc)
