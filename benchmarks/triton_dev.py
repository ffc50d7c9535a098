"""GPU check and timing of the ``triton`` backend (development script for tuning its tile table).

    PYTHONPATH=src python3 benchmarks/triton_dev.py [--no-sweep] [--out DIR]

1. Correctness on the GPU: small grids, every pattern, bf16/fp16/fp32, forward and gradients
   against a float32 (float64 for fp32) dense masked softmax; and the 256x256 cases forward on
   sampled query rows.
2. Timings (``triton.testing.do_bench``, median, inputs rotated among sets larger than L2) of the
   256x256-grid cases of BENCHMARKS.md: HWA window 64, HSA window 169, exact 13x13 NA on the
   Hilbert layout (8 heads x 64, bf16, B=1), forward and forward+backward, against dense SDPA,
   the memory floor and the block-sparse speed of light; flux-4k (24 x 128, fp16, 80x80 NA)
   forward against dense SDPA.
3. With sweeping on, alternative tile configurations per case (forward and backward separately).

Writes ``triton_dev.json`` to ``--out`` (default ``$OUT`` or ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

SMOKE = "--smoke" in sys.argv  # CPU dry run of this script under the interpreter, tiny sizes
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from hilbertattn.backends import triton as tb  # noqa: E402
from hilbertattn.bias import RelativeBias, covering_radius  # noqa: E402
from hilbertattn.layout import Layout  # noqa: E402
from hilbertattn.patterns import Neighborhood, Slide, Window, Window2D  # noqa: E402
from hilbertattn.plan import block_plan  # noqa: E402

DEV = torch.device("cpu" if SMOKE else "cuda")
BIAS_TILE_BYTES = tb.BIAS_TILE_BYTES  # the default, restored after each case
GRID = 16 if SMOKE else 256  # side of the benchmark grid
SMALL = (10, 9) if SMOKE else (17, 23)  # odd grid of the correctness checks
SQUARE = 13 if SMOKE else 32  # NA 13 must fit
T0 = time.time()
RESULTS: dict = {}


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def save(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "triton_dev.json"), "w") as f:
        json.dump(RESULTS, f, indent=1)


def bench(fn, rep_ms=200):
    if SMOKE:
        t = time.time()
        fn()
        return (time.time() - t) * 1e3
    return do_bench(fn, warmup=25, rep=rep_ms, return_mode="median")


def reference(q, k, v, pattern, scale, rows=None, bias=None):
    """Dense masked softmax in fp32 (fp64 for fp32 inputs), optionally only for query ``rows``,
    plus a ``RelativeBias``."""
    n = q.shape[-2]
    j = torch.arange(n, device=q.device)
    i = j if rows is None else rows
    mask = pattern.mask(i[:, None], j[None, :], n)
    ct = torch.float64 if q.dtype == torch.float32 else torch.float32
    qq = q.to(ct) if rows is None else q.to(ct)[..., rows, :]
    s = (qq @ k.to(ct).transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias.values(i[:, None], j[None, :]).to(ct)
    s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1) @ v.to(ct)


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-6)).item()


# ----------------------------------------------------------------------------------------------
# 1. correctness
# ----------------------------------------------------------------------------------------------


def check_small(only: str | None = None):
    """Correctness on small shapes (every case, or those whose name matches ``only``)."""
    cases = []
    g17 = Layout(SMALL, device=DEV)
    g32 = Layout((SQUARE, SQUARE), device=DEV)
    cases += [
        ("hwa64", Window(64), g32.numel, torch.bfloat16, 64),
        ("hwa49-shift24", Window(49, 24), g17.numel, torch.bfloat16, 32),
        ("hsa169", Slide(169), g32.numel, torch.bfloat16, 64),
        ("hsa-clamped", Slide(25, clamped=True), g17.numel, torch.float16, 64),
        ("na13", Neighborhood(g32, 13), g32.numel, torch.bfloat16, 64),
        ("na-dil", Neighborhood(g17, (5, 3), dilation=(2, 3)), g17.numel, torch.bfloat16, 64),
        ("na-fp16-d128", Neighborhood(g32, 7), g32.numel, torch.float16, 128),
        ("hsa-d96", Slide(49), g17.numel, torch.bfloat16, 96),
        ("na-d256", Neighborhood(g17, 5), g17.numel, torch.bfloat16, 256),
        ("swin-shift", Window2D(g17, 7, shift=3), g17.numel, torch.bfloat16, 48),
        ("na-fp32", Neighborhood(g17, 7), g17.numel, torch.float32, 64),
        ("na3d", Neighborhood(Layout((3, 4, 5) if SMOKE else (4, 9, 10), device=DEV), 3),
         60 if SMOKE else 360, torch.bfloat16, 64),
    ]
    # Every case once more with a random relative position bias on its grid (fixed radius 4:
    # clamps the far pairs of the long sequence patterns), as expanded blocks and gathered.
    layouts = {g17.numel: g17, g32.numel: g32}
    cases += [(f"{name}+bias{form}", pat, n, dtype, d) for name, pat, n, dtype, d in cases
              if n in layouts for form in ("", "+gather")]
    # Inputs whose every score is near -150 (a padded key must still get probability 0; the
    # one-to-one HWA 64 on the short last tile runs the fused one-pass backward).
    cases.append(("hwa64-short-tile", Window(64), g17.numel, torch.bfloat16, 64))
    far = {"hwa64-short-tile", "hwa49-shift24", "swin-shift", "na-fp32"}
    cases += [(f"{name}+far", pat, n, dtype, d) for name, pat, n, dtype, d in cases
              if name in far]
    if only:
        cases = [c for c in cases if re.search(only, c[0])]
    out = {}
    for name, pat, n, dtype, d in cases:
        if SMOKE:
            if dtype == torch.bfloat16:  # bf16 tl.dot is wrong under the interpreter
                dtype = torch.float16
            pat = {"hwa64": Window(8), "hsa169": Slide(9), "na13": Neighborhood(g32, 5),
                   "na-dil": Neighborhood(g17, 3, dilation=(1, 2)), "swin-shift": Window2D(g17, 3, 1),
                   "hwa49-shift24": Window(5, 2), "hsa-clamped": Slide(5, clamped=True),
                   "na-fp16-d128": Neighborhood(g32, 3), "na-d256": Neighborhood(g17, 3),
                   "na-fp32": Neighborhood(g17, 3)}.get(name, pat)
        torch.manual_seed(0)
        b, h = 2, 3
        q, k, v = (torch.randn(b, h, n, d, device=DEV, dtype=dtype) for _ in range(3))
        if name.endswith("+far"):
            shift = (150 / d**0.5) ** 0.5  # scores q.k / sqrt(d) near -150
            q, k = q - shift, k + shift
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        scale = d**-0.5
        bias = bias_r = None
        tb.BIAS_TILE_BYTES = 0 if name.endswith("+gather") else BIAS_TILE_BYTES
        if "+bias" in name:
            table = torch.randn(h, 9, 9, device=DEV, requires_grad=True)
            bias = RelativeBias(table, layouts[n].coords)
            table_r = table.detach().clone().requires_grad_()
            bias_r = RelativeBias(table_r, bias.coords)
        # A first call launches each kernel through Triton; the checked one, with the same
        # launch keys, straight through the launcher's compiled kernels.
        tb.triton_attention(q, k, v, pat, scale, bias=bias).sum().backward()
        for x in (q, k, v) if bias is None else (q, k, v, table):
            x.grad = None
        o = tb.triton_attention(q, k, v, pat, scale, bias=bias)
        do = torch.randn_like(o)
        o.backward(do)
        qr, kr, vr = (x.detach().clone().requires_grad_() for x in (q, k, v))
        ref = reference(qr, kr, vr, pat, scale, bias=bias_r)
        ref.backward(do.to(ref.dtype))
        errs = {"o": rel_err(o, ref), "dq": rel_err(q.grad, qr.grad),
                "dk": rel_err(k.grad, kr.grad), "dv": rel_err(v.grad, vr.grad)}
        if bias is not None:
            errs["dtable"] = rel_err(table.grad, table_r.grad)
        tol = 1e-4 if dtype == torch.float32 else (3e-2 if dtype == torch.bfloat16 else 6e-3)
        ok = all(e < tol for e in errs.values()) and all(
            torch.isfinite(x.grad).all().item() for x in (q, k, v))
        out[name] = {"ok": ok, "tol": tol, **errs}
        log(f"check {name:14s} {str(dtype):15s} d={d:3d} n={n:4d} ok={ok} "
            + " ".join(f"{kk}={vv:.1e}" for kk, vv in errs.items()))
    return out


def check_rows(name, pat, q, k, v, scale, o):
    """The big case's forward on 256 sampled rows against the dense reference."""
    n = q.shape[-2]
    rows = torch.randperm(n, device=DEV)[:256]
    ref = reference(q[:, :1], k[:, :1], v[:, :1], pat, scale, rows=rows)
    e = rel_err(o[:, :1, rows], ref)
    log(f"check-rows {name}: rel err {e:.2e}")
    return e


