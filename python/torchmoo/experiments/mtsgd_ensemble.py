"""Ensembles of ``M`` multi-task networks trained by MT-SGD, MOO-SVGD, MGDA or linear scalarization.

The training loop shared by ``mtsgd-multidigits`` and ``mtsgd-sarcos`` (MT-SGD supplement 2.1.3 and
2.2.1). Every method trains ``M`` networks of one architecture and predicts with their average:

* ``"mt-sgd"``: the ``M`` networks are the particles of :class:`torchmoo.methods.MTSGD`, with targets
  ``p_i ~ exp(-loss_i)`` (``loss_i``: task ``i``'s loss on the mini-batch); the flattened parameters of
  each network (trunk and heads) form one particle.
* ``"moo-svgd"``: the same particles and targets under :class:`torchmoo.methods.MOOSVGD`.
* ``"mgda"``: ``M`` independent networks, each trained with MGDA (:class:`torchmoo.methods.MGDA`) on
  its trunk, every head receiving its own task's gradient.
* ``"linear"``: ``M`` independent networks, each trained on the mean of the task losses (linear
  scalarization with equal weights).

Network ``m`` starts from the same initialization under every method (seeded by ``(seed, m)``), and
every method sees the same mini-batches (seeded per epoch), so the methods differ only in their
updates. One optimizer (Adam, or SGD with momentum 0.9) holds the parameters of all ``M`` networks; it
is per-parameter, so this equals ``M`` optimizers. Each epoch ends with an evaluation and a
checkpoint, so an interrupted unit resumes exactly.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import Tensor, nn

import torchmoo as tm
from torchmoo.experiments.runner import RunContext

METHODS = ("mt-sgd", "moo-svgd", "mgda", "linear")
OPTIMIZERS = ("adam", "sgd")

#: ``task_losses(net, x, y) -> (K,)`` the per-task losses of one network on a batch.
TaskLosses = Callable[[nn.Module, Tensor, Tensor], Tensor]


@contextlib.contextmanager
def intra_op_threads(threads: Optional[int]) -> Iterator[None]:
    """Runs the block with ``torch.set_num_threads(threads)`` (``None``: unchanged), then restores the count.

    The networks here are small: a second thread gains little, and on a CPU shared with other jobs
    OpenMP's waiting threads can make a step ten times slower."""
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}.")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_methods(methods: Sequence[str]) -> None:
    if not methods:
        raise ValueError(f"methods must name at least one of {METHODS}.")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; use one of {METHODS}.")


def check_optimizer(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}.")


def make_networks(factory: Callable[[], nn.Module], count: int, seed: int, device: torch.device) -> List[nn.Module]:
    """``count`` networks from ``factory``; network ``m`` is initialized under the seed ``(seed, m)``, so
    the first ``m`` networks are the same for every method and every ensemble size. The seeding is done
    under :func:`torch.random.fork_rng`: the caller's CPU and CUDA random streams are left as they were."""
    nets = []
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        for m in range(count):
            torch.manual_seed(seed * 1_000_003 + 7919 * (m + 1))
            nets.append(factory().to(device))
    return nets


