"""``triton`` backend: block-sparse flash attention driven by a block plan.

Public entry: :func:`triton_attention`. The kernels are in ``triton_kernels.py``; this module
checks inputs, picks tile sizes from a small rule table, fetches the (cached) block plans and
launches the passes:

- forward: one program per (query tile, batch*head); full key tiles unmasked, then partial tiles
  masked from the pattern's interval codes; saves the log-sum-exp (fp32 ``[B, H, N]``);
- backward (dQ, dK, dV without atomics): dQ with one program per (query tile, batch*head)
  walking the forward-shaped plan, which also stores ``delta = rowsum(dO * O)``; then dK/dV
  with one program per (key tile, batch*head) walking the transposed plan (the query tiles that
  see each key tile). Each pass asks ``block_plan`` for its own tile sizes (plans are cached).
  When every query tile attends a single key tile (HWA windows on tile boundaries), the dK/dV
  pass also completes dQ and the dQ pass is skipped;
- a relative position bias is added inside every pass, its gradient with atomics in the dK/dV
  pass. Each pass expands it, per head, into one block per tile it visits (shared by the batch;
  the tile then reads it coalesced) and the gradient blocks are folded back into the table;
  where those blocks would pass ``BIAS_TILE_BYTES``, the pass gathers from the table pair by
  pair instead, its gradient going to copies of the table per (slot of key tiles, batch, head)
  (see ``DBIAS_SLOT_BYTES``).

Under ``torch.compile`` the passes are two ``torch.library`` operators
(``hilbertattn::triton_forward`` / ``triton_backward``) with their output shapes and backward
registered, so a model compiles whole (``fullgraph=True``); eager calls skip the operator
dispatch (on a CPU, with the kernel launches stubbed out, it more than doubled the host time of
a call).
"""

from __future__ import annotations

import hashlib
import math
import os
import weakref
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from ..bias import RelativeBias
from ..functional import check_bias, check_qkv
from ..patterns import pattern_of_key

try:
    import triton
    from triton import knobs as _knobs

    from . import triton_kernels as _k

    _TRITON_ERROR: Optional[BaseException] = None
except Exception as exc:  # pragma: no cover - depends on the environment
    triton = None
    _k = None
    _TRITON_ERROR = exc
try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except Exception:  # pragma: no cover - older triton, or none
    TensorDescriptor = None

