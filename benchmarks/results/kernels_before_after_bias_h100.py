"""Forward and forward+backward do_bench timings of the triton backend without a bias (see
kernels_before_after_bias_h100.txt for the command and the results)."""
import torch, sys
from triton.testing import do_bench
from hilbertattn.backends import triton as tb
from hilbertattn.layout import Layout
from hilbertattn.patterns import Window, Slide, Neighborhood
dev = "cuda"
g = Layout((256, 256), device=dev)
sets = [[torch.randn(1, 8, 65536, 64, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3)] for _ in range(4)]
dos = [torch.randn(1, 8, 65536, 64, device=dev, dtype=torch.bfloat16) for _ in range(4)]
for name, pat in [("hwa64", Window(64)), ("hsa169", Slide(169)), ("na13", Neighborhood(g, 13)), ("hsa121", Slide(121))]:
    st = {"i": 0}
    def f():
        st["i"] = (st["i"] + 1) % 4
        q, k, v = sets[st["i"]]
        tb.triton_attention(q, k, v, pat, 0.125)
    def fb():
        st["i"] = (st["i"] + 1) % 4
        q, k, v = sets[st["i"]]
        q.grad = k.grad = v.grad = None
        tb.triton_attention(q, k, v, pat, 0.125).backward(dos[st["i"]])
    print(sys.argv[1], name, "fwd", round(do_bench(f, rep=300, return_mode="median"), 4), "fwd+bwd", round(do_bench(fb, rep=300, return_mode="median"), 4), flush=True)
