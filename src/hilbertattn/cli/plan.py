"""``hilbertattn plan``: block density and partial share of a pattern, per layout order."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from ..plan import block_plan
from .common import add_pattern_options, make_pattern

ORDERS = ("hilbert", "rowmajor", "tiled")


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="block density of a pattern in each layout order",
                       description="Plans the pattern on the grid and reports the share of "
                       "query/key tiles computed (density) and the share of those needing a mask.")
    add_pattern_options(p)
    p.add_argument("--order", choices=ORDERS, default=None,
                   help="one order only (default: compare all three)")
    p.add_argument("--q-tile", type=int, default=128)
    p.add_argument("--kv-tile", type=int, default=128)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def plan_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    for order in [args.order] if args.order else ORDERS:
        layout, pattern = make_pattern(args, order)
        plan = block_plan(pattern, layout.numel, args.q_tile, args.kv_tile)
        rows.append({"order": order, "grid": list(layout.shape), "pattern": repr(pattern),
                     "q_tile": args.q_tile, "kv_tile": args.kv_tile,
                     "tiles": plan.n_full + plan.n_partial,
                     "all_tiles": plan.n_q_tiles * plan.n_kv_tiles,
                     "density": plan.density, "partial_share": plan.partial_share})
    return rows


def run(args: argparse.Namespace) -> int:
    rows = plan_rows(args)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"{args.pattern} on {'x'.join(map(str, args.grid))}, "
                  f"{args.q_tile}x{args.kv_tile} tiles")
    for col in ("order", "computed tiles", "density", "partial share"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["order"], f"{r['tiles']:,} / {r['all_tiles']:,}", f"{r['density']:.2%}",
                      f"{r['partial_share']:.0%}")
    Console().print(table)
    return 0
