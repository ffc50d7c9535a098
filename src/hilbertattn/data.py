"""In-memory image data sets for training, with augmentation done in batches on the device.

Three sources, all held as uint8 ``[N, H, W, C]`` tensors so that a batch is one gather:

- a ``.npz`` of JPEG files (CIFAR-10 as shipped here): arrays ``{split}_jpeg`` (all files
  concatenated), ``{split}_offsets`` (``[n + 1]``), ``{split}_labels`` for ``split`` in
  ``train``/``test``, optional ``classes``. Decoded once with PIL (threads) and cached as ``.npy``;
- a folder of IDX files (Fashion-MNIST, MNIST): ``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
  optionally ``.gz``;
- an image folder with ``train/`` and ``val/`` subfolders of one folder per class (read with
  ``torchvision.datasets.ImageFolder``), resized to a common size and cached like the JPEGs.

Pillow and torchvision (decoding, image folders, resizing) are imported where they are used.

``BatchLoader`` cuts one split into batches on the training device: a permutation drawn from
``(seed, epoch)`` (the same on every process, each process taking its own shard), random crops
with zero padding and horizontal flips as a single gather, normalisation.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["Split", "ImageDataset", "load_dataset", "subset", "decode_jpegs", "read_idx",
           "resize_images", "derive_seed", "random_crop_flip", "normalize", "BatchLoader", "default_cache_dir"]

IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
STATS_IMAGES = 10_000  # training images used to estimate the channel mean and std


@dataclass(frozen=True)
class Split:
    """One split: ``images`` uint8 ``[N, H, W, C]``, ``labels`` int64 ``[N]``."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, H, W, C], got {self.images.dtype} "
                             f"{list(self.images.shape)}")
        if self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must have shape [{self.images.shape[0]}], got "
                             f"{list(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image data set held in memory, both splits."""

    name: str
    classes: tuple[str, ...]
    train: Split
    test: Split

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train.images.shape[1:3])

    @property
    def channels(self) -> int:
        return self.train.images.shape[3]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and standard deviation of the training images scaled to [0, 1],
        estimated on about ``STATS_IMAGES`` of them evenly spread over the split (which may be
        sorted by class)."""
        step = max(1, len(self.train) // STATS_IMAGES)
        pixels = self.train.images[::step].reshape(-1, self.channels).double() / 255
        return pixels.mean(0).tolist(), pixels.std(0).tolist()


def default_cache_dir() -> Path:
    """``$HILBERTATTN_CACHE``, else ``$XDG_CACHE_HOME/hilbertattn``, else
    ``~/.cache/hilbertattn``."""
    if "HILBERTATTN_CACHE" in os.environ:
        return Path(os.environ["HILBERTATTN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hilbertattn"


def load_dataset(path: str | Path, cache_dir: str | Path | None = None,
                 img_size: int | None = None, limit_train: int | None = None,
                 limit_test: int | None = None, workers: int | None = None) -> ImageDataset:
    """Load the data set at ``path`` (format chosen from what is there, see the module doc).

    Args:
        cache_dir: where decoded JPEG arrays are cached (default ``default_cache_dir()``).
        img_size: resize every image (shorter side, antialiased) and centre-crop it to
            ``img_size x img_size``; without it, the images of an image folder must all have one
            size already.
        limit_train, limit_test: keep that many images of each split, a random subset that is
            the same in every run (see ``subset``).
        workers: threads decoding images (default: all cores).
    """
    path = Path(path)
    for name, limit in (("limit_train", limit_train), ("limit_test", limit_test)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise ValueError(f"{name} must be a positive int or None, got {limit!r}")
    if not path.exists():
        raise ValueError(f"data path {str(path)!r} does not exist")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    limits = {"train": limit_train, "test": limit_test}
    if img_size is not None and (isinstance(img_size, bool) or not isinstance(img_size, int)
                                 or img_size < 1):
        raise ValueError(f"img_size must be a positive int or None, got {img_size!r}")
    if path.is_dir() and (path / "train").is_dir() and (path / "val").is_dir():
        return _load_image_folder(path, cache_dir, img_size, limits, workers)
    if path.is_file() and path.suffix == ".npz":
        data = _load_jpeg_npz(path, cache_dir, limits, workers)
    elif path.is_dir() and _idx_file(path, IDX_FILES["train"][0]) is not None:
        data = _load_idx_folder(path, limits)
    else:
        raise ValueError(
        f"data path {str(path)!r} is none of: a .npz of JPEGs (train_jpeg, train_offsets, ...), "
        f"a folder of IDX files (train-images-idx3-ubyte[.gz], ...), a folder with train/ and "
        f"val/ class subfolders")
    if img_size is None or data.image_size == (img_size, img_size):
        return data
    return ImageDataset(data.name, data.classes, *(
        Split(resize_images(split.images, img_size), split.labels)
        for split in (data.train, data.test)))


def resize_images(images: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """uint8 ``[N, H, W, C]`` -> ``[N, size, size, C]``: shorter side resized to ``size``
    (bilinear, antialiased), then centre-cropped."""
    from torchvision.transforms.v2.functional import center_crop, resize

    parts = [center_crop(resize(part.permute(0, 3, 1, 2), [size], antialias=True), [size])
             for part in images.split(chunk)]
    return torch.cat(parts).permute(0, 2, 3, 1).contiguous()


# ----------------------------------------------------------------------------------------------
# JPEG npz
# ----------------------------------------------------------------------------------------------


def subset(total: int, limit: int | None) -> np.ndarray:
    """Indices of the images a ``limit`` keeps out of ``total``: all of them without a limit (or
    one at least ``total``), else ``limit`` indices drawn at random with a fixed seed (data sets
    are often sorted by class, so the first ``limit`` would not do), ascending."""
    if limit is None or limit >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(0).permutation(total)[:limit])


def _decode_all(decode, indices: np.ndarray, workers: int | None) -> np.ndarray:
    """``decode(i)`` -> uint8 ``[H, W, C]`` for each of ``indices``, on threads (PIL releases the
    GIL while decoding), stacked into ``[len(indices), H, W, C]``; all must share one shape."""
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        images = list(pool.map(decode, indices.tolist(), chunksize=256))
    if not images:
        raise ValueError("no images to decode")
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ValueError(f"images have different shapes {sorted(shapes)[:4]}; pass img_size "
                         f"(--img-size) to resize them to one")
    return np.stack(images)


def decode_jpegs(jpeg: np.ndarray, offsets: np.ndarray, indices: np.ndarray,
                 workers: int | None = None) -> np.ndarray:
    """JPEG files ``indices`` of ``jpeg`` (uint8, files concatenated; file ``i`` is
    ``jpeg[offsets[i]:offsets[i + 1]]``) as uint8 RGB ``[len(indices), H, W, 3]``."""

    from PIL import Image

    def decode(i: int) -> np.ndarray:
        data = jpeg[offsets[i]:offsets[i + 1]].tobytes()
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    return _decode_all(decode, indices, workers)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _cached_decode(cache_file: Path, indices: np.ndarray, total: int, decode) -> np.ndarray:
    """Decoded images ``indices`` (out of ``total``): read from ``cache_file`` when it exists;
    otherwise decoded with ``decode(indices)``, and cached if that was all of them."""
    if cache_file.exists():
        return np.array(np.load(cache_file, mmap_mode="r")[indices])
    images = decode(indices)
    if len(indices) == total:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.tmp.npy")
        np.save(partial, images)
        partial.replace(cache_file)  # atomic: concurrent readers never see half a file
    return images


def _load_jpeg_npz(path: Path, cache_dir: Path, limits: dict, workers: int | None
                   ) -> ImageDataset:
    with np.load(path) as archive:
        missing = [f"{s}_{k}" for s in ("train", "test") for k in ("jpeg", "offsets", "labels")
                   if f"{s}_{k}" not in archive.files]
        if missing:
            raise ValueError(f"data file {str(path)!r} lacks the arrays {missing}")
        digest = _file_digest(path)
        splits = {}
        for split in ("train", "test"):
            offsets = archive[f"{split}_offsets"]
            labels = archive[f"{split}_labels"]
            total = len(labels)
            if len(offsets) != total + 1:
                raise ValueError(f"data file {str(path)!r}: {split}_offsets must have "
                                 f"{total + 1} entries, has {len(offsets)}")

            def decode(indices: np.ndarray, split=split, offsets=offsets) -> np.ndarray:
                return decode_jpegs(archive[f"{split}_jpeg"], offsets, indices, workers)

            keep = subset(total, limits[split])
            cache_file = cache_dir / f"{path.stem}-{digest}-{split}.npy"
            images = _cached_decode(cache_file, keep, total, decode)
            splits[split] = Split(torch.from_numpy(images),
                                  torch.from_numpy(labels[keep].astype(np.int64)))
        classes = (tuple(str(c) for c in archive["classes"]) if "classes" in archive.files
                   else _numbered_classes(splits["train"].labels))
    return ImageDataset(path.stem, classes, splits["train"], splits["test"])


def _numbered_classes(labels: Tensor) -> tuple[str, ...]:
    return tuple(str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0))


# ----------------------------------------------------------------------------------------------
# IDX folder
# ----------------------------------------------------------------------------------------------


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally gzipped) of unsigned bytes as a uint8 array of its shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{str(path)!r} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{str(path)!r}: header says {shape}, holds {body.size} values")
    return body.reshape(shape)


def _load_idx_folder(folder: Path, limits: dict) -> ImageDataset:
    splits = {}
    for split, (image_stem, label_stem) in IDX_FILES.items():
        files = [_idx_file(folder, stem) for stem in (image_stem, label_stem)]
        if None in files:
            raise ValueError(f"data folder {str(folder)!r} lacks {image_stem}[.gz] or "
                             f"{label_stem}[.gz]")
        images, labels = (read_idx(f) for f in files)
        keep = subset(len(labels), limits[split])
        images = images[keep]
        if images.ndim == 3:
            images = images[..., None]  # greyscale: one channel
        splits[split] = Split(torch.from_numpy(images),
                              torch.from_numpy(labels[keep].astype(np.int64)))
    return ImageDataset(folder.name, _numbered_classes(splits["train"].labels), splits["train"],
                        splits["test"])


# ----------------------------------------------------------------------------------------------
# Image folder
# ----------------------------------------------------------------------------------------------


def _load_image_folder(folder: Path, cache_dir: Path, img_size: int | None, limits: dict,
                       workers: int | None) -> ImageDataset:
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import center_crop, resize

    def decode(file: str) -> np.ndarray:
        with Image.open(file) as image:
            image = image.convert("RGB")
            if img_size is not None:
                image = center_crop(resize(image, img_size), img_size)
            return np.asarray(image)

    splits, classes = {}, None
    for split, sub in (("train", "train"), ("test", "val")):
        listing = ImageFolder(str(folder / sub))
        if classes is not None and listing.classes != classes:
            raise ValueError(f"data folder {str(folder)!r}: train/ and val/ have different "
                             f"classes")
        classes = listing.classes
        files = [file for file, _ in listing.samples]
        key = hashlib.sha256(repr((img_size, [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns)
                                              for f in files])).encode()).hexdigest()[:16]
        cache_file = cache_dir / f"{folder.name}-{key}-{split}.npy"
        keep = subset(len(files), limits[split])
        images = _cached_decode(cache_file, keep, len(files),
                                lambda indices: _decode_all(lambda i: decode(files[i]), indices,
                                                            workers))
        labels = torch.tensor(listing.targets, dtype=torch.int64)[keep]
        splits[split] = Split(torch.from_numpy(images), labels)
    return ImageDataset(folder.name, tuple(classes), splits["train"], splits["test"])


# ----------------------------------------------------------------------------------------------
# Batches on the device
# ----------------------------------------------------------------------------------------------


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer ``keys`` (e.g. seed, epoch, rank)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def random_crop_flip(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Random ``H x W`` crops of the zero-padded images, each flipped horizontally with
    probability 1/2, as one gather. ``images``: uint8 ``[B, H, W, C]`` -> same shape."""
    b, h, w, _ = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (0, 0, padding, padding, padding, padding))
    top, left = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=device)
    flip = torch.rand(b, generator=generator, device=device) < 0.5
    rows = top[:, None] + torch.arange(h, device=device)
    cols = left[:, None] + torch.arange(w, device=device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    return padded[torch.arange(b, device=device)[:, None, None], rows[:, :, None],
                  cols[:, None, :]]


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 ``[B, H, W, C]`` -> float32 ``[B, C, H, W]``, ``(x / 255 - mean) / std`` per
    channel (``mean``, ``std``: ``[C]``)."""
    x = images.permute(0, 3, 1, 2).float().div_(255)
    return x.sub_(mean[:, None, None]).div_(std[:, None, None])


class BatchLoader:
    """Batches ``(x float [B, C, H, W], y int64 [B])`` of one split on ``device``.

    Training (``train=True``): each epoch is a permutation drawn from ``(seed, epoch)``, the
    same on every process; process ``rank`` takes every ``world_size``-th sample of it, the last
    ``len % world_size`` samples dropped so that all processes run the same number of steps; the
    images are randomly cropped (zero padding ``padding``) and flipped with a generator seeded
    from ``(seed, epoch, rank)``. Evaluation: the split in order, every sample seen once across
    the processes. The last batch may be shorter.

    The images live on ``device`` when ``keep_on_device`` (a batch is then a device gather),
    otherwise in pinned host memory, copied per batch.
    """

    def __init__(self, split: Split, batch_size: int, device: torch.device | str,
                 mean: list[float], std: list[float], *, train: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, padding: int = 4,
                 keep_on_device: bool = True) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.device = torch.device(device)
        self.images = split.images.to(self.device) if keep_on_device else split.images
        self.labels = split.labels.to(self.device)
        self.mean = torch.tensor(mean, device=self.device)
        self.std = torch.tensor(std, device=self.device)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.rank, self.world_size, self.padding = rank, world_size, padding
        self.epoch = 0
        self.generator = torch.Generator(device=self.device)

    @property
    def num_samples(self) -> int:
        """Samples this process sees per epoch."""
        n = len(self.labels)
        if self.train:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> Tensor:
        n = len(self.labels)
        if not self.train:
            return torch.arange(self.rank, n, self.world_size)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(
            derive_seed(self.seed, self.epoch)))
        return order[self.rank:self.num_samples * self.world_size:self.world_size]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        self.generator.manual_seed(derive_seed(self.seed, self.epoch, self.rank))
        indices = self._indices().to(self.images.device)
        for start in range(0, len(indices), self.batch_size):
            batch = indices[start:start + self.batch_size]
            images = self.images[batch]
            if images.device.type == "cpu" and self.device.type != "cpu":  # data kept on the host
                images = images.pin_memory() if self.device.type == "cuda" else images
                images = images.to(self.device, non_blocking=True)
            if self.train:
                images = random_crop_flip(images, self.padding, self.generator)
            yield normalize(images, self.mean, self.std), self.labels[batch.to(self.device)]
