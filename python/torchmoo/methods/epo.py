r"""Exact Pareto Optimization (EPO search; Mahapatra & Rajan, ICML 2020): training toward a ratio preference.

EPO looks for the Pareto-optimal point where :math:`r_1\ell_1 = \dots = r_m\ell_m` for a preference
vector ``r > 0``. Each step combines the task gradients with weights :math:`m\,\beta` where ``beta``
solves a small linear program over the simplex built from ``C = J J^T`` and the losses:

* with :math:`\hat\ell = r\ell/\sum r\ell`, the non-uniformity :math:`\mu = \sum_t \hat\ell_t\log(m\hat\ell_t)`
  (PNG's Eq. 16) and the adjustment :math:`a = r(\log(m\hat\ell) - \mu)`;
* *balance mode* (:math:`\mu > \epsilon`): maximize :math:`\beta^\top C a` subject to
  :math:`\beta \in \Delta`, :math:`(C\beta)_j \ge (Ca)_j` for the objectives with :math:`(Ca)_j \le 0`
  and :math:`(C\beta)_j \ge 0` for the objectives with the largest :math:`r_j\ell_j` (or
  :math:`C\beta \ge 0` when no :math:`(Ca)_j` is positive): the step moves toward the preferred ratio;
* *descent mode* (:math:`\mu \le \epsilon`): maximize :math:`\mathbf 1^\top C\beta` subject to
  :math:`\beta \in \Delta`, :math:`C\beta \ge 0` and :math:`\beta^\top C a \ge \min(\max_j (Ca)_j, 0)`
  (dropped with ``relax=True``): a common descent that keeps the ratio.

This is the algorithm of the authors' public implementation (``EPO_LP``), including its fallback to
``r / sum(r)`` when the LP is infeasible. With two objectives the LP is solved exactly on the segment
``beta = (s, 1 - s)``; with more, by SciPy's HiGHS (``scipy.optimize.linprog``).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from torchmoo.methods.aggregator import Aggregator, check_gram

__all__ = ["EPO", "epo_weights"]


def _adjustments(losses: np.ndarray, r: np.ndarray):
    m = losses.shape[0]
    rl = r * losses
    lhat = rl / rl.sum()
    mu = float(np.sum(lhat * np.log(lhat * m)))
    a = r * (np.log(lhat * m) - mu)
    return rl, mu, a


def _lp_simplex(c: np.ndarray, A_ub: np.ndarray, b_ub: np.ndarray) -> Optional[np.ndarray]:
    """``argmax c'beta`` over the simplex with ``A_ub beta <= b_ub``; None when infeasible.

    Two objectives: exactly, on the segment ``beta = (s, 1 - s)``; more: SciPy's HiGHS.
    """
    m = c.shape[0]
    if m == 2:
        # beta = (s, 1 - s): every constraint reads k * s <= h
        k = A_ub[:, 0] - A_ub[:, 1]
        h = b_ub - A_ub[:, 1]
        scale = max(1.0, float(np.abs(A_ub).max(initial=0.0)), float(np.abs(b_ub).max(initial=0.0)))
        tol = 1e-12 * scale
        lo, hi = 0.0, 1.0
        for ki, hi_ in zip(k, h):
            if ki > tol:
                hi = min(hi, hi_ / ki)
            elif ki < -tol:
                lo = max(lo, hi_ / ki)
            elif hi_ < -tol:
                return None
        if lo > hi + 1e-12:
            return None
        hi = max(hi, lo)
        s = hi if c[0] - c[1] > 0 else lo
        return np.array([s, 1.0 - s])
    from scipy.optimize import linprog

    res = linprog(-c, A_ub=A_ub if A_ub.size else None, b_ub=b_ub if b_ub.size else None,
                  A_eq=np.ones((1, m)), b_eq=np.ones(1), bounds=[(0, None)] * m, method="highs")
    if res.status != 0 or res.x is None:
        return None
    return res.x


def epo_weights(G: np.ndarray, losses: np.ndarray, r: np.ndarray, eps: float = 1e-4, relax: bool = False):
    """EPO's weights ``m * beta`` (numpy float64), the mode (``"balance"``/``"descent"``/``"fallback"``) and ``mu``.

    Args:
        G: ``(m, m)`` Gram matrix ``J J^T``, float64. losses: ``(m,)`` positive loss values.
        r: ``(m,)`` positive preference. eps, relax: as :class:`EPO`. None of them is validated here.

    Returns:
        ``(weights (m,), mode, mu)``; ``weights = m r / sum(r)`` in ``"fallback"`` mode.
    """
    m = losses.shape[0]
    rl, mu, a = _adjustments(losses, r)
    # The LP is invariant to scaling C (its objective and every constraint are linear in C), but the
    # solvers' feasibility tolerances are absolute: with small gradients (||g|| ~ 1e-5, C ~ 1e-10) they
    # would drop every constraint. Solve it for C / max|C|.
    scale = float(np.abs(G).max(initial=0.0))
    C = G / scale if scale > 0 else G
    Ca = C @ a
    if mu > eps:
        mode = "balance"
        J = Ca > 0
        if J.any():
            rhs = Ca.copy()
            rhs[J] = -np.inf
            rhs[rl == rl.max()] = 0.0
        else:
            rhs = np.zeros(m)
        rows = np.isfinite(rhs)
        beta = _lp_simplex(Ca, -C[rows], -rhs[rows])
    else:
        mode = "descent"
        A_ub, b_ub = [-C], [np.zeros(m)]
        if not relax:
            A_ub.append(-Ca[None, :])
            b_ub.append(np.array([-min(float(Ca.max()), 0.0)]))
        beta = _lp_simplex(C.sum(axis=0), np.vstack(A_ub), np.concatenate(b_ub))
    if beta is None:
        return m * r / r.sum(), "fallback", mu
    beta = np.clip(beta, 0.0, None)
    return m * beta / beta.sum(), mode, mu


class EPO(Aggregator):
    r"""EPO search direction toward the ratio preference ``r`` (:math:`r_1\ell_1 = \dots = r_m\ell_m`).

    Args:
        preference: ``r``, ``m`` positive numbers (a sequence or a tensor).
        eps: non-uniformity below which EPO switches from balancing to common descent (authors': 1e-4).
        relax: drop the constraint that keeps the ratio in descent mode.

    The losses must be positive (``tm.backward`` passes them). ``d = weights @ J``; :attr:`mode` and
    :attr:`non_uniformity` describe the last step. The LP runs in float64 on the CPU (with more than two
    objectives it needs SciPy); the ``(m,)`` weights, ``m * beta`` (they sum to ``m``), are returned in
    ``J``'s dtype and device.

    Attributes:
        mode: ``"balance"``, ``"descent"`` or ``"fallback"`` (LP infeasible: weights ``m r / sum(r)``)
            for the last call; ``None`` before the first.
        non_uniformity: :math:`\mu` of the last call (a float).

    Raises:
        ValueError: ``preference`` empty, not finite or not positive; ``eps`` not a number ``>= 0``; at
            a call, a Jacobian with another number of rows, missing losses, or losses that are not
            positive and finite.

    Example:
        >>> epo = EPO([1.0, 2.0])          # aims at l_1 = 2 l_2
        >>> d = epo(J, losses)             # or tm.backward(losses, params, epo)
        >>> epo.mode, epo.non_uniformity
    """

    needs_losses = True

    def __init__(self, preference: Union[Sequence[float], Tensor], eps: float = 1e-4, relax: bool = False) -> None:
        super().__init__()
        r = np.asarray(torch.as_tensor(preference, dtype=torch.float64).reshape(-1).tolist(), dtype=np.float64)
        if r.size == 0 or not np.all(np.isfinite(r)) or not np.all(r > 0):
            raise ValueError(f"preference must be non-empty, finite and positive, got {r.tolist()}.")
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be a number >= 0, got {eps!r}.")
        self.preference = r
        self.eps = float(eps)
        self.relax = bool(relax)
        self.mode: Optional[str] = None
        self.non_uniformity: Optional[float] = None

    def check_inputs(self, m: int, losses: Optional[Tensor]) -> None:
        """As many objectives as the preference has entries; losses given, positive and finite (logarithms)."""
        if m != self.preference.size:
            raise ValueError(f"EPO has a preference for {self.preference.size} objectives, got {m}.")
        if losses is None:
            raise ValueError("EPO needs the loss values: call epo(J, losses) or use tm.backward.")
        L = losses.detach().double().reshape(-1).cpu().numpy()
        if not np.all(np.isfinite(L)) or not np.all(L > 0):
            raise ValueError(f"EPO takes logarithms of the losses, which must be positive and finite; got {L.tolist()}.")

    def gram_weights(self, G: Tensor, losses: Optional[Tensor] = None) -> Tensor:
        """The ``(m,)`` EPO weights from ``G`` (m, m) and the ``(m,)`` losses, in ``G``'s dtype and device.

        Raises:
            ValueError: ``G`` is not ``(m, m)`` for the preference's ``m``; ``losses`` is ``None`` or not
                positive and finite.
        """
        G = check_gram(G)
        self.check_inputs(G.shape[0], losses)
        L = losses.detach().double().reshape(-1).cpu().numpy()
        w, self.mode, self.non_uniformity = epo_weights(G.detach().double().cpu().numpy(), L, self.preference,
                                                        self.eps, self.relax)
        return torch.as_tensor(w, dtype=G.dtype, device=G.device)

    def __repr__(self) -> str:
        return f"EPO({self.preference.tolist()}, eps={self.eps}, relax={self.relax})"
