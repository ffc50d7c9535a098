"""``hilbertattn train``: train and evaluate an image classifier (any timm model, the hilbertattn
models included) on CIFAR-10, Fashion-MNIST or an image folder.

Needs timm, tqdm and Pillow (imported when training starts, so that the other subcommands run
without them). The recipe: AdamW (no weight decay on norms, biases and the parameters a model lists in
``no_weight_decay()``), cosine learning rate with linear warm-up stepped per batch, label
smoothing, bf16 autocast on CUDA (fp16 with a gradient scaler on request, full precision on the
CPU), random crops and flips done on the device. Every epoch evaluates, appends one JSON line to
``OUT/metrics.jsonl`` and saves ``OUT/checkpoint.pt`` (and ``OUT/best.pt``, the weights of the
best epoch); the end writes ``OUT/summary.json``.

A line of ``metrics.jsonl``: ``epoch``, ``lr`` (at the epoch's first step), ``train_loss`` (the
label-smoothed objective), ``train_acc`` (on the augmented batches), ``test_loss``
(cross-entropy), ``test_acc``, ``train_images_per_s``, ``eval_images_per_s`` (all processes
together), ``train_time_s``, ``eval_time_s``, ``epoch_time_s``.

Random numbers (shuffle order, augmentation, dropout and drop-path) are re-seeded at the start of
every epoch from ``(seed, epoch, rank)``, so a run resumed from a checkpoint continues exactly as
the uninterrupted run would have, on any number of processes, without storing generator states.

Several GPUs: ``torchrun --nproc_per_node=N --no-python hilbertattn train ...`` (one process per
GPU, PyTorch DDP; ``--batch-size`` is the global batch, split evenly; rank 0 writes the files).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..data import BatchLoader, ImageDataset, derive_seed, load_dataset

if TYPE_CHECKING:
    from tqdm import tqdm

AMP_MODES = ("auto", "bf16", "fp16", "none")
DEVICE_DATA_SHARE = 0.25  # keep a split on the GPU when it takes at most this share of memory


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train an image classifier (timm / hilbertattn models)",
                       description="Trains and evaluates an image classifier; writes "
                       "metrics.jsonl, checkpoint.pt and summary.json to --out.")
    p.add_argument("--model", default="hwt_cifar", help="timm model name (default: hwt_cifar)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra keyword for timm.create_model, VALUE a Python literal or a string "
                        "(repeatable), e.g. --model-arg drop_path_rate=0.1")
    p.add_argument("--data", required=True,
                   help=".npz of JPEGs (CIFAR-10), folder of IDX files (Fashion-MNIST) or folder "
                        "with train/ and val/ class subfolders")
    p.add_argument("--img-size", type=int, default=None,
                   help="resize (shorter side) and centre-crop the images to this size, e.g. 32 "
                        "for 28x28 Fashion-MNIST in a model that needs even grids")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where decoded images are cached (default: ~/.cache/hilbertattn)")
    p.add_argument("--limit-train", type=int, default=None, metavar="N",
                   help="train on a fixed random subset of N images")
    p.add_argument("--limit-test", type=int, default=None, metavar="N",
                   help="evaluate on a fixed random subset of N images")
    p.add_argument("--workers", type=int, default=None, help="image decoding threads")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256, help="global batch size (default 256)")
    p.add_argument("--eval-batch-size", type=int, default=None,
                   help="global evaluation batch size (default: 2 x --batch-size)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=5.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm to this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", choices=AMP_MODES, default="auto",
                   help="autocast dtype; auto: bf16 on CUDA, none on the CPU")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--compile", action="store_true",
                   help="run training and evaluation through torch.compile (the first steps "
                        "compile; checkpoints hold the plain model's weights)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: runs/MODEL-seedSEED)")
    p.add_argument("--resume", type=Path, default=None,
                   help="checkpoint to continue from (or to evaluate with --eval-only)")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate the --resume checkpoint on the test split and write eval.json")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------------------------
# Processes, models, schedule
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    """This process's place in the run: ``rank`` of ``world_size``, on ``device``."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes."""
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()


