import cProfile, pstats, os, sys, time, types
os.environ["TRITON_INTERPRET"] = "1"
import torch, timm
import hilbertattn.models
from hilbertattn.backends import triton as tb
class Stub:
    def __getitem__(self, grid):
        return lambda *a, **k: None
tb._k = types.SimpleNamespace(_fwd_kernel=Stub(), _bwd_dq_kernel=Stub(), _bwd_dkdv_kernel=Stub())
name = sys.argv[1]; mode = sys.argv[2]
m = timm.create_model(name, img_size=224, backend="triton")
x = torch.randn(2, 3, 224, 224)
def step():
    if mode == "inf":
        with torch.no_grad():
            m(x)
    else:
        m(x).sum().backward()
step()
pr = cProfile.Profile()
t0 = time.perf_counter(); pr.enable(); step(); pr.disable(); print("step s", time.perf_counter() - t0)
st = pstats.Stats(pr); st.sort_stats("tottime").print_stats(18)
