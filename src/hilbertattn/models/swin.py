"""Swin Transformer and the Hilbert Window Transformer (HWT): one network, two attentions.

- ``attention="window2d"`` (``swin_*``): exact 2-D windows of ``window x window`` tokens through
  ``Window2D``, shifted by ``window // 2`` in every second block, with Swin's relative position
  bias table (radius ``window - 1``). Tokens default to row-major order.
- ``attention="hilbert_window"`` (``hwt_*``): windows of ``window**2`` consecutive tokens along the
  curve (``Window``), shifted by half a window (``window**2 // 2`` tokens) in every second block,
  with a relative position bias indexed by the true 2-D offset of each pair; by default its radius
  covers every pair that occurs on the stage's layout (``hilbertattn.nn.covering_radius``), so the
  table size depends on the grid, hence on ``img_size``. Tokens default to Hilbert order.

As in Swin, a window that covers the whole grid (along an axis, for ``window2d``) is not shifted.
Where the grid is not a multiple of the window, the last windows along an axis are shorter
(``Window2D``'s rule; Swin pads instead) and the last curve window holds the remaining tokens.
Patch merging goes from one stage's sequence order to the next without a detour through the 2-D
map (zero-padding odd sides as Swin does); see ``PatchMerging`` for the grids where it stays
inside groups of four tokens.
"""

from __future__ import annotations

from timm.layers import to_2tuple
from torch import Tensor, nn

from ..layout import Layout
from ..nn import HilbertWindowAttention, WindowAttention2D
from .common import CurveTransformer, Grid, PatchMerging, register_configs

__all__ = ["SwinTransformer", "PatchEmbed", "CONFIGS", "ATTENTIONS"]

ATTENTIONS = ("window2d", "hilbert_window")


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches, linearly embedded and normalized: images
    ``[B, in_chans, H, W]`` -> ``[B, H / patch_size, W / patch_size, dim]``."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinTransformer(CurveTransformer):
    """Swin (``attention="window2d"``) or HWT (``attention="hilbert_window"``).

    Args:
        img_size: input height and width (an int for square images); a multiple of
            ``patch_size``.
        patch_size: side of the embedded patches.
        in_chans, num_classes: input channels and classes (0: no head).
        embed_dim: channels of the first stage (doubled by each patch merging).
        depths, num_heads: blocks and attention heads per stage.
        window: window side; HWT windows hold ``window**2`` tokens.
        attention: ``"window2d"`` or ``"hilbert_window"``.
        bias_radius: relative position bias radius; None: ``window - 1`` for ``window2d``, the
            covering radius of each block's windows on its layout for ``hilbert_window``.
        mlp_ratio, qkv_bias: MLP hidden width over ``dim``; bias of the qkv projection.
        drop_rate, proj_drop_rate, attn_drop_rate, drop_path_rate: dropout before the head, after
            projections, on attention probabilities (must be 0, see ``hilbertattn.nn``), and the
            stochastic depth rate (linear over blocks).
        layout: token order, ``"hilbert"``, ``"rowmajor"`` or ``"tiled"``; None: row-major for
            ``window2d`` (the same function in any order), Hilbert for ``hilbert_window``.
        backend: attention backend (``"auto"``, ``"triton"``, ``"flex"``, ``"reference"``).
    """

    def __init__(self, img_size: int | Grid = 224, patch_size: int = 4, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 96,
                 depths: tuple[int, ...] = (2, 2, 6, 2),
                 num_heads: tuple[int, ...] = (3, 6, 12, 24),
                 window: int = 7, attention: str = "window2d", bias_radius: int | None = None,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, layout: str | None = None,
                 backend: str = "auto") -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        for name, value in (("window", window), ("patch_size", patch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        size = to_2tuple(img_size)
        if any(s % patch_size for s in size):
            raise ValueError(f"img_size must be a multiple of patch_size={patch_size}, got {size}")
        self.attention, self.window, self.bias_radius = attention, window, bias_radius
        self.attn_kwargs = dict(qkv_bias=qkv_bias, attn_drop=attn_drop_rate,
                                proj_drop=proj_drop_rate, rel_pos_bias=True, backend=backend)
        if layout is None:
            layout = "rowmajor" if attention == "window2d" else "hilbert"
        self._build(patch_embed=PatchEmbed(in_chans, embed_dim, patch_size), img_size=size,
                    grid=(size[0] // patch_size, size[1] // patch_size), in_chans=in_chans,
                    num_classes=num_classes, embed_dim=embed_dim, depths=tuple(depths),
                    num_heads=tuple(num_heads), mlp_ratio=mlp_ratio, layout=layout,
                    drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                    proj_drop_rate=proj_drop_rate)

    def _attention(self, stage: int, block: int, dim: int, heads: int, layout: Layout) -> nn.Module:
        shifted = block % 2 == 1
        if self.attention == "window2d":
            size = tuple(min(self.window, side) for side in layout.shape)
            shift = tuple(w // 2 if shifted and side > w else 0
                          for w, side in zip(size, layout.shape))
            radius = self.window - 1 if self.bias_radius is None else self.bias_radius
            return WindowAttention2D(dim, heads, layout, size, shift, bias_radius=radius,
                                     **self.attn_kwargs)
        tokens = min(self.window ** 2, layout.numel)
        shift = tokens // 2 if shifted and tokens < layout.numel else 0
        return HilbertWindowAttention(dim, heads, tokens, shift, layout=layout,
                                      bias_radius=self.bias_radius, **self.attn_kwargs)

    def _next_grid(self, grid: Grid, stage: int) -> Grid:
        return (grid[0] + 1) // 2, (grid[1] + 1) // 2

    def _downsample(self, layout_in: Layout, layout_out: Layout, dim: int) -> nn.Module:
        return PatchMerging(layout_in, layout_out, dim)


# Named configurations. tiny: Swin-T (28.3M parameters at 224 x 224, 1000 classes). cifar: 32 x 32
# images, 2 x 2 patches, a 16 x 16 grid at stage 1 with 4 x 4 windows (HWT: 16 tokens). 64:
# the same network on 64 x 64 images (a 32 x 32 grid at stage 1), 200 classes (Tiny ImageNet).
SIZES = {
    "tiny": dict(img_size=224, patch_size=4, num_classes=1000, embed_dim=96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24), window=7, drop_path_rate=0.2),
    "cifar": dict(img_size=32, patch_size=2, num_classes=10, embed_dim=64, depths=(2, 2, 4),
                  num_heads=(2, 4, 8), window=4, drop_path_rate=0.1),
    "64": dict(img_size=64, patch_size=2, num_classes=200, embed_dim=64, depths=(2, 2, 4),
               num_heads=(2, 4, 8), window=4, drop_path_rate=0.1),
}
FAMILIES = {"swin": dict(attention="window2d", layout="rowmajor"),
            "hwt": dict(attention="hilbert_window", layout="hilbert")}
CONFIGS = {f"{family}_{size}": {**config, **kind}
           for family, kind in FAMILIES.items() for size, config in SIZES.items()}

register_configs(CONFIGS, SwinTransformer, __name__)
