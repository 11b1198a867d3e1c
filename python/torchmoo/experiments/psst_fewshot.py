r"""``psst-fewshot-digits``: Pareto self-supervised training for few-shot learning (PSST, Chen et al.).

A Conv-4-64 feature extractor (supplement B.1) with a cosine classifier (Eq. 5-6) is trained on base
classes and evaluated on novel classes by 5-way K-shot episodes whose class weights are the averaged
support features (section C). Three ways of training it:

* ``cc``: the cosine classifier alone (``L1`` only);
* ``fixed w=...``: Eq. 7 with fixed weights, ``L1 + w L_aux``; the one with the smallest sum of the
  base-set losses is taken as the best-overall solution :math:`\theta^*_{\pi_0}` of A.1 / A.2;
* ``psst region i/K``: PSST, one model per preference region: the regions between the preference
  vectors of Eq. 1 built from the best-overall solution's loss vector (A.2; with several auxiliary
  tasks and ``region_kind="subsets"``, the ``(U, V)`` regions of A.3), each trained with the
  constrained direction of Eq. 3 / 4 (:class:`torchmoo.methods.PSST`) over all the parameters, trunk
  and heads (``aggregate_heads=False``: the trunk only, each head on its own loss, a deviation), with
  Pareto MTL's feasibility search until the mini-batch loss vector first lies in the region
  (``feasibility="initial"``; ``"always"`` repeats it whenever it leaves);
* ``explore region i/K``: around each PSST solution, one tangent step per objective along the
  Pareto set (A.6 / D.2, :func:`torchmoo.methods.explore_solution`: MINRES over Hessian-vector products
  on a fixed batch), each explored network evaluated like the others.

Auxiliary tasks: rotation prediction (Eq. 8, the per-image sum over the 4 rotations) by default;
``aux=["rotation", "location"]`` adds relative patch location (Eq. 9). Training routine: B.3 scaled
down (SGD, momentum 0.9, weight decay 5e-4, learning rate 0.1 divided by 10 at 1/3 and 2/3 of the
epochs; B.3's early stopping on the 1-shot accuracy of validation episodes with ``early_stopping``,
which ``full()`` turns on: in 6 epochs the validation accuracy moves by less than its noise). Every model
starts from the same initialization and sees the same batches; all are scored on the same test
episodes (1-shot and 5-shot, 95% confidence intervals: 1.96 standard errors over episodes).

Data. ``data="digits"`` (default): scikit-learn's 1,797 bundled 8 x 8 digits; base classes 0-4 (901
images, all used for training), novel classes 5-9 (896 images), each novel class split in two
halves: validation episodes (early stopping, choice of the fixed weight and of the PSST region) and
test episodes. Conv-4's four poolings need at least 16 x 16 inputs, so each digit pixel becomes a
2 x 2 block (nearest-neighbour upsampling to 16 x 16, features 1 x 1 x 64); the patch grid of the
location task is cut from a bilinear upsampling to ``3 * patch_region`` = 60 x 60 (regions of 20 x 20,
random 16 x 16 patches). Intensities are divided by 16 and standardized with the base images' mean and
standard deviation. ``data="image-folder"``: any ``root/<class>/<images>`` tree (``image_folder=`` or
``$TORCHMOO_FEWSHOT_DIR``), loaded by :func:`torchmoo.zoo.data.image_folder.load_image_folder` at
``image_size``; the first 60% of the classes (sorted by name) are base classes unless
``base_classes`` says otherwise. ``full()`` is B.3's routine (60 epochs, batch 128, 32 x 32 inputs,
K = 5 regions) on that folder when ``$TORCHMOO_FEWSHOT_DIR`` is set, else on the digits.

What we got vs the paper. Default run (``torchmoo run psst-fewshot-digits``, seed 0): 2 min 33 s on 2
CPU cores shared with other work, 2 min 32 s of CPU time. 5-way accuracy (%) on the same 600 test
episodes (+- 95% CI over episodes); losses on the whole base set in eval mode; the angle is that of
``(L_cls, L_rot)`` with the ``L_cls`` axis. PSST's direction covers every parameter (trunk and heads,
Eq. 3 on all of :math:`\theta`) with the feasibility search only until the first step inside the region:

==========================  =============  =============  =====  =====  ======
model                       1-shot         5-shot         L_cls  L_rot  angle
==========================  =============  =============  =====  =====  ======
cc alone                    51.07 +- 0.71  61.33 +- 0.52  0.008  (5.4)  --
fixed w=0.5 (best overall)  56.47 +- 0.70  68.72 +- 0.50  0.072  0.543  82.44
fixed w=1                   46.90 +- 0.73  60.76 +- 0.50  0.296  1.195  76.08
fixed w=2                   36.05 +- 0.64  44.06 +- 0.55  1.019  2.445  67.38
psst region 1 [82.4, 85.0]  55.42 +- 0.66  65.02 +- 0.46  0.023  0.848  88.43
psst region 2 [85.0, 87.5]  53.78 +- 0.70  64.01 +- 0.47  0.019  1.146  89.03
psst region 3 [87.5, 90.0]  58.28 +- 0.64  67.57 +- 0.49  0.005  2.326  89.88
==========================  =============  =============  =====  =====  ======

Validation picks ``fixed w=0.5`` and PSST region 3. Seed 1: cc alone 42.33 / 53.06, fixed w=0.5 (best
overall and picked) 55.46 / 69.15, PSST regions 46.33 / 45.70 / 51.51 (1-shot; region 3 picked, 5-shot
65.28). The tangent steps "favour L_rot" changed test accuracy by at most 0.04 points, the steps
"favour L_cls" by -0.6 to -11.4 points (seed 0) and -2.0 to -2.8 (seed 1), 1-shot.

The supplement gives no accuracy table; the paper's claim is that PSST's solutions beat both the
cosine classifier alone and a fixed weighting of the same auxiliary task. Here the validation-picked
PSST model beats the cosine classifier alone in both seeds (+7.2 / +6.2 and +9.2 / +12.2 points,
1-shot / 5-shot); against the best fixed weighting it is +1.8 (1-shot) and -1.2 (5-shot) in seed 0,
-4.0 and -3.9 in seed 1. Why, as far as we can tell:

* Eq. 3 over all parameters. An earlier version constrained only the trunk's step and gave each head
  the plain gradient of its own loss; with an :math:`\epsilon`-active bound that step could raise the
  bound (the heads' steps are unconstrained), and its PSST models scored 51.14 / 50.38 / 48.42 (1-shot,
  seed 0) and 48.02 / 52.27 / 49.03 (seed 1). With all parameters in the QP but Pareto MTL's
  feasibility search at *every* step outside the region (``feasibility="always"``), the search, whose
  QP leaves the objectives out, raised the rotation loss through the rotation head: a violated lower
  bound is lowered by raising ``L_rot``, and its cross-entropy is unbounded. In a 3-epoch,
  16-channel trial region 2 overshot past its upper bound with ``L_rot`` 14 (chance: 5.5), where the
  constraint's sensitivity to ``L_rot`` is only :math:`L_{cls}/L_{rot}^2`, and stayed outside with
  every later step a feasibility step. Pareto MTL runs that search once, until the first feasible
  point, and afterwards puts violated constraints in the QP next to the objectives (Eq. 3's
  :math:`\epsilon`-active set contains them): the default ``feasibility="initial"`` does that (1-3%
  of the steps here). In the default setting ``"always"`` ended with ``L_rot`` 2.48 / 1.97 / 3.26.
* The loss vectors of regions 1-2 end outside their regions (in both seeds, inside on 8-13% of the
  steps; region 3 on 91-96%). Eq. 3 only guarantees first-order descent. Inside, with no bound
  within :math:`\epsilon`, the step is MGDA's, which turns the loss vector towards the ``L_cls`` axis
  (classification is learned faster); once the upper bound is crossed, Eq. 3 may not raise
  ``L_cls``, so it must lower ``L_rot`` faster, and the min-norm point of the hull of
  :math:`\nabla L_{cls}, \nabla L_{rot}, \nabla h` shrinks to about :math:`L_{cls}/L_{rot}^2` times
  :math:`|\nabla L_{rot}|`. In a 16-channel replica the median step length outside was 0.068 against
  1.65 inside, and the learning rate drops 10 times at epochs 2 and 4: the models do not come back.
  They are not dominated by ``w=0.5`` (lower ``L_cls``, higher ``L_rot``).
* Budget: 6 epochs of 28 steps (batch 32, 901 images) against B.3's 60,000 steps of batch 128.
* By construction (Lemma 2) every region lies at angles above :math:`\pi_0`, i.e. favours the main
  task relative to the best-overall solution; in seed 1 the model that learned rotation best
  (``w=0.5``, ``L_rot`` 0.41) transferred best.
* The fixed weights are not a clean trade-off either: ``w=1`` and ``w=2`` are worse than ``w=0.5`` in
  *both* losses (Eq. 8's per-image sum is 4 times the mean cross-entropy, and a large weight on it at
  learning rate 0.1 made SGD unstable), so "best fixed weight" is partly "most stable step size".
* Exploration (A.6 / D.2): at the PSST solutions MGDA's weights are (1, 0) or nearly, the
  classification gradient is itself the min-norm point: after 6 epochs the solutions are far from
  Pareto-stationary and the tangent-plane model predicts poorly (region 3, seed 0, "favour L_cls" on
  the 32-image batch: predicted changes -0.16 and +0.18, obtained +3.98 and +6.88; MINRES with k = 10
  reached relative residuals 0.07-0.97).
* Noise: the CIs cover the sampling of test episodes only. From seed 0 to seed 1 the cosine
  classifier alone moved by 9 points and the picked PSST model by 7, so PSST's lead over the cosine
  classifier held in both seeds, but its position relative to ``w=0.5`` did not.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

import torchmoo as tm
from torchmoo.experiments import storage
from torchmoo.experiments.runner import Experiment, RunContext, register
from torchmoo.zoo.data.image_folder import resize_square
from torchmoo.methods import psst as P

FEWSHOT_ENV = "TORCHMOO_FEWSHOT_DIR"
DATA_SETS = ("digits", "image-folder")


@dataclass
class Config:
    """Small default (a few minutes on 2 CPU cores); :func:`full` is B.3's routine."""

    data: str = "digits"
    image_folder: Optional[str] = None  # root of an image-folder data set (else $TORCHMOO_FEWSHOT_DIR)
    image_size: int = 16  # digits: 8 x 8 -> 16 x 16 by 2 x 2 pixel blocks (Conv-4 needs >= 16)
    patch_size: int = 16
    patch_region: int = 20  # the patch grid is cut from images of 3 * patch_region
    base_classes: Optional[List[int]] = None  # default: digits 0-4; image folder: the first 60% of the classes
    aux: List[str] = field(default_factory=lambda: ["rotation"])
    channels: int = 64  # Conv-4-64
    epochs: int = 6
    batch_size: int = 32
    lr: float = 0.1
    early_stopping: bool = False  # B.3 keeps the epoch of best validation 1-shot accuracy; off for short runs
    fixed_weights: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # omega_aux (omega_1 = 1)
    regions: int = 3  # K
    region_kind: str = "angular"  # "angular" (A.2, Eq. 1) or "subsets" (A.3, needs >= 2 auxiliary tasks)
    epsilon_fraction: float = 0.1  # epsilon-active sets: this fraction of the region's constraint scale
    feasibility: str = "initial"  # PSST's feasibility search: "initial", "always" or "never"
    aggregate_heads: bool = True  # Eq. 3 on all parameters; False: the heads get their own loss's gradient
    explore: bool = True
    explore_k: int = 10  # MINRES iterations (Hessian-vector products per direction)
    explore_change: float = 0.1  # step: first-order change of the losses = this fraction of |L|
    explore_images: int = 32  # the fixed batch of the objectives and Hessian
    n_way: int = 5
    shots: List[int] = field(default_factory=lambda: [1, 5])
    n_query: int = 15
    val_episodes: int = 200
    test_episodes: int = 600
    threads: int = 1  # small batches: one thread avoids oversubscribing shared cores


