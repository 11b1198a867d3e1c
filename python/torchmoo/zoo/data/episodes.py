"""N-way K-shot episodes over any labelled data set (PSST; SIMOL 5.2; prototypical networks, MAML)."""

from __future__ import annotations

from typing import Iterator, List, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

__all__ = ["labels_of", "EpisodeSampler", "split_episode"]


def labels_of(dataset: Dataset) -> Tensor:
    """The ``(N,)`` integer labels of a data set: its ``targets`` attribute when it has one, else the
    second element of every item (which loads every item once), as a tensor."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [dataset[i][1] for i in range(len(dataset))]  # type: ignore[arg-type]
    return torch.as_tensor(targets)


class EpisodeSampler(Sampler[List[int]]):
    """Yields episodes as lists of dataset indices, for ``DataLoader(dataset, batch_sampler=sampler)``.

    Each episode draws ``n_way`` classes and, from each, ``k_shot + n_query`` distinct examples; the
    list is the support set (class by class, ``k_shot`` each) followed by the query set (class by
    class, ``n_query`` each). :func:`split_episode` cuts a loaded batch back into support and query
    with episode labels ``0..n_way-1`` in the order the classes were drawn.

    Episode ``e`` depends only on ``(seed, epoch, e)``: iterating twice gives the same episodes (fixed
    evaluation tasks); call :meth:`set_epoch` to draw new ones for training.

    Args:
        labels: ``(N,)`` integer labels, or a data set (see :func:`labels_of`).
        n_way: classes per episode.
        k_shot: support examples per class.
        n_query: query examples per class.
        num_episodes: episodes per iteration.
        seed: seed of the episodes.

    Raises:
        TypeError: ``labels`` are not integers.
        ValueError: ``labels`` not 1-D; a count that is not an int of the allowed range (``n_way``,
            ``k_shot``, ``num_episodes >= 1``, ``n_query >= 0``), ``seed`` not an int ``>= 0``; fewer than
            ``n_way`` classes with ``k_shot + n_query`` examples.

    Example:
        >>> sampler = EpisodeSampler(dataset, n_way=5, k_shot=1, n_query=15, num_episodes=600)
        >>> for x, _ in DataLoader(dataset, batch_sampler=sampler):
        ...     xs, ys, xq, yq = split_episode(x, 5, 1, 15)
    """

    def __init__(
        self,
        labels: Union[Tensor, Sequence[int], Dataset],
        n_way: int,
        k_shot: int,
        n_query: int = 15,
        num_episodes: int = 1000,
        seed: int = 0,
    ) -> None:
        if isinstance(labels, Dataset):
            labels = labels_of(labels)
        labels = torch.as_tensor(labels)
        if labels.dim() != 1:
            raise ValueError(f"labels must be one class per example, shape (N,); got shape {tuple(labels.shape)}.")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(f"labels must be integers, got {labels.dtype}.")
        for name, v, low in (("n_way", n_way, 1), ("k_shot", k_shot, 1), ("n_query", n_query, 0),
                             ("num_episodes", num_episodes, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}.")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
        need = k_shot + n_query
        classes, counts = torch.unique(labels, return_counts=True)
        eligible = classes[counts >= need]
        if eligible.numel() < n_way:
            raise ValueError(
                f"a {n_way}-way episode with {k_shot} shots and {n_query} queries needs {n_way} classes with at "
                f"least {need} examples each; only {eligible.numel()} of the {classes.numel()} classes have that many."
            )
        self.n_way, self.k_shot, self.n_query, self.num_episodes, self.seed = n_way, k_shot, n_query, num_episodes, seed
        self.classes = eligible
        self._members = [torch.nonzero(labels == c).flatten() for c in eligible.tolist()]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw a different set of episodes (one per epoch) on the next iteration."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_episodes

    def episode(self, e: int) -> List[int]:
        """The indices of episode ``e`` of the current epoch."""
        g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_033 + e) % (2**63))
        chosen = torch.randperm(len(self._members), generator=g)[: self.n_way]
        support: List[int] = []
        query: List[int] = []
        for c in chosen.tolist():
            members = self._members[c]
            pick = members[torch.randperm(members.numel(), generator=g)[: self.k_shot + self.n_query]]
            support += pick[: self.k_shot].tolist()
            query += pick[self.k_shot :].tolist()
        return support + query

    def __iter__(self) -> Iterator[List[int]]:
        for e in range(self.num_episodes):
            yield self.episode(e)


def split_episode(x: Tensor, n_way: int, k_shot: int, n_query: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Cut an episode batch ``(n_way * (k_shot + n_query), ...)`` laid out by :class:`EpisodeSampler`
    into ``(x_support, y_support, x_query, y_query)`` with episode labels in ``0..n_way-1``.

    Returns:
        ``x_support`` ``(n_way * k_shot, ...)`` and ``x_query`` ``(n_way * n_query, ...)`` (views of
        ``x``), ``y_support`` ``(n_way * k_shot,)`` and ``y_query`` ``(n_way * n_query,)`` int64 on
        ``x``'s device.

    Raises:
        ValueError: ``x`` does not have ``n_way * (k_shot + n_query)`` rows.
    """
    n_support = n_way * k_shot
    if x.shape[0] != n_way * (k_shot + n_query):
        raise ValueError(
            f"an episode of {n_way} ways, {k_shot} shots and {n_query} queries has {n_way * (k_shot + n_query)} "
            f"examples, got {x.shape[0]}."
        )
    y_support = torch.arange(n_way, device=x.device).repeat_interleave(k_shot)
    y_query = torch.arange(n_way, device=x.device).repeat_interleave(n_query)
    return x[:n_support], y_support, x[n_support:], y_query
