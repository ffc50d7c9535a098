"""Forward time of 256-row query tiles (two or four warpgroups sharing each key/value tile)
against the table's tiles, flux-4k and the 13x13 NA. Checks each output against the default's.

Ran on an H100 (code of commit 0712936), from the repository root:
    PYTHONPATH=src python3 benchmarks/results/tiles256_probe_h100.py
"""
import json, os, sys
import torch
from triton.testing import do_bench
import hilbertattn as ha
from hilbertattn.backends.triton import PassConfig, TileConfig, tile_config, triton_attention
sys.path.insert(0, "benchmarks")
from tune_triton import CASES

TILES = {"flux-4k": [None, (256, 64, 8, 2), (256, 64, 8, 3), (256, 32, 8, 3), (256, 128, 8, 2),
                     (256, 64, 16, 2), (256, 64, 16, 3), (256, 128, 16, 2), (128, 128, 4, 2),
                     (128, 32, 4, 3)],
         "neighborhood": [None, (128, 64, 4, 2), (256, 64, 8, 2), (256, 64, 8, 3), (256, 128, 8, 2),
                          (256, 64, 16, 2), (128, 128, 8, 2)]}
out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": []}
for name, configs in TILES.items():
    shape, heads, d, dtype, make = CASES[name]
    L = ha.Layout(shape, device="cuda")
    pat = make(L)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, L.numel, d, device="cuda", dtype=dtype) for _ in range(3))
    default = tile_config(pat, d, dtype)
    row = dict(case=name, default=repr(default.fwd), times_ms={}, maxdiff={})
    ref = triton_attention(q, k, v, pat, d ** -0.5)
    for c in configs:
        cfg = default if c is None else TileConfig(PassConfig(*c), default.dkdv, default.dq)
        key = "default" if c is None else str(c)
        try:
            o = triton_attention(q, k, v, pat, d ** -0.5, tiles=cfg)
            row["maxdiff"][key] = (o.float() - ref.float()).abs().max().item()
            row["times_ms"][key] = do_bench(
                lambda: triton_attention(q, k, v, pat, d ** -0.5, tiles=cfg), warmup=25, rep=300)
        except Exception as e:
            row["times_ms"][key] = repr(e)[:300]
        print(name, key, row["times_ms"][key], row["maxdiff"].get(key), flush=True)
    out["cases"].append(row)
    json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "tiles256_probe.json"), "w"), indent=1)