# ----------------------------------------------------------------------------------------------
# 2./3. timings
# ----------------------------------------------------------------------------------------------


def copy_bandwidth():
    x = torch.empty(2**16 if SMOKE else 2**28, dtype=torch.float32, device=DEV)  # 1 GiB
    y = torch.empty_like(x)
    t = bench(lambda: y.copy_(x))
    return 2 * x.numel() * 4 / (t * 1e-3)  # bytes read + written per second


def make_sets(b, h, n, d, dtype, n_sets):
    return [tuple(torch.randn(b, h, n, d, device=DEV, dtype=dtype) for _ in range(3))
            for _ in range(n_sets)]


def rotating(sets):
    state = {"i": 0}

    def nxt():
        state["i"] = (state["i"] + 1) % len(sets)
        return sets[state["i"]]

    return nxt


def time_fwd(pat, sets, scale, tiles=None, rep_ms=200, bias=None):
    nxt = rotating(sets)

    def fn():
        q, k, v = nxt()
        tb.triton_attention(q, k, v, pat, scale, tiles=tiles, bias=bias)

    return bench(fn, rep_ms)


def time_fwd_bwd(pat, sets, scale, tiles=None, rep_ms=300, bias=None):
    sets = [tuple(x.detach().requires_grad_() for x in s) for s in sets]
    dos = [torch.randn_like(s[0]) for s in sets]
    nxt = rotating(list(zip(sets, dos)))

    def fn():
        (q, k, v), do = nxt()
        q.grad = k.grad = v.grad = None
        tb.triton_attention(q, k, v, pat, scale, tiles=tiles, bias=bias).backward(do)

    return bench(fn, rep_ms)


