"""``hilbertattn show``: pictures of the curves, of what each pattern attends, and of block plans.

Writes three PNG files:

- ``curves.png``: the curve drawn over several grids (a power of two, non-square sizes, a 3-D
  box), coloured from start to end;
- ``attention.png``: for one query cell, the keys each pattern attends, on the 2-D grid;
- ``plan.png``: tile maps of block plans (a neighbourhood, Swin windows) in row-major and
  Hilbert order, empty, partial and full tiles in three colours.

Drawing goes through matplotlib's Agg canvas directly (no pyplot, no display needed).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ..layout import Layout
from ..patterns import Neighborhood, Pattern, Slide, Window, Window2D
from ..plan import block_plan

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# matplotlib (an optional dependency) is imported where a picture is drawn, so that the other
# subcommands run without it.
CURVE_COLORMAP = "viridis"
CELL_COLORS = ["#ececec", "#4c9be8", "#d62728"]  # not attended, attended, query
TILE_COLORS = ["#f7f7f7", "#f2a541", "#2b6cb0"]  # empty, partial, full


def add_parser(sub) -> None:
    p = sub.add_parser("show", help="PNG pictures of curves, attention patterns and block plans",
                       description="Draws the Hilbert curve over grids, the keys each pattern "
                       "attends for one query, and block-plan tile maps in row-major vs Hilbert "
                       "order; writes PNG files and prints their paths.")
    p.add_argument("--out", type=Path, default=Path("."), help="output folder (default: .)")
    p.add_argument("--curve-grids", nargs="+", default=["16x16", "12x20", "4x4x4"],
                   metavar="HxW", help="grids (HxW) and boxes (TxHxW) for the curve picture "
                   "(default: 16x16 12x20 4x4x4)")
    p.add_argument("--grid", type=int, nargs=2, default=[24, 32], metavar=("H", "W"),
                   help="grid of the attention picture (default: 24 32)")
    p.add_argument("--query", type=int, nargs=2, default=None, metavar=("R", "C"),
                   help="query cell of the attention picture (default: the grid's centre)")
    p.add_argument("--window", type=int, default=64,
                   help="tokens per window of Hilbert window attention (default: 64)")
    p.add_argument("--window-size", type=int, default=8,
                   help="side of the Swin windows (default: 8)")
    p.add_argument("--kernel-size", type=int, default=7,
                   help="neighbourhood kernel size; the slide window along the curve has "
                        "kernel_size**2 tokens (default: 7)")
    p.add_argument("--dilation", type=int, default=1, help="neighbourhood dilation (default: 1)")
    p.add_argument("--plan-grid", type=int, nargs=2, default=[128, 128], metavar=("H", "W"),
                   help="grid of the tile-map picture (default: 128 128)")
    p.add_argument("--plan-kernel-size", type=int, default=13,
                   help="neighbourhood kernel size of the tile-map picture (default: 13)")
    p.add_argument("--plan-window-size", type=int, default=16,
                   help="Swin window side of the tile-map picture (default: 16)")
    p.add_argument("--tile", type=int, default=128,
                   help="query and key tile size of the tile-map picture (default: 128)")
    p.add_argument("--dpi", type=int, default=100)
    p.set_defaults(func=run)


def parse_grid(text: str) -> tuple[int, ...]:
    """``"12x20"`` -> ``(12, 20)``; ``"4x4x4"`` -> ``(4, 4, 4)``."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"--curve-grids entries must look like HxW or TxHxW with positive sizes, "
                         f"got {text!r}")
    return shape


