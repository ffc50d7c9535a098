"""Block plans: which key tiles each query tile must visit, and which of those need a mask.

A plan is built from the pattern's geometry, never from the N x N mask:

- 1-D patterns (``Window``, ``Slide``) attend a range ``[lo(i), hi(i)]`` non-decreasing in ``i``,
  so a query tile ``[i0, i1)`` needs the keys ``[lo(i0), hi(i1 - 1)]`` and every one of its
  queries attends ``[lo(i1 - 1), hi(i0)]``: tiles inside the second range are full.
- Grid patterns (``Neighborhood``, ``Window2D``) attend a box of cells per query; the number of
  attended pairs per (query tile, key tile) is counted with difference arrays over each query
  tile's region (see ``_grid_pairs``). A tile is full iff its count is
  ``|query tile| x |key tile|``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from .layout import _as_device
from .patterns import GridPattern, Pattern, SequencePattern

__all__ = ["BlockPlan", "block_plan"]


@dataclass(frozen=True, eq=False)
class BlockPlan:
    """Tile lists of a block-sparse attention, FlexAttention-style.

    Rows are query tiles (``q_tile`` tokens; the last one may be shorter), entries are key tiles
    (``kv_tile`` tokens), ascending within a row.

    Attributes:
        full_counts, partial_counts: int32 ``[n_rows]``; tiles of each row with every pair
            attended (no mask needed) / with some pairs attended (mask needed).
        full_indices, partial_indices: int32 ``[n_rows, width]``, the first ``counts[r]`` entries
            of row ``r`` valid, the rest 0; both have the same ``width``.
        seq_len, q_tile, kv_tile: sizes the plan was made for.
    """

    seq_len: int
    q_tile: int
    kv_tile: int
    full_counts: Tensor
    full_indices: Tensor
    partial_counts: Tensor
    partial_indices: Tensor

    @property
    def n_q_tiles(self) -> int:
        return -(-self.seq_len // self.q_tile)

    @property
    def n_kv_tiles(self) -> int:
        return -(-self.seq_len // self.kv_tile)

    @property
    def n_full(self) -> int:
        return int(self.full_counts.sum())

    @property
    def n_partial(self) -> int:
        return int(self.partial_counts.sum())

    @property
    def density(self) -> float:
        """Computed tiles / all ``n_q_tiles x n_kv_tiles`` tiles."""
        return (self.n_full + self.n_partial) / (self.n_q_tiles * self.n_kv_tiles)

    @property
    def partial_share(self) -> float:
        """Share of the computed tiles that need an element mask."""
        return self.n_partial / max(1, self.n_full + self.n_partial)

    def pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        """All computed tiles as ``(row, col, is_full)`` int64/bool vectors, row-sorted."""
        parts = []
        for counts, indices, full in ((self.full_counts, self.full_indices, True),
                                      (self.partial_counts, self.partial_indices, False)):
            width = indices.shape[1]
            valid = torch.arange(width, device=indices.device) < counts[:, None].long()
            rows = torch.arange(indices.shape[0], device=indices.device)[:, None].expand_as(indices)
            parts.append((rows[valid], indices[valid].long(),
                          torch.full((int(valid.sum()),), full, device=indices.device)))
        rows, cols, full = (torch.cat(p) for p in zip(*parts))
        order = torch.argsort(rows * self.n_kv_tiles + cols)
        return rows[order], cols[order], full[order]

    def transposed(self) -> BlockPlan:
        """The same tiles with key tiles as rows: for each key tile, the query tiles that see it
        (what a backward pass over key tiles walks)."""
        rows, cols, full = self.pairs()
        return _from_pairs(cols, rows, full, self.n_kv_tiles, self.seq_len, self.kv_tile,
                           self.q_tile)

    def dense(self) -> Tensor:
        """int8 ``[n_q_tiles, n_kv_tiles]`` map: 0 empty, 1 partial, 2 full (for pictures and tests)."""
        out = torch.zeros(self.n_q_tiles, self.n_kv_tiles, dtype=torch.int8,
                          device=self.full_counts.device)
        rows, cols, full = self.pairs()
        out[rows, cols] = 1 + full.to(torch.int8)
        return out

    def to(self, device: torch.device | str) -> BlockPlan:
        return BlockPlan(self.seq_len, self.q_tile, self.kv_tile,
                         *(t.to(device) for t in (self.full_counts, self.full_indices,
                                                  self.partial_counts, self.partial_indices)))

    def __repr__(self) -> str:
        return (f"BlockPlan(seq_len={self.seq_len}, q_tile={self.q_tile}, kv_tile={self.kv_tile}, "
                f"density={self.density:.4%}, partial_share={self.partial_share:.1%})")


def _from_pairs(rows: Tensor, cols: Tensor, full: Tensor, n_rows: int, seq_len: int,
                q_tile: int, kv_tile: int) -> BlockPlan:
    """Pack ``(row, col, is_full)`` triples (any order, no duplicates) into a plan."""
    order = torch.argsort(rows * (cols.max().item() + 1 if cols.numel() else 1) + cols)
    rows, cols, full = rows[order], cols[order], full[order]
    lists = []
    for keep in (full, ~full):
        r, c = rows[keep], cols[keep]
        counts = torch.bincount(r, minlength=n_rows)
        lists.append((r, c, counts))
    width = max(1, max(int(counts.max()) if counts.numel() else 0 for _, _, counts in lists))
    out = []
    for r, c, counts in lists:
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(r.numel(), device=r.device) - starts[r]
        indices = torch.zeros(n_rows, width, dtype=torch.int32, device=r.device)
        indices[r, slot] = c.to(torch.int32)
        out += [counts.to(torch.int32), indices]
    return BlockPlan(seq_len, q_tile, kv_tile, *out)


def _sequence_pairs(pattern: SequencePattern, seq_len: int, q_tile: int, kv_tile: int,
                    device: torch.device):
    n_q, n_kv = -(-seq_len // q_tile), -(-seq_len // kv_tile)
    first = torch.arange(n_q, device=device) * q_tile
    last = (first + q_tile).clamp(max=seq_len) - 1
    lo_first, hi_first = pattern.key_range(first, seq_len)
    lo_last, hi_last = pattern.key_range(last, seq_len)
    # Keys some query of the tile attends: [lo_first, hi_last]; keys all of them attend:
    # [lo_last, hi_first] (may be empty).
    t_lo = torch.div(lo_first, kv_tile, rounding_mode="floor")
    t_hi = torch.div(hi_last, kv_tile, rounding_mode="floor")
    span = int((t_hi - t_lo).max()) + 1
    cols = t_lo[:, None] + torch.arange(span, device=device)
    rows = torch.arange(n_q, device=device)[:, None].expand_as(cols)
    valid = cols <= t_hi[:, None]
    k_first = cols * kv_tile
    k_last = (k_first + kv_tile).clamp(max=seq_len) - 1
    full = (k_first >= lo_last[:, None]) & (k_last <= hi_first[:, None])
    return rows[valid], cols[valid], full[valid]


def _strided_cumsum(x: Tensor, dim: int, step: int) -> Tensor:
    """Cumulative sum along ``dim`` within each residue class mod ``step``."""
    if step == 1:
        return x.cumsum(dim)
    length = x.shape[dim]
    pad = -length % step
    x = torch.nn.functional.pad(x.movedim(dim, -1), (0, pad))
    x = x.unflatten(-1, (-1, step)).cumsum(-2).flatten(-2)[..., :length]
    return x.movedim(-1, dim)


def _grid_pairs(pattern: GridPattern, seq_len: int, q_tile: int, kv_tile: int,
                device: torch.device, chunk_cells: int = 1 << 23):
    """Counts of attended pairs per (query tile, key tile) without listing the pairs.

    Each query attends a box of cells (a strided interval per axis). For one query tile, adding
    +-1 at the box corners of all its queries (a difference array over the region its boxes
    cover) and taking prefix sums gives, for every cell, how many queries of the tile attend it;
    summing those per key tile gives the pair counts. Work is O(tiles x region) instead of
    O(N x keys per query).
    """
    layout = pattern.layout.to(device)
    shape, nd = layout.shape, layout.ndim
    steps = [pattern.axis_step(a) for a in range(nd)]
    spans = [pattern.axis_span(layout.coords[:, a], a) for a in range(nd)]
    first = torch.stack([f for f, _ in spans], 1)  # [N, nd]
    end = torch.stack([f + s * c for (f, c), s in zip(spans, steps)], 1)  # one step past the last
    n_q = -(-seq_len // q_tile)
    n_kv = -(-seq_len // kv_tile)
    tile = torch.arange(seq_len, device=device) // q_tile
    origin = torch.full((n_q, nd), seq_len, device=device, dtype=torch.long)
    origin = origin.scatter_reduce(0, tile[:, None].expand(-1, nd), first, "amin")
    extent = torch.zeros((n_q, nd), device=device, dtype=torch.long)
    extent = extent.scatter_reduce(0, tile[:, None].expand(-1, nd), end, "amax") - origin
    region = [int(e) for e in extent.max(0).values]  # one box shape that fits every tile's
    strides = [1] * nd
    for a in range(nd - 2, -1, -1):
        strides[a] = strides[a + 1] * shape[a + 1]
    cell_tile = torch.div(layout.inverse, kv_tile, rounding_mode="floor")  # by row-major cell
    cells = 1
    for r in region:
        cells *= r
    tiles_per_chunk = max(1, chunk_cells // cells)
    grid = torch.stack(torch.meshgrid(*(torch.arange(r, device=device) for r in region),
                                      indexing="ij"), -1).view(-1, nd)  # local cell offsets

    rows_out, cols_out, full_out = [], [], []
    for t0 in range(0, n_q, tiles_per_chunk):
        t1 = min(n_q, t0 + tiles_per_chunk)
        q0, q1 = t0 * q_tile, min(seq_len, t1 * q_tile)
        local = tile[q0:q1] - t0
        diff = torch.zeros((t1 - t0, *region), device=device, dtype=torch.int32)
        for corner in range(1 << nd):  # inclusion-exclusion over the 2^nd corners of each box
            upper = [(corner >> a) & 1 for a in range(nd)]
            point = torch.where(torch.tensor(upper, device=device, dtype=torch.bool),
                                end[q0:q1], first[q0:q1]) - origin[t0 + local]
            inside = (point < torch.tensor(region, device=device)).all(1)  # past the end: no-op
            sign = -1 if sum(upper) % 2 else 1
            index = (local, *point.unbind(1))
            diff.index_put_(tuple(i[inside] for i in index),
                            torch.full((int(inside.sum()),), sign, device=device,
                                       dtype=torch.int32), accumulate=True)
        for a in range(nd):
            diff = _strided_cumsum(diff, a + 1, steps[a])
        absolute = origin[t0:t1, None, :] + grid[None]  # [tiles, cells, nd]
        on_grid = (absolute < torch.tensor(shape, device=device)).all(-1)
        counts = diff.reshape(t1 - t0, -1)
        keep = on_grid & (counts > 0)
        key_tile = cell_tile[(absolute * torch.tensor(strides, device=device)).sum(-1)[keep]]
        which = torch.arange(t0, t1, device=device)[:, None].expand_as(keep)[keep] - t0
        pair_counts = torch.bincount(which * n_kv + key_tile, weights=counts[keep].double(),
                                     minlength=(t1 - t0) * n_kv).view(t1 - t0, n_kv)
        r, c = pair_counts.nonzero(as_tuple=True)
        q_sizes = torch.clamp((t0 + r + 1) * q_tile, max=seq_len) - (t0 + r) * q_tile
        k_sizes = torch.clamp((c + 1) * kv_tile, max=seq_len) - c * kv_tile
        rows_out.append(r + t0)
        cols_out.append(c)
        full_out.append(pair_counts[r, c] == (q_sizes * k_sizes).double())
    return torch.cat(rows_out), torch.cat(cols_out), torch.cat(full_out)


def block_plan(pattern: Pattern, seq_len: int, q_tile: int = 128, kv_tile: int = 128,
               device: torch.device | str | None = None) -> BlockPlan:
    """The block plan of ``pattern`` over ``seq_len`` tokens with ``q_tile x kv_tile`` tiles.

    Cached per (pattern, seq_len, tiles, device). See the module docstring for how it is built.
    """
    if not isinstance(pattern, Pattern):
        raise ValueError(f"pattern must be a hilbertattn pattern (Window, Slide, Neighborhood, "
                         f"Window2D), got {type(pattern).__name__}")
    for name, value in (("seq_len", seq_len), ("q_tile", q_tile), ("kv_tile", kv_tile)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    pattern.check(seq_len)
    return _cached_plan(pattern, seq_len, q_tile, kv_tile, _as_device(device))


@lru_cache(maxsize=128)
def _cached_plan(pattern: Pattern, seq_len: int, q_tile: int, kv_tile: int,
                 device: torch.device) -> BlockPlan:
    if isinstance(pattern, SequencePattern):
        rows, cols, full = _sequence_pairs(pattern, seq_len, q_tile, kv_tile, device)
    elif isinstance(pattern, GridPattern):
        rows, cols, full = _grid_pairs(pattern, seq_len, q_tile, kv_tile, device)
    else:
        raise ValueError(f"pattern {type(pattern).__name__} has no block planner")
    return _from_pairs(rows, cols, full, -(-seq_len // q_tile), seq_len, q_tile, kv_tile)
