import matplotlib.image
import pytest
import torch

from hilbertattn import Layout, Neighborhood, Slide, Window, Window2D
from hilbertattn.cli import main
from hilbertattn.cli.show import attended_cells, parse_grid

from spec import neighborhood_mask, slide_mask, window2d_mask, window_mask

SHAPE = (12, 20)


def _spec_cells(coords: torch.Tensor, shape, dense_mask: torch.Tensor, query) -> torch.Tensor:
    """Cells attended by ``query`` from an independent dense mask over sequence positions."""
    position = int(((coords == torch.tensor(query)).all(1)).nonzero())
    cells = torch.zeros(shape, dtype=torch.bool)
    for j in dense_mask[position].nonzero().flatten().tolist():
        cells[tuple(coords[j].tolist())] = True
    return cells


@pytest.mark.parametrize("order", ["hilbert", "rowmajor"])
@pytest.mark.parametrize("query", [(0, 0), (5, 13), (11, 19), (7, 2)])
def test_attended_cells_match_spec(order, query):
    layout = Layout(SHAPE, order)
    coords, n = layout.coords, layout.numel
    cases = [
        (Window(16, 5), window_mask(n, 16, 5)),
        (Slide(25, clamped=True), slide_mask(n, 25, clamped=True)),
        (Slide(10), slide_mask(n, 10)),
        (Neighborhood(layout, 5, dilation=2), neighborhood_mask(coords, SHAPE, (5, 5), (2, 2))),
        (Window2D(layout, 6, 3), window2d_mask(coords, (6, 6), (3, 3))),
    ]
    for pattern, dense in cases:
        expected = _spec_cells(coords, SHAPE, dense, query)
        got = attended_cells(layout, pattern, query)
        assert got.shape == SHAPE
        assert torch.equal(got, expected), pattern


def test_attended_cells_rejects_query_outside_grid():
    layout = Layout(SHAPE)
    with pytest.raises(ValueError, match="--query"):
        attended_cells(layout, Window(8), (12, 0))


def test_parse_grid():
    assert parse_grid("12x20") == (12, 20)
    assert parse_grid("2X3x4") == (2, 3, 4)
    for bad in ("12", "0x4", "ax4", "1x2x3x4"):
        with pytest.raises(ValueError, match="--curve-grids"):
            parse_grid(bad)


def test_show_writes_pngs(tmp_path, capsys):
    main(["show", "--out", str(tmp_path), "--curve-grids", "8x8", "6x10", "2x3x4",
          "--grid", "12", "20", "--query", "3", "7", "--window", "16", "--window-size", "4",
          "--kernel-size", "3", "--plan-grid", "32", "32", "--tile", "32",
          "--plan-kernel-size", "5", "--plan-window-size", "8", "--dpi", "40"])
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(str(tmp_path / name)
                                     for name in ("curves.png", "attention.png", "plan.png"))
    for path in printed:
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
        assert image.shape[2] in (3, 4)
        assert image.std() > 0  # something was drawn
