"""Table and learning curves of the CIFAR-10 runs written by ``run.sh``.

    python experiments/cifar10/summarize.py RUNS_DIR [--out experiments/cifar10]

Reads every ``RUNS_DIR/*/summary.json`` and ``metrics.jsonl``; writes ``results.json`` (all
numbers, per run and per model), ``results.md`` (the table) and ``curves.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

LABELS = {  # run folder prefix -> label in the table, in table order
    "swin_cifar": "Swin (exact 2-D windows)",
    "hwt_cifar": "HWT (Hilbert windows)",
    "nat_cifar": "NAT (exact 7x7 NA, row-major)",
    "nat_cifar_hilbert": "NAT in the Hilbert layout (same function)",
    "hnt_cifar": "HNT (49 tokens along the curve)",
}


def load(runs: Path) -> dict[str, list[dict]]:
    by_model = defaultdict(list)
    for summary_file in sorted(runs.glob("*/summary.json")):
        run = summary_file.parent
        summary = json.loads(summary_file.read_text())
        summary["curve"] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().split("\n")
                            if line.strip()]
        by_model[run.name.rsplit("-s", 1)[0]].append(summary)
    return by_model


def table(by_model: dict[str, list[dict]]) -> tuple[str, dict]:
    rows = ["| model | params | seeds | test acc. (mean ± half-range) | train img/s | eval img/s |",
            "| --- | --- | --- | --- | --- | --- |"]
    numbers = {}
    for key, label in LABELS.items():
        runs = by_model.get(key, [])
        if not runs:
            continue
        acc = [100 * r["final_test_acc"] for r in runs]
        mean = statistics.fmean(acc)
        spread = (max(acc) - min(acc)) / 2
        train = statistics.fmean(r["train_images_per_s"] for r in runs)
        evals = statistics.fmean(r["eval_images_per_s"] for r in runs)
        numbers[key] = dict(label=label, params=runs[0]["params"], seeds=len(runs), acc=acc,
                            acc_mean=mean, acc_half_range=spread, train_images_per_s=train,
                            eval_images_per_s=evals)
        rows.append(f"| {label} | {runs[0]['params'] / 1e6:.2f}M | {len(runs)} | "
                    f"{mean:.2f} ± {spread:.2f} | {train:,.0f} | {evals:,.0f} |")
    return "\n".join(rows) + "\n", numbers


def plot(by_model: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (key, label), colour in zip(LABELS.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        for i, run in enumerate(by_model.get(key, [])):
            epochs = [row["epoch"] for row in run["curve"]]
            style = dict(color=colour, alpha=0.9, ls="-" if i == 0 else "--",
                         label=label if i == 0 else None)
            axes[0].plot(epochs, [row["train_loss"] for row in run["curve"]], **style)
            axes[1].plot(epochs, [100 * row["test_acc"] for row in run["curve"]], **style)
    axes[0].set(xlabel="epoch", ylabel="training loss", title="CIFAR-10 training loss")
    axes[1].set(xlabel="epoch", ylabel="test accuracy (%)", title="CIFAR-10 test accuracy")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    by_model = load(args.runs)
    if not by_model:
        raise SystemExit(f"no */summary.json under {args.runs}")
    text, numbers = table(by_model)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text)
    runs = {key: [{k: v for k, v in r.items()} for r in rs] for key, rs in by_model.items()}
    (args.out / "results.json").write_text(json.dumps(dict(summary=numbers, runs=runs), indent=1))
    plot(by_model, args.out / "curves.png")
    print(text)


if __name__ == "__main__":
    main()