def time_bwd_only(pat, sets, scale, cfg, rep_ms=200):
    """Backward passes alone (delta + dK/dV + dQ) for a TileConfig, forward done beforehand."""
    prepared = []
    for q, k, v in sets[:2]:
        tiles = tb._tiles_handle(cfg, pat.key, q.shape[-1], q.dtype)
        o, lse = tb._forward(q, k, v, tb._NO_BIAS, pat.key, scale, tiles, False)
        prepared.append((torch.randn_like(o), q, k, v, o, lse, tb._NO_BIAS, tiles))
    nxt = rotating(prepared)

    def fn():
        *args, tiles = nxt()
        tb._backward(*args, pat.key, scale, tiles)

    return bench(fn, rep_ms)


def time_sdpa(sets, fwd_bwd=False, rep_ms=400):
    nxt = rotating(sets)
    if not fwd_bwd:
        return bench(lambda: F.scaled_dot_product_attention(*nxt()), rep_ms)
    sets = [tuple(x.detach().requires_grad_() for x in s) for s in sets]
    nxt = rotating(sets)
    do = torch.randn_like(sets[0][0])

    def fn():
        q, k, v = nxt()
        q.grad = k.grad = v.grad = None
        F.scaled_dot_product_attention(q, k, v).backward(do)

    return bench(fn, rep_ms)


def plan_stats(pat, n, bm, bn):
    p = block_plan(pat, n, bm, bn, device=DEV)
    return {"tiles": [bm, bn], "density": float(p.density), "partial_share": float(p.partial_share)}


def pc(t):
    return tb.PassConfig(*t)


# (block_m, block_n, num_warps, num_stages); all free of register spills at head dim 64
FWD_SWEEP = [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3), (64, 32, 4, 3),
             (128, 128, 8, 3)]
BWD_SWEEP = [((64, 64, 4, 2), (64, 64, 4, 2)), ((64, 64, 4, 3), (64, 64, 4, 3)),
             ((32, 64, 4, 3), (64, 32, 4, 3)), ((64, 128, 8, 2), (128, 64, 8, 2))]