__all__ = ["PassConfig", "TileConfig", "triton_attention", "tile_config", "TILE_RULES"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_LOG2E = math.log2(math.e)


# ----------------------------------------------------------------------------------------------
# Tile table
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PassConfig:
    """Tiles of one pass: ``block_m`` query tokens x ``block_n`` key tokens, launch options."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class TileConfig:
    fwd: PassConfig
    dkdv: PassConfig  # block_m: query tile walked in the inner loop, block_n: the key tile owned
    dq: PassConfig


@dataclass(frozen=True)
class TileRule:
    kinds: tuple[str, ...]  # pattern class names, () = any
    max_window: Optional[int]  # only patterns whose ``window`` attribute is <= this; None = any
    max_dim: int  # head dims up to this
    dtypes: tuple[str, ...]  # "float16", "bfloat16", "float32"
    fwd: tuple[int, int, int, int]  # (block_m, block_n, num_warps, num_stages)
    dkdv: tuple[int, int, int, int]
    dq: tuple[int, int, int, int]
    why: str
    fitting_windows: bool = False  # only HWA windows that fit the rule's dK/dV tiles (_fits_tiles)


_HALF = ("float16", "bfloat16")
_ALL = ("float16", "bfloat16", "float32")

# First matching rule wins. Tiles are (query tokens, key tokens); "spills" below were read from
# ptxas -v for sm_90a (triton 3.8), the 4-vs-8-warp choices avoid them.
TILE_RULES: tuple[TileRule, ...] = (
    TileRule(("Window",), 64, 64, _HALF, (64, 32, 4, 3), (64, 64, 4, 3), (64, 64, 4, 2),
             "HWA windows that fit 64-token tiles (unshifted, dividing 64): 64x64 backward "
             "tiles make the plan one-to-one, so dQ is fused into the dK/dV pass (and HWA 64 "
             "visits full tiles only)", fitting_windows=True),
    TileRule(("Window",), 64, 64, _HALF, (64, 32, 4, 3), (32, 64, 4, 2), (64, 32, 4, 2),
             "HWA windows that straddle 64-token tiles (49 tokens, shifted): no one-to-one "
             "plan, so short backward tiles (swin224 backward kernels 0.307 -> 0.256 ms, "
             "benchmarks/results/bwd_tiles_kernel_h100.json)"),
    TileRule(("Slide",), None, 64, _HALF, (64, 32, 4, 3), (32, 64, 4, 3), (64, 32, 4, 3),
             "1-D bands: short key tiles cut the wasted band corners; short query tiles in the "
             "dK/dV pass (HSA 169 backward 0.572 -> 0.509 ms, benchmarks/results/"
             "triton_dev_sweep_h100.log)"),
    TileRule(("Window",), None, 64, _HALF, (64, 32, 4, 3), (32, 64, 4, 2), (64, 64, 4, 2),
             "HWA windows past 64 tokens: full 64-token tiles, short key tiles forward "
             "(HWA 256 backward kernels 0.296 -> 0.277 ms, bwd_tiles_kernel_h100.json)"),
    TileRule((), None, 64, _HALF, (64, 64, 4, 2), (32, 64, 4, 2), (64, 64, 4, 2),
             "2-D neighbourhoods, small heads: 64x64 tiles follow the curve's 8x8 blocks"),
    TileRule(("Window",), 64, 128, _HALF, (64, 64, 4, 3), (32, 64, 4, 2), (64, 32, 4, 2),
             "HWA window <= 64, head dim 128: 64-token query tiles (128 would span two "
             "windows)"),
    TileRule((), None, 128, _HALF, (128, 64, 4, 2), (32, 64, 4, 2), (64, 32, 4, 2),
             "head dim 128: 128-token query tiles on 4 warps halve the key/value reads that "
             "bound flux-4k (forward 14.7 -> 14.2 ms, tune_flux_tiles2_h100.json; 8 warps "
             "are slower); small backward tiles (flux-4k backward 48 -> 41 ms against 32x128 "
             "/ 128x64)"),
    TileRule((), None, 256, _HALF, (64, 32, 8, 2), (32, 32, 8, 2), (32, 32, 8, 2),
             "head dim 256: registers and shared memory limit the tiles; 8 warps avoid spills"),
    TileRule((), None, 64, ("float32",), (32, 32, 4, 2), (32, 32, 8, 2), (32, 32, 8, 2),
             "fp32 (exact 'ieee' dots, no tensor cores): small tiles, no spills"),
    TileRule((), None, 128, ("float32",), (16, 32, 4, 1), (16, 32, 8, 1), (16, 16, 4, 1),
             "fp32, head dim <= 128: smallest tiles that keep the fp32 operands in registers"),
    TileRule((), None, 256, ("float32",), (16, 16, 4, 1), (16, 16, 8, 1), (16, 16, 8, 1),
             "fp32, head dim <= 256: smallest tiles tl.dot allows"),
)


def _window_of(pattern) -> Optional[int]:
    w = getattr(pattern, "window", None)
    return w if isinstance(w, int) else None


def _fits_tiles(pattern, tiles: tuple[int, ...]) -> bool:
    """Whether every window of a ``Window`` pattern lies inside one tile of each size in
    ``tiles`` (query and key tokens)."""
    return (type(pattern).__name__ == "Window" and pattern.shift == 0
            and all(t % pattern.window == 0 for t in tiles))


@lru_cache(maxsize=256)
def tile_config(pattern, head_dim: int, dtype: torch.dtype) -> TileConfig:
    """The table's tiles for this (pattern kind, head dim, dtype)."""
    kind = type(pattern).__name__
    dname = str(dtype).replace("torch.", "")
    for r in TILE_RULES:
        if r.kinds and kind not in r.kinds:
            continue
        if r.max_window is not None and (_window_of(pattern) is None
                                         or _window_of(pattern) > r.max_window):
            continue
        if r.fitting_windows and not _fits_tiles(pattern, r.dkdv[:2]):
            continue
        if head_dim > r.max_dim or dname not in r.dtypes:
            continue
        return TileConfig(PassConfig(*r.fwd), PassConfig(*r.dkdv), PassConfig(*r.dq))
    raise ValueError(f"no tile rule for head dim {head_dim} and dtype {dtype}")  # pragma: no cover


def _as_tile_config(tiles, pattern, head_dim: int, dtype: torch.dtype) -> TileConfig:
    if tiles is None:
        return tile_config(pattern, head_dim, dtype)
    if isinstance(tiles, TileConfig):
        cfg = tiles
    elif isinstance(tiles, PassConfig):
        cfg = TileConfig(tiles, tiles, tiles)
    elif (isinstance(tiles, Sequence) and len(tiles) == 2
          and all(isinstance(t, int) for t in tiles)):
        p = PassConfig(int(tiles[0]), int(tiles[1]))
        cfg = TileConfig(p, p, p)
    else:
        raise ValueError(f"tiles must be None, (block_m, block_n), a PassConfig or a TileConfig, "
                         f"got {tiles!r}")
    for p in (cfg.fwd, cfg.dkdv, cfg.dq):
        for t in (p.block_m, p.block_n):
            if t < 16 or t & (t - 1):
                raise ValueError(f"tiles must be powers of two >= 16, got {p}")
    return cfg


# ----------------------------------------------------------------------------------------------
# Plans and codes
# ----------------------------------------------------------------------------------------------

class _Tables(NamedTuple):
    args: tuple  # qlo, qhi, kcode, full counts/indices, partial counts/indices, plan row stride
    axes: int  # A, the number of interval axes of the mask codes
    packed: bool  # axes 0 and 1 packed into one code per token (see _packed_codes)
    one_to_one: bool  # every query tile attends exactly one key tile
    visits: int  # tiles visited, summed over the rows


def _tables(pattern, n: int, block_m: int, block_n: int, device: torch.device,
            transposed: bool = False) -> _Tables:
    """What a pass's kernel takes from the pattern: mask codes and plan lists, int32 and
    contiguous on ``device``, built once per (pattern, N, tiles, device) so that a call costs
    one lookup (this matters when the kernels themselves take ~0.1 ms)."""
    return _tables_of_key(pattern.key, n, block_m, block_n, device, transposed)


@lru_cache(maxsize=256)
def _tables_of_key(key: int, n: int, block_m: int, block_n: int, device: torch.device,
                   transposed: bool) -> _Tables:
    # Cached by the pattern's key: hashing a pattern (its fields, a layout's included) costs
    # more host time than the rest of the lookup.
    from ..plan import block_plan

    pattern = pattern_of_key(key)
    plan = block_plan(pattern, n, q_tile=block_m, kv_tile=block_n, device=device)
    per_row = plan.full_counts + plan.partial_counts
    one_to_one = bool((per_row == 1).all())
    if transposed:
        plan = plan.transposed()
    lists = [t.to(device=device, dtype=torch.int32).contiguous()
             for t in (plan.full_counts, plan.full_indices, plan.partial_counts,
                       plan.partial_indices)]
    codes = [c.to(device=device, dtype=torch.int32).contiguous()
             for c in pattern.codes(n, device)]
    a = codes[0].shape[0]
    if not (1 <= a <= 3) or any(c.shape != (a, n) for c in codes):
        raise ValueError(f"pattern codes must be int32 [A, {n}] with A in 1..3, got "
                         f"{[tuple(c.shape) for c in codes]}")
    codes, packed = _packed_codes(*codes)
    return _Tables((*codes, *lists, lists[1].stride(0)), a, packed, one_to_one,
                   int(per_row.sum()))


_FIELD_MAX = (1 << 15) - 2  # largest code a packed field holds (2**15 - 1 marks no query)
_GUARDS = None if _k is None else _k.GUARDS.value  # the bit above each field, as the kernels


def _packed_codes(qlo: Tensor, qhi: Tensor, kcode: Tensor) -> tuple[tuple[Tensor, ...], bool]:
    """Axes 0 and 1 of two- and three-axis codes as one code per token, when their codes fit a
    15-bit field (grid axes shorter than 32767): ``lo`` and ``hi | GUARDS`` per query, ``k |
    GUARDS`` and ``k`` per key, axis 0 in bits 16..30 and axis 1 in bits 0..14; axis 2 stays a
    row of its own after them. The kernels then test both intervals with one AND and one
    compare per pair (``_in_box`` in the kernels), where the mask arithmetic bounds the
    neighbourhood passes."""
    codes = (qlo, qhi, kcode)
    if qlo.shape[0] < 2 or any(int(c[:2].min()) < 0 or int(c[:2].max()) > _FIELD_MAX
                               for c in codes):
        return codes, False
    lo, hi, k = ((c[0] << 16) | c[1] for c in codes)
    rest = [c[2:] for c in codes]  # axis 2, or nothing
    return (torch.cat([lo[None], rest[0]]), torch.cat([(hi | _GUARDS)[None], rest[1]]),
            torch.cat([torch.stack([k | _GUARDS, k]), rest[2]])), True


# Bias gradient buffers of the gather form: one copy of the tables per slot (key tile % slots)
# and (batch, head), as many slots as fit in this many bytes (fewer programs then add into the
# same entries).
DBIAS_SLOT_BYTES = 1 << 26
# A pass takes the bias as expanded blocks (one per visited tile, per head) when their fp32
# gradient fits in this many bytes; otherwise it gathers from the table pair by pair, which
# costs a scattered read per pair (several times the attention itself on small heads).
BIAS_TILE_BYTES = 1 << 29


class _Coords:
    """Bias coordinates compared by content, so that modules holding equal copies (every block
    of a stage) share the derived index tables."""

    def __init__(self, coords: Tensor) -> None:
        host = coords.detach().to("cpu", torch.int64).contiguous()
        self.tensor = coords
        self.key = (tuple(host.shape), hashlib.sha1(host.numpy().tobytes()).hexdigest())

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Coords) and self.key == other.key


