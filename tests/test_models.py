"""hilbertattn.models through timm: every name builds, runs and learns; published sizes; the exact
models compute the same function in every layout; Swin's pieces against Swin's own computation."""

import subprocess
import sys
from functools import lru_cache

import pytest
import torch

timm = pytest.importorskip("timm")
import hilbertattn.models  # noqa: E402  (registers the models with timm)
from hilbertattn import Layout, Neighborhood, Slide, Window, Window2D  # noqa: E402
from hilbertattn.models import PatchMerging  # noqa: E402
from hilbertattn.nn import WindowAttention2D  # noqa: E402

NAMES = hilbertattn.models.MODEL_NAMES


def _small(name: str) -> dict:
    """Build arguments that keep a model cheap on a CPU (the 224 models at 64 x 64)."""
    return {} if name.endswith(("_cifar", "_64")) else dict(img_size=64)


@lru_cache(maxsize=None)
def _at_224(name: str):
    return timm.create_model(name)


def teardown_module():
    _at_224.cache_clear()  # the 224 models hold ~150M parameters together


def _count(model, skip_bias_tables: bool = False) -> int:
    return sum(p.numel() for n, p in model.named_parameters()
               if not (skip_bias_tables and n.endswith("relative_position_bias_table")))


def test_required_names_are_registered():
    required = {"swin_tiny", "hwt_tiny", "nat_mini", "nat_tiny", "hnt_mini", "hnt_tiny",
                "swin_cifar", "hwt_cifar", "nat_cifar", "hnt_cifar"}
    assert required <= set(NAMES)
    assert required <= set(timm.list_models())


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_and_gradient_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = timm.create_model(name, drop_path_rate=0.0, **_small(name))
    x = torch.randn(2, 3, *model.img_size)
    logits = model(x)
    assert logits.shape == (2, model.num_classes)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_overrides_reach_the_model():
    model = timm.create_model("hnt_cifar", num_classes=7, img_size=(24, 40), backend="reference")
    assert model(torch.randn(1, 3, 24, 40)).shape == (1, 7)
    assert model.layouts[0].shape == (12, 20) and model.layouts[0].order == "hilbert"
    assert all(b.attn.backend == "reference" for stage in model.stages for b in stage[:-1])
    assert model.pretrained_cfg["input_size"] == (3, 24, 40)
    features = model.forward_features(torch.randn(1, 3, 24, 40))
    assert features.shape == (1, model.layouts[-1].numel, model.num_features)


@pytest.mark.parametrize("name,published", [("swin_tiny", 28.3e6), ("nat_mini", 20e6),
                                            ("nat_tiny", 28e6)])
def test_published_parameter_counts(name, published):
    assert abs(_count(_at_224(name)) - published) / published < 0.015


@pytest.mark.parametrize("hilbert,baseline", [("hwt_tiny", "swin_tiny"), ("hnt_mini", "nat_mini"),
                                              ("hnt_tiny", "nat_tiny")])
def test_hilbert_models_differ_from_their_baselines_only_in_bias_tables(hilbert, baseline):
    h, b = _at_224(hilbert), _at_224(baseline)
    assert _count(h, skip_bias_tables=True) == _count(b, skip_bias_tables=True)
    assert abs(_count(h) - _count(b)) / _count(b) < 0.01
    assert h.state_dict().keys() == b.state_dict().keys()


def _patterns(model):
    return [block.attn.pattern for stage in model.stages for block in stage
            if hasattr(block, "attn")]


def test_tiny_models_use_the_patterns_of_their_papers():
    swin, hwt = _patterns(_at_224("swin_tiny")), _patterns(_at_224("hwt_tiny"))
    nat, hnt = _patterns(_at_224("nat_mini")), _patterns(_at_224("hnt_mini"))
    assert [(p.size, p.offset) for p in swin[:2]] == [((7, 7), (0, 0)), ((7, 7), (3, 3))]
    assert all(isinstance(p, Window2D) for p in swin)
    assert swin[-1].offset == (0, 0)  # 7 x 7 grid: one window, not shifted
    assert hwt[:2] == [Window(49, 0), Window(49, 24)] and hwt[-1] == Window(49, 0)
    assert all(isinstance(p, Neighborhood) and p.kernel == (7, 7) for p in nat)
    assert hnt[0] == Slide(49, clamped=True)
    assert _at_224("nat_mini").layouts[0].order == "rowmajor"
    assert _at_224("hnt_mini").layouts[0].order == "hilbert"


