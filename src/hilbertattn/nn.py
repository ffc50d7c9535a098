"""Attention modules: ``x`` ``[B, N, C]`` in the sequence order of a layout in, same shape out.

Tokens stay in layout order through a whole network (convert at its edges with
``layout.flatten`` / ``layout.unflatten``). Each module is a multi-head attention with a qkv
projection, one of the library's patterns, an optional learnable relative position bias and an
output projection:

================================  =========================  =====================================
module                            pattern                    bias radius ``R`` (per grid axis)
================================  =========================  =====================================
``HilbertWindowAttention``        ``Window`` (HWA)           measured on the layout (see below)
``HilbertSlideAttention``         ``Slide`` (HSA, 1-D NA)    measured on the layout
``NeighborhoodAttention``         ``Neighborhood`` (exact)   ``(kernel_size - 1) * dilation``
``WindowAttention2D``             ``Window2D`` (Swin)        ``window_size - 1``
================================  =========================  =====================================

The relative position bias (``rel_pos_bias=True``) is a table ``[num_heads, 2R+1, 2R+1]`` added to
the score of query ``i`` and key ``j`` at the *true grid offset* ``coords[i] - coords[j]`` of the
layout, clamped to ``[-R, R]`` (see ``hilbertattn.RelativeBias``). For the grid patterns ``R`` is
the table of NAT and Swin: a NATTEN neighbourhood is shifted inwards at the borders, so offsets
reach ``(kernel_size - 1) * dilation``, as NAT's ``2k - 1`` table allows for (with ``dilation > 1``
only the entries at multiples of the dilation are ever used). For the sequence patterns the
offsets depend on the curve: by default ``R`` is the largest offset of any attended pair on the
given layout (``covering_radius``), so no pair is clamped; pass ``bias_radius`` to fix it instead
(pairs further apart then share the border entries of the table).

Attention-probability dropout is not available: the backends compute ``softmax(q k^T) v`` fused,
never holding the probabilities, so ``attn_drop`` must be 0 (a ``ValueError`` says so otherwise);
``proj_drop`` drops the projected output as usual.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .bias import RelativeBias
from .bias import covering_radius as bias_covering_radius
from .functional import BACKENDS, Backend, attention
from .layout import Layout
from .patterns import Neighborhood, Pattern, Slide, Window, Window2D

__all__ = ["LocalAttention", "HilbertWindowAttention", "HilbertSlideAttention",
           "NeighborhoodAttention", "WindowAttention2D", "covering_radius"]


def covering_radius(pattern: Pattern, layout: Layout) -> tuple[int, ...]:
    """Per grid axis, a radius ``R`` with ``|coords[i] - coords[j]| <= R`` for every attended pair
    on ``layout`` (``hilbertattn.bias.covering_radius`` of its coords)."""
    radius = bias_covering_radius(pattern, layout.coords)
    if radius is None:
        raise ValueError(f"layout must be the layout of the grid pattern {pattern}, got {layout}")
    return radius


def _rate(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")
    return float(value)


class LocalAttention(nn.Module):
    """Multi-head attention of ``x`` ``[B, N, dim]`` under ``pattern`` (the common part of the
    modules below; use them rather than this class).

    Args:
        dim: channels ``C`` of ``x``; a multiple of ``num_heads``.
        num_heads: attention heads (head dim ``dim // num_heads``).
        pattern: the attention pattern (fixed at construction).
        layout: the layout of the tokens, or None for a sequence pattern without bias; when
            given, ``x`` must hold ``layout.numel`` tokens.
        qkv_bias: whether the qkv projection has a bias.
        attn_drop: must be 0 (the backends compute no attention-probability dropout).
        proj_drop: dropout on the output projection.
        rel_pos_bias: add a learnable relative position bias (needs ``layout``).
        bias_radius: the bias table radius per grid axis (an int for every axis); None picks
            ``covering_radius(pattern, layout)``.
        backend: ``"auto"``, ``"triton"``, ``"flex"`` or ``"reference"`` (see
            ``hilbertattn.attention``).
    """

    def __init__(self, dim: int, num_heads: int, pattern: Pattern, layout: Layout | None = None,
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 rel_pos_bias: bool = False, bias_radius: int | tuple[int, ...] | None = None,
                 backend: Backend = "auto") -> None:
        super().__init__()
        for name, value in (("dim", dim), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if dim % num_heads:
            raise ValueError(f"num_heads must divide dim={dim}, got num_heads={num_heads}")
        if _rate("attn_drop", attn_drop) > 0:
            raise ValueError(
                f"attn_drop must be 0, got {attn_drop!r}: the attention backends compute "
                f"softmax(q k^T) v fused and never hold the attention probabilities, so there is "
                f"no attention-probability dropout; use proj_drop or stochastic depth instead")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if layout is not None and not isinstance(layout, Layout):
            raise ValueError(f"layout must be a hilbertattn.Layout or None, got "
                             f"{type(layout).__name__}")
        if rel_pos_bias and layout is None:
            raise ValueError("layout is required with rel_pos_bias=True: the bias is indexed by "
                             "the grid offset of each pair, which the layout's coords give")
        if layout is not None:
            pattern.check(layout.numel)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.pattern, self.layout, self.backend = pattern, layout, backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(_rate("proj_drop", proj_drop))
        if rel_pos_bias:
            radius = self._bias_radius(bias_radius)
            table = torch.empty(num_heads, *(2 * r + 1 for r in radius))
            self.relative_position_bias_table = nn.Parameter(nn.init.trunc_normal_(table, std=0.02))
            # Not saved: derived from the layout, and moves with the module to its device.
            self.register_buffer("bias_coords", layout.coords.clone(), persistent=False)
        else:
            if bias_radius is not None:
                raise ValueError("bias_radius is only used with rel_pos_bias=True, got "
                                 f"bias_radius={bias_radius!r}")
            self.relative_position_bias_table = None

    def _bias_radius(self, bias_radius: int | tuple[int, ...] | None) -> tuple[int, ...]:
        if bias_radius is None:
            return covering_radius(self.pattern, self.layout)
        ndim = self.layout.ndim
        radius = (bias_radius,) * ndim if isinstance(bias_radius, int) else tuple(bias_radius)
        if len(radius) != ndim or any(isinstance(r, bool) or not isinstance(r, int) or r < 0
                                      for r in radius):
            raise ValueError(f"bias_radius must be a non-negative int or {ndim} of them, got "
                             f"{bias_radius!r}")
        return radius

    @property
    def bias(self) -> RelativeBias | None:
        """The relative position bias as the functional API takes it, or None."""
        if self.relative_position_bias_table is None:
            return None
        return RelativeBias(self.relative_position_bias_table, self.bias_coords)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[B, N, dim]`` in layout order -> ``[B, N, dim]``."""
        if x.dim() != 3 or x.shape[-1] != self.dim or (
                self.layout is not None and x.shape[1] != self.layout.numel):
            tokens = "N" if self.layout is None else f"N={self.layout.numel}"
            raise ValueError(f"x must have shape [B, {tokens}, dim={self.dim}], got "
                             f"{list(x.shape)}")
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, self.pattern, self.scale, self.bias, self.backend)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, self.dim)))

    def extra_repr(self) -> str:
        bias = self.bias
        radius = "" if bias is None else f", bias_radius={bias.radius}"
        return (f"dim={self.dim}, num_heads={self.num_heads}, pattern={self.pattern}{radius}, "
                f"backend={self.backend!r}")


