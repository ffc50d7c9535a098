"""Space-filling orders for 2-D rectangles and 3-D boxes of any size.

Every function returns an int64 NumPy array ``[N, ndim]`` of grid coordinates in visiting order
(axis 0 first: ``(r, c)`` or ``(t, r, c)``).

The generalized Hilbert curve splits a box recursively, as the classic curve does, but into
halves of unequal size when a side is not a power of two; odd halves are nudged to be even so
that the pieces still join edge to edge. Each piece is the same curve on a smaller box, seen
through a signed permutation of the axes, so the curve of every distinct box size is computed once
and reused: a 1024 x 1024 curve needs a few dozen NumPy calls, not a million Python steps.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# A piece of the recursion: (origin, axes). ``axes`` lists the piece's own axes (major first)
# as signed vectors in the parent's local frame; their lengths are the piece's side lengths.
_Piece = tuple[np.ndarray, list[np.ndarray]]


def _sign(v: np.ndarray) -> np.ndarray:
    return np.sign(v).astype(np.int64)


def _length(v: np.ndarray) -> int:
    return int(np.abs(v).sum())


def _half(v: np.ndarray, force_even_above: int = 2) -> np.ndarray:
    """Half of a side vector, rounded to an even length when the side is longer than 2."""
    n = _length(v)
    h = n // 2
    if h % 2 and n > force_even_above:
        h += 1
    return _sign(v) * h


def _pieces_2d(w: int, h: int) -> list[_Piece]:
    a, b = np.array([w, 0]), np.array([0, h])
    da, db = _sign(a), _sign(b)
    if 2 * w > 3 * h:  # long rectangle: two pieces side by side along the major axis
        a2 = _half(a)
        return [(np.zeros(2, np.int64), [a2, b]), (a2, [a - a2, b])]
    a2, b2 = _sign(a) * (w // 2), _half(b)
    return [
        (np.zeros(2, np.int64), [b2, a2]),
        (b2, [a, b - b2]),
        ((a - da) + (b2 - db), [-b2, -(a - a2)]),
    ]


def _pieces_3d(w: int, h: int, d: int) -> list[_Piece]:
    a, b, c = np.array([w, 0, 0]), np.array([0, h, 0]), np.array([0, 0, d])
    da, db, dc = _sign(a), _sign(b), _sign(c)
    a2, b2, c2 = _half(a), _half(b), _half(c)
    zero = np.zeros(3, np.int64)
    if 2 * w > 3 * h and 2 * w > 3 * d:  # wide: split the major axis only
        return [(zero, [a2, b, c]), (a2, [a - a2, b, c])]
    if 3 * h > 4 * d:  # flat in the third axis: split the first two
        return [
            (zero, [b2, c, a2]),
            (b2, [a, b - b2, c]),
            ((a - da) + (b2 - db), [-b2, c, -(a - a2)]),
        ]
    if 3 * d > 4 * h:  # flat in the second axis: split the first and third
        return [
            (zero, [c2, a2, b]),
            (c2, [a, b, c - c2]),
            ((a - da) + (c2 - dc), [-c2, -(a - a2), b]),
        ]
    return [  # cube-like: split all three
        (zero, [b2, c2, a2]),
        (b2, [c, a2, b - b2]),
        ((b2 - db) + (c - dc), [a, -b2, -(c - c2)]),
        ((a - da) + b2 + (c - dc), [-c, -(a - a2), b - b2]),
        ((a - da) + (b2 - db), [-b2, c2, -(a - a2)]),
    ]


@lru_cache(maxsize=None)
def _local_curve(sides: tuple[int, ...]) -> np.ndarray:
    """The curve of a box with the given side lengths, major axis first, in its local frame.

    Starts at the origin and ends at the far end of the major axis (``(sides[0] - 1, 0, ...)``).
    """
    n = len(sides)
    long_axes = [k for k, s in enumerate(sides) if s > 1]
    if len(long_axes) <= 1:  # a straight line (or a single cell)
        out = np.zeros((int(np.prod(sides)), n), np.int64)
        if long_axes:
            out[:, long_axes[0]] = np.arange(sides[long_axes[0]])
        return out
    pieces = _pieces_2d(*sides) if n == 2 else _pieces_3d(*sides)
    parts = []
    for origin, axes in pieces:
        sub = _local_curve(tuple(_length(v) for v in axes))
        # Map the piece's local coordinates through its signed unit axes.
        basis = np.stack([_sign(v) for v in axes])  # [n, n]
        parts.append(origin + sub @ basis)
    return np.concatenate(parts)


def hilbert_curve(shape: tuple[int, ...]) -> np.ndarray:
    """Generalized Hilbert curve over a 2-D or 3-D grid of any positive sizes.

    On a ``2^k x 2^k`` grid it is the classic Hilbert curve (4-neighbour steps only). On any 2-D
    grid every step goes to one of the 8 neighbours; a diagonal step occurs only where the
    rectangle's parity forces it. Returns ``[N, len(shape)]`` coordinates in curve order.
    """
    # The recursion runs along the longest axis first; the result is mapped back to shape order.
    order = sorted(range(len(shape)), key=lambda k: -shape[k])
    local = _local_curve(tuple(shape[k] for k in order))
    out = np.empty_like(local)
    out[:, order] = local
    return out


def rowmajor_curve(shape: tuple[int, ...]) -> np.ndarray:
    """Row-major (C) order: the identity permutation."""
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return np.stack([g.reshape(-1) for g in grids], axis=1)


def tiled_curve(shape: tuple[int, ...], tile: tuple[int, ...]) -> np.ndarray:
    """Rectangular tiles in row-major order, row-major inside each tile (edge tiles are smaller)."""
    coords = rowmajor_curve(shape)
    tile_idx = coords // np.asarray(tile)
    # Sort by (tile index row-major, then position inside the tile row-major).
    keys = [coords[:, k] for k in reversed(range(len(shape)))]
    keys += [tile_idx[:, k] for k in reversed(range(len(shape)))]
    return coords[np.lexsort(keys)]
