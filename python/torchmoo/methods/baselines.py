r"""Gradient-combination baselines: linear scalarization, PCGrad, CAGrad, the improvement function.

All are :class:`~torchmoo.methods.aggregator.Aggregator` s: ``J`` (m, n) -> ``d = w @ J`` (n,), with the
weights of the last call in ``.weights``. PCGrad and CAGrad work on the Gram matrix ``J J^T`` (m, m)
only, so besides one Gram product and one combination their cost does not grow with ``n``.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from torchmoo import ops
from torchmoo.methods.aggregator import Aggregator, check_gram
from torchmoo.methods.mgda import min_norm_weights

__all__ = ["LinearScalarization", "PCGrad", "CAGrad", "ImprovementFunction", "cagrad_weights"]


class LinearScalarization(Aggregator):
    """Fixed weights: ``d = J^T w``, the gradient of ``sum_i w_i loss_i``.

    Args:
        weights: ``m`` finite numbers (a sequence or a tensor, flattened); any sign is allowed. They
            are stored in float64 and cast to the Jacobian's dtype and device at each call.

    :func:`torchmoo.backward` recognizes fixed weights and runs a single backward pass of
    ``weights @ losses`` instead of computing the Jacobian.

    Raises:
        ValueError: ``weights`` is empty or not finite; at a call, ``J`` does not have ``m`` rows.

    Example:
        >>> agg = LinearScalarization([0.3, 0.7])
        >>> d = agg(J)                      # == 0.3 * J[0] + 0.7 * J[1]
    """

    def __init__(self, weights: Union[Sequence[float], Tensor]) -> None:
        super().__init__()
        w = torch.as_tensor(weights, dtype=torch.float64).detach().reshape(-1).cpu()
        if w.numel() == 0 or not bool(torch.isfinite(w).all()):
            raise ValueError(f"weights must be a non-empty sequence of finite numbers, got {weights!r}.")
        self._w = w

    def static_weights(self, m: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The fixed ``(m,)`` weights in ``dtype`` on ``device``.

        Raises:
            ValueError: ``m`` differs from the number of weights.
        """
        if m != self._w.numel():
            raise ValueError(f"LinearScalarization has {self._w.numel()} weights but there are {m} objectives.")
        return self._w.to(dtype=dtype, device=device)

    def gram_weights(self, G: Tensor, losses: Optional[Tensor] = None) -> Tensor:
        """The fixed ``(m,)`` weights in ``G``'s dtype and device (``G`` (m, m) only gives ``m``)."""
        return self.static_weights(check_gram(G).shape[0], dtype=G.dtype, device=G.device)

    def __repr__(self) -> str:
        return f"LinearScalarization({self._w.tolist()})"


