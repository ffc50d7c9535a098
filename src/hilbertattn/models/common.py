"""What the model families share: the transformer block, the curve-ordered hierarchical backbone,
2x2 patch merging in sequence order, and registration of named configs with timm."""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, to_2tuple, trunc_normal_
from timm.models import register_model
from torch import Tensor, nn

from ..layout import ORDERS, Layout

__all__ = ["Block", "PatchMerging", "CurveTransformer", "register_configs"]

Grid = tuple[int, int]


class Block(nn.Module):
    """Pre-norm transformer block on tokens in layout order ``[B, N, dim]``:
    ``x + DropPath(attn(LN(x)))``, then ``x + DropPath(Mlp(LN(x)))``."""

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float, drop_path: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Swin's 2x2 patch merging, from the sequence order of ``layout_in`` straight to that of
    ``layout_out`` (the grid halved, rounded up): ``[B, N, dim]`` -> ``[B, N', 2 * dim]``.

    The four tokens of each 2x2 quad are concatenated in Swin's order (offsets (0, 0), (1, 0),
    (0, 1), (1, 1)), normalized and projected by a linear map. Along an odd side the last quads
    lack their second row or column: those members are zeros, as in Swin, which pads the map
    with zeros to even sides before merging.

    One precomputed gather does it: where the fine curve refines the coarse one
    (``quad_aligned``: every four consecutive tokens form the quad of the coarse token at the same
    rank, as on the Hilbert curve of a ``2^k x 2^k`` grid), the gather only reorders tokens inside
    each group of four and no token leaves its place in the sequence. Elsewhere (the generalized
    Hilbert curve of a grid whose sides are not powers of two, e.g. 56 x 56 -> 28 x 28 in a
    224-pixel Swin, or any row-major layout) it is a permutation of the whole sequence: the data
    movement of ``layout_in.unflatten`` followed by ``layout_out.flatten``, done once instead of
    twice.
    """

    def __init__(self, layout_in: Layout, layout_out: Layout, dim: int) -> None:
        super().__init__()
        (h, w), n = layout_in.shape, layout_in.numel
        if layout_out.shape != ((h + 1) // 2, (w + 1) // 2):
            raise ValueError(f"layout_out must have the grid of {layout_in.shape} halved (rounded "
                             f"up), got {layout_out.shape}")
        coarse = layout_out.coords.cpu()
        quad = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]])
        fine = 2 * coarse[:, None, :] + quad  # [N', 4, 2] grid coordinates of each quad member
        inside = (fine[..., 0] < h) & (fine[..., 1] < w)
        rowmajor = fine[..., 0].clamp(max=h - 1) * w + fine[..., 1].clamp(max=w - 1)
        # Members outside the grid read position n: a zero token appended in forward.
        rank = torch.where(inside, layout_in.inverse.cpu()[rowmajor], n)
        self.padded = not bool(inside.all())
        self.quad_aligned = bool((rank // 4 == torch.arange(len(coarse))[:, None]).all())
        self.register_buffer("gather_index", rank.flatten(), persistent=False)
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, _, C = x.shape
        if self.padded:
            x = torch.cat([x, x.new_zeros(B, 1, C)], dim=1)
        quads = x.index_select(1, self.gather_index).reshape(B, -1, 4 * C)
        return self.reduction(self.norm(quads))

    def extra_repr(self) -> str:
        return f"quad_aligned={self.quad_aligned}, padded={self.padded}"


class CurveTransformer(nn.Module):
    """Hierarchical vision transformer whose tokens stay in the order of a layout from the patch
    embedding to the pooling: the embedding's ``[B, H, W, C]`` map is flattened once with the
    first stage's layout, each stage's blocks work on ``[B, N, C]`` in that order, each
    downsampler maps it to the next stage's layout, and the average pool does not care.

    Families subclass it: their ``__init__`` calls ``nn.Module.__init__`` (through ``super``),
    sets its own fields (``attn_kwargs``: the keyword arguments every attention module gets) and
    calls ``_build`` with the patch embedding; ``_attention`` makes the attention module of one
    block, ``_downsample`` the module between two stages and ``_next_grid`` the grid it
    produces.
    """

    def _build(self, *, patch_embed: nn.Module, img_size: int | Grid, grid: Grid, in_chans: int,
               num_classes: int, embed_dim: int, depths: tuple[int, ...],
               num_heads: tuple[int, ...], mlp_ratio: float, layout: str, drop_rate: float,
               drop_path_rate: float, proj_drop_rate: float) -> None:
        if len(depths) != len(num_heads) or not depths:
            raise ValueError(f"depths and num_heads must have one entry per stage, got depths="
                             f"{depths}, num_heads={num_heads}")
        if layout not in ORDERS:
            raise ValueError(f"layout must be one of {ORDERS}, got {layout!r}")
        self.img_size, self.in_chans, self.num_classes = to_2tuple(img_size), in_chans, num_classes
        self.order = layout
        self.patch_embed = patch_embed
        # layouts[0].flatten, with the permutation on the model's device
        self.register_buffer("token_order", Layout(grid, layout).perm.clone(), persistent=False)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layouts: list[Layout] = []
        self.stages = nn.ModuleList()
        dim = embed_dim
        for s, (depth, heads) in enumerate(zip(depths, num_heads)):
            stage_layout = Layout(grid, layout)
            self.layouts.append(stage_layout)
            blocks = [Block(dim, self._attention(s, b, dim, heads, stage_layout), mlp_ratio,
                            rates.pop(0), proj_drop_rate) for b in range(depth)]
            stage = nn.Sequential(*blocks)
            if s + 1 < len(depths):
                grid = self._next_grid(grid, s)
                stage.append(self._downsample(stage_layout, Layout(grid, layout), dim))
                dim *= 2
            self.stages.append(stage)
        self.num_features = dim
        self.norm = nn.LayerNorm(dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    def _attention(self, stage: int, block: int, dim: int, heads: int, layout: Layout) -> nn.Module:
        raise NotImplementedError

    def _downsample(self, layout_in: Layout, layout_out: Layout, dim: int) -> nn.Module:
        raise NotImplementedError

    def _next_grid(self, grid: Grid, stage: int) -> Grid:
        raise NotImplementedError

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``[B, in_chans, *img_size]`` -> normalized tokens ``[B, N, num_features]`` of
        the last stage, in the order of its layout (``self.layouts[-1]``)."""
        if x.dim() != 4 or x.shape[1] != self.in_chans or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"x must have shape [B, {self.in_chans}, {self.img_size[0]}, "
                             f"{self.img_size[1]}] (the model's img_size), got {list(x.shape)}")
        x = self.patch_embed(x).flatten(1, 2).index_select(1, self.token_order)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(x.mean(1))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """Images ``[B, in_chans, *img_size]`` -> logits ``[B, num_classes]``."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool must be 'avg', got {global_pool!r}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Relative position bias tables are not weight-decayed (as in Swin and NAT)."""
        return {name for name, _ in self.named_parameters()
                if name.endswith("relative_position_bias_table")}


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def register_configs(configs: dict[str, dict[str, Any]], model_class: Callable[..., nn.Module],
                     module_name: str) -> None:
    """Register one timm entry point per named config, defined in ``module_name`` (so that
    ``timm.create_model(name, **overrides)`` builds ``model_class(**config, **overrides)``)."""
    module = sys.modules[module_name]
    for name, config in configs.items():
        entry = _entry_point(name, config, model_class)
        entry.__module__ = module_name
        setattr(module, name, register_model(entry))


def _entry_point(name: str, config: dict[str, Any], model_class: Callable[..., nn.Module]):
    def entry(pretrained: bool = False, pretrained_cfg: Any = None,
              pretrained_cfg_overlay: Any = None, cache_dir: Any = None, **overrides: Any):
        if pretrained:
            raise ValueError(f"pretrained must be False: no pretrained weights exist for {name}")
        model = model_class(**{**config, **overrides})
        model.pretrained_cfg = model.default_cfg = {
            "architecture": name, "input_size": (model.in_chans, *model.img_size),
            "num_classes": model.num_classes, "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD, "interpolation": "bicubic", "crop_pct": 0.9,
            "classifier": "head"}
        return model

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"``{name}``: {model_class.__name__} with {config}."
    return entry
