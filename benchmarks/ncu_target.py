"""A few forward+backward calls of the triton backend on named cases, for Nsight Compute.

    ncu --clock-control none -k regex:_fwd_kernel -s 2 -c 1 --section SpeedOfLight \
        python3 benchmarks/ncu_target.py --cases neighborhood

The cases are those of ``descriptor_cost.py`` (the bench's shapes). Nothing is timed here: the
script only issues the kernels that ``ncu`` selects (skip the first calls, which compile).
"""

from __future__ import annotations

import argparse

import torch

import hilbertattn as ha
from descriptor_cost import case_inputs  # noqa: E402  (this script's folder)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="neighborhood")
    ap.add_argument("--calls", type=int, default=4)
    args = ap.parse_args()
    for name in args.cases.split(","):
        pattern, q, k, v, do = case_inputs(name)
        for _ in range(args.calls):
            torch.autograd.grad(ha.attention(q, k, v, pattern, backend="triton"), (q, k, v), do)
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
