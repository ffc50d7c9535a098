"""``Layout``: the sequence order of the tokens of a 2-D or 3-D grid."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .curves import hilbert_curve, rowmajor_curve, tiled_curve

Order = Literal["hilbert", "rowmajor", "tiled"]
ORDERS = ("hilbert", "rowmajor", "tiled")


@lru_cache(maxsize=64)
def _order_coords(shape: tuple[int, ...], order: str, tile: tuple[int, ...] | None) -> np.ndarray:
    if order == "hilbert":
        return hilbert_curve(shape)
    if order == "rowmajor":
        return rowmajor_curve(shape)
    return tiled_curve(shape, tile)


@lru_cache(maxsize=64)
def _device_tables(
    shape: tuple[int, ...], order: str, tile: tuple[int, ...] | None, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    coords = torch.from_numpy(_order_coords(shape, order, tile)).to(device)
    strides = torch.tensor([int(np.prod(shape[k + 1 :])) for k in range(len(shape))], device=device)
    perm = (coords * strides).sum(1)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=device)
    return coords, perm, inverse


def _as_device(device: torch.device | str | None) -> torch.device:
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class Layout:
    """The order in which the tokens of a grid ``shape`` (``(H, W)`` or ``(T, H, W)``) are laid out.

    Args:
        shape: grid sizes, 2 or 3 positive ints (any sizes, not only powers of two or squares).
        order: ``"hilbert"`` (generalized Hilbert curve), ``"rowmajor"`` (identity) or
            ``"tiled"`` (row-major tiles of ``tile``, row-major inside each tile).
        tile: tile shape for ``order="tiled"``; default 8 along every axis.
        device: where ``perm``, ``coords`` and the derived tables live.

    Attributes (all built once per (shape, order, tile, device) and cached):
        perm: LongTensor ``[N]``; ``perm[i]`` is the row-major index of the token at position ``i``.
        coords: LongTensor ``[N, ndim]``; grid coordinates of sequence position ``i``.
        inverse: LongTensor ``[N]``; ``inverse[perm[i]] == i``.
    """

    def __init__(
        self,
        shape: tuple[int, ...] | list[int],
        order: Order = "hilbert",
        tile: tuple[int, ...] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (2, 3) or any(s < 1 for s in shape):
            raise ValueError(f"shape must be 2 or 3 positive ints (H, W) or (T, H, W), got {shape}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if order == "tiled":
            tile = tuple(int(t) for t in (tile or (8,) * len(shape)))
            if len(tile) != len(shape) or any(t < 1 for t in tile):
                raise ValueError(f"tile must be {len(shape)} positive ints, got {tile}")
        elif tile is not None:
            raise ValueError(f"tile is only used with order='tiled', got order={order!r}")
        self.shape = shape
        self.order = order
        self.tile = tile
        self.device = _as_device(device)
        self.coords, self.perm, self.inverse = _device_tables(shape, order, tile, self.device)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        """Number of tokens ``N``."""
        return self.perm.numel()

    def to(self, device: torch.device | str) -> Layout:
        return Layout(self.shape, self.order, self.tile, device)

    def _key(self) -> tuple:
        return (self.shape, self.order, self.tile, self.device)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        tile = f", tile={self.tile}" if self.tile else ""
        return f"Layout(shape={self.shape}, order={self.order!r}{tile})"

    def flatten(self, x: Tensor) -> Tensor:
        """``[B, *shape, C]`` grid tensor -> ``[B, N, C]`` in sequence order."""
        if x.dim() != self.ndim + 2 or tuple(x.shape[1:-1]) != self.shape:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, self.shape))}, C], got {list(x.shape)}")
        return x.flatten(1, -2).index_select(1, self.perm.to(x.device))

    def unflatten(self, x: Tensor) -> Tensor:
        """``[B, N, C]`` in sequence order -> ``[B, *shape, C]``; the exact inverse of ``flatten``."""
        if x.dim() != 3 or x.shape[1] != self.numel:
            raise ValueError(f"x must have shape [B, {self.numel}, C], got {list(x.shape)}")
        rows = x.index_select(1, self.inverse.to(x.device))
        return rows.reshape(x.shape[0], *self.shape, x.shape[-1])