class PCGrad(Aggregator):
    r"""Projecting conflicting gradients (Yu et al., NeurIPS 2020, Algorithm 1).

    For each objective ``i``, :math:`g_i^{PC} \leftarrow g_i`, then for every other objective ``j``
    in a random order: if :math:`\langle g_i^{PC}, g_j\rangle < 0`, remove the conflicting component,
    :math:`g_i^{PC} \leftarrow g_i^{PC} - \frac{\langle g_i^{PC}, g_j\rangle}{\|g_j\|^2} g_j`.
    The direction is :math:`\sum_i g_i^{PC}` (``reduction="sum"``, the paper's) or their mean.

    Every :math:`g_i^{PC}` stays a combination of the rows of ``J``, so the projections run on the
    ``(m, m)`` Gram matrix (coefficients :math:`g_i^{PC} = C_i J`) and the direction is
    ``(1' C) J``: one pass over ``J``.

    Args:
        seed: seed of the aggregator's own ``torch.Generator`` for the random orders; ``None`` draws
            the orders from torch's global generator (reproducible under ``torch.manual_seed``).
        reduction: ``"sum"`` (default) or ``"mean"``.

    Attributes:
        projected: ``(m, m)`` coefficients ``C`` of the last call: row ``i`` of ``C @ J`` is
            :math:`g_i^{PC}`.
        orders: ``(m, m - 1)`` int64 on the CPU: the order in which row ``i`` visited the other
            objectives, last call.

    Raises:
        ValueError: ``reduction`` is not ``"sum"`` or ``"mean"``.
    """

    def __init__(self, seed: Optional[int] = None, reduction: str = "sum") -> None:
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")
        self.reduction = reduction
        self.generator: Optional[torch.Generator] = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(int(seed))
        self.projected: Optional[Tensor] = None
        self.orders: Optional[Tensor] = None

    def _orders(self, m: int) -> Tensor:
        """(m, m - 1): row i is a random permutation of {0..m-1} minus {i}."""
        perms = torch.stack([torch.randperm(m - 1, generator=self.generator) for _ in range(m)])
        rows = torch.arange(m).unsqueeze(1)
        return perms + (perms >= rows).long()  # skip index i itself

    def gram_weights(self, G: Tensor, losses: Optional[Tensor] = None) -> Tensor:
        """The ``(m,)`` weights ``1' C`` (or their mean) from ``G`` (m, m), in ``G``'s dtype and device.

        The projections run in float64 on the CPU (``m`` is small); draws new random orders and
        updates :attr:`projected` and :attr:`orders`.
        """
        out = check_gram(G)
        G = G.double().cpu()
        m = G.shape[0]
        orders = self._orders(m)
        C = torch.eye(m, dtype=torch.float64)
        rows = torch.arange(m)
        diag = G.diagonal()
        # all rows advance together: at step t, row i projects against objective orders[i, t]
        for t in range(m - 1):
            j = orders[:, t]
            dots = (C * G[:, j].T).sum(1)  # <g_i^PC, g_j> = C_i G[:, j]
            norms2 = diag[j]
            conflict = (dots < 0) & (norms2 > 0)  # a negative dot implies ||g_j|| > 0; guard anyway
            C[rows, j] -= torch.where(conflict, dots / torch.where(conflict, norms2, 1.0), 0.0)
        self.projected = C.to(dtype=out.dtype, device=out.device)
        self.orders = orders
        w = C.sum(0)
        if self.reduction == "mean":
            w = w / m
        return w.to(dtype=out.dtype, device=out.device)

    def __repr__(self) -> str:
        return f"PCGrad(reduction={self.reduction!r})"


def _rho(G: Tensor, a: Tensor, nu: float, Gq: Tensor):
    """Point ``nu`` of the QP path: ``w(nu) = argmin_simplex 0.5 w'Gq w + nu a'w`` and ``||J'w(nu)||``
    (``Gq``: the matrix the QP is solved with; the norm is measured with ``G``)."""
    w = ops.min_norm_simplex(Gq, a * nu)
    return w, math.sqrt(max(float(w @ G @ w), 0.0))


def _root_on_segment(G: Tensor, w_lo: Tensor, w_hi: Tensor, nu_lo: float, nu_hi: float, r: float) -> Optional[float]:
    """Root of ``||J'w(nu)||^2 = r^2 nu^2`` on ``[nu_lo, nu_hi]`` if ``w(nu)`` is affine there (one QP piece).

    With ``w(s) = w_lo + s (w_hi - w_lo)`` and ``nu(s) = nu_lo + s (nu_hi - nu_lo)`` the equation is
    ``f(s) = A s^2 + 2 B s + C = 0``; on a bracket ``f(0) > 0 >= f(1)``, so exactly one root lies in [0, 1].
    """
    dnu = nu_hi - nu_lo
    dw = w_hi - w_lo
    A = float(dw @ G @ dw) - r * r * dnu * dnu
    B = float(w_lo @ G @ dw) - r * r * nu_lo * dnu
    C = float(w_lo @ G @ w_lo) - r * r * nu_lo * nu_lo
    if A == 0.0:
        roots = [-C / (2.0 * B)] if B != 0.0 else []
    else:
        disc = B * B - A * C
        if disc < 0.0:
            return None
        q = -(B + math.copysign(math.sqrt(disc), B))  # the stable pair of roots q / A and C / q
        roots = [q / A] + ([C / q] if q != 0.0 else [])
    inside = [s for s in roots if 0.0 <= s <= 1.0]
    return nu_lo + inside[0] * dnu if inside else None


