"""Typed wrappers of torchmoo's compiled operators.

Every operator runs on CPU (parallel over the batch) and, when torchmoo was built against a CUDA torch,
on CUDA; the device of the input picks the kernel through torch's dispatcher. Inputs are validated in
the kernels: bad shapes, dtypes, devices, non-finite or asymmetric input raise ``ValueError`` /
``TypeError`` with a sentence that says what is wrong. :func:`gram` and :func:`combine` are
differentiable; the other results are not (the QP solutions are used as weights, as in MGDA).
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "QPInfo", "min_norm_simplex", "nonneg_qp", "gram", "combine", "combine_weight_dtype", "stein_task_matrix",
    "stein_update", "MinresInfo", "minres",
]

_ops = torch.ops.torchmoo
#: The dtypes of the QP, gram and combine kernels.
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class QPInfo(NamedTuple):
    """Per-problem diagnostics of a QP solve, each shaped like the batch dims ``(...)``.

    Attributes:
        iterations: ``int64``; active set: the solves with the Cholesky factor (the full-support step,
            each subspace step after an index enters or leaves, each zero-curvature ray step), never
            more than ``max_iter`` (the CPU fast path for ``m <= 8`` reports 1, or 2 when one index was
            dropped); Frank-Wolfe: the steps.
        kkt_residual: ``float64`` KKT residual of the returned point, relative to the scale
            ``s = max(max|G|, max|c|)`` (definitions in the README's API section).
        converged: ``bool``; False whenever ``max_iter`` stopped the solve before the KKT conditions
            were certified (the returned point is feasible either way, and ``kkt_residual`` is its
            residual).
    """

    iterations: Tensor
    kkt_residual: Tensor
    converged: Tensor


def _check_tensor(name: str, value: object) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")


def _qp_options(
    op: str, method: object, max_iter: object, tol: object, radius: object = None
) -> Tuple[str, int, float, float]:
    """The QP options as the kernels take them (``-1`` = default), or a clear error: a Python-side
    ``TypeError`` / ``ValueError`` that names the argument, before any dispatch (the kernels reject the
    same values, for direct ``torch.ops`` calls)."""
    if not isinstance(method, str):
        raise TypeError(f"{op}: method must be a str ('active_set' or 'frank_wolfe'), got {type(method).__name__}.")
    # Checked here too (not only in the kernels) so that meta tensors and torch.compile's tracing reject it.
    if method not in ("active_set", "frank_wolfe"):
        raise ValueError(f"{op}: method must be 'active_set' or 'frank_wolfe', got {method!r}.")
    if max_iter is None:
        max_iter_i = -1
    else:
        if isinstance(max_iter, (bool, float)):
            raise TypeError(f"{op}: max_iter must be an int, got {type(max_iter).__name__}.")
        try:
            max_iter_i = operator.index(max_iter)
        except TypeError:
            raise TypeError(f"{op}: max_iter must be an int, got {type(max_iter).__name__}.") from None
        if max_iter_i < 0:
            raise ValueError(f"{op}: max_iter must be >= 0, got {max_iter_i}.")
    out = []
    for name, value in (("tol", tol), ("radius", radius)):
        if value is None:
            out.append(-1.0)
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__}.")
        v = float(value)
        if not (math.isfinite(v) and v > 0.0):
            raise ValueError(f"{op}: {name} must be a finite number > 0, got {v}.")
        out.append(v)
    return method, max_iter_i, out[0], out[1]


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
        max_iter: iteration cap, an int ``>= 0``; default ``50 + 10 m`` (active set) or 1000 (Frank-Wolfe).
        tol: optimality tolerance of the problem scaled to ``max(|G|, |c|) = 1``, finite and ``> 0``;
            default 1e-13 (active set; 1e-8 for float32 input) or 1e-6 (Frank-Wolfe gap).
        return_info: also return a :class:`QPInfo`.

    Returns:
        ``w`` of shape ``(..., m)``, on the simplex, in the dtype and device of ``G``; and the
        :class:`QPInfo` when ``return_info`` is True. If ``G`` and ``c`` are both zero every point is
        optimal and ``w`` is uniform. Not differentiable: ``G`` and ``c`` are read as constants (``w``
        does not require grad). Works on meta tensors and under ``torch.compile``.

    Raises:
        TypeError: ``G`` or ``c`` is not a tensor or not of a supported floating dtype, ``c`` of another
            dtype; a ``method`` that is not a str, a ``max_iter`` that is not an int, a ``tol`` that
            is not a real number.
        ValueError: ``G`` not ``(..., m, m)`` with ``m >= 1``, ``c`` not ``(..., m)`` or on another
            device; NaN or infinity in ``G`` or ``c``; ``G`` not symmetric or not positive semi-definite
            (beyond the tolerance above); an unknown ``method``, ``max_iter < 0``, a ``tol`` that is not
            finite and ``> 0``.

    Example:
        >>> J = torch.randn(3, 100, dtype=torch.float64)   # 3 task gradients
        >>> w = min_norm_simplex(J @ J.T)
        >>> d = J.T @ w                                  # common descent direction of MGDA
    """
    _check_tensor("G", G)
    if c is not None:
        _check_tensor("c", c)
    method, max_iter, tol, _ = _qp_options("min_norm_simplex", method, max_iter, tol)
    # Not differentiable: detached inputs keep torch's autograd fallback (which warns and drops the
    # gradient) out of the graph, and w does not pretend to require grad.
    w, iterations, residual, converged = _ops.min_norm_simplex.default(
        G.detach(), None if c is None else c.detach(), method, max_iter, tol
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
        max_iter: iteration cap, an int ``>= 0``; default ``50 + 10 m`` (active set) or 1000 (Frank-Wolfe).
        tol: optimality tolerance of the problem scaled to ``max(|G|, |c|) = 1``, finite and ``> 0``;
            default 1e-13 (active set; 1e-8 for float32 input) or 1e-6 (Frank-Wolfe gap).
        radius: Frank-Wolfe only (a finite number ``> 0``): the bound ``R`` on ``sum(lambda)``. By default the certified bound
            ``max_i(-c_i)_+ / min_{w in simplex} w'Gw`` (from the KKT conditions, as in the paper's
            Lemma 2), which needs ``G`` positive definite on the simplex.
        return_info: also return a :class:`QPInfo`.

    Returns:
        ``lambda`` of shape ``(..., m)`` (and a :class:`QPInfo` when ``return_info`` is True). Not
        differentiable, like :func:`min_norm_simplex`.

    Raises:
        ValueError: if a problem is unbounded below (``G`` singular and ``c`` negative along a
            non-negative null direction), besides the input errors shared by all operators.
        TypeError / ValueError: a ``method`` that is not a str, a ``max_iter`` that is not an int
            ``>= 0``, a ``tol`` or ``radius`` that is not a finite positive number (as for
            :func:`min_norm_simplex`).
    """
    _check_tensor("G", G)
    _check_tensor("c", c)
    method, max_iter, tol, radius = _qp_options("nonneg_qp", method, max_iter, tol, radius)
    lam, iterations, residual, converged = _ops.nonneg_qp.default(
        G.detach(), c.detach(), method, max_iter, tol, radius
    )
    if return_info:
        return lam, QPInfo(iterations, residual, converged)
    return lam


def _qp_fake_outputs(op: str, G: Tensor, c: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    # Shape propagation for meta tensors and torch.compile, with the kernels' dtype and shape errors; the
    # value checks run in the kernels.
    if G.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{op}: G must be a floating-point tensor (float16, bfloat16, float32 or float64), got {G.dtype}."
        )
    if G.dim() < 2 or G.shape[-1] != G.shape[-2] or G.shape[-1] < 1:
        raise ValueError(f"{op}: G must have shape (..., m, m) with m >= 1, got shape {tuple(G.shape)}.")
    if c is not None and c.dtype != G.dtype:
        raise TypeError(f"{op}: c must have the dtype of G ({G.dtype}), got {c.dtype}.")
    if c is not None and tuple(c.shape) != tuple(G.shape[:-1]):
        raise ValueError(
            f"{op}: c must have shape (..., m) = {tuple(G.shape[:-1])} to match G of shape {tuple(G.shape)}, "
            f"got {tuple(c.shape)}."
        )
    batch = G.shape[:-2]
    return (
        G.new_empty(G.shape[:-1]),
        G.new_empty(batch, dtype=torch.int64),
        G.new_empty(batch, dtype=torch.float64),
        G.new_empty(batch, dtype=torch.bool),
    )


def _min_norm_simplex_fake(G: Tensor, c: Optional[Tensor] = None, method: str = "active_set", max_iter: int = -1,
                           tol: float = -1.0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _qp_fake_outputs("min_norm_simplex", G, c)


def _nonneg_qp_fake(G: Tensor, c: Tensor, method: str = "active_set", max_iter: int = -1, tol: float = -1.0,
                    radius: float = -1.0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _qp_fake_outputs("nonneg_qp", G, c)


torch.library.register_fake("torchmoo::min_norm_simplex")(_min_norm_simplex_fake)
torch.library.register_fake("torchmoo::nonneg_qp")(_nonneg_qp_fake)


def gram(J: Tensor, *, check_finite: bool = True) -> Tensor:
    r"""Gram matrix :math:`G = J J^\top` of the rows of ``J``, batched, in one pass over ``J``.

    The first step of MGDA and of every method that solves a QP over task gradients: for a Jacobian
    ``J`` of ``m`` objectives by ``n`` parameters (``n >> m``), ``G[i, j] = <g_i, g_j>``. torch's GEMM is
    slow for such short-fat operands (for ``m = 10``, ``n = 1e6``, 2 threads: about 13 reads of ``J``);
    this kernel reads ``J`` once: a symmetric rank-k update over column blocks that stay in cache,
    SIMD dot products accumulated in float64 across blocks, parallel over column chunks.

    Args:
        J: ``(..., m, n)`` tensor, float32 or float64 (float16 / bfloat16: computed in float32 and
            returned in the input dtype; on the CPU this makes one float32 copy of ``J``), any strides
            (a last dim with stride other than 1 is copied once), on CPU or CUDA.
        check_finite: raise for NaN / infinity in ``J`` or an overflowing ``G`` (default). On CUDA the
            check synchronizes the stream; ``False`` skips it and returns such entries as they are (for
            a caller that checks a sum of many Gram matrices once, as :func:`torchmoo.backward` does).

    Returns:
        ``G`` of shape ``(..., m, m)``, dtype and device of ``J``, exactly symmetric (``G[i, j]`` and
        ``G[j, i]`` are the same number). ``n = 0`` gives zeros, ``m = 0`` an empty ``(..., 0, 0)``.

    Accuracy and determinism:
        float32 input: each dot product is summed in float32 over blocks of at most 1024 columns
        (SIMD lanes split a block further) and in float64 across blocks, then rounded to float32; the
        error is of the order of the float32 rounding of ``G`` itself (relative 1e-7 for ``n = 1e6``
        in the tests), usually smaller than that of ``J @ J.mT``. Where the CPU kernel runs (see Kernel
        choice) the result is bitwise the same for any number of threads (the column chunks depend on
        ``m`` and ``n`` only); the ``torch.matmul`` path is as deterministic as torch's GEMM, whose result
        can change with the thread count (MKL's does). The CUDA result is deterministic on a given GPU
        (no atomics). As with any float32 product, entries of ``J`` below about ``1e-19`` in magnitude
        lose precision (their products are subnormal).

    Kernel choice:
        CPU: the kernel runs for ``m <= 64`` (and up to ``m = 256`` when ``n >= 64 m`` on CPUs with
        AVX2); otherwise ``torch.matmul``, whose upper triangle is mirrored so that ``G`` is still
        exactly symmetric. The AVX2 + FMA build is picked at run time; ``ATEN_CPU_CAPABILITY=default``
        (torch's switch) selects the portable one. CUDA: the kernel for ``m <= 64``, else ``torch.matmul``.

    Differentiable: the gradient with respect to ``J`` is ``(dG + dG^T) J``.

    Raises:
        TypeError: ``J`` is not a tensor, or not of a floating dtype.
        ValueError: ``J`` has fewer than 2 dims; ``J`` contains NaN or infinity; or ``J J^T`` overflows
            the dtype (e.g. float32 entries of ``J`` around ``1e19``). The message names the batch index.
            These are detected on ``G`` (a non-finite row of ``J`` makes a diagonal entry of ``G``
            non-finite), so the check costs no extra pass over ``J``; on CUDA it synchronizes the stream.

    Example:
        >>> J = torch.randn(10, 1_000_000)          # 10 task gradients
        >>> G = gram(J)                             # (10, 10), == J @ J.T up to rounding
        >>> w = min_norm_simplex(G)                 # MGDA weights
        >>> d = w @ J                               # common descent direction
    """
    _check_tensor("J", J)
    return _ops.gram.default(J, bool(check_finite))


def _gram_setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])


def _gram_backward(ctx, grad: Tensor):
    (J,) = ctx.saved_tensors
    return (grad + grad.mT) @ J, None


def _gram_fake(J: Tensor, check_finite: bool = True) -> Tensor:
    # Shape propagation for meta tensors and torch.compile, with the kernels' dtype and shape errors
    # (the value checks run in the kernels).
    if J.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"gram: J must be a floating-point tensor (float16, bfloat16, float32 or float64), got {J.dtype}."
        )
    if J.dim() < 2:
        raise ValueError(f"gram: J must have shape (..., m, n) (at least 2 dims), got shape {tuple(J.shape)}.")
    return J.new_empty((*J.shape[:-1], J.shape[-2]))


torch.library.register_autograd("torchmoo::gram", _gram_backward, setup_context=_gram_setup_context)
torch.library.register_fake("torchmoo::gram")(_gram_fake)


# --------------------------------------------------------------------------------------------------
# combine: d = sum_i w_i J_i
# --------------------------------------------------------------------------------------------------


def combine(J: Tensor, w: Tensor, *, check_finite: bool = True) -> Tensor:
    r"""The combination :math:`d = \sum_i w_i J_i = w^\top J` of the rows of ``J``, batched, in one pass over ``J``.

    The last step of MGDA and of every aggregator: the update direction from the Jacobian ``J`` (``m``
    objectives by ``n`` parameters) and the weights ``w``. It computes what ``(w.unsqueeze(-2) @ J).squeeze(-2)``
    does, reading ``J`` once in column blocks, at about the speed of a plain read of ``J`` (``J.sum()``).

    Args:
        J: ``(..., m, n)``, float16/bfloat16/float32/float64 (half types: computed from a float32 copy
            and returned in the input dtype), any strides (a last dim with stride other than 1 is
            copied once), on CPU or CUDA.
        w: ``(..., m)`` with the batch dims of ``J`` (no broadcasting: expand a shared ``w`` first),
            same device, ``J``'s dtype or :func:`combine_weight_dtype` of it (float32 for half ``J``, whose
            sums are float32 anyway: weights beyond float16's range can still give a finite ``d``).
        check_finite: raise for NaN / infinity in the result (default); ``False`` skips the check,
            which on CUDA synchronizes the stream.

    Returns:
        ``d`` of shape ``(..., n)``, dtype and device of ``J``. ``m = 0`` gives zeros.

    Accuracy and determinism:
        Every entry is ``w_0 J_0 + w_1 J_1 + ...`` summed in this order in the dtype (float32 for half
        types), as a matrix-vector product does: ``m`` terms, error at most about ``m eps sum_i |w_i J_i|``.
        (Widening float32 to float64 would cost time here: the kernel runs at memory speed with float32
        sums.) Each entry is computed by one thread in a fixed order: bitwise the same for any number of
        threads (CPU) and run to run (CUDA).

    Differentiable in ``J`` and ``w`` (``dJ = w g^T``, ``dw = J g`` for an output gradient ``g``).

    Raises:
        TypeError: non-tensor input, non-floating ``J``, ``w`` of another dtype (but float32 for half ``J``).
        ValueError: ``J`` with fewer than 2 dims; ``w`` of the wrong shape or on another device; NaN or
            infinity in ``J`` or ``w``, or a sum that overflows the dtype (detected on the result, so it
            costs no extra pass; the message names the batch index).

    Example:
        >>> J = torch.randn(10, 1_000_000)
        >>> w = min_norm_simplex(gram(J))           # MGDA weights
        >>> d = combine(J, w)                       # (1_000_000,), == w @ J up to rounding
    """
    _check_tensor("J", J)
    _check_tensor("w", w)
    if w.device != J.device:
        raise ValueError(f"combine: w is on {w.device} but J is on {J.device}; pass both on the same device.")
    return _ops.combine.default(J, w, bool(check_finite))


def combine_weight_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype in which :func:`combine` takes the weights for a ``J`` of ``dtype`` at full precision: float32
    for float16 / bfloat16 (the dtype of its sums), ``dtype`` itself otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _combine_setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], inputs[1])


def _combine_backward(ctx, grad: Tensor):
    J, w = ctx.saved_tensors
    dJ = w.unsqueeze(-1) * grad.unsqueeze(-2) if ctx.needs_input_grad[0] else None
    dw = (J @ grad.unsqueeze(-1)).squeeze(-1) if ctx.needs_input_grad[1] else None
    return dJ, dw, None


def _combine_fake(J: Tensor, w: Tensor, check_finite: bool = True) -> Tensor:
    # Shape propagation, with the kernels' dtype and shape errors.
    if J.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"combine: J must be a floating-point tensor (float16, bfloat16, float32 or float64), got {J.dtype}."
        )
    wide = combine_weight_dtype(J.dtype)
    if w.dtype not in (J.dtype, wide):
        alt = "" if wide == J.dtype else f" or {wide}"
        raise TypeError(f"combine: w must have the dtype of J ({J.dtype}{alt}), got {w.dtype}.")
    if J.dim() < 2:
        raise ValueError(f"combine: J must have shape (..., m, n) (at least 2 dims), got shape {tuple(J.shape)}.")
    if tuple(w.shape) != tuple(J.shape[:-1]):
        raise ValueError(
            f"combine: w must have shape (..., m) with the batch dims of J, i.e. {tuple(J.shape[:-1])} for J of "
            f"shape {tuple(J.shape)}, got {tuple(w.shape)} (expand w to J's batch dims first if it is shared)."
        )
    return J.new_empty((*J.shape[:-2], J.shape[-1]))


torch.library.register_autograd("torchmoo::combine", _combine_backward, setup_context=_combine_setup_context)
torch.library.register_fake("torchmoo::combine")(_combine_fake)


# --------------------------------------------------------------------------------------------------
# MT-SGD's Stein operators
# --------------------------------------------------------------------------------------------------


def _stein_inputs(op: str, X: object, S: object, h: object) -> float:
    """Checks that must precede dispatch (types, devices) and the bandwidth; the kernels check the rest."""
    _check_tensor("X", X)
    _check_tensor("S", S)
    if S.device != X.device:
        raise ValueError(f"{op}: S is on {S.device} but X is on {X.device}; pass both on the same device.")
    if isinstance(h, Tensor):
        if h.numel() != 1:
            raise ValueError(f"{op}: the bandwidth h must be a positive number, got a tensor of shape {tuple(h.shape)}.")
        h = h.item()
    # numbers.Real: numpy scalars (np.float32, np.int64) are bandwidths too, as they are QP options.
    if isinstance(h, bool) or not isinstance(h, numbers.Real):
        raise TypeError(f"{op}: the bandwidth h must be a positive number, got {type(h).__name__}.")
    h = float(h)
    if not math.isfinite(h) or h <= 0.0:
        raise ValueError(f"{op}: the bandwidth h must be a positive finite number, got {h}.")
    return h


def stein_task_matrix(X: Tensor, S: Tensor, h: float) -> Tensor:
    r"""MT-SGD's task matrix ``U`` ``(K, K)``: ``U[i, j] = <phi_i, phi_j>`` in the RKHS of the RBF kernel.

    For ``M`` particles ``X`` ``(M, d)``, scores ``S[i, a] = grad log p_i(x_a)`` ``(K, M, d)`` and the kernel
    ``k_ab = exp(-|x_a - x_b|^2 / h)`` (Phan et al., NeurIPS 2022, supplement Eq. 3 and section 1.3)::

        U[i, j] = mean_{a, b} [ k_ab <S[i, a], S[j, b]> + <S[i, a], grad_{x_b} k_ab>
                                + <S[j, b], grad_{x_a} k_ab> + tr(d^2 k_ab / d x_a d x_b) ]

    which for the RBF kernel is ``(G + c 1' + 1 c' + const) / M^2`` with ``G[i, j] = sum_ab k_ab <S[i, a], S[j, b]>``,
    ``c_i = (2/h) sum_ab k_ab <S[i, a], x_a - x_b>`` and ``const = (2/h) sum_ab k_ab (d - 2 |x_a - x_b|^2 / h)``.

    The kernel reads ``S`` once and never forms a ``(M, M, d)`` or ``(K, M, d)`` tensor (extra memory:
    ``O(M^2)`` plus small per-thread buffers): the kernel matrix is factored as ``L L^T`` (pivoted
    Cholesky, float64), and per column block ``L^T S_i`` is formed in cache and its Gram product
    accumulated (:func:`gram`'s kernel), which gives ``G``; ``c`` is accumulated in the same sweep.
    Work ``O(K M^2 d + K^2 M d)``.

    Args:
        X: ``(M, d)`` particles, float32 or float64, CPU or CUDA, finite.
        S: ``(K, M, d)`` scores, same dtype and device, finite.
        h: bandwidth, a positive finite number (e.g. :func:`torchmoo.methods.mtsgd.median_bandwidth`).

    Returns:
        ``U`` ``(K, K)``, float64 (for float32 inputs too) on the device of ``X``, exactly symmetric and
        positive semi-definite up to rounding. Not differentiable (the inputs are read as constants).
        Every entry holds the same trace term, of order ``d / h``: it does not move the simplex QP's
        minimizer (MT-SGD's Lemma 1) but dwarfs the differences between the entries that decide it, which
        rounding ``U`` to float32 would erase (five LeNets: the constant is about 1e4 times the rest).

    Accuracy and determinism:
        Squared distances, the kernel matrix, its factor and every sum across column blocks are float64;
        within a block of at most a few thousand columns, products are summed in the input dtype. The
        float32 error is of the order of the float32 rounding of the terms (below 2e-6 relative to the
        sum of the terms' magnitudes in the tests, typically 1e-7). The repulsion enters as
        ``Lap (X - x_0)`` (see :func:`stein_update`). The CPU result is bitwise the same for any number
        of threads; the CUDA result is deterministic on a given GPU.

    Raises:
        TypeError: non-tensor input, a dtype other than float32/float64, ``S`` of another dtype,
            a non-numeric ``h``.
        ValueError: wrong shapes, ``S`` on another device, ``h`` not positive and finite, NaN or
            infinity in ``X`` or ``S`` (checked on the result, so without an extra pass over ``S``), or
            ``U`` overflowing float64.

    Example:
        >>> U = stein_task_matrix(X, S, h)          # (K, K)
        >>> w = min_norm_simplex(U)                 # MT-SGD's weights (Lemma 1)
        >>> phi = stein_update(X, S, w, h)          # (M, d) common direction
    """
    h = _stein_inputs("stein_task_matrix", X, S, h)
    return _ops.stein_task_matrix.default(X.detach(), S.detach(), h)


def stein_update(X: Tensor, S: Tensor, w: Tensor, h: float) -> Tensor:
    r"""MT-SGD's particle update ``phi`` ``(M, d)``: the weighted sum of the targets' SVGD directions.

    ``phi(x_a) = sum_i w_i mean_b [k_ab S[i, b] + grad_{x_b} k_ab] = (K S_w + (sum_i w_i) R) / M`` with
    ``S_w = sum_i w_i S[i]``, ``K`` the ``(M, M)`` kernel matrix ``exp(-|x_a - x_b|^2 / h)`` and
    ``R[a] = (2/h) sum_b k_ab (x_a - x_b)`` (the repulsion). With ``K = 1`` and ``w = [1]`` this is the SVGD
    update of Liu & Wang (2016).

    One pass over ``S``, written straight into the output: nothing of size ``(M, M, d)`` or ``(K, M, d)``
    is formed. Work ``O(K M d + M^2 d)``.

    Args:
        X: ``(M, d)`` particles, float32 or float64, finite.
        S: ``(K, M, d)`` scores, same dtype and device, finite.
        w: ``(K,)`` weights (MT-SGD: the simplex QP of :func:`stein_task_matrix`'s ``U``), same dtype and
            device, finite; any real values.
        h: bandwidth, a positive finite number.

    Returns:
        ``phi`` ``(M, d)``, dtype and device of ``X`` (particles move along ``+phi``). Not differentiable.

    Accuracy and determinism:
        The kernel matrix is float64, rounded to the dtype; ``S_w`` (``K`` terms) and the products with
        the kernel matrix and the Laplacian (``2 M`` terms per entry) are summed in the input dtype. The repulsion is formed as ``Lap (X - x_0)`` with the graph Laplacian
        ``Lap = diag(K 1) - K`` (``Lap 1 = 0``), so its rounding is relative to the particles' spread
        around particle 0, not to their distance from the origin. Each entry is computed by one thread
        in a fixed order: bitwise the same for any number of threads.

    Raises:
        TypeError / ValueError: as :func:`stein_task_matrix`, and for ``w`` of the wrong shape, dtype or
        device, or not finite.
    """
    h = _stein_inputs("stein_update", X, S, h)
    _check_tensor("w", w)
    if w.device != X.device:
        raise ValueError(f"stein_update: w is on {w.device} but X is on {X.device}; pass both on the same device.")
    return _ops.stein_update.default(X.detach(), S.detach(), w.detach(), h)


def _stein_fake_check(op: str, X: Tensor, S: Tensor) -> None:
    # The kernels' dtype and shape errors, for meta tensors and torch.compile.
    if X.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: X must be float32 or float64, got {X.dtype}.")
    if S.dtype != X.dtype:
        raise TypeError(f"{op}: S must have the dtype of X ({X.dtype}), got {S.dtype}.")
    if X.dim() != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(
            f"{op}: X must have shape (M, d) with M, d >= 1 (M particles of dimension d), got shape {tuple(X.shape)}."
        )
    if S.dim() != 3 or S.shape[0] < 1 or tuple(S.shape[1:]) != tuple(X.shape):
        raise ValueError(
            f"{op}: S must have shape (K, M, d) = (K, {X.shape[0]}, {X.shape[1]}) with K >= 1 (one score per target "
            f"and particle), got shape {tuple(S.shape)}."
        )


def _stein_task_matrix_fake(X: Tensor, S: Tensor, h: float) -> Tensor:
    _stein_fake_check("stein_task_matrix", X, S)
    return X.new_empty((S.shape[0], S.shape[0]), dtype=torch.float64)


def _stein_update_fake(X: Tensor, S: Tensor, w: Tensor, h: float) -> Tensor:
    _stein_fake_check("stein_update", X, S)
    if w.dtype != X.dtype:
        raise TypeError(f"stein_update: w must have the dtype of X ({X.dtype}), got {w.dtype}.")
    if w.dim() != 1 or w.shape[0] != S.shape[0]:
        raise ValueError(
            f"stein_update: w must have shape (K,) = ({S.shape[0]},) (one weight per target), "
            f"got shape {tuple(w.shape)}."
        )
    return X.new_empty(X.shape)


torch.library.register_fake("torchmoo::stein_task_matrix")(_stein_task_matrix_fake)
torch.library.register_fake("torchmoo::stein_update")(_stein_update_fake)


# --------------------------------------------------------------------------------------------------
# MINRES over a matvec callback
# --------------------------------------------------------------------------------------------------

#: Stop reasons of :func:`minres`, indexed by the kernels' status codes (``enum Status`` in
#: ``csrc/common/minres_recurrence.h``; same order). "active" and "nonfinite" never reach the user.
_MINRES_STOP_REASONS = (
    "active", "b_zero", "converged", "least_squares", "breakdown", "max_iter", "nonfinite",
)


class MinresInfo(NamedTuple):
    """Diagnostics of :func:`minres`, one entry per right-hand side.

    Attributes:
        iterations: ``int64``, shape ``b.shape[:-1]`` (``()`` for ``b`` of shape ``(n,)``, ``(k,)`` for
            ``(k, n)``): the number of iterations applied to ``x`` (``x`` is the iterate ``x_j`` with
            ``j = iterations``).
        residual_norms: ``float64``, shape ``(*b.shape[:-1], T + 1)`` with ``T = iterations.max()``:
            ``residual_norms[..., j] = ||b - (H - shift I) x_j||`` for ``j = 0 .. T`` as the recurrence
            computes it (exact in exact arithmetic; ``x_0 = 0``, so column 0 is ``||b||``).
            Non-increasing along ``j``. Past a right-hand side's own ``iterations`` its last value repeats.
        stop_reason: ``str`` for ``b`` of shape ``(n,)``, a tuple of ``k`` strings for ``(k, n)``; one of
            ``"converged"``, ``"least_squares"``, ``"breakdown"``, ``"max_iter"``, ``"b_zero"`` (meanings in
            :func:`minres`).
        matvec_calls: how many times ``matvec`` was called (each call is one batched product for all
            ``k`` right-hand sides). On CUDA, a solve that stops before ``max_iter`` may have made one
            product more than its iterations: the loop does not synchronize the stream to read each
            step's stopping test (see :func:`minres`), and that last product is discarded. Whether it was
            made depends on how far the GPU ran behind the host, so two runs may differ by one here.
    """

    iterations: Tensor
    residual_norms: Tensor
    stop_reason: Union[str, Tuple[str, ...]]
    matvec_calls: int


def _check_real(name: str, value: object, *, minimum: Optional[float] = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"minres: {name} must be a real number, got {type(value).__name__}.")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"minres: {name} must be finite, got {out}.")
    if minimum is not None and out < minimum:
        raise ValueError(f"minres: {name} must be >= {minimum}, got {out}.")
    return out


def _check_matvec_output(hv: object, v: Tensor, call: int) -> Tensor:
    """``hv = matvec(v)`` must be a tensor with the shape, dtype and device of ``v`` (runs every iteration:
    the messages are only formatted on failure)."""
    if not isinstance(hv, Tensor):
        raise TypeError(f"minres: matvec (call {call}) must return a torch.Tensor, got {type(hv).__name__}.")
    if hv.shape != v.shape:
        raise ValueError(
            f"minres: matvec (call {call}) returned shape {tuple(hv.shape)} for v of shape {tuple(v.shape)}; H v "
            "must have the shape of v."
        )
    if hv.dtype != v.dtype:
        raise TypeError(f"minres: matvec (call {call}) returned {hv.dtype} for v of dtype {v.dtype}; H v must have "
                        "the dtype of v.")
    if hv.device != v.device:
        raise ValueError(f"minres: matvec (call {call}) returned a tensor on {hv.device} for v on {v.device}; H v "
                         "must be on v's device.")
    return hv


#: Rows of ``b`` whose largest entry lies outside ``[2^-e, 2^e]`` are scaled by a power of two first:
#: float64 ``||b||^2`` under- or overflows beyond ``2^-511`` / ``2^511``, and the float32 kernels hold
#: ``1 / ||b||`` and ``||b||`` as float32 numbers.
_MINRES_SAFE_EXPONENT = {torch.float64: 400, torch.float32: 100}
#: Columns of the residual history allocated at first; it doubles as the iterations need it.
_MINRES_HISTORY_START = 64


def _pow2(e: Tensor) -> Tensor:
    """``2^e`` as float64, exactly, for int64 ``e`` in ``[-1022, 1023]`` (built from its bits)."""
    return ((e + 1023) << 52).view(torch.float64)


def _times_pow2(t: Tensor, e: Tensor) -> Tensor:
    """Row ``i`` of ``t`` ``(k, ...)`` times ``2^e[i]`` (int64 ``e``), exactly barring under- and overflow of
    the result, in ``t``'s dtype: in float64, in two factors so that neither overflows itself."""
    e = e.reshape(-1, *([1] * (t.dim() - 1)))
    half = torch.div(e, 2, rounding_mode="trunc")
    return (t.to(torch.float64) * _pow2(half) * _pow2(e - half)).to(t.dtype)


class _StepSummaries:
    """The stopping test of :func:`minres`'s loop. Each ``minres_step`` writes into a summary buffer how
    many right-hand sides still run and the first one whose product was not finite.

    On the CPU a summary is read right after its step. On CUDA, reading it at once would synchronize the
    stream every iteration, the GPU idle while the host then launches the next product; instead it is
    copied to pinned memory behind the step and read once that copy is done, at the latest before the
    product after next. So the loop may call ``matvec`` once after the solve stopped (the step of that
    product only applies the pending update of ``x``, as the final flush would)."""

    #: test hook: the lagged reading on the CPU, where a summary is then never ready before it must be read
    lag_on_cpu = False

    def __init__(self, like: Tensor):
        self.k = like.shape[0]
        self.cuda = like.is_cuda
        self.lag = self.cuda or _StepSummaries.lag_on_cpu
        self.buffers = [torch.empty(2, dtype=torch.int32, device=like.device) for _ in range(2)]
        if self.cuda:
            self.host = list(torch.empty((2, 2), dtype=torch.int32, pin_memory=True))  # one row per buffer
            self.events = [torch.cuda.Event() for _ in range(2)]
        self.unread: list = []  # (buffer slot, matvec call) of the steps not read yet, oldest first
        self.stopped = False

    def buffer(self, call: int) -> Tensor:
        """The buffer of the step of product ``call`` (two alternate: a step's summary is read before the
        step after next reuses its buffer)."""
        return self.buffers[call % 2]

    def written(self, call: int) -> None:
        """After the step of product ``call`` (which wrote :meth:`buffer`): on CUDA, its copy to the host."""
        slot = call % 2
        if self.cuda:
            # on the stream the step and the copy ran on: the current one (matvec may have changed it)
            self.host[slot].copy_(self.buffers[slot], non_blocking=True)
            self.events[slot].record(torch.cuda.current_stream(self.buffers[slot].device))
        self.unread.append((slot, call))

    def _ready(self, slot: int) -> bool:
        if not self.lag:
            return True
        return self.cuda and self.events[slot].query()

    def _read_oldest(self) -> None:
        slot, call = self.unread.pop(0)
        if self.cuda:
            self.events[slot].synchronize()
            running, bad = self.host[slot].tolist()
        else:
            running, bad = self.buffers[slot].tolist()
        if bad < self.k:
            raise ValueError(
                f"minres: matvec returned NaN or infinity (for right-hand side {bad} of {self.k}, at iteration "
                f"{call}); H v must be finite for every finite v.")
        self.stopped = self.stopped or running == 0

    def running(self) -> bool:
        """Whether the loop goes on, from the summaries that are ready and the older of two unread ones."""
        while self.unread and not self.stopped and (len(self.unread) > 1 or self._ready(self.unread[0][0])):
            self._read_oldest()
        return not self.stopped

    def drain(self) -> bool:
        """Reads every summary left (raising for a non-finite product); whether the solve still runs."""
        while self.unread:
            self._read_oldest()
        return not self.stopped


def minres(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    max_iter: int = 50,
    tol: float = 1e-6,
    shift: float = 0.0,
) -> Tuple[Tensor, MinresInfo]:
    r"""MINRES for :math:`(H - \sigma I)\, x = b` with a symmetric ``H`` given only by ``v -> H v``.

    The minimum-residual method of Paige & Saunders (1975), the recurrence of
    ``scipy.sparse.linalg.minres`` (no preconditioner), so its iterates agree with scipy's to rounding.
    ``H`` may be indefinite or singular; each iterate ``x_j`` minimizes ``||b - (H - shift I) x||`` over
    the Krylov space of dimension ``j``, so the residual norms never increase and stopping early
    (``max_iter``) returns the best iterate so far. This is how Ma et al. (ICML 2020, Sec. 4.2) get
    tangent directions of the Pareto set from Hessian-vector products: ``matvec`` is typically
    :func:`torchmoo.autograd.hvp_operator`.

    ``b`` of shape ``(k, n)`` runs ``k`` independent recurrences that share one batched ``matvec``
    call per iteration. Besides the calls, one iteration is one compiled operator call that makes
    two passes over the vectors (the Lanczos step with its two dot products, the Givens rotation and
    the solution and direction updates, fused; CPU and CUDA). On CUDA no iteration synchronizes the
    stream: the stopping test of a step is copied to pinned memory behind it and read while the GPU
    runs the next product, so the solve stays queued ahead of the host; when it stops before
    ``max_iter``, ``matvec`` may have been called once more (that product is discarded, and if it
    raises, the exception is dropped in favour of the finished solve).

    Args:
        matvec: ``v -> H v``; receives a tensor of the shape, dtype and device of ``b`` and must
            return one of the same shape, dtype and device. ``H`` must be symmetric (this is not
            checked). ``v`` is the solver's Lanczos vector, unnormalized as in scipy (``b`` itself
            in the first call, then vectors of norm about ``||H - shift I||``): ``matvec`` must not
            modify it in place (it may return it), and a reference kept to it sees later iterations.
            A row of ``b`` whose largest entry is beyond ``2^±400`` (float64) or ``2^±100`` (float32),
            where ``||b||`` would under- or overflow, is multiplied by a power of two first (so that
            its largest entry is in ``[0.5, 1)``) and ``x`` and the residual norms by its inverse: the
            solve is exact under this scaling, as ``H`` is linear.
        b: ``(n,)`` or ``(k, n)``, float32 or float64, CPU or CUDA, finite.
        max_iter: at most this many iterations (``matvec`` calls), ``>= 0``.
        tol: relative residual tolerance: a right-hand side stops when ``||r_j|| <= tol ||b||``.
        shift: ``sigma``; the system solved is ``(H - shift I) x = b``.

    Returns:
        ``x`` (shape, dtype and device of ``b``) and a :class:`MinresInfo`. ``stop_reason`` per
        right-hand side (scipy's ``istop`` in brackets):

        * ``"converged"`` (1): ``||r|| <= tol ||b||``.
        * ``"least_squares"`` (2): ``||(H - shift I) r|| <= max(tol, eps) ||H - shift I|| ||r||`` with
          ``||H - shift I||`` estimated by the Lanczos matrix: ``x`` is a least-squares solution of a
          singular, inconsistent system. This test concerns the previous iterate, which is returned
          (the next step would divide by a number of the size of that test).
          On such a system the ratio ``||(H - shift I) r|| / (||H - shift I|| ||r||)`` only falls to about
          ``sqrt(eps)`` (``||r||`` is stationary there): with ``tol`` below that, this test may not
          pass, and iterating on (beyond about ``n`` iterations) lets rounding grow ``x`` without bound,
          as in scipy; keep ``max_iter`` well below ``n``, ``tol`` above ``sqrt(eps)``, or damp with
          ``shift``.
        * ``"breakdown"`` (-1): the Lanczos vector ``beta_{j+1}`` vanished (``<= 10 eps ||H - shift I||``):
          the Krylov space is invariant and ``x`` is the exact solution in it, yet ``||r|| > tol ||b||``
          (``tol`` below the attainable accuracy); with ``b`` an eigenvector this happens after one
          iteration (or ``"converged"`` is reported when the residual meets ``tol``).
        * ``"max_iter"`` (6): ``max_iter`` iterations were done.
        * ``"b_zero"`` (0): ``b = 0`` (that row), so ``x = 0``; ``matvec`` is not called if all rows are 0.

        ``eps`` is the machine epsilon of ``b``'s dtype. scipy's istop 4 (condition estimate of the
        Lanczos matrix ``>= 0.1 / eps``) cannot occur after these tests: it implies a breakdown. The
        results are not differentiable.

    Raises:
        TypeError: ``matvec`` not callable; ``b`` not a float32/float64 tensor; a non-numeric
            ``max_iter``, ``tol`` or ``shift``; ``matvec`` returning a non-tensor or another dtype.
        ValueError: ``b`` not 1-D or 2-D or not finite; ``max_iter < 0``; ``tol < 0``; non-finite
            ``tol`` or ``shift``; ``matvec`` returning another shape or device, or NaN / infinity.

    Example:
        >>> loss = criterion(model(inputs), targets)
        >>> params = list(model.parameters())
        >>> matvec = torchmoo.autograd.hvp_operator(loss, params)    # v -> H v, (k, n) -> (k, n)
        >>> rhs = torch.randn(4, torchmoo.autograd.num_params(params))
        >>> x, info = minres(matvec, rhs, max_iter=50)               # 4 solves, 50 batched HVPs at most
        >>> info.residual_norms[:, -1] / info.residual_norms[:, 0]   # relative residuals
    """
    if not callable(matvec):
        raise TypeError(f"minres: matvec must be callable (v -> H v), got {type(matvec).__name__}.")
    if not isinstance(b, Tensor):
        raise TypeError(f"minres: b must be a torch.Tensor, got {type(b).__name__}.")
    if b.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"minres: b must be float32 or float64, got {b.dtype}.")
    if b.dim() not in (1, 2):
        raise ValueError(f"minres: b must have shape (n,) or (k, n), got {tuple(b.shape)}.")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int):
        raise TypeError(f"minres: max_iter must be an int, got {type(max_iter).__name__}.")
    if max_iter < 0:
        raise ValueError(f"minres: max_iter must be >= 0, got {max_iter}.")
    tol_f = _check_real("tol", tol, minimum=0.0)
    shift_f = _check_real("shift", shift)
    b = b.detach()
    single = b.dim() == 1
    rhs = b.reshape(1, -1) if single else b
    # The checks of b from its rows' largest entries, read with one synchronization: finiteness, whether
    # any row is nonzero, and rows whose ||b|| would under- or overflow. MINRES commutes with scaling b
    # by 2^p (exactly, in floating point, barring under- and overflow): such a row is solved as 2^-e b,
    # with e the binade of its largest entry.
    exponent, nonzero = None, False
    if rhs.numel() > 0:
        amax = rhs.abs().amax(dim=1).to(torch.float64)  # NaN or infinity for a row that is not finite
        limit = 2.0 ** _MINRES_SAFE_EXPONENT[b.dtype]
        extreme = (amax > 0) & ((amax < 1.0 / limit) | (amax > limit))
        finite, nonzero, rescale = torch.stack([amax.isfinite().all(), (amax > 0).any(), extreme.any()]).tolist()
        if not finite:
            raise ValueError("minres: b must be finite, found NaN or infinity.")
        if rescale:
            exponent = torch.where(extreme, torch.frexp(amax).exponent.to(torch.int64), 0)
            rhs = _times_pow2(rhs, -exponent)
    # y: the current Lanczos vector, unnormalized (its norm is in the state); the matvec's argument. The
    # residual history starts short and grows (a large max_iter must not allocate (k, max_iter + 1) up front).
    y, yprev, w, wprev, x, state, history = _ops.minres_init.default(rhs, min(max_iter, _MINRES_HISTORY_START))
    calls = 0
    if max_iter > 0 and nonzero:
        summaries = _StepSummaries(rhs)
        # (buffer, what matvec receives, storage address) of the current and the previous Lanczos vector.
        cur = (y, y[0] if single else y, y.untyped_storage().data_ptr())
        prev = (yprev, yprev[0] if single else yprev, yprev.untyped_storage().data_ptr())
        written = {t.untyped_storage().data_ptr() for t in (w, wprev, x)}
        while calls < max_iter and summaries.running():
            if history.shape[1] <= calls + 1:  # this step may record iteration calls + 1
                grown = history.new_zeros(history.shape[0], min(2 * history.shape[1], max_iter + 1))
                grown[:, : history.shape[1]] = history
                history = grown
            arg = cur[1]
            calls += 1
            try:
                hv = _check_matvec_output(matvec(arg), arg, calls)
            except Exception:
                # A product after the solve stopped (its step not read yet) may fail, or return something
                # wrong, on a Lanczos vector the solve no longer uses (e.g. NaN after a non-finite product):
                # report the solve's outcome, as the loop that reads each step at once would.
                if not summaries.drain():
                    break
                raise
            if hv.requires_grad:
                hv = hv.detach()
            # The step overwrites yprev, w, wprev and x: an hv sharing their memory is copied first
            # (one that aliases y itself, e.g. for H = I, is only read).
            ptr = hv.untyped_storage().data_ptr()
            if ptr == prev[2] or ptr in written:
                hv = hv.clone()
            elif not hv.is_contiguous():
                hv = hv.contiguous()
            if summaries.cuda:  # made on a side stream, hv must not be reused before the step has read it
                hv.record_stream(torch.cuda.current_stream(hv.device))
            _ops.minres_step.default(hv, cur[0], prev[0], w, wprev, x, state, history, summaries.buffer(calls),
                                     shift_f, tol_f)
            summaries.written(calls)
            # Free H v before the next product, so that the allocator can hand its (cache-warm) block to
            # the next one.
            del hv
            # The step wrote y_{k+1} over y_{k-1} and w_{k-1} over w_{k-3}.
            cur, prev = prev, cur
            w, wprev = wprev, w
        summaries.drain()  # raises for a non-finite product of the last steps
        # The update of x made possible by the last iteration is still pending: apply it.
        # (the flush leaves the summary buffer alone)
        _ops.minres_step.default(None, cur[0], prev[0], w, wprev, x, state, history, summaries.buffer(calls),
                                 shift_f, tol_f)
    iterations, residuals, codes = _ops.minres_info.default(state, history)
    if exponent is not None:
        x, residuals = _times_pow2(x, exponent), _times_pow2(residuals, exponent)
    reasons = tuple(_MINRES_STOP_REASONS[c] for c in codes.tolist())
    if single:
        return x.reshape(b.shape), MinresInfo(iterations[0], residuals[0], reasons[0], calls)
    return x, MinresInfo(iterations, residuals, reasons, calls)
