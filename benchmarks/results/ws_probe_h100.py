"""Probe: Triton's automatic warp specialization (tl.range(..., warp_specialize=True)) on the
forward kernel's two loops, on Hopper. Times default vs WS, checks outputs agree.

Ran as ``PYTHONPATH=src python3 ws_probe_h100.py`` from the repository root at commit 4276e99
(the line numbers of the two loops below are that commit's); wrote ws_probe_h100.json."""
import importlib.util, json, os, re, sys, traceback
import torch
import triton
from triton.testing import do_bench
import hilbertattn as ha
from hilbertattn.backends import triton as tb
from hilbertattn.backends.triton import PassConfig, TileConfig, tile_config, triton_attention

src = open("src/hilbertattn/backends/triton_kernels.py").read()
lines = src.split("\n")
# lines 350 and 361 (1-based) are the forward's loops
for i in (349, 360):
    assert "for t in range(0, n_" in lines[i], lines[i]
    lines[i] = re.sub(r"range\(0, (n_\w+)\)", r"tl.range(0, \1, warp_specialize=True)", lines[i])
path = "/tmp/kws.py"
open(path, "w").write("\n".join(lines))
spec = importlib.util.spec_from_file_location("kws", path)
kws = importlib.util.module_from_spec(spec); spec.loader.exec_module(kws)
orig = tb._k._fwd_kernel
out = dict(triton=triton.__version__, torch=torch.__version__, rows=[])
cases = {
    "flux-4k": ((256, 256), 24, 128, torch.float16, lambda L: ha.Neighborhood(L, 80, even_kernel=True)),
    "neighborhood": ((256, 256), 8, 64, torch.bfloat16, lambda L: ha.Neighborhood(L, 13)),
    "window4096": ((256, 256), 8, 128, torch.float16, lambda L: ha.Window(4096)),
}
tiles = {128: [(64, 64, 4, 3), (64, 64, 4, 2), (128, 64, 4, 2), (128, 64, 8, 2), (128, 128, 8, 2)],
         64: [(64, 64, 4, 2), (128, 64, 4, 2), (128, 64, 8, 2)]}
for name, (grid, heads, d, dtype, make) in cases.items():
    L = ha.Layout(grid, device="cuda"); pat = make(L)
    q, k, v = (torch.randn(1, heads, L.numel, d, device="cuda", dtype=dtype) for _ in range(3))
    default = tile_config(pat, d, dtype)
    for c in tiles[d]:
        cfg = TileConfig(PassConfig(*c), default.dkdv, default.dq)
        row = dict(case=name, tiles=c)
        try:
            tb._k._fwd_kernel = orig
            ref = triton_attention(q, k, v, pat, d ** -0.5, tiles=cfg)
            row["plain_ms"] = do_bench(lambda: triton_attention(q, k, v, pat, d ** -0.5, tiles=cfg), warmup=25, rep=200)
            tb._k._fwd_kernel = kws._fwd_kernel
            o = triton_attention(q, k, v, pat, d ** -0.5, tiles=cfg)
            row["ws_maxdiff"] = float((o.float() - ref.float()).abs().max())
            row["ws_ms"] = do_bench(lambda: triton_attention(q, k, v, pat, d ** -0.5, tiles=cfg), warmup=25, rep=200)
        except Exception as e:
            row["error"] = repr(e)[:600]
        finally:
            tb._k._fwd_kernel = orig
        print(row, flush=True)
        out["rows"].append(row)
        json.dump(out, open(os.environ.get("OUT", "/tmp") + "/ws_probe_h100.json", "w"), indent=1)
