"""Metrics against hand-computed values, brute-force definitions and analytic fronts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchmoo import metrics
from torchmoo.problems import LinConcave, ZDT2Variant

F64 = torch.float64


def brute_nondominated(F: np.ndarray) -> np.ndarray:
    """O(n^2) definition: no other point is <= everywhere and < somewhere."""
    n = len(F)
    return np.array([not any((F[j] <= F[i]).all() and (F[j] < F[i]).any() for j in range(n)) for i in range(n)])


# --------------------------------------------------------------------------------------------------
# nondominated
# --------------------------------------------------------------------------------------------------


def test_nondominated_by_hand():
    F = [[1.0, 4.0], [2.0, 2.0], [3.0, 3.0], [4.0, 1.0], [2.0, 2.0], [4.0, 4.0]]
    assert metrics.nondominated(F, return_mask=True).tolist() == [True, True, False, True, False, False]
    assert metrics.nondominated(F, return_mask=True, keep_weakly=True).tolist() == [
        True, True, False, True, True, False]
    np.testing.assert_array_equal(metrics.nondominated(np.array(F)), [[1, 4], [2, 2], [4, 1]])
    # maximization turns the order around: (4, 4) dominates everything
    assert metrics.nondominated(F, maximize=True, return_mask=True).tolist() == [False] * 5 + [True]
    # one flag per objective: maximize f1, minimize f2 -> (4, 1) dominates everything
    assert metrics.nondominated(F, maximize=[True, False], return_mask=True).tolist() == [
        False, False, False, True, False, False]


def test_nondominated_keeps_tensor_type_device_and_dtype():
    F = torch.tensor([[1.0, 4.0], [2.0, 2.0], [3.0, 3.0]], dtype=torch.float32, requires_grad=True)
    out = metrics.nondominated(F)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (2, 2)
    assert out.requires_grad  # plain indexing of the input
    mask = metrics.nondominated(F, return_mask=True)
    assert mask.dtype == torch.bool and mask.tolist() == [True, True, False]
    assert metrics.nondominated(torch.zeros(0, 3)).shape == (0, 3)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("m", [2, 3, 5])
def test_nondominated_matches_the_definition(seed, m):
    rng = np.random.default_rng(seed)
    F = rng.integers(0, 6, size=(40, m)).astype(float)  # many ties and duplicates
    mask = metrics.nondominated(F, return_mask=True, keep_weakly=True)
    np.testing.assert_array_equal(mask, brute_nondominated(F))


# --------------------------------------------------------------------------------------------------
# hypervolume
# --------------------------------------------------------------------------------------------------


def test_hypervolume_by_hand_2d():
    # staircase (1,3), (2,2), (3,1) under ref (4,4): strips of width 3, 2, 1 and height 1 -> 6
    F = [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]
    assert metrics.hypervolume(F, [4.0, 4.0]) == pytest.approx(6.0)
    # a dominated point, a point outside the reference box and a scalar reference change nothing
    assert metrics.hypervolume(F + [[3.0, 3.0], [5.0, 0.0]], 4.0) == pytest.approx(6.0)
    # one point: a rectangle
    assert metrics.hypervolume([[0.1, 0.2]], [0.6, 0.6]) == pytest.approx(0.5 * 0.4)
    assert metrics.hypervolume(np.zeros((0, 2)), [1.0, 1.0]) == 0.0


def test_hypervolume_by_hand_3d_and_maximize():
    # two boxes of volume 3*2*1 = 6 and 1*3*2 = 6 under ref (3,3,3) overlapping in 1*2*1 = 2 -> 10
    F = torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, 1.0]], dtype=F64)
    assert metrics.hypervolume(F, torch.tensor([3.0, 3.0, 3.0])) == pytest.approx(10.0)
    # maximizing -F from -ref gives the same volume
    assert metrics.hypervolume(-F, [-3.0, -3.0, -3.0], maximize=True) == pytest.approx(10.0)
    # accuracy-style: maximize both, reference below
    assert metrics.hypervolume([[0.9, 0.8]], [0.0, 0.0], maximize=True) == pytest.approx(0.72)


def test_hypervolume_of_analytic_fronts():
    # ZDT2-variant front f2 = 1 - f1^2 under ref (1, 1): area between the curve and the top is 1/3
    P = ZDT2Variant().pareto_front(4001)
    assert metrics.hypervolume(P, [1.0, 1.0]) == pytest.approx(1 / 3, abs=1e-3)
    assert metrics.hypervolume(P, [1.0, 1.0]) < 1 / 3  # a finite sample of a front is below it
    # the front dominates any subset of itself: HV is monotone
    assert metrics.hypervolume(P[::10], [1.0, 1.0]) < metrics.hypervolume(P, [1.0, 1.0])


def brute_hypervolume(F: np.ndarray, ref: np.ndarray) -> float:
    """Volume of the union of the boxes [f, ref] (minimization) by coordinate compression: every cell of
    the grid through the points' coordinates is in the union or outside it as a whole."""
    F = F[(F < ref).all(1)]
    if len(F) == 0:
        return 0.0
    axes = [np.unique(np.r_[F[:, k], ref[k]]) for k in range(F.shape[1])]
    lows = np.stack(np.meshgrid(*[a[:-1] for a in axes], indexing="ij"), -1).reshape(-1, F.shape[1])
    sizes = np.stack(np.meshgrid(*[np.diff(a) for a in axes], indexing="ij"), -1).reshape(-1, F.shape[1])
    covered = (F[None, :, :] <= lows[:, None, :]).all(-1).any(-1)  # a point weakly below the cell's corner
    return float((sizes.prod(1) * covered).sum())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("m, n", [(2, 30), (3, 12), (4, 7)])