def attended_cells(layout: Layout, pattern: Pattern, query: tuple[int, ...]) -> Tensor:
    """Bool ``[*layout.shape]``: the cells holding the keys that the token at cell ``query``
    attends under ``pattern`` (evaluated with ``pattern.mask`` on sequence positions)."""
    if len(query) != layout.ndim or any(not 0 <= q < s for q, s in zip(query, layout.shape)):
        raise ValueError(f"--query must be a cell of the grid {layout.shape}, got {tuple(query)}")
    row_major = 0
    for q, size in zip(query, layout.shape):
        row_major = row_major * size + q
    n = layout.numel
    position = layout.inverse[row_major]
    attended = pattern.mask(position, torch.arange(n, device=layout.device), n)  # by position
    cells = torch.zeros(n, dtype=torch.bool, device=layout.device)
    cells[layout.perm] = attended
    return cells.view(layout.shape)


def _segments(coords: np.ndarray) -> np.ndarray:
    """``[N, d]`` points -> ``[N - 1, 2, d]`` consecutive segments."""
    return np.stack([coords[:-1], coords[1:]], axis=1)


def _draw_curve_2d(ax, layout: Layout, linewidth: float = 2.0, colored: bool = True) -> None:
    """The curve through the cell centres, x = column and y = row (row 0 on top)."""
    from matplotlib.collections import LineCollection

    xy = layout.coords.cpu().numpy()[:, ::-1].astype(float)
    if colored:
        lines = LineCollection(_segments(xy), cmap=CURVE_COLORMAP, linewidths=linewidth,
                               capstyle="round")
        lines.set_array(np.arange(len(xy) - 1))
    else:
        lines = LineCollection(_segments(xy), colors="#555555", linewidths=linewidth, alpha=0.5)
    ax.add_collection(lines)


def _grid_axes(ax, shape: tuple[int, int], title: str) -> None:
    h, w = shape
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)


def figure_curves(shapes: list[tuple[int, ...]]) -> Figure:
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    fig = Figure(figsize=(4.2 * len(shapes), 4.6), layout="constrained")
    for k, shape in enumerate(shapes):
        layout = Layout(shape)
        title = f"{'x'.join(map(str, shape))}: {layout.numel} tokens"
        if len(shape) == 2:
            ax = fig.add_subplot(1, len(shapes), k + 1)
            _draw_curve_2d(ax, layout, linewidth=max(1.0, 40 / max(shape)))
            _grid_axes(ax, shape, title)
            ax.plot(*layout.coords[0].flip(0).numpy(), "o", color="black", ms=4)
        else:
            ax = fig.add_subplot(1, len(shapes), k + 1, projection="3d")
            xyz = layout.coords.numpy()[:, ::-1].astype(float)  # x = column, y = row, z = t
            lines = Line3DCollection(_segments(xyz), cmap=CURVE_COLORMAP, linewidths=2.0)
            lines.set_array(np.arange(len(xyz) - 1))
            ax.add_collection3d(lines)
            for axis, size in zip("xyz", shape[::-1]):
                getattr(ax, f"set_{axis}lim")(-0.5, size - 0.5)
            ax.set_box_aspect(shape[::-1])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_zticks([])
            ax.set_title(title, fontsize=10)
    fig.suptitle("Generalized Hilbert curves (colour: position along the curve, dark = start)")
    return fig


