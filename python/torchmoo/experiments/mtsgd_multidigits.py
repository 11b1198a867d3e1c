"""``mtsgd-multidigits``: ensembles of multi-task LeNets by MT-SGD (Phan et al. 2022, supplement 2.2.1).

``M`` two-task LeNets (:class:`~torchmoo.zoo.models.MultiLeNet`, 22,350 parameters on 28 x 28 inputs)
trained on MultiDigits by default, or on MultiMNIST, MultiFashion or MultiFashion+MNIST
(``data=...`` with ``mnist_root`` / ``fashion_root`` or ``$TORCHMOO_MNIST_DIR`` /
``$TORCHMOO_FASHION_MNIST_DIR``; ``--full`` switches to MultiMNIST when ``$TORCHMOO_MNIST_DIR`` is set).
Methods (:mod:`torchmoo.experiments.mtsgd_ensemble`): MT-SGD and MOO-SVGD move the ``M`` networks as
particles towards the targets ``p_i ~ exp(-loss_i)``; MGDA and linear scalarization (equal weights)
train ``M`` independent networks from the same ``M`` initializations. Every method predicts with the
average of its networks' softmax outputs, as the authors' code does.

Reported per method on the test split, for each task (upper-left and lower-right item): ensemble
accuracy, Brier score and expected calibration error (10 bins; :func:`torchmoo.metrics.brier_score`,
:func:`torchmoo.metrics.expected_calibration_error`, the supplement's definitions), and the mean
accuracy of the single networks. The sweep (supplement figures 2-3) trains MT-SGD with
``M in sweep_particles`` networks for ``sweep_epochs`` epochs and reports the average ensemble accuracy
and ECE against ``M``. Figure ``multidigits.png``: ensemble accuracy per epoch and the sweep.
Each method and each sweep point is a unit (resumable; checkpoints after every epoch).

What we got vs the paper
------------------------

Paper (supplement 2.2.1; the main paper's accuracy, Brier and ECE tables are not in the supplement):
LeNets on 36 x 36 MultiMNIST / MultiFashion / MultiFashion+MNIST, 100 epochs of SGD, batch 256,
``M = 5``. Figures 2-3: going from 3 to 5 particles raises the average accuracy on all three data sets,
above the two baselines shown, and lowers the ECE on MultiMNIST; 7, 9 and 15 particles do not help
further. Figure 4: per epoch, MT-SGD costs more than linear scalarization and MGDA and less than
MOO-SVGD and Pareto MTL.

Measured here (``torchmoo run mtsgd-multidigits``, seed 0, small default: MultiDigits, 1,438 training
and 359 test pairs, ``M = 5``, 7 epochs of Adam (lr 5e-3, batch 64), 1 intra-op thread; the sweep 3
epochs; 1 min 41 s on a shared 2-core machine). Test set, ensemble of the ``M`` networks:

==========  ===============  ===============  ===============  ===============  ==============
method      accuracy 1 / 2   mean accuracy    Brier 1 / 2      ECE 1 / 2        single network
==========  ===============  ===============  ===============  ===============  ==============
MT-SGD      0.721 / 0.735    0.728            0.438 / 0.366    0.123 / 0.053    0.641
MOO-SVGD    0.699 / 0.710    0.705            0.432 / 0.391    0.135 / 0.046    0.636
MGDA        0.699 / 0.730    0.714            0.433 / 0.377    0.066 / 0.052    0.659
linear      0.657 / 0.755    0.706            0.456 / 0.353    0.058 / 0.067    0.657
==========  ===============  ===============  ===============  ===============  ==============

(``single network``: the mean accuracy of the networks alone; MT-SGD's last ``w* = (0.55, 0.45)``.)
Training time of the 7 epochs (the steps alone, the per-epoch evaluation excluded): MT-SGD 10.4 s,
MOO-SVGD 11.0 s, MGDA 11.8 s, linear 7.2 s; the accuracies, Brier scores and ECEs above are reproduced
exactly by a rerun.
Sweep, MT-SGD after 3 epochs, ``M`` = 3 / 5 / 7 / 9 / 15: mean ensemble accuracy 0.589 / 0.596 / 0.632 /
0.609 / 0.627, mean ECE 0.085 / 0.122 / 0.160 / 0.150 / 0.164.

MT-SGD has the best mean ensemble accuracy (0.728 against 0.705-0.714), as in the paper, but its ECE is
higher than the independent networks', and the sweep's accuracy rises from 3 to 7 particles with ECE
growing with ``M`` (the paper: both improve from 3 to 5). Before ``U`` was returned in float64, its
float32 rounding decided MT-SGD's weights (the trace constant is about 1e4 times the rest of ``U``) and
MT-SGD ended at 0.685 / 0.727. The particle methods' networks are individually weaker (0.636-0.641
against 0.657-0.659), likely because each network's update mixes in the kernel-weighted gradients of
the other networks.

Why it differs: the data set is scikit-learn's 1,797 8 x 8 digits composed into 1,438 training pairs
(80x fewer images than the 120,000 of the authors' MultiMNIST files, and 28 x 28 rather than 36 x 36
inputs), trained 7
epochs with Adam instead of 100 epochs of SGD, so every ensemble is far from converged and one seed
cannot separate methods 0.01 apart. This MT-SGD is the library's: every network's whole flattened
parameter vector is one particle in an RBF kernel with the median bandwidth, and the one simplex QP
weights the two tasks for all parameters. The authors' code splits each network instead: heads move by
one SVGD per task with a kernel on the outputs, the trunk by the MT-SGD combination with a kernel on the
features, with hand-tuned repulsion factors and one warm-up epoch of linear scalarization. MOO-SVGD
is likewise the library's (weight-space kernel, one MGDA QP per network).
``--full`` runs 100 epochs of SGD (lr 1e-3, momentum 0.9, batch 256) on MultiMNIST when
``$TORCHMOO_MNIST_DIR`` is set (else 20,000 MultiDigits pairs), with the sweep at 100 epochs; it was not
run here. The supplement names SGD, batch 256 and 100 epochs but not the learning rate or momentum
(ours are a choice), and :class:`~torchmoo.zoo.data.MultiMNIST` composes 60,000 28 x 28 training pairs
(Ma et al.'s construction), not the authors' 36 x 36 files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import torchmoo as tm
from torchmoo.experiments.mtsgd_ensemble import (METHODS, check_methods, check_optimizer, intra_op_threads,
                                                   make_networks, train_ensemble)
from torchmoo.experiments.runner import Experiment, RunContext, register

DATA_SETS = ("multidigits", "multimnist", "multifashion", "multifashion+mnist")
NUM_TASKS = 2


@dataclass
class Config:
    """Small default (about two and a half minutes on 2 CPU cores); :func:`full` is the paper's setting."""

    data: str = "multidigits"
    mnist_root: Optional[str] = None  # MNIST IDX folder (else $TORCHMOO_MNIST_DIR)
    fashion_root: Optional[str] = None  # Fashion-MNIST IDX folder (else $TORCHMOO_FASHION_MNIST_DIR)
    train_images: Optional[int] = None  # MultiDigits: number of pairs; MNIST family: the first N (None: all)
    test_images: Optional[int] = None
    particles: int = 5  # M
    methods: List[str] = field(default_factory=lambda: list(METHODS))
    epochs: int = 7
    batch_size: int = 64
    optimizer: str = "adam"  # "adam" or "sgd" (momentum 0.9; the paper's optimizer, its momentum unstated)
    lr: float = 5e-3
    ece_bins: int = 10
    sweep_particles: List[int] = field(default_factory=lambda: [3, 5, 7, 9, 15])  # MT-SGD only; [] skips
    sweep_epochs: int = 3
    threads: Optional[int] = 1  # intra-op threads during the run (None: leave torch's setting)


