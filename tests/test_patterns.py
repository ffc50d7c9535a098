from dataclasses import dataclass

import pytest
import torch

from hilbertattn import Layout, Neighborhood, Slide, Window, Window2D
from hilbertattn.patterns import SequencePattern, pattern_of_key

from spec import neighborhood_mask, slide_mask, window2d_mask, window_mask

GRIDS = [(7, 11), (16, 16), (9, 6), (4, 5, 6)]
ORDERS = ["hilbert", "rowmajor", "tiled"]


def _mask(pattern, n):
    i = torch.arange(n)
    return pattern.mask(i[:, None], i[None, :], n)


def _codes_mask(pattern, n):
    qlo, qhi, kc = pattern.codes(n)
    # The kernels test ``qlo <= c <= qhi`` as ``c - qlo <= qhi - qlo`` unsigned, which needs every
    # interval non-empty: each holds the query's own code.
    assert ((qlo <= kc) & (kc <= qhi)).all()
    return ((qlo[:, :, None] <= kc[:, None, :]) & (kc[:, None, :] <= qhi[:, :, None])).all(0)


@pytest.mark.parametrize("n", [1, 7, 64, 100])
@pytest.mark.parametrize("window,shift", [(1, 0), (4, 0), (5, 2), (7, 6), (16, 8)])
def test_window(n, window, shift):
    if window > n:
        pytest.skip("window larger than the sequence")
    p = Window(window, shift)
    assert torch.equal(_mask(p, n), window_mask(n, window, shift))
    assert torch.equal(_codes_mask(p, n), window_mask(n, window, shift))


@pytest.mark.parametrize("n", [9, 31, 100])
@pytest.mark.parametrize("window,clamped", [(1, False), (4, False), (9, False), (9, True), (3, True)])
def test_slide(n, window, clamped):
    p = Slide(window, clamped)
    expected = slide_mask(n, window, clamped)
    assert torch.equal(_mask(p, n), expected)
    assert torch.equal(_codes_mask(p, n), expected)
    if clamped:
        assert (expected.sum(1) == window).all()