def test_hypervolume_matches_the_definition(seed, m, n):
    rng = np.random.default_rng(seed)
    F = rng.random((n, m))
    ref = rng.uniform(0.6, 1.2, m)  # some points outside the reference box in some objective
    assert metrics.hypervolume(F, ref) == pytest.approx(brute_hypervolume(F, ref), rel=1e-12, abs=1e-15)
    # one flag per objective: maximizing objective k is minimizing -f_k from -ref_k
    flags = [bool(k % 2) for k in range(m)]
    sign = np.where(flags, -1.0, 1.0)
    assert metrics.hypervolume(F * sign, ref * sign, maximize=flags) == pytest.approx(
        brute_hypervolume(F, ref), rel=1e-12, abs=1e-15)


# --------------------------------------------------------------------------------------------------
# IGD+
# --------------------------------------------------------------------------------------------------


def test_igd_plus_by_hand():
    R = [[1.0, 3.0], [3.0, 1.0], [1.0, 1.0]]
    # (2,2) is worse than (1,3) in f1 by 1, than (3,1) in f2 by 1, than (1,1) by (1,1)
    assert metrics.igd_plus([[2.0, 2.0]], R) == pytest.approx((1 + 1 + math.sqrt(2)) / 3)
    # the nearest in the IGD+ sense is taken for each reference point
    assert metrics.igd_plus([[2.0, 2.0], [1.0, 1.5]], R) == pytest.approx((0 + 0.5 + 0.5) / 3)
    # a set that weakly dominates the reference front scores 0
    assert metrics.igd_plus([[0.0, 0.0]], R) == 0.0
    assert metrics.igd_plus(torch.tensor(R), torch.tensor(R)) == 0.0
    # maximization: flip the signs of everything
    assert metrics.igd_plus(-np.array([[2.0, 2.0]]), -np.array(R), maximize=True) == pytest.approx(
        (2 + math.sqrt(2)) / 3)


def test_igd_plus_of_shifted_front():
    P = LinConcave().pareto_front(5)  # neighbours differ by > 0.08 in each objective: no shortcut
    assert metrics.igd_plus(P, P) == 0.0
    d = 0.01
    assert metrics.igd_plus(P + d, P) == pytest.approx(d * math.sqrt(2), rel=1e-12)
    assert metrics.igd_plus(P + torch.tensor([d, 0.0], dtype=F64), P) == pytest.approx(d, rel=1e-12)
    # on a dense front a neighbour of the shifted point can be nearer: IGD+ is below the shift
    Q = LinConcave().pareto_front(400)
    assert 0.5 * d < metrics.igd_plus(Q + d, Q) < d * math.sqrt(2)


