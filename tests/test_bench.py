"""``hilbertattn bench`` on the CPU: the run end to end, its JSON, the floors, the baselines'
correctness and the option errors. No timing is asserted."""

import json
import math

import matplotlib.image
import pytest
import torch

from hilbertattn import Layout, Neighborhood, Window, block_plan
from hilbertattn.bench import (MIN_REPS, METHODS, ModelSpec, PatternSpec, Problem, UnclampedBox,
                               Variant, memory_floor_bytes, time_fn)
from hilbertattn.cli import main

from spec import dense_attention, window2d_mask

CPU = ["--device", "cpu", "--no-progress"]


def _run(tmp_path, *argv) -> dict:
    path = tmp_path / "bench.json"
    assert main(["bench", *CPU, "--json", str(path), *argv]) == 0
    return json.loads(path.read_text())


def _check_entry(entry: dict) -> None:
    assert entry["status"] == "ok", entry
    for key in ("median_ms", "min_ms", "max_ms", "setup_ms"):
        assert math.isfinite(entry[key]) and entry[key] > 0
    assert entry["min_ms"] <= entry["median_ms"] <= entry["max_ms"]
    assert entry["reps"] == 2


def test_bench_end_to_end_json(tmp_path):
    data = _run(tmp_path, "--cases", "window", "--cases", "neighborhood", "--grid", "16", "16",
                "--heads", "1", "--reps", "2", "--warmup", "0",
                "--methods", "sdpa,swin,flex-rowmajor,flex,reference")
    meta = data["meta"]
    for key in ("device", "torch", "triton", "commit", "command", "date"):
        assert key in meta
    assert meta["torch"] == torch.__version__ and meta["copy_bandwidth_bytes_per_s"] > 0
    assert data["options"]["cases"] == ["window", "neighborhood"]

    rows = {(r["case"], r["method"]): r for r in data["rows"]}
    assert set(rows) == {(c, m) for c in ("window", "neighborhood")
                         for m in ("sdpa", "swin", "flex-rowmajor", "flex", "reference")}
    for (case, method), r in rows.items():
        assert r["grid"] == [16, 16] and r["tokens"] == 256 and r["heads"] == 1
        if method == "swin" and case == "neighborhood":
            assert not r["applies"] and r["fwd"]["status"] == "skipped"
            continue
        _check_entry(r["fwd"])
        if method.startswith("flex"):  # FlexAttention has no CPU backward
            assert r["fwd+bwd"]["status"] == "skipped"
            assert "backward" in r["fwd+bwd"]["reason"]
        else:
            _check_entry(r["fwd+bwd"])
        floor = r["memory_floor_ms"]["fwd"]
        assert floor > 0 and r["memory_floor_share"]["fwd"] == pytest.approx(
            floor / r["fwd"]["median_ms"])

    for case in ("window", "neighborhood"):
        dense = rows[case, "sdpa"]["fwd"]["median_ms"]
        ref = rows[case, "reference"]
        assert ref["speedup"]["sdpa"]["fwd"] == pytest.approx(dense / ref["fwd"]["median_ms"])
        assert ref["speed_of_light_ms"]["fwd"] == pytest.approx(dense * ref["density"])
        fwd, both = ref["fwd"]["median_ms"], ref["fwd+bwd"]["median_ms"]
        assert ref["backward_over_forward"] == pytest.approx((both - fwd) / fwd)
        assert "flex" in ref["speedup"] and "flex-rowmajor" in ref["speedup"]
    assert "swin" in rows["window", "flex"]["speedup"]


def test_density_in_json_is_block_plans(tmp_path):
    data = _run(tmp_path, "--cases", "neighborhood,slide", "--grid", "24", "20", "--heads", "1",
                "--reps", "2", "--warmup", "0", "--passes", "fwd", "--methods",
                "flex-rowmajor,reference")
    rows = {(r["case"], r["method"]): r for r in data["rows"]}
    hilbert, rowmajor = Layout((24, 20)), Layout((24, 20), "rowmajor")
    expected = {
        ("neighborhood", "reference"): Neighborhood(hilbert, 13),
        ("neighborhood", "flex-rowmajor"): Neighborhood(rowmajor, 13),
        ("slide", "flex-rowmajor"): UnclampedBox(rowmajor, 13),
    }
    for key, pattern in expected.items():
        plan = block_plan(pattern, 480, 128, 128)
        assert rows[key]["density"] == plan.density
        assert rows[key]["partial_share"] == plan.partial_share
    assert "fwd+bwd" not in rows["slide", "reference"]


