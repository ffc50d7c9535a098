"""SPEC.md's formulas, written out independently of the library: the tests' ground truth."""

from __future__ import annotations

import torch


def window_mask(n: int, window: int, shift: int = 0) -> torch.Tensor:
    i = torch.arange(n)
    group = torch.div(i - shift, window, rounding_mode="floor")
    return group[:, None] == group[None, :]


def slide_mask(n: int, window: int, clamped: bool = False) -> torch.Tensor:
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    h = window // 2
    if clamped:
        center = torch.clamp(i, min=h, max=n - 1 - h)
        return (center - j).abs() <= h
    return (i - j).abs() <= h


def _axis_neighbors(x: torch.Tensor, size: int, k: int, d: int) -> torch.Tensor:
    """[n, n] bool: is coordinate x[b] a neighbour of x[a] along one axis (NATTEN rule)."""
    g, p = x % d, x // d
    length = -(-(size - g) // d)
    start = torch.minimum(torch.clamp(p - k // 2, min=0), length - k)
    same_group = (x[None, :] % d) == g[:, None]
    pj = x[None, :] // d
    return same_group & (start[:, None] <= pj) & (pj < start[:, None] + k)


def neighborhood_mask(coords: torch.Tensor, shape, kernel, dilation) -> torch.Tensor:
    out = torch.ones(coords.shape[0], coords.shape[0], dtype=torch.bool)
    for a, size in enumerate(shape):
        out &= _axis_neighbors(coords[:, a], size, kernel[a], dilation[a])
    return out


def window2d_mask(coords: torch.Tensor, window, shift) -> torch.Tensor:
    out = torch.ones(coords.shape[0], coords.shape[0], dtype=torch.bool)
    for a in range(coords.shape[1]):
        g = torch.div(coords[:, a] - shift[a], window[a], rounding_mode="floor")
        out &= g[:, None] == g[None, :]
    return out


def dense_attention(q, k, v, mask, scale, bias=None):
    """float64 dense masked softmax attention; ``bias`` is ``[heads, N, N]`` or None."""
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias.double()
    s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1) @ v.double()
