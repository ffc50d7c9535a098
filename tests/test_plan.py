import pytest
import torch

from hilbertattn import Layout, Neighborhood, Slide, Window, Window2D, block_plan


def _tiles_from_dense_mask(pattern, n, q_tile, kv_tile):
    """0 empty / 1 partial / 2 full per tile, from the N x N mask (what the plan must avoid)."""
    i = torch.arange(n)
    mask = pattern.mask(i[:, None], i[None, :], n)
    rows, cols = -(-n // q_tile), -(-n // kv_tile)
    out = torch.zeros(rows, cols, dtype=torch.int8)
    for r in range(rows):
        for c in range(cols):
            tile = mask[r * q_tile:(r + 1) * q_tile, c * kv_tile:(c + 1) * kv_tile]
            out[r, c] = 2 if tile.all() else int(tile.any())
    return out


def _patterns(layout):
    n = layout.numel
    out = [Window(5), Window(8, 3), Slide(9), Slide(7, clamped=True), Slide(6)]
    if n >= 64:
        out.append(Window(64, 17))
    out += [Neighborhood(layout, 3), Window2D(layout, 3), Window2D(layout, 3, 1)]
    if min(layout.shape) >= 10:
        out += [Neighborhood(layout, 5, 2), Neighborhood(layout, 4, even_kernel=True)]
    return out


LAYOUTS = [Layout((7, 11)), Layout((13, 9), "rowmajor"), Layout((12, 10), "tiled", (3, 4)),
           Layout((16, 16)), Layout((10, 12)), Layout((4, 5, 6)), Layout((6, 6, 6), "rowmajor")]


@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
@pytest.mark.parametrize("q_tile,kv_tile", [(16, 16), (5, 7), (32, 8), (128, 128)])
def test_plan_equals_tiles_of_dense_mask(layout, q_tile, kv_tile):
    n = layout.numel
    for pattern in _patterns(layout):
        plan = block_plan(pattern, n, q_tile, kv_tile)
        expected = _tiles_from_dense_mask(pattern, n, q_tile, kv_tile)
        assert torch.equal(plan.dense(), expected), pattern
        assert torch.equal(plan.transposed().dense(), expected.T), pattern
        computed = (expected > 0).sum().item()
        assert plan.density == pytest.approx(computed / expected.numel())
        assert plan.partial_share == pytest.approx((expected == 1).sum().item() / computed)


def test_plan_lists_are_sorted_and_padded():
    plan = block_plan(Slide(33), 500, 16, 16)
    for counts, indices in ((plan.full_counts, plan.full_indices),
                            (plan.partial_counts, plan.partial_indices)):
        assert indices.dtype == torch.int32 and counts.dtype == torch.int32
        for r in range(plan.n_q_tiles):
            row = indices[r, :counts[r]]
            assert torch.all(row[1:] > row[:-1])
            assert torch.all(indices[r, counts[r]:] == 0)


@pytest.mark.parametrize("pattern_name,expected", [
    ("window", 0.0020), ("neighborhood-hilbert", 0.0158), ("neighborhood-rowmajor", 0.0508),
    ("slide", 0.0059)])
def test_densities_of_the_benchmark_cases(pattern_name, expected):
    shape = (256, 256)
    pattern = {
        "window": lambda: Window(64),
        "slide": lambda: Slide(169),
        "neighborhood-hilbert": lambda: Neighborhood(Layout(shape), 13),
        "neighborhood-rowmajor": lambda: Neighborhood(Layout(shape, "rowmajor"), 13),
    }[pattern_name]()
    assert block_plan(pattern, 65536).density == pytest.approx(expected, abs=5e-5)


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="q_tile"):
        block_plan(Window(4), 64, q_tile=0)
    with pytest.raises(ValueError, match="seq_len"):
        block_plan(Window(4), -1)
    with pytest.raises(ValueError, match="pattern"):
        block_plan("window", 64)
    with pytest.raises(ValueError, match="does not match the layout"):
        block_plan(Neighborhood(Layout((8, 8)), 3), 65)


@pytest.mark.parametrize("pattern", [Window(130, 7), Slide(169)], ids=repr)
def test_pairs_are_row_sorted_and_match_the_tile_map(pattern):
    plan = block_plan(pattern, 700, 64, 64)
    assert 0 < plan.partial_share < 1  # rows mix full and partial tiles
    rows, cols, full = plan.pairs()
    key = rows * plan.n_kv_tiles + cols
    assert bool((key[1:] > key[:-1]).all())
    dense = plan.dense()
    assert torch.equal(dense[rows, cols], 1 + full.to(torch.int8))
    assert int((dense > 0).sum()) == rows.numel()