def test_unshifted_hilbert_windows_on_power_of_two_grids_are_swins_windows():
    # On 2^k x 2^k grids, 16 consecutive tokens of the Hilbert curve (from a multiple of 16) form
    # an aligned 4 x 4 square: with one unshifted block per stage, hwt_cifar computes what
    # swin_cifar computes with the same weights, relative position bias included. The two
    # networks differ only in their shifted blocks.
    torch.manual_seed(0)
    build = dict(depths=(1, 1, 1), drop_path_rate=0.0, backend="reference")
    swin = timm.create_model("swin_cifar", **build).double().eval()
    hwt = timm.create_model("hwt_cifar", **build).double().eval()
    for name, p in swin.named_parameters():
        if name.endswith("relative_position_bias_table"):
            p.data.normal_()
    hwt.load_state_dict(swin.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(hwt(x), swin(x))


@pytest.mark.parametrize("name,img_size", [("nat_mini", 64), ("nat_cifar", 28),
                                           ("swin_cifar", 28), ("swin_tiny", 64)])
def test_exact_models_compute_the_same_function_in_the_hilbert_layout(name, img_size):
    torch.manual_seed(0)
    rowmajor = timm.create_model(name, img_size=img_size).eval()
    hilbert = timm.create_model(name, img_size=img_size, layout="hilbert").eval()
    hilbert.load_state_dict(rowmajor.state_dict())
    assert rowmajor.layouts[0].order == "rowmajor" and hilbert.layouts[0].order == "hilbert"
    assert not torch.equal(hilbert.layouts[0].perm, rowmajor.layouts[0].perm)
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        torch.testing.assert_close(hilbert(x), rowmajor(x), rtol=1e-5, atol=1e-5)


def _swin_window_attention(module, x, window, shift):
    """Swin's own computation on a [B, H, W, C] map: cyclic shift, window partition, attention with
    the relative position bias and the shifted-window mask (-100), window merge, reverse shift."""
    B, H, W, C = x.shape
    heads, w = module.num_heads, window
    if shift:
        x = torch.roll(x, (-shift, -shift), (1, 2))
    windows = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)
    q, k, v = module.qkv(windows).view(-1, w * w, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    attn = (q * (C // heads) ** -0.5) @ k.transpose(-2, -1)
    grid = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
    relative = grid[:, :, None] - grid[:, None, :] + w - 1
    attn = attn + module.relative_position_bias_table[:, relative[0], relative[1]][None]
    if shift:
        regions = torch.zeros(H, W)
        spans = (slice(0, -w), slice(-w, -shift), slice(-shift, None))
        for n, (hs, ws) in enumerate((hs, ws) for hs in spans for ws in spans):
            regions[hs, ws] = n
        regions = regions.view(H // w, w, W // w, w).permute(0, 2, 1, 3).reshape(-1, w * w)
        mask = (regions[:, None, :] != regions[:, :, None]).to(attn.dtype) * -100.0
        attn = (attn.view(B, -1, heads, w * w, w * w) + mask[None, :, None]).flatten(0, 1)
    out = module.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, w * w, C))
    out = out.view(B, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
    return torch.roll(out, (shift, shift), (1, 2)) if shift else out


@pytest.mark.parametrize("shift", [0, 3])
@pytest.mark.parametrize("order", ["rowmajor", "hilbert"])
def test_window_attention_2d_is_swins_window_attention(shift, order):
    torch.manual_seed(0)
    layout = Layout((14, 21), order)
    module = WindowAttention2D(12, 3, layout, 7, shift, rel_pos_bias=True,
                               backend="reference").double()
    torch.nn.init.normal_(module.relative_position_bias_table)
    x = torch.randn(2, 14, 21, 12, dtype=torch.float64)
    out = layout.unflatten(module(layout.flatten(x)))
    torch.testing.assert_close(out, _swin_window_attention(module, x, 7, shift),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("grid,order", [((16, 16), "hilbert"), ((24, 24), "hilbert"),
                                        ((12, 20), "hilbert"), ((10, 6), "rowmajor"),
                                        ((7, 7), "hilbert"), ((9, 12), "rowmajor")])
def test_patch_merging_is_swins_merge_in_sequence_order(grid, order):
    torch.manual_seed(0)
    fine, coarse = Layout(grid, order), Layout(((grid[0] + 1) // 2, (grid[1] + 1) // 2), order)
    merge = PatchMerging(fine, coarse, 8).double()
    x = torch.randn(2, *grid, 8, dtype=torch.float64)
    assert merge.padded == bool(grid[0] % 2 or grid[1] % 2)
    # Swin pads odd sides with zeros before taking the four members of every quad
    p = torch.nn.functional.pad(x, (0, 0, 0, grid[1] % 2, 0, grid[0] % 2))
    quads = torch.cat([p[:, 0::2, 0::2], p[:, 1::2, 0::2], p[:, 0::2, 1::2], p[:, 1::2, 1::2]], -1)
    expected = merge.reduction(merge.norm(quads))
    torch.testing.assert_close(coarse.unflatten(merge(fine.flatten(x))), expected)


@pytest.mark.parametrize("side", [4, 8, 16, 32, 64, 128])
def test_hilbert_curves_of_powers_of_two_merge_inside_groups_of_four(side):
    merge = PatchMerging(Layout((side, side)), Layout((side // 2, side // 2)), 4)
    assert merge.quad_aligned
    assert (merge.gather_index // 4 == torch.arange(side * side) // 4).all()


@pytest.mark.parametrize("grid,order", [((56, 56), "hilbert"), ((24, 24), "hilbert"),
                                        ((16, 16), "rowmajor")])
def test_other_grids_merge_through_a_whole_permutation(grid, order):
    fine, coarse = Layout(grid, order), Layout((grid[0] // 2, grid[1] // 2), order)
    assert not PatchMerging(fine, coarse, 4).quad_aligned


@pytest.mark.parametrize("build,match", [
    (lambda: timm.create_model("swin_tiny", pretrained=True), "pretrained must be False"),
    (lambda: timm.create_model("swin_tiny", img_size=62), "img_size must be a multiple"),
    (lambda: timm.create_model("hwt_cifar", attn_drop_rate=0.1), "attn_drop must be 0"),
    (lambda: timm.create_model("nat_cifar", layout="zigzag"), "layout must be one of"),
    (lambda: timm.create_model("nat_cifar", backend="cuda"), "backend must be one of"),
    (lambda: timm.create_model("nat_cifar", kernel_size=6), "kernel_size must be a positive odd"),
    (lambda: timm.create_model("swin_cifar", attention="global"), "attention must be one of"),
    (lambda: timm.create_model("swin_cifar", depths=(2, 2), num_heads=(2,)),
     "depths and num_heads"),
    (lambda: timm.create_model("nat_cifar")(torch.randn(1, 3, 64, 64)),
     r"x must have shape \[B, 3, 32, 32\]"),
], ids=["pretrained", "patch", "attn_drop", "layout", "backend", "kernel",
        "attention", "depths", "input"])
def test_bad_arguments_raise_naming_the_argument(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_importing_the_library_does_not_import_timm():
    code = "import sys, hilbertattn, hilbertattn.nn; assert 'timm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bias_tables_are_excluded_from_weight_decay():
    model = timm.create_model("hwt_cifar")
    names = model.no_weight_decay()
    assert names and all(n.endswith("relative_position_bias_table") for n in names)
    assert len(names) == sum(len(stage) for stage in model.stages) - 2  # blocks, not mergers