def cagrad_weights(G: Tensor, c: float, *, rtol: float = 1e-12, max_iter: int = 200) -> Tensor:
    r"""CAGrad's weights from a Gram matrix ``G`` (m, m), float64: ``d = J^T w`` before rescaling.

    CAGrad (Liu et al., NeurIPS 2021) maximizes the worst improvement in a ball around the average
    gradient :math:`g_0 = J^\top b` (``b = 1/m``):

    .. math:: \max_{\|d - g_0\| \le r} \min_i \langle g_i, d\rangle, \qquad r = c \|g_0\|.

    Its dual is :math:`\min_{w \in \Delta_m} F(w) = w^\top G b + r \|J^\top w\|`, and
    :math:`d = g_0 + r\, J^\top w^* / \|J^\top w^*\|`. We solve it exactly through the path of QPs
    :math:`w(\nu) = \arg\min_{\Delta_m} \tfrac12 w^\top G w + \nu\, (Gb)^\top w` (each solved exactly by
    :func:`torchmoo.ops.min_norm_simplex`): ``d(nu) = g_0 + J^T w(nu) / nu`` maximizes the Lagrangian
    with multiplier ``nu`` for the ball, and the ball constraint holds with equality where
    :math:`\rho(\nu) = \|J^\top w(\nu)\| / \nu = r`. :math:`\rho` is non-increasing (the derivative of the
    convex Lagrange dual function is :math:`(r^2 - \rho^2)/2`), so the root is bracketed and found by
    bisection in :math:`\log \nu`; on a piece of the path where the QP's active set does not change,
    :math:`w(\nu)` is affine and the root is that of a quadratic, which is tried first at every step
    (exact in a few steps). If :math:`\rho(\nu) \le r` down to :math:`\nu \to 0` (0 lies in the hull of
    the gradients and the ball is large), the optimum is the limit ``nu -> 0``: the projection of
    :math:`g_0` onto the cone :math:`\{d : J d \ge 0\}`, which :func:`torchmoo.ops.nonneg_qp` gives
    exactly (:math:`d = g_0 + J^\top \lambda`). "Down to 0" means down to the resolution of ``G``:
    its entries carry rounding of about ``eps * max_i ||g_i||^2`` (``eps`` of ``G``'s dtype: pass
    ``G`` in the dtype it was computed in), so norms ``||J'w||`` below ``sqrt(10 m eps) max_i ||g_i||``
    count as 0; a projection that lies outside the ball (rho exceeds r below that resolution) is taken
    back onto the sphere along its direction, ``d = g0 + r J^T lam / ||J^T lam||``. The QPs see ``G``
    plus a ridge at that rounding level (singular and, once rounded to float32, slightly indefinite
    Gram matrices are the rule when 0 is in the hull).

    Args:
        G: ``(m, m)`` Gram matrix ``J J^T``, floating-point, in the dtype it was computed in (solved
            in float64, on ``G``'s device; :class:`CAGrad` passes it on the CPU).
        c: radius factor, a finite ``c >= 0`` (:class:`CAGrad` also requires ``c < 1``, the paper's
            range for convergence; the inner problem itself is defined for any ``c >= 0``).
        rtol: relative tolerance on ``||J'w(nu)|| = r nu`` at the root.
        max_iter: cap on bisection steps (each step solves one or two QPs).

    Returns:
        ``(m,)`` float64 weights ``u`` on ``G``'s device with ``d = J^T u`` (``u = b + (r / ||J^T w*||) w*``,
        or ``b + lambda`` in the limit case; ``u = b`` when ``c = 0`` or the mean gradient is 0).

    Raises:
        ValueError: ``c`` negative or not finite; from :func:`torchmoo.ops.min_norm_simplex` /
            :func:`torchmoo.ops.nonneg_qp` for a ``G`` that is not finite or far from positive
            semi-definite.
    """
    try:
        c_value = float(c) if not isinstance(c, (bool, str)) else math.nan
    except (TypeError, ValueError):
        c_value = math.nan
    if not math.isfinite(c_value) or c_value < 0:
        raise ValueError(f"c must be a finite number >= 0, got {c!r}.")
    c = c_value
    # entries of a Gram matrix carry rounding of order eps * max_i ||g_i||^2 (eps of its dtype)
    noise = 10.0 * G.shape[0] * torch.finfo(G.dtype).eps
    G = G.to(torch.float64)
    G = (G + G.mT) / 2
    m = G.shape[0]
    b = torch.full((m,), 1.0 / m, dtype=torch.float64, device=G.device)
    a = G @ b  # J g0
    g0sq = float(b @ a)
    r = c * math.sqrt(max(g0sq, 0.0))
    if g0sq <= 0.0 or r == 0.0:  # ball of radius 0: d = g0
        return b
    gmax = math.sqrt(float(G.diagonal().max()))
    # The QPs below run in float64, whose kernels accept only float64 rounding: a float32-rounded Gram
    # of a rank-deficient J (0 in the hull, collinear rows, m > n) can be indefinite beyond that. The
    # path's QPs are solved with a ridge at the rounding level of G (convex again); the norms ||J'w||,
    # and so the root and the ball, are measured with G itself.
    ridge = noise * gmax * gmax
    eye = torch.eye(m, dtype=torch.float64, device=G.device)
    Gq = G + ridge * eye
    # Below t = ||J'w|| ~ sqrt(noise) * gmax the values of t are rounding, so rho(nu) = t / nu is
    # meaningless for nu < nu_floor; a root there means that 0 is in the hull to working precision.
    nu_floor = math.sqrt(noise) * gmax / r

    def projection() -> Tensor:
        # the limit nu -> 0: d = g0 + J'lam, the projection of g0 onto the cone {d : J d >= 0}. Here G is
        # singular (0 is in the hull); its null directions v >= 0 have a'v = b'Gv = 0 only up to rounding,
        # and the nonneg kernel, which takes pivots below 1e-11 of the diagonal for zero, would follow such
        # a ray and call the problem unbounded. A ridge above that resolution keeps lam bounded.
        delta = max(ridge, 1e-9 * gmax * gmax)
        lam = ops.nonneg_qp(G + delta * eye, a)
        for _ in range(2):  # proximal-point steps: remove most of the ridge's bias (J d = -delta * lam)
            lam = ops.nonneg_qp(G + delta * eye, a - delta * lam)
        # rho <= r was seen down to nu_floor only: below it rho may still exceed r (the projection then
        # lies outside the ball, and the root lies below the resolution of G). Its limit there is the
        # ball's point in the projection's direction, d = g0 + r J'lam / ||J'lam||.
        t = math.sqrt(max(float(lam @ G @ lam), 0.0))
        return b + (lam * (r / t) if t > r else lam)

    def converged(t: float, nu: float) -> bool:
        return abs(t - r * nu) <= rtol * max(t, r * nu)

    # Bracket: rho(nu) <= max_i ||g_i|| / nu = r at nu_hi; step down by 16x until rho > r.
    nu_hi = gmax / r
    w_hi, t_hi = _rho(G, a, nu_hi, Gq)
    if converged(t_hi, nu_hi):
        return b + (r / t_hi) * w_hi
    nu_lo, w_lo, t_lo = nu_hi, w_hi, t_hi
    while t_lo <= r * nu_lo:
        nu_hi, w_hi, t_hi = nu_lo, w_lo, t_lo
        nu_lo = nu_lo / 16.0
        if nu_lo < nu_floor:  # rho <= r along the whole resolvable path
            return projection()
        w_lo, t_lo = _rho(G, a, nu_lo, Gq)
    best = None
    for _ in range(max_iter):
        # candidates: the exact root if the segment is one QP piece, then the geometric midpoint
        cand = _root_on_segment(G, w_lo, w_hi, nu_lo, nu_hi, r)
        for nu in ([cand] if cand is not None and nu_lo < cand < nu_hi else []) + [math.sqrt(nu_lo * nu_hi)]:
            w, t = _rho(G, a, nu, Gq)
            if converged(t, nu):
                best = (w, t)
                break
            if t > r * nu:
                nu_lo, w_lo, t_lo = nu, w, t
            else:
                nu_hi, w_hi, t_hi = nu, w, t
        if best is not None or nu_hi <= nu_lo * (1 + 1e-15):
            break
    if best is None:  # bracket collapsed to rounding: take its upper end (feasible: ||d - g0|| <= r)
        best = (w_hi, t_hi)
    w, t = best
    return b + (r / t) * w


