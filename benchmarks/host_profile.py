"""Where the host time of a triton-backend call goes (for the cases bound by it).

    PYTHONPATH=src python3 benchmarks/host_profile.py --out results/host_profile.txt

For each case: the wall time per call of back-to-back calls (forward without grad, forward +
backward), then ``cProfile`` of the forward+backward loop, its functions sorted by their own
time. Small calls (the 256x256 HWA 64 window: ~0.1 ms on the H100) are bound by this time, so it
shows what to trim: hilbertattn's launcher, Triton's argument binding, or autograd.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    device = "cpu" if args.smoke else "cuda"
    cases = {name: CASES[name] for name in ("window", "tiny-na")}
    if args.smoke:
        cases = {"tiny-na": ((8, 8), 1, 16, torch.float32, lambda L: ha.Neighborhood(L, 3))}
    calls = 3 if args.smoke else 300
    report = io.StringIO()
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
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(calls):
            forward_backward()
        if device == "cuda":
            torch.cuda.synchronize()
        profile.disable()
        pstats.Stats(profile, stream=report).sort_stats("tottime").print_stats(25)
    print(report.getvalue())
    with open(args.out, "w") as f:
        f.write(report.getvalue())


if __name__ == "__main__":
    main()
