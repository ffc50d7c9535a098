"""Attention patterns: which key ``j`` each query ``i`` may attend (see SPEC.md).

Every pattern gives the same answer in three forms, each used where it is cheapest:

- ``mask(i, j, seq_len)``: the element-wise rule over broadcast index tensors (the reference);
- ``codes(seq_len, device)``: interval codes that kernels evaluate per tile with a few loads and
  compares: ``j`` is attended by ``i`` iff ``qlo[a, i] <= kcode[a, j] <= qhi[a, i]`` on every row
  ``a`` (one row for 1-D patterns, one per grid axis for 2-D/3-D ones);
- the block plan (``hilbertattn.plan``), from per-query key ranges (1-D patterns) or per-axis
  neighbour lists (grid patterns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

import torch
from torch import Tensor

from .layout import Layout, _as_device

__all__ = ["MaskCodes", "Pattern", "SequencePattern", "GridPattern", "Window", "Slide",
           "Neighborhood", "Window2D"]


class MaskCodes(NamedTuple):
    """``qlo, qhi, kcode``: int32 ``[A, N]``; ``i`` attends ``j`` iff, on every row ``a``,
    ``qlo[a, i] <= kcode[a, j] <= qhi[a, i]``. Every query attends itself, so each interval
    holds the query's own code (the kernels rely on ``qlo <= qhi``)."""

    qlo: Tensor
    qhi: Tensor
    kcode: Tensor


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _per_axis(name: str, value, ndim: int) -> tuple[int, ...]:
    values = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(values) != ndim:
        raise ValueError(f"{name} must be an int or {ndim} ints (one per grid axis), got {value!r}")
    for v in values:
        _positive_int(name, v)
    return values


class Pattern:
    """Base of all patterns. Subclasses are frozen dataclasses, hashable, so plans and compiled
    kernels can be cached per pattern; they check their fields in ``_validate``."""

    def __post_init__(self) -> None:
        self._validate()
        _intern(self)

    def _validate(self) -> None:
        """Raise ``ValueError``, naming the argument, for fields the pattern cannot take."""

    @property
    def key(self) -> int:
        """A small integer shared by equal patterns: how compiled code (``torch.compile``) hands
        a pattern to the kernels, as a constant."""
        key = getattr(self, "_key", None)
        return _intern(self) if key is None else key

    def check(self, seq_len: int) -> None:
        """Raise ``ValueError`` if the pattern cannot be applied to ``seq_len`` tokens."""

    def mask(self, i: Tensor, j: Tensor, seq_len: int) -> Tensor:
        """Bool tensor, broadcast of ``i`` and ``j``: whether query ``i`` attends key ``j``."""
        raise NotImplementedError

    def codes(self, seq_len: int, device: torch.device | str | None = None) -> MaskCodes:
        """Interval codes of the mask (see ``MaskCodes``), built once per (seq_len, device)."""
        self.check(seq_len)
        return _cached_codes(self, seq_len, _as_device(device))

    def _codes(self, seq_len: int, device: torch.device) -> MaskCodes:
        raise NotImplementedError


_KEYS: dict[Pattern, int] = {}
_BY_KEY: list[Pattern] = []


def _intern(pattern: Pattern) -> int:
    key = _KEYS.setdefault(pattern, len(_BY_KEY))
    if key == len(_BY_KEY):
        _BY_KEY.append(pattern)
    object.__setattr__(pattern, "_key", key)
    return key


def pattern_of_key(key: int) -> Pattern:
    """The pattern whose ``key`` is ``key``."""
    return _BY_KEY[key]


@lru_cache(maxsize=128)
def _cached_codes(pattern: Pattern, seq_len: int, device: torch.device) -> MaskCodes:
    qlo, qhi, kcode = pattern._codes(seq_len, device)
    return MaskCodes(*(c.to(torch.int32).contiguous() for c in (qlo, qhi, kcode)))


# ----------------------------------------------------------------------------------------------
# 1-D patterns: each query attends one contiguous range of positions [lo(i), hi(i)], with lo and hi
# non-decreasing in i (this is what makes their block plans analytic).
# ----------------------------------------------------------------------------------------------


