"""Check the triton backend on the GPU and time its tile configurations per benchmark case.

    python benchmarks/tune_triton.py --out results/tune.json [--check] [--cases window,slide]
        [--descriptors both] [--no-flex] [--passes fwd,dkdv,dq]

``--check`` first compares forward and gradients with the float64 reference on random odd-sized
grids, every pattern, dtype and several head dims (and FlexAttention, compiled, likewise). Then, per
case, every candidate tile configuration of each pass is timed with ``triton.testing.do_bench``
(median, L2 flushed), next to FlexAttention on the same layout and dense SDPA, in the same run.
The chosen rows of ``TILE_RULES`` in ``hilbertattn/backends/triton.py`` come from its output.
``--descriptors both`` times the default tiles and the forward candidates twice: inputs read
through tensor descriptors and through pointer loads (``TENSOR_DESCRIPTORS``). ``--passes``
sweeps only the passes named.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

import hilbertattn as ha
from hilbertattn.backends import triton as triton_backend
from hilbertattn.backends.triton import PassConfig, TileConfig, tile_config, triton_attention

CASES = {  # id: (grid, heads, head dim, dtype, pattern builder)
    "window": ((256, 256), 8, 64, torch.bfloat16, lambda L: ha.Window(64)),
    "slide": ((256, 256), 8, 64, torch.bfloat16, lambda L: ha.Slide(169)),
    "neighborhood": ((256, 256), 8, 64, torch.bfloat16, lambda L: ha.Neighborhood(L, 13)),
    "flux-4k": ((256, 256), 24, 128, torch.float16,
                lambda L: ha.Neighborhood(L, 80, even_kernel=True)),
}
FWD = {64: [(64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 4, 4), (128, 64, 4, 3), (128, 64, 8, 3),
            (64, 32, 4, 3), (128, 32, 4, 3), (128, 128, 8, 3), (64, 128, 4, 3)],
       128: [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3), (64, 64, 4, 4), (128, 128, 8, 2),
             (128, 128, 8, 3), (128, 32, 8, 3), (64, 128, 8, 2), (64, 32, 4, 3), (64, 64, 4, 2),
             (64, 64, 4, 1), (64, 32, 4, 2), (64, 128, 4, 2), (32, 64, 4, 2), (128, 64, 4, 1),
             (128, 64, 4, 2), (128, 64, 4, 3), (128, 32, 4, 2), (128, 32, 4, 3),
             (128, 128, 4, 2)]}
DKDV = {64: [(32, 64, 4, 2), (64, 64, 4, 2), (64, 64, 4, 3), (32, 128, 8, 2), (64, 128, 8, 2),
             (16, 64, 4, 2), (64, 32, 4, 3)],
        128: [(32, 64, 4, 2), (64, 64, 8, 2), (32, 128, 8, 2), (16, 64, 4, 2), (64, 32, 4, 2),
              (32, 32, 4, 2), (32, 64, 4, 1), (16, 32, 4, 2), (32, 128, 4, 2), (64, 128, 4, 2)]}
DQ = {64: [(64, 32, 4, 2), (64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 32, 8, 2)],
      128: [(64, 32, 4, 2), (64, 64, 8, 2), (128, 32, 8, 2), (32, 64, 4, 2), (128, 64, 8, 2),
            (32, 32, 4, 2), (64, 16, 4, 2), (64, 32, 4, 1), (128, 64, 4, 2), (128, 32, 4, 2)]}


def check(report: dict) -> None:
    torch.manual_seed(0)
    errors = []
    grids = [((37, 29), "hilbert"), ((24, 40), "rowmajor"), ((5, 6, 7), "hilbert")]
    for shape, order in grids:
        L = ha.Layout(shape, order=order, device="cuda")
        n = L.numel
        pats = [ha.Window(64), ha.Window(49, 24), ha.Slide(169), ha.Slide(49, clamped=True)]
        pats += [ha.Neighborhood(L, 7), ha.Neighborhood(L, 3, dilation=2),
                 ha.Window2D(L, 4, 2)] if len(shape) == 2 else [ha.Neighborhood(L, 3)]
        for pat in pats:
            for dtype, d in [(torch.bfloat16, 64), (torch.float16, 80), (torch.float32, 32),
                             (torch.bfloat16, 128), (torch.float16, 96)]:
                q, k, v, g = (torch.randn(2, 3, n, d, device="cuda") for _ in range(4))
                ref = [t.double().requires_grad_() for t in (q, k, v)]
                o_ref = ha.attention(*ref, pat, backend="reference")
                grads_ref = torch.autograd.grad(o_ref, ref, g.double())
                for backend in ("triton", "flex"):
                    if backend == "flex" and (dtype, d) != (torch.bfloat16, 64):
                        continue  # each flex configuration compiles for a while
                    x = [t.to(dtype).requires_grad_() for t in (q, k, v)]
                    print("check", shape, order, pat, backend, dtype, d, flush=True)
                    try:
                        o = ha.attention(*x, pat, backend=backend)
                        grads = torch.autograd.grad(o, x, g.to(dtype))
                    except Exception as e:  # noqa: BLE001 - report and go on
                        errors.append(dict(grid=shape, pattern=repr(pat), backend=backend,
                                           dtype=str(dtype), d=d, error=repr(e)[:500], ok=False))
                        continue
                    err = max(float((a.double() - b).abs().max() / b.abs().max().clamp(min=1))
                              for a, b in zip((o, *grads), (o_ref, *grads_ref)))
                    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3 if dtype == torch.float16 else 1e-4
                    errors.append(dict(grid=shape, order=order, pattern=repr(pat), backend=backend,
                                       dtype=str(dtype), d=d, err=err, ok=err < tol))
    report["check"] = errors
    bad = [e for e in errors if not e["ok"]]
    print(f"check: {len(errors) - len(bad)}/{len(errors)} ok", flush=True)
    for e in bad:
        print("  FAIL", e, flush=True)


def copy_bandwidth() -> float:
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=50, rep=200)
    return 2 * x.numel() / (ms * 1e-3)


def bench_case(name: str, report: dict, bandwidth: float, descriptor_modes: tuple,
               flex: bool, passes: tuple[str, ...]) -> None:
    (shape, heads, d, dtype, make) = CASES[name]
    L = ha.Layout(shape, device="cuda")
    pat = make(L)
    n = L.numel
    q, k, v, g = (torch.randn(1, heads, n, d, device="cuda", dtype=dtype) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_()

    def fwd(f):
        return do_bench(lambda: f(q, k, v), warmup=25, rep=200)

    def fwdbwd(f):
        return do_bench(lambda: f(q, k, v).backward(g), warmup=25, rep=200,
                        grad_to_none=[q, k, v])

    row = dict(case=name, n=n, heads=heads, d=d, dtype=str(dtype))
    elem = q.element_size()
    row["floor_fwd_ms"] = 4 * q.numel() * elem / bandwidth * 1e3
    row["floor_fwdbwd_ms"] = 9 * q.numel() * elem / bandwidth * 1e3  # + do, dq, dk, dv, o read
    plan = ha.block_plan(pat, n, 128, 128)
    row["density"] = plan.density
    row["partial_share"] = plan.partial_share
    row["sdpa_fwd_ms"] = fwd(lambda a, b, c: F.scaled_dot_product_attention(a, b, c))
    row["sol_fwd_ms"] = row["sdpa_fwd_ms"] * plan.density
    if flex:
        row["flex_fwd_ms"] = fwd(lambda a, b, c: ha.attention(a, b, c, pat, backend="flex"))
        row["flex_fwdbwd_ms"] = fwdbwd(lambda a, b, c: ha.attention(a, b, c, pat,
                                                                    backend="flex"))
    default = tile_config(pat, d, dtype)
    row["default"] = repr(default)

    def tri(cfg, descriptors=None):
        def run(a, b, c):
            triton_backend.TENSOR_DESCRIPTORS = descriptors  # read again by the backward
            return triton_attention(a, b, c, pat, d ** -0.5, tiles=cfg)
        return run

    fwd_times = {}
    for mode in descriptor_modes:
        suffix = "" if mode is None else f"_descriptors_{'on' if mode else 'off'}"
        row["triton_fwd_ms" + suffix] = fwd(tri(default, mode))
        row["triton_fwdbwd_ms" + suffix] = fwdbwd(tri(default, mode))
        for c in FWD[d] if "fwd" in passes else ():
            cfg = TileConfig(PassConfig(*c), default.dkdv, default.dq)
            fwd_times[str(c) + suffix] = fwd(tri(cfg, mode))
    triton_backend.TENSOR_DESCRIPTORS = None
    row.setdefault("triton_fwd_ms", fwd(tri(default)))
    print(name, {k: v for k, v in row.items() if k.endswith("ms")}, flush=True)
    dkdv_times = {}
    for c in DKDV[d] if "dkdv" in passes else ():
        cfg = TileConfig(default.fwd, PassConfig(*c), default.dq)
        dkdv_times[c] = fwdbwd(tri(cfg)) - row["triton_fwd_ms"]
    best_dkdv = PassConfig(*min(dkdv_times, key=dkdv_times.get)) if dkdv_times else default.dkdv
    dq_times = {}
    for c in DQ[d] if "dq" in passes else ():
        cfg = TileConfig(default.fwd, best_dkdv, PassConfig(*c))
        dq_times[c] = fwdbwd(tri(cfg)) - row["triton_fwd_ms"]
    dkdv_times, dq_times = ({str(c): t for c, t in times.items()}
                            for times in (dkdv_times, dq_times))
    row.update(fwd_sweep=fwd_times, dkdv_sweep_bwd_ms=dkdv_times, dq_sweep_bwd_ms=dq_times)
    print(name, "fwd", fwd_times, "\n dkdv", dkdv_times, "\n dq", dq_times, flush=True)
    report["cases"].append(row)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--check", action="store_true")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--descriptors", choices=["auto", "both"], default="auto")
    p.add_argument("--no-flex", action="store_true")
    p.add_argument("--passes", default="fwd,dkdv,dq", help="passes to sweep")
    args = p.parse_args()
    passes = tuple(args.passes.split(","))
    modes = (None,) if args.descriptors == "auto" else (False, True)
    report = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                  triton=triton.__version__, cases=[])
    t0 = time.time()
    if args.check:
        check(report)
        print(f"check took {time.time() - t0:.0f} s", flush=True)
    bw = copy_bandwidth()
    report["copy_bandwidth_GBps"] = bw / 1e9
    for name in args.cases.split(","):
        try:
            bench_case(name, report, bw, modes, not args.no_flex, passes)
        except Exception as e:  # keep the other cases' numbers
            report["cases"].append(dict(case=name, error=repr(e)[:2000]))
            print(name, "ERROR", repr(e)[:2000], flush=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
