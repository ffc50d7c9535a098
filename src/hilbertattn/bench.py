"""Benchmark cases, methods, timing and floors behind ``hilbertattn bench``.

The protocol (median of timed runs after warm-up, random inputs rotated among several sets,
every compared figure measured in the same run) and the cases follow the library's benchmark
page. Pieces:

- ``CASES``: the cases as data. Each ``Case`` holds one or more ``Variant`` s: the pattern under
  test in the Hilbert layout and its row-major baseline, as ``PatternSpec`` s.
- ``METHODS``: how each method computes attention (dense SDPA, Swin's partition + SDPA,
  FlexAttention with the row-major mask, FlexAttention / triton / reference in the Hilbert
  layout). A method's ``build`` returns a callable ``fn(q, k, v) -> out`` or raises ``Skipped``.
- ``time_fn``: the timer (CUDA events on a GPU, ``perf_counter`` on the CPU).
- Floors: ``memory_floor_bytes`` over ``copy_bandwidth`` is the memory floor; the block-sparse
  speed of light (dense SDPA time x block density) and every ratio are taken in ``_add_ratios``.
- ``measure_model``: end-to-end images/s of the timm models of ``hilbertattn.models``.

Times cover the attention call on tokens already in the layout's order (tokens stay in curve
order through a whole model), not a permutation of the inputs.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .functional import attention
from .layout import Layout
from .patterns import GridPattern, Neighborhood, Pattern, Slide, Window, Window2D, _positive_int
from .plan import block_plan

__all__ = ["PatternSpec", "UnclampedBox", "Variant", "Case", "CASES", "Problem", "Method",
           "METHODS", "PASSES", "Skipped", "Timing", "time_fn", "memory_floor_bytes",
           "copy_bandwidth", "Settings", "measure_problem", "ModelSpec", "DEFAULT_MODELS",
           "measure_model", "add_model_speedups", "default_model_batch", "free_memory"]

Grid = tuple[int, int]
PASSES = ("fwd", "fwd+bwd")
DENSITY_TILE = 128  # the tile of the protocol's block density (FlexAttention's default block)


# ----------------------------------------------------------------------------------------------
# Patterns of the cases
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnclampedBox(GridPattern):
    """2-D sliding window: ``(r, c)`` attends every ``(r', c')`` with ``|r - r'| <= size // 2``
    and ``|c - c'| <= size // 2``, cut off at the grid's edges (unlike neighbourhood attention,
    whose window is shifted inwards there). The row-major baseline of slide attention (HSA)."""

    layout: Layout
    size: int

    def _validate(self) -> None:
        _positive_int("size", self.size)
        if self.size % 2 == 0:
            raise ValueError(f"size must be odd, got {self.size}")

    def axis_codes(self, x: Tensor, axis: int) -> tuple[Tensor, Tensor, Tensor]:
        h = self.size // 2
        return x - h, x + h, x

    def axis_span(self, x: Tensor, axis: int) -> tuple[Tensor, Tensor]:
        h = self.size // 2
        first = (x - h).clamp(min=0)
        last = (x + h).clamp(max=self.layout.shape[axis] - 1)
        return first, last - first + 1


PATTERN_KINDS = ("window", "slide", "neighborhood", "window2d", "box")


@dataclass(frozen=True)
class PatternSpec:
    """A pattern as data, built on a grid once the grid is known.

    ``kind``: ``window`` (HWA, ``size`` tokens), ``slide`` (HSA, ``size`` tokens), ``neighborhood``
    (exact ``size x size`` NA), ``window2d`` (exact Swin windows of side ``size``) or ``box``
    (``UnclampedBox`` of side ``size``); ``shift`` for ``window`` and ``window2d``.
    """

    kind: str
    size: int
    shift: int = 0

    def __post_init__(self) -> None:
        if self.kind not in PATTERN_KINDS:
            raise ValueError(f"kind must be one of {PATTERN_KINDS}, got {self.kind!r}")

    def build(self, grid: Grid, order: str) -> Pattern:
        """The pattern on ``grid`` with tokens in ``order``."""
        layout = Layout(grid, order)
        if self.kind == "window":
            return Window(self.size, self.shift)
        if self.kind == "slide":
            return Slide(self.size)
        if self.kind == "neighborhood":
            return Neighborhood(layout, self.size, even_kernel=self.size % 2 == 0)
        if self.kind == "window2d":
            return Window2D(layout, self.size, self.shift)
        return UnclampedBox(layout, self.size)

    def describe(self) -> str:
        shift = f", shift {self.shift}" if self.shift else ""
        if self.kind in ("window", "slide"):
            return f"{'HWA' if self.kind == 'window' else 'HSA'} window {self.size}{shift}"
        name = {"neighborhood": "NA", "window2d": "windows", "box": "slide box"}[self.kind]
        return f"{self.size}x{self.size} {name}{shift}"


@dataclass(frozen=True)
class Variant:
    """One pattern under test (tokens in Hilbert order) and its row-major baseline. When the
    baseline is a ``window2d``, Swin's partition + SDPA computes it too."""

    name: str
    hilbert: PatternSpec
    rowmajor: PatternSpec | None = None