@pytest.mark.parametrize("seed", range(3))
def test_igd_plus_matches_the_definition(seed):
    rng = np.random.default_rng(seed)
    F, R = rng.random((15, 3)), rng.random((20, 3))
    # mean over the reference points of the distance to the nearest point, counting only worse objectives
    brute = np.mean([min(np.linalg.norm(np.maximum(f - r, 0.0)) for f in F) for r in R])
    assert metrics.igd_plus(F, R) == pytest.approx(brute, rel=1e-12)
    flags = [True, False, True]
    sign = np.array([-1.0, 1.0, -1.0])
    assert metrics.igd_plus(F * sign, R * sign, maximize=flags) == pytest.approx(brute, rel=1e-12)
    # the plain IGD (Euclidean distance) is larger here: the positive part matters
    igd = np.mean([min(np.linalg.norm(f - r) for f in F) for r in R])
    assert brute < igd


# --------------------------------------------------------------------------------------------------
# worst-fraction mean (SIMOL's worst-10%)
# --------------------------------------------------------------------------------------------------


def test_worst_fraction_mean_by_hand():
    x = torch.arange(1.0, 11.0, dtype=F64)[torch.randperm(10, generator=torch.Generator().manual_seed(0))]
    assert float(metrics.worst_fraction_mean(x)) == 10.0
    assert float(metrics.worst_fraction_mean(x, 0.2)) == 9.5
    assert float(metrics.worst_fraction_mean(x, 0.25)) == 9.0  # ceil(2.5) = 3 worst
    assert float(metrics.worst_fraction_mean(x, 1.0)) == 5.5
    assert float(metrics.worst_fraction_mean(x, 0.01)) == 10.0  # at least one
    assert float(metrics.worst_fraction_mean(x, 0.1, largest=False)) == 1.0  # accuracies
    y = torch.arange(30.0)
    assert float(metrics.worst_fraction_mean(y, 0.1)) == 28.0
    # 0.07 * 100 is 7.000000000000001 in floating point: still the 7 worst, not 8
    z = torch.arange(100.0, dtype=F64)
    assert 0.07 * 100 > 7
    assert float(metrics.worst_fraction_mean(z, 0.07)) == 96.0  # mean of 93 .. 99
    assert float(metrics.worst_fraction_mean([3.0, 1.0, 2.0], 0.5)) == 2.5  # lists work too


def test_worst_fraction_mean_batched_and_differentiable():
    x = torch.tensor([[1.0, 5.0, 3.0, 4.0], [8.0, 2.0, 6.0, 0.0]], dtype=F64, requires_grad=True)
    out = metrics.worst_fraction_mean(x, 0.5, dim=1)
    assert out.tolist() == [4.5, 7.0]
    out.sum().backward()
    assert x.grad.tolist() == [[0, 0.5, 0, 0.5], [0.5, 0, 0.5, 0]]
    assert metrics.worst_fraction_mean(x.detach(), 0.5, dim=0).tolist() == [8.0, 5.0, 6.0, 4.0]


# --------------------------------------------------------------------------------------------------
# Brier score and ECE (MT-SGD supplement 2.2.1)
# --------------------------------------------------------------------------------------------------


def test_brier_score_by_hand():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], dtype=F64)
    y = torch.tensor([0, 2])
    # (0.09 + 0.04 + 0.01 + 0.01 + 0.64 + 0.81) / 2
    assert float(metrics.brier_score(p, y)) == pytest.approx(0.8)
    # the closed form used by the authors' code: 1 + (sum p^2 - 2 sum p_y) / N
    assert float(metrics.brier_score(p, y)) == pytest.approx(1 + (float((p ** 2).sum()) - 2 * 0.8) / 2)
    assert float(metrics.brier_score(torch.eye(3), torch.arange(3))) == 0.0
    assert float(metrics.brier_score(torch.eye(3), torch.tensor([1, 2, 0]))) == 2.0
    # leading dims are samples
    assert float(metrics.brier_score(p[None].expand(4, 2, 3), y[None].expand(4, 2))) == pytest.approx(0.8)


