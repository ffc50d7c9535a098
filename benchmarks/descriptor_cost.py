"""Host cost and speed of the triton backend's two ways of reading inputs, on the GPU.

    PYTHONPATH=src python3 benchmarks/descriptor_cost.py --out results/descriptor_cost.json

For each case and each setting of ``TENSOR_DESCRIPTORS`` (False: pointer loads, True: tensor
descriptors): the wall time per call of back-to-back calls (forward, forward+backward; this
includes the host's launch cost wherever it exceeds the GPU's time) and the GPU time per call
(``triton.testing.do_bench``, L2 flushed between calls). A 16x16-grid case shows the host cost
alone.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import triton
from triton.testing import do_bench

import hilbertattn as ha
from hilbertattn.backends import triton as tb

CASES = {  # id: (grid, heads, head dim, dtype, pattern builder)
    "tiny-na": ((16, 16), 1, 64, torch.bfloat16, lambda L: ha.Neighborhood(L, 5)),
    "window": ((256, 256), 8, 64, torch.bfloat16, lambda L: ha.Window(64)),
    "slide": ((256, 256), 8, 64, torch.bfloat16, lambda L: ha.Slide(169)),
    "neighborhood": ((256, 256), 8, 64, torch.bfloat16, lambda L: ha.Neighborhood(L, 13)),
    "flux-4k": ((256, 256), 24, 128, torch.float16,
                lambda L: ha.Neighborhood(L, 80, even_kernel=True)),
}


def case_inputs(name: str, device: str = "cuda"):
    """``(pattern, q, k, v, dO)`` of case ``name``: random ``[1, heads, N, D]`` tensors, q, k, v
    requiring gradients."""
    grid, heads, dim, dtype, build = CASES[name]
    layout = ha.Layout(grid, device=device)
    q, k, v, do = (torch.randn(1, heads, layout.numel, dim, device=device, dtype=dtype)
                   for _ in range(4))
    return build(layout), q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), do


def per_call_ms(fn, calls: int) -> float:
    """Wall time per call of ``calls`` back-to-back calls (the GPU, if any, drained around)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - t0) / calls * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    report = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                  triton=triton.__version__, cases=[])
    for name in args.cases.split(","):
        pat, q, k, v, g = case_inputs(name)
        calls = 5 if name == "flux-4k" else 200
        for mode in (False, True):
            tb.TENSOR_DESCRIPTORS = mode

            def fwd():
                with torch.no_grad():
                    ha.attention(q, k, v, pat, backend="triton")

            def fwdbwd():
                ha.attention(q, k, v, pat, backend="triton").backward(g)

            row = dict(case=name, descriptors=mode,
                       wall_fwd_ms=per_call_ms(fwd, calls),
                       wall_fwdbwd_ms=per_call_ms(fwdbwd, calls),
                       gpu_fwd_ms=do_bench(fwd, warmup=25, rep=200),
                       gpu_fwdbwd_ms=do_bench(fwdbwd, warmup=25, rep=200,
                                              grad_to_none=[q, k, v]))
            print(row, flush=True)
            report["cases"].append(row)
        tb.TENSOR_DESCRIPTORS = None
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