def full() -> Config:
    """Supplement 2.2.1: 100 epochs of SGD, batch 256, ``M = 5``, the sweep over ``M`` at the same length.
    MultiMNIST when ``$TORCHMOO_MNIST_DIR`` is set, else 20,000 MultiDigits pairs."""
    data = "multimnist" if os.environ.get("TORCHMOO_MNIST_DIR") else "multidigits"
    many = data == "multidigits"
    return Config(data=data, train_images=20000 if many else None, test_images=4000 if many else None,
                  epochs=100, batch_size=256, optimizer="sgd", lr=1e-3, sweep_epochs=100)


def _load(cfg: Config, seed: int, device: torch.device) -> Tuple[Tuple[Tensor, Tensor], Tuple[Tensor, Tensor]]:
    d = tm.zoo.data
    if cfg.data == "multidigits":
        sets = [d.MultiDigits(s, seed=seed, num_images=n) for s, n in (("train", cfg.train_images),
                                                                        ("test", cfg.test_images))]
        return tuple(tuple(t.to(device) for t in ds.tensors()) for ds in sets)
    if cfg.data == "multimnist":
        sets = [d.MultiMNIST(cfg.mnist_root, split=s, seed=seed) for s in ("train", "test")]
    elif cfg.data == "multifashion":
        sets = [d.MultiFashion(cfg.fashion_root, split=s, seed=seed) for s in ("train", "test")]
    else:
        sets = [d.MultiFashionMNIST(cfg.mnist_root, cfg.fashion_root, split=s, seed=seed) for s in ("train", "test")]
    out = []
    for ds, n in zip(sets, (cfg.train_images, cfg.test_images)):
        x, y = ds.tensors()
        out.append((x[:n].to(device), y[:n].to(device)) if n is not None else (x.to(device), y.to(device)))
    return tuple(out)