@dataclass(frozen=True)
class Case:
    """A benchmark case as the benchmark page defines it; ``cpu`` overrides sizes for the small
    version run on a CPU, which runs by default only if ``cpu_default``."""

    id: str
    grid: Grid
    heads: int
    head_dim: int
    dtype: torch.dtype
    variants: tuple[Variant, ...]
    batch: int = 1
    cpu: dict = field(default_factory=dict, compare=False)
    cpu_default: bool = True


_CPU_SMALL = dict(grid=(32, 32), heads=2)
CASES: tuple[Case, ...] = (
    Case("window", (256, 256), 8, 64, torch.bfloat16,
         (Variant("HWA 64", PatternSpec("window", 64), PatternSpec("window2d", 8)),),
         cpu=_CPU_SMALL),
    Case("window-swin224", (56, 56), 3, 32, torch.bfloat16,
         (Variant("HWA 49", PatternSpec("window", 49), PatternSpec("window2d", 7)),
          Variant("HWA 49 shift 24", PatternSpec("window", 49, 24),
                  PatternSpec("window2d", 7, 3))),
         batch=64, cpu=dict(grid=(28, 28), batch=4)),
    Case("neighborhood", (256, 256), 8, 64, torch.bfloat16,
         (Variant("NA 13x13", PatternSpec("neighborhood", 13), PatternSpec("neighborhood", 13)),),
         cpu=_CPU_SMALL),
    Case("slide", (256, 256), 8, 64, torch.bfloat16,
         (Variant("HSA 169", PatternSpec("slide", 169), PatternSpec("box", 13)),),
         cpu=_CPU_SMALL),
    Case("flux-4k", (256, 256), 24, 128, torch.float16,
         (Variant("NA 80x80", PatternSpec("neighborhood", 80), PatternSpec("neighborhood", 80)),),
         # The 80x80 neighbourhood needs an 80x80 grid at least: too slow for a default CPU run.
         cpu=dict(grid=(96, 96), heads=1), cpu_default=False),
    Case("paper-notebook", (96, 96), 2, 64, torch.float16,
         (Variant("HSA 121", PatternSpec("slide", 121), PatternSpec("box", 11)),
          Variant("HWA 256", PatternSpec("window", 256), PatternSpec("window2d", 16))),
         batch=16, cpu=dict(grid=(32, 32), batch=2)),
)
CASE_IDS = tuple(c.id for c in CASES)


@dataclass(frozen=True)
class Problem:
    """A case resolved for one run: sizes, dtype and device."""

    case: str
    grid: Grid
    batch: int
    heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``[B, heads, N, D]`` of q, k, v."""
        return self.batch, self.heads, self.tokens, self.head_dim

    def describe(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return (f"{self.grid[0]}x{self.grid[1]}, B={self.batch}, {self.heads} heads x "
                f"{self.head_dim}, {dtype}")


# ----------------------------------------------------------------------------------------------
# Floors
# ----------------------------------------------------------------------------------------------


def memory_floor_bytes(problem: Problem, backward: bool) -> int:
    """Bytes that attention must move at least: q, k, v read once and o written once; the
    backward adds dO read and dQ, dK, dV written once (the log-sum-exp, N floats per head, is
    left out). ``4`` or ``8`` tensors of ``B x heads x N x D`` elements."""
    tensors = 8 if backward else 4
    b, h, n, d = problem.shape
    return tensors * b * h * n * d * problem.dtype.itemsize


def copy_bandwidth(device: torch.device, nbytes: int, reps: int, warmup: int) -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + bytes written) of
    ``dst.copy_(src)`` on two ``nbytes`` buffers, median of ``reps`` copies."""
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timing = time_fn(lambda i: dst.copy_(src), device, reps, warmup, max_seconds=math.inf)
    del src, dst
    return 2 * nbytes / (timing.median_ms / 1e3)


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """``median_ms`` over ``reps`` timed calls; ``setup_ms``: the first call alone (block plan,
    compilation, first run), not part of the median."""

    median_ms: float
    min_ms: float
    max_ms: float
    reps: int
    setup_ms: float


