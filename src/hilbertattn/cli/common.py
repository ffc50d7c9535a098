"""Pieces shared by the subcommands: building a pattern from command-line options."""

from __future__ import annotations

import argparse

from ..layout import Layout
from ..patterns import Neighborhood, Pattern, Slide, Window, Window2D

PATTERNS = ("window", "slide", "neighborhood", "window2d")


def add_pattern_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", type=int, nargs="+", default=[256, 256], metavar="SIZE",
                        help="grid shape, H W or T H W (default 256 256)")
    parser.add_argument("--pattern", choices=PATTERNS, default="neighborhood")
    parser.add_argument("--window", type=int, default=None,
                        help="tokens per window (window: 64, slide: 169) or the window side "
                             "(window2d: 8)")
    parser.add_argument("--shift", type=int, default=0, help="window / window2d shift")
    parser.add_argument("--clamped", action="store_true", help="slide: clamped 1-D neighbourhood")
    parser.add_argument("--kernel-size", type=int, default=13, help="neighborhood kernel size")
    parser.add_argument("--dilation", type=int, default=1, help="neighborhood dilation")
    parser.add_argument("--tile", type=int, nargs="+", default=None,
                        help="tile shape for --order tiled (default 8 per axis)")


def make_pattern(args: argparse.Namespace, order: str) -> tuple[Layout, Pattern]:
    """The layout of ``--grid`` in ``order`` and the pattern the options describe on it."""
    tile = tuple(args.tile) if order == "tiled" and args.tile else None
    layout = Layout(tuple(args.grid), order, tile)
    if args.pattern == "window":
        return layout, Window(args.window or 64, args.shift)
    if args.pattern == "slide":
        return layout, Slide(args.window or 169, args.clamped)
    if args.pattern == "window2d":
        return layout, Window2D(layout, args.window or 8, args.shift)
    return layout, Neighborhood(layout, args.kernel_size, args.dilation,
                                even_kernel=args.kernel_size % 2 == 0)