class CAGrad(Aggregator):
    r"""Conflict-averse gradient descent (Liu et al., NeurIPS 2021), inner problem solved exactly.

    ``d`` maximizes :math:`\min_i \langle g_i, d\rangle` over the ball :math:`\|d - g_0\| \le c\|g_0\|`
    around the average gradient :math:`g_0`; see :func:`cagrad_weights` for the exact solution of
    its dual. The returned direction is then rescaled as in the authors' code: ``rescale=1``
    (default) divides by :math:`1 + c^2`, ``rescale=2`` by :math:`1 + c`, ``rescale=0`` not at all.

    Args:
        c: radius factor, ``0 <= c < 1`` (the paper's convergence range; ``c = 0`` is the mean).
        rescale: 0, 1 or 2 (above).

    The weights are computed from ``J J^T`` in float64 on the CPU and returned in ``J``'s dtype and
    device; they are not on the simplex (before rescaling they sum to ``1 + r / ||J^T w*|| >= 1``).

    Raises:
        ValueError: ``c`` outside ``[0, 1)`` (or NaN); ``rescale`` not 0, 1 or 2.
    """

    def __init__(self, c: float = 0.5, rescale: int = 1) -> None:
        super().__init__()
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or not (0.0 <= float(c) < 1.0):
            raise ValueError(f"c must be a number with 0 <= c < 1, got {c!r}.")
        if rescale not in (0, 1, 2):
            raise ValueError(f"rescale must be 0, 1 or 2, got {rescale!r}.")
        self.c = float(c)
        self.rescale = rescale

    def gram_weights(self, G: Tensor, losses: Optional[Tensor] = None) -> Tensor:
        """The rescaled ``(m,)`` CAGrad weights from ``G`` (m, m), in ``G``'s dtype and device."""
        w = cagrad_weights(check_gram(G).cpu(), self.c)  # a few tiny QPs: on the CPU, without syncs
        if self.rescale == 1:
            w = w / (1.0 + self.c**2)
        elif self.rescale == 2:
            w = w / (1.0 + self.c)
        return w.to(dtype=G.dtype, device=G.device)

    def __repr__(self) -> str:
        return f"CAGrad(c={self.c}, rescale={self.rescale})"