# id(coords) -> (weak reference, version, _Coords). Keyed by id because tensors compare
# elementwise; the weak reference tells a reused id apart, the version an in-place change.
_COORDS: dict[int, tuple[weakref.ref, int, _Coords]] = {}


def _content(coords: Tensor) -> _Coords:
    ref, version, content = _COORDS.get(id(coords), (None, None, None))
    if ref is None or ref() is not coords or version != coords._version:
        content = _Coords(coords)
        ref = weakref.ref(coords, lambda _, i=id(coords), pop=_COORDS.pop: pop(i, None))
        _COORDS[id(coords)] = (ref, coords._version, content)
    return content


@lru_cache(maxsize=256)
def _coordinate_rows(pattern, coords: _Coords, radius: tuple[int, ...],
                     device: torch.device) -> tuple[Tensor, tuple, int]:
    """The gather form's coordinate table, radii and axis count, built once per (coords,
    pattern, radius, device): a call then launches nothing for them."""
    from ..bias import covering_radius

    xy = coords.tensor.to(device=device, dtype=torch.long)
    cover = covering_radius(pattern, coords.tensor)
    if cover is not None and all(c <= r for c, r in zip(cover, radius)):
        # No attended pair needs clamping: pack the axes into one code per token (row-major
        # over the table), so that the flat index is one subtraction, qcode[i] - kcode[j], in
        # the kernel. Its clamp to [-R, R] + R, R = (T - 1) / 2, keeps masked pairs in bounds.
        sizes = [2 * r + 1 for r in radius]
        mult = [math.prod(sizes[a + 1:]) for a in range(len(sizes))]
        packed = sum(xy[:, a] * m for a, m in enumerate(mult))
        half = (math.prod(sizes) - 1) // 2
        centre = sum(r * m for r, m in zip(radius, mult))
        rows = torch.stack([packed + centre - half, packed])
        return rows.to(torch.int32).contiguous(), (half, 0, 0, 1, 1), 1
    r = (*radius, 0, 0)[:3]
    rows = torch.cat([xy.t(), xy.t()]).to(torch.int32).contiguous()
    return rows, (*r, 2 * r[1] + 1, 2 * r[2] + 1), len(radius)