def test_brier_score_gradient():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 4, generator=gen, dtype=F64, requires_grad=True)
    y = torch.randint(0, 4, (5,), generator=gen)
    torch.autograd.gradcheck(lambda z: metrics.brier_score(torch.softmax(z, -1), y), (logits,))


def test_ece_by_hand():
    # confidences 0.95 (right), 0.95 (wrong) in bin (0.9, 1]; 0.6 (right), 0.55 (wrong) in (0.5, 0.6]
    p = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.4, 0.6], [0.55, 0.45]], dtype=F64)
    y = torch.tensor([0, 1, 1, 1])
    expected = (2 * abs(0.5 - 0.95) + 2 * abs(0.5 - 0.575)) / 4
    assert float(metrics.expected_calibration_error(p, y)) == pytest.approx(expected)
    bins = metrics.calibration_bins(p, y)
    assert bins.count.tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 0, 2]
    assert bins.accuracy[5].item() == 0.5 and bins.confidence[5].item() == pytest.approx(0.575)
    # with 2 bins: all four in (0.5, 1]: acc 0.5, conf 0.7625
    assert float(metrics.expected_calibration_error(p, y, n_bins=2)) == pytest.approx(0.2625)


def test_ece_bins_are_right_closed_and_perfect_calibration_is_zero():
    # confidence exactly 0.5 belongs to (0.4, 0.5], not (0.5, 0.6]
    bins = metrics.calibration_bins(torch.tensor([[0.5, 0.5]], dtype=F64), torch.tensor([0]))
    assert bins.count.tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    # four predictions at confidence 0.75, three of them right: calibrated
    p = torch.tensor([[0.75, 0.25]] * 4, dtype=F64)
    assert float(metrics.expected_calibration_error(p, torch.tensor([0, 0, 0, 1]))) == pytest.approx(0, abs=1e-15)
    # always-right, fully confident predictions are calibrated too
    assert float(metrics.expected_calibration_error(torch.eye(5), torch.arange(5))) == 0.0