@pytest.mark.parametrize("shape", GRIDS)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("kernel,dilation", [(3, 1), (5, 1), (3, 2), ((3, 5, 3), (1, 1, 2))])
def test_neighborhood(shape, order, kernel, dilation):
    nd = len(shape)
    kernel = kernel[:nd] if isinstance(kernel, tuple) else (kernel,) * nd
    dilation = dilation[:nd] if isinstance(dilation, tuple) else (dilation,) * nd
    if any(s // d < k for s, k, d in zip(shape, kernel, dilation)):
        pytest.skip("kernel does not fit")
    layout = Layout(shape, order)
    p = Neighborhood(layout, kernel, dilation)
    expected = neighborhood_mask(layout.coords, shape, kernel, dilation)
    assert torch.equal(_mask(p, layout.numel), expected)
    assert torch.equal(_codes_mask(p, layout.numel), expected)
    if all(d == 1 for d in dilation):  # every query sees exactly prod(kernel) keys
        assert (expected.sum(1) == torch.tensor(kernel).prod()).all()


def test_neighborhood_depends_on_order_only_through_the_permutation():
    shape = (10, 13)
    masks = {}
    for order in ORDERS:
        layout = Layout(shape, order)
        m = _mask(Neighborhood(layout, 5, 2), layout.numel)
        # back to row-major rows and columns
        inv = layout.inverse
        masks[order] = m[inv][:, inv]
    assert torch.equal(masks["hilbert"], masks["rowmajor"])
    assert torch.equal(masks["tiled"], masks["rowmajor"])


def test_even_kernel_follows_the_same_formula_when_asked():
    layout = Layout((12, 10))
    p = Neighborhood(layout, 4, even_kernel=True)
    expected = neighborhood_mask(layout.coords, (12, 10), (4, 4), (1, 1))
    assert torch.equal(_mask(p, layout.numel), expected)


@pytest.mark.parametrize("shape", GRIDS)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("window,shift", [(2, 0), (3, 1), (4, 2)])
def test_window2d(shape, order, window, shift):
    layout = Layout(shape, order)
    nd = len(shape)
    p = Window2D(layout, window, shift)
    expected = window2d_mask(layout.coords, (window,) * nd, (shift,) * nd)
    assert torch.equal(_mask(p, layout.numel), expected)
    assert torch.equal(_codes_mask(p, layout.numel), expected)


def test_window2d_shift_equals_swin_cyclic_shift_with_its_mask():
    h, w, ws, s = 8, 12, 4, 2
    layout = Layout((h, w), "rowmajor")
    ours = _mask(Window2D(layout, ws, s), h * w)
    # Swin: roll the grid by -s, partition into windows, mask pairs from different regions.
    r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    rolled_r, rolled_c = (r + s) % h, (c + s) % w  # source cell of each rolled position

    def region(x, size):
        return torch.where(x < size - ws, 0, torch.where(x < size - s, 1, 2))

    win = (r // ws) * (w // ws) + c // ws
    reg = region(r, h) * 3 + region(c, w)
    src = (rolled_r * w + rolled_c).flatten()
    same = (win.flatten()[:, None] == win.flatten()[None, :]) & (
        reg.flatten()[:, None] == reg.flatten()[None, :])
    swin = torch.zeros(h * w, h * w, dtype=torch.bool)
    swin[src[:, None], src[None, :]] = same
    assert torch.equal(ours, swin)


def test_patterns_are_hashable_values():
    layout = Layout((8, 8))
    assert Window(4, 1) == Window(4, 1) and hash(Window(4, 1)) == hash(Window(4, 1))
    assert Neighborhood(layout, 3) == Neighborhood(Layout((8, 8)), 3)
    assert Neighborhood(layout, [3, 3]) == Neighborhood(layout, (3, 3))
    assert Window2D(layout, 4) != Window2D(layout, 4, 2)


def test_equal_patterns_share_one_key():
    layout = Layout((8, 8))
    made = [Window(4, 1), Window(4, 1), Window(4), Neighborhood(layout, [3, 3]),
            Neighborhood(Layout((8, 8)), (3, 3)), Window2D(layout, 4)]
    keys = [p.key for p in made]
    assert keys[0] == keys[1] and keys[3] == keys[4]
    assert len({keys[0], keys[2], keys[3], keys[5]}) == 4
    for p in made:
        assert pattern_of_key(p.key) == p


def test_a_subclass_that_skips_the_base_post_init_still_gets_a_key():
    @dataclass(frozen=True)
    class EveryOther(SequencePattern):
        window: int

        def __post_init__(self) -> None:  # no super().__post_init__()
            pass

    p = EveryOther(3)
    assert pattern_of_key(p.key) == p and EveryOther(3).key == p.key


@pytest.mark.parametrize("make,match", [
    (lambda: Window(0), "window"),
    (lambda: Window(4, 4), "shift"),
    (lambda: Window(4, -1), "shift"),
    (lambda: Slide(0), "window"),
    (lambda: Slide(4, clamped=True), "window must be odd"),
    (lambda: Neighborhood(Layout((8, 8)), 4), "kernel_size must be odd"),
    (lambda: Neighborhood(Layout((8, 8)), 0), "kernel_size"),
    (lambda: Neighborhood(Layout((8, 8)), 9), "kernel_size"),
    (lambda: Neighborhood(Layout((8, 8)), 3, 3), "dilation"),
    (lambda: Neighborhood(Layout((8, 8)), (3, 3, 3)), "kernel_size"),
    (lambda: Neighborhood("8x8", 3), "layout"),
    (lambda: Window2D(Layout((8, 8)), 9), "window_size"),
    (lambda: Window2D(Layout((8, 8)), 4, 4), "shift"),
])
def test_bad_patterns_raise_naming_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_window_larger_than_sequence_is_rejected():
    with pytest.raises(ValueError, match="window"):
        Window(65).codes(64)
    with pytest.raises(ValueError, match="does not match the layout"):
        Neighborhood(Layout((8, 8)), 3).codes(63)