class ImprovementFunction(Aggregator):
    r"""Steepest descent on the improvement function (SIMOL Eq. 2; Montonen et al. 2018).

    SIMOL's Eq. 2 steps along :math:`d^* = \arg\min_d H(x + d, x) + \frac{\lambda'}{2}\|d\|^2` with the
    improvement function :math:`H(x', x) = \max_i f_i(x') - f_i(x)` (Definition 2.4). With the
    first-order model :math:`f_i(x + d) - f_i(x) \approx \langle g_i, d\rangle` (SIMOL Eq. 10), the
    minimax theorem and Proposition 3.2 give :math:`d^* = -\frac{1}{\lambda'} J^\top \pi^*` with
    :math:`\pi^*` the min-norm weights of MGDA's problem (Eq. 3). This aggregator returns the
    descent direction ``-d* = J^T pi* / lam`` (the optimizer subtracts it): weights ``pi* / lam``.
    Applied to the losses of a mini-batch of tasks it is SIMOL's "mini-batch improvement function"
    baseline.

    Args:
        lam: the proximal weight :math:`\lambda' > 0`.

    Raises:
        ValueError: ``lam`` is not a positive finite number.
    """

    def __init__(self, lam: float = 1.0) -> None:
        super().__init__()
        if not (float(lam) > 0.0 and math.isfinite(float(lam))):
            raise ValueError(f"lam must be a positive finite number, got {lam}.")
        self.lam = float(lam)

    def gram_weights(self, G: Tensor, losses: Optional[Tensor] = None) -> Tensor:
        """``(m,)`` weights ``pi* / lam`` from ``G`` (m, m), in ``G``'s dtype and device."""
        return min_norm_weights(check_gram(G)) / self.lam

    def __repr__(self) -> str:
        return f"ImprovementFunction(lam={self.lam})"
