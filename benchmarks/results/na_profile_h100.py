"""13x13 NA forward+backward on the triton backend, timed as the bench does (events around
back-to-back calls, inputs rotated among sets) and profiled: kernel time per call vs call time.

Ran twice on one H100 machine at commit 9152c4e, from the repository root (na_profile_h100_a.json,
then na_profile_h100_b.json; the same kernels, the call times differ with the host):
    PYTHONPATH=src python3 benchmarks/results/na_profile_h100.py
"""
import json, os, statistics
import torch
from torch.profiler import profile, ProfilerActivity
import hilbertattn as ha
from hilbertattn.backends.triton import triton_attention

L = ha.Layout((256, 256), device="cuda")
pat = ha.Neighborhood(L, 13)
H, D, N = 8, 64, L.numel
def make():
    q, k, v, do = (torch.randn(1, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), do
out = {}
for label, nsets in (("rotated_2_sets", 2), ("one_set", 1)):
    sets = [make() for _ in range(nsets)]
    def call(i):
        q, k, v, do = sets[i % nsets]
        return torch.autograd.grad(triton_attention(q, k, v, pat, D ** -0.5), (q, k, v), do)
    def fwd(i):
        q, k, v, do = sets[i % nsets]
        with torch.no_grad():
            return triton_attention(q, k, v, pat, D ** -0.5)
    for name, fn in (("fwd", fwd), ("fwd+bwd", call)):
        for i in range(10): fn(i)
        torch.cuda.synchronize()
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(40)]
        for i, (a, b) in enumerate(ev):
            a.record(); fn(i); b.record()
        torch.cuda.synchronize()
        t = statistics.median(a.elapsed_time(b) for a, b in ev)
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for i in range(40): fn(i)
            torch.cuda.synchronize()
        kernels = {}
        for e in prof.key_averages():
            if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0:
                kernels[e.key[:60]] = e.self_device_time_total / 40 / 1e3
        out[f"{label} {name}"] = {"call_ms": t, "kernel_ms_per_call": kernels,
                                  "kernel_sum_ms": sum(kernels.values())}
        print(label, name, round(t, 4), {k: round(v, 4) for k, v in kernels.items()}, flush=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "na_profile_h100.json"), "w"), indent=1)
