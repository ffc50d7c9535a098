"""Host time per triton call (no synchronisation), and any implicit synchronisation (sync debug
mode), for the 13x13 NA and HWA 64 forward+backward.

Ran on an H100 from the repository root, before and after the backward passes of the NA stopped
reading their five inputs through tensor descriptors (na_host_before_h100.json at commit
9152c4e, na_host_after_h100.json with the change):
    PYTHONPATH=src python3 benchmarks/results/na_host_h100.py
"""
import json, os, statistics, time, warnings
import torch
import hilbertattn as ha
from hilbertattn.backends.triton import triton_attention

out = {}
L = ha.Layout((256, 256), device="cuda")
H, D, N = 8, 64, L.numel
for name, pat in (("NA 13", ha.Neighborhood(L, 13)), ("HWA 64", ha.Window(64))):
    sets = []
    for _ in range(2):
        q, k, v, do = (torch.randn(1, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        sets.append((q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), do))
    def fwd(i):
        q, k, v, do = sets[i % 2]
        with torch.no_grad():
            return triton_attention(q, k, v, pat, D ** -0.5)
    def fb(i):
        q, k, v, do = sets[i % 2]
        return torch.autograd.grad(triton_attention(q, k, v, pat, D ** -0.5), (q, k, v), do)
    def bwd_only(i):
        q, k, v, do = sets[i % 2]
        o = triton_attention(q, k, v, pat, D ** -0.5)
        t = time.perf_counter()
        torch.autograd.grad(o, (q, k, v), do)
        return time.perf_counter() - t
    for label, fn in (("fwd", fwd), ("fwd+bwd", fb)):
        for i in range(10): fn(i)
        torch.cuda.synchronize()
        host = []
        for i in range(60):
            t = time.perf_counter(); fn(i); host.append((time.perf_counter() - t) * 1e3)
            if i % 6 == 5: torch.cuda.synchronize()   # keep the queue short
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            fn(0); fn(1)
        torch.cuda.set_sync_debug_mode(0)
        out[f"{name} {label}"] = {"host_ms_median": statistics.median(host), "host_ms_min": min(host),
                                  "host_ms_max": max(host), "syncs": [str(x.message)[:200] for x in w]}
        print(name, label, out[f"{name} {label}"], flush=True)
    bw = [bwd_only(i) * 1e3 for i in range(30)]
    out[f"{name} backward call host"] = statistics.median(bw)
    print(name, "backward host ms", statistics.median(bw), flush=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "na_host_h100.json"), "w"), indent=1)
