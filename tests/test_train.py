import gzip
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hilbertattn.cli.train as train_cli
from hilbertattn.cli import main
from hilbertattn.data import (BatchLoader, Split, load_dataset, normalize, random_crop_flip,
                              read_idx, subset)

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_jpeg.npz"
CLASSES = 4


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _pil_decode(jpeg: np.ndarray, offsets: np.ndarray, i: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes()))
                      .convert("RGB"))


@pytest.fixture(scope="module")
def synthetic_npz(tmp_path_factory) -> Path:
    """A CIFAR-format npz: 32x32 JPEGs whose colour depends on the class, plus noise."""
    rng = np.random.default_rng(0)
    arrays = {"classes": np.array([f"class{c}" for c in range(CLASSES)])}
    for split, n in (("train", 96), ("test", 32)):
        labels = rng.integers(0, CLASSES, n).astype(np.uint8)
        files = []
        for label in labels:
            colour = np.array([60 * label, 255 - 60 * label, 128])
            image = np.clip(colour + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            files.append(np.frombuffer(_jpeg(image), np.uint8))
        arrays[f"{split}_jpeg"] = np.concatenate(files)
        arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(f) for f in files])])
        arrays[f"{split}_labels"] = labels
    path = tmp_path_factory.mktemp("data") / "synthetic.npz"
    np.savez(path, **arrays)
    return path


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def test_npz_decode_matches_pil_and_cache(synthetic_npz, tmp_path):
    raw = np.load(synthetic_npz)
    data = load_dataset(synthetic_npz, cache_dir=tmp_path)
    assert data.classes == tuple(f"class{c}" for c in range(CLASSES))
    for split, part in (("train", data.train), ("test", data.test)):
        assert part.images.shape == (len(raw[f"{split}_labels"]), 32, 32, 3)
        for i in range(len(part)):
            expected = _pil_decode(raw[f"{split}_jpeg"], raw[f"{split}_offsets"], i)
            assert np.array_equal(part.images[i].numpy(), expected)
        assert part.labels.tolist() == raw[f"{split}_labels"].tolist()
    assert len(list(tmp_path.glob("synthetic-*-train.npy"))) == 1  # all decoded: cached
    limited = load_dataset(synthetic_npz, cache_dir=tmp_path, limit_train=10, limit_test=5)
    keep = subset(96, 10)
    assert len(limited.train) == 10 and len(limited.test) == 5
    assert torch.equal(limited.train.images, data.train.images[keep])
    assert torch.equal(limited.train.labels, data.train.labels[keep])


@pytest.mark.skipif(not CIFAR.exists(), reason="CIFAR-10 npz not present")
def test_cifar_decode_matches_pil(tmp_path):
    data = load_dataset(CIFAR, cache_dir=tmp_path, limit_train=6, limit_test=4)
    raw = np.load(CIFAR)
    assert data.classes[0] == "airplane" and data.num_classes == 10
    for split, part, total in (("train", data.train, 50_000), ("test", data.test, 10_000)):
        indices = subset(total, len(part))
        assert len(set(indices.tolist())) == len(part)
        for k, i in enumerate(indices):
            expected = _pil_decode(raw[f"{split}_jpeg"], raw[f"{split}_offsets"], i)
            assert expected.shape == (32, 32, 3)
            assert np.array_equal(part.images[k].numpy(), expected)
            assert part.labels[k] == raw[f"{split}_labels"][i]


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_folder(tmp_path):
    rng = np.random.default_rng(1)
    sizes = {"train": 20, "t10k": 8}
    images = {prefix: rng.integers(0, 256, (n, 28, 28)) for prefix, n in sizes.items()}
    labels = {"train": np.arange(20) % 10, "t10k": np.arange(8)}
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images[prefix])
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels[prefix])
    assert np.array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), images["t10k"])
    data = load_dataset(tmp_path, limit_train=12)
    assert data.channels == 1 and data.image_size == (28, 28) and data.num_classes == 10
    keep = subset(20, 12)
    assert np.array_equal(data.train.images[..., 0].numpy(), images["train"][keep])
    assert data.train.labels.tolist() == labels["train"][keep].tolist()
    assert np.array_equal(data.test.images[..., 0].numpy(), images["t10k"])
    resized = load_dataset(tmp_path, img_size=32)
    assert resized.train.images.shape == (20, 32, 32, 1) and resized.image_size == (32, 32)
    assert resized.train.images.dtype == torch.uint8


