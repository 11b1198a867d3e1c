"""Typed wrappers of torchmoo's compiled operators.

Every operator runs on CPU (parallel over the batch) and, when torchmoo was built against a CUDA torch,
on CUDA; the device of the input picks the kernel through torch's dispatcher. Inputs are validated in
the kernels: bad shapes, dtypes, devices, non-finite or asymmetric input raise ``ValueError`` /
``TypeError`` with a sentence that says what is wrong. The results are not differentiable (the QP
solutions are used as weights, as in MGDA).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = ["QPInfo", "min_norm_simplex", "nonneg_qp"]

_ops = torch.ops.torchmoo


class QPInfo(NamedTuple):
    """Per-problem diagnostics of a QP solve, each shaped like the batch dims ``(...)``.

    Attributes:
        iterations: ``int64`` number of active-set changes (or Frank-Wolfe steps).
        kkt_residual: ``float64`` KKT residual of the returned point, relative to the scale
            ``s = max(max|G|, max|c|)`` (definitions in the README's API section).
        converged: ``bool``; False when ``max_iter`` was reached first.
    """

    iterations: Tensor
    kkt_residual: Tensor
    converged: Tensor


def _check_tensor(name: str, value: object) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")


def min_norm_simplex(
    G: Tensor,
    c: Optional[Tensor] = None,
    *,
    method: str = "active_set",
    max_iter: Optional[int] = None,
    tol: Optional[float] = None,
    return_info: bool = False,
) -> Union[Tensor, Tuple[Tensor, QPInfo]]:
    r"""Minimum over the probability simplex of :math:`\tfrac12 w^\top G w + c^\top w`, batched.

    With ``c = None`` this is the min-norm point of MGDA (Sener & Koltun 2018): for ``G = J J^T``,
    ``J^T w`` is the minimum-norm element of the convex hull of the gradients (the rows of ``J``).

    Args:
        G: ``(..., m, m)`` symmetric positive semi-definite matrices (e.g. Gram matrices
            ``J @ J.mT``; :func:`torch.Tensor.mT`), float16/bfloat16/float32/float64, any strides.
            An eigenvalue below ``-k * m * max|G|`` (k = 1e-7 for float64, 1e-5 for float32) raises.
        c: optional ``(..., m)`` linear term, same dtype and device as ``G``.
        method: ``"active_set"`` (default): exact primal active-set method, KKT conditions to about
            1e-12 relative to the scale of ``G``; ``"frank_wolfe"``: plain Frank-Wolfe with exact line
            search (what other libraries use), for comparison.
        max_iter: iteration cap; default ``50 + 10 m`` (active set) or 1000 (Frank-Wolfe).
        tol: optimality tolerance of the problem scaled to ``max(|G|, |c|) = 1``; default 1e-13
            (active set) or 1e-6 (Frank-Wolfe gap).
        return_info: also return a :class:`QPInfo`.

    Returns:
        ``w`` of shape ``(..., m)``, on the simplex, in the dtype and device of ``G``; and the
        :class:`QPInfo` when ``return_info`` is True. If ``G`` and ``c`` are both zero every point is
        optimal and ``w`` is uniform.

    Example:
        >>> J = torch.randn(3, 100, dtype=torch.float64)   # 3 task gradients
        >>> w = min_norm_simplex(J @ J.T)
        >>> d = J.T @ w                                  # common descent direction of MGDA
    """
    _check_tensor("G", G)
    if c is not None:
        _check_tensor("c", c)
    w, iterations, residual, converged = _ops.min_norm_simplex.default(
        G, c, method, -1 if max_iter is None else int(max_iter), -1.0 if tol is None else float(tol)
    )
    if return_info:
        return w, QPInfo(iterations, residual, converged)
    return w


def nonneg_qp(
    G: Tensor,
    c: Tensor,
    *,
    method: str = "active_set",
    max_iter: Optional[int] = None,
    tol: Optional[float] = None,
    radius: Optional[float] = None,
    return_info: bool = False,
) -> Union[Tensor, Tuple[Tensor, QPInfo]]:
    r"""Minimum over :math:`\lambda \ge 0` of :math:`\tfrac12 \lambda^\top G \lambda + c^\top \lambda`, batched.

    This is the dual problem of Pareto Navigation Gradient Descent (Ye & Liu, Eq. 10) with
    ``G = J J^T`` and ``c = J grad_F - phi * 1``.

    Args:
        G: ``(..., m, m)`` symmetric positive semi-definite, float16/bfloat16/float32/float64.
        c: ``(..., m)``, same dtype and device as ``G``.
        method: ``"active_set"`` (default, exact) or ``"frank_wolfe"``: away-step Frank-Wolfe on
            ``{lambda >= 0, sum(lambda) <= R}``.
        max_iter: iteration cap; default ``50 + 10 m`` (active set) or 1000 (Frank-Wolfe).
        tol: optimality tolerance of the problem scaled to ``max(|G|, |c|) = 1``; default 1e-13
            (active set) or 1e-6 (Frank-Wolfe gap).
        radius: Frank-Wolfe only: the bound ``R`` on ``sum(lambda)``. By default the certified bound
            ``max_i(-c_i)_+ / min_{w in simplex} w'Gw`` (from the KKT conditions, as in the paper's
            Lemma 2), which needs ``G`` positive definite on the simplex.
        return_info: also return a :class:`QPInfo`.

    Returns:
        ``lambda`` of shape ``(..., m)`` (and a :class:`QPInfo` when ``return_info`` is True).

    Raises:
        ValueError: if a problem is unbounded below (``G`` singular and ``c`` negative along a
            non-negative null direction), besides the input errors shared by all operators.
    """
    _check_tensor("G", G)
    _check_tensor("c", c)
    lam, iterations, residual, converged = _ops.nonneg_qp.default(
        G,
        c,
        method,
        -1 if max_iter is None else int(max_iter),
        -1.0 if tol is None else float(tol),
        -1.0 if radius is None else float(radius),
    )
    if return_info:
        return lam, QPInfo(iterations, residual, converged)
    return lam
