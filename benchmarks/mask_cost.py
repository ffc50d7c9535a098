"""What the element mask of partial tiles costs the triton kernels, on the GPU.

    PYTHONPATH=src python3 benchmarks/mask_cost.py --out results/mask_cost.json

Times (``triton.testing.do_bench``, median) the 256x256-grid cases with three forms of the mask
test ``lo <= code <= hi``, each in a fresh process (kernels compile per form):

- ``unsigned``: the kernels' form, ``code - lo <= hi - lo`` as one unsigned comparison per axis;
- ``two-sided``: two signed comparisons per axis;
- ``none``: no element mask at all (wrong results; the bound that any cheaper mask approaches).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import triton
import triton.language as tl

FORMS = ("unsigned", "two-sided", "none")


@triton.jit
def _two_sided(lo, span, c, KEYS_ON_ROWS: tl.constexpr):
    hi = lo + span.to(tl.int32, bitcast=True)
    if KEYS_ON_ROWS:
        ok = (lo[None, :] <= c[:, None]) & (c[:, None] <= hi[None, :])
    else:
        ok = (lo[:, None] <= c[None, :]) & (c[None, :] <= hi[:, None])
    return ok


@triton.jit
def _pair_mask(lo0, span0, lo1, span1, lo2, span2, c0, c1, c2, key_ok, A: tl.constexpr,
               KEYS_ON_ROWS: tl.constexpr, EVEN_N: tl.constexpr):
    """The kernels' ``_pair_mask`` with two signed comparisons per axis, or none (``NO_MASK``)."""
    if KEYS_ON_ROWS:
        ok = key_ok[:, None] & (lo0 == lo0)[None, :]
    else:
        ok = (lo0 == lo0)[:, None] & key_ok[None, :]
    if not NO_MASK:
        ok = ok & _two_sided(lo0, span0, c0, KEYS_ON_ROWS)
        if A > 1:
            ok = ok & _two_sided(lo1, span1, c1, KEYS_ON_ROWS)
        if A > 2:
            ok = ok & _two_sided(lo2, span2, c2, KEYS_ON_ROWS)
    return ok


NO_MASK = tl.constexpr(False)


def _patch(form: str) -> None:
    """Swap the kernels' ``_pair_mask`` before anything compiles."""
    global NO_MASK
    from hilbertattn.backends import triton_kernels

    if form != "unsigned":
        NO_MASK = tl.constexpr(form == "none")
        triton_kernels._pair_mask = _pair_mask


def _measure(form: str) -> dict:
    _patch(form)
    import torch
    from triton.testing import do_bench

    import hilbertattn as ha
    from hilbertattn.backends.triton import triton_attention

    cases = {  # id: (heads, head dim, dtype, pattern builder)
        "neighborhood": (8, 64, torch.bfloat16, lambda L: ha.Neighborhood(L, 13)),
        "slide": (8, 64, torch.bfloat16, lambda L: ha.Slide(169)),
        "flux-4k": (24, 128, torch.float16, lambda L: ha.Neighborhood(L, 80, even_kernel=True)),
    }
    layout = ha.Layout((256, 256), "hilbert")
    out = {}
    for name, (heads, dim, dtype, build) in cases.items():
        pattern = build(layout)
        q, k, v = (torch.randn(1, heads, layout.numel, dim, device="cuda", dtype=dtype,
                               requires_grad=True) for _ in range(3))
        do = torch.randn_like(q)
        fwd = do_bench(lambda: triton_attention(q, k, v, pattern, dim ** -0.5), rep=300)
        both = do_bench(lambda: triton_attention(q, k, v, pattern, dim ** -0.5).backward(do), rep=300,
                        grad_to_none=[q, k, v])
        out[name] = dict(fwd_ms=fwd, fwd_bwd_ms=both)
        print(form, name, f"fwd {fwd:.4f} ms, fwd+bwd {both:.4f} ms", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--form", choices=FORMS, help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.form:
        print(json.dumps(_measure(args.form)))
        return
    import torch

    report = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                  triton=triton.__version__, forms={})
    for form in FORMS:
        run = subprocess.run([sys.executable, __file__, "--form", form], check=True,
                             stdout=subprocess.PIPE, text=True)
        report["forms"][form] = json.loads(run.stdout.strip().splitlines()[-1])
    base = report["forms"]["unsigned"]
    for form in FORMS[1:]:
        for case, t in report["forms"][form].items():
            for key in ("fwd_ms", "fwd_bwd_ms"):
                print(f"{case:13s} {key:10s} unsigned {base[case][key]:.4f}  {form} {t[key]:.4f}"
                      f"  ({t[key] / base[case][key]:.3f}x)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