MIN_REPS = 3


def time_fn(fn: Callable[[int], object], device: torch.device, reps: int, warmup: int,
            max_seconds: float) -> Timing:
    """Time ``fn(i)`` for ``i = 0, 1, 2, ...`` (``i`` lets the caller rotate input sets).

    The first call is timed alone as setup, then ``warmup`` untimed calls, then ``reps`` timed
    ones: CUDA events around each call on a GPU (calls queued back to back), ``perf_counter`` on
    the CPU. When ``reps`` calls would take longer than ``max_seconds`` (judged from the last
    warm-up call; warm-up stops early for such slow calls), fewer are timed, at least
    ``MIN_REPS``; the returned ``reps`` says how many.
    """
    cuda = device.type == "cuda"

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    calls = 0

    def call() -> None:
        nonlocal calls
        fn(calls)
        calls += 1

    synchronize()
    start = time.perf_counter()
    call()
    synchronize()
    setup_s = time.perf_counter() - start
    per_call_s = 0.0  # unknown until a warm-up call is timed (setup includes compilation)
    for w in range(warmup):
        if w > 0 and per_call_s * (warmup - w) > max_seconds / 2:
            break  # enough warm-up for a call this slow
        start = time.perf_counter()
        call()
        synchronize()
        per_call_s = time.perf_counter() - start
    if per_call_s * reps > max_seconds:
        reps = max(min(reps, MIN_REPS), int(max_seconds / per_call_s))

    if cuda:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(reps)]
        for begin, end in events:
            begin.record()
            call()
            end.record()
        synchronize()
        times = [begin.elapsed_time(end) for begin, end in events]
    else:
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1e3)
    return Timing(statistics.median(times), min(times), max(times), reps, setup_s * 1e3)