def full() -> Config:
    """B.3's routine: 60 epochs (decays at 20 and 40), batch 128, lr 0.1; 32 x 32 inputs (CIFAR-FS size);
    K = 5; on ``$TORCHMOO_FEWSHOT_DIR`` when it is set, else on the digits."""
    folder = os.environ.get(FEWSHOT_ENV, "").strip()
    return Config(data="image-folder" if folder else "digits", image_size=32, patch_size=24, patch_region=32,
                  epochs=60, batch_size=128, early_stopping=True, regions=5, explore_k=50, explore_images=256,
                  val_episodes=600, test_episodes=2000)


# ---- data --------------------------------------------------------------------------------------------------


class FewShotData:
    """Base training images (and their patch-grid images) and novel validation / test features' inputs."""

    def __init__(self, base_x, base_y, base_patch, val_x, val_y, test_x, test_y, in_channels, base_names, novel_names):
        self.base_x, self.base_y, self.base_patch = base_x, base_y, base_patch
        self.val_x, self.val_y, self.test_x, self.test_y = val_x, val_y, test_x, test_y
        self.in_channels, self.base_names, self.novel_names = in_channels, base_names, novel_names


def load_data(cfg: Config, seed: int, device: torch.device) -> FewShotData:
    """Base / novel split, resized and standardized (see the module docstring)."""
    need_patches = "location" in cfg.aux
    if cfg.data == "digits":
        from torchmoo.zoo.data.digits import load_sklearn_digits

        digits, labels = load_sklearn_digits()
        raw = (digits / 16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
        x = resize_square(raw, cfg.image_size)
        xp = resize_square(raw, 3 * cfg.patch_region) if need_patches else None
        names = [str(d) for d in range(10)]
        base = list(range(5)) if cfg.base_classes is None else list(cfg.base_classes)
    else:
        from torchmoo.zoo.data.image_folder import load_image_folder

        root = cfg.image_folder or os.environ.get(FEWSHOT_ENV, "").strip()
        if not root:
            raise ValueError(f"data='image-folder' needs image_folder= in the config or ${FEWSHOT_ENV}.")
        x, labels, names = load_image_folder(root, cfg.image_size)
        xp = load_image_folder(root, 3 * cfg.patch_region)[0] if need_patches else None
        base = list(range(max(1, int(0.6 * len(names))))) if cfg.base_classes is None else list(cfg.base_classes)
    C = len(names)
    if not base or len(set(base)) != len(base) or any(b < 0 or b >= C for b in base):
        raise ValueError(f"base_classes must be distinct class indices in 0..{C - 1}, got {base}.")
    novel = [c for c in range(C) if c not in base]
    if len(novel) < cfg.n_way:
        raise ValueError(f"{cfg.n_way}-way episodes need {cfg.n_way} novel classes; the split leaves {len(novel)}.")
    base_mask = torch.isin(labels, torch.tensor(base))
    relabel = torch.full((C,), -1, dtype=torch.int64)
    relabel[torch.tensor(base)] = torch.arange(len(base))
    relabel[torch.tensor(novel)] = torch.arange(len(novel))
    # novel images: each class split in halves, validation / test
    g = torch.Generator().manual_seed(seed * 7919 + 17)
    val_idx, test_idx = [], []
    for c in novel:
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(members.numel(), generator=g)]
        half = members.numel() // 2
        val_idx.append(members[:half])
        test_idx.append(members[half:])
    val_idx, test_idx = torch.cat(val_idx), torch.cat(test_idx)
    base_x = x[base_mask]
    mean = base_x.mean(dim=(0, 2, 3), keepdim=True)
    std = base_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    norm = lambda t: ((t - mean) / std).to(device)  # noqa: E731
    base_patch = None
    if xp is not None:
        bp = xp[base_mask]
        base_patch = ((bp - bp.mean(dim=(0, 2, 3), keepdim=True))
                      / bp.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)).to(device)
    return FewShotData(norm(base_x), relabel[labels[base_mask]].to(device), base_patch,
                       norm(x[val_idx]), relabel[labels[val_idx]].to(device),
                       norm(x[test_idx]), relabel[labels[test_idx]].to(device),
                       x.shape[1], [names[b] for b in base], [names[c] for c in novel])


