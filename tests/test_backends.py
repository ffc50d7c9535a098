"""The reference and flex backends against a float64 dense masked softmax (SPEC.md)."""

import pytest
import torch

import hilbertattn as ha
from hilbertattn import Layout, Neighborhood, RelativeBias, Slide, Window, Window2D

from spec import dense_attention

CASES = [
    ("window", (7, 11), lambda layout: Window(6, 2)),
    ("slide", (7, 11), lambda layout: Slide(9)),
    ("slide-clamped", (9, 10), lambda layout: Slide(13, clamped=True)),
    ("neighborhood", (9, 13), lambda layout: Neighborhood(layout, 5)),
    ("neighborhood-dilated", (10, 12), lambda layout: Neighborhood(layout, (3, 5), (3, 2))),
    ("neighborhood-3d", (4, 5, 6), lambda layout: Neighborhood(layout, 3)),
    ("window2d-shifted", (9, 14), lambda layout: Window2D(layout, (3, 4), (1, 2))),
    ("window2d-3d", (4, 6, 5), lambda layout: Window2D(layout, 2, 1)),
    # Long enough for plans that mix full and partial tiles in one row.
    ("window-long", (23, 31), lambda layout: Window(130, 7)),
    ("slide-long", (20, 35), lambda layout: Slide(169)),
    ("neighborhood-long", (25, 29), lambda layout: Neighborhood(layout, 9)),
]


def _inputs(n, heads=3, dim=16, batch=2, dtype=torch.float64):
    return [torch.randn(batch, heads, n, dim, dtype=dtype, requires_grad=True) for _ in range(3)]


def _dense_mask(pattern, n):
    i = torch.arange(n)
    return pattern.mask(i[:, None], i[None, :], n)


@pytest.mark.parametrize("name,shape,make", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("order", ["hilbert", "rowmajor"])
def test_reference_forward_and_gradients(name, shape, make, order):
    layout = Layout(shape, order)
    pattern = make(layout)
    n = layout.numel
    q, k, v = _inputs(n)
    out = ha.attention(q, k, v, pattern, backend="reference")
    expected = dense_attention(q, k, v, _dense_mask(pattern, n), 16 ** -0.5)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(expected, (q, k, v), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def test_reference_with_relative_bias_and_its_gradient():
    layout = Layout((9, 11))
    n = layout.numel
    pattern = Neighborhood(layout, 5)
    q, k, v = _inputs(n)
    table = torch.randn(3, 7, 9, dtype=torch.float64, requires_grad=True)  # radius 3 x 4, clamped
    bias = RelativeBias(table, layout.coords)
    out = ha.attention(q, k, v, pattern, scale=0.3, bias=bias, backend="reference")
    c = layout.coords
    off = (c[:, None, :] - c[None, :, :]).clamp(torch.tensor([-3, -4]), torch.tensor([3, 4]))
    dense_bias = table[:, off[..., 0] + 3, off[..., 1] + 4]
    expected = dense_attention(q, k, v, _dense_mask(pattern, n), 0.3, dense_bias)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v, table), grad)
    want = torch.autograd.grad(expected, (q, k, v, table), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def test_reference_low_precision_matches_in_float32():
    layout = Layout((16, 12))
    pattern = Neighborhood(layout, 5)
    q, k, v = (t.detach().to(torch.bfloat16) for t in _inputs(layout.numel))
    out = ha.attention(q, k, v, pattern, backend="reference")
    assert out.dtype == torch.bfloat16
    expected = dense_attention(q, k, v, _dense_mask(pattern, layout.numel), 16 ** -0.5)
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.slow
@pytest.mark.parametrize("name,shape,make", [CASES[0], CASES[4], CASES[5], CASES[6]],
                         ids=["window", "neighborhood-dilated", "neighborhood-3d", "window2d"])
def test_flex_forward(name, shape, make):
    from hilbertattn.backends import flex

    if not flex.available():
        pytest.skip("this PyTorch has no FlexAttention")
    layout = Layout(shape)
    pattern = make(layout)
    n = layout.numel
    q, k, v = (t.detach().float() for t in _inputs(n, heads=2, batch=1))
    with torch.no_grad():
        out = ha.attention(q, k, v, pattern, backend="flex")
    expected = dense_attention(q, k, v, _dense_mask(pattern, n), 16 ** -0.5)
    torch.testing.assert_close(out.double(), expected, rtol=2e-5, atol=2e-5)


@pytest.mark.slow
def test_flex_forward_with_relative_bias():
    layout = Layout((8, 12))
    pattern = Window2D(layout, 4, 2)
    n = layout.numel
    q, k, v = (t.detach().float() for t in _inputs(n, heads=2, batch=1))
    table = torch.randn(2, 7, 7)
    with torch.no_grad():
        out = ha.attention(q, k, v, pattern, bias=RelativeBias(table, layout.coords),
                           backend="flex")
        ref = ha.attention(q, k, v, pattern, bias=RelativeBias(table, layout.coords),
                           backend="reference")
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-5)