class SequencePattern(Pattern):
    window: int

    def key_range(self, i: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
        """First and last attended key of each query ``i`` (inclusive, non-decreasing in ``i``)."""
        raise NotImplementedError

    def mask(self, i: Tensor, j: Tensor, seq_len: int) -> Tensor:
        lo, hi = self.key_range(i, seq_len)
        return (lo <= j) & (j <= hi)

    def check(self, seq_len: int) -> None:
        if self.window > seq_len:
            raise ValueError(f"window must be at most the number of tokens N={seq_len}, "
                             f"got window={self.window}")

    def _codes(self, seq_len: int, device: torch.device) -> MaskCodes:
        i = torch.arange(seq_len, device=device)
        lo, hi = self.key_range(i, seq_len)
        return MaskCodes(lo[None], hi[None], i[None])


@dataclass(frozen=True)
class Window(SequencePattern):
    """Hilbert window attention (HWA): ``i`` and ``j`` attend iff
    ``(i - shift) // window == (j - shift) // window``; groups at the ends are shorter when
    ``shift > 0``, never wrapped."""

    window: int
    shift: int = 0

    def _validate(self) -> None:
        _positive_int("window", self.window)
        if isinstance(self.shift, bool) or not isinstance(self.shift, int) or not (
            0 <= self.shift < self.window
        ):
            raise ValueError(f"shift must be an int in [0, window={self.window}), got {self.shift!r}")

    def key_range(self, i: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
        start = torch.div(i - self.shift, self.window, rounding_mode="floor") * self.window + self.shift
        return start.clamp(min=0), (start + self.window - 1).clamp(max=seq_len - 1)


@dataclass(frozen=True)
class Slide(SequencePattern):
    """Hilbert slide attention (HSA): ``|i - j| <= window // 2``. With ``clamped=True`` (odd
    ``window``) the band is shifted inwards at the ends so every query sees exactly ``window``
    keys: the 1-D neighbourhood attention along the curve."""

    window: int
    clamped: bool = False

    def _validate(self) -> None:
        _positive_int("window", self.window)
        if self.clamped and self.window % 2 == 0:
            raise ValueError(f"window must be odd when clamped=True, got {self.window}")

    def key_range(self, i: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
        h = self.window // 2
        if self.clamped:
            center = i.clamp(min=h, max=seq_len - 1 - h)
            return center - h, center + h
        return (i - h).clamp(min=0), (i + h).clamp(max=seq_len - 1)


# ----------------------------------------------------------------------------------------------
# Grid patterns: defined per axis on the grid coordinates of the layout; a key is attended iff it
# is a neighbour on every axis.
# ----------------------------------------------------------------------------------------------


class GridPattern(Pattern):
    layout: Layout

    def check(self, seq_len: int) -> None:
        if seq_len != self.layout.numel:
            raise ValueError(f"sequence length N={seq_len} does not match the layout "
                             f"{self.layout} with {self.layout.numel} tokens")

    def axis_codes(self, x: Tensor, axis: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(qlo, qhi, kcode)`` of grid coordinates ``x`` along ``axis``."""
        raise NotImplementedError

    def axis_span(self, x: Tensor, axis: int) -> tuple[Tensor, Tensor]:
        """The coordinates along ``axis`` that ``x`` attends: ``first + axis_step(axis) * t`` for
        ``0 <= t < count``; returns ``(first, count)``, each like ``x``."""
        raise NotImplementedError

    def axis_step(self, axis: int) -> int:
        return 1

    def _check_arguments(self, *per_axis: str) -> None:
        """Check ``layout`` and store the ``per_axis`` fields given as lists as tuples (hashable)."""
        if not isinstance(self.layout, Layout):
            raise ValueError(f"layout must be a hilbertattn.Layout, got {type(self.layout).__name__}")
        for name in per_axis:
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    def mask(self, i: Tensor, j: Tensor, seq_len: int) -> Tensor:
        self.check(seq_len)
        coords = self.layout.coords.to(i.device)
        out = torch.ones(torch.broadcast_shapes(i.shape, j.shape), dtype=torch.bool, device=i.device)
        for a in range(self.layout.ndim):
            lo, hi, _ = self.axis_codes(coords[i, a], a)
            _, _, kc = self.axis_codes(coords[j, a], a)
            out &= (lo <= kc) & (kc <= hi)
        return out

    def _codes(self, seq_len: int, device: torch.device) -> MaskCodes:
        coords = self.layout.coords.to(device)
        rows = [self.axis_codes(coords[:, a], a) for a in range(self.layout.ndim)]
        return MaskCodes(*(torch.stack(parts) for parts in zip(*rows)))


@dataclass(frozen=True)
class Neighborhood(GridPattern):
    """Exact 2-D/3-D neighbourhood attention (NATTEN semantics) on the grid of ``layout``.

    Per axis of length ``X``: ``g = x % dilation``, ``p = x // dilation``; the group has
    ``L = ceil((X - g) / dilation)`` members; the window starts at
    ``s = min(max(p - k // 2, 0), L - k)``; ``x'`` is a neighbour iff ``x' % dilation == g`` and
    ``s <= x' // dilation < s + k``. Kernel sizes are odd; ``even_kernel=True`` admits even ones
    with the same formula (the window then reaches one further back than forward), as NATTEN does
    for e.g. 80 x 80 neighbourhoods.
    """

    layout: Layout
    kernel_size: int | tuple[int, ...]
    dilation: int | tuple[int, ...] = 1
    even_kernel: bool = False
    kernel: tuple[int, ...] = field(init=False, repr=False, compare=False)
    dil: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def _validate(self) -> None:
        self._check_arguments("kernel_size", "dilation")
        nd = self.layout.ndim
        kernel = _per_axis("kernel_size", self.kernel_size, nd)
        dil = _per_axis("dilation", self.dilation, nd)
        for a, (k, d, x) in enumerate(zip(kernel, dil, self.layout.shape)):
            if k % 2 == 0 and not self.even_kernel:
                raise ValueError(f"kernel_size must be odd, got {self.kernel_size!r} (pass "
                                 f"even_kernel=True for NATTEN's even-kernel windows)")
            shortest = x // d  # the last dilation group is the shortest: floor(X / d) members
            if shortest < k:
                raise ValueError(
                    f"kernel_size {k} x dilation {d} does not fit grid axis {a} of length {x}: "
                    f"every dilation group needs at least kernel_size members (has {shortest})")
        # Normalised per-axis values; excluded from eq/hash, which use the given arguments.
        object.__setattr__(self, "kernel", kernel)
        object.__setattr__(self, "dil", dil)

    def _start(self, x: Tensor, axis: int) -> tuple[Tensor, Tensor, Tensor]:
        k, d, size = self.kernel[axis], self.dil[axis], self.layout.shape[axis]
        g, p = x % d, torch.div(x, d, rounding_mode="floor")
        length = torch.div(size - g + d - 1, d, rounding_mode="floor")
        start = torch.minimum((p - k // 2).clamp(min=0), length - k)
        return g, p, start

    def axis_codes(self, x: Tensor, axis: int) -> tuple[Tensor, Tensor, Tensor]:
        g, p, start = self._start(x, axis)
        base = g * self.layout.shape[axis]  # groups never overlap: p, s + k - 1 < axis length
        return base + start, base + start + self.kernel[axis] - 1, base + p

    def axis_span(self, x: Tensor, axis: int) -> tuple[Tensor, Tensor]:
        g, _, start = self._start(x, axis)
        return g + self.dil[axis] * start, torch.full_like(x, self.kernel[axis])

    def axis_step(self, axis: int) -> int:
        return self.dil[axis]


@dataclass(frozen=True)
class Window2D(GridPattern):
    """Exact Swin windows on the grid of ``layout``: per axis ``group(x) = (x - shift) // w``;
    attend iff the groups match on every axis. ``shift > 0`` equals Swin's cyclic shift with its
    attention mask."""

    layout: Layout
    window_size: int | tuple[int, ...]
    shift: int | tuple[int, ...] = 0
    size: tuple[int, ...] = field(init=False, repr=False, compare=False)
    offset: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def _validate(self) -> None:
        self._check_arguments("window_size", "shift")
        nd = self.layout.ndim
        size = _per_axis("window_size", self.window_size, nd)
        shift = (self.shift,) * nd if isinstance(self.shift, int) else tuple(self.shift)
        if len(shift) != nd or any(not isinstance(s, int) for s in shift):
            raise ValueError(f"shift must be an int or {nd} ints, got {self.shift!r}")
        for a, (w, s, x) in enumerate(zip(size, shift, self.layout.shape)):
            if w > x:
                raise ValueError(f"window_size {w} is larger than grid axis {a} of length {x}")
            if not 0 <= s < w:
                raise ValueError(f"shift must be in [0, window_size={w}), got {self.shift!r}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "offset", shift)

    def _group(self, x: Tensor, axis: int) -> Tensor:
        return torch.div(x - self.offset[axis], self.size[axis], rounding_mode="floor")

    def axis_codes(self, x: Tensor, axis: int) -> tuple[Tensor, Tensor, Tensor]:
        g = self._group(x, axis)
        return g, g, g

    def axis_span(self, x: Tensor, axis: int) -> tuple[Tensor, Tensor]:
        start = self._group(x, axis) * self.size[axis] + self.offset[axis]
        first = start.clamp(min=0)
        last = (start + self.size[axis] - 1).clamp(max=self.layout.shape[axis] - 1)
        return first, last - first + 1

