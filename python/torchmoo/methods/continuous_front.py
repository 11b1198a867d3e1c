r"""Continuous parametrization of explored Pareto sets (Ma, Du & Matusik, ICML 2020, section 5).

Algorithm 1 (:class:`~torchmoo.methods.ParetoExplorer`) returns discrete Pareto-stationary points
linked to their parents. Section 5 turns them into a continuous set:

* **Families** (Eq. 7): for a point :math:`x_i` and its children :math:`x_{i1}, \dots, x_{iK}`, the
  convex hull :math:`S(x_i) = \{x_i + \sum_j r_j (x_{ij} - x_i) : r \ge 0, \sum_j r_j \le 1\}`
  (:class:`ConvexHullFamily`), justified because a combination of tangent vectors is tangent.
* **Stitching**: families that collide in objective space form a larger front; samples dominated by
  another family are cropped and the traversal switches family at a *stitching point*.
* **A scalar** :math:`t \in [-1, 1]` traverses the stitched front of two objectives, from the solution
  favoring the first objective (``t = -1``) to the one favoring the second (``t = 1``)
  (:class:`ContinuousFront`, built by :func:`stitch`).

For two objectives the front is a curve and the tangent directions of a point all map to it, so the
1-faces of the hulls (the segments from each point to each child: with ``K = 1`` the chain of the
paper, a piecewise-linear set in parameter space) carry the front; they are sampled at
``resolution`` steps each. ``t`` grows with the arc length of the front in objective space; along a
segment the parameters are interpolated linearly (they stay in the family), at a stitching point
they jump to the other family, at the middle of the gap in objective space.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from torchmoo import metrics
from torchmoo.autograd import Losses, _stack_losses, unflatten
from torchmoo.methods.pareto_exploration import _restore, _save

if TYPE_CHECKING:  # pareto_exploration imports this module; matplotlib loads only when plotting
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from torchmoo.methods.pareto_exploration import ParetoExplorer

__all__ = ["ConvexHullFamily", "ContinuousFront", "stitch", "plot_exploration"]


class ConvexHullFamily:
    r"""The local Pareto set of Eq. 7: the convex hull of ``center`` and its ``K`` children.

    Args:
        center: ``(n,)`` the parameters of a Pareto-stationary point :math:`x_i`.
        children: ``(K, n)`` the parameters of its children :math:`x_{ij}`.

    A point of the family is :math:`x_i + \sum_j r_j v_j` with :math:`v_j = x_{ij} - x_i`,
    :math:`r \ge 0`, :math:`\sum_j r_j \le 1`.

    Raises:
        TypeError: ``center`` or ``children`` is not a tensor.
        ValueError: ``center`` not ``(n,)`` or ``children`` not ``(K, n)`` with ``K >= 1``.
    """

    def __init__(self, center: Tensor, children: Tensor) -> None:
        if not isinstance(center, Tensor) or not isinstance(children, Tensor):
            raise TypeError("center and children must be tensors.")
        if center.dim() != 1 or children.dim() != 2 or children.shape[1] != center.shape[0] or not len(children):
            raise ValueError(
                f"center must be (n,) and children (K, n) with K >= 1; got {tuple(center.shape)} and "
                f"{tuple(children.shape)}."
            )
        self.center = center.detach()
        self.vectors = (children.detach() - self.center).contiguous()  # v_{i -> ij}

    @property
    def num_children(self) -> int:
        """``K``, the number of children (vertices besides the center)."""
        return self.vectors.shape[0]

    def point(self, r: Union[Tensor, Sequence[float], Sequence[Sequence[float]]]) -> Tensor:
        """Parameters at hull coordinates ``r`` (``(K,)`` -> ``(n,)``, or ``(B, K)`` -> ``(B, n)``), in the
        dtype and on the device of ``center``.

        Raises:
            ValueError: ``r`` of the wrong length, negative, or summing to more than 1 (outside Eq. 7).
        """
        r = torch.as_tensor(r, dtype=self.vectors.dtype, device=self.vectors.device)
        if r.dim() not in (1, 2) or r.shape[-1] != self.num_children:
            raise ValueError(
                f"r must have shape ({self.num_children},) or (B, {self.num_children}), got {tuple(r.shape)}."
            )
        eps = 1e-12 if r.dtype == torch.float64 else 1e-6
        if not bool(torch.isfinite(r).all()) or bool((r < -eps).any()) or bool((r.sum(-1) > 1 + eps).any()):
            raise ValueError("r must be finite, >= 0 and sum to at most 1 (a point of the convex hull).")
        return self.center + r @ self.vectors

    def sample(self, num: int, *, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """``num`` points uniform in the hull (simplex coordinates Dirichlet(1)): ``(points (num, n), r (num, K))``.

        Raises:
            ValueError: ``num`` is not an int ``>= 1``.
        """
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"num must be an int >= 1, got {num!r}.")
        u = torch.rand(num, self.num_children + 1, generator=generator, dtype=torch.float64)
        e = -torch.log(u.clamp_min(1e-300))
        r = (e / e.sum(1, keepdim=True))[:, 1:].to(self.vectors.dtype).to(self.vectors.device)
        return self.point(r), r


class ContinuousFront:
    """A stitched, continuous approximation of the Pareto front of two objectives (see :func:`stitch`).

    Attributes:
        node_params: ``(P, n)`` parameters of the explored points of all explorers (global indices).
        node_owner: ``P`` pairs ``(explorer index, point index)``.
        edges: ``(E, 2)`` parent -> child node indices (the segments of the families).
        sample_a, sample_b, sample_r: a sample's parameters are ``(1 - r) x_a + r x_b`` (``(S,)`` each).
        values: ``(S, 2)`` objective values of every sample (float64).
        kept: ``(S,)`` bool, the samples not dominated by any other (the rest is cropped); copies of
            one objective vector (e.g. a seed shared by two explorers) are all kept.
        order: ``(L,)`` kept samples in traversal order (first objective increasing).
        t: ``(L,)`` their parameter ``t`` in [-1, 1].
        segment: ``(L - 1,)`` bool: consecutive kept samples joined by a segment of one family (True)
            or by a stitching point (False).
        evaluations: objective evaluations spent building the front.

    Built by :func:`stitch` (its constructor takes the sampled segments; it is not meant to be called
    directly). ``len(front)`` is the number ``L`` of kept samples.

    Raises:
        ValueError: the values do not have two objectives (a scalar ``t`` parametrizes a curve).
    """

    def __init__(self, node_params: Tensor, node_owner: List[Tuple[int, int]], edges: Tensor, sample_a: Tensor,
                 sample_b: Tensor, sample_r: Tensor, values: Tensor, members: List[List[Tuple[int, int]]],
                 evaluations: int, exploration_objectives: bool) -> None:
        self.node_params = node_params
        self.node_owner = node_owner
        self.edges = edges
        self.sample_a, self.sample_b, self.sample_r = sample_a, sample_b, sample_r
        self.values = values
        self.evaluations = evaluations
        self.exploration_objectives = exploration_objectives
        if values.shape[1] != 2:
            raise ValueError(
                f"a scalar t parametrizes the front of two objectives; got {values.shape[1]}. For more objectives "
                "use the families (ParetoExplorer.family) directly."
            )
        self.kept = metrics.nondominated(values, return_mask=True, keep_weakly=True)  # copies stay (shared seeds)
        idx = torch.nonzero(self.kept).flatten()
        key = values[idx]
        # sort by f1, ties by f2 (stable): the kept points then have f2 decreasing
        perm = sorted(range(idx.numel()), key=lambda i: (float(key[i, 0]), float(key[i, 1])))
        self.order = idx[torch.tensor(perm, dtype=torch.long)] if perm else idx
        seg = []
        for u, v in zip(self.order[:-1].tolist(), self.order[1:].tolist()):
            mu = {e: p for e, p in members[u]}
            adjacent = any(e in mu and abs(mu[e] - p) == 1 for e, p in members[v])
            # two copies of one node (same parameters): no jump between them
            copies = bool(sample_a[u] == sample_b[u]) and bool(sample_a[v] == sample_b[v]) and torch.equal(
                node_params[int(sample_a[u])], node_params[int(sample_a[v])])
            seg.append(adjacent or copies)
        self.segment = torch.tensor(seg, dtype=torch.bool)
        ordered = values[self.order]
        steps = (ordered[1:] - ordered[:-1]).norm(dim=1) if len(ordered) > 1 else ordered.new_zeros(0)
        cum = torch.cat([ordered.new_zeros(1), steps.cumsum(0)])
        total = float(cum[-1]) if len(cum) else 0.0
        self.t = (-1.0 + 2.0 * cum / total) if total > 0 else torch.zeros_like(cum)
        self.node_sample = torch.full((node_params.shape[0],), -1, dtype=torch.long)
        for s in range(sample_a.numel()):
            if int(sample_a[s]) == int(sample_b[s]):
                self.node_sample[int(sample_a[s])] = s

    # ---- queries -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.order.numel())

    @property
    def front_values(self) -> Tensor:
        """``(L, 2)`` objective values of the kept samples in traversal order."""
        return self.values[self.order]

    @property
    def cropped_values(self) -> Tensor:
        """``(S - L, 2)`` objective values of the samples cropped as dominated."""
        return self.values[~self.kept]

    @property
    def num_stitches(self) -> int:
        """Stitching points along the traversal (switches of family or segment)."""
        return int((~self.segment).sum())

    def sample_params(self, s: int) -> Tensor:
        """``(n,)`` parameters of sample ``s``."""
        a, b, r = int(self.sample_a[s]), int(self.sample_b[s]), float(self.sample_r[s])
        if a == b:
            return self.node_params[a].clone()
        return (1.0 - r) * self.node_params[a] + r * self.node_params[b]

    def point_t(self, point: int, explorer: int = 0) -> Optional[float]:
        """``t`` of an explored point, or ``None`` when it was cropped (dominated by another family).

        Raises:
            ValueError: no point ``point`` of explorer ``explorer`` in this front.
        """
        try:
            node = self.node_owner.index((explorer, point))
        except ValueError:
            raise ValueError(f"no point {point} of explorer {explorer} in this front.") from None
        s = int(self.node_sample[node])
        pos = torch.nonzero(self.order == s).flatten()
        return float(self.t[pos[0]]) if pos.numel() else None

    def _locate(self, t: float) -> Tuple[int, int, float]:
        if isinstance(t, Tensor) and t.numel() == 1:
            t = float(t)
        # numbers.Real: also numpy scalars (np.float32 is not a float)
        if not isinstance(t, numbers.Real) or isinstance(t, bool) or not -1.0 <= float(t) <= 1.0:
            raise ValueError(f"t must be a number in [-1, 1], got {t!r}.")
        if len(self) == 0:
            raise ValueError("the front is empty.")
        if len(self) == 1:
            return 0, 0, 0.0
        i = int(torch.searchsorted(self.t.contiguous(), torch.tensor([float(t)], dtype=self.t.dtype), right=True)) - 1
        i = min(max(i, 0), len(self) - 2)
        t0, t1 = float(self.t[i]), float(self.t[i + 1])
        lam = 0.0 if t1 <= t0 else min(max((float(t) - t0) / (t1 - t0), 0.0), 1.0)
        return i, i + 1, lam

    def solution(self, t: float) -> Tensor:
        """``(n,)`` parameters at ``t`` in [-1, 1]: linear along a segment, the nearer end across a stitch.

        Raises:
            ValueError: ``t`` is not a number in [-1, 1], or the front is empty.
        """
        i, j, lam = self._locate(t)
        u, v = int(self.order[i]), int(self.order[j])
        if i == j:
            return self.sample_params(u)
        if bool(self.segment[i]):
            return (1.0 - lam) * self.sample_params(u) + lam * self.sample_params(v)
        return self.sample_params(u if lam <= 0.5 else v)

    def objectives_at(self, t: float) -> Tensor:
        """``(2,)`` the objective values at ``t`` interpolated between the samples (a first-order
        estimate along a segment, the nearer end across a stitch); evaluate :meth:`solution` for
        exact values. Float64 on the CPU; raises as :meth:`solution`."""
        i, j, lam = self._locate(t)
        u, v = int(self.order[i]), int(self.order[j])
        if i == j or not bool(self.segment[i]):
            return self.values[u if lam <= 0.5 else v].clone()
        return (1.0 - lam) * self.values[u] + lam * self.values[v]

    def hypervolume(self, ref: Union[Tensor, Sequence[float], float]) -> float:
        """Hypervolume of the kept samples (minimization) with reference point ``ref`` (``(2,)`` or a
        scalar), by :func:`torchmoo.metrics.hypervolume` (which raises ``ValueError`` for a bad ``ref``)."""
        return metrics.hypervolume(self.front_values, ref)


def stitch(explorers: Sequence[ParetoExplorer], *, objectives: Optional[Callable[[], Losses]] = None,
           resolution: int = 8) -> ContinuousFront:
    """Builds the continuous front of one or several explorations (families from different seeds).

    Every parent -> child segment of every explorer is sampled at ``resolution`` equal steps (its
    interior points cost one objective evaluation each; the explored points are reused, or
    re-evaluated when ``objectives`` is given). Samples dominated by any other sample are cropped;
    the rest is ordered by the first objective and given ``t`` in [-1, 1] by arc length in
    objective space.

    Args:
        explorers: :class:`~torchmoo.methods.ParetoExplorer` objects over the same parameters (same
            model), each after :meth:`~torchmoo.methods.ParetoExplorer.explore`.
        objectives: closure evaluating the two objectives at the current parameters (default: the
            first explorer's exploration objectives), e.g. test losses.
        resolution: steps per segment (``>= 1``).

    Returns:
        :class:`ContinuousFront`. The model's parameters (and the explorers' buffers) are restored afterwards.

    Raises:
        ValueError: no explorer, an explorer without points, explorers over different numbers of
            parameters, ``resolution`` not an int ``>= 1``, objectives that are not finite at a sample, or
            other than two objectives.
        TypeError: ``objectives`` is not callable.

    Example:
        >>> front = stitch([explorer_a, explorer_b], resolution=8)   # two seeds, one front
        >>> x = front.solution(0.0)                                  # (n,) parameters mid-front
    """
    explorers = list(explorers)
    if not explorers:
        raise ValueError("stitch needs at least one explorer.")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be an int >= 1, got {resolution!r}.")
    params = explorers[0].params
    n = sum(p.numel() for p in params)
    for i, ex in enumerate(explorers):
        if not ex.points:
            raise ValueError(f"explorer {i} has no points: call explore() first.")
        if ex.points[0].params.numel() != n:
            raise ValueError(f"explorer {i} explores {ex.points[0].params.numel()} parameters, explorer 0 {n}.")
    exploration = objectives is None
    closure = explorers[0].objectives if objectives is None else objectives
    if not callable(closure):
        raise TypeError(f"objectives must be callable, got {type(closure).__name__}.")

    node_params, owner, node_index, edges = [], [], {}, []
    for ei, ex in enumerate(explorers):
        for p in ex.points:
            node_index[(ei, p.index)] = len(node_params)
            node_params.append(p.params)
            owner.append((ei, p.index))
        for p in ex.points:
            if p.parent is not None:
                edges.append((node_index[(ei, p.parent)], node_index[(ei, p.index)]))
    X = torch.stack(node_params)

    # the parameters, and the buffers (batch-norm statistics in training mode) that move at every
    # evaluation, are restored afterwards
    buffers = list({id(b): b for ex in explorers for b in getattr(ex, "buffers", [])}.values())
    state = list(params) + buffers
    saved = _save(state)
    evaluations = 0

    def evaluate(vec: Tensor) -> Tensor:
        nonlocal evaluations
        with torch.no_grad():
            for p, piece in zip(params, unflatten(vec, params)):
                p.copy_(piece)
            out = _stack_losses(closure()).detach().to(torch.float64).cpu()
        evaluations += 1
        return out

    a_list, b_list, r_list, vals, members = [], [], [], [], []
    try:
        for node in range(X.shape[0]):
            a_list.append(node)
            b_list.append(node)
            r_list.append(0.0)
            if exploration:
                ei, pi = owner[node]
                vals.append(explorers[ei].points[pi].losses.detach().to(torch.float64).cpu())
            else:
                vals.append(evaluate(X[node]))
            members.append([(e, 0) for e, (a, _) in enumerate(edges) if a == node]
                           + [(e, resolution) for e, (_, b) in enumerate(edges) if b == node])
        for e, (a, b) in enumerate(edges):
            for j in range(1, resolution):
                r = j / resolution
                a_list.append(a)
                b_list.append(b)
                r_list.append(r)
                vals.append(evaluate((1.0 - r) * X[a] + r * X[b]))
                members.append([(e, j)])
    finally:
        _restore(state, saved)
    values = torch.stack(vals)
    # Nodes with equal parameters (a seed shared by several explorers) are one point of the front: each
    # copy carries the segments of all, so that the traversal goes on through it instead of jumping.
    group = list(range(X.shape[0]))
    for i in range(X.shape[0]):
        for j in range(i):
            if group[j] == j and torch.equal(values[i], values[j]) and torch.equal(X[i], X[j]):
                group[i] = j
                break
    merged = [sorted({mem for k in range(X.shape[0]) if group[k] == group[i] for mem in members[k]})
              for i in range(X.shape[0])]
    members[:X.shape[0]] = merged
    if not bool(torch.isfinite(values).all()):
        raise ValueError("the objectives are not finite at some sample of the front.")
    return ContinuousFront(
        X, owner, torch.tensor(edges, dtype=torch.long).reshape(-1, 2), torch.tensor(a_list), torch.tensor(b_list),
        torch.tensor(r_list, dtype=torch.float64), values, members, evaluations, exploration,
    )


def plot_exploration(explorers: Sequence[ParetoExplorer], front: Optional[ContinuousFront] = None, *,
                     ax: Optional[Axes] = None, reference: Optional[Tensor] = None,
                     labels: Sequence[str] = ("f1", "f2"), colorbar: bool = True) -> Figure:
    """Draws explorations and their continuous front in the plane of two objectives.

    Seeds are red stars, kept points red circles, rejected children grey crosses; when the front
    was built from the exploration objectives, thin orange arrows go from each parent to the point
    its expansion reached and red ones on to the optimized child (the paper's figure 3). The front
    is drawn colored by ``t`` (blue = -1 to red = 1) and its cropped samples in light grey.
    Returns the matplotlib figure.

    Raises:
        ValueError: an explorer without points, or whose points do not have two objectives.
    """
    for i, ex in enumerate(explorers):  # checked before a figure is made
        if not ex.points:
            raise ValueError(f"explorer {i} has no points: call explore() first.")
        m = ex.points[0].losses.numel()
        if m != 2:
            raise ValueError(f"the plot shows two objectives; explorer {i} has {m}.")
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
    else:
        fig = ax.figure
    if reference is not None:
        ref = torch.as_tensor(reference).detach().cpu().double()
        ax.plot(ref[:, 0], ref[:, 1], "k-.", lw=1, label="reference front")
    arrows = front is None or front.exploration_objectives
    if front is not None and len(front) > 0:
        crop = front.cropped_values
        if crop.numel():
            ax.scatter(crop[:, 0], crop[:, 1], s=6, c="0.8", label="cropped (dominated)")
        fv = front.front_values
        segs = [[fv[i].tolist(), fv[i + 1].tolist()] for i in range(len(front) - 1) if bool(front.segment[i])]
        mids = [float(front.t[i] + front.t[i + 1]) / 2 for i in range(len(front) - 1) if bool(front.segment[i])]
        norm = matplotlib.colors.Normalize(-1.0, 1.0)
        if segs:
            lc = LineCollection(segs, cmap="coolwarm", norm=norm, linewidths=2)
            lc.set_array(torch.tensor(mids).numpy())
            ax.add_collection(lc)
        sc = ax.scatter(fv[:, 0], fv[:, 1], c=front.t.numpy(), cmap="coolwarm", norm=norm, s=10, zorder=3)
        if colorbar:
            fig.colorbar(sc, ax=ax, label="t")
    for ei, ex in enumerate(explorers):
        if front is not None:
            node_vals = {owner: front.values[int(front.node_sample[k])] for k, owner in enumerate(front.node_owner)}
            val = lambda p: node_vals[(ei, p.index)]  # noqa: E731
        else:
            val = lambda p: p.losses.detach().double().cpu()  # noqa: E731
        if arrows:
            for p in ex.points[1:] + ex.rejected:
                if p.parent is None or p.expanded_losses is None:
                    continue
                src = ex.points[p.parent].losses.detach().double().cpu()
                mid = p.expanded_losses.detach().double().cpu()
                dst = p.losses.detach().double().cpu()
                ax.annotate("", xy=mid.tolist(), xytext=src.tolist(),
                            arrowprops=dict(arrowstyle="->", color="orange", lw=0.8))
                ax.annotate("", xy=dst.tolist(), xytext=mid.tolist(),
                            arrowprops=dict(arrowstyle="->", color="red", lw=0.8, alpha=0.6))
                ax.scatter([float(mid[0])], [float(mid[1])], marker="*", s=25, c="orange", zorder=4)
        if ex.rejected and arrows:
            rv = torch.stack([p.losses.detach().double().cpu() for p in ex.rejected])
            ax.scatter(rv[:, 0], rv[:, 1], marker="x", s=20, c="0.5", zorder=4,
                       label="rejected (dominated)" if ei == 0 else None)
        pts = torch.stack([val(p) for p in ex.points])
        ax.scatter(pts[1:, 0], pts[1:, 1], s=22, facecolors="none", edgecolors="red", zorder=5,
                   label="explored points" if ei == 0 else None)
        ax.scatter(pts[:1, 0], pts[:1, 1], marker="*", s=120, c="red", edgecolors="k", zorder=6,
                   label="seed" if ei == 0 else None)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.legend(fontsize=7, loc="best")
    return fig