def _task_losses(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return torch.stack([F.cross_entropy(out, y[:, i]) for i, out in enumerate(net(x))])


@torch.no_grad()
def ensemble_metrics(nets: List[nn.Module], x: Tensor, y: Tensor, bins: int = 10) -> Dict[str, List[float]]:
    """Per task: accuracy, Brier score and ECE of the averaged softmax of ``nets``, and the mean accuracy
    of the single networks. Evaluated in chunks of 2,000 images."""
    probs = []  # per network: (K, N, C)
    for net in nets:
        net.eval()
        chunks = [torch.stack([F.softmax(o.double(), -1) for o in net(x[k:k + 2000])])
                  for k in range(0, x.shape[0], 2000)]
        net.train()
        probs.append(torch.cat(chunks, 1))
    P = torch.stack(probs)  # (M, K, N, C)
    ens = P.mean(0)
    labels = [y[:, i] for i in range(ens.shape[0])]
    return {
        "accuracy": [float((ens[i].argmax(-1) == t).double().mean()) for i, t in enumerate(labels)],
        "brier": [float(tm.metrics.brier_score(ens[i], t)) for i, t in enumerate(labels)],
        "ece": [float(tm.metrics.expected_calibration_error(ens[i], t, bins)) for i, t in enumerate(labels)],
        "single_accuracy": [float((P[:, i].argmax(-1) == t).double().mean()) for i, t in enumerate(labels)],
    }


def _train(unit: str, method: str, M: int, epochs: int, cfg: Config, ctx: RunContext, data) -> Dict[str, Any]:
    (x, y), (xt, yt) = data
    nets = make_networks(lambda: tm.zoo.models.MultiLeNet(num_tasks=NUM_TASKS, image_size=x.shape[-1]), M,
                         ctx.seed, ctx.device)
    out = train_ensemble(unit, method, nets, _task_losses, x, y, lambda ns: ensemble_metrics(ns, xt, yt, cfg.ece_bins),
                         ctx, epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, optimizer=cfg.optimizer,
                         num_tasks=NUM_TASKS)
    result = {"method": method, "particles": M, **out["history"][-1], "history": out["history"],
              "steps": out["steps"], "weights_last_step": out["weights_last_step"]}
    result.pop("epoch")
    ctx.record(unit, result, seconds=out["seconds"], evaluations=out["steps"] * M * NUM_TASKS)
    return result


def run(cfg: Config, ctx: RunContext) -> Dict[str, Any]:
    if cfg.data not in DATA_SETS:
        raise ValueError(f"data must be one of {DATA_SETS}, got {cfg.data!r}.")
    check_methods(cfg.methods)
    check_optimizer(cfg.optimizer)
    if cfg.particles < 1 or cfg.epochs < 1 or cfg.batch_size < 1 or cfg.sweep_epochs < 1 or cfg.ece_bins < 1:
        raise ValueError("particles, epochs, batch_size, sweep_epochs and ece_bins must be positive.")
    if any(m < 1 for m in cfg.sweep_particles):
        raise ValueError(f"sweep_particles must hold positive ensemble sizes, got {cfg.sweep_particles}.")
    if not cfg.lr > 0:
        raise ValueError(f"lr must be positive, got {cfg.lr}.")
    if any(n is not None and n < 1 for n in (cfg.train_images, cfg.test_images)):
        raise ValueError(f"train_images and test_images must be None or >= 1, got {cfg.train_images} and "
                         f"{cfg.test_images}.")
    data = _load(cfg, ctx.seed, ctx.device)
    results, sweep = {}, {}
    with intra_op_threads(cfg.threads):
        for method in cfg.methods:
            results[method] = ctx.result(method) if ctx.done(method) else _train(method, method, cfg.particles,
                                                                                   cfg.epochs, cfg, ctx, data)
        for M in cfg.sweep_particles:
            unit = f"sweep mt-sgd M={M}"
            sweep[M] = ctx.result(unit) if ctx.done(unit) else _train(unit, "mt-sgd", M, cfg.sweep_epochs, cfg, ctx,
                                                                      data)
    _plot(results, sweep, ctx)
    table = [
        {
            "method": m,
            "acc task 1": r["accuracy"][0],
            "acc task 2": r["accuracy"][1],
            "mean acc": sum(r["accuracy"]) / NUM_TASKS,
            "Brier 1": r["brier"][0],
            "Brier 2": r["brier"][1],
            "ECE 1": r["ece"][0],
            "ECE 2": r["ece"][1],
            "single-net acc": sum(r["single_accuracy"]) / NUM_TASKS,
            "seconds": ctx.results["timings"][m],
        }
        for m, r in results.items()
    ]
    sweep_table = [
        {"M": M, "acc task 1": r["accuracy"][0], "acc task 2": r["accuracy"][1],
         "mean acc": sum(r["accuracy"]) / NUM_TASKS, "mean ECE": sum(r["ece"]) / NUM_TASKS,
         "mean Brier": sum(r["brier"]) / NUM_TASKS, "seconds": ctx.results["timings"][f"sweep mt-sgd M={M}"]}
        for M, r in sweep.items()
    ]
    summary: Dict[str, Any] = {"table": table, "sweep": sweep_table, "data": cfg.data,
                               "train images": int(data[0][0].shape[0]), "test images": int(data[1][0].shape[0])}
    if "mt-sgd" in results:
        summary["mt-sgd task weights, last step"] = results["mt-sgd"]["weights_last_step"]
    return summary


def _plot(results, sweep, ctx: RunContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_curve, ax_sweep) = plt.subplots(1, 2, figsize=(11, 4))
    for m, r in results.items():
        hist = r["history"]
        ax_curve.plot([h["epoch"] for h in hist], [sum(h["accuracy"]) / NUM_TASKS for h in hist], marker=".", label=m)
    ax_curve.set_xlabel("epoch")
    ax_curve.set_ylabel("ensemble test accuracy (mean of the two tasks)")
    ax_curve.set_title("ensembles of M networks")
    ax_curve.legend(fontsize=8)
    if sweep:
        Ms = sorted(sweep)
        ax_sweep.plot(Ms, [sum(sweep[M]["accuracy"]) / NUM_TASKS for M in Ms], marker="o", label="accuracy")
        ax_ece = ax_sweep.twinx()
        ax_ece.plot(Ms, [sum(sweep[M]["ece"]) / NUM_TASKS for M in Ms], marker="s", color="tab:red", label="ECE")
        ax_ece.set_ylabel("mean ECE", color="tab:red")
        ax_sweep.set_xticks(Ms)
    ax_sweep.set_xlabel("particles M (MT-SGD)")
    ax_sweep.set_ylabel("mean ensemble accuracy")
    ax_sweep.set_title("MT-SGD against the number of particles")
    ctx.save_figure(fig, "multidigits")


EXPERIMENT = register(
    Experiment(
        name="mtsgd-multidigits",
        description="M LeNets on MultiDigits (or MultiMNIST & co.): MT-SGD vs MOO-SVGD, MGDA, linear; "
                    "accuracy, Brier, ECE, sweep over M",
        config=Config,
        full=full,
        run=run,
    )
)