def test_memory_floor_formula():
    problem = Problem("neighborhood", (256, 256), 1, 8, 64, torch.bfloat16, torch.device("cpu"))
    # q, k, v read and o written once: 4 x 65,536 tokens x 8 heads x 64 x 2 bytes.
    assert memory_floor_bytes(problem, backward=False) == 268_435_456
    # plus dO read and dQ, dK, dV written.
    assert memory_floor_bytes(problem, backward=True) == 2 * 268_435_456
    fp32 = Problem("x", (10, 6), 3, 2, 32, torch.float32, torch.device("cpu"))
    assert memory_floor_bytes(fp32, backward=False) == 4 * 3 * 2 * 60 * 32 * 4


@pytest.mark.parametrize("shift", [0, 3])
def test_swin_partition_equals_exact_windows(shift):
    """Swin's roll + partition + SDPA computes the exact (shifted) 2-D windows."""
    grid, window = (14, 21), 7
    problem = Problem("t", grid, 2, 3, 8, torch.float64, torch.device("cpu"))
    variant = Variant("w", PatternSpec("window", 49), PatternSpec("window2d", window, shift))
    fn, pattern = METHODS["swin"].build(problem, variant)
    q, k, v = (torch.randn(problem.shape, dtype=torch.float64) for _ in range(3))
    coords = Layout(grid, "rowmajor").coords
    mask = window2d_mask(coords, (window, window), (shift, shift))
    expected = dense_attention(q, k, v, mask, 8 ** -0.5)
    torch.testing.assert_close(fn(q, k, v), expected)


def test_unclamped_box_mask_and_plan():
    layout = Layout((11, 9), "hilbert")
    box = UnclampedBox(layout, 5)
    n = layout.numel
    c = layout.coords
    expected = ((c[:, None, 0] - c[None, :, 0]).abs() <= 2) & (
        (c[:, None, 1] - c[None, :, 1]).abs() <= 2)
    i = torch.arange(n)
    assert torch.equal(box.mask(i[:, None], i[None, :], n), expected)
    # The plan's tiles equal the tiles of the dense mask, full and partial.
    plan = block_plan(box, n, 16, 12)
    tiles = torch.zeros(plan.n_q_tiles, plan.n_kv_tiles, dtype=torch.int8)
    for a in range(plan.n_q_tiles):
        for b in range(plan.n_kv_tiles):
            block = expected[a * 16:(a + 1) * 16, b * 12:(b + 1) * 12]
            tiles[a, b] = 2 if block.all() else int(block.any())
    assert torch.equal(plan.dense(), tiles)
    with pytest.raises(ValueError, match="size must be odd"):
        UnclampedBox(layout, 4)


def test_time_fn_rotates_inputs_and_caps_slow_calls():
    calls = []

    def fn(i):
        calls.append(i)
        torch.ones(1)

    t = time_fn(fn, torch.device("cpu"), reps=6, warmup=2, max_seconds=math.inf)
    assert calls == list(range(1 + 2 + 6)) and t.reps == 6
    assert 0 < t.min_ms <= t.median_ms <= t.max_ms and t.setup_ms > 0

    def slow(i):
        import time
        time.sleep(0.01)

    t = time_fn(slow, torch.device("cpu"), reps=20, warmup=1, max_seconds=0.02)
    assert t.reps == MIN_REPS


def test_sweep_plot(tmp_path):
    png = tmp_path / "sweep.png"
    data = _run(tmp_path, "--sweep", "16,24", "--plot", str(png), "--heads", "1", "--reps", "2",
                "--warmup", "0", "--methods", "sdpa,reference")
    assert {tuple(r["grid"]) for r in data["rows"]} == {(16, 16), (24, 24)}
    assert {r["case"] for r in data["rows"]} == {"neighborhood"}
    assert all("fwd+bwd" not in r for r in data["rows"])  # sweeps time the forward by default
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100


def test_models_throughput(tmp_path):
    data = _run(tmp_path, "--models", "swin_tiny,hwt_tiny", "--img-sizes", "64",
                "--model-batch", "2", "--reps", "2", "--warmup", "0")
    rows = {(r["model"], r["mode"]): r for r in data["models"]}
    assert set(rows) == {(m, mode) for m in ("swin_tiny", "hwt_tiny")
                         for mode in ("inference", "training")}
    for r in rows.values():
        assert r["status"] == "ok" and r["batch"] == 2 and r["img_size"] == 64
        assert r["cuda_graph"] is False and r["compiled"] is False
        assert math.isfinite(r["images_per_s"]) and r["images_per_s"] > 0
    for mode in ("inference", "training"):
        hwt, swin = rows["hwt_tiny", mode], rows["swin_tiny", mode]
        assert hwt["baseline"] == "swin_tiny" and swin["baseline"] is None
        assert hwt["speedup"] == pytest.approx(hwt["images_per_s"] / swin["images_per_s"])
    assert data["rows"] == []


