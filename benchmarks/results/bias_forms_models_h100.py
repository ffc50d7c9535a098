# Ran on the H100 at commit 895b22c: PYTHONPATH=src OUT=... python3 <this file>
"""Attention kernels on the models' shapes: no bias, bias as expanded blocks, bias gathered."""
import json, os, torch, triton, timm
import hilbertattn.models  # noqa
from hilbertattn.backends import triton as tb
dev = torch.device("cuda")
default = tb.BIAS_TILE_BYTES
rows = []
for model_name, img, batch in [("swin_tiny", 224, 64), ("hwt_tiny", 224, 64), ("nat_tiny", 224, 64),
                               ("hnt_tiny", 224, 64), ("swin_tiny", 1024, 3), ("hwt_tiny", 1024, 3),
                               ("nat_tiny", 1024, 3), ("hnt_tiny", 1024, 3)]:
    m = timm.create_model(model_name, img_size=img)
    for stage in (0, 2):
        a = m.stages[stage][1].attn.to(dev)
        H, D, N = a.num_heads, a.head_dim, a.bias_coords.shape[0]
        q, k, v = (torch.randn(batch, H, N, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        go = torch.randn_like(q)
        row = {"model": model_name, "img": img, "batch": batch, "stage": stage, "pattern": str(a.pattern),
               "heads": H, "dim": D, "N": N, "table": list(a.relative_position_bias_table.shape)}
        for form, budget, bias in (("none", default, None), ("blocks", default, a.bias), ("gather", 0, a.bias)):
            tb.BIAS_TILE_BYTES = budget
            fwd = lambda: tb.triton_attention(q, k, v, a.pattern, a.scale, bias=bias)
            def fb():
                fwd().backward(go)
            with torch.no_grad():
                row[f"{form}_fwd_ms"] = triton.testing.do_bench(fwd, warmup=10, rep=80)
            row[f"{form}_fwd_bwd_ms"] = triton.testing.do_bench(fb, warmup=5, rep=80)
        tb.BIAS_TILE_BYTES = default
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        rows.append(row)
        torch.cuda.empty_cache()
json.dump({"device": torch.cuda.get_device_name(), "rows": rows},
          open(os.path.join(os.environ["OUT"], "bias_forms_models_h100.json"), "w"), indent=1)
