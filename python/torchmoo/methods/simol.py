r"""SIMOL: multi-objective meta-learning with a soft improvement function (Yu et al., ICLR 2023).

Meta-learning is read as multi-objective optimization with one objective per task,
:math:`\mathcal{L}_\tau(w_\tau^*(w))`. SIMOL steps along the steepest descent direction of the
improvement function (Eq. 6-11), written through task weights :math:`r_\theta(\tau) \ge 0` produced
by a reweighting network. On a mini-batch ``B`` of tasks with meta-gradients ``J`` (|B|, n):

* meta-update (Algorithm 1, line 6): :math:`w \leftarrow w - \frac{\beta}{|B|} \sum_\tau r_\theta(\tau) g_\tau`;
* reweighting ascent (Eq. 13-14, line 7) on the mini-batch soft improvement objective

  .. math:: \tilde K_B(\theta) = -\frac{1}{2\lambda'} \Big\|\frac{1}{|B|}\sum_{\tau\in B} r_\theta(\tau) g_\tau\Big\|^2
            - \frac{\lambda''}{2}\Big(\frac{1}{|B|}\sum_{\tau\in B} r_\theta(\tau) - 1\Big)^2,

  with the gradients taken at :math:`w^{s+1}` (Algorithm 1) or at :math:`w^s` (Eq. 13).

Base learner: MAML (Eq. 15), ``w_tau = w - alpha grad L_tau^support(w)``, second-order through the
inner steps (first-order optional), written with :func:`torch.func.functional_call` and vectorized
over the tasks of a mini-batch with :func:`torch.func.vmap`.

The baselines of the paper (MAML = mean, mini-batch MGDA / PCGrad / CAGrad / improvement function)
are any :class:`~torchmoo.methods.aggregator.Aggregator` applied to the same ``J``:
:meth:`MetaLearner.step`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from torchmoo.autograd import unflatten
from torchmoo.methods.aggregator import Aggregator

__all__ = [
    "soft_improvement_objective",
    "ReweightingNetwork",
    "TaskTableWeights",
    "SIMOL",
    "BaseLearner",
    "MAML",
    "ProtoNet",
    "MetaLearner",
]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _as_float(name: str, value: float) -> float:
    """``value`` as a Python float (numbers and one-element tensors), else a ``TypeError`` naming ``name``."""
    if isinstance(value, (str, bytes)):  # float("1e-3") would pass silently
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}.")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}.") from None


def _check_positive(name: str, value: float) -> float:
    v = _as_float(name, value)
    if not (v > 0.0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    return v


def _check_non_negative(name: str, value: float) -> float:
    v = _as_float(name, value)
    if not (v >= 0.0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}.")
    return v


def soft_improvement_objective(weights: Tensor, J: Tensor, lambda1: float = 1.0, lambda2: float = 1.0) -> Tensor:
    r"""The mini-batch soft improvement objective :math:`\tilde K_B` (SIMOL Eq. 13-14), to be *maximized*.

    Args:
        weights: ``(B,)`` task weights :math:`r_\theta(\tau)` (differentiable: the gradient flows to ``theta``).
        J: ``(B, n)`` per-task meta-gradients :math:`g_\tau`; treated as constants (detached).
        lambda1: :math:`\lambda' > 0`, the proximal weight of Eq. 9.
        lambda2: :math:`\lambda'' \ge 0`, the penalty enforcing :math:`\mathbb{E}\, r = 1` (Eq. 12).

    Returns:
        0-dim tensor :math:`-\frac{1}{2\lambda'}\|\bar g_r\|^2 - \frac{\lambda''}{2}(\bar r - 1)^2`, with
        :math:`\bar g_r = \frac{1}{B}\sum r_\tau g_\tau` and :math:`\bar r = \frac1B\sum r_\tau`.
        By Proposition 3.2 its first term equals
        :math:`\min_d \frac1B\sum_\tau r_\tau \langle g_\tau, d\rangle + \frac{\lambda'}{2}\|d\|^2`.
        Computed on ``weights``' device in the wider of the two dtypes and at least float32 (a float16
        Gram matrix overflows as soon as ``||g_tau||^2 > 65504``); the gradient flows back to ``weights``.

    Raises:
        TypeError: ``weights`` or ``J`` is not a floating-point tensor.
        ValueError: ``weights`` not ``(B,)`` or ``J`` not ``(B, n)`` with ``B >= 1``; ``lambda1`` not
            positive and finite, ``lambda2`` not finite and ``>= 0``.
    """
    lam1 = _check_positive("lambda1", lambda1)
    lam2 = _check_non_negative("lambda2", lambda2)
    if not isinstance(weights, Tensor) or not isinstance(J, Tensor):
        raise TypeError("weights and J must be torch.Tensors.")
    if not weights.is_floating_point() or not J.is_floating_point():
        raise TypeError(f"weights and J must be floating point, got {weights.dtype} and {J.dtype}.")
    if weights.dim() != 1 or J.dim() != 2 or J.shape[0] != weights.shape[0] or J.shape[0] == 0:
        raise ValueError(
            f"weights must be (B,) and J (B, n) with B >= 1, got {tuple(weights.shape)} and {tuple(J.shape)}.")
    B = weights.shape[0]
    dtype = torch.promote_types(torch.promote_types(weights.dtype, J.dtype), torch.float32)
    weights = weights.to(dtype)
    # ||(1/B) r'J||^2 = r' G r / B^2 with G = J J': the objective needs only the Gram matrix
    G = J.detach().to(device=weights.device, dtype=dtype)
    G = G @ G.T
    mean_dir_sq = weights @ G @ weights / (B * B)
    return -mean_dir_sq / (2.0 * lam1) - 0.5 * lam2 * (weights.mean() - 1.0) ** 2


class ReweightingNetwork(nn.Module):
    r"""The reweighting network :math:`r_\theta`: an MLP from task features to a positive weight.

    As in SIMOL 5.1 the output is the square of the last layer, so :math:`r_\theta(\tau) \ge 0`.
    Task features are whatever describes a task, e.g. its flattened support set (``K (x, y)`` pairs).

    Args:
        in_features: size of a task's feature vector.
        hidden: hidden layer sizes (ReLU), default ``(32, 32)`` (SIMOL 5.1).
        init_output: initial value of every weight, > 0 (the last bias is set to its square root and the
            last weights to zero, so training starts from plain MAML, ``r = 1``). Not 0: with a zero
            output ``r`` and its gradient both vanish, and neither ``w`` nor ``theta`` would ever move.

    Shapes: ``(B, in_features)`` -> ``(B,)``.

    Raises:
        ValueError: ``in_features`` or an entry of ``hidden`` not a positive int; ``init_output`` not
            positive and finite.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (32, 32), init_output: float = 1.0) -> None:
        super().__init__()
        if not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be a positive int, got {in_features!r}.")
        if any(not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden must be positive ints, got {hidden!r}.")
        init = _check_positive("init_output", init_output)
        layers = []
        d = in_features
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        last = nn.Linear(d, 1)
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, math.sqrt(init))
        self.net = nn.Sequential(*layers, last)

    def forward(self, features: Tensor) -> Tensor:
        """``(B, in_features)`` task features -> ``(B,)`` weights ``>= 0``; ``ValueError`` if not 2-D."""
        if features.dim() != 2:
            raise ValueError(f"features must be (B, in_features), got {tuple(features.shape)}.")
        return self.net(features).squeeze(-1) ** 2