def attention_patterns(layout: Layout, window: int, window_size: int, kernel_size: int,
                       dilation: int) -> list[tuple[str, Pattern, bool]]:
    """``(title, pattern, follows_curve)`` for each pattern of the attention picture."""
    return [
        (f"HWA: window of {window} tokens", Window(window), True),
        (f"HWA shifted by {window // 2}", Window(window, window // 2), True),
        (f"HSA: 1-D neighbourhood of {kernel_size ** 2}", Slide(kernel_size ** 2, clamped=True),
         True),
        (f"exact NA {kernel_size}x{kernel_size}" + (f", dilation {dilation}" if dilation > 1
                                                   else ""),
         Neighborhood(layout, kernel_size, dilation), False),
        (f"Swin window {window_size}x{window_size}", Window2D(layout, window_size), False),
        (f"Swin shifted by {window_size // 2}", Window2D(layout, window_size, window_size // 2),
         False),
    ]


def figure_attention(shape: tuple[int, int], query: tuple[int, int], window: int,
                     window_size: int, kernel_size: int, dilation: int) -> Figure:
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    layout = Layout(shape)
    panels = attention_patterns(layout, window, window_size, kernel_size, dilation)
    cols = 3
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.6 * rows * shape[0] / shape[1] + 0.8), layout="constrained")
    for k, (title, pattern, follows_curve) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        cells = attended_cells(layout, pattern, query).to(torch.int8)
        cells[query] = 2
        ax.imshow(cells.numpy(), cmap=ListedColormap(CELL_COLORS), vmin=0, vmax=2,
                  interpolation="nearest")
        if follows_curve:
            _draw_curve_2d(ax, layout, linewidth=0.8, colored=False)
        else:  # cell borders, so that window sides can be counted
            ax.set_xticks(np.arange(-0.5, shape[1]), minor=True)
            ax.set_yticks(np.arange(-0.5, shape[0]), minor=True)
            ax.grid(which="minor", color="white", linewidth=0.6)
            ax.tick_params(which="minor", length=0)
        _grid_axes(ax, shape, f"{title}\n{int((cells > 0).sum())} keys")
    fig.suptitle(f"Keys attended by the query at {tuple(query)} (red) on a "
                 f"{shape[0]}x{shape[1]} grid, Hilbert layout")
    return fig


def plan_patterns(kernel_size: int, window_size: int
                  ) -> list[tuple[str, Callable[[Layout], Pattern]]]:
    """``(title, pattern on a layout)`` for each row of the tile-map picture."""
    return [
        (f"exact {kernel_size}x{kernel_size} neighbourhood",
         lambda layout: Neighborhood(layout, kernel_size)),
        (f"Swin {window_size}x{window_size} windows",
         lambda layout: Window2D(layout, window_size)),
    ]


def figure_plan(shape: tuple[int, int], tile: int, kernel_size: int, window_size: int) -> Figure:
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    patterns = plan_patterns(kernel_size, window_size)
    fig = Figure(figsize=(9, 4.6 * len(patterns) + 0.6), layout="constrained")
    for row, (title, make_pattern) in enumerate(patterns):
        for col, (order, name) in enumerate((("rowmajor", "row-major"), ("hilbert", "Hilbert"))):
            layout = Layout(shape, order)
            plan = block_plan(make_pattern(layout), layout.numel, tile, tile)
            ax = fig.add_subplot(len(patterns), 2, 2 * row + col + 1)
            ax.imshow(plan.dense().numpy(), cmap=ListedColormap(TILE_COLORS), vmin=0, vmax=2,
                      interpolation="nearest")
            ax.set_title(f"{title}, {name}\ndensity {plan.density:.2%}, partial share "
                         f"{plan.partial_share:.0%}", fontsize=10)
            ax.set_xlabel("key tile")
            ax.set_ylabel("query tile")
    fig.legend(handles=[Patch(color=TILE_COLORS[i], label=label)
                        for i, label in enumerate(("empty", "partial (masked)", "full"))],
               loc="outside lower center", ncols=3)
    fig.suptitle(f"Block plans on a {shape[0]}x{shape[1]} grid, {tile}x{tile}-token tiles")
    return fig


def save(fig: Figure, path: Path, dpi: int) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)
    return path


def run(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise SystemExit("hilbertattn show needs matplotlib: pip install 'hilbertattn[plot]'"
                         ) from err
    grids = [parse_grid(text) for text in args.curve_grids]
    shape = tuple(args.grid)
    query = tuple(args.query) if args.query else (shape[0] // 2, shape[1] // 2)
    args.out.mkdir(parents=True, exist_ok=True)
    figures = {
        "curves.png": figure_curves(grids),
        "attention.png": figure_attention(shape, query, args.window, args.window_size,
                                          args.kernel_size, args.dilation),
        "plan.png": figure_plan(tuple(args.plan_grid), args.tile, args.plan_kernel_size,
                               args.plan_window_size),
    }
    for name, fig in figures.items():
        print(save(fig, args.out / name, args.dpi))
    return 0
