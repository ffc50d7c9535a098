"""Neighborhood Attention Transformer (NAT) and the Hilbert Neighborhood Transformer (HNT): one
network, two attentions.

- ``attention="neighborhood"`` (``nat_*``): exact 2-D neighbourhood attention (NATTEN semantics,
  ``kernel_size x kernel_size``) with NAT's relative position bias table (``2k - 1`` per axis).
  The function does not depend on the token order: ``layout="hilbert"`` computes exactly what the
  row-major model computes, with the same parameters (``load_state_dict`` across the two works),
  only in a sequence order where the neighbourhoods are nearly contiguous.
- ``attention="hilbert_slide"`` (``hnt_*``): the clamped 1-D neighbourhood of ``kernel_size**2``
  tokens along the curve (``Slide(kernel_size**2, clamped=True)``), with a relative position bias
  indexed by the true 2-D offset of each pair (radius: by default the covering radius of each
  block's pattern on its layout, so the table size depends on ``img_size``).

Where a stage's grid is narrower than the kernel, the neighbourhood covers the whole axis
(``kernel = min(kernel_size, side)``, NATTEN's window rule, even sizes included); where it holds
at most ``kernel_size**2`` tokens, HNT attends all of them.

NAT's tokenizer (two 3x3 convolutions) and downsamplers (3x3 convolutions, stride 2) need the 2-D
map: the downsampler unflattens the tokens from one stage's layout, convolves and flattens into
the next stage's layout.
"""

from __future__ import annotations

from timm.layers import to_2tuple
from torch import Tensor, nn

from ..layout import Layout
from ..nn import HilbertSlideAttention, HilbertWindowAttention, NeighborhoodAttention
from .common import CurveTransformer, Grid, register_configs

__all__ = ["NeighborhoodTransformer", "ConvTokenizer", "ConvDownsampler", "CONFIGS", "ATTENTIONS"]

ATTENTIONS = ("neighborhood", "hilbert_slide")


def _conv_out(size: int, stride: int) -> int:
    """Output length of a 3x3 convolution with padding 1."""
    return (size - 1) // stride + 1


