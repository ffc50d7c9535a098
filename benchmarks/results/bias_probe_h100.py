# Ran on the H100 at commit f22c5d1 (before the expanded bias blocks; the triton backend's
# private API it patches has changed since): PYTHONPATH=src OUT=... python3 <this file>
"""Where the time goes: bias variants in the forward kernel, and the models' per-step times and
kernel profile. Writes $OUT/probe.json."""
import importlib.util, json, os, pathlib, re, statistics, sys, time, traceback
import torch, triton
import timm
import hilbertattn.models  # noqa
from hilbertattn.backends import triton as tb
from hilbertattn import bench

OUT = pathlib.Path(os.environ.get("OUT", "/tmp/out"))
OUT.mkdir(parents=True, exist_ok=True)
res = {"device": torch.cuda.get_device_name(), "bias_variants": [], "models": []}
dev = torch.device("cuda")

src = pathlib.Path(tb.__file__).with_name("triton_kernels.py").read_text()
start = src.index("@triton.jit\ndef _add_bias")
end = src.index("@triton.jit\ndef _bias_index")
BODIES = {
    "gather": None,
    "arith": '''@triton.jit
def _add_bias(s, BIAS, idx, ok, MASKED: tl.constexpr):
    return s + idx.to(tl.float32) * 0.001

''',
    "dense": '''@triton.jit
def _add_bias(s, BIAS, idx, ok, MASKED: tl.constexpr):
    offs = tl.arange(0, s.shape[0])[:, None] * s.shape[1] + tl.arange(0, s.shape[1])[None, :]
    b = tl.load(BIAS + offs)
    return s + b * LOG2E

''',
    "dense_bf16": '''@triton.jit
def _add_bias(s, BIAS, idx, ok, MASKED: tl.constexpr):
    offs = tl.arange(0, s.shape[0])[:, None] * s.shape[1] + tl.arange(0, s.shape[1])[None, :]
    b = tl.load(BIAS + offs).to(tl.float32)
    return s + b * LOG2E

''',
}
mods = {}
tmp = pathlib.Path("/tmp/variants"); tmp.mkdir(exist_ok=True)
for name, body in BODIES.items():
    text = src if body is None else src[:start] + body + src[end:]
    p = tmp / f"kv_{name}.py"
    p.write_text(text)
    spec = importlib.util.spec_from_file_location(f"kv_{name}", p)
    m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m
    spec.loader.exec_module(m)
    mods[name] = m

def attn_module(model_name, img, stage, block):
    m = timm.create_model(model_name, img_size=img)
    return m.stages[stage][block].attn

CASES = [("hwt_tiny", 224, 64), ("swin_tiny", 224, 64), ("nat_tiny", 224, 64),
         ("hnt_tiny", 224, 64), ("hwt_tiny", 1024, 3), ("swin_tiny", 1024, 3),
         ("nat_tiny", 1024, 3), ("hnt_tiny", 1024, 3)]
for model_name, img, batch in CASES:
    for stage in (0, 2):
        try:
            a = attn_module(model_name, img, stage, 1).to(dev)
            pattern, bias = a.pattern, a.bias
            H, D, N = a.num_heads, a.head_dim, bias.coords.shape[0]
            q, k, v = (torch.randn(batch, H, N, D, device=dev, dtype=torch.bfloat16)
                       for _ in range(3))
            cfg = tb.tile_config(pattern, D, q.dtype)
            real = tb._BiasArgs.of(bias, q, pattern)
            none = tb._BiasArgs.of(None, q, pattern)
            big = torch.randn(H, 128 * 128, device=dev)
            row = {"model": model_name, "img": img, "batch": batch, "stage": stage,
                   "pattern": str(pattern), "heads": H, "dim": D, "N": N,
                   "bias_axes": real.axes, "table": list(bias.table.shape), "fwd": str(cfg.fwd)}
            variants = {"none": ("gather", none), "gather": ("gather", real),
                        "arith": ("arith", real),
                        "dense": ("dense", real._replace(table=big)),
                        "dense_bf16": ("dense_bf16", real._replace(table=big.bfloat16()))}
            for vname, (mname, args) in variants.items():
                tb._k = mods[mname]
                fn = lambda: tb._forward(q, k, v, args, pattern, a.scale, cfg.fwd)
                fn(); torch.cuda.synchronize()
                row[vname] = triton.testing.do_bench(fn, warmup=25, rep=100)
            tb._k = mods["gather"]
            # fwd+bwd with and without the bias, through the public path
            for vname, bb in (("fwdbwd_none", None), ("fwdbwd_gather", bias)):
                qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
                go = torch.randn_like(q)
                def fb():
                    o = tb.triton_attention(qq, kk, vv, pattern, a.scale, bias=bb)
                    o.backward(go)
                fb(); torch.cuda.synchronize()
                row[vname] = triton.testing.do_bench(fb, warmup=10, rep=60)
            print(json.dumps(row), flush=True)
            res["bias_variants"].append(row)
        except Exception as e:
            traceback.print_exc()
            res["bias_variants"].append({"model": model_name, "img": img, "stage": stage,
                                         "error": repr(e)})
        torch.cuda.empty_cache()
tb._k = mods["gather"]
(OUT / "probe.json").write_text(json.dumps(res, indent=1))

# Models: per-step times (queued back to back), host time per call, profile.
from torch.profiler import profile, ProfilerActivity
for model_name in ("swin_tiny", "hwt_tiny", "nat_tiny", "hnt_tiny"):
    for img, batch in ((224, 64), (1024, 3)):
        for mode in ("inference", "training"):
            try:
                model = timm.create_model(model_name, img_size=img).to(dev)
                step = bench._model_step(model, mode, batch, img, dev, torch.bfloat16)
                for i in range(5):
                    step(i)
                torch.cuda.synchronize()
                ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(30)]
                host = []
                for i, (b, e) in enumerate(ev):
                    b.record(); t0 = time.perf_counter(); step(i); host.append((time.perf_counter() - t0) * 1e3); e.record()
                torch.cuda.synchronize()
                gpu = [b.elapsed_time(e) for b, e in ev]
                # synced steps: each alone
                alone = []
                for i in range(10):
                    torch.cuda.synchronize(); t0 = time.perf_counter(); step(i); torch.cuda.synchronize()
                    alone.append((time.perf_counter() - t0) * 1e3)
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for i in range(3):
                        step(i)
                    torch.cuda.synchronize()
                ka = prof.key_averages()
                kern = sorted(((e.key, e.device_time_total / 3e3, e.count // 3) for e in ka
                               if e.device_time_total > 0), key=lambda x: -x[1])
                total = sum(t for _, t, _ in kern)
                attn = sum(t for n, t, _ in kern if "_fwd_kernel" in n or "_bwd_" in n)
                row = {"model": model_name, "img": img, "batch": batch, "mode": mode,
                       "queued_ms": gpu, "host_ms": host, "alone_ms": alone,
                       "kernel_ms_total": total, "attention_kernels_ms": attn,
                       "top": kern[:25]}
                print(model_name, img, mode, "queued med", statistics.median(gpu), "min", min(gpu), "max", max(gpu),
                      "host med", statistics.median(host), "alone med", statistics.median(alone),
                      "kernels", total, "attn", attn, flush=True)
                res["models"].append(row)
            except Exception as e:
                traceback.print_exc()
                res["models"].append({"model": model_name, "img": img, "mode": mode, "error": repr(e)})
            model = step = None
            torch.cuda.empty_cache()
            (OUT / "probe.json").write_text(json.dumps(res, indent=1))
print("done")
