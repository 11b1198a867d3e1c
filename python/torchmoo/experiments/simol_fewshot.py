r"""``simol-fewshot-digits``: 5-way few-shot classification with MAML and prototypical networks, each with
and without SIMOL (Yu et al., ICLR 2023, section 5.2, Tables 2-4 in miniature).

Every task is an episode: ``n_way`` classes, ``K`` labelled support images per class and query images
whose loss after adaptation is the task's objective. Methods (same initialization and same episodes
for every method of one seed and shot count):

* ``maml``: Conv-4 + linear head adapted by MAML (Eq. 15; second order, ``inner_steps`` SGD steps),
  outer step = mean of the per-task meta-gradients (Adam);
* ``maml-simol``: the same outer step weighted by SIMOL's reweighting network (Algorithm 2);
* ``protonet``: Conv-4 embedding, prototypical network loss (Snell et al.);
* ``protonet-simol``: Algorithm 3;
* optional: ``maml-mgda``, ``maml-cagrad`` (the mini-batch baselines of Table 2).

SIMOL's reweighting network is "a CNN4 with a 3-layer FC" (5.2): a small Conv-4 embeds every image of
the episode, the embeddings are averaged per class (support and query together), the ``n_way`` class
means are concatenated and fed to :class:`~torchmoo.methods.ReweightingNetwork` (three linear layers,
square of the output; it starts at ``r = 1``, i.e. at plain MAML / ProtoNet). The ascent on its
parameters uses the per-task gradients already computed for the update (``theta_at="current"``,
Eq. 13, as Algorithm 2 writes it without a second pass), so SIMOL costs MAML's Jacobian plus the
reweighting network.

Batch normalization always uses the statistics of the images it is given (support set during
adaptation, query set for the loss), at meta-test time too, as MAML's reference implementation does.

Data (``data="digits"``, default): scikit-learn's 1,797 bundled 8 x 8 digits, intensities / 16, each
pixel a 2 x 2 block (16 x 16: Conv-4's four poolings leave 1 x 1), standardized with the meta-training
images' mean and standard deviation. With only 10 classes a novel-class split leaves one 5-class
combination on each side (every meta-training task the same five classes up to label order, every
meta-test task the same five other classes), which removes what the paper is about, tasks of different
difficulty. The default ``class_split="instances"`` therefore meta-trains and meta-tests on episodes
over all 10 classes (252 class combinations) drawn from *disjoint images*: each class's images are
split at random, ``test_fraction`` (half) for meta-testing; a meta-test image is never seen in
training, but its classes are. ``class_split="classes"`` is the standard novel-class protocol (digits
0-4 for meta-training, 5-9 for meta-testing). ``data="image-folder"`` reads any
``root/<class>/<images>`` tree (``image_folder=`` or ``$TORCHMOO_FEWSHOT_DIR``; e.g. MiniImageNet at 84
x 84) with :func:`torchmoo.zoo.data.image_folder.load_image_folder`; when ``root`` holds ``train/`` and
``test/`` sub-folders (the usual MiniImageNet export), they are the meta-training and meta-test classes,
otherwise the classes are split as ``class_split`` says (``"classes"``: the last ``test_fraction`` of
the sorted class names are the meta-test classes).

Reported per method and shot count (Tables 2-3): the accuracy over the meta-test episodes and the
worst-10% accuracy (mean over the 10% worst episodes), each with a 95% confidence interval (1.96
standard errors over episodes, pooled over seeds), the paper's MiniImageNet numbers beside them; and
the seconds per outer step of every method measured interleaved on one mini-batch (Table 4: MAML vs
SIMOL per epoch; the ratio SIMOL / MAML), with both ways of placing SIMOL's ascent (``current`` and
Algorithm 1's ``next``, which recomputes the Jacobian at ``w^{s+1}``). Each (method, shot count, seed)
is a unit, recorded when it finishes and checkpointed every :data:`CHECKPOINT_EVERY` outer steps, so an
interrupted run resumes with the same numbers.

What we got vs the paper. Default run (``torchmoo run simol-fewshot-digits``: digits, ``instances``
split, Conv-4-32 on 16 x 16, 100 outer steps of 4 episodes, 200 meta-test episodes of 15 queries per
class, seed 0; 2 min 24 s on two shared CPU cores). Accuracy in %, 95% intervals; the paper's
MiniImageNet numbers (Table 2) in the last column:

===============  ============  ============  ============  ============  ==============================
method           1-shot        worst-10%     5-shot        worst-10%     paper 1 / 5-shot (worst-10%)
===============  ============  ============  ============  ============  ==============================
MAML             92.9 +- 1.2   72.5 +- 3.7   98.0 +- 0.4   91.3 +- 2.6   49.2 / 62.1 (13.3 / 41.7)
MAML + SIMOL     93.0 +- 1.0   75.4 +- 2.9   97.7 +- 0.5   90.1 +- 2.7   50.6 / 65.8 (15.0 / 44.8)
ProtoNet         97.3 +- 0.5   89.1 +- 2.8   98.5 +- 0.2   95.5 +- 0.4   48.3 / 65.3 (13.1 / 45.0)
ProtoNet + SIMOL 97.1 +- 0.5   88.3 +- 2.4   98.6 +- 0.2   95.4 +- 0.4   50.5 / 66.7 (15.0 / 46.3)
===============  ============  ============  ============  ============  ==============================

Seconds per outer step, 5-shot, medians of 3 interleaved rounds (Table 4: MAML 2.0 s, SIMOL 2.3 s per
epoch, ratio 1.15): MAML 0.162, MAML + SIMOL 0.159 (ratio 0.98), MAML + SIMOL with Algorithm 1's second
Jacobian at ``w^{s+1}`` 0.321 (1.98); ProtoNet 0.068, ProtoNet + SIMOL 0.098 (1.45: the reweighting
Conv-4 is a larger share of ProtoNet's cheaper step). Batch MGDA / CAGrad (Table 4's days) are not
timed: they need every task's gradient, and episodes over image instances are practically unbounded.

Why the numbers differ. 8 x 8 digits are far easier than MiniImageNet (accuracies near the ceiling),
the meta-test classes are seen in meta-training (only the images are new), and meta-training sees 400
tasks instead of the paper's tens of thousands of mini-batches of 32, so the absolute numbers are not
comparable. SIMOL's gains of the paper (1-4 points) do not show: its only edge, the 1-shot MAML
worst-10% (75.4 against 72.5), is inside the confidence intervals, and the other differences are too.
With the selected ``lambda'`` = 100 the weights stay close to 1 and close to each other (the last
1-shot MAML mini-batch: 0.937-0.942), so SIMOL is MAML with a slightly smaller step; a stronger
reweighting hurt on the validation episodes (1-shot MAML + SIMOL: ``lambda'`` = 1: 78.3%, 10: 90.9%,
100: 93.7%, MAML 93.9%; the paper's reweighting learning rate 0.08 with Adam: 45.9% and 54.0% at
``lambda'`` = 10 and 100). With ``lambda'`` = 10 (a seed-0 run of 120 steps) the weights of a mini-batch
fell together (mean 0.43 after 30 steps, the last batch 0.66-0.72): a smaller step rather than a
separation of easy and hard tasks. SIMOL costs about what MAML costs when its ascent reuses the
update's per-task gradients (Eq. 13, Algorithm 2), as Table 4 says; Algorithm 1 as written (gradients
at ``w^{s+1}``) doubles the cost.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import torchmoo as tm
from torchmoo.experiments.runner import Experiment, RunContext, register, synchronize
from torchmoo.zoo.data.image_folder import resize_square

FEWSHOT_ENV = "TORCHMOO_FEWSHOT_DIR"
DATA_SETS = ("digits", "image-folder")
CLASS_SPLITS = ("instances", "classes")
METHODS = ("maml", "maml-simol", "protonet", "protonet-simol", "maml-mgda", "maml-cagrad")
TIMED = ("maml", "maml-simol", "maml-simol-next", "protonet", "protonet-simol")
#: Outer steps between the checkpoints of a training unit (an interrupted unit resumes from the last one).
CHECKPOINT_EVERY = 50

# Table 2 of the paper (MiniImageNet, 5-way): (overall, worst-10%) accuracy in % for 1-shot and 5-shot.
PAPER = {
    "maml": {1: (49.24, 13.33), 5: (62.13, 41.71)},
    "maml-mgda": {1: (46.08, 10.60), 5: (60.15, 39.67)},
    "maml-cagrad": {1: (44.67, 11.33), 5: (60.05, 40.01)},
    "maml-simol": {1: (50.62, 14.99), 5: (65.83, 44.81)},
    "protonet": {1: (48.25, 13.10), 5: (65.29, 45.03)},
    "protonet-simol": {1: (50.45, 15.00), 5: (66.67, 46.27)},
}
# Table 4: seconds per epoch, 5-way 5-shot MiniImageNet, MAML backbone (GPU).
PAPER_SECONDS = {"maml": 2.0, "maml-simol": 2.3}


@dataclass
class Config:
    """Small default (about 3 minutes on 2 busy CPU cores); :func:`full` is the paper's setting."""

    data: str = "digits"
    image_folder: Optional[str] = None  # root of an image-folder data set (else $TORCHMOO_FEWSHOT_DIR)
    class_split: str = "instances"
    test_fraction: float = 0.5  # "instances": share of each class's images; "classes": share of the classes
    image_size: int = 16
    channels: int = 32  # Conv-4-32 (MAML's MiniImageNet width)
    n_way: int = 5
    shots: List[int] = field(default_factory=lambda: [1, 5])
    n_query: int = 5  # query images per class in meta-training episodes
    test_query: int = 15  # query images per class in meta-test episodes
    methods: List[str] = field(default_factory=lambda: ["maml", "maml-simol", "protonet", "protonet-simol"])
    seeds: int = 1
    meta_steps: int = 100
    meta_batch: int = 4
    maml_inner_lr: float = 0.4  # MAML's Omniglot setting: one SGD step of 0.4, three at meta-test
    maml_inner_steps: int = 1
    maml_test_inner_steps: int = 3
    maml_lr: float = 3e-3  # Adam, 5.2
    protonet_lr: float = 1e-3  # Adam, 5.2
    # selected on validation episodes (seed 100, 1-shot, 100 steps) among lambda1 in {1, 10, 100} and the
    # reweighting learning rates {1e-3, 0.08 (the paper's for MAML)} / {1e-3, 8e-4 (the paper's for PN)}
    simol_lambda1: float = 100.0
    simol_lambda2: float = 1.0
    simol_lr: float = 1e-3  # Adam on the reweighting network, MAML backbone
    simol_protonet_lr: float = 8e-4  # Adam on the reweighting network, ProtoNet backbone (5.2)
    simol_theta_at: str = "current"
    reweight_channels: int = 16
    reweight_hidden: List[int] = field(default_factory=lambda: [32, 32])
    cagrad_c: float = 0.4
    test_episodes: int = 200
    eval_chunk: int = 10  # meta-test episodes per vectorized evaluation call (small chunks stay in cache)
    timing_steps: int = 3  # outer steps per timed round
    timing_repeats: int = 3  # interleaved rounds; the median is reported
    threads: int = 1  # per-task work is small: one thread avoids oversubscription on a shared CPU