# ---- units -------------------------------------------------------------------------------------------------


def _model(cfg: Config, data: FewShotData, seed: int) -> tm.zoo.models.Conv4SelfSupervised:
    torch.manual_seed(seed)  # every unit starts from the same weights
    ch = cfg.channels
    return tm.zoo.models.Conv4SelfSupervised(
        num_classes=len(data.base_names), in_channels=data.in_channels, image_size=cfg.image_size,
        patch_size=cfg.patch_size, channels=(ch,) * 4, rotation_channels=(2 * ch, 4 * ch), location_hidden=4 * ch,
    )


def _accuracy(model, x, y, cfg: Config, shots: List[int], episodes: int, seed: int) -> Dict[int, P.FewShotAccuracy]:
    feats = P.extract_features(model, x)
    return {k: P.fewshot_accuracy(feats, y, n_way=cfg.n_way, k_shot=k, n_query=cfg.n_query, episodes=episodes,
                                  seed=seed) for k in shots}


def _evaluate(model, cfg: Config, data: FewShotData, seed: int) -> Dict[str, Any]:
    """Base-set loss vector (eval mode), validation 1-shot and test K-shot accuracies."""
    aux = tuple(cfg.aux)
    losses = P.evaluate_losses(model, data.base_x, data.base_y, aux, patch_images=data.base_patch,
                               patch_size=cfg.patch_size)
    val = _accuracy(model, data.val_x, data.val_y, cfg, [1], cfg.val_episodes, seed + 1)[1]
    test = _accuracy(model, data.test_x, data.test_y, cfg, list(cfg.shots), cfg.test_episodes, seed + 2)
    out: Dict[str, Any] = {"losses": losses.tolist(), "val_1shot": val.mean}
    for k, r in test.items():
        out[f"test_{k}shot"], out[f"test_{k}shot_ci95"] = r.mean, r.ci95
    return out