class TaskTableWeights(nn.Module):
    r"""One learnable weight per task, :math:`r(\tau) = \theta_\tau^2`: SIMOL's toy (appendix A), where
    "the meta-learner and the re-weighting network are represented by learnable vectors".

    ``init_output`` (> 0) is every weight's start; ``theta = 0`` is a stationary point of ``theta^2``.

    Shapes: integer task indices ``(B,)`` -> ``(B,)`` weights.

    Raises:
        ValueError: ``num_tasks`` not a positive int; ``init_output`` not positive and finite.
    """

    def __init__(self, num_tasks: int, init_output: float = 1.0) -> None:
        super().__init__()
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}.")
        init = _check_positive("init_output", init_output)
        self.theta = nn.Parameter(torch.full((num_tasks,), math.sqrt(init)))

    def forward(self, tasks: Tensor) -> Tensor:
        """Integer task indices (any shape) -> their weights :math:`\\theta_\\tau^2`, same shape.

        Raises:
            TypeError: ``tasks`` is not an integer tensor (bool included).
            IndexError: an index is outside ``0 .. num_tasks - 1``.
        """
        if (not isinstance(tasks, Tensor) or tasks.is_floating_point() or tasks.is_complex()
                or tasks.dtype == torch.bool):
            raise TypeError("tasks must be a tensor of integer task indices (a float tensor would be truncated).")
        idx = tasks.long()
        # plain indexing would take -1 as the last task: a silently wrong weight, not an error
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.theta.shape[0]):
            raise IndexError(f"task indices must lie in 0 .. {self.theta.shape[0] - 1}, got "
                             f"{int(idx.min())} .. {int(idx.max())}.")
        return self.theta[idx] ** 2