class HilbertWindowAttention(LocalAttention):
    """Hilbert window attention (HWA): groups of ``window`` consecutive tokens, offset by
    ``shift`` (``hilbertattn.Window``). ``layout`` is needed only for ``rel_pos_bias``; the other
    arguments are those of ``LocalAttention``."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int = 0,
                 layout: Layout | None = None, **kwargs) -> None:
        super().__init__(dim, num_heads, Window(window, shift), layout, **kwargs)


class HilbertSlideAttention(LocalAttention):
    """Hilbert slide attention (HSA): ``window // 2`` tokens each side along the curve; with
    ``clamped=True`` (odd ``window``) the 1-D neighbourhood attention of exactly ``window`` keys
    (``hilbertattn.Slide``). ``layout`` is needed only for ``rel_pos_bias``."""

    def __init__(self, dim: int, num_heads: int, window: int, clamped: bool = False,
                 layout: Layout | None = None, **kwargs) -> None:
        super().__init__(dim, num_heads, Slide(window, clamped), layout, **kwargs)


class NeighborhoodAttention(LocalAttention):
    """Exact 2-D/3-D neighbourhood attention (NATTEN semantics) on the grid of ``layout``
    (``hilbertattn.Neighborhood``); its result does not depend on the layout's order except
    through the order of the tokens. ``even_kernel`` admits even kernel sizes (NATTEN's windows,
    e.g. a kernel covering a whole even axis)."""

    def __init__(self, dim: int, num_heads: int, layout: Layout,
                 kernel_size: int | tuple[int, ...], dilation: int | tuple[int, ...] = 1,
                 even_kernel: bool = False, **kwargs) -> None:
        super().__init__(dim, num_heads, Neighborhood(layout, kernel_size, dilation, even_kernel),
                         layout, **kwargs)


class WindowAttention2D(LocalAttention):
    """Exact (shifted) Swin window attention on the grid of ``layout`` (``hilbertattn.Window2D``):
    with ``shift > 0`` it equals Swin's cyclic shift with its attention mask."""

    def __init__(self, dim: int, num_heads: int, layout: Layout,
                 window_size: int | tuple[int, ...], shift: int | tuple[int, ...] = 0,
                 **kwargs) -> None:
        super().__init__(dim, num_heads, Window2D(layout, window_size, shift), layout, **kwargs)
