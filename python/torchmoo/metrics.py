"""Evaluation metrics: Pareto-front quality (through moocore), worst-case task loss and calibration.

Objective-space metrics (:func:`nondominated`, :func:`hypervolume`, :func:`igd_plus`) follow the
**minimization** convention (pass ``maximize=True``, or one flag per objective, for objectives such as
accuracy), take an ``(n_points, n_obj)`` set of objective vectors as a torch tensor (any device, any
floating dtype; gradients are not tracked), a numpy array or a nested sequence, and compute in float64
with `moocore <https://multi-objective.github.io/moocore/python/>`_.

Prediction metrics (:func:`worst_fraction_mean`, :func:`brier_score`,
:func:`expected_calibration_error`) are torch functions: they return 0-dim (or batched) tensors in
the input's dtype and device; :func:`worst_fraction_mean` and :func:`brier_score` are differentiable.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence, Union

import numpy as np
import torch
from torch import Tensor


__all__ = [
    "nondominated",
    "hypervolume",
    "igd_plus",
    "worst_fraction_mean",
    "brier_score",
    "expected_calibration_error",
    "calibration_bins",
    "CalibrationBins",
]

ArrayLike = Union[Tensor, np.ndarray, Sequence]
Maximize = Union[bool, Sequence[bool]]


def _moocore():
    """moocore, imported on first use (``import torchmoo`` stays light; the operators and the training
    API do not need it)."""
    import moocore

    return moocore


# ------------------------------------------------------------------------------------------------
# Objective-space metrics (moocore)
# ------------------------------------------------------------------------------------------------


def _to_numpy(name: str, value: object) -> np.ndarray:
    if isinstance(value, Tensor):
        if value.is_complex():
            raise TypeError(f"{name} must be real, got {value.dtype}.")
        return value.detach().to(device="cpu", dtype=torch.float64).numpy()
    try:
        array = np.asarray(value)
    except Exception as exc:  # ragged lists and other non-arrays
        raise TypeError(f"{name} must be a tensor, an array or a nested sequence of numbers ({exc}).") from None
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"{name} must hold real numbers, got an array of dtype {array.dtype}.")
    if np.iscomplexobj(array):
        raise TypeError(f"{name} must be real, got {array.dtype}.")
    return array.astype(np.float64)


def _points(name: str, value: object, *, allow_empty: bool = False) -> np.ndarray:
    """``value`` as a finite float64 ``(n_points, n_obj)`` array, with readable errors."""
    array = _to_numpy(name, value)
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (n_points, n_obj), got shape {array.shape}.")
    if array.shape[1] == 0:
        raise ValueError(f"{name} must have at least one objective (column), got shape {array.shape}.")
    if array.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} must have at least one point (row), got shape {array.shape}.")
    if not np.isfinite(array).all():
        bad = int(np.argwhere(~np.isfinite(array))[0, 0])
        raise ValueError(f"{name} must be finite; row {bad} has NaN or infinity.")
    return array


def _maximize(maximize: Maximize, n_obj: int) -> Union[bool, np.ndarray]:
    if isinstance(maximize, (bool, np.bool_)):
        return bool(maximize)
    try:
        flags = list(maximize)
    except TypeError:
        raise ValueError(f"maximize must be a bool or {n_obj} bools (one per objective), got {maximize!r}.") from None
    if len(flags) != n_obj or not all(isinstance(f, (bool, np.bool_)) for f in flags):
        raise ValueError(f"maximize must be a bool or {n_obj} bools (one per objective), got {maximize!r}.")
    return np.asarray(flags, dtype=bool)


def nondominated(F: ArrayLike, *, maximize: Maximize = False, keep_weakly: bool = False,
                 return_mask: bool = False) -> Union[Tensor, np.ndarray]:
    """The non-dominated points of ``F (n_points, n_obj)`` (minimization), in their original order.

    A point is dominated when another is no worse in every objective and better in one.

    Args:
        F: ``(n_points, n_obj)`` objective vectors (tensor, array or nested sequence).
        maximize: True (or one bool per objective) for objectives to be maximized.
        keep_weakly: keep every copy of a duplicated non-dominated point (default: the first only).
        return_mask: return the ``(n_points,)`` bool mask instead of the points.

    Returns:
        The rows of ``F`` that are non-dominated, ``(k, n_obj)``, as a tensor on ``F``'s device and dtype
        when ``F`` is a tensor (else a float64 numpy array); or the mask (bool tensor on ``F``'s device /
        array) when ``return_mask`` is True. An empty ``F`` (``(0, n_obj)``) gives an empty result.

    Raises:
        TypeError: ``F`` is not a tensor, array or nested sequence of real numbers.
        ValueError: ``F`` is not ``(n_points, n_obj)`` with ``n_obj >= 1``, or is not finite; a
            ``maximize`` that is not a bool or ``n_obj`` bools.

    Example:
        >>> nondominated(torch.tensor([[1.0, 2.0], [2.0, 1.0], [2.0, 2.0]]))
        tensor([[1., 2.],
                [2., 1.]])
    """
    points = _points("F", F, allow_empty=True)
    if points.shape[0] == 0:
        mask = np.zeros(0, dtype=bool)
    else:
        mask = np.asarray(_moocore().is_nondominated(points, maximise=_maximize(maximize, points.shape[1]),
                                                  keep_weakly=keep_weakly), dtype=bool)
    if isinstance(F, Tensor):
        mask_t = torch.from_numpy(mask).to(F.device)
        return mask_t if return_mask else F[mask_t]
    return mask if return_mask else points[mask]


def hypervolume(F: ArrayLike, ref: Union[ArrayLike, float], *, maximize: Maximize = False) -> float:
    """Hypervolume (Lebesgue measure) of the region dominated by ``F`` and bounded by ``ref``.

    With minimization, ``HV = vol{ y : exists f in F, f <= y <= ref }`` (PNG appendix C.2.2; Zitzler &
    Thiele 1999). Points that do not strictly dominate ``ref`` add nothing; an empty ``F`` gives 0.

    Args:
        F: ``(n_points, n_obj)`` objective vectors.
        ref: reference point, ``(n_obj,)`` or a scalar for every objective (e.g. ``[0.6, 0.6]`` for
            PNG's loss-based hypervolume). With ``maximize`` the reference bounds from below.
        maximize: True (or one bool per objective) for objectives to be maximized.

    Returns:
        The hypervolume as a Python float.

    Raises:
        TypeError: ``F`` or ``ref`` does not hold real numbers.
        ValueError: ``F`` not ``(n_points, n_obj)`` or not finite; ``ref`` not a scalar or ``(n_obj,)``,
            or not finite; a bad ``maximize``.

    Example:
        >>> hypervolume([[0.2, 0.5], [0.5, 0.2]], ref=1.0)    # 0.8 * 0.5 + 0.5 * 0.3
        0.55
    """
    points = _points("F", F, allow_empty=True)
    n_obj = points.shape[1]
    r = _to_numpy("ref", ref)
    if r.ndim == 0:
        r = np.full(n_obj, float(r))
    if r.shape != (n_obj,):
        raise ValueError(f"ref must be a scalar or have shape ({n_obj},) to match F, got shape {r.shape}.")
    if not np.isfinite(r).all():
        raise ValueError("ref must be finite.")
    if points.shape[0] == 0:
        return 0.0
    return float(_moocore().hypervolume(points, ref=r, maximise=_maximize(maximize, n_obj)))


def igd_plus(F: ArrayLike, reference_front: ArrayLike, *, maximize: Maximize = False) -> float:
    r"""Inverted generational distance plus (Ishibuchi et al. 2015) of ``F`` to ``reference_front``.

    .. math:: \mathrm{IGD}^+(F) = \frac{1}{|R|}\sum_{r \in R} \min_{f \in F} \|(f - r)_+\|_2,

    with ``R`` the reference front and ``(t)_+ = max(t, 0)`` elementwise (minimization; PNG appendix
    C.2.2): only the objectives in which ``f`` is worse than ``r`` count. Lower is better; 0 when ``F``
    weakly dominates every reference point.

    Args:
        F: ``(n_points, n_obj)`` objective vectors, at least one.
        reference_front: ``(n_ref, n_obj)`` points of the (true or best known) Pareto front, at least one.
        maximize: True (or one bool per objective) for objectives to be maximized.

    Returns:
        IGD+ as a Python float.

    Raises:
        TypeError: ``F`` or ``reference_front`` does not hold real numbers.
        ValueError: either is not ``(n, n_obj)`` with at least one point, or is not finite; their numbers
            of objectives differ; a bad ``maximize``.
    """
    points = _points("F", F)
    ref = _points("reference_front", reference_front)
    if ref.shape[1] != points.shape[1]:
        raise ValueError(f"F and reference_front must have the same number of objectives, got "
                         f"{points.shape[1]} and {ref.shape[1]}.")
    return float(_moocore().igd_plus(points, ref=ref, maximise=_maximize(maximize, points.shape[1])))


# ------------------------------------------------------------------------------------------------
# Torch metrics
# ------------------------------------------------------------------------------------------------


def _as_float_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        try:
            value = torch.as_tensor(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a tensor or an array of numbers ({exc}).") from None
    if not value.is_floating_point():
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be real numbers, got {value.dtype}.")
        value = value.to(torch.get_default_dtype())
    return value


def _check_finite(name: str, value: Tensor) -> None:
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite; it has NaN or infinity.")


def worst_fraction_mean(losses: ArrayLike, fraction: float = 0.1, *, dim: int = -1,
                        largest: bool = True) -> Tensor:
    """Mean of the worst ``fraction`` of ``losses`` along ``dim``: SIMOL's worst-10% metric.

    SIMOL (Yu et al., ICLR 2023, section 5) reports "the average MSE for the 10% worst-performing
    meta-testing tasks"; for accuracies (higher is better) pass ``largest=False``.

    Args:
        losses: ``(..., n, ...)`` per-task values (tensor or array).
        fraction: in (0, 1]; the mean is over the ``k = ceil(fraction * n)`` worst values (at least 1;
            ``fraction * n`` is rounded to 9 digits first, so 0.07 of 100 tasks is 7, not 8: in floating
            point ``0.07 * 100`` is ``7.000000000000001``).
        dim: the task dimension.
        largest: True when larger values are worse (losses), False for accuracies.

    Returns:
        A tensor of the other dims (0-dim for 1-D input), in ``losses``' dtype and device (float64 for
        an array, the default dtype for an integer tensor), differentiable with respect to ``losses``.

    Raises:
        TypeError: ``losses`` does not hold real numbers.
        ValueError: ``fraction`` not in (0, 1]; ``losses`` 0-dim, empty along ``dim`` or not finite;
            ``dim`` out of range.

    Example:
        >>> worst_fraction_mean(torch.arange(30.0))     # mean of the 3 largest: 27, 28, 29
        tensor(28.)
    """
    x = _as_float_tensor("losses", losses)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}.")
    if x.dim() == 0:
        raise ValueError("losses must have at least one dimension (the tasks).")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim {dim} is out of range for losses of shape {tuple(x.shape)}.")
    n = x.shape[dim]
    if n == 0:
        raise ValueError(f"losses has no entries along dim {dim} (shape {tuple(x.shape)}).")
    _check_finite("losses", x)
    k = max(1, math.ceil(round(fraction * n, 9)))
    return torch.topk(x, k, dim=dim, largest=largest).values.mean(dim=dim)


def _check_probs_labels(probs: ArrayLike, labels: ArrayLike) -> tuple[Tensor, Tensor]:
    p = _as_float_tensor("probs", probs)
    if p.dim() < 1 or p.shape[-1] < 1:
        raise ValueError(f"probs must have shape (..., n_classes), got {tuple(p.shape)}.")
    y = labels if isinstance(labels, Tensor) else torch.as_tensor(np.asarray(labels))
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {y.dtype}.")
    if tuple(y.shape) != tuple(p.shape[:-1]):
        raise ValueError(f"labels must have shape {tuple(p.shape[:-1])} (probs without its class dim), "
                         f"got {tuple(y.shape)}.")
    if y.numel() == 0:
        raise ValueError("probs and labels hold no samples.")
    y = y.to(p.device)
    n_classes = p.shape[-1]
    if bool(((y < 0) | (y >= n_classes)).any()):
        raise ValueError(f"labels must be in [0, {n_classes}), got values from {int(y.min())} to {int(y.max())}.")
    _check_finite("probs", p)
    # a clear error when logits or unnormalized scores are passed by mistake
    tol = 1e-3 if p.dtype in (torch.float16, torch.bfloat16) else 1e-4
    if bool(((p < -tol) | (p > 1 + tol)).any()):
        raise ValueError("probs must be probabilities in [0, 1] (apply softmax to logits first).")
    sums = p.detach().sum(-1)
    if bool(((sums - 1).abs() > tol * max(1, n_classes) ** 0.5 + tol).any()):
        raise ValueError("probs must sum to 1 over the last (class) dim (apply softmax to logits first).")
    return p, y


def brier_score(probs: ArrayLike, labels: ArrayLike) -> Tensor:
    r"""Brier score, as defined in the MT-SGD supplement (section 2.2.1, Metrics):

    .. math:: \mathrm{BS} = \frac1N\sum_{i=1}^N\sum_{c=1}^K (\mathbf 1_{y_i = c} - p(y = c \mid x_i))^2.

    Args:
        probs: ``(..., K)`` predicted class probabilities (rows sum to 1); every leading index is a sample.
        labels: ``(...)`` integer labels in ``[0, K)``.

    Returns:
        0-dim tensor in ``probs``' dtype and device, differentiable with respect to ``probs``; 0 is
        perfect, 2 the worst.

    Raises:
        TypeError: ``probs`` not real numbers; ``labels`` not integers.
        ValueError: ``labels`` not of shape ``probs.shape[:-1]``, empty or out of ``[0, K)``; ``probs`` not
            finite, outside [0, 1] or not summing to 1 over the last dim (e.g. logits).
    """
    p, y = _check_probs_labels(probs, labels)
    onehot = torch.nn.functional.one_hot(y.long(), p.shape[-1]).to(p.dtype)
    return ((onehot - p) ** 2).sum(-1).mean()


class CalibrationBins(NamedTuple):
    """Per-bin statistics of a reliability diagram, each ``(n_bins,)`` on the device of ``probs``;
    empty bins have count 0 and accuracy and confidence 0.

    Attributes:
        accuracy: float64, the fraction of correct predictions in each bin.
        confidence: float64, the mean confidence in each bin.
        count: int64, the number of samples in each bin.
    """

    accuracy: Tensor
    confidence: Tensor
    count: Tensor


def calibration_bins(probs: ArrayLike, labels: ArrayLike, n_bins: int = 10) -> CalibrationBins:
    """Accuracy, mean confidence and size of each confidence bin ``B_m = ((m-1)/M, m/M]``.

    The confidence of a sample is its largest predicted probability and its prediction the arg max.
    The bin edges ``m/M`` are rounded to the dtype of ``probs`` before the comparison, so that a
    confidence written as ``0.3`` in float32 (``0.30000001...``, the float32 nearest to 0.3) falls in
    ``(0.2, 0.3]`` as it does in float64.

    Args:
        probs: ``(..., K)`` predicted class probabilities; every leading index is a sample.
        labels: ``(...)`` integer labels in ``[0, K)``.
        n_bins: number of bins ``M``, ``>= 1``.

    Returns:
        :class:`CalibrationBins` (not differentiable).

    Raises:
        ValueError: ``n_bins`` not a positive int; the input errors of :func:`brier_score`.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}.")
    p, y = _check_probs_labels(probs, labels)
    p64 = p.detach().to(torch.float64).reshape(-1, p.shape[-1])
    conf, pred = p64.max(dim=-1)
    correct = (pred == y.reshape(-1)).to(torch.float64)
    # edges in the input's precision (widened back exactly): comparing a float32 confidence with the
    # float64 edge 0.3 would put float32(0.3) > 0.3 into the next bin
    inner = (torch.arange(1, n_bins, dtype=torch.float64, device=p.device) / n_bins).to(p.dtype).to(torch.float64)
    # bucketize with right=False: inner[i-1] < conf <= inner[i], i.e. right-closed bins
    idx = torch.bucketize(conf.clamp(0.0, 1.0), inner, right=False)
    count = torch.zeros(n_bins, dtype=torch.float64, device=p.device).index_add_(0, idx, torch.ones_like(conf))
    acc_sum = torch.zeros_like(count).index_add_(0, idx, correct)
    conf_sum = torch.zeros_like(count).index_add_(0, idx, conf)
    safe = count.clamp(min=1)
    return CalibrationBins(acc_sum / safe, conf_sum / safe, count.to(torch.int64))


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = 10) -> Tensor:
    r"""Expected calibration error, as defined in the MT-SGD supplement (section 2.2.1, Metrics):

    .. math:: \mathrm{ECE} = \sum_{m=1}^M \frac{|B_m|}{N}\,|\mathrm{acc}(B_m) - \mathrm{conf}(B_m)|,

    over ``M = n_bins`` equally spaced confidence bins ``B_m = ((m-1)/M, m/M]`` (the paper uses 10).

    Args:
        probs: ``(..., K)`` predicted class probabilities; every leading index is a sample.
        labels: ``(...)`` integer labels in ``[0, K)``.
        n_bins: number of bins ``M``.

    Returns:
        0-dim tensor in ``probs``' dtype and device (float64 unless ``probs`` is a floating-point tensor;
        not differentiable: binning is piecewise constant), in [0, 1].

    Raises:
        TypeError / ValueError: as :func:`calibration_bins`.
    """
    bins = calibration_bins(probs, labels, n_bins)
    count = bins.count.to(torch.float64)
    ece = (count * (bins.accuracy - bins.confidence).abs()).sum() / count.sum()
    p = probs if isinstance(probs, Tensor) and probs.is_floating_point() else None
    return ece.to(p.dtype) if p is not None else ece