def test_auto_is_the_reference_on_cpu():
    q, k, v = (t.detach() for t in _inputs(64))
    assert ha.functional.resolve_backend("auto", q) == "reference"
    torch.testing.assert_close(ha.attention(q, k, v, Window(8)),
                               ha.attention(q, k, v, Window(8), backend="reference"))


def test_wrappers_build_their_patterns():
    layout = Layout((6, 10))
    q, k, v = (t.detach() for t in _inputs(60))
    f = ha.attention
    torch.testing.assert_close(ha.window_attention(q, k, v, 8, 3), f(q, k, v, Window(8, 3)))
    torch.testing.assert_close(ha.slide_attention(q, k, v, 7, True), f(q, k, v, Slide(7, True)))
    torch.testing.assert_close(ha.neighborhood_attention(q, k, v, layout, 3, 2),
                               f(q, k, v, Neighborhood(layout, 3, 2)))
    torch.testing.assert_close(ha.window_attention_2d(q, k, v, layout, 3, 1),
                               f(q, k, v, Window2D(layout, 3, 1)))


def _bad(**change):
    args = dict(q=torch.randn(1, 2, 64, 8), k=torch.randn(1, 2, 64, 8), v=torch.randn(1, 2, 64, 8),
                pattern=Neighborhood(Layout((8, 8)), 3), backend="reference")
    args.update(change)
    return args


@pytest.mark.parametrize("change,match", [
    (dict(q=torch.randn(2, 64, 8)), "q must be a tensor of shape"),
    (dict(k=torch.randn(1, 2, 63, 8)), "same shape"),
    (dict(v=torch.randn(1, 2, 64, 4)), "same shape"),
    (dict(q=torch.randn(1, 2, 64, 8, dtype=torch.float64)), "same dtype"),
    (dict(q=torch.zeros(1, 2, 64, 8, dtype=torch.int64)), "q.dtype"),
    (dict(q=torch.randn(1, 2, 64, 8, device="meta")), "same device"),
    (dict(q=torch.randn(1, 2, 63, 8), k=torch.randn(1, 2, 63, 8), v=torch.randn(1, 2, 63, 8)),
     "does not match the layout"),
    (dict(pattern=Window(65)), "window"),
    (dict(pattern="window"), "pattern"),
    (dict(backend="cuda"), "backend must be one of"),
    (dict(bias=RelativeBias(torch.zeros(3, 3, 3), Layout((8, 8)).coords)), "bias.table"),
    (dict(bias=RelativeBias(torch.zeros(2, 3, 3), Layout((8, 9)).coords)), "bias.coords"),
])
def test_bad_inputs_raise_naming_the_argument(change, match):
    with pytest.raises(ValueError, match=match):
        ha.attention(**_bad(**change))


def test_flex_backward_on_cpu_is_not_implemented():
    q, k, v = _inputs(64, dtype=torch.float32)
    with pytest.raises(NotImplementedError, match="flex"):
        ha.attention(q, k, v, Window(8), backend="flex")


def test_triton_without_a_gpu_is_not_implemented(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v = (t.detach().float() for t in _inputs(64))
    with pytest.raises(NotImplementedError, match="triton"):
        ha.attention(q, k, v, Window(8), backend="triton")