def free_memory() -> None:
    """Return cached blocks to the device between cases."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError)


# ----------------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------------


class Skipped(Exception):
    """A method that does not apply to a variant or cannot run here (the message says why)."""


AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Method:
    """``build(problem, variant)`` -> ``(fn, pattern)``: ``fn(q, k, v)`` computes the attention
    on ``[B, heads, N, D]`` inputs; ``pattern`` (or None) gives the block density. A method with
    ``per_case=True`` does not depend on the variant and is measured once per case."""

    name: str
    label: str  # short, for tables and legends
    build: Callable[[Problem, Variant], tuple[AttentionFn, Pattern | None]]
    order: str  # token order the method's pattern works in
    per_case: bool = False


def _dense_sdpa(problem: Problem, variant: Variant) -> tuple[AttentionFn, None]:
    # No mask and no explicit backend: on CUDA, SDPA picks flash attention or cuDNN.
    return F.scaled_dot_product_attention, None


def _swin_mask(grid: Grid, window: int, shift: int, device: torch.device) -> Tensor:
    """Swin's mask of the cyclically shifted map: bool ``[windows, w*w, w*w]``, True where two
    tokens of a window were neighbours before the roll (the same region along both axes)."""
    regions = []
    for size in grid:
        rolled = torch.arange(size, device=device)  # coordinate after rolling by -shift
        region = (rolled >= size - window).long() + (rolled >= size - shift).long()
        regions.append(region)
    cell = regions[0][:, None] * 3 + regions[1][None, :]  # [H, W]
    h, w = grid
    cell = cell.view(h // window, window, w // window, window).permute(0, 2, 1, 3)
    cell = cell.reshape(-1, window * window)
    return cell[:, :, None] == cell[:, None, :]


def _swin_partition(problem: Problem, variant: Variant) -> tuple[AttentionFn, None]:
    spec = variant.rowmajor
    if spec is None or spec.kind != "window2d":
        raise Skipped("applies to 2-D windows only")
    w, shift = spec.size, spec.shift
    h_grid, w_grid = problem.grid
    if h_grid % w or w_grid % w:
        raise Skipped(f"grid {h_grid}x{w_grid} is not a multiple of the {w}x{w} window")
    n_windows = (h_grid // w) * (w_grid // w)
    mask = None
    if shift:
        mask = _swin_mask(problem.grid, w, shift, problem.device)
        mask = mask.repeat(problem.batch, 1, 1)[:, None]  # [B * windows, 1, w*w, w*w]

    def partition(x: Tensor) -> Tensor:
        """``[B, heads, N, D]`` in row-major order -> ``[B * windows, heads, w*w, D]``."""
        b, heads, _, d = x.shape
        x = x.view(b, heads, h_grid, w_grid, d)
        if shift:
            x = torch.roll(x, (-shift, -shift), dims=(2, 3))
        x = x.view(b, heads, h_grid // w, w, w_grid // w, w, d).permute(0, 2, 4, 1, 3, 5, 6)
        return x.reshape(b * n_windows, heads, w * w, d)

    def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        b, heads, n, d = q.shape
        out = F.scaled_dot_product_attention(partition(q), partition(k), partition(v),
                                             attn_mask=mask)
        out = out.view(b, h_grid // w, w_grid // w, heads, w, w, d).permute(0, 3, 1, 4, 2, 5, 6)
        out = out.reshape(b, heads, h_grid, w_grid, d)
        if shift:
            out = torch.roll(out, (shift, shift), dims=(2, 3))
        return out.reshape(b, heads, n, d)

    return run, None


def _library(backend: str, order: str):
    def build(problem: Problem, variant: Variant) -> tuple[AttentionFn, Pattern]:
        spec = variant.hilbert if order == "hilbert" else variant.rowmajor
        if spec is None:
            raise Skipped("no row-major baseline in this case")
        pattern = spec.build(problem.grid, order)

        def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return attention(q, k, v, pattern, backend=backend)

        return run, pattern

    return build


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("sdpa", "dense SDPA", _dense_sdpa, "rowmajor", per_case=True),
    Method("swin", "Swin partition+SDPA", _swin_partition, "rowmajor"),
    Method("flex-rowmajor", "flex row-major", _library("flex", "rowmajor"), "rowmajor"),
    Method("flex", "flex Hilbert", _library("flex", "hilbert"), "hilbert"),
    Method("triton", "triton Hilbert", _library("triton", "hilbert"), "hilbert"),
    Method("reference", "reference Hilbert", _library("reference", "hilbert"), "hilbert"),
)}
BASELINES = ("sdpa", "swin", "flex-rowmajor", "flex")  # speed-ups are reported over these
DEFAULT_METHODS = {"cuda": ("sdpa", "swin", "flex-rowmajor", "flex", "triton"),
                   "cpu": ("sdpa", "swin", "flex-rowmajor", "flex", "reference")}


# ----------------------------------------------------------------------------------------------
# One problem: every method, both passes, floors and ratios
# ----------------------------------------------------------------------------------------------

ROTATION_BYTES = 512 << 20  # input sets together exceed any L2 (H100: 50 MB) many times over
MAX_SETS = 8


def _input_sets(problem: Problem) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Random ``(q, k, v, dO)`` sets, as many as make ``ROTATION_BYTES`` (2 to ``MAX_SETS``);
    q, k, v require gradients."""
    set_bytes = 4 * math.prod(problem.shape) * problem.dtype.itemsize
    n_sets = min(MAX_SETS, max(2, math.ceil(ROTATION_BYTES / set_bytes)))
    sets = []
    for _ in range(n_sets):
        q, k, v, do = (torch.randn(problem.shape, dtype=problem.dtype, device=problem.device)
                       for _ in range(4))
        sets.append((q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), do))
    return sets