class SIMOL(Aggregator):
    r"""SIMOL's outer step: task weights from a reweighting network, the weighted meta-update, and the
    ascent of the reweighting network on :math:`\tilde K_B` (Algorithm 1).

    Usable with ``torch.optim``: :meth:`direction` gives the meta-update ``(1/B) r' J`` (the
    optimizer of ``w`` subtracts it: line 6), :meth:`reweight_backward` writes
    :math:`-\nabla_\theta \tilde K_B` into the ``.grad`` of ``theta`` (an optimizer that minimizes
    then *ascends* :math:`\tilde K_B`: line 7, Eq. 14).

    As an :class:`Aggregator` (``simol(J)``) it uses the weights set by the last :meth:`set_weights`.

    Args:
        reweighting_net: module mapping task features ``(B, ...)`` to non-negative weights ``(B,)``
            (:class:`ReweightingNetwork`, :class:`TaskTableWeights`).
        lambda1: :math:`\lambda'` (> 0).
        lambda2: :math:`\lambda''` (>= 0).

    Raises:
        TypeError: ``reweighting_net`` is not a module.
        ValueError: ``lambda1`` not positive and finite, ``lambda2`` not finite and ``>= 0``.

    Example (``tasks = (x_support, y_support, x_query, y_query)``, ``meta`` a :class:`MetaLearner`)::

        simol = SIMOL(ReweightingNetwork(10), lambda1=1.0, lambda2=1.0)
        r = simol.set_weights(features)                 # (B,)
        J, losses = learner.task_jacobian(*tasks)       # (B, n), at w^s
        meta.write_grad(simol.direction(J, r)); opt_w.step()   # w^{s+1}
        J1, _ = learner.task_jacobian(*tasks)           # at w^{s+1}
        opt_theta.zero_grad(); simol.reweight_backward(r, J1); opt_theta.step()

    :meth:`MetaLearner.step` runs these lines.
    """

    def __init__(self, reweighting_net: nn.Module, lambda1: float = 1.0, lambda2: float = 1.0) -> None:
        super().__init__()
        if not isinstance(reweighting_net, nn.Module):
            raise TypeError(f"reweighting_net must be a torch.nn.Module, got {type(reweighting_net).__name__}.")
        self.reweighting_net = reweighting_net
        self.lambda1 = _check_positive("lambda1", lambda1)
        self.lambda2 = _check_non_negative("lambda2", lambda2)
        self._r: Optional[Tensor] = None

    def set_weights(self, task_features: Tensor) -> Tensor:
        """Evaluate :math:`r_\\theta` on the mini-batch; returns ``(B,)`` weights, differentiable in ``theta``.

        Raises:
            ValueError: the reweighting network does not return a 1-D tensor.
        """
        r = self.reweighting_net(task_features)
        if r.dim() != 1:
            raise ValueError(f"the reweighting network must return (B,) weights, got {tuple(r.shape)}.")
        self._r = r
        return r

    def compute_weights(self, J: Tensor, losses: Optional[Tensor] = None) -> Tensor:
        """``r / B`` ``(B,)`` from the last :meth:`set_weights` (detached), in ``J``'s dtype and device.

        Raises:
            RuntimeError: :meth:`set_weights` was not called.
            ValueError: the number of weights differs from the ``B`` rows of ``J``.
        """
        if self._r is None:
            raise RuntimeError("call set_weights(task_features) before aggregating.")
        if self._r.shape[0] != J.shape[0]:
            raise ValueError(f"{self._r.shape[0]} task weights for a Jacobian of {J.shape[0]} rows.")
        return self._r.detach().to(dtype=J.dtype, device=J.device) / J.shape[0]

    def direction(self, J: Tensor, weights: Tensor) -> Tensor:
        r"""``(1/B) sum_tau r_tau g_tau`` (n,): the meta-update of Algorithm 1 (line 6), ``weights`` detached.

        ``J``: ``(B, n)``, ``weights``: ``(B,)``; the result is in ``J``'s dtype and device, and
        ``weights / B`` is stored in :attr:`weights`.

        Raises:
            ValueError: ``weights`` not ``(B,)`` or ``J`` not ``(B, n)``.
        """
        if weights.dim() != 1 or J.dim() != 2 or weights.shape[0] != J.shape[0]:
            raise ValueError(f"weights must be (B,) and J (B, n), got {tuple(weights.shape)} and {tuple(J.shape)}.")
        w = weights.detach().to(dtype=J.dtype, device=J.device) / J.shape[0]
        self.weights = w
        return w @ J

    def objective(self, weights: Tensor, J: Tensor) -> Tensor:
        r""":math:`\tilde K_B` (0-dim), see :func:`soft_improvement_objective`."""
        return soft_improvement_objective(weights, J, self.lambda1, self.lambda2)

    def reweight_backward(self, weights: Tensor, J: Tensor) -> Tensor:
        r"""Back-propagate :math:`-\tilde K_B` into the reweighting network's ``.grad``; returns :math:`\tilde K_B`.

        ``weights`` ``(B,)`` from :meth:`set_weights` (with their graph), ``J`` ``(B, n)``; ``.grad`` is
        accumulated into. Returns a detached 0-dim tensor. Raises as :func:`soft_improvement_objective`.
        """
        K = self.objective(weights, J)
        (-K).backward()
        return K.detach()

    def __repr__(self) -> str:
        return f"SIMOL(lambda1={self.lambda1}, lambda2={self.lambda2})"


