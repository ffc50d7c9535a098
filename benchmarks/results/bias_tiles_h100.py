"""Forward do_bench timings (ms) with a covering relative position bias, per forward tile
configuration (block_m, block_n, num_warps, num_stages; the first is the table's), against no
bias. Results: bias_tiles_h100.txt."""
import torch
from triton.testing import do_bench
from hilbertattn.backends import triton as tb
from hilbertattn.bias import RelativeBias, covering_radius
from hilbertattn.layout import Layout
from hilbertattn.patterns import Window, Neighborhood, Window2D
dev = "cuda"
for grid, B, H, D, mk in [((256, 256), 1, 8, 64, lambda g: Neighborhood(g, 13)), ((256, 256), 1, 8, 64, lambda g: Window(64)),
                          ((56, 56), 64, 3, 32, lambda g: Window(49, 24)), ((56, 56), 64, 2, 32, lambda g: Neighborhood(g, 7)),
                          ((56, 56), 64, 3, 32, lambda g: Window2D(Layout((56, 56), "rowmajor", device=dev), 7, 3))]:
    g = Layout(grid, device=dev); pat = mk(g)
    coords = pat.layout.coords if hasattr(pat, "layout") else g.coords
    n = g.numel
    q, k, v = (torch.randn(B, H, n, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
    r = covering_radius(pat, coords)
    bias = RelativeBias(torch.randn(H, *(2 * x + 1 for x in r), device=dev), coords)
    base = tb.tile_config(pat, D, torch.bfloat16)
    res = {}
    for t in [(base.fwd.block_m, base.fwd.block_n, base.fwd.num_warps, base.fwd.num_stages), (64, 64, 4, 2), (64, 64, 8, 2), (64, 32, 4, 3), (64, 32, 8, 2), (128, 64, 8, 2), (32, 64, 4, 2), (128, 32, 8, 3)]:
        cfg = tb.TileConfig(tb.PassConfig(*t), base.dkdv, base.dq)
        res[str(t)] = round(do_bench(lambda: tb.triton_attention(q, k, v, pat, 0.125, bias=bias, tiles=cfg), rep=200, return_mode="median"), 4)
    nob = round(do_bench(lambda: tb.triton_attention(q, k, v, pat, 0.125), rep=200, return_mode="median"), 4)
    print(type(pat).__name__, grid, B, H, D, "no-bias", nob, "bias:", res, flush=True)