def grid_cases(sweep, budget_s):
    g = Layout((GRID, GRID), device=DEV)
    n, h, d, dtype = g.numel, 8, 64, torch.float16 if SMOKE else torch.bfloat16
    scale = d**-0.5
    sets = make_sets(1, h, n, d, dtype, 4)  # 4 x 32 MB of q, k, v: above the 50 MB L2
    bw = copy_bandwidth()
    tensor_bytes = n * h * d * 2
    res = {"copy_bandwidth_GBps": bw / 1e9,
           "floor_fwd_ms": 4 * tensor_bytes / bw * 1e3,
           "floor_fwd_bwd_ms": 8 * tensor_bytes / bw * 1e3}
    # BENCHMARKS.md floors: q, k, v read + o written; fwd+bwd adds do read, dq, dk, dv written
    res["sdpa_fwd_ms"] = time_sdpa(sets)
    res["sdpa_fwd_bwd_ms"] = time_sdpa(sets, fwd_bwd=True)
    log(f"bw {bw / 1e9:.0f} GB/s floor fwd {res['floor_fwd_ms']:.3f} ms, sdpa fwd "
        f"{res['sdpa_fwd_ms']:.2f} fwd+bwd {res['sdpa_fwd_bwd_ms']:.2f}")
    pats = {"hwa64": Window(64), "hsa169": Slide(169), "na13": Neighborhood(g, 13)}
    if SMOKE:
        pats = {"hwa64": Window(16), "hsa169": Slide(9), "na13": Neighborhood(g, 5)}
    for name, pat in pats.items():
        t0 = time.time()
        cfg = tb.tile_config(pat, d, dtype)
        block_plan(pat, n, cfg.fwd.block_m, cfg.fwd.block_n, device=DEV)
        plan_s = time.time() - t0
        q, k, v = sets[0]
        o = tb.triton_attention(q, k, v, pat, scale)
        r = {"plan_build_s": plan_s, "check_rows_rel_err": check_rows(name, pat, q, k, v, scale, o),
             "plan128": plan_stats(pat, n, 128, 128),
             "plan_used": plan_stats(pat, n, cfg.fwd.block_m, cfg.fwd.block_n),
             "table": {"fwd": list(cfg.fwd.__dict__.values()),
                       "dkdv": list(cfg.dkdv.__dict__.values()),
                       "dq": list(cfg.dq.__dict__.values())}}
        r["fwd_ms"] = time_fwd(pat, sets, scale)
        r["fwd_bwd_ms"] = time_fwd_bwd(pat, sets, scale)
        r["bwd_over_fwd"] = (r["fwd_bwd_ms"] - r["fwd_ms"]) / r["fwd_ms"]
        r["fwd_over_floor"] = r["fwd_ms"] / res["floor_fwd_ms"]
        r["fwd_bwd_over_floor"] = r["fwd_bwd_ms"] / res["floor_fwd_bwd_ms"]
        sol = res["sdpa_fwd_ms"] * r["plan128"]["density"]
        r["sol_fwd_ms"] = sol
        r["fwd_share_of_sol"] = sol / r["fwd_ms"]
        r["fwd_speedup_vs_sdpa"] = res["sdpa_fwd_ms"] / r["fwd_ms"]
        # Relative position bias with gradient: a table covering every offset (one packed code
        # per token) and a 7x7 one (per-axis clamping); as expanded blocks where they fit
        # BIAS_TILE_BYTES, and gathered from the table.
        cover = covering_radius(pat, g.coords)
        for form, budget in (("", BIAS_TILE_BYTES), ("gather_", 0)):
            tb.BIAS_TILE_BYTES = budget
            for label, radius in (("packed", cover), ("clamped", (3, 3))):
                table = torch.randn(h, *(2 * r + 1 for r in radius), device=DEV,
                                    requires_grad=True)
                bias = RelativeBias(table, g.coords)
                key = f"bias_{form}{label}"
                r[f"{key}_fwd_ms"] = time_fwd(pat, sets, scale, bias=bias)
                r[f"{key}_fwd_bwd_ms"] = time_fwd_bwd(pat, sets, scale, bias=bias)
                log(f"{name}: {key} {radius}: fwd {r[f'{key}_fwd_ms']:.3f} ms "
                    f"fwd+bwd {r[f'{key}_fwd_bwd_ms']:.3f}")
        tb.BIAS_TILE_BYTES = BIAS_TILE_BYTES
        log(f"{name}: plan {plan_s:.2f}s density128 {r['plan128']['density']:.4f} "
            f"used {r['plan_used']['density']:.4f} (partial {r['plan_used']['partial_share']:.2f}) "
            f"fwd {r['fwd_ms']:.3f} ms ({r['fwd_over_floor']:.2f}x floor, "
            f"{r['fwd_share_of_sol']:.2f} of SOL) fwd+bwd {r['fwd_bwd_ms']:.3f} ms "
            f"({r['fwd_bwd_over_floor']:.2f}x floor, bwd/fwd {r['bwd_over_fwd']:.2f})")
        if sweep:
            r["sweep_fwd"], r["sweep_bwd"] = {}, {}
            for t in FWD_SWEEP:
                if time.time() - T0 > budget_s:
                    break
                r["sweep_fwd"][str(t)] = time_fwd(pat, sets, scale, tiles=tb.TileConfig(
                    pc(t), cfg.dkdv, cfg.dq))
            for kv, qq in BWD_SWEEP:
                if time.time() - T0 > budget_s:
                    break
                r["sweep_bwd"][str((kv, qq))] = time_bwd_only(
                    pat, sets, scale, tb.TileConfig(cfg.fwd, pc(kv), pc(qq)))
            r["bwd_only_table_ms"] = time_bwd_only(pat, sets, scale, cfg)
            log(f"  sweep fwd {fmt(r['sweep_fwd'])}")
            log(f"  sweep bwd {fmt(r['sweep_bwd'])} (table {r['bwd_only_table_ms']:.3f})")
        res[name] = r
    return res