def train_unit(unit: str, cfg: Config, ctx: RunContext, data: FewShotData, seed: int, *, aux: Tuple[str, ...],
               method, region: Optional[P.PreferenceRegion] = None) -> Dict[str, Any]:
    """Trains one model (checkpoint every epoch; with ``cfg.early_stopping`` the epoch of best validation
    1-shot accuracy is kept, else the last)."""
    model = _model(cfg, data, seed).to(ctx.device)
    trainer = P.FewShotTrainer(model, data.base_x, data.base_y, aux=aux, method=method, epochs=cfg.epochs,
                               batch_size=cfg.batch_size, lr=cfg.lr, patch_images=data.base_patch, seed=seed,
                               aggregate_heads=cfg.aggregate_heads)
    history: List[Dict[str, float]] = []
    best_val, best_epoch, best_state = -1.0, 0, None
    state = ctx.load_state(unit)
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        history, best_val = state["history"], state["best_val"]
        best_epoch, best_state = state["best_epoch"], state["best"]
    for _ in ctx.progress(range(trainer.epoch, cfg.epochs), desc=unit, total=cfg.epochs, initial=trainer.epoch):
        stats = trainer.train_epoch()
        stats["val_1shot"] = _accuracy(model, data.val_x, data.val_y, cfg, [1], cfg.val_episodes, seed + 1)[1].mean
        history.append(stats)
        if stats["val_1shot"] > best_val or not cfg.early_stopping:
            best_val, best_epoch, best_state = stats["val_1shot"], trainer.epoch, copy.deepcopy(model.state_dict())
        ctx.save_state(unit, {"trainer": trainer.state_dict(), "history": history, "best_val": best_val,
                              "best_epoch": best_epoch, "best": best_state})
    model.load_state_dict(best_state)
    result = _evaluate(model, cfg, data, seed)
    result.update({"history": history, "best_epoch": best_epoch,
                   "train_seconds": sum(h["seconds"] for h in history),
                   "train_cpu_seconds": sum(h["cpu_seconds"] for h in history)})
    if region is not None:
        result["in_region"] = region.contains(torch.tensor(result["losses"]))
        if isinstance(region, P.AngularRegion):
            result["region_deg"] = [[math.degrees(a), math.degrees(b)]
                                    for a, b in zip(region.lower.tolist(), region.upper.tolist())]
            result["angle_deg"] = [math.degrees(a) for a in region.angles(torch.tensor(result["losses"])).tolist()]
        result["feasibility_fraction"] = sum(h.get("feasibility_fraction", 0.0) for h in history) / len(history)
        result["inside_fraction"] = sum(h.get("inside_fraction", 0.0) for h in history) / len(history)
    storage.save_checkpoint(ctx.model_path(unit), {"model": model.state_dict()})
    ctx.record(unit, result, seconds=result["train_seconds"], evaluations=sum(h["steps"] for h in history))
    return result