@lru_cache(maxsize=64)
def _visits(pattern, n: int, block_m: int, block_n: int, transposed: bool) -> tuple[Tensor, int]:
    """The tiles a pass visits, in its kernel's order: ``[row tiles, slots]`` column tiles (full
    ones first; a row's unused slots repeat tile 0) and the slot count."""
    from ..plan import block_plan

    plan = block_plan(pattern, n, q_tile=block_m, kv_tile=block_n, device="cpu")
    if transposed:
        plan = plan.transposed()
    n_full, n_part = plan.full_counts.long()[:, None], plan.partial_counts.long()[:, None]
    slots = int((n_full + n_part).max())
    t = torch.arange(slots)
    width = plan.full_indices.shape[1]
    full = plan.full_indices.long().gather(1, t.clamp(max=width - 1).expand(len(n_full), -1))
    part = plan.partial_indices.long().gather(1, (t - n_full).clamp(0, width - 1))
    cols = torch.where(t < n_full, full, torch.where(t < n_full + n_part, part, 0))
    return cols, slots


@lru_cache(maxsize=64)
def _block_index(pattern, coords: _Coords, radius: tuple[int, ...], n: int, block_m: int,
                 block_n: int, transposed: bool,
                 device: torch.device) -> tuple[Tensor, Tensor, int]:
    """Table index of every element of a pass's expanded bias blocks, int32 ``[row tiles *
    slots, rows, cols]`` (rows: query tokens, or key tokens when ``transposed``; tokens past
    ``N``, never attended, read entry 0); the same index offset by ``row tile * T`` into one
    copy of the table per row tile (folding the gradient blocks through those copies keeps
    the atomic adds of each table entry few); and the slot count."""
    from ..bias import offset_index

    cols, slots = _visits(pattern, n, block_m, block_n, transposed)
    cols = cols.to(device)
    row_size, col_size = (block_n, block_m) if transposed else (block_m, block_n)
    rows = torch.arange(len(cols), device=device)[:, None, None, None] * row_size
    row_tok = rows + torch.arange(row_size, device=device)[:, None]  # [R, 1, rows, 1]
    col_tok = cols[:, :, None, None] * col_size + torch.arange(col_size, device=device)
    row_tok, col_tok = row_tok.clamp(max=n - 1), col_tok.clamp(max=n - 1)
    i, j = (col_tok, row_tok) if transposed else (row_tok, col_tok)
    xy = coords.tensor.to(device=device, dtype=torch.long)
    index = offset_index(xy, radius, i, j)
    spread = index + rows // row_size * math.prod(2 * r + 1 for r in radius)
    return (index.reshape(-1, row_size, col_size).to(torch.int32).contiguous(),
            spread.reshape(-1).to(torch.int32).contiguous(), slots)


class _PassBias(NamedTuple):
    """The relative position bias as one pass's kernel takes it."""

    values: Tensor  # gather form: fp32 table [heads, T]; blocks: [heads, row tiles * slots, r, c]
    coords: Tensor  # gather form: int32 [2 * axes, N] (query rows, then key rows)
    slots: int  # blocks: visits per row tile
    radii: tuple[int, int, int, int, int]  # gather form: r0, r1, r2, w1 = 2 r1 + 1, w2 = 2 r2 + 1
    axes: int  # gather form: coordinate rows per side (0: no bias)
    index: Optional[Tensor]  # blocks: their index into the copies of the table per row tile

    @property
    def tiles(self) -> bool:
        return self.index is not None

    def args(self) -> tuple:
        return (self.values, self.coords, self.values.stride(0) if self.axes or self.tiles else 0,
                self.slots, *self.radii)


class _BiasArgs(NamedTuple):
    """A relative position bias (or none) with what its passes derive from it."""

    table: Optional[Tensor]  # fp32 [heads, T], T = prod(2 r_a + 1)
    coords: Optional[_Coords]
    radius: tuple[int, ...]
    pattern: object

    @classmethod
    def of(cls, bias, pattern) -> "_BiasArgs":
        if bias is None:
            return _NO_BIAS
        table = bias.table.detach().float().flatten(1).contiguous()
        if table.data_ptr() % 16:  # the passes' compiled kernels assume aligned bias tensors
            table = table.clone()
        return cls(table, _content(bias.coords), bias.radius, pattern)

    def for_pass(self, q: Tensor, block_m: int, block_n: int,
                 transposed: bool = False) -> _PassBias:
        """The bias for a pass over ``q``-shaped inputs with ``block_m x block_n`` tiles (the
        plan transposed for the dK/dV pass): expanded blocks when their gradient fits
        ``BIAS_TILE_BYTES``, else the gather form."""
        if self.table is None:
            return _PassBias(q, q, 0, (0, 0, 0, 1, 1), 0, None)  # pointers never read
        n, heads = q.shape[2], self.table.shape[0]
        cols, slots = _visits(self.pattern, n, block_m, block_n, transposed)
        if heads * cols.numel() * block_m * block_n * 4 <= BIAS_TILE_BYTES:
            index, spread, _ = _block_index(self.pattern, self.coords, self.radius, n, block_m,
                                            block_n, transposed, q.device)
            blocks = self.table.to(q.dtype)[:, index.view(-1)].view(heads, *index.shape)
            return _PassBias(blocks, q, slots, (0, 0, 0, 1, 1), 0, spread)
        rows, radii, axes = _coordinate_rows(self.pattern, self.coords, self.radius, q.device)
        return _PassBias(self.table, rows, 0, radii, axes, None)


_NO_BIAS = _BiasArgs(None, None, (), None)  # no bias: every pass's no-op