def init_process(device: str | None) -> Process:
    """Joins the process group when started by torchrun (``WORLD_SIZE > 1``)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Process(0, 1, torch.device(device or ("cuda" if torch.cuda.is_available()
                                                      else "cpu")))
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return Process(dist.get_rank(), world_size,
                   torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"))


def parse_model_args(items: list[str]) -> dict:
    """``["depth=4", "layout=hilbert"]`` -> ``{"depth": 4, "layout": "hilbert"}``: values are
    Python literals where they parse as one, strings otherwise."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--model-arg must look like KEY=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def build_model(name: str, data: ImageDataset, model_args: dict) -> nn.Module:
    """``timm.create_model(name, num_classes=..., img_size=..., **model_args)``, the hilbertattn
    models registered; ``in_chans`` is passed for images that are not RGB."""
    import timm

    import hilbertattn.models  # noqa: F401  (registers the hilbertattn models with timm)

    if not timm.is_model(name):
        raise ValueError(f"--model {name!r} is not a registered timm model "
                         f"(see timm.list_models())")
    h, w = data.image_size
    kwargs = {"num_classes": data.num_classes, "img_size": h if h == w else (h, w)}
    if data.channels != 3:
        kwargs["in_chans"] = data.channels
    return timm.create_model(name, pretrained=False, **{**kwargs, **model_args})


def cosine_with_warmup(total_steps: int, warmup_steps: int):
    """Learning-rate factor per step: linear from ``1 / warmup_steps`` to 1 over the warm-up,
    then a half cosine down to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "none"
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"--amp fp16 needs a CUDA device, the device is {device}")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux names the CPU model here; platform.processor() is often empty
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype).removeprefix("torch.") if dtype else "none"


def git_commit() -> dict | None:
    """Commit of the source tree this package runs from, and whether it has local changes."""
    here = Path(__file__).resolve().parent

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=here, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------------------------
# One epoch
# ----------------------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _epoch_totals(loss_sum: Tensor, correct: Tensor, loader: BatchLoader, process: Process,
                  start: float) -> tuple[float, float, float, float]:
    """Mean loss, accuracy, images/s and seconds of a pass that began at ``start``, over all
    processes (waits for the device first, so the time covers the queued work)."""
    _synchronize(process.device)
    elapsed = time.perf_counter() - start
    loss_total, correct_total, seen = process.sum(
        [loss_sum.item(), correct.item(), float(loader.num_samples)])
    return loss_total / seen, correct_total / seen, seen / elapsed, elapsed


def _progress(total: int, description: str, enabled: bool) -> tqdm:
    from tqdm import tqdm

    return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


def train_one_epoch(model: nn.Module, loader: BatchLoader, optimizer, scheduler, scaler,
                    criterion: nn.Module, amp: torch.dtype | None, clip_grad: float | None,
                    process: Process, bar: tqdm) -> dict:
    """One pass over this process's shard; returns the loss, accuracy and throughput summed
    over all processes."""
    model.train()
    device = process.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    _synchronize(device)
    start = time.perf_counter()
    for step, (x, y) in enumerate(loader):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_grad is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        bar.update()
        if step % 25 == 0 and not bar.disable:  # .item() waits for the GPU: not every step
            bar.set_postfix(loss=f"{loss.item():.3f}")
    loss, acc, rate, elapsed = _epoch_totals(loss_sum, correct, loader, process, start)
    return {"train_loss": loss, "train_acc": acc, "train_images_per_s": rate,
            "train_time_s": elapsed}


@torch.inference_mode()
def evaluate(model: nn.Module, loader: BatchLoader, amp: torch.dtype | None, process: Process,
             bar: tqdm) -> dict:
    """Cross-entropy and accuracy over the whole test split (all processes together)."""
    model.eval()
    device = process.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    _synchronize(device)
    start = time.perf_counter()
    for x, y in loader:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        bar.update()
    loss, acc, rate, elapsed = _epoch_totals(loss_sum, correct, loader, process, start)
    return {"test_loss": loss, "test_acc": acc, "eval_images_per_s": rate, "eval_time_s": elapsed}


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def _save_atomic(obj, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save(obj, partial)
    partial.replace(path)


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _json_args(args: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if k != "func"}


def _mean_after_first(rows: list[dict], key: str) -> float:
    """Mean of ``key`` over the epochs after the first (which pays for compilation and
    warm-up), or the first epoch's value if there is only one."""
    values = [row[key] for row in rows]
    return sum(values[1:]) / len(values[1:]) if len(values) > 1 else values[0]


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