def explore_unit(unit: str, parent: str, cfg: Config, ctx: RunContext, data: FewShotData, seed: int) -> Dict[str, Any]:
    """Tangent steps (A.6 / D.2) around the PSST solution of ``parent``, one per objective."""
    t0, c0 = time.perf_counter(), time.process_time()
    aux = tuple(cfg.aux)
    model = _model(cfg, data, seed).to(ctx.device)
    model.load_state_dict(storage.load_checkpoint(ctx.model_path(parent))["model"])
    model.eval()
    g = torch.Generator().manual_seed(seed * 31 + 5)
    idx = torch.randperm(data.base_x.shape[0], generator=g)[: cfg.explore_images].to(data.base_x.device)
    xb, yb = data.base_x[idx], data.base_y[idx]
    pb = None if data.base_patch is None else data.base_patch[idx]
    params = list(model.trunk.parameters()) + list(model.heads[0].parameters())
    for a in aux:
        params += list(model.heads[1 if a == "rotation" else 2].parameters())

    def objectives() -> torch.Tensor:
        return P.task_losses(model, xb, yb, aux, patch_images=pb, patch_size=cfg.patch_size)

    exp = P.explore_solution(objectives, params, relative_change=cfg.explore_change, k=cfg.explore_k)
    theta = tm.autograd.flatten(params).detach().clone()
    points = []
    for j in range(exp.params.shape[0]):
        P.assign_flat(params, exp.params[j])
        ev = _evaluate(model, cfg, data, seed)
        ev.update({"beta": exp.beta[j].tolist(), "batch_losses": exp.losses[j].tolist(),
                   "predicted_change": exp.predicted[j].tolist(), "step": float(exp.steps[j]),
                   "minres_residual": float(exp.residuals[j])})
        points.append(ev)
    P.assign_flat(params, theta)
    result = {"parent": parent, "batch_losses": exp.base_losses.tolist(), "alpha": exp.alpha.tolist(), "points": points,
              "cpu_seconds": time.process_time() - c0}
    ctx.record(unit, result, seconds=time.perf_counter() - t0, evaluations=cfg.explore_k * len(points))
    return result


