import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hilbertattn import Layout
from hilbertattn.curves import hilbert_curve


def _is_permutation(coords: np.ndarray, shape) -> bool:
    flat = np.ravel_multi_index(tuple(coords.T), shape)
    return np.array_equal(np.sort(flat), np.arange(int(np.prod(shape))))


def _steps(coords: np.ndarray) -> np.ndarray:
    return np.abs(np.diff(coords, axis=0))


def test_every_2d_size_up_to_64_is_a_permutation_of_8_neighbour_steps():
    for h, w in itertools.product(range(1, 65), range(1, 65)):
        c = hilbert_curve((h, w))
        assert _is_permutation(c, (h, w)), (h, w)
        if len(c) > 1:
            steps = _steps(c)
            assert steps.max() <= 1 and steps.sum(1).min() >= 1, (h, w)


def test_diagonal_steps_only_where_parity_forces_them():
    for h, w in itertools.product(range(1, 41), range(1, 41)):
        c = hilbert_curve((h, w))
        diagonals = int((_steps(c).sum(1) == 2).sum()) if len(c) > 1 else 0
        long_side, short_side = max(h, w), min(h, w)
        if long_side % 2 == 1 and short_side % 2 == 0 and short_side > 1:
            assert diagonals <= 1, (h, w)
        else:
            assert diagonals == 0, (h, w)


@pytest.mark.parametrize("k", range(0, 7))
def test_powers_of_two_are_the_classic_curve(k):
    n = 2**k
    c = hilbert_curve((n, n))
    assert _is_permutation(c, (n, n))
    if n > 1:
        assert (_steps(c).sum(1) == 1).all()
        assert tuple(c[0]) == (0, 0) and sorted(c[-1].tolist()) == [0, n - 1]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 14), st.integers(1, 14), st.integers(1, 14))
def test_3d_boxes_are_permutations_of_26_neighbour_steps(t, h, w):
    c = hilbert_curve((t, h, w))
    assert _is_permutation(c, (t, h, w))
    if len(c) > 1:
        assert _steps(c).max() <= 1


def test_3d_powers_of_two_move_to_face_neighbours():
    c = hilbert_curve((8, 8, 8))
    assert (_steps(c).sum(1) == 1).all()


@pytest.mark.parametrize("order,tile", [("hilbert", None), ("rowmajor", None), ("tiled", (3, 4))])
@pytest.mark.parametrize("shape", [(5, 7), (16, 16), (3, 4, 5)])
def test_layout_tables_agree(shape, order, tile):
    if tile is not None:
        tile = tile + (2,) * (len(shape) - 2)
    layout = Layout(shape, order, tile)
    strides = torch.tensor([int(np.prod(shape[a + 1:])) for a in range(len(shape))])
    assert torch.equal((layout.coords * strides).sum(1), layout.perm)
    assert torch.equal(torch.sort(layout.perm).values, torch.arange(layout.numel))
    assert torch.equal(layout.inverse[layout.perm], torch.arange(layout.numel))


def test_rowmajor_is_identity_and_tiled_is_tile_major():
    assert torch.equal(Layout((4, 6), "rowmajor").perm, torch.arange(24))
    tiled = Layout((4, 6), "tiled", (2, 3))
    expected = [0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11, 12, 13, 14, 18, 19, 20, 15, 16, 17, 21, 22, 23]
    assert tiled.perm.tolist() == expected


@pytest.mark.parametrize("shape", [(7, 9), (2, 3, 5), (32, 32)])
@pytest.mark.parametrize("order", ["hilbert", "rowmajor", "tiled"])
def test_unflatten_inverts_flatten(shape, order):
    layout = Layout(shape, order)
    x = torch.randn(2, *shape, 3)
    seq = layout.flatten(x)
    assert seq.shape == (2, layout.numel, 3)
    assert torch.equal(layout.unflatten(seq), x)
    assert torch.equal(seq[:, 5], x.reshape(2, -1, 3)[:, layout.perm[5]])


def test_layout_errors_name_the_argument():
    with pytest.raises(ValueError, match="shape"):
        Layout((4,))
    with pytest.raises(ValueError, match="shape"):
        Layout((0, 4))
    with pytest.raises(ValueError, match="order"):
        Layout((4, 4), "zigzag")
    with pytest.raises(ValueError, match="tile"):
        Layout((4, 4), "tiled", (2,))
    with pytest.raises(ValueError, match="x must have shape"):
        Layout((4, 4)).flatten(torch.zeros(1, 4, 5, 2))
    with pytest.raises(ValueError, match="x must have shape"):
        Layout((4, 4)).unflatten(torch.zeros(1, 15, 2))


def test_layout_tables_are_shared_per_shape_order_and_device():
    a, b = Layout((64, 48)), Layout((64, 48))
    assert a == b and hash(a) == hash(b)
    assert a.perm is b.perm  # built once, not per instance
    assert a != Layout((64, 48), "rowmajor")
