r"""MT-SGD (Phan et al., NeurIPS 2022) and its baseline MOO-SVGD (Liu, Tong & Liu, NeurIPS 2021).

Both move a set of ``M`` particles ``X`` ``(M, d)`` so that they serve ``K`` target densities
``p_1 .. p_K`` at once. Notation (the MT-SGD supplement, section 1):

* RBF kernel ``k(a, b) = exp(-|x_a - x_b|^2 / h)`` with bandwidth ``h`` (:func:`median_bandwidth`
  gives the median heuristic of SVGD, ``h = med^2 / log(M + 1)``).
* Scores ``S`` ``(K, M, d)``: ``S[i, a] = grad log p_i(x_a)``.
* The Stein direction of target ``i`` at a particle ``x_a``:
  ``phi_i(x_a) = mean_b [k(x_b, x_a) S[i, b] + grad_{x_b} k(x_b, x_a)]`` (the SVGD update of ``p_i``).
* ``U[i, j] = <phi_i, phi_j>`` in the RKHS (supplement Eq. 3, derived in section 1.3), a ``K x K``
  positive semi-definite matrix.

MT-SGD solves one simplex QP ``w* = argmin_{w in simplex} w'Uw`` per step and moves every particle
along ``phi* = sum_i w*_i phi_i``. By Lemma 1, ``<phi*, phi_i> >= |phi*|^2`` for every ``i``, so the
first-order change of every ``KL(q || p_i)`` is at most ``-|phi*|^2`` (Theorem 2).

MOO-SVGD instead solves one simplex QP per particle over the scores at that particle
(``w_a = argmin w' G_a w``, ``G_a[i, j] = <S[i, a], S[j, a]>``), combines them into ``g_a = sum_i w_ai S[i, a]``
and moves particle ``x_a`` along ``mean_b [k(x_b, x_a) g_b + alpha grad_{x_b} k(x_b, x_a)]``; its ``M``
QPs go to :func:`torchmoo.ops.min_norm_simplex` in one batched call.

Both classes work like the aggregators of :mod:`torchmoo.methods`: :meth:`MTSGD.backward` writes
``-phi*`` into ``.grad`` of the particles, and any ``torch.optim`` optimizer then takes the step
(the paper uses Adam). Particles are either one tensor ``(M, d)`` (sampling; targets are log-densities)
or ``M`` modules of the same architecture (ensembles; targets ``p_i ~ exp(-loss_i)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from torchmoo import ops

__all__ = [
    "median_bandwidth",
    "rbf_kernel",
    "stein_task_matrix",
    "stein_directions",
    "stein_update",
    "SteinStep",
    "MTSGD",
    "MOOSVGD",
]


def _check_particles(X: object) -> None:
    if not isinstance(X, Tensor):
        raise TypeError(f"X must be a torch.Tensor of particles (M, d), got {type(X).__name__}.")
    if not X.is_floating_point():
        raise TypeError(f"X must have a floating dtype, got {X.dtype}.")
    if X.dim() != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must have shape (M, d) with M, d >= 1, got {tuple(X.shape)}.")
    if not bool(torch.isfinite(X).all()):
        raise ValueError("X contains NaN or infinity.")


def _check_scores(X: Tensor, S: object, *, finite: bool = True) -> None:
    """Type, dtype, device and shape of the scores; their finiteness too unless ``finite=False`` (the
    Stein operators check it on their result, without an extra pass over ``S``)."""
    if not isinstance(S, Tensor):
        raise TypeError(f"S must be a torch.Tensor of scores (K, M, d), got {type(S).__name__}.")
    if S.dtype != X.dtype:
        raise TypeError(f"S must have the dtype of X ({X.dtype}), got {S.dtype}.")
    if S.device != X.device:
        raise ValueError(f"S is on {S.device} but X is on {X.device}.")
    if S.dim() != 3 or S.shape[0] == 0 or tuple(S.shape[1:]) != tuple(X.shape):
        raise ValueError(f"S must have shape (K, M, d) = (K, {X.shape[0]}, {X.shape[1]}) with K >= 1, "
                         f"got {tuple(S.shape)}.")
    if finite and not bool(torch.isfinite(S).all()):
        raise ValueError("S contains NaN or infinity.")


def _check_bandwidth(h: object) -> float:
    if isinstance(h, Tensor):
        if h.numel() != 1:
            raise ValueError(f"h must be a positive scalar, got a tensor of shape {tuple(h.shape)}.")
        h = float(h)
    if isinstance(h, bool) or not isinstance(h, (int, float)):
        raise TypeError(f"h must be a positive number, got {type(h).__name__}.")
    if not math.isfinite(h) or h <= 0.0:
        raise ValueError(f"h must be a positive finite number, got {h}.")
    return float(h)


def _center(X: Tensor) -> Tensor:
    """``X`` minus its mean particle. Distances and the repulsion do not change under a common shift;
    on centered particles their rounding is relative to the particles' spread, not to their distance
    from the origin (float32 particles at 10 with a spread of 1e-3 otherwise give garbage distances)."""
    return X - X.mean(0, keepdim=True)


def _sq_dists(X: Tensor, centered: bool = False) -> Tensor:
    """``(M, M)`` squared distances, exactly zero on the diagonal and never negative."""
    X = X if centered else _center(X)
    sq = (X * X).sum(1)
    D2 = (sq[:, None] + sq[None, :] - 2.0 * (X @ X.T)).clamp_min(0.0)
    D2 = 0.5 * (D2 + D2.T)  # exact symmetry, so U is exactly symmetric too
    return D2.fill_diagonal_(0.0)


def median_bandwidth(X: Tensor) -> float:
    """SVGD's median heuristic ``h = med^2 / log M`` for ``k = exp(-r^2 / h)`` (Liu & Wang 2016).

    ``med`` is the median of the pairwise distances of the particles ``X`` ``(M, d)``; ``log M`` is
    replaced by ``log(M + 1)`` so that ``M = 1`` works, and ``h = 1`` is returned when all particles
    coincide.

    Returns:
        ``h`` as a Python float (``> 0``; float16 / bfloat16 particles are measured in float32).

    Raises:
        TypeError: ``X`` is not a floating-point tensor.
        ValueError: ``X`` is not ``(M, d)`` with ``M, d >= 1``, or is not finite.
    """
    _check_particles(X)
    M = X.shape[0]
    # half types in float32: squared norms past 65504 overflow float16 (and would give h = 1 silently)
    D2 = _sq_dists(X.detach().to(_op_dtype(X)))
    off = D2[~torch.eye(M, dtype=torch.bool, device=X.device)]
    med2 = float(off.median()) if off.numel() else 0.0
    h = med2 / math.log(M + 1)
    return h if h > 0.0 and math.isfinite(h) else 1.0


def rbf_kernel(X: Tensor, h: float) -> Tensor:
    """``(M, M)`` kernel matrix ``k(x_a, x_b) = exp(-|x_a - x_b|^2 / h)`` of the particles ``X`` ``(M, d)``,
    in ``X``'s dtype (computed in float32 for half types)."""
    _check_particles(X)
    h = _check_bandwidth(h)
    return torch.exp(-_sq_dists(X.to(_op_dtype(X))) / h).to(X.dtype)