# ---- run -----------------------------------------------------------------------------------------------------


def _check(cfg: Config) -> None:
    if cfg.data not in DATA_SETS:
        raise ValueError(f"data must be one of {DATA_SETS}, got {cfg.data!r}.")
    P._check_aux(cfg.aux)
    if not cfg.aux:
        raise ValueError("aux must name at least one auxiliary task (PSST needs M >= 2 objectives).")
    if cfg.region_kind not in ("angular", "subsets"):
        raise ValueError(f"region_kind must be 'angular' or 'subsets', got {cfg.region_kind!r}.")
    if cfg.region_kind == "subsets" and len(cfg.aux) < 2:
        raise ValueError("region_kind='subsets' (A.3) divides nothing with one auxiliary task; use 'angular'.")
    if cfg.image_size < 16 or cfg.patch_size < 16:
        raise ValueError("Conv-4's four poolings need image_size >= 16 and patch_size >= 16.")
    if cfg.patch_region < cfg.patch_size:
        raise ValueError(f"patch_region ({cfg.patch_region}) must be >= patch_size ({cfg.patch_size}).")
    for name in ("epochs", "batch_size", "regions", "val_episodes", "test_episodes", "explore_k", "explore_images"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}.")
    if not cfg.shots or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in cfg.shots):
        raise ValueError(f"shots must be a non-empty list of ints >= 1, got {cfg.shots}.")
    if isinstance(cfg.n_way, bool) or not isinstance(cfg.n_way, int) or cfg.n_way < 2:
        raise ValueError(f"n_way must be an int >= 2, got {cfg.n_way!r}.")
    if isinstance(cfg.n_query, bool) or not isinstance(cfg.n_query, int) or cfg.n_query < 1:
        raise ValueError(f"n_query must be an int >= 1, got {cfg.n_query!r}.")
    if not cfg.fixed_weights or any(not (w >= 0) for w in cfg.fixed_weights):
        raise ValueError(f"fixed_weights must be a non-empty list of weights >= 0, got {cfg.fixed_weights}.")
    if cfg.feasibility not in P.FEASIBILITY_MODES:
        raise ValueError(f"feasibility must be one of {P.FEASIBILITY_MODES}, got {cfg.feasibility!r}.")
    if not isinstance(cfg.aggregate_heads, bool):
        raise ValueError(f"aggregate_heads must be a bool, got {cfg.aggregate_heads!r}.")
    if not 0 <= cfg.epsilon_fraction < 0.5:
        raise ValueError(f"epsilon_fraction must be in [0, 0.5) (both bounds of a region active at once "
                         f"cancel), got {cfg.epsilon_fraction}.")


