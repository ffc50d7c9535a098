"""Relative position bias: a learned score offset per head and per (clamped) grid offset."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .patterns import GridPattern, Neighborhood, Pattern, SequencePattern, Window2D

__all__ = ["RelativeBias", "covering_radius", "offset_index"]


class RelativeBias(NamedTuple):
    """Adds ``table[h, *(clamp(coords[i] - coords[j], -R, R) + R)]`` to the score of query ``i``
    and key ``j`` in head ``h``, with ``R = (table.shape[1:] - 1) / 2`` per axis.

    Args (fields):
        table: ``[heads, 2R_0 + 1, ..., 2R_{A-1} + 1]`` float tensor (learnable).
        coords: LongTensor ``[N, A]``, the grid coordinates of each sequence position (e.g.
            ``layout.coords``).
    """

    table: Tensor
    coords: Tensor

    @property
    def radius(self) -> tuple[int, ...]:
        return tuple((s - 1) // 2 for s in self.table.shape[1:])

    def check(self, heads: int, seq_len: int) -> None:
        t, c = self.table, self.coords
        if c.dim() != 2 or c.shape[0] != seq_len:
            raise ValueError(f"bias.coords must have shape [N={seq_len}, A], got {list(c.shape)}")
        if t.dim() != 1 + c.shape[1] or t.shape[0] != heads or any(s % 2 == 0 for s in t.shape[1:]):
            raise ValueError(f"bias.table must have shape [heads={heads}, 2R+1 per axis "
                             f"({c.shape[1]} axes)], got {list(t.shape)}")

    def flat_index(self, i: Tensor, j: Tensor) -> Tensor:
        """Index into ``table.flatten(1)`` for each broadcast pair ``(i, j)``."""
        return offset_index(self.coords.to(i.device), self.radius, i, j)

    def values(self, i: Tensor, j: Tensor) -> Tensor:
        """``[heads, *broadcast(i, j)]`` bias of each pair."""
        index = self.flat_index(i, j)
        return self.table.flatten(1)[:, index.reshape(-1)].reshape(-1, *index.shape)


def covering_radius(pattern: Pattern, coords: Tensor) -> tuple[int, ...] | None:
    """Per grid axis, a radius ``R`` with ``|coords[i] - coords[j]| <= R`` for every pair that
    ``pattern`` attends, sequence positions ``i, j`` having grid coordinates ``coords`` ``[N, A]``.

    Sequence patterns (``Window``, ``Slide``): the exact maximum over the attended pairs
    (``window`` vectorized passes over the ``N`` queries). Grid patterns: the bound of their
    geometry, ``(kernel - 1) * dilation`` for ``Neighborhood`` and ``window_size - 1`` for
    ``Window2D``, when ``coords`` are those of the pattern's layout; None for other coords.
    """
    if isinstance(pattern, GridPattern):
        if not torch.equal(coords.cpu(), pattern.layout.coords.cpu()):
            return None
        if isinstance(pattern, Neighborhood):
            return tuple((k - 1) * d for k, d in zip(pattern.kernel, pattern.dil))
        if isinstance(pattern, Window2D):
            return tuple(w - 1 for w in pattern.size)
    if not isinstance(pattern, SequencePattern):
        raise ValueError(f"pattern must be a hilbertattn pattern, got {type(pattern).__name__}")
    coords = coords.cpu()
    n = coords.shape[0]
    pattern.check(n)
    first, last = pattern.key_range(torch.arange(n), n)
    radius = torch.zeros(coords.shape[1], dtype=torch.long)
    # Every pattern here attends at most `window` consecutive keys: visit them by their rank
    # (ranks past a query's last key repeat the last key, which changes no maximum).
    for rank in range(pattern.window):
        keys = torch.minimum(first + rank, last)
        radius = torch.maximum(radius, (coords - coords[keys]).abs().amax(0))
    return tuple(int(r) for r in radius)


def offset_index(coords: Tensor, radius: tuple[int, ...], i: Tensor, j: Tensor) -> Tensor:
    """Flat index, row-major over a table of ``2 r + 1`` entries per axis, of the offset
    ``coords[i] - coords[j]`` clamped to ``[-r, r]`` on each axis, for every broadcast pair of
    sequence positions ``(i, j)`` (``coords``: ``[N, A]`` on the device of ``i``)."""
    index = torch.zeros((), dtype=torch.long, device=i.device)
    for a, r in enumerate(radius):
        offset = (coords[i, a] - coords[j, a]).clamp(-r, r) + r
        index = index * (2 * r + 1) + offset
    return index