def test_image_folder(tmp_path):
    rng = np.random.default_rng(2)
    for sub, count in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / sub / cls).mkdir(parents=True)
            for k in range(count):
                size = (20 + 4 * k, 16)  # different sizes: resized to img_size
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
                    tmp_path / sub / cls / f"{k}.png")
    with pytest.raises(ValueError, match="img-size"):
        load_dataset(tmp_path, cache_dir=tmp_path / "cache")
    data = load_dataset(tmp_path, cache_dir=tmp_path / "cache", img_size=12)
    assert data.classes == ("cat", "dog")
    assert data.train.images.shape == (6, 12, 12, 3) and data.test.images.shape == (4, 12, 12, 3)
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_random_crop_flip_is_a_padded_crop():
    images = torch.randint(1, 256, (16, 8, 10, 3), dtype=torch.uint8)
    out = random_crop_flip(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (0, 0, 2, 2, 2, 2))
    for b in range(len(images)):
        crops = [crop for top in range(5) for left in range(5)
                 for crop in (padded[b, top:top + 8, left:left + 10],
                              padded[b, top:top + 8, left:left + 10].flip(1))]
        assert any(torch.equal(out[b], crop) for crop in crops)
    assert not torch.equal(out, images)  # 16 images: some were moved or flipped


def test_normalize():
    images = torch.randint(0, 256, (2, 4, 5, 3), dtype=torch.uint8)
    mean, std = torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.2, 0.3, 0.4])
    out = normalize(images, mean, std)
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float32
    expected = (images.permute(0, 3, 1, 2).double() / 255 - mean.double()[:, None, None]) \
        / std.double()[:, None, None]
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6)


def test_batch_loader_shards():
    n = 23
    split = Split(torch.zeros(n, 4, 4, 3, dtype=torch.uint8), torch.arange(n))  # label = id
    kwargs = dict(device="cpu", mean=[0.5] * 3, std=[0.25] * 3, seed=3, world_size=2)
    seen = {}
    for train in (True, False):
        for rank in range(2):
            loader = BatchLoader(split, 5, train=train, rank=rank, **kwargs)
            loader.set_epoch(1)
            batches = list(loader)
            assert len(batches) == len(loader)
            assert all(x.shape[1:] == (3, 4, 4) and len(x) == len(y) for x, y in batches)
            seen[train, rank] = torch.cat([y for _, y in batches]).tolist()
    assert len(seen[True, 0]) == len(seen[True, 1]) == n // 2
    assert not set(seen[True, 0]) & set(seen[True, 1])
    assert sorted(seen[False, 0] + seen[False, 1]) == list(range(n))
    loader = BatchLoader(split, 5, train=True, **{**kwargs, "world_size": 1})
    loader.set_epoch(1)
    first = torch.cat([y for _, y in loader])
    loader.set_epoch(2)
    assert sorted(first.tolist()) == list(range(n))
    assert not torch.equal(first, torch.cat([y for _, y in loader]))  # reshuffled


def test_bad_data_path_names_the_argument(tmp_path):
    for bad in (tmp_path / "missing.npz", tmp_path):
        with pytest.raises(ValueError, match="--data"):
            main(["train", "--data", str(bad), "--out", str(tmp_path / "out"), "--quiet"])


def test_parse_model_args_and_schedule():
    assert train_cli.parse_model_args(["depths=(1, 2)", "layout=hilbert", "drop_rate=0.1"]) == {
        "depths": (1, 2), "layout": "hilbert", "drop_rate": 0.1}
    with pytest.raises(ValueError, match="--model-arg"):
        train_cli.parse_model_args(["depth"])
    factor = train_cli.cosine_with_warmup(total_steps=110, warmup_steps=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.5) and factor(110) == pytest.approx(0.0)


# ----------------------------------------------------------------------------------------------
# Training runs (a tiny Hilbert window transformer on the synthetic data, on the CPU)
# ----------------------------------------------------------------------------------------------