def _load_data(args: argparse.Namespace, process: Process) -> ImageDataset:
    if not Path(args.data).exists():
        raise ValueError(f"--data {args.data!r}: no such file or folder")

    def load() -> ImageDataset:
        try:
            return load_dataset(args.data, args.cache_dir, args.img_size, args.limit_train,
                                args.limit_test, args.workers)
        except ValueError as err:
            raise ValueError(f"--data {args.data!r}: {err}") from err

    # The first process decodes and fills the cache; the others then read it.
    data = load() if process.is_main else None
    process.barrier()
    return data if data is not None else load()


def _loaders(data: ImageDataset, args: argparse.Namespace, process: Process, mean, std
             ) -> tuple[BatchLoader, BatchLoader]:
    eval_batch = args.eval_batch_size or 2 * args.batch_size
    for name, value in (("--batch-size", args.batch_size), ("--eval-batch-size", eval_batch)):
        if value < 1 or value % process.world_size:
            raise ValueError(f"{name} must be a positive multiple of the number of processes "
                             f"({process.world_size}), got {value}")
    on_device = True
    if process.device.type == "cuda":
        data_bytes = data.train.images.numel() + data.test.images.numel()
        total = torch.cuda.get_device_properties(process.device).total_memory
        on_device = data_bytes <= DEVICE_DATA_SHARE * total
    common = dict(device=process.device, mean=mean, std=std, seed=args.seed, rank=process.rank,
                  world_size=process.world_size, keep_on_device=on_device)
    return (BatchLoader(data.train, args.batch_size // process.world_size, train=True, **common),
            BatchLoader(data.test, eval_batch // process.world_size, train=False, **common))


def _load_checkpoint(path: Path, args: argparse.Namespace, model_args: dict) -> dict:
    if not path.is_file():
        raise ValueError(f"--resume {str(path)!r}: no such checkpoint file")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    # Evaluating needs the same network; continuing training also the same data order.
    wanted = {"model": args.model, "model-arg": model_args}
    saved = {"model": checkpoint["args"]["model"], "model-arg": checkpoint["model_args"]}
    if not args.eval_only:
        wanted.update({"seed": args.seed, "batch-size": args.batch_size})
        saved.update({"seed": checkpoint["args"]["seed"],
                      "batch-size": checkpoint["args"]["batch_size"]})
    for key, value in wanted.items():
        if saved[key] != value:
            raise ValueError(f"--resume {str(path)!r} was trained with --{key} {saved[key]!r}, "
                             f"this run asks for {value!r}")
    return checkpoint


def run(args: argparse.Namespace) -> int:
    for name in ("epochs", "limit_train", "limit_test", "workers", "img_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.eval_only and args.resume is None:
        raise ValueError("--eval-only needs --resume CHECKPOINT")
    model_args = parse_model_args(args.model_arg)
    process = init_process(args.device)
    try:
        return _run(args, model_args, process)
    finally:
        if process.world_size > 1:
            dist.destroy_process_group()


def _run(args: argparse.Namespace, model_args: dict, process: Process) -> int:
    out = args.out or Path("runs") / f"{args.model}-seed{args.seed}"
    checkpoint = _load_checkpoint(args.resume, args, model_args) if args.resume else None
    amp = autocast_dtype(args.amp, process.device)
    verbose = process.is_main and not args.quiet
    if process.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")

    data = _load_data(args, process)
    mean, std = (checkpoint["mean"], checkpoint["std"]) if checkpoint else data.channel_stats()
    train_loader, test_loader = _loaders(data, args, process, mean, std)
    torch.manual_seed(args.seed)
    model = build_model(args.model, data, model_args).to(process.device)
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
    params = sum(p.numel() for p in model.parameters())
    if verbose:
        h, w = data.image_size
        print(f"{data.name}: {len(data.train)} train / {len(data.test)} test images "
              f"{h}x{w}x{data.channels}, {data.num_classes} classes; {args.model}: "
              f"{params / 1e6:.2f}M parameters; {process.world_size} x "
              f"{device_name(process.device)}, autocast {dtype_name(amp)}")

    if process.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if args.eval_only:
        with _progress(len(test_loader), "eval", verbose) as bar:
            result = evaluate(model, test_loader, amp, process, bar)
        result = {"checkpoint": str(args.resume), "epoch": checkpoint["epoch"], **result}
        if process.is_main:
            (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(result))
        return 0

    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(model, "adamw", lr=args.lr, weight_decay=args.weight_decay)
    steps = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(
        args.epochs * steps, max(1, round(args.warmup_epochs * steps))))
    scaler = torch.amp.GradScaler(process.device.type, enabled=amp == torch.float16)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    train_model = (nn.parallel.DistributedDataParallel(
        model, device_ids=[process.device.index] if process.device.type == "cuda" else None)
        if process.world_size > 1 else model)
    eval_model = model
    if args.compile:
        train_model, eval_model = torch.compile(train_model), torch.compile(model)

    metrics_file = out / "metrics.jsonl"
    first_epoch, best = 1, {"test_acc": -1.0, "epoch": 0}
    if checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        first_epoch, best = checkpoint["epoch"] + 1, checkpoint["best"]
        if first_epoch > args.epochs:
            raise ValueError(f"--resume {str(args.resume)!r} has trained {checkpoint['epoch']} "
                             f"epochs already, --epochs {args.epochs} asks for no more")
        if process.is_main:  # drop lines of epochs after the checkpoint (an interrupted save)
            kept = [row for row in read_metrics(metrics_file) if row["epoch"] < first_epoch]
            metrics_file.write_text("".join(json.dumps(row) + "\n" for row in kept))
    elif process.is_main and metrics_file.exists():
        metrics_file.unlink()

    for epoch in range(first_epoch, args.epochs + 1):
        torch.manual_seed(derive_seed(args.seed, epoch, process.rank))  # dropout, drop-path
        train_loader.set_epoch(epoch)
        with _progress(len(train_loader), f"epoch {epoch}/{args.epochs}", verbose) as bar:
            row = {"epoch": epoch, "lr": scheduler.get_last_lr()[0],
                   **train_one_epoch(train_model, train_loader, optimizer, scheduler, scaler,
                                     criterion, amp, args.clip_grad, process, bar)}
        if not math.isfinite(row["train_loss"]):
            raise FloatingPointError(f"training loss is {row['train_loss']} in epoch {epoch}")
        with _progress(len(test_loader), "eval", verbose) as bar:
            row.update(evaluate(eval_model, test_loader, amp, process, bar))
        row["epoch_time_s"] = row["train_time_s"] + row["eval_time_s"]
        if row["test_acc"] > best["test_acc"]:
            best = {"test_acc": row["test_acc"], "epoch": epoch}
            if process.is_main:
                _save_atomic(model.state_dict(), out / "best.pt")
        if process.is_main:
            with metrics_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            _save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                          "epoch": epoch, "best": best, "mean": mean, "std": std,
                          "model_args": model_args, "args": _json_args(args)},
                         out / "checkpoint.pt")
        if verbose:
            print(f"epoch {epoch}/{args.epochs}  train loss {row['train_loss']:.4f} acc "
                  f"{row['train_acc']:.2%}  test loss {row['test_loss']:.4f} acc "
                  f"{row['test_acc']:.2%}  {row['train_images_per_s']:.0f} img/s train, "
                  f"{row['eval_images_per_s']:.0f} img/s eval  {row['epoch_time_s']:.1f} s")

    if process.is_main:
        rows = read_metrics(metrics_file)
        summary = {
            "model": args.model, "model_args": model_args, "params": params,
            "data": {"name": data.name, "path": str(args.data), "train_images": len(data.train),
                     "test_images": len(data.test), "image_size": list(data.image_size),
                     "channels": data.channels, "classes": list(data.classes)},
            "epochs": len(rows), "best_test_acc": best["test_acc"], "best_epoch": best["epoch"],
            "final_test_acc": rows[-1]["test_acc"], "final_test_loss": rows[-1]["test_loss"],
            "train_images_per_s": _mean_after_first(rows, "train_images_per_s"),
            "eval_images_per_s": _mean_after_first(rows, "eval_images_per_s"),
            "train_time_s": sum(row["train_time_s"] for row in rows),
            "device": device_name(process.device), "world_size": process.world_size,
            "autocast": dtype_name(amp),
            "torch": torch.__version__, "python": platform.python_version(),
            "git": git_commit(), "args": _json_args(args),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if not args.quiet:
            print(f"best test accuracy {best['test_acc']:.2%} (epoch {best['epoch']}); "
                  f"wrote {out / 'summary.json'}")
    return 0