def test_ece_matches_a_plain_loop():
    gen = torch.Generator().manual_seed(5)
    p = torch.softmax(2.0 * torch.randn(400, 4, generator=gen, dtype=F64), -1)
    y = torch.randint(0, 4, (400,), generator=gen)
    conf, pred = p.max(-1)
    for n_bins in (1, 7, 10):
        ece, counts = 0.0, []
        for b in range(n_bins):
            inside = (conf > b / n_bins) & (conf <= (b + 1) / n_bins)
            counts.append(int(inside.sum()))
            if inside.any():
                acc = float((pred[inside] == y[inside]).double().mean())
                ece += float(inside.double().mean()) * abs(acc - float(conf[inside].mean()))
        assert float(metrics.expected_calibration_error(p, y, n_bins=n_bins)) == pytest.approx(ece, rel=1e-12)
        assert metrics.calibration_bins(p, y, n_bins=n_bins).count.tolist() == counts
    # Brier score by the definition, too
    brier = sum(float(((torch.eye(4, dtype=F64)[y[i]] - p[i]) ** 2).sum()) for i in range(400)) / 400
    assert float(metrics.brier_score(p, y)) == pytest.approx(brier, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_ece_bin_edges_in_the_input_dtype(dtype):
    # ten-member vote averages k/10: a confidence written as 0.3 / 0.6 / 0.8 belongs to the bin that
    # ends there, whatever the dtype (float32(0.8) = 0.80000001 is not "above 0.8" for the user)
    conf = torch.arange(5, 11, dtype=dtype) / 10  # 0.5 .. 1.0
    p = torch.stack([conf, 1 - conf], dim=-1)
    y = torch.tensor([0, 1, 0, 0, 1, 0])
    bins = metrics.calibration_bins(p, y)
    conf64 = torch.arange(5, 11, dtype=F64) / 10
    ref = metrics.calibration_bins(torch.stack([conf64, 1 - conf64], dim=-1), y)
    assert bins.count.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert bins.count.tolist() == ref.count.tolist()
    torch.testing.assert_close(bins.accuracy, ref.accuracy)
    # with 2 bins the edge 0.5 is exact in every dtype: conf 0.5 is in (0, 0.5]
    assert metrics.calibration_bins(p, y, n_bins=2).count.tolist() == [1, 5]


def test_ece_dtype():
    p = torch.tensor([[0.85, 0.15], [0.25, 0.75]], dtype=torch.float32)
    out = metrics.expected_calibration_error(p, torch.tensor([0, 0]))
    assert out.dtype == torch.float32 and out.dim() == 0
    assert float(out) == pytest.approx((abs(1 - 0.85) + abs(0 - 0.75)) / 2)


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [
    lambda F: metrics.nondominated(F),
    lambda F: metrics.hypervolume(F, [1.0, 1.0]),
    lambda F: metrics.igd_plus(F, [[0.0, 1.0]]),
])
def test_objective_metric_errors(fn):
    with pytest.raises(ValueError, match="finite; row 1"):
        fn([[0.0, 0.0], [np.nan, 1.0]])
    with pytest.raises(ValueError, match=r"\(n_points, n_obj\)"):
        fn([0.0, 1.0])
    with pytest.raises(ValueError, match="at least one objective"):
        fn(np.zeros((3, 0)))
    with pytest.raises(TypeError, match="real numbers"):
        fn([["a", "b"]])


def test_objective_metric_argument_errors():
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        metrics.hypervolume([[0.0, 0.0]], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="ref must be finite"):
        metrics.hypervolume([[0.0, 0.0]], [1.0, np.inf])
    with pytest.raises(ValueError, match="same number of objectives"):
        metrics.igd_plus([[0.0, 0.0]], [[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="at least one point"):
        metrics.igd_plus(np.zeros((0, 2)), [[0.0, 0.0]])
    with pytest.raises(ValueError, match="at least one point"):
        metrics.igd_plus([[0.0, 0.0]], np.zeros((0, 2)))
    with pytest.raises(ValueError, match="maximize"):
        metrics.nondominated([[0.0, 0.0]], maximize=[True])
    for bad in (1, None, 0.5):  # neither a bool nor a sequence of bools
        with pytest.raises(ValueError, match="maximize"):
            metrics.hypervolume([[0.0, 0.0]], [1.0, 1.0], maximize=bad)


def test_prediction_metric_errors():
    p = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        metrics.brier_score(p, torch.tensor([0, 2]))
    with pytest.raises(TypeError, match="integer class indices"):
        metrics.brier_score(p, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        metrics.expected_calibration_error(p, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="softmax"):
        metrics.brier_score(torch.tensor([[2.0, -1.0], [0.5, 0.5]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="sum to 1"):
        metrics.expected_calibration_error(torch.tensor([[0.2, 0.2], [0.5, 0.5]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="finite"):
        metrics.brier_score(torch.tensor([[np.nan, 0.5], [0.5, 0.5]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="n_bins"):
        metrics.expected_calibration_error(p, torch.tensor([0, 1]), n_bins=0)
    with pytest.raises(ValueError, match="fraction"):
        metrics.worst_fraction_mean(torch.ones(5), 0.0)
    with pytest.raises(ValueError, match="fraction"):
        metrics.worst_fraction_mean(torch.ones(5), 1.5)
    with pytest.raises(ValueError, match="finite"):
        metrics.worst_fraction_mean(torch.tensor([1.0, np.nan]))
    with pytest.raises(ValueError, match="no entries"):
        metrics.worst_fraction_mean(torch.ones(3, 0))
    with pytest.raises(ValueError, match="out of range"):
        metrics.worst_fraction_mean(torch.ones(3), dim=2)