class BaseLearner:
    r"""A base learner: ``task_loss(params, x_support, y_support, x_query, y_query)``, the task-adapted loss
    :math:`\mathcal{L}_\tau(w_\tau^*(w))` as a pure function of the meta-parameters ``params``."""

    model: nn.Module

    def params(self) -> Dict[str, Tensor]:
        """The meta-parameters ``w`` as a name -> tensor dict (the trainable parameters of ``model``)."""
        return {k: p for k, p in self.model.named_parameters() if p.requires_grad}

    def task_loss(self, params: Dict[str, Tensor], x_support: Tensor, y_support: Tensor, x_query: Tensor,
                  y_query: Tensor) -> Tensor:
        """The task-adapted loss (0-dim) of one task; subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__} must define task_loss.")

    def task_jacobian(self, x_support: Tensor, y_support: Tensor, x_query: Tensor,
                      y_query: Tensor) -> Tuple[Tensor, Tensor]:
        r"""Per-task meta-gradients of a mini-batch of tasks, vectorized over the tasks.

        Args:
            x_support, y_support: ``(B, K, ...)``; x_query, y_query: ``(B, Q, ...)``.

        Returns:
            ``J`` (B, n) with row ``tau`` = :math:`\nabla_w \mathcal{L}_\tau(w_\tau^*(w))` flattened in
            parameter order, and the ``(B,)`` task losses (both detached, in the parameters' dtype).

        Raises:
            ValueError: an input is not a tensor with at least 2 dims, or the four do not have the same
                number of tasks.
        """
        for name, t in (("x_support", x_support), ("y_support", y_support), ("x_query", x_query),
                        ("y_query", y_query)):
            if not isinstance(t, Tensor) or t.dim() < 2:
                raise ValueError(f"{name} must be a (B, N, ...) tensor of B tasks.")
        if len({x_support.shape[0], y_support.shape[0], x_query.shape[0], y_query.shape[0]}) != 1:
            raise ValueError("support and query tensors must have the same number of tasks (dim 0).")
        params = {k: v.detach() for k, v in self.params().items()}
        grads, losses = vmap(torch.func.grad_and_value(self.task_loss), in_dims=(None, 0, 0, 0, 0))(
            params, x_support, y_support, x_query, y_query)
        J = torch.cat([grads[k].reshape(grads[k].shape[0], -1) for k in params], dim=1)
        return J.detach(), losses.detach()


class ProtoNet(BaseLearner):
    r"""Prototypical networks (Snell et al. 2017; SIMOL Algorithm 3) as a base learner.

    Prototypes :math:`c_k = \frac{1}{|S_k|}\sum_{x \in S_k} f_w(x)`; the task loss is the cross-entropy
    of the query points under :math:`p(k \mid x) \propto \exp(-\|f_w(x) - c_k\|^2)`.

    Args:
        model: the embedding network ``f_w``: ``(N, ...)`` -> ``(N, d)``.
        n_way: number of classes per task; labels are ``0 .. n_way - 1`` (long tensors).

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: ``n_way`` is not an int ``>= 2``.
    """

    def __init__(self, model: nn.Module, n_way: int) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if not isinstance(n_way, int) or n_way < 2:
            raise ValueError(f"n_way must be an int >= 2, got {n_way!r}.")
        self.model, self.n_way = model, n_way

    def task_loss(self, params: Dict[str, Tensor], x_support: Tensor, y_support: Tensor, x_query: Tensor,
                  y_query: Tensor) -> Tensor:
        """Cross-entropy (0-dim) of the ``(Q, ...)`` queries against the prototypes of the ``(K N, ...)``
        support set of one task, as a pure function of ``params``."""
        emb_s = functional_call(self.model, params, (x_support,))
        emb_q = functional_call(self.model, params, (x_query,))
        # one-hot by comparison (F.one_hot checks its input's values, which vmap does not allow)
        classes = torch.arange(self.n_way, device=emb_s.device)
        onehot = (y_support.long()[:, None] == classes).to(emb_s.dtype)  # (K N, N)
        protos = (onehot.T @ emb_s) / onehot.sum(0).clamp_min(1.0)[:, None]  # (N, d)
        logits = -(emb_q[:, None, :] - protos[None, :, :]).square().sum(-1)  # (Q, N)
        return torch.nn.functional.cross_entropy(logits, y_query.long())


class MAML(BaseLearner):
    r"""MAML's task-adapted loss :math:`\mathcal{L}_\tau(w_\tau^*(w))` as a pure function of ``w`` (Eq. 15).

    ``w_tau = w - alpha grad_w L_tau^support(w)`` (``inner_steps`` times), then the loss on the
    query set. Second-order through the inner steps by default; ``first_order=True`` drops the
    second derivatives (FOMAML).

    Args:
        model: the meta-learner; called through :func:`torch.func.functional_call`.
        loss_fn: ``loss_fn(prediction, target) -> 0-dim`` (e.g. ``torch.nn.functional.mse_loss``).
        inner_lr: :math:`\alpha > 0`.
        inner_steps: number of inner gradient steps (>= 1).
        first_order: drop second-order terms.

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: ``inner_lr`` not positive and finite; ``inner_steps`` not an int ``>= 1``.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, inner_lr: float = 0.01, inner_steps: int = 1,
                 first_order: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if not isinstance(inner_steps, int) or inner_steps < 1:
            raise ValueError(f"inner_steps must be an int >= 1, got {inner_steps!r}.")
        self.model = model
        self.loss_fn = loss_fn
        self.inner_lr = _check_positive("inner_lr", inner_lr)
        self.inner_steps = inner_steps
        self.first_order = bool(first_order)

    def _support_loss(self, params: Dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return self.loss_fn(functional_call(self.model, params, (x,)), y)

    def adapt(self, params: Dict[str, Tensor], x_support: Tensor, y_support: Tensor) -> Dict[str, Tensor]:
        """``w_tau`` after the inner steps, differentiable in ``params`` (through the steps unless first-order)."""
        for _ in range(self.inner_steps):
            g = grad(self._support_loss)(params, x_support, y_support)
            if self.first_order:
                g = {k: v.detach() for k, v in g.items()}
            params = {k: params[k] - self.inner_lr * g[k] for k in params}
        return params

    def task_loss(self, params: Dict[str, Tensor], x_support: Tensor, y_support: Tensor, x_query: Tensor,
                  y_query: Tensor) -> Tensor:
        r""":math:`\mathcal{L}_\tau(w_\tau^*(w))`: the query loss after adaptation (0-dim)."""
        adapted = self.adapt(params, x_support, y_support)
        return self.loss_fn(functional_call(self.model, adapted, (x_query,)), y_query)


class MetaLearner:
    """Outer loop over task mini-batches: any aggregator of the per-task meta-gradients, or SIMOL.

    Args:
        maml: the base learner (:class:`MAML` or :class:`ProtoNet`).
        optimizer: ``torch.optim`` optimizer over ``maml.model``'s parameters (the outer learning rate ``beta``).
        method: ``None`` (MAML: the mean of the task gradients), an :class:`Aggregator` (``MGDA()``,
            ``PCGrad()``, ``CAGrad()``, ``ImprovementFunction()``, ``LinearScalarization([1/B]*B)``) or
            a :class:`SIMOL`.
        reweight_optimizer: optimizer of SIMOL's reweighting network (``beta'``); required with SIMOL.
        theta_at: ``"next"`` (Algorithm 1: ``J`` recomputed at ``w^{s+1}`` for the ascent on ``theta``)
            or ``"current"`` (Eq. 13: reuse ``J`` at ``w^s``; SIMOL then costs the same as MAML).

    Raises:
        TypeError: ``method`` is neither ``None`` nor an Aggregator.
        ValueError: SIMOL without ``reweight_optimizer``; an unknown ``theta_at``.
    """

    def __init__(self, maml: BaseLearner, optimizer: torch.optim.Optimizer, method: Optional[Aggregator] = None,
                 reweight_optimizer: Optional[torch.optim.Optimizer] = None, theta_at: str = "next") -> None:
        if method is not None and not isinstance(method, Aggregator):
            raise TypeError(f"method must be an Aggregator, a SIMOL or None (mean), got {type(method).__name__}.")
        if isinstance(method, SIMOL) and reweight_optimizer is None:
            raise ValueError("SIMOL needs reweight_optimizer, the optimizer of its reweighting network.")
        if theta_at not in ("next", "current"):
            raise ValueError(f"theta_at must be 'next' or 'current', got {theta_at!r}.")
        self.maml, self.optimizer, self.method = maml, optimizer, method
        self.reweight_optimizer, self.theta_at = reweight_optimizer, theta_at

    def state_dict(self) -> Dict[str, Any]:
        """Everything an interrupted meta-training needs to continue exactly: ``"model"`` and ``"optimizer"``
        (the meta-learner's ``state_dict``s), with SIMOL ``"reweighting_net"`` and ``"reweight_optimizer"``,
        and ``"generator"`` (the state of the method's own ``torch.Generator``, e.g. ``PCGrad(seed=...)``).

        Like ``torch``'s ``state_dict`` the tensors are references to the live state: save them (``torch.save``)
        before the next step. An aggregator that draws from torch's global generator (``PCGrad()`` without a
        seed) is reproduced only if the caller saves and restores that generator too.
        """
        state: Dict[str, Any] = {"model": self.maml.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        if isinstance(self.method, SIMOL):
            state["reweighting_net"] = self.method.reweighting_net.state_dict()
            state["reweight_optimizer"] = self.reweight_optimizer.state_dict()
        generator = getattr(self.method, "generator", None)
        if isinstance(generator, torch.Generator):
            state["generator"] = generator.get_state()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` into a meta-learner built the same way (same model, optimizer and method).

        Raises:
            ValueError: ``state`` does not hold the parts this meta-learner has (e.g. a SIMOL state for a
                MAML learner, or the reverse).
        """
        own = set(self.state_dict())
        if not isinstance(state, dict) or set(state) != own:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state must hold exactly {sorted(own)} for this meta-learner, got {got}.")
        self.maml.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if isinstance(self.method, SIMOL):
            self.method.reweighting_net.load_state_dict(state["reweighting_net"])
            self.reweight_optimizer.load_state_dict(state["reweight_optimizer"])
        if "generator" in state:
            self.method.generator.set_state(state["generator"])

    def write_grad(self, d: Tensor) -> None:
        """Write the flat direction ``d`` (n,) into the ``.grad`` of the meta-parameters (replacing it).

        Raises:
            ValueError: ``d`` does not have the ``n`` entries of the meta-parameters.
        """
        params = list(self.maml.params().values())
        for p, g in zip(params, unflatten(d, params)):
            p.grad = g.detach().clone()

    def step(self, x_support: Tensor, y_support: Tensor, x_query: Tensor, y_query: Tensor,
             task_features: Optional[Tensor] = None) -> Dict[str, float]:
        """One outer step on a mini-batch of ``B`` tasks (shapes as :meth:`BaseLearner.task_jacobian`).

        Args:
            x_support, y_support, x_query, y_query: ``(B, K, ...)`` support and ``(B, Q, ...)`` query tensors.
            task_features: ``(B, ...)`` input of SIMOL's reweighting network (required with SIMOL).

        Returns:
            ``{"loss": mean task loss before the step}``; with SIMOL also ``"K"`` (:math:`\tilde K_B`)
            and ``"mean_weight"`` (the mean of ``r``).

        Raises:
            ValueError: SIMOL without ``task_features``; the errors of the base learner and the method.
        """
        batch = (x_support, y_support, x_query, y_query)
        J, losses = self.maml.task_jacobian(*batch)
        out = {"loss": float(losses.mean())}
        self.optimizer.zero_grad(set_to_none=True)
        if isinstance(self.method, SIMOL):
            if task_features is None:
                raise ValueError("SIMOL needs task_features for its reweighting network.")
            r = self.method.set_weights(task_features)
            self.write_grad(self.method.direction(J, r))
            self.optimizer.step()
            if self.theta_at == "next":
                J, _ = self.maml.task_jacobian(*batch)
            self.reweight_optimizer.zero_grad(set_to_none=True)
            out["K"] = float(self.method.reweight_backward(r, J))
            self.reweight_optimizer.step()
            out["mean_weight"] = float(r.detach().mean())
            return out
        if self.method is None:  # MAML: the plain average, written as SIMOL's update with r = 1
            d = torch.full((J.shape[0],), 1.0 / J.shape[0], dtype=J.dtype, device=J.device) @ J
        else:
            d = self.method(J, losses)
        self.write_grad(d)
        self.optimizer.step()
        return out