class ConvTokenizer(nn.Module):
    """NAT's tokenizer: two 3x3 convolutions (``dim // 2`` then ``dim`` channels) with ``strides``
    (NAT: 2 and 2), then LayerNorm: images ``[B, in_chans, H, W]`` -> ``[B, H', W', dim]``."""

    def __init__(self, in_chans: int, dim: int, strides: tuple[int, int] = (2, 2)) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, dim // 2, kernel_size=3, stride=self.strides[0], padding=1),
            nn.Conv2d(dim // 2, dim, kernel_size=3, stride=self.strides[1], padding=1))
        self.norm = nn.LayerNorm(dim)

    def grid(self, img_size: Grid) -> Grid:
        h, w = img_size
        for stride in self.strides:
            h, w = _conv_out(h, stride), _conv_out(w, stride)
        return h, w

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """NAT's downsampler: a 3x3 convolution with stride 2 (no bias) doubling the channels, then
    LayerNorm. ``[B, N, dim]`` in the order of ``layout_in`` -> ``[B, N', 2 * dim]`` in the order
    of ``layout_out``; the convolution runs on the 2-D map (unflatten, convolve, flatten)."""

    def __init__(self, layout_in: Layout, layout_out: Layout, dim: int) -> None:
        super().__init__()
        if layout_out.shape != tuple(_conv_out(s, 2) for s in layout_in.shape):
            raise ValueError(f"layout_out must have the grid of a stride-2 convolution of "
                             f"{layout_in.shape}, got {layout_out.shape}")
        self.in_grid, self.out_grid = layout_in.shape, layout_out.shape
        # layout_in.unflatten and layout_out.flatten, with their permutations on the model's device
        self.register_buffer("to_rowmajor", layout_in.inverse.clone(), persistent=False)
        self.register_buffer("to_sequence", layout_out.perm.clone(), persistent=False)
        self.reduction = nn.Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        B, _, C = x.shape
        grid = x.index_select(1, self.to_rowmajor).view(B, *self.in_grid, C).permute(0, 3, 1, 2)
        out = self.norm(self.reduction(grid).permute(0, 2, 3, 1))
        return out.flatten(1, 2).index_select(1, self.to_sequence)


class NeighborhoodTransformer(CurveTransformer):
    """NAT (``attention="neighborhood"``) or HNT (``attention="hilbert_slide"``).

    Args:
        img_size: input height and width (an int for square images).
        in_chans, num_classes: input channels and classes (0: no head).
        embed_dim: channels of the first stage (doubled by each downsampler).
        depths, num_heads: blocks and attention heads per stage.
        kernel_size: odd neighbourhood side; HNT's neighbourhood holds ``kernel_size**2`` tokens.
        attention: ``"neighborhood"`` or ``"hilbert_slide"``.
        tokenizer_strides: strides of the tokenizer's two convolutions (NAT: ``(2, 2)``).
        bias_radius: relative position bias radius; None: ``kernel_size - 1`` (NAT's table) for
            ``neighborhood``, the covering radius of each block's pattern for ``hilbert_slide``.
        mlp_ratio, qkv_bias: MLP hidden width over ``dim``; bias of the qkv projection.
        drop_rate, proj_drop_rate, attn_drop_rate, drop_path_rate: dropout before the head, after
            projections, on attention probabilities (must be 0, see ``hilbertattn.nn``), and the
            stochastic depth rate (linear over blocks).
        layout: token order, ``"hilbert"``, ``"rowmajor"`` or ``"tiled"``; None: row-major for
            ``neighborhood``, Hilbert for ``hilbert_slide``.
        backend: attention backend (``"auto"``, ``"triton"``, ``"flex"``, ``"reference"``).
    """

    def __init__(self, img_size: int | Grid = 224, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 64, depths: tuple[int, ...] = (3, 4, 6, 5),
                 num_heads: tuple[int, ...] = (2, 4, 8, 16), kernel_size: int = 7,
                 attention: str = "neighborhood", tokenizer_strides: tuple[int, int] = (2, 2),
                 bias_radius: int | None = None, mlp_ratio: float = 3.0, qkv_bias: bool = True,
                 drop_rate: float = 0.0, proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.2, layout: str | None = None,
                 backend: str = "auto") -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 \
                or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        if len(tokenizer_strides) != 2 or any(s not in (1, 2) for s in tokenizer_strides):
            raise ValueError(f"tokenizer_strides must be two strides of 1 or 2, got "
                             f"{tokenizer_strides!r}")
        self.attention, self.kernel_size, self.bias_radius = attention, kernel_size, bias_radius
        self.attn_kwargs = dict(qkv_bias=qkv_bias, attn_drop=attn_drop_rate,
                                proj_drop=proj_drop_rate, rel_pos_bias=True, backend=backend)
        if layout is None:
            layout = "rowmajor" if attention == "neighborhood" else "hilbert"
        tokenizer = ConvTokenizer(in_chans, embed_dim, tokenizer_strides)
        size = to_2tuple(img_size)
        self._build(patch_embed=tokenizer, img_size=size, grid=tokenizer.grid(size),
                    in_chans=in_chans, num_classes=num_classes, embed_dim=embed_dim,
                    depths=tuple(depths), num_heads=tuple(num_heads), mlp_ratio=mlp_ratio,
                    layout=layout, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                    proj_drop_rate=proj_drop_rate)

    def _attention(self, stage: int, block: int, dim: int, heads: int, layout: Layout) -> nn.Module:
        if self.attention == "neighborhood":
            kernel = tuple(min(self.kernel_size, side) for side in layout.shape)
            radius = self.kernel_size - 1 if self.bias_radius is None else self.bias_radius
            return NeighborhoodAttention(dim, heads, layout, kernel,
                                         even_kernel=any(k % 2 == 0 for k in kernel),
                                         bias_radius=radius, **self.attn_kwargs)
        tokens = self.kernel_size ** 2
        if layout.numel <= tokens:  # the neighbourhood holds the whole grid
            return HilbertWindowAttention(dim, heads, layout.numel, layout=layout,
                                          bias_radius=self.bias_radius, **self.attn_kwargs)
        return HilbertSlideAttention(dim, heads, tokens, clamped=True, layout=layout,
                                     bias_radius=self.bias_radius, **self.attn_kwargs)

    def _next_grid(self, grid: Grid, stage: int) -> Grid:
        return _conv_out(grid[0], 2), _conv_out(grid[1], 2)

    def _downsample(self, layout_in: Layout, layout_out: Layout, dim: int) -> nn.Module:
        return ConvDownsampler(layout_in, layout_out, dim)


# Named configurations. mini / tiny: NAT-Mini (20M parameters at 224 x 224, 1000 classes) and
# NAT-Tiny (28M). cifar: 32 x 32 images, a tokenizer of strides 2 and 1 (a 16 x 16 grid at
# stage 1), 7 x 7 neighbourhoods (HNT: 49 tokens). 64: the same network on 64 x 64 images (a
# 32 x 32 grid at stage 1), 200 classes (Tiny ImageNet).
SIZES = {
    "mini": dict(img_size=224, num_classes=1000, embed_dim=64, depths=(3, 4, 6, 5),
                 num_heads=(2, 4, 8, 16), kernel_size=7, mlp_ratio=3.0, drop_path_rate=0.2),
    "tiny": dict(img_size=224, num_classes=1000, embed_dim=64, depths=(3, 4, 18, 5),
                 num_heads=(2, 4, 8, 16), kernel_size=7, mlp_ratio=3.0, drop_path_rate=0.2),
    "cifar": dict(img_size=32, num_classes=10, embed_dim=64, depths=(2, 2, 4),
                  num_heads=(2, 4, 8), kernel_size=7, mlp_ratio=3.0, tokenizer_strides=(2, 1),
                  drop_path_rate=0.1),
    "64": dict(img_size=64, num_classes=200, embed_dim=64, depths=(2, 2, 4),
               num_heads=(2, 4, 8), kernel_size=7, mlp_ratio=3.0, tokenizer_strides=(2, 1),
               drop_path_rate=0.1),
}
FAMILIES = {"nat": dict(attention="neighborhood", layout="rowmajor"),
            "hnt": dict(attention="hilbert_slide", layout="hilbert")}
CONFIGS = {f"{family}_{size}": {**config, **kind}
           for family, kind in FAMILIES.items() for size, config in SIZES.items()}

register_configs(CONFIGS, NeighborhoodTransformer, __name__)
