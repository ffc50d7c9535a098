"""``hilbertattn bench``: the benchmark cases (times, ratios, densities and floors), a sweep over
grid sizes with a plot, and end-to-end model throughput (``--models``).

On a CUDA device the cases run at the sizes of the benchmark page; on a CPU a small version of
each (see ``Case.cpu``), in float32, with the reference backend in place of triton. The measuring
itself is in ``hilbertattn.bench``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch
from rich import box
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn)
from rich.table import Table

from .. import bench
from ..bench import CASES, METHODS, PASSES, Case, ModelSpec, Problem, Settings

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_SWEEP = {"cuda": (64, 128, 256, 512, 1024), "cpu": (16, 32, 48)}
DEFAULT_IMG_SIZES = {"cuda": (224, 1024), "cpu": (64,)}
DEFAULTS = {  # per device type: reps, warm-up calls, copy buffer for the bandwidth (MiB)
    "cuda": dict(reps=20, warmup=5, copy_mib=1024),
    "cpu": dict(reps=5, warmup=1, copy_mib=64),
}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="benchmark the cases: times, ratios, block densities and floors",
        description="Times each method on each case, forward and forward+backward, against dense "
        "SDPA, Swin's partition + SDPA and row-major FlexAttention masks measured in the same run; "
        "reports block density, the memory floor (q, k, v read and o written once; plus dO read "
        "and dQ, dK, dV written for the backward, at the copy bandwidth measured in the run) and "
        "the block-sparse speed of light (dense SDPA time x density). On a CPU it runs small "
        "versions of the cases.")
    p.add_argument("--cases", action="append", default=None, metavar="IDS",
                   help=f"comma-separated case ids, repeatable ({', '.join(bench.CASE_IDS)}); "
                        "default: all (on a CPU all but flux-4k; with --sweep: neighborhood)")
    p.add_argument("--methods", action="append", default=None, metavar="NAMES",
                   help=f"comma-separated methods ({', '.join(METHODS)}); default: "
                        f"{','.join(bench.DEFAULT_METHODS['cuda'])} on CUDA, "
                        f"{','.join(bench.DEFAULT_METHODS['cpu'])} on a CPU")
    p.add_argument("--grid", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="grid of every case (default: each case's own)")
    p.add_argument("--batch", type=int, default=None, help="batch of every case")
    p.add_argument("--heads", type=int, default=None, help="heads of every case")
    p.add_argument("--head-dim", type=int, default=None, help="head dim of every case")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="input dtype (default: each case's on CUDA, fp32 on a CPU)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--passes", default=None, metavar="PASSES",
                   help="comma-separated: fwd, fwd+bwd (default both; fwd with --sweep)")
    p.add_argument("--reps", type=int, default=None,
                   help="timed runs per measurement (default 20 on CUDA, 5 on a CPU)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed runs after the first call (default 5 on CUDA, 1 on a CPU)")
    p.add_argument("--max-seconds", type=float, default=10.0,
                   help="time one measurement may take; slower calls get fewer timed runs (at "
                        "least 3; the table marks them) (default 10)")
    p.add_argument("--sweep", default=None, metavar="SIZES",
                   help="comma-separated grid sides: run each case on S x S grids (default with "
                        "--plot: 64,128,256,512,1024 on CUDA, 16,32,48 on a CPU)")
    p.add_argument("--plot", type=Path, default=None, metavar="PNG",
                   help="plot time against grid size (log-log, one line per method) of the sweep")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="write the raw numbers, the device and versions, commit and command")
    p.add_argument("--models", nargs="?", const="", default=None, metavar="NAMES",
                   help="instead of the cases, end-to-end images/s of timm models (comma-"
                        "separated, NAME or NAME:LAYOUT; default: swin_tiny, hwt_tiny, nat_tiny, "
                        "nat_tiny:hilbert, hnt_tiny), inference and training")
    p.add_argument("--img-sizes", default=None, metavar="SIZES",
                   help="--models image sides (default 224,1024 on CUDA, 64 on a CPU)")
    p.add_argument("--model-batch", type=int, default=None,
                   help="--models batch (default: 64 at 224 scaled by pixel count on CUDA, 2 on "
                        "a CPU); halved on running out of memory")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="--models: record each step in a CUDA graph and time its replays (the "
                        "GPU's work without the per-op launch cost of the Python side)")
    p.add_argument("--compile", action="store_true",
                   help="--models: run each model through torch.compile (the first step "
                        "compiles it, outside the timed steps)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------------


def _list(option: str, values: list[str] | str | None, allowed=None) -> list[str]:
    """Comma-separated (and repeated) option values, checked against ``allowed``."""
    if values is None:
        return []
    items = [v.strip() for text in ([values] if isinstance(values, str) else values)
             for v in text.split(",") if v.strip()]
    if not items:
        raise ValueError(f"{option} must name at least one value")
    for item in items:
        if allowed is not None and item not in allowed:
            raise ValueError(f"{option}: unknown value {item!r}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def _sizes(option: str, text: str | None) -> list[int]:
    sizes = []
    for item in _list(option, text):
        if not item.isdigit() or int(item) < 1:
            raise ValueError(f"{option} must be comma-separated positive ints, got {text!r}")
        sizes.append(int(item))
    return sizes


def _device(text: str | None) -> torch.device:
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as error:
        raise ValueError(f"--device {text!r} is not a device: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text!r}: CUDA is not available here; use --device cpu")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"--device must be cuda or cpu, got {text!r}")
    return device


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Validate the options and fill in the device-dependent defaults; ``ValueError`` names the
    option at fault."""
    device = _device(args.device)
    kind = device.type
    for option in ("batch", "heads", "head_dim", "reps", "model_batch"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be positive, got {value}")
    if args.warmup is not None and args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    if not args.max_seconds > 0:
        raise ValueError(f"--max-seconds must be positive, got {args.max_seconds}")
    if args.grid is not None and min(args.grid) < 1:
        raise ValueError(f"--grid must be two positive ints H W, got {args.grid}")
    models = args.models is not None
    case_options = dict(cases=args.cases, methods=args.methods, grid=args.grid,
                        sweep=args.sweep, plot=args.plot, passes=args.passes)
    model_options = {"img-sizes": args.img_sizes, "model-batch": args.model_batch,
                     "cuda-graphs": args.cuda_graphs or None, "compile": args.compile or None}
    for option, value in (case_options if models else model_options).items():
        if value is not None:
            raise ValueError(f"--{option} does not apply "
                             f"{'to --models' if models else 'without --models'}")
    if args.cuda_graphs and kind != "cuda":
        raise ValueError(f"--cuda-graphs needs a CUDA device, got --device {device}")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--plot needs matplotlib: pip install 'hilbertattn[plot]'") from None

    sweep = _sizes("--sweep", args.sweep) or (list(DEFAULT_SWEEP[kind]) if args.plot else [])
    if sweep and args.grid is not None:
        raise ValueError("--grid cannot be combined with --sweep or --plot, whose sweep sets "
                         "the grids")
    cases = _list("--cases", args.cases, bench.CASE_IDS)
    if not cases:
        cases = ["neighborhood"] if sweep else [
            c.id for c in CASES if kind == "cuda" or c.cpu_default]
    passes = _list("--passes", args.passes, PASSES) or (["fwd"] if sweep else list(PASSES))
    settings = Settings(reps=args.reps or DEFAULTS[kind]["reps"],
                        warmup=DEFAULTS[kind]["warmup"] if args.warmup is None else args.warmup,
                        max_seconds=args.max_seconds, passes=tuple(passes))
    resolved = dict(device=device, cases=cases,
                    methods=_list("--methods", args.methods, METHODS)
                    or list(bench.DEFAULT_METHODS[kind]),
                    sweep=sweep, settings=settings,
                    img_sizes=_sizes("--img-sizes", args.img_sizes) or
                    list(DEFAULT_IMG_SIZES[kind]),
                    model_specs=_model_specs(args.models) if models else [])
    return argparse.Namespace(**{**vars(args), **resolved})


def _model_specs(text: str) -> list[ModelSpec]:
    try:
        import timm
    except ImportError:
        raise ValueError("--models needs timm: pip install 'hilbertattn[models]'") from None
    from ..layout import ORDERS
    from ..models import MODEL_NAMES

    specs = [ModelSpec.parse(s) for s in _list("--models", text)] if text else \
        list(bench.DEFAULT_MODELS)
    for spec in specs:
        if not timm.is_model(spec.name) or spec.name not in MODEL_NAMES:
            raise ValueError(f"--models: unknown model {spec.name!r}; choose from "
                             f"{', '.join(MODEL_NAMES)}")
        if spec.layout is not None and spec.layout not in ORDERS:
            raise ValueError(f"--models: layout of {spec.label!r} must be one of {ORDERS}")
    return specs


def problem_for(case: Case, args: argparse.Namespace, grid: tuple[int, int] | None) -> Problem:
    """``case`` at its own sizes (on a CPU its small version), with the options' overrides."""
    device = args.device
    sizes = dict(grid=case.grid, batch=case.batch, heads=case.heads, head_dim=case.head_dim,
                 dtype=case.dtype)
    if device.type != "cuda":
        sizes.update(case.cpu, dtype=torch.float32)
    overrides = dict(grid=grid or (tuple(args.grid) if args.grid else None), batch=args.batch,
                     heads=args.heads, head_dim=args.head_dim,
                     dtype=DTYPES[args.dtype] if args.dtype else None)
    sizes.update({k: v for k, v in overrides.items() if v is not None})
    return Problem(case=case.id, device=device, **sizes)


# ----------------------------------------------------------------------------------------------
# Environment and output
# ----------------------------------------------------------------------------------------------


def _git(*command: str) -> str | None:
    for where in (Path(__file__).resolve().parent, Path.cwd()):
        try:
            out = subprocess.run(["git", "-C", str(where), *command], capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def environment(device: torch.device, bandwidth: float | None) -> dict:
    """Device, versions, commit, command line and date of this run."""
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"CPU {platform.processor() or platform.machine()}",
        "device_type": device.type,
        "torch": torch.__version__, "triton": version("triton"), "cuda": torch.version.cuda,
        "python": platform.python_version(), "hilbertattn": version("hilbertattn"),
        "commit": _git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None,
        "command": shlex.join(["hilbertattn", *sys.argv[1:]]) if Path(sys.argv[0]).name ==
        "hilbertattn" else shlex.join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "copy_bandwidth_bytes_per_s": bandwidth,
    }


def _options(args: argparse.Namespace) -> dict:
    keep = ("cases", "methods", "grid", "batch", "heads", "head_dim", "dtype", "sweep",
            "img_sizes", "model_batch", "cuda_graphs", "compile")
    out = {k: getattr(args, k) for k in keep}
    out.update(device=str(args.device), reps=args.settings.reps, warmup=args.settings.warmup,
               max_seconds=args.settings.max_seconds, passes=list(args.settings.passes),
               models=[s.label for s in args.model_specs], plot=str(args.plot) if args.plot
               else None)
    return out


def _cell_ms(entry: dict | None, reps: int) -> str:
    if not entry:
        return ""
    status = entry["status"]
    if status != "ok":
        return {"skipped": "-", "oom": "oom", "error": "error"}[status]
    mark = "*" if entry["reps"] < reps else ""
    ms = entry["median_ms"]
    return f"{ms:.3g}{mark}" if ms < 100 else f"{ms:.0f}{mark}"


def _times(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.2f}x" if x < 10 else f"{x:.1f}x"


def _share(x: float | None) -> str:
    """A percentage with two significant digits or more: 100%, 31%, 1.6%, 0.20%."""
    if x is None:
        return ""
    return f"{x:.0%}" if x >= 0.1 else f"{x:.1%}" if x >= 0.01 else f"{x:.2%}"


BASELINE_HEADERS = {"sdpa": "over dense", "swin": "over Swin", "flex-rowmajor": "over row-major",
                    "flex": "over flex"}


def case_table(rows: list[dict], settings: Settings, bandwidth: float) -> tuple[Table, list[str]]:
    """The table of one (case, variant): a row per (method, pass); and its notes (why a method
    did not run, fewer timed runs than asked). Methods that do not apply are left out."""
    rows = [r for r in rows if r["applies"]]
    first = rows[0]
    floors = ", ".join(f"{first['memory_floor_ms'][p]:.3g} ms {p}" for p in settings.passes)
    table = Table(
        title=f"{first['case']} · {first['variant']} ({_describe(first)}); memory floor "
              f"{floors} at {bandwidth / 1e9:.0f} GB/s copy",
        title_justify="left", box=box.SIMPLE_HEAD,
        caption="median ms; over X: X's time / this time; memory floor, speed of light (dense "
                "SDPA time x tile density): floor / this time; bwd / fwd: (fwd+bwd - fwd) / fwd",
        caption_justify="left")
    table.add_column("method")
    table.add_column("tiles 128² (masked)", justify="right")
    table.add_column("pass")
    table.add_column("ms", justify="right")
    present = [b for b in bench.BASELINES if any(r["method"] == b for r in rows)]
    for b in present:
        table.add_column(BASELINE_HEADERS[b], justify="right")
    table.add_column("memory floor", justify="right")
    table.add_column("speed of light", justify="right")
    table.add_column("bwd / fwd", justify="right")
    notes = []
    for r in rows:
        density = (f"{r['density']:.2%} ({r['partial_share']:.0%})"
                   if r["density"] is not None else "-")
        for k, p in enumerate(settings.passes):
            cells = [r["label"] if k == 0 else "", density if k == 0 else "", p,
                     _cell_ms(r.get(p), settings.reps)]
            cells += [_times(r["speedup"].get(b, {}).get(p)) for b in present]
            cells += [_share(r["memory_floor_share"][p]), _share(r["speed_of_light_share"][p]),
                      _times(r["backward_over_forward"]) if p == "fwd+bwd" else ""]
            table.add_row(*cells, end_section=k == len(settings.passes) - 1)
            entry = r.get(p, {})
            if entry.get("status") not in (None, "ok"):
                notes.append(f"{r['label']}, {p}: {entry['status']}: {entry['reason']}")
            elif entry.get("reps", settings.reps) < settings.reps:
                notes.append(f"{r['label']}, {p}: * {entry['reps']} timed runs (a call takes "
                             f"{entry['median_ms'] / 1e3:.1f} s; --max-seconds)")
    return table, notes


def _describe(row: dict) -> str:
    return (f"{row['grid'][0]}x{row['grid'][1]}, B={row['batch']}, {row['heads']} heads x "
            f"{row['head_dim']}, {row['dtype']}")


def sweep_table(rows: list[dict], settings: Settings) -> Table:
    """Times of one case across grid sizes: a row per (variant, method), a column per size."""
    grids = list(dict.fromkeys(tuple(r["grid"]) for r in rows))
    table = Table(title=f"{rows[0]['case']}: median ms ({' / '.join(settings.passes)}) by grid",
                  title_justify="left")
    table.add_column("variant")
    table.add_column("method")
    for g in grids:
        table.add_column(f"{g[0]}x{g[1]}", justify="right")
    for key in dict.fromkeys((r["variant"], r["method"]) for r in rows if r["applies"]):
        by_grid = {tuple(r["grid"]): r for r in rows if (r["variant"], r["method"]) == key}
        label = METHODS[key[1]].label
        table.add_row(key[0], label, *(" / ".join(_cell_ms(by_grid[g].get(p), settings.reps)
                                                  for p in settings.passes)
                                       if g in by_grid else "" for g in grids))
    return table


def plot_sweep(rows: list[dict], passes: tuple[str, ...], path: Path) -> None:
    """Time against tokens, log-log, one line per (variant, method), a panel per case and pass;
    the memory floor dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(len(cases), len(passes), figsize=(6.5 * len(passes),
                             4.8 * len(cases)), squeeze=False)
    for ax_row, case in zip(axes, cases):
        mine = [r for r in rows if r["case"] == case]
        variants = list(dict.fromkeys(r["variant"] for r in mine))
        grids = sorted({tuple(r["grid"]) for r in mine}, key=lambda g: g[0] * g[1])
        for ax, p in zip(ax_row, passes):
            for key in dict.fromkeys((r["variant"], r["method"]) for r in mine):
                points = [(r["tokens"], r[p]["median_ms"]) for r in mine
                          if (r["variant"], r["method"]) == key and r[p]["status"] == "ok"]
                if not points:
                    continue
                label = METHODS[key[1]].label
                if len(variants) > 1 and not METHODS[key[1]].per_case:
                    label = f"{key[0]}: {label}"
                elif len(variants) > 1 and key[0] != variants[0]:
                    continue  # a per-case method, the same line for every variant
                ax.plot(*zip(*points), marker="o", label=label)
            floor = {tuple(r["grid"]): r["memory_floor_ms"][p] for r in mine}
            ax.plot([g[0] * g[1] for g in grids], [floor[g] for g in grids], "k--", lw=1,
                    label="memory floor")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks([g[0] * g[1] for g in grids], [f"{g[0]}x{g[1]}" for g in grids])
            ax.minorticks_off()
            ax.set_xlabel("grid (tokens on a log scale)")
            ax.set_ylabel(f"{p} time, ms (median)")
            ax.set_title(f"{case}, {mine[0]['heads']} heads x {mine[0]['head_dim']}, "
                         f"{mine[0]['dtype']}, B={mine[0]['batch']}: {p}")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def models_table(rows: list[dict], settings: Settings) -> Table:
    graphs = ", CUDA graphs" if any(r.get("cuda_graph") for r in rows) else ""
    graphs = (", torch.compile" if any(r.get("compiled") for r in rows) else "") + graphs
    table = Table(title=f"end-to-end throughput{graphs}, images/s (speed-up over the baseline "
                        f"model)", title_justify="left")
    for col in ("model", "image", "params"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for mode in bench.MODEL_MODES:
        table.add_column(f"{mode} (batch)", justify="right")
        table.add_column("over", justify="right")
    keys = list(dict.fromkeys((r["model"], r["img_size"]) for r in rows))
    for model, size in keys:
        mine = {r["mode"]: r for r in rows if (r["model"], r["img_size"]) == (model, size)}
        params = next((r["params"] for r in mine.values() if "params" in r), None)
        cells = [model, f"{size}²", f"{params / 1e6:.1f}M" if params else "-"]
        for mode in bench.MODEL_MODES:
            r = mine.get(mode)
            if r is None:
                cells += ["", ""]
            elif r["status"] != "ok":
                cells += [r["status"], ""]
            else:
                mark = "*" if r["reps"] < settings.reps else ""
                cells += [f"{r['images_per_s']:.1f}{mark} ({r['batch']})",
                          f"{_times(r['speedup'])} vs {r['baseline']}" if r["speedup"] else ""]
        table.add_row(*cells)
    return table


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


class _Steps:
    """Progress callback: each call starts a step and completes the previous one. Without a
    progress bar (``--no-progress``), each step is a line of the log."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress, self.begun, self.total = progress, 0, total
        self.task = progress.add_task("starting", total=total)
        self.start = time.perf_counter()

    def __call__(self, step: str) -> None:
        if self.begun:
            self.progress.advance(self.task)
        self.begun += 1
        self.progress.update(self.task, description=step)
        if self.progress.disable:
            self.progress.console.print(f"[{time.perf_counter() - self.start:6.0f} s] "
                                        f"{self.begun}/{self.total} {step}", highlight=False)

    def finish(self) -> None:
        self.progress.update(self.task, completed=self.total, description="done")


def run_cases(args: argparse.Namespace, bandwidth: float, progress: Progress,
              save: Callable[[list[dict]], None]) -> list[dict]:
    """Measure the cases; ``save(rows)`` after each case and grid."""
    cases = [c for c in CASES if c.id in args.cases]
    grids = [(s, s) for s in args.sweep] or [None]
    methods = tuple(args.methods)
    settings = args.settings
    total = sum(bench.steps(c.variants, methods, settings.passes) for c in cases) * len(grids)
    steps = _Steps(progress, total)
    rows = []
    for case in cases:
        for grid in grids:
            problem = problem_for(case, args, grid)
            case_rows = bench.measure_problem(problem, case.variants, methods, settings,
                                              bandwidth, steps)
            rows += case_rows
            save(rows)
            if not args.sweep:
                for variant in case.variants:
                    mine = [r for r in case_rows if r["variant"] == variant.name]
                    if not any(r["applies"] for r in mine):
                        progress.console.print(f"{case.id} · {variant.name}: none of the "
                                               f"methods {', '.join(methods)} applies")
                        continue
                    table, notes = case_table(mine, settings, bandwidth)
                    progress.console.print(table)
                    for note in notes:
                        progress.console.print(f"  [dim]{note}[/dim]", highlight=False)
    steps.finish()
    if args.sweep:
        for case in cases:
            progress.console.print(sweep_table([r for r in rows if r["case"] == case.id],
                                               settings))
    return rows


def run_models(args: argparse.Namespace, progress: Progress,
               save: Callable[[list[dict]], None]) -> list[dict]:
    """Measure the models; ``save(rows)`` after each measurement."""
    device = args.device
    amp = torch.bfloat16 if device.type == "cuda" else None
    jobs = [(spec, size, mode) for size in args.img_sizes for spec in args.model_specs
            for mode in bench.MODEL_MODES]
    steps = _Steps(progress, len(jobs))
    rows = []
    for spec, size, mode in jobs:
        steps(f"{spec.label} at {size}x{size}: {mode}")
        batch = args.model_batch or bench.default_model_batch(size, device)
        rows.append(bench.measure_model(spec, size, batch, mode, device, amp, args.settings,
                                        args.cuda_graphs, args.compile))
        save(rows)
    steps.finish()
    bench.add_model_speedups(rows)
    progress.console.print(models_table(rows, args.settings))
    for r in rows:
        if r["status"] != "ok":
            progress.console.print(f"  [dim]{r['model']} at {r['img_size']}, {r['mode']}: "
                                   f"{r['status']}: {r['reason']}[/dim]", highlight=False)
    return rows


def _setup_seconds(rows: list[dict], models: list[dict]) -> float:
    # Per-case methods share one entry between the rows of a case's variants: count it once.
    entries = {id(e): e for e in [r[p] for r in rows for p in PASSES if p in r] + models}
    return sum(e.get("setup_ms", 0.0) for e in entries.values()) / 1e3


def run(args: argparse.Namespace) -> int:
    args = check_args(args)
    start = time.perf_counter()
    device = args.device
    console = Console()
    if not console.is_terminal:  # a log file: wide enough for the tables, no wrapping
        console = Console(width=160)
    copy_mib = DEFAULTS[device.type]["copy_mib"]
    bandwidth = bench.copy_bandwidth(device, copy_mib << 20, reps=args.settings.reps,
                                     warmup=args.settings.warmup)
    env = environment(device, bandwidth)
    console.print(f"{env['device']}, torch {env['torch']}, triton {env['triton']}; "
                  f"device-to-device copy {bandwidth / 1e9:.1f} GB/s (read + write)",
                  highlight=False)
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                        disable=args.no_progress, transient=True)

    def save(rows: list[dict], models: list[dict]) -> None:
        # Written after every measurement too, so that a run stopped early keeps what it got.
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"meta": env, "options": _options(args), "rows": rows,
                                             "models": models}, indent=1) + "\n")

    with progress:
        if args.model_specs:
            rows, models = [], run_models(args, progress, lambda done: save([], done))
        else:
            rows, models = run_cases(args, bandwidth, progress, lambda done: save(done, [])), []
    env["wall_s"] = time.perf_counter() - start
    console.print(f"{env['wall_s']:.0f} s in all, {_setup_seconds(rows, models):.0f} s of it in "
                  f"first calls (block plans, compilation)", highlight=False)
    if args.plot is not None:
        plot_sweep(rows, args.settings.passes, args.plot)
        console.print(f"wrote {args.plot}")
    if args.json is not None:
        save(rows, models)
        console.print(f"wrote {args.json}")
    failed = [r for r in rows for p in args.settings.passes if r.get(p, {}).get("status") ==
              "error"] + [r for r in models if r["status"] == "error"]
    return 1 if failed else 0
