"""Slow, obviously-correct pure-torch reference solvers for torchmoo's QP operators.

This module is for tests and benchmarks only: it is written for clarity, not speed, and nothing in
the library calls it. Everything is computed in float64 on the CPU, one problem at a time (batches
are looped over in Python).

The two problems (``G`` symmetric positive semi-definite, shapes ``(..., m, m)`` and ``(..., m)``):

* simplex: ``min 0.5 w'Gw + c'w`` over ``w >= 0, sum(w) = 1`` (the MGDA min-norm point when c = 0);
* nonneg:  ``min 0.5 l'Gl + c'l`` over ``l >= 0`` (the dual of Pareto Navigation Gradient Descent).

How they are solved:

* ``m <= 12`` (:data:`ENUMERATION_MAX_M`): enumerate every support ``S`` (every nonempty subset for the
  simplex, every subset including the empty one for nonneg), solve the equality-constrained KKT
  system restricted to ``S`` with a pseudo-inverse (so singular ``G`` works; singular values below
  :data:`PINV_RTOL` times the largest are treated as zero), put the candidate back into ``R^m``
  and keep it when its KKT residual (:func:`simplex_kkt_residual` / :func:`nonneg_kkt_residual`,
  the same definitions the operators use; for nonneg with the complementarity term relative to
  ``max(1, max lam)^2``, so that large multipliers are not rejected for rounding) is at most
  :data:`ACCEPT_RESIDUAL`. The accepted candidate with the smallest objective is returned. This is
  exact: a convex QP that is bounded below attains its minimum (Frank-Wolfe theorem), the optimal
  set is a polytope, and at a vertex of it the KKT system on the vertex's support has a unique
  solution, which the enumeration meets.
* ``m > 12``: a long accelerated projected-gradient run (FISTA with adaptive restart, step ``1/L``,
  ``L`` the largest eigenvalue of ``G``); the simplex projection is the sort-based algorithm of
  Duchi et al. (2008), the nonneg projection is a clamp. Every 100 steps the KKT system on the
  current support is solved exactly ("polishing"); the point with the smallest KKT residual seen
  is returned, and the run stops once that residual is below 1e-13, or when even a restarted step
  does not lower the objective (rounding: with a rank-deficient ``G`` the residual can then stay
  around 1e-9, with the objective correct to about 1e-14; compare objectives, not points).

Unboundedness (nonneg only). The nonneg QP is unbounded below iff there is a direction ``d >= 0``
with ``G d = 0`` and ``c'd < 0``. For ``m <= 12`` the reference declares a problem unbounded when
the enumeration finds no KKT point (by the Frank-Wolfe theorem a bounded problem has a minimizer,
hence a KKT point at a vertex of the optimal set). For ``m > 12`` it solves the linear program
``min c'N y  s.t.  N y >= 0, 1'N y = 1`` with ``N`` an orthonormal basis of the (numerical) null
space of ``G`` (eigenvalues below :data:`PINV_RTOL` times the largest) using
``scipy.optimize.linprog``; a negative optimum is a certificate of unboundedness. Either way a
``ValueError`` whose message contains "unbounded" is raised.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "ENUMERATION_MAX_M",
    "gram_reference",
    "combine_reference",
    "stein_task_matrix_reference",
    "stein_update_reference",
    "min_norm_simplex_reference",
    "minres_reference",
    "nonneg_qp_reference",
    "simplex_kkt_residual",
    "nonneg_kkt_residual",
    "project_simplex",
    "qp_objective",
]

#: Largest m solved by support enumeration; larger problems use accelerated projected gradient.
ENUMERATION_MAX_M = 12
#: Singular values of a KKT system below this times the largest one are treated as zero.
PINV_RTOL = 1e-10
#: A support-enumeration candidate is a KKT point when its residual is at most this.
ACCEPT_RESIDUAL = 1e-9

_f64 = torch.float64


# --------------------------------------------------------------------------------------------------
# Residuals (the definitions of the operator contract)
# --------------------------------------------------------------------------------------------------


def _scale(G: Tensor, c: Tensor) -> Tensor:
    """``s = max(max|G|, max|c|)`` per problem, 1 where that is 0. ``G (..., m, m)``, ``c (..., m)`` -> ``(...)``."""
    sG = G.abs().amax(dim=(-2, -1))
    sc = c.abs().amax(dim=-1)
    s = torch.maximum(sG, sc)
    return torch.where(s > 0, s, torch.ones_like(s))


def _as_problem(G: Tensor, c: Optional[Tensor], x: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    G = G.detach().to(device="cpu", dtype=_f64)
    if G.dim() < 2 or G.shape[-1] != G.shape[-2]:
        raise ValueError(f"G must have shape (..., m, m), got {tuple(G.shape)}")
    c = torch.zeros(G.shape[:-1], dtype=_f64) if c is None else c.detach().to(device="cpu", dtype=_f64)
    if c.shape != G.shape[:-1]:
        raise ValueError(f"c must have shape {tuple(G.shape[:-1])}, got {tuple(c.shape)}")
    if x is not None:
        x = x.detach().to(device="cpu", dtype=_f64)
        if x.shape != G.shape[:-1]:
            raise ValueError(f"the solution must have shape {tuple(G.shape[:-1])}, got {tuple(x.shape)}")
    return G, c, x


def simplex_kkt_residual(G: Tensor, c: Optional[Tensor], w: Tensor) -> Tensor:
    """KKT residual of ``w`` for ``min 0.5 w'Gw + c'w`` over the probability simplex.

    With ``g = Gw + c``, ``gmin = min_i g_i`` and ``s = max(max|G|, max|c|)`` (1 if that is 0)::

        r = max( sum_i w_i (g_i - gmin) / s,  max(0, -min_i w_i),  |sum_i w_i - 1| )

    Args:
        G: ``(..., m, m)``; c: ``(..., m)`` or None (zero); w: ``(..., m)``. Any float dtype/device.

    Returns:
        ``(...)`` float64 CPU tensor of residuals (a 0-d tensor for a single problem).
    """
    G, c, w = _as_problem(G, c, w)
    s = _scale(G, c)
    g = (G @ w.unsqueeze(-1)).squeeze(-1) + c
    gmin = g.amin(dim=-1, keepdim=True)
    stationarity = (w * (g - gmin)).sum(dim=-1) / s
    negativity = (-w.amin(dim=-1)).clamp_min(0.0)
    total = (w.sum(dim=-1) - 1.0).abs()
    return torch.maximum(torch.maximum(stationarity, negativity), total)


def nonneg_kkt_residual(G: Tensor, c: Tensor, lam: Tensor) -> Tensor:
    """KKT residual of ``lam`` for ``min 0.5 l'Gl + c'l`` over ``l >= 0``.

    With ``g = G lam + c`` and ``s = max(max|G|, max|c|)`` (1 if that is 0)::

        r = max( max(max_i max(0, -g_i), max_i lam_i |g_i|) / (s * max(1, max_i lam_i)),
                 max(0, -min_i lam_i) )

    The dual term is relative to the size of ``G lam``, so rounding a large ``lam`` to float32 does not
    count in it; the complementarity term is not: rounding errors ``eps s max(lam)`` in ``g`` give it
    about ``eps max_i lam_i``. This is the operators' definition (README, "KKT residual"), kept as is.

    Args:
        G: ``(..., m, m)``; c: ``(..., m)``; lam: ``(..., m)``. Any float dtype/device.

    Returns:
        ``(...)`` float64 CPU tensor of residuals (a 0-d tensor for a single problem).
    """
    G, c, lam = _as_problem(G, c, lam)
    return _nonneg_residual(G, c, lam, relative_complementarity=False)


def _nonneg_residual(G: Tensor, c: Tensor, lam: Tensor, *, relative_complementarity: bool) -> Tensor:
    """The residual of :func:`nonneg_kkt_residual` for float64 ``G (..., m, m)``, ``c`` and ``lam``
    ``(..., m)``; ``relative_complementarity`` divides the complementarity term once more by
    ``max(1, max lam)`` (see :func:`_nonneg_acceptance_residual`)."""
    s = _scale(G, c)
    g = (G @ lam.unsqueeze(-1)).squeeze(-1) + c
    lam_max = lam.amax(dim=-1).clamp_min(1.0)
    dual = (-g).clamp_min(0.0).amax(dim=-1) / (s * lam_max)
    complementarity = (lam * g.abs()).amax(dim=-1) / (s * lam_max)
    if relative_complementarity:
        complementarity = complementarity / lam_max
    negativity = (-lam.amin(dim=-1)).clamp_min(0.0)
    return torch.maximum(torch.maximum(dual, complementarity), negativity)


def qp_objective(G: Tensor, c: Optional[Tensor], x: Tensor) -> Tensor:
    """``0.5 x'Gx + c'x`` in float64; ``G (..., m, m)``, ``c (..., m)`` or None, ``x (..., m)`` -> ``(...)``."""
    G, c, x = _as_problem(G, c, x)
    return 0.5 * (x * (G @ x.unsqueeze(-1)).squeeze(-1)).sum(-1) + (c * x).sum(-1)


# --------------------------------------------------------------------------------------------------
# Projections
# --------------------------------------------------------------------------------------------------


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection onto the probability simplex along the last dimension (Duchi et al. 2008).

    Sort ``u = sort(v, descending)``, ``rho = max{j : u_j - (sum_{k<=j} u_k - 1) / j > 0}``,
    ``theta = (sum_{k<=rho} u_k - 1) / rho``, and return ``max(v - theta, 0)``.

    Args:
        v: ``(..., m)`` with ``m >= 1``.

    Returns:
        ``(..., m)`` tensor of the dtype and device of ``v``, each row on the simplex.
    """
    if v.dim() == 0 or v.shape[-1] == 0:
        raise ValueError(f"project_simplex needs a (..., m) tensor with m >= 1, got shape {tuple(v.shape)}")
    m = v.shape[-1]
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = torch.cumsum(u, dim=-1) - 1.0
    j = torch.arange(1, m + 1, dtype=v.dtype, device=v.device)
    positive = (u - css / j) > 0  # True for a prefix j = 1..rho (j = 1 is always True)
    rho = positive.sum(dim=-1, keepdim=True).clamp_min(1)
    theta = torch.gather(css, -1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp_min(0.0)


# --------------------------------------------------------------------------------------------------
# Support enumeration (m <= ENUMERATION_MAX_M)
# --------------------------------------------------------------------------------------------------


def _supports(m: int, k: int) -> Tensor:
    """All size-k subsets of range(m) as a (C(m, k), k) int64 tensor."""
    return torch.tensor(list(itertools.combinations(range(m), k)), dtype=torch.long).reshape(-1, k)


def _enumerate_candidates(G: Tensor, c: Tensor, simplex: bool) -> Tensor:
    """Every support's KKT-system solution, embedded in R^m: an (N, m) tensor (G, c already scaled)."""
    m = G.shape[-1]
    out: List[Tensor] = []
    if not simplex:
        out.append(torch.zeros(1, m, dtype=_f64))  # the empty support
    for k in range(1, m + 1):
        S = _supports(m, k)  # (N, k)
        N = S.shape[0]
        G_SS = G[S.unsqueeze(-1), S.unsqueeze(-2)]  # (N, k, k)
        c_S = c[S]  # (N, k)
        if simplex:
            # [G_SS  1] [x_S]   [-c_S]
            # [1'    0] [-nu] = [  1 ]
            K = torch.zeros(N, k + 1, k + 1, dtype=_f64)
            K[:, :k, :k] = G_SS
            K[:, :k, k] = 1.0
            K[:, k, :k] = 1.0
            rhs = torch.cat([-c_S, torch.ones(N, 1, dtype=_f64)], dim=-1)
        else:
            K = G_SS  # G_SS x_S = -c_S
            rhs = -c_S
        sol = (torch.linalg.pinv(K, rtol=PINV_RTOL, hermitian=True) @ rhs.unsqueeze(-1)).squeeze(-1)
        x = torch.zeros(N, m, dtype=_f64)
        x.scatter_(1, S, sol[:, :k])
        out.append(x)
    return torch.cat(out, dim=0)


def _nonneg_acceptance_residual(G: Tensor, c: Tensor, lam: Tensor) -> Tensor:
    """:func:`nonneg_kkt_residual` with the complementarity term divided once more by ``max(1, max lam)``.

    ``G (m, m)``, ``c (m,)``, ``lam (N, m)`` -> ``(N,)``. Rounding ``G lam`` leaves errors of about
    ``eps s max(lam)`` in every ``g_i``, so ``lam_i |g_i|`` carries ``eps s max(lam)^2``: the operators'
    residual, which divides it by ``s max(lam)`` only, exceeds :data:`ACCEPT_RESIDUAL` for an exact
    candidate once ``max(lam)`` is around 1e7 (nearly parallel rows of ``G``), and the enumeration would
    then find no KKT point and call a bounded problem unbounded. Here both terms are relative.
    """
    return _nonneg_residual(G, c, lam, relative_complementarity=True)


def _solve_by_enumeration(G: Tensor, c: Tensor, simplex: bool) -> Optional[Tensor]:
    """Best KKT point over all supports, or None when there is none (nonneg: unbounded)."""
    cand = _enumerate_candidates(G, c, simplex)
    # Candidates solve their reduced systems; round-off may leave x_i = -1e-17 on the support.
    cand = cand.clamp_min(0.0)
    if simplex:
        cand = cand / cand.sum(-1, keepdim=True).clamp_min(1e-300)
        res = simplex_kkt_residual(G.expand(cand.shape[0], -1, -1), c.expand_as(cand), cand)
    else:
        res = _nonneg_acceptance_residual(G, c, cand)
    ok = res <= ACCEPT_RESIDUAL
    if not bool(ok.any()):
        return None
    cand = cand[ok]
    obj = qp_objective(G.expand(cand.shape[0], -1, -1), c.expand_as(cand), cand)
    return cand[int(torch.argmin(obj))]


# --------------------------------------------------------------------------------------------------
# Accelerated projected gradient (m > ENUMERATION_MAX_M)
# --------------------------------------------------------------------------------------------------


def _fista(G: Tensor, c: Tensor, simplex: bool, max_iter: int, tol: float) -> Tensor:
    """FISTA with function-value restart on the scaled problem (max|G|, max|c| <= 1)."""
    m = G.shape[-1]
    L = float(torch.linalg.eigvalsh(G).max().clamp_min(0.0))
    project = project_simplex if simplex else (lambda v: v.clamp_min(0.0))
    residual = simplex_kkt_residual if simplex else nonneg_kkt_residual
    x = torch.full((m,), 1.0 / m, dtype=_f64) if simplex else torch.zeros(m, dtype=_f64)
    if L <= PINV_RTOL:
        # G is (numerically) zero: minimize the linear term. Simplex: uniform over argmin c;
        # nonneg: 0 (bounded only if c >= 0, which the caller has checked).
        if simplex:
            at_min = (c <= c.min() + 1e-15).to(_f64)
            return at_min / at_min.sum()
        return x
    step = 1.0 / L

    def f(v: Tensor) -> float:
        return float(0.5 * v @ (G @ v) + c @ v)

    y, t, fx = x.clone(), 1.0, f(x)
    best, best_res = x, float(residual(G, c, x))
    restarted = False
    for it in range(max_iter):
        x_new = project(y - step * (G @ y + c))
        f_new = f(x_new)
        stalled = False
        if f_new > fx:  # adaptive restart (O'Donoghue & Candes)
            if restarted:  # a plain projected-gradient step from x does not decrease f: x is a fixed point
                stalled = True
            else:
                t, y, restarted = 1.0, x.clone(), True
                continue
        else:
            restarted = False
            t_new = 0.5 * (1.0 + (1.0 + 4.0 * t * t) ** 0.5)
            y = x_new + ((t - 1.0) / t_new) * (x_new - x)
            x, t, fx = x_new, t_new, f_new
        if it % 100 == 0 or stalled or it == max_iter - 1:
            # Polish: solve the KKT system on the current support exactly. Only accepted when its
            # residual is better, so it can speed the run up but never make the answer worse.
            for cand in (x, _polish(G, c, x, simplex)):
                r = float(residual(G, c, cand))
                if r < best_res:
                    best, best_res = cand, r
            if best_res <= tol or stalled:
                break
    return best


def _polish(G: Tensor, c: Tensor, x: Tensor, simplex: bool) -> Tensor:
    """The KKT-system solution on the support {i : x_i > 1e-9 max(x)} of x (G, c scaled)."""
    m = G.shape[-1]
    S = torch.nonzero(x > 1e-9 * float(x.max().clamp_min(1e-300))).flatten()
    k = S.numel()
    if k == 0:
        return torch.zeros(m, dtype=_f64)
    G_SS = G[S.unsqueeze(-1), S.unsqueeze(-2)]
    if simplex:
        K = torch.zeros(k + 1, k + 1, dtype=_f64)
        K[:k, :k] = G_SS
        K[:k, k] = 1.0
        K[k, :k] = 1.0
        rhs = torch.cat([-c[S], torch.ones(1, dtype=_f64)])
    else:
        K, rhs = G_SS, -c[S]
    sol = torch.linalg.pinv(K, rtol=PINV_RTOL, hermitian=True) @ rhs
    out = torch.zeros(m, dtype=_f64)
    out[S] = sol[:k].clamp_min(0.0)
    if simplex:
        out = out / out.sum().clamp_min(1e-300)
    return out


def _nonneg_unbounded_lp(G: Tensor, c: Tensor) -> bool:
    """True when ``min c'd`` over ``d >= 0, G d = 0, sum(d) = 1`` is negative (the problem is unbounded)."""
    evals, evecs = torch.linalg.eigh(G)
    top = float(evals.abs().max()) if evals.numel() else 0.0
    null = evecs[:, evals.abs() <= PINV_RTOL * max(top, 1.0)]  # (m, k) orthonormal basis
    if null.shape[1] == 0:
        return False
    if torch.all(c >= 0):
        return False
    from scipy.optimize import linprog  # lazy: only the large-m reference path needs scipy

    N = null.numpy()
    cost = (c.numpy() @ N)
    res = linprog(
        cost,
        A_ub=-N,
        b_ub=[0.0] * N.shape[0],
        A_eq=N.sum(axis=0, keepdims=True),
        b_eq=[1.0],
        bounds=[(None, None)] * N.shape[1],
        method="highs",
    )
    return bool(res.status == 0 and res.fun < -1e-9)


# --------------------------------------------------------------------------------------------------
# Public solvers
# --------------------------------------------------------------------------------------------------


def _solve_batched(G: Tensor, c: Optional[Tensor], simplex: bool, max_iter: int) -> Tensor:
    G64, c64, _ = _as_problem(G, c)
    m = G64.shape[-1]
    if m == 0:
        raise ValueError("m must be at least 1")
    batch_shape = G64.shape[:-2]
    Gf = G64.reshape(-1, m, m)
    cf = c64.reshape(-1, m)
    out = torch.empty(Gf.shape[0], m, dtype=_f64)
    for b in range(Gf.shape[0]):
        Gb, cb = Gf[b], cf[b]
        s = float(_scale(Gb, cb))
        if float(Gb.abs().max()) == 0.0 and float(cb.abs().max()) == 0.0:
            # Every feasible point is optimal; return the symmetric one (as the operators do).
            out[b] = 1.0 / m if simplex else 0.0
            continue
        Gs, cs = Gb / s, cb / s  # the same minimizers, objective scaled by 1/s
        if m <= ENUMERATION_MAX_M:
            x = _solve_by_enumeration(Gs, cs, simplex)
            if x is None and simplex:
                # The simplex is compact, so a KKT point exists; enumeration misses it only when rounding
                # (float32 data of a singular G) leaves every support's KKT test just outside tolerance.
                # Projected gradient does not depend on those tests.
                x = _fista(Gs, cs, simplex, max_iter=max_iter, tol=1e-13)
            if x is None:
                raise ValueError(
                    f"nonneg_qp_reference: the problem at batch index {b} is unbounded below "
                    "(no support has a KKT point)"
                )
        else:
            if not simplex and _nonneg_unbounded_lp(Gs, cs):
                raise ValueError(
                    f"nonneg_qp_reference: the problem at batch index {b} is unbounded below "
                    "(a direction d >= 0 with G d = 0 and c'd < 0 exists)"
                )
            x = _fista(Gs, cs, simplex, max_iter=max_iter, tol=1e-13)
        out[b] = x
    return out.reshape(*batch_shape, m)


def min_norm_simplex_reference(G: Tensor, c: Optional[Tensor] = None, *, max_iter: int = 200_000) -> Tensor:
    """Reference solution of ``min 0.5 w'Gw + c'w`` over the probability simplex.

    Args:
        G: ``(..., m, m)`` symmetric PSD (any float dtype; converted to float64).
        c: ``(..., m)`` or None (zero).
        max_iter: iteration cap of the accelerated projected gradient used for ``m > 12``.

    Returns:
        ``w``: ``(..., m)`` float64 CPU tensor. When the minimizer is not unique any minimizer may be
        returned (G = 0 and c = 0 gives the uniform vector).
    """
    return _solve_batched(G, c, simplex=True, max_iter=max_iter)


def nonneg_qp_reference(G: Tensor, c: Tensor, *, max_iter: int = 200_000) -> Tensor:
    """Reference solution of ``min 0.5 l'Gl + c'l`` over ``l >= 0``.

    Args:
        G: ``(..., m, m)`` symmetric PSD (any float dtype; converted to float64).
        c: ``(..., m)``.
        max_iter: iteration cap of the accelerated projected gradient used for ``m > 12``.

    Returns:
        ``lam``: ``(..., m)`` float64 CPU tensor (any minimizer when it is not unique; 0 when G = 0, c = 0).

    Raises:
        ValueError: containing "unbounded" when some problem of the batch is unbounded below.
    """
    if c is None:
        raise ValueError("nonneg_qp_reference needs c")
    return _solve_batched(G, c, simplex=False, max_iter=max_iter)


# --------------------------------------------------------------------------------------------------
# Gram matrix
# --------------------------------------------------------------------------------------------------


def gram_reference(J: Tensor) -> Tensor:
    """Reference of :func:`torchmoo.ops.gram`: ``J J^T`` in float64 on the CPU.

    Args:
        J: ``(..., m, n)``, any float dtype and device.

    Returns:
        ``(..., m, m)`` float64 CPU tensor ``J.double() @ J.double().mT``.
    """
    if J.dim() < 2:
        raise ValueError(f"J must have shape (..., m, n), got {tuple(J.shape)}")
    J64 = J.detach().to(device="cpu", dtype=_f64)
    return J64 @ J64.mT


# --------------------------------------------------------------------------------------------------
# combine (reference of torchmoo.ops.combine)
# --------------------------------------------------------------------------------------------------


def combine_reference(J: Tensor, w: Tensor) -> Tensor:
    """Reference of :func:`torchmoo.ops.combine`: ``sum_i w_i J_i`` in float64 on the CPU.

    Args:
        J: ``(..., m, n)``; w: ``(..., m)``; any float dtype and device.

    Returns:
        ``(..., n)`` float64 CPU tensor, the rows of ``J`` added one by one with their weights.
    """
    J64 = J.detach().to(device="cpu", dtype=_f64)
    w64 = w.detach().to(device="cpu", dtype=_f64)
    out = torch.zeros((*J64.shape[:-2], J64.shape[-1]), dtype=_f64)
    for i in range(J64.shape[-2]):
        out += w64[..., i : i + 1] * J64[..., i, :]
    return out


# --------------------------------------------------------------------------------------------------
# MT-SGD's Stein operators (references of torchmoo.ops.stein_task_matrix / stein_update)
# --------------------------------------------------------------------------------------------------


def _rbf_terms(xa: Tensor, xb: Tensor, h: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """For ``k(x_a, x_b) = exp(-|x_a - x_b|^2 / h)``: ``k``, ``dk/dx_a``, ``dk/dx_b`` and the trace of
    ``d^2 k / dx_a dx_b``, from the explicit derivatives
    ``dk/dx_a = -(2/h) k (x_a - x_b)``, ``dk/dx_b = (2/h) k (x_a - x_b)`` and
    ``d^2 k / dx_a dx_b = (2/h) k (I - (2/h) (x_a - x_b)(x_a - x_b)^T)``."""
    diff = xa - xb
    r2 = diff @ diff
    k = torch.exp(-r2 / h)
    dk_da = -(2.0 / h) * k * diff
    dk_db = (2.0 / h) * k * diff
    trace = (2.0 / h) * k * (xa.shape[0] - (2.0 / h) * r2)
    return k, dk_da, dk_db, trace


def stein_task_matrix_reference(X: Tensor, S: Tensor, h: float) -> Tensor:
    """Reference of :func:`torchmoo.ops.stein_task_matrix`: MT-SGD's ``U`` term by term, float64, CPU.

    A double loop over the particle pairs ``(a, b)`` that adds the four terms of supplement Eq. 3,
    ``k_ab <S_ia, S_jb> + <S_ia, dk_ab/dx_b> + <S_jb, dk_ab/dx_a> + tr(d^2 k_ab / dx_a dx_b)``, for every
    ``(i, j)``, and divides by ``M^2``. ``O(M^2 K^2 d)``: for small problems.

    Args:
        X: ``(M, d)``; S: ``(K, M, d)``; any float dtype and device. h: the bandwidth.

    Returns:
        ``(K, K)`` float64 CPU tensor.
    """
    X64 = X.detach().to(device="cpu", dtype=_f64)
    S64 = S.detach().to(device="cpu", dtype=_f64)
    K, M, _ = S64.shape
    U = torch.zeros(K, K, dtype=_f64)
    for a in range(M):
        for b in range(M):
            k, dk_da, dk_db, trace = _rbf_terms(X64[a], X64[b], h)
            Sa, Sb = S64[:, a], S64[:, b]  # (K, d): the scores of every target at x_a and x_b
            U += k * (Sa @ Sb.T) + (Sa @ dk_db)[:, None] + (Sb @ dk_da)[None, :] + trace
    return U / (M * M)


def stein_update_reference(X: Tensor, S: Tensor, w: Tensor, h: float) -> Tensor:
    """Reference of :func:`torchmoo.ops.stein_update`: ``sum_i w_i mean_b [k(x_b, x_a) S_ib + dk(x_b, x_a)/dx_b]``.

    A double loop over the particles ``a`` (where the update is evaluated) and ``b`` (the kernel's
    first argument), with the explicit derivative ``dk(x_b, x_a)/dx_b = -(2/h) k (x_b - x_a)``; float64, CPU.

    Returns:
        ``(M, d)`` float64 CPU tensor.
    """
    X64 = X.detach().to(device="cpu", dtype=_f64)
    S64 = S.detach().to(device="cpu", dtype=_f64)
    w64 = w.detach().to(device="cpu", dtype=_f64)
    M = X64.shape[0]
    out = torch.zeros_like(X64)
    for a in range(M):
        for b in range(M):
            k, dk_dfirst, _, _ = _rbf_terms(X64[b], X64[a], h)  # k(x_b, x_a) and its gradient in x_b
            for i in range(S64.shape[0]):
                out[a] += w64[i] * (k * S64[i, b] + dk_dfirst)
    return out / M


# --------------------------------------------------------------------------------------------------
# MINRES (reference of torchmoo.ops.minres)
# --------------------------------------------------------------------------------------------------


def minres_reference(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    max_iter: int = 50,
    tol: float = 1e-6,
    shift: float = 0.0,
) -> Tuple[Tensor, "MinresInfo"]:
    r"""Textbook MINRES (Paige & Saunders 1975) for :math:`(H - \sigma I) x = b`, one right-hand side at a time.

    The recurrence and the stopping rules of :func:`torchmoo.ops.minres`, written out with torch
    vector operations in ``b``'s dtype and device (scalars in Python floats, dot products in
    float64). For ``b`` of shape ``(k, n)`` the ``k`` right-hand sides are solved one after the
    other and ``matvec`` receives ``(1, n)`` tensors; for ``(n,)`` it receives ``(n,)``.
    Returns ``(x, MinresInfo)`` like the operator, with ``matvec_calls`` summed over the right-hand sides.
    """
    from torchmoo.ops import MinresInfo  # the operator's result type

    single = b.dim() == 1
    rhs = b.detach().reshape(1, -1) if single else b.detach()

    def apply(v: Tensor) -> Tensor:
        return matvec(v) if single else matvec(v.unsqueeze(0))[0]

    xs, iterations, histories, reasons, calls = [], [], [], [], 0
    for row in rhs:
        x, history, reason, row_calls = _minres_one(apply, row, max_iter, tol, shift)
        xs.append(x)
        iterations.append(len(history) - 1)
        histories.append(history)
        reasons.append(reason)
        calls += row_calls
    t = max(iterations, default=0)
    residuals = torch.tensor([h + [h[-1]] * (t + 1 - len(h)) for h in histories], dtype=_f64).reshape(len(xs), t + 1)
    x = torch.stack(xs) if xs else torch.zeros_like(rhs)
    its = torch.tensor(iterations, dtype=torch.int64)
    if single:
        return x.reshape(b.shape), MinresInfo(its[0], residuals[0], reasons[0], calls)
    return x, MinresInfo(its, residuals, tuple(reasons), calls)


def _dot(a: Tensor, b: Tensor) -> float:
    return float(torch.dot(a.to(_f64), b.to(_f64)))


def _minres_one(apply, b: Tensor, max_iter: int, tol: float, shift: float):
    """One right-hand side: returns (x, [||r_0||, ||r_1||, ...], stop reason, matvec calls)."""
    eps = torch.finfo(b.dtype).eps
    x = torch.zeros_like(b)
    bnorm = math.sqrt(_dot(b, b))
    history = [bnorm]
    if bnorm == 0.0:
        return x, history, "b_zero", 0

    # Lanczos: H v_j = beta_j v_{j-1} + alfa_j v_j + beta_{j+1} v_{j+1}, v_1 = b / ||b||, giving the
    # tridiagonal T_{j+1,j}; x_j = V_j y_j with y_j = argmin ||beta_1 e_1 - T_{j+1,j} y||, solved by
    # Givens rotations Q_j applied as the columns of T arrive. The rotated columns give the
    # directions w_j (x_j = x_{j-1} + phi_j w_j) and the residual norm phibar_j.
    v_prev = torch.zeros_like(b)
    v = b * (1.0 / bnorm)
    beta = bnorm                    # beta_j, the norm that normalized v_j
    w_prev2 = torch.zeros_like(b)   # w_{j-2}
    w_prev = torch.zeros_like(b)    # w_{j-1}
    c, s = -1.0, 0.0                # the rotation Q_{j-1}
    dbar, eps_carry = 0.0, 0.0      # entries of column j that Q_{j-1} left for step j
    phibar = bnorm
    tnorm2 = 0.0
    calls = 0
    for j in range(1, max_iter + 1):
        y = apply(v)
        calls += 1
        y = y - shift * v - beta * v_prev
        alfa = _dot(v, y)
        y = y - alfa * v
        beta_next = math.sqrt(_dot(y, y))
        if not (math.isfinite(alfa) and math.isfinite(beta_next)):
            raise ValueError(f"minres_reference: matvec returned NaN or infinity at iteration {j}.")
        tnorm2 += alfa**2 + (beta**2 if j > 1 else 0.0) + beta_next**2
        anorm = math.sqrt(tnorm2)  # ||T_{j+1,j}||_F, the estimate of ||H - shift I||

        # Q_{j-1} applied to column j of T: (dbar_j, alfa_j, beta_{j+1}) -> (delta_j, gbar_j, dbar_{j+1}).
        oldeps = eps_carry
        delta = c * dbar + s * alfa
        gbar = s * dbar - c * alfa
        eps_carry = s * beta_next
        dbar = -c * beta_next
        # ||(H - shift I) r_{j-1}|| / ||r_{j-1}|| = hypot(gbar_j, dbar_{j+1}): x_{j-1} is a least-squares solution.
        if math.hypot(gbar, dbar) <= max(tol, eps) * anorm:
            return x, history, "least_squares", calls

        # The rotation Q_j that annihilates beta_{j+1}.
        gamma = math.hypot(gbar, beta_next)
        c, s = gbar / gamma, beta_next / gamma
        phi, phibar = c * phibar, s * phibar
        w = (v - oldeps * w_prev2 - delta * w_prev) * (1.0 / gamma)
        x = x + phi * w
        w_prev2, w_prev = w_prev, w
        history.append(phibar)

        if phibar <= tol * bnorm:
            return x, history, "converged", calls
        if beta_next <= 10.0 * eps * anorm:
            return x, history, "breakdown", calls
        v_prev, v = v, y * (1.0 / beta_next)
        beta = beta_next
    return x, history, "max_iter", calls