def _pass_fn(fn: AttentionFn, sets, name: str) -> Callable[[int], object]:
    if name == "fwd":
        def forward(i: int):
            q, k, v, _ = sets[i % len(sets)]
            with torch.no_grad():  # detached too: FlexAttention on the CPU refuses grad inputs
                return fn(q.detach(), k.detach(), v.detach())

        return forward

    def forward_backward(i: int):
        q, k, v, do = sets[i % len(sets)]
        return torch.autograd.grad(fn(q, k, v), (q, k, v), do)

    return forward_backward


@dataclass
class Settings:
    reps: int
    warmup: int
    max_seconds: float
    passes: tuple[str, ...] = PASSES


def _status(error: BaseException) -> dict:
    if isinstance(error, Skipped):
        return {"status": "skipped", "reason": str(error)}
    if isinstance(error, NotImplementedError):  # a backend that cannot run this here
        return {"status": "skipped", "reason": str(error).split(";")[0]}
    if is_oom(error):
        return {"status": "oom", "reason": "out of device memory"}
    return {"status": "error", "reason": f"{type(error).__name__}: {error}"}


def _timing(t: Timing) -> dict:
    return {"status": "ok", "median_ms": t.median_ms, "min_ms": t.min_ms, "max_ms": t.max_ms,
            "reps": t.reps, "setup_ms": t.setup_ms}


def _measure(fn: AttentionFn, sets, name: str, problem: Problem, settings: Settings) -> dict:
    try:
        result = _timing(time_fn(_pass_fn(fn, sets, name), problem.device, settings.reps,
                                 settings.warmup, settings.max_seconds))
    except Exception as error:  # reported per method and the run goes on (see _status)
        result = _status(error)
    if result["status"] != "ok":
        free_memory()  # outside the except block, so the traceback's tensors are released
    return result


def _density(pattern: Pattern | None, tokens: int) -> tuple[float | None, float | None]:
    if pattern is None:
        return None, None
    plan = block_plan(pattern, tokens, DENSITY_TILE, DENSITY_TILE)
    return plan.density, plan.partial_share


def measure_problem(problem: Problem, variants: tuple[Variant, ...], methods: tuple[str, ...],
                    settings: Settings, bandwidth: float,
                    progress: Callable[[str], None] = lambda step: None) -> list[dict]:
    """Every method of ``methods`` on every variant, each pass of ``settings.passes``; one row
    (a JSON-ready dict) per (variant, method). ``progress(step)`` is called before each
    measurement and once per skipped one, ``len(steps(...))`` times in all."""
    floors = {p: memory_floor_bytes(problem, p == "fwd+bwd") for p in PASSES}
    base = {"case": problem.case, "grid": list(problem.grid), "batch": problem.batch,
            "heads": problem.heads, "head_dim": problem.head_dim,
            "dtype": str(problem.dtype).replace("torch.", ""), "tokens": problem.tokens,
            "memory_floor_bytes": floors,
            "memory_floor_ms": {p: b / bandwidth * 1e3 for p, b in floors.items()}}
    try:
        sets = _input_sets(problem)
    except torch.cuda.OutOfMemoryError:
        sets = None
    if sets is None:
        free_memory()

    rows: list[dict] = []
    shared: dict[str, dict] = {}  # per-case methods, measured with the first variant
    for variant in variants:
        for name in methods:
            method = METHODS[name]
            row = {**base, "variant": variant.name, "method": name, "label": method.label,
                   "order": method.order, "applies": True, "pattern": None, "density": None,
                   "partial_share": None}
            if method.per_case and name in shared:
                rows.append({**row, **shared[name]})
                for _ in settings.passes:
                    progress(f"{problem.case} {variant.name}: {method.label}")
                continue
            fn, failed = None, None
            try:
                fn, pattern = method.build(problem, variant)
                row["pattern"] = None if pattern is None else repr(pattern)
                row["density"], row["partial_share"] = _density(pattern, problem.tokens)
                if name == "sdpa":
                    row["density"], row["partial_share"] = 1.0, 0.0
            except Exception as error:  # reported in the row (see _status)
                fn, failed = None, _status(error)
                row["applies"] = not isinstance(error, Skipped)
            for p in settings.passes:
                progress(f"{problem.case} {variant.name}: {method.label}, {p}")
                if sets is None:
                    row[p] = {"status": "oom", "reason": "inputs do not fit"}
                elif fn is None:
                    row[p] = failed
                else:
                    row[p] = _measure(fn, sets, p, problem, settings)
            if method.per_case:
                shared[name] = {k: row[k] for k in ("pattern", "density", "partial_share",
                                                    *settings.passes)}
            rows.append(row)
    del sets
    free_memory()
    _add_ratios(rows, settings.passes)
    return rows