def _kernel_terms(X: Tensor, h: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Kernel matrix ``(M, M)``, squared distances ``(M, M)`` and the repulsion ``R (M, d)`` with
    ``R[a] = sum_b grad_{x_b} k(x_b, x_a) = (2/h) sum_b k_ab (x_a - x_b)``, all in ``_op_dtype(X)``
    (float32 for half types, whose squared norms overflow long before the particles do)."""
    Xc = _center(X.to(_op_dtype(X)))  # R is translation invariant: sum_b k_ab (x_a - x_b)
    D2 = _sq_dists(Xc, centered=True)
    Kmat = torch.exp(-D2 / h)
    R = (2.0 / h) * (Kmat.sum(1, keepdim=True) * Xc - Kmat @ Xc)
    return Kmat, D2, R


def _op_dtype(X: Tensor) -> torch.dtype:
    """The dtype the Stein operators compute in: float32 / float64 as given, float32 for half types."""
    return X.dtype if X.dtype in (torch.float32, torch.float64) else torch.float32


def _task_matrix(X: Tensor, S: Tensor, h: float) -> Tensor:
    """``U`` by :func:`torchmoo.ops.stein_task_matrix` for validated (detached) inputs, float64."""
    dt = _op_dtype(X)
    return ops.stein_task_matrix(X.to(dt), S.to(dt), h)


def _update(X: Tensor, S: Tensor, h: float, w: Tensor) -> Tensor:
    """``phi`` by :func:`torchmoo.ops.stein_update` for validated (detached) inputs, in ``X``'s dtype."""
    dt = _op_dtype(X)
    return ops.stein_update(X.to(dt), S.to(dt), w.detach().to(dtype=dt, device=X.device), h).to(X.dtype)


def stein_directions(X: Tensor, S: Tensor, h: float) -> Tensor:
    r"""``(K, M, d)`` Stein directions ``phi_i(x_a) = mean_b [k(x_b, x_a) S[i, b] + grad_{x_b} k(x_b, x_a)]``.

    ``phi_i`` is the SVGD update of target ``i`` (Liu & Wang 2016); MT-SGD moves along
    ``sum_i w_i phi_i`` (:func:`stein_update`).

    Args:
        X: ``(M, d)`` particles. S: ``(K, M, d)`` scores ``grad log p_i(x_a)``, dtype and device of ``X``.
        h: RBF bandwidth, ``k = exp(-r^2 / h)``.

    Returns:
        ``(K, M, d)`` in ``X``'s dtype and device (an ``(M, M)`` kernel matrix is formed; for the combined
        direction alone, :func:`stein_update` is cheaper).

    Raises:
        TypeError / ValueError: as :func:`stein_task_matrix`.
    """
    _check_particles(X)
    _check_scores(X, S)
    h = _check_bandwidth(h)
    Kmat, _, R = _kernel_terms(X, h)
    return ((torch.matmul(Kmat, S.to(Kmat.dtype)) + R) / X.shape[0]).to(X.dtype)


def stein_task_matrix(X: Tensor, S: Tensor, h: float) -> Tensor:
    r"""MT-SGD's ``U`` ``(K, K)``: ``U[i, j] = <phi_i, phi_j>`` in the RKHS (supplement Eq. 3).

    ``U[i, j] = mean_{a, b} [k_ab <S[i, a], S[j, b]> + <S[i, a], d k_ab / d x_b> + <S[j, b], d k_ab / d x_a>
    + tr(d^2 k_ab / d x_a d x_b)]`` with ``k_ab = exp(-|x_a - x_b|^2 / h)``. For the RBF kernel the three
    kernel-derivative terms reduce to (``c_i = (2/h) sum_ab k_ab <S[i, a], x_a - x_b>``)::

        M^2 U = [<S_i, K S_j>]_ij + c 1' + 1 c' + (2/h) sum_ab k_ab (d - 2 |x_a - x_b|^2 / h)

    computed by :func:`torchmoo.ops.stein_task_matrix` (one pass over ``S``, ``O(K M^2 d + K^2 M d)`` work,
    never a ``(M, M, d)`` or ``(K, M, d)`` tensor).

    Args:
        X: ``(M, d)`` particles, floating (float16 / bfloat16 are computed in float32). S: ``(K, M, d)``
            scores, same dtype and device. Both are read as constants (not differentiated).
        h: RBF bandwidth (positive).

    Returns:
        ``U`` ``(K, K)``, float64 whatever the dtype of ``X``, exactly symmetric and positive semi-definite
        up to rounding. Every entry holds the same trace constant, of order ``d / h``; for particles of many
        dimensions it dwarfs the differences between the entries, which alone decide the simplex QP, and
        rounding ``U`` to float32 would erase them.

    Raises:
        TypeError: non-tensor or non-floating input, dtype mismatch, non-number ``h``.
        ValueError: wrong shapes, NaN / infinity, ``h <= 0``.
    """
    _check_particles(X)
    _check_scores(X, S, finite=False)
    h = _check_bandwidth(h)
    return _task_matrix(X, S, h)


def stein_update(X: Tensor, S: Tensor, h: float, w: Tensor) -> Tensor:
    r"""``(M, d)`` combined update ``phi*(x_a) = sum_i w_i mean_b [k(x_b, x_a) S[i, b] + grad_{x_b} k(x_b, x_a)]``.

    Note the argument order ``(X, S, h, w)``; the operator :func:`torchmoo.ops.stein_update` takes
    ``(X, S, w, h)``.

    Args:
        X: ``(M, d)`` particles, floating (float16 / bfloat16 are computed in float32).
        S: ``(K, M, d)`` scores, same dtype and device.
        h: bandwidth (positive).
        w: ``(K,)`` weights (MT-SGD: the simplex QP of :func:`stein_task_matrix`'s ``U``), any real
            dtype, same device (read as constants). With ``K = 1`` and ``w = [1]`` this is the SVGD update.

    Returns:
        ``phi`` ``(M, d)`` in ``X``'s dtype and device (particles move along ``+phi``); not differentiable.

    Raises:
        TypeError: as :func:`stein_task_matrix`, and ``w`` not a tensor.
        ValueError: as :func:`stein_task_matrix`, and ``w`` not ``(K,)`` or not finite.
    """
    _check_particles(X)
    _check_scores(X, S, finite=False)
    h = _check_bandwidth(h)
    if not isinstance(w, Tensor):
        raise TypeError(f"w must be a torch.Tensor (K,), got {type(w).__name__}.")
    if w.shape != (S.shape[0],):
        raise ValueError(f"w must have shape ({S.shape[0]},), got {tuple(w.shape)}.")
    return _update(X, S, h, w)


@dataclass
class SteinStep:
    """What one step of :class:`MTSGD` / :class:`MOOSVGD` computed.

    Attributes:
        direction: ``(M, d)`` the update ``phi`` (particles move along ``+phi``; ``.grad`` gets ``-phi``).
        weights: MT-SGD ``(K,)`` (one simplex point); MOO-SVGD ``(M, K)`` (one per particle).
        bandwidth: the kernel bandwidth ``h`` used.
        log_probs: ``(K, M)`` ``log p_i(x_a)`` (up to constants; ``-loss_i`` for ensembles), detached.
        U: MT-SGD's ``(K, K)`` matrix of the QP, float64 (``None`` for MOO-SVGD).
    """

    direction: Tensor
    weights: Tensor
    bandwidth: float
    log_probs: Tensor
    U: Optional[Tensor] = None


Targets = Union[Callable[[Tensor], Tensor], Sequence[Callable[[Tensor], Tensor]], Callable[[torch.nn.Module], Tensor]]


class _ParticleMethod:
    """Shared plumbing: particles as a tensor or as modules, scores by autograd, ``.grad`` writing."""

    def __init__(self, particles: Union[Tensor, Sequence[torch.nn.Module]], targets: Targets, *,
                 bandwidth: Optional[float] = None) -> None:
        if isinstance(particles, Tensor):
            if not particles.is_floating_point() or particles.dim() != 2:
                raise ValueError(f"a particle tensor must be floating with shape (M, d), got "
                                 f"{particles.dtype} {tuple(particles.shape)}.")
            if not particles.requires_grad or not particles.is_leaf:
                raise ValueError("the particle tensor must be a leaf with requires_grad=True "
                                 "(so that an optimizer can update it).")
            self._modules: Optional[List[torch.nn.Module]] = None
            self.particles = particles
        else:
            try:
                mods = list(particles)
            except TypeError:  # a single module (not a ModuleList), a number, ...
                raise TypeError(f"particles must be a tensor (M, d) or a non-empty sequence of torch.nn.Module, "
                                f"got {type(particles).__name__}.") from None
            if not mods or not all(isinstance(m, torch.nn.Module) for m in mods):
                raise TypeError("particles must be a tensor (M, d) or a non-empty sequence of torch.nn.Module.")
            sizes = {tuple(tuple(p.shape) for p in m.parameters() if p.requires_grad) for m in mods}
            if len(sizes) != 1 or not next(iter(sizes)):
                raise ValueError("all particle modules must have the same trainable parameter shapes (and some).")
            self._modules = mods
            self.particles = mods
        if isinstance(targets, (list, tuple)):
            if not targets or not all(callable(t) for t in targets):
                raise TypeError("targets must be a callable or a non-empty sequence of callables.")
        elif not callable(targets):
            raise TypeError(f"targets must be a callable or a sequence of callables, got {type(targets).__name__}.")
        self.targets = targets
        # a float (also for a 0-dim tensor): SteinStep.bandwidth is a number, and no step syncs a device
        self.bandwidth = None if bandwidth is None else _check_bandwidth(bandwidth)
        self.last: Optional[SteinStep] = None

    # ---- particles and scores -------------------------------------------------------------
    def _tensor_scores(self) -> Tuple[Tensor, Tensor, Tensor]:
        X = self.particles.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            if isinstance(self.targets, (list, tuple)):
                lp = torch.stack([t(X).reshape(X.shape[0]) for t in self.targets])  # (K, M)
            else:
                out = self.targets(X)
                if out.dim() != 2 or out.shape[0] != X.shape[0]:
                    raise ValueError(f"a single target callable must return log-densities (M, K) = "
                                     f"({X.shape[0]}, K), got {tuple(out.shape)}.")
                lp = out.T
            # particles do not interact inside log p_i, so the gradient of the sum is every score
            S = torch.stack([torch.autograd.grad(lp[i].sum(), X, retain_graph=i + 1 < lp.shape[0])[0]
                             for i in range(lp.shape[0])])
        return X.detach(), S, lp.detach()

    def _module_scores(self) -> Tuple[Tensor, Tensor, Tensor]:
        rows, scores, lps = [], [], []
        for m in self._modules:
            params = [p for p in m.parameters() if p.requires_grad]
            with torch.enable_grad():
                if isinstance(self.targets, (list, tuple)):
                    losses = torch.stack([t(m).reshape(()) for t in self.targets])
                else:
                    losses = self.targets(m).reshape(-1)
                g = [torch.cat([gi.reshape(-1) for gi in torch.autograd.grad(
                    losses[i], params, retain_graph=i + 1 < losses.shape[0], allow_unused=False)])
                    for i in range(losses.shape[0])]
            rows.append(torch.cat([p.detach().reshape(-1) for p in params]))
            scores.append(-torch.stack(g))  # log p_i = -loss_i
            lps.append(-losses.detach())
        return torch.stack(rows), torch.stack(scores, 1), torch.stack(lps, 1)

    def scores(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``X (M, d)``, ``S (K, M, d)`` and ``log p (K, M)`` at the current particles (detached)."""
        X, S, lp = self._tensor_scores() if self._modules is None else self._module_scores()
        if not bool(torch.isfinite(S).all()):
            if not bool(torch.isfinite(X).all()):  # checked only here: no extra pass on the usual path
                raise ValueError("the particles contain NaN or infinity (a diverged step? lower the learning rate).")
            raise ValueError("a target returned a non-finite score (gradient of its log-density).")
        return X, S, lp

    def _write_grad(self, direction: Tensor) -> None:
        if self._modules is None:
            g = -direction.to(self.particles.dtype)
            if self.particles.grad is None:
                self.particles.grad = g.clone()
            else:
                self.particles.grad.copy_(g)
            return
        for m, row in zip(self._modules, direction):
            offset = 0
            for p in (p for p in m.parameters() if p.requires_grad):
                n = p.numel()
                p.grad = -row[offset:offset + n].reshape(p.shape).to(p.dtype).clone()
                offset += n

    def _h(self, X: Tensor) -> float:
        return self.bandwidth if self.bandwidth is not None else median_bandwidth(X)

    def compute(self) -> SteinStep:
        """The :class:`SteinStep` at the current particles, without touching ``.grad``."""
        raise NotImplementedError

    def backward(self) -> SteinStep:
        """Compute the step and write ``-direction`` into the particles' ``.grad`` (then call ``optimizer.step()``)."""
        step = self.compute()
        self._write_grad(step.direction)
        self.last = step
        return step


class MTSGD(_ParticleMethod):
    r"""Multiple-target sampling gradient descent (Phan et al., NeurIPS 2022, Algorithm 1).

    Each step computes the scores ``S`` ``(K, M, d)``, ``U = stein_task_matrix(X, S, h)`` (in float64 whatever
    the particles' dtype, see :func:`stein_task_matrix`), the one simplex QP ``w* = argmin w'Uw`` (Lemma 1)
    and ``phi* = stein_update(X, S, h, w*)``.

    Args:
        particles: a leaf tensor ``(M, d)`` with ``requires_grad=True`` (sampling), or ``M`` modules of
            one architecture (ensembles; the flattened trainable parameters are the particles).
        targets: for a tensor, a callable ``X (M, d) -> log p (M, K)`` or ``K`` callables ``X -> (M,)``
            (log-densities up to constants); for modules, a callable ``module -> losses (K,)`` or ``K``
            callables ``module -> scalar loss`` (targets ``p_i ~ exp(-loss_i)``).
        bandwidth: the RBF ``h``; ``None`` uses :func:`median_bandwidth` at every step.

    Attributes:
        last: the :class:`SteinStep` of the last :meth:`backward` (``None`` before).

    Raises:
        TypeError: ``particles`` neither a tensor nor a non-empty sequence of modules; ``targets`` not a
            callable or a non-empty sequence of callables; a non-numeric ``bandwidth``.
        ValueError: a particle tensor that is not a floating ``(M, d)`` leaf requiring grad; modules with
            different (or no) trainable parameter shapes; a ``bandwidth`` that is not positive and
            finite. At a step: a target of the wrong shape or with a non-finite score.

    Example::

        X = toy.initial_particles(50).requires_grad_()
        mtsgd = MTSGD(X, toy.log_prob); opt = torch.optim.Adam([X], lr=3e-2)
        for _ in range(1000):
            opt.zero_grad(); mtsgd.backward(); opt.step()
    """

    def compute(self) -> SteinStep:
        """Scores, ``U``, the weights ``w*`` ``(K,)`` and ``phi*`` ``(M, d)`` at the current particles
        (``.grad`` untouched; :meth:`backward` writes it)."""
        X, S, lp = self.scores()
        h = self._h(X)
        U = _task_matrix(X, S, h)  # X, S are detached and checked by scores(); float64
        w = ops.min_norm_simplex(U)
        return SteinStep(direction=_update(X, S, h, w), weights=w.to(X.dtype), bandwidth=h, log_probs=lp, U=U)


class MOOSVGD(_ParticleMethod):
    r"""MOO-SVGD (Liu, Tong & Liu, NeurIPS 2021): a per-particle MGDA direction plus kernel repulsion.

    At particle ``a``: ``w_a = argmin_{w in simplex} |sum_i w_i S[i, a]|^2`` (all ``M`` QPs in one batched
    :func:`torchmoo.ops.min_norm_simplex` call on the Gram matrices from :func:`torchmoo.ops.gram`),
    ``g_a = sum_i w_ai S[i, a]``, and the update is ``phi(x_a) = mean_b [k(x_b, x_a) g_b + alpha
    grad_{x_b} k(x_b, x_a)]``.

    Args:
        particles, targets, bandwidth: as :class:`MTSGD`.
        alpha: repulsion weight, ``>= 0`` (default 1).
        batched_qp: ``False`` solves the ``M`` QPs one call at a time, as the authors' code does (same
            weights; only for measuring what the batched call saves).

    Raises:
        As :class:`MTSGD`, and ``ValueError`` for an ``alpha`` that is not a finite number ``>= 0``,
        ``TypeError`` for a ``batched_qp`` that is not a bool.
    """

    def __init__(self, particles: Union[Tensor, Sequence[torch.nn.Module]], targets: Targets, *,
                 bandwidth: Optional[float] = None, alpha: float = 1.0, batched_qp: bool = True) -> None:
        super().__init__(particles, targets, bandwidth=bandwidth)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be a non-negative finite number, got {alpha!r}.")
        if not isinstance(batched_qp, bool):
            raise TypeError(f"batched_qp must be a bool, got {type(batched_qp).__name__}.")
        self.alpha = float(alpha)
        self.batched_qp = batched_qp

    def compute(self) -> SteinStep:
        """Scores, the per-particle weights ``(M, K)`` and ``phi`` ``(M, d)`` at the current particles
        (``.grad`` untouched; :meth:`backward` writes it)."""
        X, S, lp = self.scores()
        h = self._h(X)
        # (M, K, K), one Gram matrix per particle; gram reads the strided view in place. Half-precision
        # scores get a float32 Gram: |S|^2 overflows float16 long before S does.
        G = ops.gram(S.transpose(0, 1).to(_op_dtype(X)))
        if self.batched_qp:
            W = ops.min_norm_simplex(G)  # (M, K), M QPs in one call
        else:
            W = torch.stack([ops.min_norm_simplex(G[a]) for a in range(G.shape[0])])
        Kmat, _, R = _kernel_terms(X, h)  # in _op_dtype(X), as G
        g = torch.einsum("ak,kad->ad", W.to(Kmat.dtype), S.to(Kmat.dtype))
        direction = ((Kmat @ g + self.alpha * R) / X.shape[0]).to(X.dtype)
        return SteinStep(direction=direction, weights=W.to(X.dtype), bandwidth=h, log_probs=lp)
