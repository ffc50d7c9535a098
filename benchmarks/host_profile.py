"""Where the host time of a triton-backend call goes (for the cases bound by it).

    PYTHONPATH=src python3 benchmarks/host_profile.py --out results/host_profile.txt

For each case: the wall time per call of back-to-back calls (forward without grad, forward +
backward); then the forward's launch taken apart, each layer timed alone with the arguments of
a real call: the whole ``ha.attention`` call, the backend's entry ``triton_attention``, its
prepared pass (straight to the compiled kernel), Triton's ``JITFunction.run`` (binding, cache
lookup, launch) and the compiled kernel's own launcher;
then ``cProfile`` of the forward+backward loop, sorted by own and by cumulative time. Small calls
(the 256x256 HWA 64 window: ~0.1 ms on the H100) are bound by this time, so it shows what to
trim: hilbertattn's passes, Triton's argument binding, or autograd.
``--smoke`` runs a tiny case on the CPU through the Triton interpreter (a dry run of the script).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys

if "--smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

import hilbertattn as ha  # noqa: E402
from descriptor_cost import CASES, per_call_ms  # noqa: E402  (this script's folder)
from hilbertattn.backends import triton as tb  # noqa: E402
from hilbertattn.backends import triton_kernels as tk  # noqa: E402


def last_launch(kernel, call):
    """The ``(args, kwargs)`` with which ``call()`` launches ``kernel`` through Triton (the
    backend's prepared passes are dropped first, so that it does)."""
    seen = []
    run = kernel.run
    kernel.run = lambda *args, **kwargs: seen.append((args, kwargs)) or run(*args, **kwargs)
    tb._forward_pass.cache_clear()
    try:
        call()
    finally:
        del kernel.run
    return seen[-1]


class _Copy(torch.autograd.Function):
    """One small kernel each way: what autograd alone costs around a pass."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g.clone()


def autograd_floor_ms(device: str, calls: int) -> float:
    """Wall ms per ``torch.autograd.grad`` through one tiny custom Function (forward and backward
    one small copy each): the engine's own cost per backward call, on this host."""
    x = torch.randn(64, device=device, requires_grad=True)
    g = torch.randn(64, device=device)
    return per_call_ms(lambda: torch.autograd.grad(_Copy.apply(x), (x,), g), calls)


def launch_layers(q, k, v, pattern, calls: int) -> dict[str, float]:
    """Wall ms per forward call of each layer of the launch (see the module docstring)."""
    scale = q.shape[-1] ** -0.5

    def attention():
        ha.attention(q, k, v, pattern, backend="triton")

    def entry():
        tb.triton_attention(q, k, v, pattern, scale)

    with torch.no_grad():
        layers = {"ha.attention": per_call_ms(attention, calls),
                  "triton_attention": per_call_ms(entry, calls)}
        args, kwargs = last_launch(tk._fwd_kernel, entry)
    o, lse = torch.empty_like(q), torch.empty(q.shape[:3], device=q.device)
    tiles = tb._tiles_handle(None, pattern.key, q.shape[-1], q.dtype)
    run = tb._forward_pass(pattern.key, tiles, q.shape, (q.stride(), k.stride(), v.stride(),
                                                         o.stride()), q.dtype, q.device, scale)
    no_bias = tb._NO_BIAS.for_pass(q, run.config.block_m, run.config.block_n)
    layers["backend pass"] = per_call_ms(lambda: run((q, k, v), (o, lse), no_bias), calls)
    layers["JITFunction.run"] = per_call_ms(lambda: tk._fwd_kernel.run(*args, **kwargs), calls)
    if torch.cuda.is_available():  # the compiled kernel's launcher (Triton 3.x internals)
        compiled = tk._fwd_kernel.run(*args, **{**kwargs, "warmup": True})
        names = tk._fwd_kernel.arg_names
        values = [*args, *(kwargs[n] for n in names[len(args):])]
        grid = kwargs["grid"]
        stream = torch.cuda.current_stream().cuda_stream

        def raw():
            compiled.run(grid[0], 1, 1, stream, compiled.function, compiled.packed_metadata,
                         None, None, None, *values)

        layers["CompiledKernel.run"] = per_call_ms(raw, calls)
    layers["2 x torch.empty"] = per_call_ms(
        lambda: (torch.empty_like(q), torch.empty(q.shape[:3], device=q.device)), calls)
    return layers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    device = "cpu" if args.smoke else "cuda"
    cases = {name: CASES[name] for name in ("window", "tiny-na", "slide")}
    if args.smoke:
        cases = {"tiny-na": ((8, 8), 1, 16, torch.float32, lambda L: ha.Neighborhood(L, 3))}
    calls = 3 if args.smoke else 300
    report = io.StringIO()
    print(f"autograd floor (one tiny Function, forward + autograd.grad): "
          f"{autograd_floor_ms(device, 3 if args.smoke else 300) * 1e3:.1f} us/call", file=report)
    for name, (grid, heads, dim, dtype, build) in cases.items():
        layout = ha.Layout(grid, device=device)
        pattern = build(layout)
        q, k, v, g = (torch.randn(1, heads, layout.numel, dim, device=device, dtype=dtype)
                      for _ in range(4))
        for t in (q, k, v):
            t.requires_grad_()

        def forward():
            with torch.no_grad():
                ha.attention(q, k, v, pattern, backend="triton")

        def forward_backward():
            ha.attention(q, k, v, pattern, backend="triton").backward(g)
            q.grad = k.grad = v.grad = None

        print(f"{name}: forward {per_call_ms(forward, calls):.3f} ms/call, forward+backward "
              f"{per_call_ms(forward_backward, calls):.3f} ms/call", file=report)
        for layer, ms in launch_layers(q, k, v, pattern, calls).items():
            print(f"  forward launch, {layer}: {ms * 1e3:.1f} us/call", file=report)
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(calls):
            forward_backward()
        if device == "cuda":
            torch.cuda.synchronize()
        profile.disable()
        for order in ("tottime", "cumulative"):
            pstats.Stats(profile, stream=report).sort_stats(order).print_stats(30)
    print(report.getvalue())
    with open(args.out, "w") as f:
        f.write(report.getvalue())


if __name__ == "__main__":
    main()