def _check_episodes(cfg: Config, data: FewShotData) -> None:
    """The episodes are drawn after training: a novel split too small for them fails here, before it."""
    from torchmoo.zoo.data.episodes import EpisodeSampler

    for split, y, shots in (("validation", data.val_y, [1]), ("test", data.test_y, cfg.shots)):
        for k in shots:
            try:
                EpisodeSampler(y.cpu(), cfg.n_way, k, cfg.n_query, 1, 0)
            except ValueError as err:
                raise ValueError(f"the {split} half of the novel classes cannot hold the {cfg.n_way}-way {k}-shot "
                                 f"episodes with {cfg.n_query} queries: {err}") from None


def _fmt_w(w: float) -> str:
    return f"{w:g}"


def run(cfg: Config, ctx: RunContext) -> Dict[str, Any]:
    _check(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.threads))
    try:
        return _run(cfg, ctx)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: Config, ctx: RunContext) -> Dict[str, Any]:
    seed = ctx.seed
    data = load_data(cfg, seed, ctx.device)
    _check_episodes(cfg, data)
    aux = tuple(cfg.aux)
    M = 1 + len(aux)
    units: Dict[str, Dict[str, Any]] = {}

    def get(unit: str, fn, *args, **kw) -> Dict[str, Any]:
        units[unit] = ctx.result(unit) if ctx.done(unit) else fn(unit, *args, **kw)
        return units[unit]

    get("cc", train_unit, cfg, ctx, data, seed, aux=(), method=[1.0])
    weights = sorted(set(cfg.fixed_weights))
    for w in weights:
        get(f"fixed w={_fmt_w(w)}", train_unit, cfg, ctx, data, seed, aux=aux, method=[1.0] + [w] * len(aux))
    # the best-overall solution theta*_{pi_0} (A.1: the smallest sum of the losses) among the fixed weightings
    best_unit = min((f"fixed w={_fmt_w(w)}" for w in weights), key=lambda u: sum(units[u]["losses"]))
    best = torch.tensor(units[best_unit]["losses"], dtype=torch.float64)
    if cfg.region_kind == "angular":
        regions: List[P.PreferenceRegion] = list(P.angular_regions(best, cfg.regions))
        pv = P.preference_vectors(best, cfg.regions)
    else:
        regions = list(P.partition_regions(best))
        pv = None
    R = len(regions)
    psst_units = []
    for i, region in enumerate(regions, 1):
        if isinstance(region, P.AngularRegion):
            eps = cfg.epsilon_fraction * float(region.widths().min())
        else:
            eps = cfg.epsilon_fraction * float(best.mean())
        unit = f"psst region {i}/{R}"
        psst_units.append(unit)
        method = tm.methods.PSST(region, epsilon=eps, feasibility=cfg.feasibility)
        get(unit, train_unit, cfg, ctx, data, seed, aux=aux, method=method, region=region)
        if cfg.explore:
            get(f"explore region {i}/{R}", explore_unit, unit, cfg, ctx, data, seed)

    # ---- table ----
    table: List[Dict[str, Any]] = []

    def row(name: str, r: Dict[str, Any], **extra) -> Dict[str, Any]:
        out: Dict[str, Any] = {"model": name, "val 1-shot": r["val_1shot"]}
        for k in cfg.shots:
            out[f"{k}-shot"], out[f"{k}-shot ci95"] = r[f"test_{k}shot"], r[f"test_{k}shot_ci95"]
        out["L_cls"] = r["losses"][0]
        for a, v in zip(aux, r["losses"][1:]):
            out[f"L_{a}"] = v
        if M == 2:
            out["angle (deg)"] = math.degrees(math.atan2(r["losses"][1], r["losses"][0]))
        out.update(extra)
        return out

    table.append(row("cc alone", units["cc"], note="aux heads untrained: their losses are not optimized"))
    for w in weights:
        table.append(row(f"fixed w={_fmt_w(w)}", units[f"fixed w={_fmt_w(w)}"],
                         note="best overall (smallest sum): pi_0" if f"fixed w={_fmt_w(w)}" == best_unit else ""))
    for i, unit in enumerate(psst_units, 1):
        r = units[unit]
        extra = {"in region": r["in_region"], "feasibility steps": r["feasibility_fraction"]}
        if "region_deg" in r and M == 2:
            extra["region (deg)"] = f"[{r['region_deg'][0][0]:.2f}, {r['region_deg'][0][1]:.2f}]"
        table.append(row(f"psst region {i}/{R}", r, **extra))
        if cfg.explore:
            for p in units[f"explore region {i}/{R}"]["points"]:
                j = int(torch.tensor(p["beta"]).argmax())
                table.append(row(f"  explored from {i}/{R}, favour L{j}", p))

    def pick(prefix: str) -> str:
        names = [t["model"] for t in table if t["model"].startswith(prefix)]
        return max(names, key=lambda n: next(t["val 1-shot"] for t in table if t["model"] == n))

    sel_fixed, sel_psst = pick("fixed"), pick("psst")
    summary: Dict[str, Any] = {"table": table, "best_overall": best_unit, "selected_fixed": sel_fixed,
                               "selected_psst": sel_psst}
    for name, key in ((sel_fixed, "fixed"), (sel_psst, "psst"), ("cc alone", "cc")):
        t = next(t for t in table if t["model"] == name)
        for k in cfg.shots:
            summary[f"{key} {k}-shot"] = f"{100 * t[f'{k}-shot']:.2f} +- {100 * t[f'{k}-shot ci95']:.2f}"
    if pv is not None:
        summary["pi_0 (deg)"] = [math.degrees(a) for a in pv.pi0.tolist()]
        summary["preference angles (deg)"] = [[math.degrees(a) for a in r] for r in pv.angles.tolist()]
    summary["base classes"] = data.base_names
    summary["novel classes"] = data.novel_names
    summary["figure"] = str(_plot(cfg, ctx, table, units, weights, psst_units, pv))
    return summary