def full() -> Config:
    """Section 5.2: meta-batch 32, 1,000 meta-test tasks, 3 seeds, the two MOO baselines; on the image folder
    of ``$TORCHMOO_FEWSHOT_DIR`` when it is set (84 x 84, novel classes, MAML's MiniImageNet inner loop:
    5 steps of 0.01, 10 at meta-test, 15 queries), else on the digits."""
    folder = os.environ.get(FEWSHOT_ENV, "").strip()
    methods = list(METHODS)
    if folder:
        return Config(data="image-folder", image_folder=folder, class_split="classes", image_size=84,
                      meta_steps=60_000, meta_batch=32, n_query=15, maml_inner_lr=0.01, maml_inner_steps=5,
                      maml_test_inner_steps=10, methods=methods, seeds=3, test_episodes=1000, threads=0)
    return Config(meta_steps=3000, meta_batch=32, methods=methods, seeds=3, test_episodes=1000, threads=0)


# ---- data ---------------------------------------------------------------------------------------------------


@dataclass
class EpisodeData:
    """Meta-training and meta-test images (standardized) and labels, class names per split."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    train_classes: List[str]
    test_classes: List[str]

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])


def _split(x: Tensor, y: Tensor, names: List[str], cfg: Config, seed: int) -> Tuple[Tensor, ...]:
    """(train_x, train_y, test_x, test_y, train names, test names) of one labelled set."""
    C = len(names)
    if cfg.class_split == "instances":
        g = torch.Generator().manual_seed(7919 * seed + 11)
        tr, te = [], []
        for c in range(C):
            members = torch.nonzero(y == c).flatten()
            members = members[torch.randperm(members.numel(), generator=g)]
            n_test = int(round(cfg.test_fraction * members.numel()))
            te.append(members[:n_test])
            tr.append(members[n_test:])
        tr_i, te_i = torch.cat(tr), torch.cat(te)
        return x[tr_i], y[tr_i], x[te_i], y[te_i], list(names), list(names)
    n_test = max(1, int(round(cfg.test_fraction * C)))
    test_classes = list(range(C - n_test, C))
    train_mask = y < C - n_test
    return (x[train_mask], y[train_mask], x[~train_mask], y[~train_mask] - (C - n_test),
            names[: C - n_test], [names[c] for c in test_classes])


def load_data(cfg: Config, seed: int, device: torch.device) -> EpisodeData:
    """The meta-training / meta-test split of the module docstring, standardized, on ``device``."""
    if cfg.data == "digits":
        from torchmoo.zoo.data.digits import load_sklearn_digits

        digits, labels = load_sklearn_digits()
        x = resize_square((digits / 16.0).unsqueeze(1), cfg.image_size)
        parts = _split(x, labels, [str(d) for d in range(10)], cfg, seed)
    else:
        from torchmoo.zoo.data.image_folder import load_image_folder

        root = cfg.image_folder or os.environ.get(FEWSHOT_ENV, "").strip()
        if not root:
            raise ValueError(f"data='image-folder' needs image_folder= in the config or ${FEWSHOT_ENV}.")
        root_path = os.path.expanduser(root)
        if os.path.isdir(os.path.join(root_path, "train")) and os.path.isdir(os.path.join(root_path, "test")):
            tx, ty, tn = load_image_folder(os.path.join(root_path, "train"), cfg.image_size)
            vx, vy, vn = load_image_folder(os.path.join(root_path, "test"), cfg.image_size)
            parts = (tx, ty, vx, vy, tn, vn)
        else:
            x, labels, names = load_image_folder(root_path, cfg.image_size)
            parts = _split(x, labels, names, cfg, seed)
    train_x, train_y, test_x, test_y, train_names, test_names = parts
    for split, names in (("meta-training", train_names), ("meta-test", test_names)):
        if len(names) < cfg.n_way:
            raise ValueError(f"{cfg.n_way}-way episodes need {cfg.n_way} {split} classes; the split has {len(names)}.")
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return EpisodeData(((train_x - mean) / std).to(device), train_y.to(device), ((test_x - mean) / std).to(device),
                       test_y.to(device), list(train_names), list(test_names))


def _episodes(x: Tensor, sampler: tm.zoo.data.EpisodeSampler, ids: Sequence[int]) -> Tuple[Tensor, ...]:
    """``(xs (E, N K, C, H, W), ys (E, N K), xq (E, N Q, C, H, W), yq (E, N Q))`` of episodes ``ids``."""
    parts = [tm.zoo.data.split_episode(x[torch.tensor(sampler.episode(e))], sampler.n_way, sampler.k_shot,
                                       sampler.n_query) for e in ids]
    return tuple(torch.stack(t) for t in zip(*parts))


# ---- models -------------------------------------------------------------------------------------------------


class EpisodeReweighter(nn.Module):
    """SIMOL's reweighting network for episodes: Conv-4 -> per-class mean embedding -> 3-layer FC -> ``r >= 0``.

    Input ``(B, n_way, M, C, H, W)``: the ``M`` images (support and query) of each class of each episode,
    classes in label order; output ``(B,)`` weights, exactly 1 at initialization.
    """

    def __init__(self, in_channels: int, n_way: int, image_size: int, channels: int = 16,
                 hidden: Sequence[int] = (32, 32)) -> None:
        super().__init__()
        self.encoder = tm.zoo.models.Conv4(in_channels, (channels,) * 4)
        side = self.encoder.output_side(image_size)
        self.head = tm.methods.ReweightingNetwork(n_way * channels * side * side, tuple(hidden))

    def forward(self, episodes: Tensor) -> Tensor:
        if episodes.dim() != 6:
            raise ValueError(f"episodes must be (B, n_way, M, C, H, W), got {tuple(episodes.shape)}.")
        B, N, M = episodes.shape[:3]
        z = self.encoder(episodes.flatten(0, 2)).reshape(B, N, M, -1).mean(2)
        return self.head(z.flatten(1))


def episode_features(xs: Tensor, xq: Tensor, n_way: int) -> Tensor:
    """``(B, n_way, K + Q, C, H, W)``: support and query images grouped by class (the layout of
    :func:`~torchmoo.zoo.data.split_episode` is class-major)."""
    B = xs.shape[0]
    return torch.cat([xs.reshape(B, n_way, -1, *xs.shape[2:]), xq.reshape(B, n_way, -1, *xq.shape[2:])], 2)


def _backbone(cfg: Config, data: EpisodeData) -> nn.Module:
    net = tm.zoo.models.Conv4(data.in_channels, (cfg.channels,) * 4)
    if net.output_side(cfg.image_size) < 1:
        raise ValueError(f"image_size={cfg.image_size} is too small for Conv-4's four poolings (>= 16).")
    return net


def _learner(method: str, cfg: Config, data: EpisodeData, seed: int, device: torch.device) -> tm.methods.MetaLearner:
    torch.manual_seed(seed)  # every method of a seed starts from the same backbone weights
    backbone = _backbone(cfg, data)
    if method.startswith("maml"):
        side = backbone.output_side(cfg.image_size)
        model = nn.Sequential(backbone, nn.Linear(cfg.channels * side * side, cfg.n_way))
        # batch statistics everywhere (no running buffers: vmap over tasks cannot update them)
        torch.func.replace_all_batch_norm_modules_(model)
        base = tm.methods.MAML(model.to(device), F.cross_entropy, cfg.maml_inner_lr, cfg.maml_inner_steps)
        lr = cfg.maml_lr
    else:
        torch.func.replace_all_batch_norm_modules_(backbone)
        base = tm.methods.ProtoNet(backbone.to(device), cfg.n_way)
        lr = cfg.protonet_lr
    opt = torch.optim.Adam(base.model.parameters(), lr=lr)
    if method.endswith("simol") or method.endswith("simol-next"):
        torch.manual_seed(seed + 7919)
        net = EpisodeReweighter(data.in_channels, cfg.n_way, cfg.image_size, cfg.reweight_channels,
                                cfg.reweight_hidden).to(device)
        simol = tm.methods.SIMOL(net, cfg.simol_lambda1, cfg.simol_lambda2)
        theta_at = "next" if method.endswith("next") else cfg.simol_theta_at
        lr_theta = cfg.simol_lr if method.startswith("maml") else cfg.simol_protonet_lr
        return tm.methods.MetaLearner(base, opt, simol, torch.optim.Adam(net.parameters(), lr=lr_theta), theta_at)
    if method == "maml-mgda":
        return tm.methods.MetaLearner(base, opt, tm.methods.MGDA())
    if method == "maml-cagrad":
        return tm.methods.MetaLearner(base, opt, tm.methods.CAGrad(cfg.cagrad_c))
    return tm.methods.MetaLearner(base, opt)


def _step(learner: tm.methods.MetaLearner, batch: Tuple[Tensor, ...], n_way: int) -> Dict[str, float]:
    xs, ys, xq, yq = batch
    feats = episode_features(xs, xq, n_way) if isinstance(learner.method, tm.methods.SIMOL) else None
    return learner.step(xs, ys, xq, yq, task_features=feats)


# ---- evaluation ---------------------------------------------------------------------------------------------


def episode_accuracies(learner: tm.methods.MetaLearner, episodes: Tuple[Tensor, ...], cfg: Config) -> Tensor:
    """``(E,)`` query accuracy (in [0, 1]) of every episode: after ``maml_test_inner_steps`` adaptation
    steps (MAML) or by the nearest prototype (ProtoNet), vectorized over chunks of episodes."""
    base = learner.maml
    params = {k: v.detach() for k, v in base.params().items()}
    if isinstance(base, tm.methods.MAML):
        adapter = tm.methods.MAML(base.model, base.loss_fn, base.inner_lr, cfg.maml_test_inner_steps, first_order=True)

        def accuracy(p, xs, ys, xq, yq):
            logits = torch.func.functional_call(base.model, adapter.adapt(p, xs, ys), (xq,))
            return (logits.argmax(-1) == yq).to(xs.dtype).mean()
    else:
        n_way = base.n_way

        def accuracy(p, xs, ys, xq, yq):
            emb_s = torch.func.functional_call(base.model, p, (xs,))
            emb_q = torch.func.functional_call(base.model, p, (xq,))
            onehot = (ys[:, None] == torch.arange(n_way, device=ys.device)).to(emb_s.dtype)
            protos = (onehot.T @ emb_s) / onehot.sum(0).clamp_min(1.0)[:, None]
            d = (emb_q[:, None, :] - protos[None]).square().sum(-1)
            return (d.argmin(-1) == yq).to(xs.dtype).mean()

    out = []
    E = episodes[0].shape[0]
    for s in range(0, E, cfg.eval_chunk):
        part = tuple(t[s : s + cfg.eval_chunk] for t in episodes)
        out.append(torch.func.vmap(accuracy, in_dims=(None, 0, 0, 0, 0))(params, *part).detach())
    return torch.cat(out)


# ---- units --------------------------------------------------------------------------------------------------


def _samplers(cfg: Config, data: EpisodeData, shots: int, seed: int):
    train = tm.zoo.data.EpisodeSampler(data.train_y.cpu(), cfg.n_way, shots, cfg.n_query,
                                       num_episodes=cfg.meta_steps * cfg.meta_batch, seed=2 * seed)
    test = tm.zoo.data.EpisodeSampler(data.test_y.cpu(), cfg.n_way, shots, cfg.test_query,
                                      num_episodes=cfg.test_episodes, seed=2 * seed + 1)
    return train, test


def _train_unit(method: str, shots: int, seed: int, cfg: Config, ctx: RunContext, data: EpisodeData,
                test_episodes: Tuple[Tensor, ...]) -> Dict[str, Any]:
    unit = f"{method} {shots}-shot seed {seed}"
    learner = _learner(method, cfg, data, seed, ctx.device)
    train_sampler, _ = _samplers(cfg, data, shots, seed)
    losses: List[float] = []
    weights: List[float] = []
    start, seconds = 0, 0.0
    state = ctx.load_state(unit)  # an interrupted unit continues from its last checkpoint
    if state is not None:
        learner.load_state_dict(state["learner"])
        start, losses, weights, seconds = state["step"], state["losses"], state["weights"], state["seconds"]
    t0 = time.perf_counter()
    for step in ctx.progress(range(start, cfg.meta_steps), desc=unit, total=cfg.meta_steps, initial=start):
        batch = _episodes(data.train_x, train_sampler, range(step * cfg.meta_batch, (step + 1) * cfg.meta_batch))
        out = _step(learner, batch, cfg.n_way)
        losses.append(out["loss"])
        if "mean_weight" in out:
            weights.append(out["mean_weight"])
        if (step + 1) % CHECKPOINT_EVERY == 0 and step + 1 < cfg.meta_steps:
            ctx.save_state(unit, {"learner": learner.state_dict(), "step": step + 1, "losses": losses,
                                  "weights": weights, "seconds": seconds + time.perf_counter() - t0})
    seconds += time.perf_counter() - t0
    acc = episode_accuracies(learner, test_episodes, cfg)
    w = 10  # training-loss curve: means over windows of 10 steps
    result = {
        "method": method, "shots": shots, "seed": seed,
        "test_accuracies": acc.tolist(),
        "train_loss": [sum(losses[i : i + w]) / len(losses[i : i + w]) for i in range(0, len(losses), w)],
        "seconds_per_step": seconds / cfg.meta_steps,
    }
    if weights:
        result["mean_weight"] = [sum(weights[i : i + w]) / len(weights[i : i + w]) for i in range(0, len(weights), w)]
        last = learner.method._r.detach()
        result["last_weights"] = last.tolist()
    ctx.record(unit, result, seconds=seconds, evaluations=cfg.meta_steps * cfg.meta_batch)
    return result


def _timing_unit(shots: int, cfg: Config, ctx: RunContext, data: EpisodeData) -> Dict[str, Any]:
    """Seconds per outer step of each variant, interleaved rounds on one mini-batch (medians)."""
    unit = f"timing {shots}-shot"
    variants = [v for v in TIMED if (v.split("-next")[0] in cfg.methods)]
    train_sampler, _ = _samplers(cfg, data, shots, ctx.seed)
    batch = _episodes(data.train_x, train_sampler, range(cfg.meta_batch))
    learners = {v: _learner(v, cfg, data, ctx.seed, ctx.device) for v in variants}
    for v in variants:  # warm-up (allocator, vmap tracing caches)
        _step(learners[v], batch, cfg.n_way)
    times: Dict[str, List[float]] = {v: [] for v in variants}
    synchronize(ctx.device)  # each timed block below ends with one too
    t0 = time.perf_counter()
    for _ in ctx.progress(range(cfg.timing_repeats), desc=unit, total=cfg.timing_repeats):
        for v in variants:
            t = time.perf_counter()
            for _ in range(cfg.timing_steps):
                _step(learners[v], batch, cfg.n_way)
            synchronize(ctx.device)  # GPU steps are asynchronous: time them to their end
            times[v].append((time.perf_counter() - t) / cfg.timing_steps)
    result = {"shots": shots, "seconds_per_step": {v: statistics.median(ts) for v, ts in times.items()},
              "rounds": times}
    ctx.record(unit, result, seconds=time.perf_counter() - t0)
    return result


def _ci(x: Tensor) -> float:
    return float(1.96 * x.std() / math.sqrt(x.numel())) if x.numel() > 1 else 0.0


def _check(cfg: Config) -> None:
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad or not cfg.methods:
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {cfg.methods}.")
    if cfg.data not in DATA_SETS:
        raise ValueError(f"data must be one of {DATA_SETS}, got {cfg.data!r}.")
    if cfg.class_split not in CLASS_SPLITS:
        raise ValueError(f"class_split must be one of {CLASS_SPLITS}, got {cfg.class_split!r}.")
    if not 0.0 < cfg.test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {cfg.test_fraction}.")
    if not cfg.shots or any(not isinstance(k, int) or k < 1 for k in cfg.shots):
        raise ValueError(f"shots must be positive ints, got {cfg.shots}.")
    if cfg.seeds < 1 or cfg.meta_steps < 1 or cfg.meta_batch < 1 or cfg.test_episodes < 10 or cfg.n_way < 2:
        raise ValueError("seeds, meta_steps and meta_batch must be >= 1, n_way >= 2 and test_episodes >= 10.")
    # checked here, not after a unit has trained: the evaluation and the timing divide by these
    if cfg.eval_chunk < 1 or cfg.timing_steps < 1 or cfg.timing_repeats < 0:
        raise ValueError("eval_chunk and timing_steps must be >= 1 and timing_repeats >= 0.")
    if cfg.simol_theta_at not in ("next", "current"):
        raise ValueError(f"simol_theta_at must be 'next' or 'current', got {cfg.simol_theta_at!r}.")


def run(cfg: Config, ctx: RunContext) -> Dict[str, Any]:
    _check(cfg)
    threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        results: Dict[Tuple[str, int], List[Dict[str, Any]]] = {}
        timings: Dict[int, Dict[str, Any]] = {}
        for s in range(cfg.seeds):
            seed = ctx.seed + s
            data = load_data(cfg, seed, ctx.device)
            for shots in cfg.shots:
                _, test_sampler = _samplers(cfg, data, shots, seed)
                test_episodes: Optional[Tuple[Tensor, ...]] = None
                for m in cfg.methods:
                    unit = f"{m} {shots}-shot seed {seed}"
                    if ctx.done(unit):
                        r = ctx.result(unit)
                    else:
                        if test_episodes is None:
                            test_episodes = _episodes(data.test_x, test_sampler, range(cfg.test_episodes))
                        r = _train_unit(m, shots, seed, cfg, ctx, data, test_episodes)
                    results.setdefault((m, shots), []).append(r)
                if s == 0 and cfg.timing_repeats > 0 and shots == max(cfg.shots):
                    unit = f"timing {shots}-shot"
                    timings[shots] = ctx.result(unit) if ctx.done(unit) else _timing_unit(shots, cfg, ctx, data)
    finally:
        torch.set_num_threads(threads)
    return _summary(cfg, results, timings, ctx)


def _summary(cfg: Config, results, timings, ctx: RunContext) -> Dict[str, Any]:
    table = []
    for (m, shots), runs in results.items():
        per_seed = [100.0 * torch.tensor(r["test_accuracies"], dtype=torch.float64) for r in runs]
        pooled = torch.cat(per_seed)
        worst = torch.cat([x.sort().values[: max(1, math.ceil(round(0.1 * x.numel(), 9)))] for x in per_seed])
        paper = PAPER[m].get(shots)
        table.append({
            "method": m,
            "shots": shots,
            "accuracy %": float(pooled.mean()),
            "ci95": _ci(pooled),
            "worst-10% %": sum(float(tm.metrics.worst_fraction_mean(x, 0.1, largest=False)) for x in per_seed)
            / len(per_seed),
            "worst-10% ci95": _ci(worst),
            "paper accuracy %": paper[0] if paper else None,
            "paper worst-10% %": paper[1] if paper else None,
            "seconds/step": sum(r["seconds_per_step"] for r in runs) / len(runs),
        })
    summary: Dict[str, Any] = {"table": table, "chance %": 100.0 / cfg.n_way}
    for shots, t in timings.items():
        sec = t["seconds_per_step"]
        for v, s in sec.items():
            summary[f"timing {shots}-shot {v} s/step"] = s
        if "maml" in sec and "maml-simol" in sec:
            summary[f"timing {shots}-shot SIMOL/MAML"] = sec["maml-simol"] / sec["maml"]
            summary["paper SIMOL/MAML (Table 4)"] = PAPER_SECONDS["maml-simol"] / PAPER_SECONDS["maml"]
        if "maml" in sec and "maml-simol-next" in sec:
            summary[f"timing {shots}-shot SIMOL(next)/MAML"] = sec["maml-simol-next"] / sec["maml"]
        if "protonet" in sec and "protonet-simol" in sec:
            summary[f"timing {shots}-shot SIMOL+PN/PN"] = sec["protonet-simol"] / sec["protonet"]
    _plot(cfg, results, ctx)
    return summary


def _plot(cfg: Config, results, ctx: RunContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = sorted({k for _, k in results})
    fig, axes = plt.subplots(2, len(shots), figsize=(5 * len(shots), 7.5), squeeze=False, constrained_layout=True)
    for col, k in enumerate(shots):
        ax_l, ax_a = axes[0][col], axes[1][col]
        for (m, kk), runs in results.items():
            if kk != k:
                continue
            curve = runs[0]["train_loss"]
            ax_l.plot([10 * (i + 1) for i in range(len(curve))], curve, label=m)
            acc = torch.cat([100.0 * torch.tensor(r["test_accuracies"]) for r in runs]).sort().values
            ax_a.plot(torch.linspace(0, 100, acc.numel()), acc, label=m)
        ax_l.set_xlabel("meta-training step")
        ax_l.set_ylabel("mean task loss (query, after adaptation)")
        ax_l.set_title(f"{cfg.n_way}-way {k}-shot")
        ax_l.legend(fontsize=7)
        ax_a.axvline(10, color="grey", lw=0.8, ls=":")
        ax_a.set_xlabel("meta-test episodes, sorted (%)")
        ax_a.set_ylabel("episode accuracy (%)")
        ax_a.set_title("sorted meta-test accuracies (left of the line: worst 10%)")
        ax_a.legend(fontsize=7)
    ctx.save_figure(fig, "fewshot")


EXPERIMENT = register(
    Experiment(
        name="simol-fewshot-digits",
        description="5-way 1/5-shot classification (digits or an image folder): MAML, ProtoNet, each with SIMOL",
        config=Config,
        full=full,
        run=run,
    )
)
