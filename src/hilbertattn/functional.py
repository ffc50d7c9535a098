"""Functional API: ``attention`` and one wrapper per pattern (see SPEC.md)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .bias import RelativeBias
from .layout import Layout
from .patterns import Neighborhood, Pattern, Slide, Window, Window2D

__all__ = ["attention", "window_attention", "slide_attention", "neighborhood_attention",
           "window_attention_2d", "BACKENDS", "resolve_backend", "check_qkv",
           "check_bias"]

Backend = Literal["auto", "triton", "flex", "reference"]
BACKENDS = ("auto", "triton", "flex", "reference")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_qkv(q: Tensor, k: Tensor, v: Tensor,
              dtypes: tuple[torch.dtype, ...] = _FLOATS) -> None:
    """Raise ``ValueError`` unless ``q, k, v`` are ``[B, heads, N, D]`` tensors of one shape,
    one dtype out of ``dtypes`` and one device."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            shape = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor of shape [B, heads, N, D], got {shape}")
        if t.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise ValueError(f"{name}.dtype must be one of {names}, got {t.dtype}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must have the same shape [B, heads, N, D], got "
                         f"q.shape={list(q.shape)}, k.shape={list(k.shape)}, "
                         f"v.shape={list(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must have the same dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on the same device, got {q.device}, {k.device}, "
                         f"{v.device}")


def check_bias(bias: RelativeBias, q: Tensor) -> None:
    """Raise ``ValueError`` unless ``bias`` is a ``RelativeBias`` for the heads and tokens of
    ``q`` ``[B, heads, N, D]``, its table on the device of ``q``."""
    if not isinstance(bias, RelativeBias):
        raise ValueError(f"bias must be a hilbertattn.RelativeBias, got {type(bias).__name__}")
    bias.check(q.shape[1], q.shape[2])
    if bias.table.device != q.device:
        raise ValueError(f"bias.table must be on the device of q ({q.device}), got "
                         f"{bias.table.device}")


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, pattern: Pattern,
                  bias: RelativeBias | None) -> None:
    check_qkv(q, k, v)
    if not isinstance(pattern, Pattern):
        raise ValueError(f"pattern must be a hilbertattn pattern (Window, Slide, Neighborhood, "
                         f"Window2D), got {type(pattern).__name__}")
    pattern.check(q.shape[2])
    if bias is not None:
        check_bias(bias, q)


def _triton_ready(q: Tensor) -> bool:
    if q.device.type != "cuda" or q.dtype == torch.float64:
        return False
    from .backends import triton as triton_backend

    return triton_backend.available()


def resolve_backend(backend: str, q: Tensor) -> str:
    """The backend that ``backend`` means for these inputs (``auto``: triton on CUDA, then flex;
    the reference elsewhere)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if _triton_ready(q):
        return "triton"
    if q.device.type == "cuda":
        from .backends import flex

        if flex.available():
            return "flex"
    return "reference"


def attention(q: Tensor, k: Tensor, v: Tensor, pattern: Pattern, scale: float | None = None,
              bias: RelativeBias | None = None, backend: Backend = "auto") -> Tensor:
    """Local attention of ``q, k, v`` under ``pattern``.

    Args:
        q, k, v: ``[B, heads, N, D]``, tokens in the sequence order of the pattern's layout.
        pattern: ``Window``, ``Slide``, ``Neighborhood`` or ``Window2D``.
        scale: score multiplier, default ``D ** -0.5``.
        bias: optional ``RelativeBias`` added to the scores (learnable, with gradients).
        backend: ``"auto"``, ``"triton"``, ``"flex"`` or ``"reference"``.

    Returns:
        ``[B, heads, N, D]``, same dtype and order as ``q``.
    """
    _check_inputs(q, k, v, pattern, bias)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    name = resolve_backend(backend, q)
    if name == "reference":
        from .backends.reference import reference_attention

        return reference_attention(q, k, v, pattern, scale, bias)
    if name == "flex":
        from .backends.flex import flex_attention_forward

        return flex_attention_forward(q, k, v, pattern, scale, bias)
    from .backends.triton import triton_attention

    return triton_attention(q, k, v, pattern, scale, bias=bias)


def window_attention(q: Tensor, k: Tensor, v: Tensor, window: int, shift: int = 0,
                     scale: float | None = None, bias: RelativeBias | None = None,
                     backend: Backend = "auto") -> Tensor:
    """Hilbert window attention (HWA): groups of ``window`` consecutive tokens, offset by ``shift``."""
    return attention(q, k, v, Window(window, shift), scale, bias, backend)


def slide_attention(q: Tensor, k: Tensor, v: Tensor, window: int, clamped: bool = False,
                    scale: float | None = None, bias: RelativeBias | None = None,
                    backend: Backend = "auto") -> Tensor:
    """Hilbert slide attention (HSA): a band of ``window // 2`` tokens each side along the curve."""
    return attention(q, k, v, Slide(window, clamped), scale, bias, backend)


def neighborhood_attention(q: Tensor, k: Tensor, v: Tensor, layout: Layout,
                           kernel_size: int | tuple[int, ...], dilation: int | tuple[int, ...] = 1,
                           scale: float | None = None, bias: RelativeBias | None = None,
                           backend: Backend = "auto") -> Tensor:
    """Exact 2-D/3-D neighbourhood attention (NATTEN semantics) on the grid of ``layout``."""
    return attention(q, k, v, Neighborhood(layout, kernel_size, dilation), scale, bias, backend)


def window_attention_2d(q: Tensor, k: Tensor, v: Tensor, layout: Layout,
                        window_size: int | tuple[int, ...], shift: int | tuple[int, ...] = 0,
                        scale: float | None = None, bias: RelativeBias | None = None,
                        backend: Backend = "auto") -> Tensor:
    """Exact Swin window attention (shifted with ``shift > 0``) on the grid of ``layout``."""
    return attention(q, k, v, Window2D(layout, window_size, shift), scale, bias, backend)
