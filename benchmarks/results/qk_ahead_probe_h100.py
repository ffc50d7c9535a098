"""Forward time per tile config with the next key tile's scores issued before the softmax of
the current one (``HA_QK_AHEAD``: 0 off, 1 full tiles only, 2 every tile), so that the tensor
cores could work while the exponentials run.

Ran on an H100 at the commit that added it, whose forward kernel had the ``QK_AHEAD`` switch
(reverted in the next commit: no variant was faster; 1 failed to compile):
    PYTHONPATH=src python3 benchmarks/results/qk_ahead_probe_h100.py flux-4k,neighborhood,window,slide
"""
import json, os, sys, time
import torch
from triton.testing import do_bench
import hilbertattn as ha
from hilbertattn.backends.triton import PassConfig, TileConfig, tile_config, triton_attention
sys.path.insert(0, "benchmarks")
from tune_triton import CASES

out = {"cases": []}
TILES = {128: [(128, 64, 4, 2), (128, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 4, 2),
               (64, 64, 4, 3), (128, 128, 8, 2)],
         64: [None, (128, 64, 8, 2)]}
for name in sys.argv[1].split(","):
    shape, heads, d, dtype, make = CASES[name]
    L = ha.Layout(shape, device="cuda")
    pat = make(L)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, L.numel, d, device="cuda", dtype=dtype) for _ in range(3))
    default = tile_config(pat, d, dtype)
    row = dict(case=name, default=repr(default.fwd), times={}, maxdiff={})
    for c in TILES[d]:
        cfg = default if c is None else TileConfig(PassConfig(*c), default.dkdv, default.dq)
        ref = None
        for ahead in (0, 1, 2):
            os.environ["HA_QK_AHEAD"] = str(ahead)
            key = f"{c if c else 'default'} ahead={ahead}"
            try:
                o = triton_attention(q, k, v, pat, d ** -0.5, tiles=cfg)
                torch.cuda.synchronize()
                if ref is None:
                    ref = o
                row["maxdiff"][key] = (o.float() - ref.float()).abs().max().item()
                row["times"][key] = do_bench(lambda: triton_attention(q, k, v, pat, d ** -0.5, tiles=cfg),
                                             warmup=25, rep=200)
            except Exception as e:
                row["times"][key] = repr(e)[:200]
            print(name, key, row["times"][key], row["maxdiff"].get(key), flush=True)
    out["cases"].append(row)
os.makedirs(os.environ.get("OUT", "."), exist_ok=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "ahead_probe.json"), "w"), indent=1)
