"""Probe: GPU time of each backward kernel per tile configuration (profiler, no host noise).

Ran as ``PYTHONPATH=src python3 bwd_tiles_kernel_h100.py`` from the repository root at commit
b192e2f (the tile table before the HWA-window change); wrote bwd_tiles_kernel_h100.json."""
import json, os, torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
import hilbertattn as ha
from hilbertattn.backends.triton import PassConfig, TileConfig, tile_config, triton_attention

OUT = os.environ.get("OUT", "/tmp")
cases = {
    "slide169": ((256, 256), 1, 8, 64, torch.bfloat16, lambda L: ha.Slide(169)),
    "swin224-hwa49": ((56, 56), 64, 3, 32, torch.bfloat16, lambda L: ha.Window(49)),
    "swin224-hwa49-shift": ((56, 56), 64, 3, 32, torch.bfloat16, lambda L: ha.Window(49, 24)),
    "paper-hsa121": ((96, 96), 16, 2, 64, torch.float16, lambda L: ha.Slide(121)),
    "paper-hwa256": ((96, 96), 16, 2, 64, torch.float16, lambda L: ha.Window(256)),
    "neighborhood": ((256, 256), 1, 8, 64, torch.bfloat16, lambda L: ha.Neighborhood(L, 13)),
}
DKDV = [(32, 64, 4, 2), (32, 64, 4, 3), (64, 64, 4, 2), (64, 64, 4, 3), (16, 64, 4, 2),
        (32, 32, 4, 2), (64, 32, 4, 2), (32, 128, 4, 2), (32, 128, 8, 2), (16, 128, 4, 2)]
DQ = [(64, 32, 4, 2), (64, 32, 4, 3), (64, 64, 4, 2), (32, 32, 4, 2), (32, 64, 4, 2),
      (64, 16, 4, 2), (128, 32, 4, 2), (128, 32, 8, 2), (128, 64, 8, 2)]

def kernel_ms(fn, calls=10):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return {e.key: e.device_time_total / calls / 1e3 for e in prof.key_averages()
            if e.device_type == DeviceType.CUDA and e.key.startswith("_")}

report = {"rows": []}
for name, (grid, B, H, d, dtype, make) in cases.items():
    L = ha.Layout(grid, device="cuda"); pat = make(L)
    q, k, v, g = (torch.randn(B, H, L.numel, d, device="cuda", dtype=dtype) for _ in range(4))
    x = [t.requires_grad_() for t in (q, k, v)]
    default = tile_config(pat, d, dtype)
    def run(cfg):
        o = triton_attention(*x, pat, d ** -0.5, tiles=cfg)
        torch.autograd.grad(o, x, g)
    row = dict(case=name, default=repr(default), default_ms=kernel_ms(lambda: run(default)))
    for c in DKDV:
        cfg = TileConfig(default.fwd, PassConfig(*c), default.dq)
        try:
            row[f"dkdv{c}"] = kernel_ms(lambda: run(cfg)).get("_bwd_dkdv_kernel")
        except Exception as e:
            row[f"dkdv{c}"] = repr(e)[:200]
    for c in DQ:
        cfg = TileConfig(default.fwd, default.dkdv, PassConfig(*c))
        try:
            row[f"dq{c}"] = kernel_ms(lambda: run(cfg)).get("_bwd_dq_kernel")
        except Exception as e:
            row[f"dq{c}"] = repr(e)[:200]
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    report["rows"].append(row)
    json.dump(report, open(f"{OUT}/bwd_tiles_kernel_h100.json", "w"), indent=1)
