"""The ``triton`` backend under the Triton CPU interpreter (``TRITON_INTERPRET=1``).

Forward and gradients of every pattern against a float64 dense masked softmax built from
``pattern.mask``. fp32 and fp16 only: bf16 ``tl.dot`` is wrong under the interpreter. Small
sequences and 16/32-token tiles keep the whole file fast.

``TRITON_INTERPRET`` is set only while triton is first imported and while these tests run, so
other test modules still see the CPU behaviour of the backend (``NotImplementedError``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

# Kernels (and triton's own @jit library) become interpreted functions only if TRITON_INTERPRET is
# set when they are decorated, i.e. when triton is first imported. Set it for the import, then put
# the variable back so that other test modules keep the CPU behaviour of the backend
# (NotImplementedError without a GPU); the `interpreter` fixture sets it again for these tests.
_OLD_INTERPRET = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    triton = pytest.importorskip("triton")
    import triton.language.standard as _tl_standard

    from hilbertattn.backends import triton_kernels as _kernels  # noqa: F401
finally:
    if _OLD_INTERPRET is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _OLD_INTERPRET

from hilbertattn.bias import RelativeBias  # noqa: E402
from hilbertattn.layout import Layout  # noqa: E402
from hilbertattn.nn import HilbertSlideAttention, NeighborhoodAttention, covering_radius  # noqa: E402
from hilbertattn.plan import block_plan  # noqa: E402
from hilbertattn.patterns import Neighborhood, Slide, Window, Window2D  # noqa: E402

# False when triton was imported (by another test module) before this file could switch the
# interpreter on: then these tests run once more in a fresh interpreter process instead.
INTERPRETED = not any(type(f).__name__ == "JITFunction" for f in vars(_tl_standard).values()) and \
    type(_kernels._fwd_kernel).__name__ == "InterpretedFunction"


@pytest.fixture(autouse=True)
def interpreter(request, monkeypatch):
    if request.node.name != "test_in_fresh_process" and not INTERPRETED:
        pytest.skip("triton was imported without TRITON_INTERPRET=1; see test_in_fresh_process")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def test_in_fresh_process():
    if INTERPRETED:
        pytest.skip("this process already runs the kernels under the interpreter")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def _backend():
    from hilbertattn.backends import triton as tb

    return tb


def reference(q, k, v, pattern, scale, bias=None):
    """float64 dense masked softmax attention from ``pattern.mask`` (plus ``bias.values``)."""
    n = q.shape[-2]
    i = torch.arange(n)
    mask = pattern.mask(i[:, None], i[None, :], n)
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias.values(i[:, None], i[None, :]).double()
    s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ v.double()


TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=1e-2, rtol=1e-2)}


def check(pattern, n, d, dtype, *, b=2, h=2, tiles=(16, 32), make=None, grad_out=None, seed=0,
          bias_layout=None, bias_radius=None):
    """Run forward and backward through the backend and compare to the float64 reference.

    With ``bias_layout``, a random relative position bias on its coords (radius ``bias_radius``,
    default the covering radius of the pattern) is added and its table's gradient checked too.
    """
    tb = _backend()
    g = torch.Generator().manual_seed(seed)
    if make is None:
        q, k, v = (torch.randn(b, h, n, d, generator=g).to(dtype) for _ in range(3))
    else:
        q, k, v = make(g)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    inputs = [q, k, v]
    bias = None
    if bias_layout is not None:
        radius = bias_radius or covering_radius(pattern, bias_layout)
        table = torch.randn(h, *(2 * r + 1 for r in radius), generator=g).requires_grad_()
        bias = RelativeBias(table, bias_layout.coords)
        inputs.append(table)
    scale = d**-0.5
    out = tb.triton_attention(q, k, v, pattern, scale, bias=bias, tiles=tiles)
    if bias is not None:  # a covering table takes the packed one-code path, a smaller one clamps
        rows = tb._coordinate_rows(pattern, tb._content(bias.coords), bias.radius, q.device)
        assert (rows[2] == 1) == (bias_radius is None)
    assert out.shape == q.shape and out.dtype == dtype
    do = torch.randn(out.shape, generator=g).to(dtype) if grad_out is None else grad_out(g)
    out.backward(do)

    inputs64 = [x.detach().double().requires_grad_() for x in inputs]
    bias64 = None if bias is None else RelativeBias(inputs64[3], bias.coords)
    ref = reference(*inputs64[:3], pattern, scale, bias64)
    ref.backward(do.double())
    tol = TOL[dtype]
    torch.testing.assert_close(out.double(), ref.detach(), **tol)
    for name, x, x64 in zip(("dq", "dk", "dv", "dtable"), inputs, inputs64):
        assert torch.isfinite(x.grad).all(), name
        torch.testing.assert_close(x.grad.double(), x64.grad, **tol, msg=lambda m: f"{name}: {m}")


PATTERNS = {
    # 1-D patterns, odd N so the last tile is short
    "window-shift": (lambda: Window(16, 5), 75),
    "slide": (lambda: Slide(9), 70),
    "slide-clamped": (lambda: Slide(13, clamped=True), 63),
    # 2-D patterns on odd Hilbert grids
    "na-dilated-7x9": (lambda: Neighborhood(Layout((7, 9)), 3, dilation=2), 63),
    "na-10x13": (lambda: Neighborhood(Layout((10, 13)), (5, 3)), 130),
    "swin-shift-10x13": (lambda: Window2D(Layout((10, 13)), 4, shift=2), 130),
    # 3-D (three code axes)
    "na-3d": (lambda: Neighborhood(Layout((3, 4, 5)), 3), 60),
}


BIAS_CASES = {
    # (pattern, N, layout of the bias coords, fixed radius or None for the covering radius)
    "window-shift": (lambda: Window(16, 5), 75, Layout((5, 15)), None),
    "slide-clamped-far-pairs": (lambda: Slide(13, clamped=True), 63, Layout((7, 9)), (1, 2)),
    "na-10x13": (lambda: Neighborhood(Layout((10, 13)), (5, 3)), 130, Layout((10, 13)), None),
    "swin-rowmajor": (lambda: Window2D(Layout((9, 10), "rowmajor"), 3, 1), 90,
                      Layout((9, 10), "rowmajor"), None),
    "na-3d": (lambda: Neighborhood(Layout((3, 4, 5)), 3), 60, Layout((3, 4, 5)), None),
}


@pytest.mark.parametrize("form", ["blocks", "gather"])
@pytest.mark.parametrize("name", list(BIAS_CASES))
@pytest.mark.parametrize("dtype, d", [(torch.float32, 24), (torch.float16, 32)])
def test_relative_position_bias(name, dtype, d, form, monkeypatch):
    # Expanded blocks are taken up to BIAS_TILE_BYTES; 0 forces the gather form in every pass.
    tb = _backend()
    if form == "gather":
        monkeypatch.setattr(tb, "BIAS_TILE_BYTES", 0)
    make, n, layout, radius = BIAS_CASES[name]
    pattern = make()
    bias = RelativeBias(torch.zeros(2, *(2 * r + 1 for r in radius or (0,) * layout.ndim)),
                        layout.coords)
    q = torch.zeros(2, 2, n, d)
    assert tb._BiasArgs.of(bias, pattern).for_pass(q, 16, 32).tiles == (form == "blocks")
    check(pattern, n, d, dtype, bias_layout=layout, bias_radius=radius)


def test_bias_blocks_follow_each_pass_plan():
    # Block r * slots + t of a pass holds the bias of the t-th tile that row tile r visits (full
    # tiles first), oriented as the pass holds its scores: [queries, keys], or [keys, queries]
    # for the transposed dK/dV plan.
    tb = _backend()
    layout = Layout((6, 7))
    pattern = Neighborhood(layout, 3)
    table = torch.randn(1, 5, 5)
    bias = RelativeBias(table, layout.coords)
    q = torch.zeros(1, 1, layout.numel, 16)
    n, i = layout.numel, torch.arange(layout.numel)
    dense = bias.values(i[:, None], i[None, :])[0]
    for transposed in (False, True):
        pb = tb._BiasArgs.of(bias, pattern).for_pass(q, 16, 32, transposed)
        plan = block_plan(pattern, n, 16, 32)
        plan = plan.transposed() if transposed else plan
        rows, cols = (32, 16) if transposed else (16, 32)
        for r in range(plan.n_q_tiles):
            visits = [*plan.full_indices[r, :plan.full_counts[r]].tolist(),
                      *plan.partial_indices[r, :plan.partial_counts[r]].tolist()]
            for t, c in enumerate(visits):
                a = torch.arange(r * rows, min(n, (r + 1) * rows))
                b = torch.arange(c * cols, min(n, (c + 1) * cols))
                want = dense[b][:, a].t() if transposed else dense[a][:, b]
                got = pb.values[0, r * pb.slots + t, :len(a), :len(b)]
                torch.testing.assert_close(got, want)


@pytest.mark.parametrize("form", ["blocks", "gather"])
def test_bias_with_the_fused_one_pass_backward(form, monkeypatch):
    tb = _backend()
    if form == "gather":
        monkeypatch.setattr(tb, "BIAS_TILE_BYTES", 0)
    cfg = tb.TileConfig(fwd=tb.PassConfig(32, 32), dkdv=tb.PassConfig(32, 32),
                        dq=tb.PassConfig(16, 16))
    check(Window(32), 90, 16, torch.float32, tiles=cfg, bias_layout=Layout((9, 10)))


def test_bias_module_matches_the_reference_module():
    # The nn module picks the backend; both backends hold the same parameters.
    torch.manual_seed(0)
    layout = Layout((7, 9))
    module = NeighborhoodAttention(32, 2, layout, 5, rel_pos_bias=True, backend="triton")
    torch.nn.init.normal_(module.relative_position_bias_table)
    x = torch.randn(2, layout.numel, 32, requires_grad=True)
    out = module(x)
    got = torch.autograd.grad(out.square().sum(), [x, *module.parameters()])
    module.backend = "reference"
    ref = module(x)
    want = torch.autograd.grad(ref.square().sum(), [x, *module.parameters()])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("with_bias, packed", [(True, False), (False, False), (True, True)])
def test_operators_pass_the_torch_library_checks(with_bias, packed):
    # Schema, fake-tensor shapes and strides, autograd registration and tracing of the two
    # operators that torch.compile sees; ``packed``: q, k, v are views of one [B, N, 3, H, D]
    # projection, so the output is token-major.
    tb = _backend()
    layout, pattern = Layout((8, 8)), Slide(9, clamped=True)
    if packed:
        qkv = torch.randn(1, 64, 3, 2, 16).permute(2, 0, 3, 1, 4)
        q, k, v = (x.requires_grad_() for x in qkv.clone(memory_format=torch.preserve_format))
    else:
        q, k, v = (torch.randn(1, 2, 64, 16, requires_grad=True) for _ in range(3))
    table = torch.randn(2, 7, 7, requires_grad=True) if with_bias else None
    coords = layout.coords if with_bias else None
    handles = (pattern.key, 0.25, tb._tiles_handle(None, pattern.key, 16, q.dtype))
    torch.library.opcheck(tb._forward_op, (q, k, v, table, coords, *handles, packed))
    detached = [None if x is None else x.detach() for x in (q, k, v, table)]
    o, lse = tb._forward_op(*detached[:3], detached[3], coords, *handles, packed)
    assert o.transpose(1, 2).is_contiguous() == packed
    torch.library.opcheck(tb._backward_op, (torch.randn_like(o), *detached[:3], o, lse,
                                            detached[3], coords, *handles))


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_traces_the_attention_whole(compiler):
    # fullgraph=True: no graph break anywhere in the module, bias included; the compiled module
    # computes what the eager one computes, gradients of the input and the table too.
    torch.manual_seed(0)
    module = HilbertSlideAttention(32, 2, 9, clamped=True, layout=Layout((8, 8)),
                                   rel_pos_bias=True, backend="triton")
    torch.nn.init.normal_(module.relative_position_bias_table)
    x = torch.randn(2, 64, 32, requires_grad=True)
    compiled = torch.compile(module, backend=compiler, fullgraph=True)
    results = []
    for run in (compiled, module):
        out = run(x)
        results.append((out, *torch.autograd.grad(out.square().sum(), [x, *module.parameters()])))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("dtype, d", [(torch.float32, 24), (torch.float16, 32)])
def test_patterns(name, dtype, d):
    make, n = PATTERNS[name]
    check(make(), n, d, dtype)


def _count_descriptor_launches(monkeypatch) -> list:
    """Force the tensor-descriptor path; the returned list grows by one per launch through it."""
    tb = _backend()
    launches = []
    sources = tb._sources

    def spy(xs, rows, block_d, products):
        out, descriptors = sources(xs, rows, block_d, products)
        launches.append(descriptors)
        return out, descriptors

    monkeypatch.setattr(tb, "TENSOR_DESCRIPTORS", True)
    monkeypatch.setattr(tb, "_sources", spy)
    return launches


@pytest.mark.parametrize("name", list(PATTERNS))
def test_inputs_read_through_tensor_descriptors(name, monkeypatch):
    launches = _count_descriptor_launches(monkeypatch)
    make, n = PATTERNS[name]
    check(make(), n, 24, torch.float16)  # D = 24 pads to 32: the copy engine fills the columns
    assert launches and all(launches)


def test_tensor_descriptors_with_bias_and_strided_views(monkeypatch):
    launches = _count_descriptor_launches(monkeypatch)
    layout = Layout((10, 13))
    b, h, n, d = 2, 3, 130, 32

    def make(g):  # [B, N, H, D] storage: 16-byte aligned strides, so descriptors still apply
        return tuple(torch.randn(b, n, h, d, generator=g).to(torch.float16).transpose(1, 2)
                     for _ in range(3))

    check(Neighborhood(layout, 5), n, d, torch.float16, b=b, h=h, make=make,
          bias_layout=layout)
    assert launches and all(launches)


def test_unaligned_inputs_fall_back_to_pointer_loads(monkeypatch):
    tb = _backend()
    monkeypatch.setattr(tb, "TENSOR_DESCRIPTORS", True)
    x = torch.randn(1, 2, 40, 24)
    big = 2 * tb.DESCRIPTOR_MIN_PRODUCTS_PER_INPUT  # enough for two inputs
    assert tb._use_descriptors((x, x), 1)
    assert not tb._use_descriptors((x, x[..., ::2]), big)  # stride 2 along D
    assert not tb._use_descriptors((x, torch.randn(1, 2, 40, 27)[..., :24]), big)  # 108-byte rows
    assert not tb._use_descriptors((x, torch.randn(1, 2, 1, 24).expand(1, 2, 40, 24)), big)
    monkeypatch.setattr(tb, "TENSOR_DESCRIPTORS", None)
    assert not tb._use_descriptors((x, x), big)  # auto: only on GPUs with the copy engine
    monkeypatch.setattr(tb, "_has_copy_engine", lambda device: True)
    assert tb._use_descriptors((x, x), big)
    assert not tb._use_descriptors((x, x), big - 1)  # small passes: the host cost dominates
    assert not tb._use_descriptors((x,) * 5, big)  # each input's descriptor costs host time


def test_head_dim_16_and_rowmajor_layout():
    check(Neighborhood(Layout((8, 8), order="rowmajor"), 3), 64, 16, torch.float16, b=1, h=3)


def test_large_padded_head_dim():
    # D = 72 pads to BLOCK_D = 128 inside the kernel
    check(Slide(7), 40, 72, torch.float32, b=1, h=1, tiles=(16, 16))


def test_asymmetric_tiles_per_pass():
    tb = _backend()
    cfg = tb.TileConfig(fwd=tb.PassConfig(32, 16), dkdv=tb.PassConfig(16, 32),
                        dq=tb.PassConfig(32, 16))
    check(Window2D(Layout((9, 11)), 3), 99, 32, torch.float32, b=1, h=2, tiles=cfg)


@pytest.mark.parametrize("pattern, n, d", [
    (Window(8), 70, 16),
    # a shifted window straddling 64-token tiles: two-pass backward on the table's short tiles
    (Window(49, 24), 150, 32),
    # head dim 96 takes the head-dim-128 row: 128-token query tiles forward, partial last tile
    (Neighborhood(Layout((13, 11)), 5), 143, 96),
])
def test_default_tile_table(pattern, n, d):
    check(pattern, n, d, torch.float16, b=1, h=1, tiles=None)


def test_strided_inputs_and_grad():
    b, h, n, d = 2, 3, 63, 24

    def make(g):
        # [B, N, H, D] storage viewed as [B, H, N, D]; v is a slice of a wider head dim
        q = torch.randn(b, n, h, d, generator=g).transpose(1, 2)
        k = torch.randn(b, n, h, d, generator=g).transpose(1, 2)
        v = torch.randn(b, h, n, 2 * d, generator=g)[..., ::2]
        return q, k, v

    def grad_out(g):
        return torch.randn(b, n, h, d, generator=g).transpose(1, 2)

    check(Neighborhood(Layout((7, 9)), 5), n, d, torch.float32, b=b, h=h, make=make,
          grad_out=grad_out)


def test_output_takes_the_token_major_layout_of_packed_projections():
    # q, k, v as a module makes them (views of one [B, N, 3, H, D] projection): the output is
    # [B, N, H, D] in memory, so merging the heads back into the tokens is a view.
    tb = _backend()
    b, h, n, d = 2, 3, 40, 16
    q, k, v = torch.randn(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
    out = tb.triton_attention(q, k, v, Window(8, 3), 0.25, tiles=(16, 16))
    assert out.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(out.double(), reference(q, k, v, Window(8, 3), 0.25),
                               atol=1e-5, rtol=1e-5)
    out = tb.triton_attention(q.contiguous(), k, v, Window(8, 3), 0.25, tiles=(16, 16))
    assert out.is_contiguous()


def test_expanded_grad():
    tb = _backend()
    pattern = Slide(5)
    q, k, v = (torch.randn(1, 2, 40, 16).requires_grad_() for _ in range(3))
    tb.triton_attention(q, k, v, pattern, 0.25, tiles=(16, 16)).sum().backward()
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    reference(q64, k64, v64, pattern, 0.25).sum().backward()
    for x, x64 in ((q, q64), (k, k64), (v, v64)):
        torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-5, rtol=1e-5)


def test_no_grad_forward():
    tb = _backend()
    q, k, v = (torch.randn(1, 1, 33, 16) for _ in range(3))
    with torch.no_grad():
        out = tb.triton_attention(q, k, v, Window(4), 0.3, tiles=(16, 16))
    torch.testing.assert_close(out.double(), reference(q, k, v, Window(4), 0.3),
                               atol=1e-5, rtol=1e-5)


def test_bad_input():
    tb = _backend()
    pattern = Window(8)
    q = torch.randn(1, 2, 32, 16)
    with pytest.raises(ValueError, match="q.shape"):
        tb.triton_attention(q, torch.randn(1, 2, 31, 16), torch.randn(1, 2, 31, 16), pattern, 1.0)
    with pytest.raises(ValueError, match="dtype"):
        tb.triton_attention(q, q.half(), q, pattern, 1.0)
    with pytest.raises(ValueError, match="dtype"):
        tb.triton_attention(q.double(), q.double(), q.double(), pattern, 1.0)
    with pytest.raises(ValueError, match="shape"):
        tb.triton_attention(q[0], q[0], q[0], pattern, 1.0)
    with pytest.raises(ValueError, match="shape"):
        tb.triton_attention(q, q, torch.randn(1, 2, 32, 24), pattern, 1.0)
    with pytest.raises(ValueError, match="head dim"):
        x = torch.randn(1, 1, 32, 8)
        tb.triton_attention(x, x, x, pattern, 1.0)
    with pytest.raises(ValueError, match="tiles"):
        tb.triton_attention(q, q, q, pattern, 1.0, tiles=(24, 32))


def test_tile_table():
    tb = _backend()
    layout = Layout((16, 16))
    cases = [Window(64), Window(256), Slide(169), Neighborhood(layout, 13), Window2D(layout, 8)]
    for pattern in cases:
        for d in (16, 24, 64, 100, 128, 256):
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                cfg = tb.tile_config(pattern, d, dtype)
                for p in (cfg.fwd, cfg.dkdv, cfg.dq):
                    for t in (p.block_m, p.block_n):
                        assert t >= 16 and t & (t - 1) == 0
    # HWA 64 on its table's tiles: every visited tile is full. Every window that fits 64-token
    # tiles gets a one-pass backward.
    hwa = tb.tile_config(Window(64), 64, torch.bfloat16)
    for p in (hwa.fwd, hwa.dkdv):
        assert block_plan(Window(64), 4096, p.block_m, p.block_n).partial_share == 0
    for window in (Window(64), Window(16), Window(32)):
        dkdv = tb.tile_config(window, 64, torch.bfloat16).dkdv
        assert tb._tables(window, 4096, dkdv.block_m, dkdv.block_n, torch.device("cpu"),
                          True).one_to_one
    for rule in tb.TILE_RULES:
        assert rule.why


def test_packed_codes_test_both_intervals_as_the_unpacked_ones():
    # The two-axis codes packed into one int32 per token, with the kernels' test written out
    # in torch: guard bits of (k | G) - lo and (hi | G) - k, against lo <= k <= hi per axis.
    tb = _backend()
    g = torch.Generator().manual_seed(0)
    qlo = torch.randint(0, tb._FIELD_MAX + 1, (2, 300), generator=g, dtype=torch.int32)
    qhi = (qlo + torch.randint(-2, 40, (2, 300), generator=g, dtype=torch.int32)).clamp(
        max=tb._FIELD_MAX)
    kcode = (qlo + torch.randint(-50, 50, (2, 300), generator=g, dtype=torch.int32)).clamp(
        0, tb._FIELD_MAX)
    kcode[:, :4] = torch.tensor([[0, 0, tb._FIELD_MAX, tb._FIELD_MAX], [0, tb._FIELD_MAX, 0, 5]])
    codes_in = (qlo, qhi, kcode)
    codes, packed = tb._packed_codes(*codes_in)
    (lo,), (hi,), (kg, k) = codes
    assert packed
    t = (kg[None, :] - lo[:, None]) & (hi[:, None] - k[None, :])
    got = (t & tb._GUARDS) == tb._GUARDS
    want = ((qlo[:, :, None] <= kcode[:, None, :]) & (kcode[:, None, :] <= qhi[:, :, None])).all(0)
    assert torch.equal(got, want) and want.any() and not want.all()
    # No query (rows past N read the kernels' PACKED_EMPTY as lo) attends any key.
    empty = torch.tensor(tb._k.PACKED_EMPTY.value, dtype=torch.int32)
    assert not (((kg - empty) & (hi.max() - k) & tb._GUARDS) == tb._GUARDS).any()
    # Codes past 15 bits, and one axis, stay unpacked.
    assert not tb._packed_codes(qlo, qhi + tb._FIELD_MAX, kcode)[1]
    assert not tb._packed_codes(qlo[:1], qhi[:1], kcode[:1])[1]
    # A third axis (any size) follows the packed pair as a row of its own.
    third = torch.arange(300, dtype=torch.int32)[None] * 1000
    (lo3, hi3, k3), packed = tb._packed_codes(*(torch.cat([c, third]) for c in codes_in))
    assert packed and torch.equal(lo3, torch.cat([lo[None], third]))
    assert torch.equal(hi3[1], third[0]) and torch.equal(k3, torch.cat([kg[None], k[None], third]))


def test_unpacked_grid_codes(monkeypatch):
    # Grid patterns pack the codes of their first two axes on grids below 32767 per axis; the
    # unpacked path (longer axes) runs when packing is refused.
    tb = _backend()
    layout, video = Layout((10, 13)), Layout((3, 4, 5))
    cpu = torch.device("cpu")
    assert tb._tables(Neighborhood(layout, 5), 130, 16, 32, cpu).packed
    assert tb._tables(Neighborhood(video, 3), 60, 16, 32, cpu).packed
    monkeypatch.setattr(tb, "_FIELD_MAX", -1)
    tb._tables_of_key.cache_clear()
    try:
        assert not tb._tables(Neighborhood(layout, 5), 130, 16, 32, cpu).packed
        check(Neighborhood(layout, (5, 3)), 130, 32, torch.float32, b=1)
        check(Window2D(layout, 4, shift=2), 130, 16, torch.float16, b=1, bias_layout=layout)
        check(Neighborhood(video, 3), 60, 16, torch.float32, b=1)
    finally:
        tb._tables_of_key.cache_clear()


@pytest.mark.parametrize("n, dtype", [(96, torch.float32), (90, torch.float16)])
def test_one_to_one_plan_fuses_dq_into_the_dkdv_pass(n, dtype):
    # Windows of 32 on 32-token tiles: every query tile attends one key tile, so the backward
    # is a single pass (the last window and tile are short when n = 90).
    tb = _backend()
    cfg = tb.TileConfig(fwd=tb.PassConfig(32, 32), dkdv=tb.PassConfig(32, 32),
                        dq=tb.PassConfig(16, 16))
    assert tb._tables(Window(32), n, 32, 32, torch.device("cpu"), True).one_to_one
    check(Window(32), n, 24, dtype, tiles=cfg)


@pytest.mark.parametrize("name", ["window-one-to-one", *PATTERNS])
def test_padded_keys_when_every_score_is_far_below_zero(name):
    # Every score near -150, so the log-sum-exp is too: a padded key row (k = 0, score 0 before
    # masking) would get probability e^150, infinite in fp32, and inf * 0 = NaN in dQ, unless
    # every pass masks it out on full tiles as well.
    tb = _backend()
    if name == "window-one-to-one":  # dQ computed in the dK/dV pass
        pattern, n = Window(32), 90
        tiles = tb.TileConfig(fwd=tb.PassConfig(32, 32), dkdv=tb.PassConfig(32, 32),
                              dq=tb.PassConfig(16, 16))
    else:
        make, n = PATTERNS[name]
        pattern, tiles = make(), (16, 32)
    d = 32

    def make_inputs(g):
        direction = torch.ones(d)
        noise = [0.1 * torch.randn(2, 2, n, d, generator=g) for _ in range(2)]
        q = (-5.2 * direction + noise[0]).half()
        k = (5.2 * direction + noise[1]).half()
        return q, k, torch.randn(2, 2, n, d, generator=g).half()

    check(pattern, n, d, torch.float16, tiles=tiles, make=make_inputs)
