"""``flex`` backend: FlexAttention driven by the block plan.

The ``BlockMask`` is built from the plan's tile lists (full tiles skip the mask), the mask is the
pattern's interval codes loaded from tables (cheaper in the kernel than recomputing coordinates),
and ``flex_attention`` is compiled once and cached per configuration by ``torch.compile``.
Forward and backward on CUDA; forward only on the CPU (PyTorch has no CPU backward for it), where
it runs eagerly.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import torch
from torch import Tensor

from ..bias import RelativeBias
from ..patterns import Pattern
from ..plan import block_plan

try:
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
except ImportError:  # pragma: no cover - PyTorch without FlexAttention
    BlockMask = flex_attention = None

TILE = 128  # FlexAttention's default block size; its backward supports no smaller blocks


def available() -> bool:
    return flex_attention is not None


@lru_cache(maxsize=1)
def _compiled():
    # One compiled callable; dynamo specializes it per shape and mask. Its default recompile
    # limit (8) would silently fall back to the eager version, which materializes N x N scores.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
    return torch.compile(flex_attention, dynamic=False)


def _padded(counts: Tensor, indices: Tensor, n_cols: int) -> tuple[Tensor, Tensor]:
    """FlexAttention wants index rows padded to the number of key blocks, shaped [1, 1, rows, *]."""
    out = torch.zeros(indices.shape[0], n_cols, dtype=torch.int32, device=indices.device)
    width = min(indices.shape[1], n_cols)
    out[:, :width] = indices[:, :width]
    return counts[None, None].contiguous(), out[None, None].contiguous()


@lru_cache(maxsize=64)
def block_mask(pattern: Pattern, seq_len: int, device: torch.device) -> "BlockMask":
    """The ``BlockMask`` of ``pattern`` (128-token tiles), cached per (pattern, seq_len, device)."""
    plan = block_plan(pattern, seq_len, TILE, TILE, device=device)
    qlo, qhi, kcode = pattern.codes(seq_len, device)

    def mask_mod(b, h, q_idx, kv_idx):
        ok = (qlo[0, q_idx] <= kcode[0, kv_idx]) & (kcode[0, kv_idx] <= qhi[0, q_idx])
        for a in range(1, qlo.shape[0]):
            ok = ok & (qlo[a, q_idx] <= kcode[a, kv_idx]) & (kcode[a, kv_idx] <= qhi[a, q_idx])
        return ok

    partial = _padded(plan.partial_counts, plan.partial_indices, plan.n_kv_tiles)
    full = _padded(plan.full_counts, plan.full_indices, plan.n_kv_tiles)
    return BlockMask.from_kv_blocks(*partial, *full, BLOCK_SIZE=(TILE, TILE), mask_mod=mask_mod,
                                    seq_lengths=(seq_len, seq_len))


def _bias_score_mod(bias: RelativeBias):
    table = bias.table.flatten(1)
    coords = bias.coords.to(table.device)
    radius = bias.radius

    def score_mod(score, b, h, q_idx, kv_idx):
        index = 0
        for a, r in enumerate(radius):
            offset = torch.clamp(coords[q_idx, a] - coords[kv_idx, a], -r, r) + r
            index = index * (2 * r + 1) + offset
        return score + table[h, index]

    return score_mod


def flex_attention_forward(q: Tensor, k: Tensor, v: Tensor, pattern: Pattern, scale: float,
                           bias: RelativeBias | None = None) -> Tensor:
    """Masked attention of ``q, k, v`` ``[B, heads, N, D]`` under ``pattern`` by FlexAttention."""
    if not available():
        raise NotImplementedError("backend='flex' needs torch.nn.attention.flex_attention "
                                  "(PyTorch >= 2.5)")
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, v, *(bias or ())))
    if q.device.type != "cuda" and needs_grad:
        raise NotImplementedError(
            f"backend='flex' has no backward on device {q.device.type!r} (FlexAttention's "
            f"backward runs on CUDA only); use backend='reference' or run under torch.no_grad()")
    mask = block_mask(pattern, q.shape[-2], q.device)
    score_mod = None if bias is None else _bias_score_mod(bias)
    # Inductor's C++ FlexAttention kernel (PyTorch 2.14) returned zero rows for some heads with
    # multi-axis masks, at random: on the CPU run the eager version, which is exact (and holds
    # the N x N scores, so the CPU path is for small problems and checks).
    run = _compiled() if q.device.type == "cuda" else flex_attention
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return run(q, k, v, score_mod=score_mod, block_mask=mask, scale=scale)