# ----------------------------------------------------------------------------------------------
# Passes
# ----------------------------------------------------------------------------------------------


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)  # plain ints: triton.cdiv is a jitted function, ~10 us a host call


def _block_d(d: int) -> int:
    return max(16, 1 << (d - 1).bit_length())  # the next power of two (plain ints: host cost)


def _dot_prec(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # the precision only affects fp32 inputs


# Whether the kernels read their inputs through tensor descriptors (the copy engine of Hopper
# and newer GPUs) instead of per-thread pointer loads. None: on a device with the engine, for
# passes of at least DESCRIPTOR_MIN_PRODUCTS_PER_INPUT per input, where the inputs' strides
# allow it; True / False: wherever the strides allow it / never (the tests force the
# descriptor path under the interpreter).
TENSOR_DESCRIPTORS: Optional[bool] = None
# Descriptors are encoded on the host at every launch, one per input: on the H100 machine a
# forward call (3 inputs) cost 65-110 us more host time with them, while the kernels ran 5-8%
# faster on the large cases (13x13 NA at 256x256: 0.42 ms; flux-4k: 15 ms;
# benchmarks/results/descriptor_cost_h100.json). So a pass uses them from this many score
# products per input on (visited tiles x batch x heads x block_m x block_n x padded head dim),
# below which the launch cost is not hidden behind the GPU's time. The 13x13 NA's passes have
# 1.85e10 each: its forward (3 inputs) uses them; its backward passes (5 inputs each) do not,
# where ten descriptors took about 0.9 ms of host time against 0.8 ms of kernels
# (benchmarks/results/na_host_before_h100.json).
DESCRIPTOR_MIN_PRODUCTS_PER_INPUT = (1 << 34) // 3


@lru_cache(maxsize=16)
def _has_copy_engine(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def _use_descriptors(xs: tuple[Tensor, ...], products: int) -> bool:
    """Whether a pass computing ``products`` score products reads ``xs`` through descriptors."""
    if TensorDescriptor is None or TENSOR_DESCRIPTORS is False:
        return False
    if TENSOR_DESCRIPTORS is None and (products < DESCRIPTOR_MIN_PRODUCTS_PER_INPUT * len(xs)
                                       or not _has_copy_engine(xs[0].device)):
        return False
    # The engine needs 16-byte aligned addresses and strides, and unit stride along D.
    return all(x.stride(-1) == 1 and x.data_ptr() % 16 == 0
               and all(st > 0 and st * x.element_size() % 16 == 0 for st in x.stride()[:-1])
               for x in xs)


def _sources(xs: tuple[Tensor, ...], rows: tuple[int, ...], block_d: int,
             products: int) -> tuple[tuple, bool]:
    """What a pass computing ``products`` score products reads ``xs`` through, and whether
    those are descriptors: the tensors, or 4-D descriptors of ``[1, 1, rows, block_d]`` boxes
    (rows and columns past the end read as 0)."""
    if not _use_descriptors(xs, products):
        return xs, False
    return tuple(TensorDescriptor(x, list(x.shape), list(x.stride()), [1, 1, r, block_d])
                 for x, r in zip(xs, rows)), True


def _current_stream(device: int) -> int:
    return triton.runtime.driver.active.get_current_stream(device)


def _hooked() -> bool:
    """Whether a launch hook is set (Triton keeps them in chains, empty by default)."""
    hooks = (_knobs.runtime.launch_enter_hook, _knobs.runtime.launch_exit_hook)
    return any(h is not None and getattr(h, "calls", True) for h in hooks)


def _aligned(xs: tuple[Tensor, ...]) -> bool:
    return not any(x.data_ptr() % 16 for x in xs)


class _Pass:
    """One pass of one kind of call: its kernel bound to all that the call's pattern, tiles,
    shapes, strides, dtype, device and scale fix (grid, plan tables, integer arguments,
    constexprs). Built once per such kind (``_forward_pass``, ``_backward_passes``); a call
    then adds its tensors and its bias, and launches.

    Triton binds and specializes every argument at every launch: ~45 us of host time for our
    ~50 arguments on the H100 machine, where a small pass runs on the GPU in ~0.1 ms. Here the
    only things Triton specializes on that a call can still change are its inputs' 16-byte
    alignment and the bias's form and integers (the bias tensors are made aligned). So once
    Triton has launched the pass with aligned inputs and some bias form, later such calls go
    straight to the compiled kernel's launcher (Triton's own launch call, 3.6 to 3.8). Inputs
    read through tensor descriptors, misaligned inputs, the interpreter and launch hooks
    (profilers) go through Triton's own path.
    """

    def __init__(self, kernel: str, config: PassConfig, grid: int, tables: _Tables,
                 ints: tuple, options: dict, rows: tuple[int, ...], products: int) -> None:
        self.kernel, self.config, self.grid = kernel, config, grid
        self.tables, self.ints, self.options = tables.args, ints, options
        self.rows, self.products = rows, products  # the inputs' tile rows; score products
        # (device, the bias's form and integers) -> (compiled kernel, constexpr values)
        self.compiled: dict[tuple, tuple] = {}

    def __call__(self, inputs: tuple[Tensor, ...], outputs: tuple[Tensor, ...],
                 pass_bias: _PassBias, bias_args: Optional[tuple] = None) -> None:
        """Launch on ``inputs`` (read in tiles, perhaps through descriptors), then
        ``outputs`` (the kernel's tensor arguments up to its plan tables) and the bias
        arguments (``pass_bias.args()`` unless given)."""
        fn = getattr(_k, self.kernel)
        bias_args = pass_bias.args() if bias_args is None else bias_args
        sources, tma = _sources(inputs, self.rows, self.options["BLOCK_D"], self.products)
        args = (*sources, *outputs, *self.tables, *bias_args, *self.ints)
        direct = not tma and isinstance(fn, triton.JITFunction) and _aligned(inputs)
        if direct:
            device = torch.cuda.current_device()
            key = (device, pass_bias.axes, pass_bias.tiles,
                   *[a for a in bias_args if type(a) is int])
            entry = self.compiled.get(key)
            if entry is not None and not _hooked():
                kernel, constants = entry
                kernel.run(self.grid, 1, 1, _current_stream(device), kernel.function,
                           kernel.packed_metadata, None, None, None, *args, *constants)
                return
        constexprs = dict(self.options, BIAS_AXES=pass_bias.axes, BIAS_TILES=pass_bias.tiles,
                          TMA=tma)
        kernel = fn[(self.grid,)](*args, **constexprs)
        if direct:
            self.compiled[key] = kernel, [constexprs[n] for n in fn.arg_names[len(args):]]


def _pass_options(c: PassConfig, n: int, d: int, tables: _Tables, dtype: torch.dtype,
                  **extra) -> dict:
    """The constexprs and launch options of a pass with tiles ``c`` over ``n`` tokens of head
    dim ``d``, its tables and inputs of ``dtype`` (the bias's and ``TMA`` are set per call)."""
    bd = _block_d(d)
    return dict(A=tables.axes, PACKED=tables.packed, BLOCK_M=c.block_m, BLOCK_N=c.block_n,
                BLOCK_D=bd, EVEN_M=n % c.block_m == 0, EVEN_N=n % c.block_n == 0,
                EVEN_D=bd == d, DOT_PREC=_dot_prec(dtype), num_warps=c.num_warps,
                num_stages=c.num_stages, **extra)


def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The strides of a contiguous tensor of ``shape``."""
    out = [1]
    for size in reversed(shape[1:]):
        out.insert(0, out[0] * size)
    return tuple(out)


@lru_cache(maxsize=256)
def _forward_pass(pattern: int, tiles: int, shape: tuple[int, ...], strides: tuple[tuple, ...],
                  dtype: torch.dtype, device: torch.device, scale: float) -> _Pass:
    """The forward pass over ``[B, H, N, D]`` inputs, ``strides`` those of q, k, v and o."""
    B, H, N, D = shape
    c = _TILE_CONFIGS[tiles].fwd
    tables = _tables_of_key(pattern, N, c.block_m, c.block_n, device, False)
    n_tiles = _cdiv(N, c.block_m)
    ints = (*(s for st in strides for s in st), N, H, N, D, n_tiles, scale * _LOG2E)
    return _Pass("_fwd_kernel", c, n_tiles * B * H, tables, ints,
                 _pass_options(c, N, D, tables, dtype), (c.block_m, c.block_n, c.block_n),
                 tables.visits * B * H * c.block_m * c.block_n * _block_d(D))


def _backward_rows(c: PassConfig) -> tuple[int, ...]:
    """A backward pass's tile rows of q, k, v, o and dO (q, o, dO in query tiles)."""
    return c.block_m, c.block_n, c.block_n, c.block_m, c.block_m


@lru_cache(maxsize=256)
def _backward_passes(pattern: int, tiles: int, shape: tuple[int, ...],
                     strides: tuple[tuple, ...], dtype: torch.dtype, device: torch.device,
                     scale: float) -> tuple[Optional[_Pass], _Pass]:
    """The dQ pass (None where the dK/dV pass completes dQ) and the dK/dV pass over
    ``[B, H, N, D]`` inputs, ``strides`` those of q, k, v, o and dO (the gradients are
    contiguous)."""
    B, H, N, D = shape
    cfg = _TILE_CONFIGS[tiles]
    ints = (*(s for st in strides for s in st), *_strides(shape))
    c = cfg.dkdv
    tables = _tables_of_key(pattern, N, c.block_m, c.block_n, device, True)
    # One key tile per query tile (e.g. HWA windows on tile boundaries): dK/dV's pass completes
    # dQ as well, and the dQ pass (which re-reads q, k, v, o, dO) is skipped.
    fused = tables.one_to_one
    n_tiles = _cdiv(N, c.block_n)
    dkdv = _Pass("_bwd_dkdv_kernel", c, n_tiles * B * H, tables,
                 (*ints, *_strides(shape), *_strides(shape),
                  N, H, N, D, n_tiles, scale * _LOG2E, scale),
                 _pass_options(c, N, D, tables, dtype, FUSED_DQ=fused), _backward_rows(c),
                 tables.visits * B * H * c.block_m * c.block_n * _block_d(D))
    if fused:
        return None, dkdv
    c = cfg.dq
    tables = _tables_of_key(pattern, N, c.block_m, c.block_n, device, False)
    n_tiles = _cdiv(N, c.block_m)
    dq = _Pass("_bwd_dq_kernel", c, n_tiles * B * H, tables,
               (*ints, N, H, N, D, n_tiles, scale * _LOG2E, scale),
               _pass_options(c, N, D, tables, dtype), _backward_rows(c),
               tables.visits * B * H * c.block_m * c.block_n * _block_d(D))
    return dq, dkdv


def _token_major(q: Tensor) -> bool:
    """Whether ``q``'s heads sit inside its tokens (``[B, N, H, D]`` in memory), as in the views
    of a ``[B, N, 3, H, D]`` projection."""
    return q.stride(1) < q.stride(2)


def _empty_output(q: Tensor, token_major: bool) -> Tensor:
    """An empty ``[B, H, N, D]`` output, ``[B, N, H, D]`` in memory if ``token_major``: then the
    caller's ``o.transpose(1, 2).reshape(B, N, H * D)`` is a view, not a copy. (A flag fixed
    when the call is made or traced, not read from ``q`` here: a compiler may hand the operator
    inputs strided otherwise than those it traced.)"""
    B, H, N, D = q.shape
    if token_major:
        return q.new_empty((B, N, H, D)).transpose(1, 2)
    return q.new_empty((B, H, N, D))


def _forward(q, k, v, bias: _BiasArgs, pattern: int, scale: float, tiles: int,
             token_major: bool) -> tuple[Tensor, Tensor]:
    o = _empty_output(q, token_major)
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    launch = _forward_pass(pattern, tiles, q.shape, (q.stride(), k.stride(), v.stride(),
                                                     o.stride()), q.dtype, q.device, scale)
    c = launch.config
    launch((q, k, v), (o, lse), bias.for_pass(q, c.block_m, c.block_n))
    return o, lse


def _backward(do, q, k, v, o, lse, bias: _BiasArgs, pattern: int, scale: float, tiles: int):
    """dQ, dK, dV and the bias table's gradient (fp32 ``[heads, T]``, or None)."""
    B, H, N, D = q.shape
    do = do.to(q.dtype)  # autograd hands the output's dtype; the passes are built for one
    dq_pass, dkdv_pass = _backward_passes(
        pattern, tiles, q.shape, (q.stride(), k.stride(), v.stride(), o.stride(), do.stride()),
        q.dtype, q.device, scale)
    dq, dk, dv = (q.new_empty(q.shape) for _ in range(3))
    inputs = (q, k, v, o, do)
    delta = lse  # not read where dQ is fused into the dK/dV pass
    if dq_pass is not None:
        delta = torch.empty_like(lse)  # written by the dQ pass
        c = dq_pass.config
        dq_pass(inputs, (lse, delta, dq), bias.for_pass(q, c.block_m, c.block_n))

    c = dkdv_pass.config
    n_tiles = _cdiv(N, c.block_n)
    pass_bias = bias.for_pass(q, c.block_m, c.block_n, transposed=True)
    values, coords, stride_bias, bias_slots, *radii = pass_bias.args()
    dbias, n_slots = None, 1
    if pass_bias.tiles:
        dbias = torch.zeros(values.shape, dtype=torch.float32, device=q.device)
    elif pass_bias.axes:
        per_slot = B * values.numel() * 4
        n_slots = max(1, min(n_tiles, DBIAS_SLOT_BYTES // per_slot))
        dbias = torch.zeros((n_slots, B, *values.shape), dtype=torch.float32, device=q.device)
    dkdv_pass(inputs, (lse, delta, dq, dk, dv), pass_bias,
              (values, values if dbias is None else dbias, coords, stride_bias, bias_slots,
               n_slots, *radii))
    if dbias is None:
        return dq, dk, dv, None
    if pass_bias.tiles:  # fold the blocks into a table per row tile, then sum those
        copies = torch.zeros((H, n_tiles * bias.table.shape[1]), dtype=torch.float32,
                             device=q.device)
        copies.index_add_(1, pass_bias.index, dbias.view(H, -1))
        return dq, dk, dv, copies.view(H, n_tiles, -1).sum(1)
    return dq, dk, dv, dbias.sum((0, 1))


# torch.library operators take tensors and plain numbers only: a pattern travels through them
# as its ``key``, a tile configuration as its index in this table; torch.compile reads both
# once, as constants, while tracing.
_TILE_CONFIGS: list[TileConfig] = []
_TILE_INDEX: dict[TileConfig, int] = {}


_DEFAULT_TILES: dict[tuple[int, int, torch.dtype], int] = {}  # (pattern key, D, dtype) -> index


@torch.compiler.assume_constant_result
def _tiles_handle(tiles, pattern: int, head_dim: int, dtype: torch.dtype) -> int:
    if tiles is None and (pattern, head_dim, dtype) in _DEFAULT_TILES:
        return _DEFAULT_TILES[pattern, head_dim, dtype]  # the common call, without hashing
    cfg = _as_tile_config(tiles, pattern_of_key(pattern), head_dim, dtype)
    if cfg not in _TILE_INDEX:
        _TILE_INDEX[cfg] = len(_TILE_CONFIGS)
        _TILE_CONFIGS.append(cfg)
    if tiles is None:
        _DEFAULT_TILES[pattern, head_dim, dtype] = _TILE_INDEX[cfg]
    return _TILE_INDEX[cfg]


def _bias_args(table: Optional[Tensor], coords: Optional[Tensor], pattern: int) -> _BiasArgs:
    if table is None:
        return _NO_BIAS
    return _BiasArgs.of(RelativeBias(table, coords), pattern_of_key(pattern))


def _forward_impl(q: Tensor, k: Tensor, v: Tensor, table: Optional[Tensor],
                  coords: Optional[Tensor], pattern: int, scale: float,
                  tiles: int, token_major: bool) -> tuple[Tensor, Tensor]:
    """Output ``[B, H, N, D]`` (see ``_empty_output``) and log-sum-exp (fp32 ``[B, H, N]``)."""
    return _forward(q, k, v, _bias_args(table, coords, pattern), pattern, scale, tiles,
                    token_major)


def _backward_impl(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
                   table: Optional[Tensor], coords: Optional[Tensor], pattern: int, scale: float,
                   tiles: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """dQ, dK, dV and the table's gradient (empty without a table)."""
    dq, dk, dv, dbias = _backward(do, q, k, v, o, lse, _bias_args(table, coords, pattern),
                                  pattern, scale, tiles)
    dtable = q.new_empty(0) if dbias is None else dbias.to(table.dtype).view(table.shape)
    return dq, dk, dv, dtable


def _save_for_backward(ctx, inputs, output) -> None:
    q, k, v, table, coords, pattern, scale, tiles, _ = inputs
    ctx.save_for_backward(q, k, v, *output, table, coords)
    ctx.constants = pattern, scale, tiles


def _gradients(ctx, do, backward) -> tuple:
    q, k, v, o, lse, table, coords = ctx.saved_tensors
    dq, dk, dv, dtable = backward(do, q, k, v, o, lse, table, coords, *ctx.constants)
    return dq, dk, dv, dtable if table is not None else None, None, None, None, None, None


# What torch.compile traces: the passes as two operators (opaque to the compiler, with their
# output shapes declared and the backward registered).
_forward_op = torch.library.custom_op("hilbertattn::triton_forward", _forward_impl,
                                      mutates_args=())
_backward_op = torch.library.custom_op("hilbertattn::triton_backward", _backward_impl,
                                       mutates_args=())


@_forward_op.register_fake
def _(q, k, v, table, coords, pattern, scale, tiles, token_major):
    return _empty_output(q, token_major), q.new_empty(q.shape[:3], dtype=torch.float32)


@_backward_op.register_fake
def _(do, q, k, v, o, lse, table, coords, pattern, scale, tiles):
    dtable = q.new_empty(0) if table is None else torch.empty_like(table)
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape), dtable


_forward_op.register_autograd(lambda ctx, do, _dlse: _gradients(ctx, do, _backward_op),
                              setup_context=_save_for_backward)


class _EagerAttention(torch.autograd.Function):
    """What runs eagerly: the same passes without the operators' dispatch (see the module
    docstring)."""

    @staticmethod
    def forward(ctx, *inputs):
        o, lse = _forward_impl(*inputs)
        _save_for_backward(ctx, inputs, (o, lse))
        return o

    @staticmethod
    def backward(ctx, do):
        return _gradients(ctx, do, _backward_impl)


# ----------------------------------------------------------------------------------------------
# Public entry
# ----------------------------------------------------------------------------------------------


def available() -> bool:
    """Whether triton imported (a GPU, or ``TRITON_INTERPRET=1``, is needed to run it)."""
    return _TRITON_ERROR is None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    check_qkv(q, k, v, _DTYPES)
    d = q.shape[-1]
    if not 16 <= d <= 256:
        raise ValueError(f"head dim D (q.shape[-1]) must be in 16..256 for the triton backend, "
                         f"got {d}")
    if q.shape[-2] < 1:
        raise ValueError(f"sequence length N (q.shape[-2]) must be positive, got {q.shape[-2]}")


def triton_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern,
    scale: float,
    *,
    bias=None,
    tiles: Union[None, tuple[int, int], PassConfig, TileConfig] = None,
) -> Tensor:
    """Block-sparse attention of ``q, k, v`` (``[B, heads, N, D]``) under ``pattern``.

    Args:
        q, k, v: same shape, dtype (float16, bfloat16 or float32) and CUDA device; any strides.
            Head dim ``D`` in 16..256.
        pattern: a ``hilbertattn.patterns`` pattern (provides ``codes``; planned by
            ``hilbertattn.plan.block_plan``).
        scale: multiplier of ``q @ k^T`` before the softmax.
        bias: optional ``hilbertattn.RelativeBias`` (1 to 3 grid axes) added to the scores; its
            table gets a gradient (summed with atomics in the dK/dV pass).
        tiles: override the tile table: ``(block_m, block_n)`` for every pass, a ``PassConfig``
            or a ``TileConfig`` (per pass). Powers of two >= 16.

    Returns:
        ``[B, heads, N, D]``, dtype of ``q``, differentiable w.r.t. ``q, k, v``; contiguous, or
        ``[B, N, heads, D]`` in memory when ``q`` is (heads inside tokens, as the views of a
        packed ``[B, N, 3, heads, D]`` projection are), so that merging the heads back into the
        tokens is free.
    """
    if _TRITON_ERROR is not None:
        raise NotImplementedError(f"the triton backend needs triton: {_TRITON_ERROR}")
    _check(q, k, v)
    if bias is not None:
        check_bias(bias, q)
        if not 1 <= len(bias.radius) <= 3:
            raise ValueError(f"bias.coords must have 1 to 3 axes for the triton backend, got "
                             f"{len(bias.radius)}")
    if q.device.type != "cuda" and not _interpreting():
        raise NotImplementedError(
            f"the triton backend needs CUDA tensors (got device {q.device}); use "
            f"backend='flex' or 'reference', or set TRITON_INTERPRET=1 for the slow interpreter")
    table, coords = (None, None) if bias is None else bias
    inputs = (q, k, v, table, coords, pattern.key, float(scale),
              _tiles_handle(tiles, pattern.key, q.shape[-1], q.dtype), _token_major(q))
    if torch.compiler.is_compiling():
        return _forward_op(*inputs)[0]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (q, k, v, table)):
        return _EagerAttention.apply(*inputs)
    return _forward_impl(*inputs)[0]  # nothing to differentiate: autograd's cost skipped