def steps(variants: tuple[Variant, ...], methods: tuple[str, ...], passes: tuple[str, ...]) -> int:
    """How many times ``measure_problem`` calls ``progress``."""
    return len(variants) * len(methods) * len(passes)


def _ms(row: dict, p: str) -> float | None:
    entry = row.get(p, {})
    return entry.get("median_ms") if entry.get("status") == "ok" else None


def _add_ratios(rows: list[dict], passes: tuple[str, ...]) -> None:
    """Per row and pass: speed-up over each baseline of the same variant (baseline time / time),
    the block-sparse speed of light (dense SDPA time x density) and the share of each floor
    reached (floor / time); per row, the backward's time over the forward's
    (``(t_fwd+bwd - t_fwd) / t_fwd``)."""
    for row in rows:
        same = {r["method"]: r for r in rows if r["variant"] == row["variant"]}
        fwd, both = _ms(row, "fwd"), _ms(row, "fwd+bwd")
        row["backward_over_forward"] = (both - fwd) / fwd if fwd and both else None
        row["speedup"], row["speed_of_light_ms"] = {}, {}
        row["memory_floor_share"], row["speed_of_light_share"] = {}, {}
        for p in passes:
            t = _ms(row, p)
            dense = _ms(same["sdpa"], p) if "sdpa" in same else None
            sol = dense * row["density"] if dense is not None and row["density"] is not None \
                else None
            row["speed_of_light_ms"][p] = sol
            row["memory_floor_share"][p] = row["memory_floor_ms"][p] / t if t else None
            row["speed_of_light_share"][p] = sol / t if sol is not None and t else None
            for b in BASELINES:
                tb = _ms(same[b], p) if b in same and b != row["method"] else None
                if tb is not None and t:
                    row["speedup"].setdefault(b, {})[p] = tb / t


# ----------------------------------------------------------------------------------------------
# End-to-end models
# ----------------------------------------------------------------------------------------------

_BASELINE_FAMILY = {"hwt": "swin", "hnt": "nat"}


@dataclass(frozen=True)
class ModelSpec:
    """A timm model name of ``hilbertattn.models``, optionally with a token ``layout`` override
    (written ``name:layout`` on the command line)."""

    name: str
    layout: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        name, _, layout = text.partition(":")
        return cls(name, layout or None)

    @property
    def label(self) -> str:
        return self.name + (f":{self.layout}" if self.layout else "")

    def baseline(self) -> ModelSpec | None:
        """What this model is compared with: the same model in its default layout, or the
        exact-attention family it replaces (hwt -> swin, hnt -> nat)."""
        if self.layout:
            return ModelSpec(self.name)
        family, _, size = self.name.partition("_")
        return ModelSpec(f"{_BASELINE_FAMILY[family]}_{size}") if family in _BASELINE_FAMILY \
            else None

    def create(self, img_size: int) -> torch.nn.Module:
        import timm

        from . import models  # noqa: F401  (registers the names with timm)

        extra = {"layout": self.layout} if self.layout else {}
        return timm.create_model(self.name, img_size=img_size, **extra)


DEFAULT_MODELS = tuple(ModelSpec.parse(s) for s in
                       ("swin_tiny", "hwt_tiny", "nat_tiny", "nat_tiny:hilbert", "hnt_tiny"))
MODEL_MODES = ("inference", "training")


def default_model_batch(img_size: int, device: torch.device) -> int:
    """64 images at 224x224 on a GPU, scaled down with the pixel count (3 at 1024x1024); 2 on
    the CPU."""
    if device.type != "cuda":
        return 2
    return max(1, round(64 * (224 / img_size) ** 2))