def _plot(cfg: Config, ctx: RunContext, table, units, weights, psst_units, pv):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    pts = []
    for w in weights:
        L = units[f"fixed w={_fmt_w(w)}"]["losses"]
        ax.scatter(L[0], L[1], marker="s", color="gray", zorder=3)
        ax.annotate(f"w={_fmt_w(w)}", (L[0], L[1]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        pts.append(L[:2])
    for i, unit in enumerate(psst_units):
        c = colors[i % len(colors)]
        L = units[unit]["losses"]
        ax.scatter(L[0], L[1], marker="o", s=50, color=c, zorder=4, label=f"PSST region {i + 1}")
        pts.append(L[:2])
        if cfg.explore:
            for p in units[f"explore region {i + 1}/{len(psst_units)}"]["points"]:
                Q = p["losses"]
                ax.plot([L[0], Q[0]], [L[1], Q[1]], "--", color=c, lw=0.8)
                ax.scatter(Q[0], Q[1], marker="x", color=c, zorder=4)
                pts.append(Q[:2])
    pts_t = torch.tensor(pts)
    xmax, ymax = float(pts_t[:, 0].max()) * 1.15, float(pts_t[:, 1].max()) * 1.15
    if pv is not None:
        for a in pv.angles[0].tolist():
            r = min(xmax / max(math.cos(a), 1e-12), ymax / max(math.sin(a), 1e-12))
            ax.plot([0, r * math.cos(a)], [0, r * math.sin(a)], ":", color="k", lw=0.7)
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, ymax)
    ax.set_xlabel("L_cls (base classes, eval mode)")
    ax.set_ylabel(f"L_{cfg.aux[0]} (Eq. {8 if cfg.aux[0] == 'rotation' else 9})")
    ax.set_title("objective space: fixed weights (squares), PSST (dots),\nexplored (x), preference vectors (dotted)",
                 fontsize=9)
    ax.legend(fontsize=7)
    main = [t for t in table if not t["model"].startswith("  ")]
    xs = range(len(main))
    for j, k in enumerate(cfg.shots):
        ax2.errorbar([x + 0.15 * j for x in xs], [100 * t[f"{k}-shot"] for t in main],
                     yerr=[100 * t[f"{k}-shot ci95"] for t in main], fmt="o", capsize=3, label=f"{k}-shot")
    ax2.set_xticks(list(xs))
    ax2.set_xticklabels([t["model"] for t in main], rotation=35, ha="right", fontsize=7)
    ax2.set_ylabel(f"{cfg.n_way}-way test accuracy (%)")
    ax2.legend(fontsize=7)
    return ctx.save_figure(fig, "psst_fewshot")


EXPERIMENT = register(
    Experiment(
        name="psst-fewshot-digits",
        description="PSST few-shot: cosine classifier, fixed-weight self-supervision, PSST regions and exploration",
        config=Config,
        full=full,
        run=run,
    )
)
