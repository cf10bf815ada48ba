"""pLTX and LTX quality on ``imagenet-masks`` val against the number of pretraining images, from one run.

    python benchmarks/tuning/learning_curve.py --out benchmarks/results/issue20-learning-curve

1. Pretrains the EfficientNet-Lite0 explainer once on class-diverse training scenes
   (``tuxpaint-scenes``: 1-3 photo stamps, every one outside the val and test classes) at a constant
   learning rate after a short warm-up, one pass over ``--images`` distinct scenes, writing a snapshot
   after each of ``--sizes`` images with the number of distinct classes the model predicted on them.
2. Scores each snapshot, and the shipped explainer, with pLTX and LTX on ``imagenet-masks`` val
   (``captum-ltx benchmark --split val``; the test split is never touched).
3. Writes ``curve.md`` (table) and ``curve.png`` (plot) under ``--out``.

With ``--install DIR`` it also copies the snapshot of the best mean rank (pLTX and LTX deletion,
insertion and mIoU on val) to ``DIR``, with this command and the pretraining command in its config.
Work goes to ``--work`` (with a copy of the explainer shipped when it started, the reference row) and
resumes when the command is run again; the val benchmark goes to ``--out``/val.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys

import numpy as np

from captum_ltx.benchmark.report import METRICS, load_results
from captum_ltx.cli import main as cli

MODEL = "efficientnet_lite0"
SHIPPED = "checkpoints/efficientnet_lite0-ltx"
FINETUNING = {"lr": 3e-5}  # the shipped explainer's recorded finetuning lr (issue 19)
COLUMNS = ("del_auc", "ins_auc", "miou", "pos_auc", "neg_auc")
RANKED = ("del_auc", "ins_auc", "miou")


def pretraining_command(args: argparse.Namespace) -> list[str]:
    return [
        "pretrain", "--model", MODEL, "--data", "tuxpaint-scenes", "--train-size", str(args.images), "--val-size", "48",
        "--epochs", "1", "--batch-size", "16", "--lr", "2e-4", "--warmup", "0.05", "--schedule", "constant",
        "--mask-weight", "10", "--target", "predicted", "--snapshots", ",".join(map(str, args.sizes)),
        "--num-workers", str(args.num_workers), "--checkpoint-dir", os.path.join(args.work, "pretraining"),
        "--out", os.path.join(args.work, "final"),
    ]


def evaluate(args: argparse.Namespace) -> str:
    """Runs (or resumes) the val benchmark of every snapshot and the shipped explainer; returns its folder."""
    explainers = {f"{n}": os.path.join(args.work, "pretraining", "snapshots", str(n)) for n in args.sizes}
    explainers["shipped"] = os.path.join(args.work, "shipped")
    if not os.path.isdir(explainers["shipped"]):  # as it was before --install replaced it
        shutil.copytree(SHIPPED, explainers["shipped"])
    options = {}
    for name, path in explainers.items():
        options[f"pltx_{name}=pltx"] = {"explainer": path}
        options[f"ltx_{name}=ltx"] = {"explainer": path, **FINETUNING}
    out = os.path.join(args.out, "val")
    cli(["benchmark", "--model", MODEL, "--track", "imagenet-masks", "--split", "val", "--n", "24", "--no-sanity",
         "--methods", ",".join(options), "--options", json.dumps(options), "--out", out])
    return out


def table(args: argparse.Namespace, val_dir: str) -> list[dict]:
    records = load_results(val_dir)
    rows = []
    for name in [str(n) for n in args.sizes] + ["shipped"]:
        row: dict = {"name": name}
        if name != "shipped":
            with open(os.path.join(args.work, "pretraining", "snapshots", name, "config.json")) as f:
                training = json.load(f)["training"]
            row.update(images=training["images"], classes=training["distinct_targets"])
        for method in ("pltx", "ltx"):
            for metric in COLUMNS:
                values = [r["metrics"][metric] for r in records if r["method"] == f"{method}_{name}={method}" and metric in r["metrics"]]
                row[f"{method}.{metric}"] = float(np.mean(values)) if values else float("nan")
        rows.append(row)
    keys = [f"{m}.{k}" for m in ("pltx", "ltx") for k in RANKED]
    for key in keys:  # rank 1 = best, over the snapshots only (the shipped row is the reference)
        higher = METRICS[key.split(".")[1]][0]
        values = [row[key] for row in rows if row["name"] != "shipped"]
        order = sorted(values, reverse=higher)
        for row in rows:
            if row["name"] != "shipped":
                row.setdefault("ranks", []).append(order.index(row[key]) + 1)
    for row in rows:
        row["mean_rank"] = float(np.mean(row["ranks"])) if "ranks" in row else float("nan")
    return rows


def write_report(args: argparse.Namespace, rows: list[dict], command: str) -> None:
    os.makedirs(args.out, exist_ok=True)
    head = "| pretraining images | distinct predicted classes | " + " | ".join(
        f"{m} {k.replace('_auc', '')} {'↑' if METRICS[k][0] else '↓'}" for m in ("pLTX", "LTX") for k in COLUMNS) + " | mean rank ↓ |"
    lines = [
        "# Learning curve: EfficientNet-Lite0 explainer on imagenet-masks val (24 images)", "",
        f"Made by `{command}`. One pretraining run over distinct `tuxpaint-scenes` training scenes, a snapshot after each "
        "size; the last row is the shipped explainer (1,600 one-stamp composites x 3 epochs, issue 19). Mean over the 24 "
        "val images; intervals are in the benchmark folder's summary. Mean rank: over pLTX and LTX deletion, insertion "
        "and mIoU, among the snapshots.", "",
        f"Pretraining command: `captum-ltx {shlex.join(pretraining_command(args))}`", "",
        held_out_share(args), "",
        head, "|" + "---|" * (head.count("|") - 1),
    ]
    for row in rows:
        cells = [f"{row.get('images', 'shipped')}", f"{row.get('classes', '-')}"]
        cells += [f"{row[f'{m}.{k}']:.3f}" if k == "miou" else f"{row[f'{m}.{k}']:.1f}" for m in ("pltx", "ltx") for k in COLUMNS]
        cells.append(f"{row['mean_rank']:.2f}" if row["name"] != "shipped" else "-")
        lines.append("| " + " | ".join(cells) + " |")
    with open(os.path.join(args.out, "curve.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(rows, os.path.join(args.out, "curve.png"))


def held_out_share(args: argparse.Namespace) -> str:
    """How often the model predicted a val or test class on the training scenes (their stamps never are one)."""
    from captum_ltx.datasets.tuxpaint import split_assets

    with open(os.path.join(args.work, "pretraining", "state.json")) as f:
        counts = {int(k): v for k, v in json.load(f)["target_counts"].items()}
    held_out = {label for split in ("val", "test") for stamp in split_assets(split)[0] for label in stamp.labels}
    share = sum(v for k, v in counts.items() if k in held_out) / sum(counts.values())
    return (f"On the {sum(counts.values())} training scenes the model predicted {len(counts)} distinct classes; "
            f"{share:.1%} of the scenes were predicted as one of the {len(held_out)} classes accepted for a val or test stamp.")


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    snaps = [r for r in rows if r["name"] != "shipped"]
    shipped = next(r for r in rows if r["name"] == "shipped")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, metric in zip(axes, RANKED):
        for method, colour in (("pltx", "tab:blue"), ("ltx", "tab:orange")):
            ax.plot([r["images"] for r in snaps], [r[f"{method}.{metric}"] for r in snaps], "o-", color=colour, label=method)
            ax.axhline(shipped[f"{method}.{metric}"], color=colour, ls=":", label=f"{method}, shipped")
        ax.set_xlabel("pretraining images (distinct classes: " + ", ".join(str(r["classes"]) for r in snaps) + ")", fontsize=7)
        ax.set_title(f"{metric} ({'higher' if METRICS[metric][0] else 'lower'} is better)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def install(args: argparse.Namespace, rows: list[dict], command: str) -> None:
    best = min((r for r in rows if r["name"] != "shipped"), key=lambda r: r["mean_rank"])
    snapshot = os.path.join(args.work, "pretraining", "snapshots", best["name"])
    with open(os.path.join(snapshot, "config.json")) as f:
        config = json.load(f)
    config["finetuning"].update(FINETUNING)
    config["command"] = (f"captum-ltx {shlex.join(pretraining_command(args))}  # then snapshot {best['name']}, chosen on val by `{command}`")
    os.makedirs(args.install, exist_ok=True)
    shutil.copy(os.path.join(snapshot, "explainer.safetensors"), os.path.join(args.install, "explainer.safetensors"))
    with open(os.path.join(args.install, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    print(f"installed snapshot {best['name']} (mean rank {best['mean_rank']:.2f}) as {args.install}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12_800, help="distinct training scenes (one pass)")
    parser.add_argument("--sizes", default="400,1600,3200,6400,12800", help="snapshot sizes (images)")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--work", default="outputs/learning-curve")
    parser.add_argument("--out", default="benchmarks/results/issue20-learning-curve")
    parser.add_argument("--install", default=None, help="copy the best snapshot to this explainer folder")
    args = parser.parse_args()
    args.sizes = [int(n) for n in args.sizes.split(",")]
    command = shlex.join(["python", "benchmarks/tuning/learning_curve.py"] + sys.argv[1:])
    if not os.path.isfile(os.path.join(args.work, "final", "config.json")):
        cli(pretraining_command(args))
    rows = table(args, evaluate(args))
    write_report(args, rows, command)
    if args.install:
        install(args, rows, command)


if __name__ == "__main__":
    main()
