"""``reference`` backend: plain PyTorch, query tile by query tile, differentiable by autograd.

Each query tile gathers the keys of the tiles its block plan lists, scores them, masks them with
the pattern's element-wise ``mask`` and takes the softmax. Memory is O(N x keys per tile), never
N x N. It is the ground truth the other backends are tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..bias import RelativeBias
from ..patterns import Pattern
from ..plan import block_plan

_TILE = 64
_CHUNK_ELEMENTS = 1 << 24  # scores held at once (B * heads * queries * keys)


def reference_attention(q: Tensor, k: Tensor, v: Tensor, pattern: Pattern, scale: float,
                        bias: RelativeBias | None = None) -> Tensor:
    """Masked softmax attention of ``q, k, v`` ``[B, heads, N, D]`` under ``pattern``; returns
    ``[B, heads, N, D]``."""
    B, H, N, D = q.shape
    plan = block_plan(pattern, N, _TILE, _TILE, device=q.device)
    rows, cols, _ = plan.pairs()
    counts = torch.bincount(rows, minlength=plan.n_q_tiles)
    width = int(counts.max())
    # keys[t] lists the key positions of query tile t's key tiles, padded with -1.
    slot = torch.arange(rows.numel(), device=q.device) - (torch.cumsum(counts, 0) - counts)[rows]
    tiles = torch.full((plan.n_q_tiles, width), -1, dtype=torch.long, device=q.device)
    tiles[rows, slot] = cols
    keys = (tiles[:, :, None] * _TILE + torch.arange(_TILE, device=q.device)).flatten(1)
    keys = torch.where((tiles >= 0).repeat_interleave(_TILE, dim=1) & (keys < N), keys, -1)

    compute = torch.promote_types(q.dtype, torch.float32)
    per_tile = B * H * keys.shape[1] * (_TILE + D)
    tiles_per_chunk = max(1, _CHUNK_ELEMENTS // per_tile)
    out = []
    for t0 in range(0, plan.n_q_tiles, tiles_per_chunk):
        t1 = min(plan.n_q_tiles, t0 + tiles_per_chunk)
        i = torch.arange(t0 * _TILE, t1 * _TILE, device=q.device).view(t1 - t0, _TILE, 1)
        j = keys[t0:t1, None, :]  # [tiles, 1, L], shared by the queries of a tile
        # Rows past N (last tile) repeat row N - 1 and are cut off below: no empty softmax rows.
        i = i.clamp(max=N - 1)
        allowed = (j >= 0) & pattern.mask(i, j.clamp(min=0), N)
        j = j.clamp(min=0)
        qi = q[:, :, i[:, :, 0]].to(compute)  # [B, H, tiles, T, D]
        kj, vj = (x[:, :, j[:, 0]].to(compute) for x in (k, v))  # [B, H, tiles, L, D]
        scores = (qi @ kj.transpose(-1, -2)) * scale  # [B, H, tiles, T, L]
        if bias is not None:
            scores = scores + bias.values(i, j).to(compute)  # [H, tiles, T, L]
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        out.append((probs @ vj).flatten(2, 3))
    return torch.cat(out, dim=2)[:, :, :N].to(q.dtype)