def _replayer(run: Callable[[], object], warmup: int = 3) -> Callable[[], None]:
    """Record ``run`` into a CUDA graph, after warm-up calls on a side stream (which build every
    cache and allocation that capture must not see created), and return the graph's replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph.replay


def _model_step(model: torch.nn.Module, mode: str, batch: int, img_size: int,
                device: torch.device, amp: torch.dtype | None, cuda_graph: bool = False,
                compiled: bool = False) -> Callable[[int], object]:
    """``step(i)``: one inference or training step on input set ``i % 2``. With ``cuda_graph``
    the step is recorded once (inputs copied into static buffers) and replayed: the launch cost
    of the Python side is then paid at capture only. With ``compiled`` the model runs through
    ``torch.compile`` (compiled by the first step)."""
    images = [torch.randn(batch, 3, img_size, img_size, device=device) for _ in range(2)]
    labels = [torch.randint(0, model.num_classes, (batch,), device=device) for _ in range(2)]
    static_x, static_y = images[0].clone(), labels[0].clone()
    if compiled:
        # Each measurement compiles afresh for its one shape: Dynamo's caches are shared by every
        # model of a class, so the later models would otherwise recompile with dynamic shapes
        # and, past the recompile limit, silently run eagerly.
        torch.compiler.reset()
        forward = torch.compile(model, dynamic=False)
    else:
        forward = model

    def autocast():
        # The autocast weight cache must stay off under graph capture.
        return torch.autocast(device.type, dtype=amp, enabled=amp is not None,
                              cache_enabled=not cuda_graph)

    if mode == "inference":
        model.eval()

        def run():
            with torch.no_grad(), autocast():
                return forward(static_x)
    else:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, capturable=cuda_graph)

        def run():
            with autocast():
                loss = F.cross_entropy(forward(static_x), static_y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    replay = _replayer(run) if cuda_graph else run

    def step(i: int):
        static_x.copy_(images[i % 2])
        static_y.copy_(labels[i % 2])
        return replay()

    return step


def measure_model(spec: ModelSpec, img_size: int, batch: int, mode: str, device: torch.device,
                  amp: torch.dtype | None, settings: Settings, cuda_graph: bool = False,
                  compiled: bool = False) -> dict:
    """Images/s of one model in ``mode`` (``inference``: forward without gradients;
    ``training``: forward, cross-entropy, backward and an AdamW step), eager or compiled, run
    directly or replayed from a CUDA graph. On running out of device memory the batch is halved
    down to 1; the row says which batch was measured. ``setup_ms`` counts the step's building
    (graph warm-up and capture, compilation) and its first call."""
    row = {"model": spec.label, "name": spec.name, "layout": spec.layout, "img_size": img_size,
           "mode": mode, "cuda_graph": cuda_graph, "compiled": compiled,
           "requested_batch": batch}
    while True:
        try:
            model = spec.create(img_size).to(device)
            row["params"] = sum(p.numel() for p in model.parameters())
            start = time.perf_counter()
            # Under CUDA graphs the warm-up calls (and with them compilation) run here.
            step = _model_step(model, mode, batch, img_size, device, amp, cuda_graph, compiled)
            build_ms = (time.perf_counter() - start) * 1e3
            result = _timing(time_fn(step, device, settings.reps, settings.warmup,
                                     settings.max_seconds))
            result["setup_ms"] += build_ms
            result["images_per_s"] = batch / (result["median_ms"] / 1e3)
        except Exception as error:  # reported in the row (see _status)
            result = _status(error)
        model = step = None
        free_memory()  # outside the except block, so the traceback's tensors are released
        if result["status"] == "oom" and batch > 1:
            batch //= 2
            continue
        return {**row, "batch": batch, **result}


def add_model_speedups(rows: list[dict]) -> None:
    """``speedup``: images/s over those of the baseline model (same size and mode)."""
    by_key = {(r["model"], r["img_size"], r["mode"]): r for r in rows}
    for row in rows:
        base = ModelSpec(row["name"], row["layout"]).baseline()
        other = by_key.get((base.label, row["img_size"], row["mode"])) if base else None
        row["baseline"] = base.label if base else None
        row["speedup"] = (row["images_per_s"] / other["images_per_s"]
                          if other and row["status"] == other["status"] == "ok" else None)
