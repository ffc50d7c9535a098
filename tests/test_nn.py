"""hilbertattn.nn modules against a dense float64 computation written out here (SPEC.md masks,
the relative position bias gathered by the grid offset of every pair)."""

import pytest
import torch

from hilbertattn import Layout
from hilbertattn.bias import covering_radius as bias_covering_radius
from hilbertattn.patterns import Neighborhood
from hilbertattn.nn import (HilbertSlideAttention, HilbertWindowAttention, NeighborhoodAttention,
                            WindowAttention2D, covering_radius)

from spec import dense_attention, neighborhood_mask, slide_mask, window2d_mask, window_mask

# (id, grid, module factory, dense SPEC mask of the grid's layout)
CASES = [
    ("hwa", (7, 11), lambda dim, heads, layout, **kw: HilbertWindowAttention(
        dim, heads, 12, layout=layout, **kw),
     lambda layout: window_mask(layout.numel, 12)),
    ("hwa-shifted", (9, 10), lambda dim, heads, layout, **kw: HilbertWindowAttention(
        dim, heads, 16, 8, layout=layout, **kw),
     lambda layout: window_mask(layout.numel, 16, 8)),
    ("hsa", (7, 11), lambda dim, heads, layout, **kw: HilbertSlideAttention(
        dim, heads, 10, layout=layout, **kw),
     lambda layout: slide_mask(layout.numel, 10)),
    ("hsa-clamped", (13, 6), lambda dim, heads, layout, **kw: HilbertSlideAttention(
        dim, heads, 25, clamped=True, layout=layout, **kw),
     lambda layout: slide_mask(layout.numel, 25, clamped=True)),
    ("na", (9, 13), lambda dim, heads, layout, **kw: NeighborhoodAttention(
        dim, heads, layout, 5, **kw),
     lambda layout: neighborhood_mask(layout.coords, layout.shape, (5, 5), (1, 1))),
    ("na-dilated", (10, 11), lambda dim, heads, layout, **kw: NeighborhoodAttention(
        dim, heads, layout, (3, 5), (3, 2), **kw),
     lambda layout: neighborhood_mask(layout.coords, layout.shape, (3, 5), (3, 2))),
    ("na-3d", (4, 5, 6), lambda dim, heads, layout, **kw: NeighborhoodAttention(
        dim, heads, layout, 3, **kw),
     lambda layout: neighborhood_mask(layout.coords, layout.shape, (3, 3, 3), (1, 1, 1))),
    ("swin-shifted", (9, 14), lambda dim, heads, layout, **kw: WindowAttention2D(
        dim, heads, layout, (4, 5), (2, 2), **kw),
     lambda layout: window2d_mask(layout.coords, (4, 5), (2, 2))),
]
IDS = [c[0] for c in CASES]