def test_json_keeps_the_measurements_of_a_run_stopped_early(tmp_path, monkeypatch, capsys):
    import hilbertattn.bench as bench

    measure = bench.measure_model
    calls = []

    def stop_at_the_second(*args, **kwargs):
        calls.append(args[0].label)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a timeout's signal would stop the run
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench, "measure_model", stop_at_the_second)
    path = tmp_path / "bench.json"
    with pytest.raises(KeyboardInterrupt):
        main(["bench", *CPU, "--json", str(path), "--models", "hwt_tiny", "--img-sizes", "64",
              "--model-batch", "1", "--reps", "1", "--warmup", "0"])
    data = json.loads(path.read_text())
    assert [(r["model"], r["mode"], r["status"]) for r in data["models"]] == [
        ("hwt_tiny", "inference", "ok")]
    log = capsys.readouterr().out
    assert "1/2 hwt_tiny at 64x64: inference" in log and "2/2 hwt_tiny at 64x64: training" in log


def test_models_throughput_compiled(tmp_path, monkeypatch):
    # Inductor takes minutes on a small CPU: the option's wiring is checked with the eager
    # compiler backend (Dynamo still traces every step, fullgraph or not).
    calls = []

    def compile_eagerly(model, **kwargs):
        calls.append(("compile", kwargs))
        return torch_compile(model, backend="eager", **kwargs)

    def reset():
        calls.append(("reset", {}))
        torch_reset()

    torch_compile, torch_reset = torch.compile, torch.compiler.reset
    monkeypatch.setattr(torch, "compile", compile_eagerly)
    monkeypatch.setattr(torch.compiler, "reset", reset)
    data = _run(tmp_path, "--models", "hwt_tiny", "--img-sizes", "64", "--model-batch", "2",
                "--reps", "2", "--warmup", "0", "--compile")
    # Inference and training, each compiled afresh for its one shape: models of one class share
    # Dynamo's caches, so without the reset later models would recompile with dynamic shapes.
    assert calls == [("reset", {}), ("compile", {"dynamic": False})] * 2
    for r in data["models"]:
        assert r["status"] == "ok" and r["compiled"] is True and r["images_per_s"] > 0


def test_model_baselines():
    assert ModelSpec.parse("nat_tiny:hilbert").baseline() == ModelSpec("nat_tiny")
    assert ModelSpec.parse("hnt_tiny").baseline() == ModelSpec("nat_tiny")
    assert ModelSpec.parse("hwt_tiny").baseline() == ModelSpec("swin_tiny")
    assert ModelSpec.parse("swin_tiny").baseline() is None


@pytest.mark.parametrize("argv, option", [
    (["--cases", "window,nope"], "--cases"),
    (["--methods", "flash"], "--methods"),
    (["--grid", "0", "16"], "--grid"),
    (["--heads", "0"], "--heads"),
    (["--head-dim", "-1"], "--head-dim"),
    (["--reps", "0"], "--reps"),
    (["--warmup", "-1"], "--warmup"),
    (["--max-seconds", "0"], "--max-seconds"),
    (["--passes", "bwd"], "--passes"),
    (["--sweep", "16,x"], "--sweep"),
    (["--sweep", "16", "--grid", "16", "16"], "--grid"),
    (["--models", "resnet50"], "--models"),
    (["--models", "nat_tiny:zigzag"], "--models"),
    (["--models", "--sweep", "16"], "--sweep"),
    (["--models", "--cases", "window"], "--cases"),
    (["--model-batch", "4"], "--model-batch"),
    (["--cuda-graphs"], "--cuda-graphs"),
    (["--models", "--cuda-graphs", "--device", "cpu"], "--cuda-graphs"),
    (["--compile"], "--compile"),
    (["--img-sizes", "0"], "--img-sizes"),
    (["--device", "tpu"], "--device"),
])
def test_bad_options_name_the_option(argv, option):
    with pytest.raises(ValueError, match=option):
        main(["bench", "--no-progress", *argv])


def test_bad_choice_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--dtype", "int8"])
    assert "--dtype" in capsys.readouterr().err


def test_pattern_spec_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind must be one of"):
        PatternSpec("ring", 3)
    assert isinstance(PatternSpec("window", 64).build((16, 16), "hilbert"), Window)
