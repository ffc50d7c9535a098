# Ran on the H100 at commit 93547a8: PYTHONPATH=src OUT=... python3 <this file>
"""Host (Python) cost per call on tiny inputs, where the GPU is never the bottleneck."""
import json, os, time, torch, torch.nn.functional as F
import timm, hilbertattn.models  # noqa
from hilbertattn.backends import triton as tb
from hilbertattn.layout import Layout
from hilbertattn.nn import HilbertSlideAttention
dev = torch.device("cuda")
out = {}
def per_call(fn, n=300):
    for _ in range(20): fn()
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(n): fn()
    host = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return host
layout = Layout((16, 16))
m = HilbertSlideAttention(64, 2, 49, clamped=True, layout=layout, rel_pos_bias=True).to(dev)
x = torch.randn(1, 256, 64, device=dev)
q = torch.randn(1, 2, 256, 32, device=dev, dtype=torch.bfloat16)
bias = m.bias
with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
    out["triton_attention_bias_us"] = per_call(lambda: tb.triton_attention(q, q, q, m.pattern, 0.1, bias=bias))
    out["triton_attention_nobias_us"] = per_call(lambda: tb.triton_attention(q, q, q, m.pattern, 0.1))
    out["sdpa_us"] = per_call(lambda: F.scaled_dot_product_attention(q, q, q))
    out["module_us"] = per_call(lambda: m(x))
    lin = torch.nn.Linear(64, 192).to(dev)
    out["linear_us"] = per_call(lambda: lin(x))
    blk = timm.create_model("hnt_tiny", img_size=224).to(dev).stages[0][0]
    xb = torch.randn(1, 56 * 56, 64, device=dev)
    out["hnt_block_us"] = per_call(lambda: blk(xb), 100)
qg = q.clone().requires_grad_()
tg = m.relative_position_bias_table
def fb():
    tb.triton_attention(qg, qg, qg, m.pattern, 0.1, bias=m.bias).sum().backward()
out["triton_fwd_bwd_bias_us"] = per_call(fb, 100)
def fb2():
    F.scaled_dot_product_attention(qg, qg, qg).sum().backward()
out["sdpa_fwd_bwd_us"] = per_call(fb2, 100)
print(json.dumps(out, indent=1))
os.makedirs(os.environ.get("OUT", "/tmp"), exist_ok=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "host_overhead.json"), "w"), indent=1)