def _train_args(data: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "hwt_cifar", "--model-arg", "embed_dim=16",
            "--model-arg", "depths=(1, 1)", "--model-arg", "num_heads=(1, 2)",
            "--model-arg", "window=4", "--data", str(data), "--cache-dir", str(cache),
            "--epochs", "2", "--batch-size", "32", "--warmup-epochs", "1", "--lr", "2e-3",
            "--device", "cpu", "--quiet", "--out", str(out), *extra]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_smoke_and_exact_resume(synthetic_npz, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    straight = tmp_path / "straight"
    assert main(_train_args(synthetic_npz, cache, straight)) == 0
    rows = _metrics(straight)
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "train_images_per_s",
                    "eval_images_per_s", "epoch_time_s", "lr"):
            assert math.isfinite(row[key]), key
        assert 0 <= row["train_acc"] <= 1 and 0 <= row["test_acc"] <= 1
        assert row["train_images_per_s"] > 0 and row["eval_images_per_s"] > 0
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["model"] == "hwt_cifar" and summary["params"] > 0
    assert summary["data"]["train_images"] == 96 and summary["data"]["test_images"] == 32
    assert summary["final_test_acc"] == rows[-1]["test_acc"]
    assert summary["best_test_acc"] == max(row["test_acc"] for row in rows)
    assert summary["torch"] == torch.__version__ and summary["device"]
    assert summary["args"]["epochs"] == 2

    # The same run, interrupted during epoch 2 (after its checkpoint of epoch 1), then resumed.
    interrupted = tmp_path / "interrupted"
    evaluate = train_cli.evaluate
    calls = []

    def crash_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train_cli, "evaluate", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        main(_train_args(synthetic_npz, cache, interrupted))
    monkeypatch.setattr(train_cli, "evaluate", evaluate)
    checkpoint = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert [row["epoch"] for row in _metrics(interrupted)] == [1]
    main(_train_args(synthetic_npz, cache, interrupted, "--resume",
                     str(interrupted / "checkpoint.pt")))
    resumed = _metrics(interrupted)
    assert [row["epoch"] for row in resumed] == [1, 2]
    for a, b in zip(rows, resumed):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (a["epoch"], key)

    # Evaluating the final checkpoint reproduces the last epoch's test metrics.
    main(_train_args(synthetic_npz, cache, tmp_path / "eval", "--eval-only", "--resume",
                     str(straight / "checkpoint.pt")))
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["epoch"] == 2
    assert result["test_loss"] == pytest.approx(rows[-1]["test_loss"], rel=1e-6)
    assert result["test_acc"] == rows[-1]["test_acc"]

    with pytest.raises(ValueError, match="--seed"):  # resuming needs the same recipe
        main(_train_args(synthetic_npz, cache, tmp_path / "other", "--seed", "1", "--resume",
                         str(straight / "checkpoint.pt")))


def test_train_compiled_matches_eager(synthetic_npz, tmp_path, monkeypatch):
    # Dynamo's eager backend (inductor takes minutes here): the traced graphs run the same ops,
    # so the metrics match the plain run; checkpoints keep the plain model's parameter names.
    compiled = []

    def compile_eagerly(model, **kwargs):
        compiled.append(model)
        return torch_compile(model, backend="eager", **kwargs)

    torch_compile = torch.compile
    cache = tmp_path / "cache"
    main(_train_args(synthetic_npz, cache, tmp_path / "eager"))
    monkeypatch.setattr(torch, "compile", compile_eagerly)
    main(_train_args(synthetic_npz, cache, tmp_path / "compiled", "--compile"))
    assert len(compiled) == 2  # the training and the evaluation model
    for a, b in zip(_metrics(tmp_path / "eager"), _metrics(tmp_path / "compiled"), strict=True):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["epoch"], key)
    plain = torch.load(tmp_path / "eager" / "checkpoint.pt", weights_only=True)["model"]
    state = torch.load(tmp_path / "compiled" / "checkpoint.pt", weights_only=True)["model"]
    assert state.keys() == plain.keys()


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_idx():
    data = load_dataset(FASHION, limit_train=100, limit_test=50)
    assert data.train.images.shape == (100, 28, 28, 1) and data.test.images.shape == (50, 28, 28, 1)
    assert data.num_classes == 10 and data.train.images.max() > 200
    full = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    assert full.shape == (10_000,)
    assert data.test.labels.tolist() == full[subset(10_000, 50)].tolist()