def _optimizer(name: str, params: List[Tensor], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def train_ensemble(
    unit: str,
    method: str,
    nets: List[nn.Module],
    task_losses: TaskLosses,
    x: Tensor,
    y: Tensor,
    evaluate: Callable[[List[nn.Module]], Dict[str, Any]],
    ctx: RunContext,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str = "adam",
    num_tasks: int,
) -> Dict[str, Any]:
    """Trains the ensemble ``nets`` with ``method`` and returns its history (``evaluate`` after every epoch).

    Args:
        unit: the runner unit (checkpoint name).
        method: one of :data:`METHODS`.
        nets: ``M`` networks of one architecture (:class:`~torchmoo.zoo.models.MultiTaskModel` for
            ``"mgda"``, whose trunk is where the tasks conflict).
        task_losses: ``(net, x_batch, y_batch) -> (K,)`` losses.
        x, y: training inputs and targets (first dim: samples), on the networks' device.
        evaluate: ``nets -> dict`` of numbers, called before training (epoch 0) and after every epoch.
        ctx: run context (progress, checkpoints, seed).
        epochs, batch_size, lr, optimizer: the schedule (``"adam"`` or ``"sgd"`` with momentum 0.9).
        num_tasks: ``K``.

    Returns:
        ``{"history": [{"epoch": e, **evaluate(nets)}, ...], "steps", "seconds", "weights_last_step"}``
        where ``seconds`` is the time of the training steps (not of ``evaluate``), ``weights_last_step`` is MT-SGD's ``w`` ``(K,)``, MOO-SVGD's per-network weights averaged,
        the mean over networks of MGDA's weights, or the equal weights of linear scalarization.
    """
    check_methods([method])
    check_optimizer(optimizer)
    params = [p for net in nets for p in net.parameters()]
    opt = _optimizer(optimizer, params, lr)
    batch: Dict[str, Tensor] = {}

    def targets(net: nn.Module) -> Tensor:  # p_i ~ exp(-loss_i) on the current mini-batch
        return task_losses(net, batch["x"], batch["y"])

    particle = None
    if method == "mt-sgd":
        particle = tm.methods.MTSGD(nets, targets)
    elif method == "moo-svgd":
        particle = tm.methods.MOOSVGD(nets, targets)
    aggregators = [tm.methods.MGDA() for _ in nets] if method == "mgda" else []

    state = ctx.load_state(unit)
    if state is not None:
        for net, sd in zip(nets, state["nets"]):
            net.load_state_dict(sd)
        opt.load_state_dict(state["optimizer"])
        start, history, steps, seconds = state["epoch"], state["history"], state["steps"], state["seconds"]
        weights = state["weights"]
    else:
        start, history, steps, seconds, weights = 0, [{"epoch": 0, **evaluate(nets)}], 0, 0.0, []
    n = x.shape[0]
    for epoch in ctx.progress(range(start, epochs), desc=unit, total=epochs, initial=start):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + epoch)  # the same batches for every unit
        order = torch.randperm(n, generator=gen).to(x.device)
        for k in range(0, n, batch_size):
            idx = order[k:k + batch_size]
            opt.zero_grad(set_to_none=True)
            if particle is not None:
                batch["x"], batch["y"] = x[idx], y[idx]
                step = particle.backward()
                weights = (step.weights if step.weights.dim() == 1 else step.weights.mean(0)).tolist()
            elif method == "mgda":
                for net, agg in zip(nets, aggregators):
                    losses = task_losses(net, x[idx], y[idx])
                    heads = [net.task_parameters(i) for i in range(num_tasks)]
                    tm.backward(losses, net.shared_parameters(), agg, task_params=heads)
                weights = torch.stack([agg.weights for agg in aggregators]).mean(0).tolist()
            else:  # linear scalarization: the mean of the task losses, one backward pass per network
                for net in nets:
                    task_losses(net, x[idx], y[idx]).mean().backward()
                weights = [1.0 / num_tasks] * num_tasks
            opt.step()
            steps += 1
        seconds += time.perf_counter() - t0  # training time only: the evaluation is the same for every method
        history.append({"epoch": epoch + 1, **evaluate(nets)})
        if not all(math.isfinite(v) for v in weights):
            raise ValueError(f"{unit}: the {method} weights became non-finite at epoch {epoch + 1}; "
                             "lower the learning rate.")
        ctx.save_state(unit, {"nets": [net.state_dict() for net in nets], "optimizer": opt.state_dict(),
                              "epoch": epoch + 1, "history": history, "steps": steps, "seconds": seconds,
                              "weights": weights})
    return {"history": history, "steps": steps, "seconds": seconds, "weights_last_step": weights}
