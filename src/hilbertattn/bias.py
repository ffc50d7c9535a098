"""Relative position bias: a learned score offset per head and per (clamped) grid offset."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["RelativeBias"]


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
        coords = self.coords.to(i.device)
        index = torch.zeros((), dtype=torch.long, device=i.device)
        for a, r in enumerate(self.radius):
            offset = (coords[i, a] - coords[j, a]).clamp(-r, r) + r
            index = index * (2 * r + 1) + offset
        return index

    def values(self, i: Tensor, j: Tensor) -> Tensor:
        """``[heads, *broadcast(i, j)]`` bias of each pair."""
        index = self.flat_index(i, j)
        return self.table.flatten(1)[:, index.reshape(-1)].reshape(-1, *index.shape)