def _dense_bias(table: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """[heads, N, N]: table entry at the clamped grid offset coords[i] - coords[j] of each pair."""
    radius = torch.tensor([(s - 1) // 2 for s in table.shape[1:]])
    offset = coords[:, None, :] - coords[None, :, :]
    index = torch.maximum(torch.minimum(offset, radius), -radius) + radius
    return table[(slice(None), *index.unbind(-1))]


def _dense_module(module, x, mask, coords):
    """The module's function computed densely: qkv, masked softmax (+ bias), output projection."""
    B, N, C = x.shape
    heads = module.num_heads
    q, k, v = module.qkv(x).view(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    table = module.relative_position_bias_table
    bias = None if table is None else _dense_bias(table, coords)
    out = dense_attention(q, k, v, mask, (C // heads) ** -0.5, bias)
    return module.proj(out.transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("rel_pos_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("order", ["hilbert", "rowmajor"])
@pytest.mark.parametrize("name,grid,make,dense_mask", CASES, ids=IDS)
def test_module_equals_dense_forward_and_gradients(name, grid, make, dense_mask, order,
                                                   rel_pos_bias):
    torch.manual_seed(0)
    layout = Layout(grid, order)
    module = make(12, 3, layout, rel_pos_bias=rel_pos_bias, backend="reference").double()
    if rel_pos_bias:  # a random table, so that every entry matters to the comparison
        torch.nn.init.normal_(module.relative_position_bias_table)
    x = torch.randn(2, layout.numel, 12, dtype=torch.float64, requires_grad=True)
    out = module(x)
    expected = _dense_module(module, x, dense_mask(layout), layout.coords)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(out)
    inputs = [x, *module.parameters()]
    got = torch.autograd.grad(out, inputs, grad)
    want = torch.autograd.grad(expected, inputs, grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)
    if rel_pos_bias:
        assert got[-1].abs().sum() > 0  # the table is learned


@pytest.mark.parametrize("name,grid,make,dense_mask", CASES, ids=IDS)
def test_covering_radius_covers_every_attended_pair(name, grid, make, dense_mask):
    layout = Layout(grid)
    module = make(4, 1, layout, rel_pos_bias=True)
    radius = torch.tensor([(s - 1) // 2 for s in module.relative_position_bias_table.shape[1:]])
    mask = dense_mask(layout)
    offsets = (layout.coords[:, None, :] - layout.coords[None, :, :]).abs()[mask]  # [pairs, A]
    assert tuple(radius.tolist()) == covering_radius(module.pattern, layout)
    assert (offsets <= radius).all()
    if name.startswith(("hwa", "hsa")):  # measured on the layout: the exact maximum
        assert (offsets.amax(0) == radius).all()


def test_grid_pattern_radius_needs_its_own_layout():
    pattern = Neighborhood(Layout((6, 7)), 3)
    assert bias_covering_radius(pattern, Layout((6, 7)).coords) == (2, 2)
    assert bias_covering_radius(pattern, Layout((6, 7), "rowmajor").coords) is None
    with pytest.raises(ValueError, match="layout"):
        covering_radius(pattern, Layout((6, 7), "rowmajor"))


def test_neighborhood_radius_is_nats_table():
    # NATTEN windows are shifted inwards at the borders: offsets reach (kernel - 1) * dilation.
    module = NeighborhoodAttention(8, 2, Layout((12, 12)), 7, rel_pos_bias=True)
    assert module.relative_position_bias_table.shape == (2, 13, 13)
    swin = WindowAttention2D(8, 2, Layout((14, 14)), 7, 3, rel_pos_bias=True)
    assert swin.relative_position_bias_table.shape == (2, 13, 13)


def test_fixed_bias_radius_clamps_far_pairs():
    torch.manual_seed(0)
    layout = Layout((8, 8))
    module = HilbertWindowAttention(8, 2, 32, layout=layout, rel_pos_bias=True, bias_radius=2,
                                    backend="reference").double()
    assert module.relative_position_bias_table.shape == (2, 5, 5)
    x = torch.randn(1, 64, 8, dtype=torch.float64)
    expected = _dense_module(module, x, window_mask(64, 32), layout.coords)
    torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-10)


def test_module_on_a_long_sequence_without_layout():
    torch.manual_seed(0)
    module = HilbertSlideAttention(8, 2, 33, backend="reference").double()
    x = torch.randn(1, 300, 8, dtype=torch.float64)
    expected = _dense_module(module, x, slide_mask(300, 33), None)
    torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-10)


def test_flex_forward_matches_reference_with_bias():
    from hilbertattn.backends import flex

    if not flex.available():
        pytest.skip("this PyTorch has no FlexAttention")
    torch.manual_seed(0)
    layout = Layout((8, 12))
    module = NeighborhoodAttention(16, 2, layout, 5, rel_pos_bias=True, backend="flex").eval()
    torch.nn.init.normal_(module.relative_position_bias_table)
    x = torch.randn(1, layout.numel, 16)
    with torch.no_grad():
        out = module(x)
        module.backend = "reference"
        expected = module(x)
    torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-5)


def test_proj_drop_drops_in_training_only():
    torch.manual_seed(0)
    module = HilbertWindowAttention(16, 2, 8, proj_drop=0.5)
    x = torch.randn(2, 64, 16)
    train = module(x)
    assert (train == 0).float().mean() > 0.3
    module.eval()
    assert (module(x) != 0).all()


LAYOUT = Layout((8, 8))


BAD_ARGUMENTS = [
    (lambda: HilbertWindowAttention(10, 3, 8), "num_heads must divide dim"),
    (lambda: HilbertWindowAttention(0, 1, 8), "dim must be a positive int"),
    (lambda: HilbertWindowAttention(8, 0, 8), "num_heads must be a positive int"),
    (lambda: HilbertWindowAttention(8, 2, 0), "window must be a positive int"),
    (lambda: HilbertWindowAttention(8, 2, 8, 8), "shift must be"),
    (lambda: HilbertWindowAttention(8, 2, 8, layout=LAYOUT, attn_drop=0.1), "attn_drop must be 0"),
    (lambda: HilbertWindowAttention(8, 2, 8, proj_drop=1.5), "proj_drop must be a float"),
    (lambda: HilbertWindowAttention(8, 2, 8, rel_pos_bias=True), "layout is required"),
    (lambda: HilbertWindowAttention(8, 2, 8, layout=(8, 8)), "layout must be"),
    (lambda: HilbertWindowAttention(8, 2, 100, layout=LAYOUT), "window must be at most"),
    (lambda: HilbertWindowAttention(8, 2, 8, backend="cuda"), "backend must be one of"),
    (lambda: HilbertWindowAttention(8, 2, 8, bias_radius=3), "bias_radius is only used"),
    (lambda: HilbertWindowAttention(8, 2, 8, layout=LAYOUT, rel_pos_bias=True,
                                    bias_radius=(1, 2, 3)), "bias_radius must be"),
    (lambda: HilbertSlideAttention(8, 2, 8, clamped=True), "window must be odd"),
    (lambda: NeighborhoodAttention(8, 2, LAYOUT, 4), "kernel_size must be odd"),
    (lambda: NeighborhoodAttention(8, 2, LAYOUT, 9), "kernel_size 9 x dilation 1 does not fit"),
    (lambda: WindowAttention2D(8, 2, LAYOUT, 9), "window_size 9 is larger"),
    (lambda: WindowAttention2D(8, 2, LAYOUT, 4, 4), "shift must be in"),
]


@pytest.mark.parametrize("make,match", BAD_ARGUMENTS, ids=[m for _, m in BAD_ARGUMENTS])
def test_bad_arguments_raise_naming_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("x,match", [
    (torch.randn(2, 63, 8), r"x must have shape \[B, N=64, dim=8\]"),
    (torch.randn(2, 64, 6), "x must have shape"),
    (torch.randn(64, 8), "x must have shape"),
])
def test_bad_input_shape_raises(x, match):
    module = NeighborhoodAttention(8, 2, LAYOUT, 3)
    with pytest.raises(ValueError, match=match):
        module(x)