def fmt(d):
    return ", ".join(f"{k}: {v:.3f}" for k, v in d.items())


def flux(sweep, budget_s):
    g = Layout((GRID, GRID), device=DEV)
    n, h, d, dtype = g.numel, 2 if SMOKE else 24, 128, torch.float16
    scale = d**-0.5
    try:
        pat = Neighborhood(g, 7 if SMOKE else 80)
    except ValueError:  # odd kernel sizes only: the nearest odd size
        pat = Neighborhood(g, 79)
    RESULTS["flux_kernel"] = getattr(pat, "kernel_size", None)
    sets = make_sets(1, h, n, d, dtype, 2)
    cfg = tb.tile_config(pat, d, dtype)
    t0 = time.time()
    block_plan(pat, n, cfg.fwd.block_m, cfg.fwd.block_n, device=DEV)
    r = {"plan_build_s": time.time() - t0, "plan128": plan_stats(pat, n, 128, 128),
         "plan_used": plan_stats(pat, n, cfg.fwd.block_m, cfg.fwd.block_n)}
    q, k, v = sets[0]
    o = tb.triton_attention(q, k, v, pat, scale)
    r["check_rows_rel_err"] = check_rows("flux", pat, q, k, v, scale, o)
    r["sdpa_fwd_ms"] = time_sdpa(sets, rep_ms=1000)
    r["fwd_ms"] = time_fwd(pat, sets, scale, rep_ms=500)
    r["speedup_vs_sdpa"] = r["sdpa_fwd_ms"] / r["fwd_ms"]
    r["sol_fwd_ms"] = r["sdpa_fwd_ms"] * r["plan128"]["density"]
    log(f"flux: density128 {r['plan128']['density']:.4f} used {r['plan_used']['density']:.4f} "
        f"sdpa {r['sdpa_fwd_ms']:.2f} ms triton {r['fwd_ms']:.2f} ms "
        f"({r['speedup_vs_sdpa']:.2f}x, SOL {r['sol_fwd_ms']:.2f} ms)")
    if sweep:
        r["sweep_fwd"] = {}
        for t in [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3)]:
            if time.time() - T0 > budget_s:
                break
            r["sweep_fwd"][str(t)] = time_fwd(pat, sets, scale, rep_ms=300, tiles=tb.TileConfig(
                pc(t), cfg.dkdv, cfg.dq))
        log(f"  sweep fwd {fmt(r['sweep_fwd'])}")
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter dry run, tiny sizes")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--check-only", action="store_true", help="stop after the correctness checks")
    ap.add_argument("--checks", metavar="REGEX", help="only the checks whose name matches")
    ap.add_argument("--budget-s", type=float, default=330.0, help="stop sweeping after this")
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--descriptors", choices=["auto", "on", "off"], default="auto",
                    help="on / off: tensor descriptors wherever the strides allow / never "
                         "(auto: only for large passes)")
    args = ap.parse_args()
    tb.TENSOR_DESCRIPTORS = {"auto": None, "on": True, "off": False}[args.descriptors]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    RESULTS["env"] = {"device": "cpu" if SMOKE else torch.cuda.get_device_name(),
                      "torch": torch.__version__,
                      "triton": triton.__version__, "commit": commit,
                      "descriptors": args.descriptors,
                      "command": "PYTHONPATH=src python3 benchmarks/triton_dev.py " +
                                 " ".join(sys.argv[1:])}
    RESULTS["rules"] = [r.__dict__ for r in tb.TILE_RULES]
    if not args.skip_check:
        RESULTS["check"] = check_small(args.checks)
        save(args.out)
    if args.check_only:
        log("done")
        return
    RESULTS["grid256"] = grid_cases(not args.no_sweep, args.budget_s)
    save(args.out)
    RESULTS["flux4k"] = flux(not args.no_sweep, args.budget_s + 60)
    save(args.out)
    log("done")


if __name__ == "__main__":
    main()
