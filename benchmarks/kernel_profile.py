"""GPU time per kernel of the triton backend's passes, in the bench's conditions.

    PYTHONPATH=src python3 benchmarks/kernel_profile.py --out results/kernel_profile.txt

For each case: ``torch.profiler`` over back-to-back forward+backward calls with inputs rotated
among sets larger than L2 (as ``hilbertattn bench`` times them), then the same calls on one
set. Prints each kernel's GPU time per call next to the wall time per call, which tells a
host-bound case (wall well above the kernels' sum) from a GPU-bound one, and the CUDA runtime
calls made per call on the host (a synchronizing one would serialize host and GPU).
"""

from __future__ import annotations

import argparse
import io

import torch
from torch.profiler import ProfilerActivity, profile

import hilbertattn as ha
from descriptor_cost import CASES, per_call_ms  # noqa: E402  (this script's folder)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default="window,slide,neighborhood")
    args = ap.parse_args()
    report = io.StringIO()
    calls = 40
    for name in args.cases.split(","):
        grid, heads, dim, dtype, build = CASES[name]
        layout = ha.Layout(grid, device="cuda")
        pattern = build(layout)
        sets = [[torch.randn(1, heads, layout.numel, dim, device="cuda", dtype=dtype)
                 for _ in range(4)] for _ in range(8)]
        for s in sets:
            for t in s[:3]:
                t.requires_grad_()
        for label, n_sets in (("rotated", len(sets)), ("one set", 1)):
            state = {"i": 0}

            def step():
                q, k, v, do = sets[state["i"] % n_sets]
                state["i"] += 1
                torch.autograd.grad(ha.attention(q, k, v, pattern, backend="triton"), (q, k, v),
                                    do)

            wall = per_call_ms(step, calls)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(calls):
                    step()
                torch.cuda.synchronize()
            print(f"{name}, {label}: wall {wall:.3f} ms/call (fwd+bwd); GPU time per call:",
                  file=report)
            for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total):
                if e.device_time_total > 0 and e.device_type.name == "CUDA":
                    print(f"  {e.key[:60]:60s} {e.device_time_total / calls / 1e3:8.3f} ms"
                          f"  ({e.count / calls:.0f}/call)", file=report)
            print("  host: CUDA runtime calls per call", file=report)
            for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total):
                if e.key.startswith("cuda"):
                    print(f"  {e.key[:60]:60s} {e.self_cpu_time_total / calls / 1e3:8.3f} ms"
                          f"  ({e.count / calls:.1f}/call)", file=report)
    print(report.getvalue())
    with open(args.out, "w") as f:
        f.write(report.getvalue())


if __name__ == "__main__":
    main()
