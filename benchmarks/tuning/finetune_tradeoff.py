"""LTX's per-image finetuning: quality against cost on validation data, one row per way to make it cheaper.

    python benchmarks/tuning/finetune_tradeoff.py --out benchmarks/results/issue21-finetuning-val

For each shipped explainer (EfficientNet-Lite0 on ``imagenet-masks`` val, the Fashion ViT and CNN on
``fashion-two`` val; the test splits are never touched) it scores, with ``captum-ltx benchmark
--split val``, the finetuning the explainer shipped with before issue 21 (S steps at lr L, every
explainer weight: the ``reference`` row, its settings pinned in ``REFERENCE``) beside:
pLTX (no finetuning); the whole explainer at S/2 steps and 3L; the head alone (the backbone's features
computed once per image, no backward through it) at 3L, 10L and 30L, at S/2 and S/5 steps, and stopped
once its objective has not improved for 3 steps. The benchmark times each explanation while its
metrics share the CPU, so the LTX rows are timed again afterwards, one image at a time, row after row
with nothing else running. ``tradeoff.md`` gives, per row, each metric's mean and whether it is worse
than the reference row's mean beyond that row's 95% bootstrap interval. Work resumes when the command is run again.

``--record efficientnet_lite0=head_half_30lr,...`` writes the named rows' settings into each checkpoint's
``config.json["finetuning"]`` (``finetune``, ``finetune_steps``, ``lr``, ``patience``), where
``LTX(model, checkpoint)`` reads its defaults; the weights are not touched.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any

import numpy as np

from captum_ltx import Explainer
from captum_ltx.explainer import CONFIG_NAME
from captum_ltx.benchmark.report import METRICS, bootstrap_interval, load_results
from captum_ltx.cli import main as cli
from captum_ltx.ltx import DEFAULT_FINETUNE_STEPS
from captum_ltx.methods import split_label

# model -> (track, explainer checkpoint)
RUNS = {
    "efficientnet_lite0": ("imagenet-masks", "checkpoints/efficientnet_lite0-ltx"),
    "fashion_vit": ("fashion-two", "checkpoints/fashion_vit-ltx"),
    "fashion_cnn": ("fashion-two", "checkpoints/fashion_cnn-ltx"),
}
# finetuning each checkpoint recorded before issue 21 (steps, lr), all explainer weights trained
REFERENCE = {"efficientnet_lite0": (DEFAULT_FINETUNE_STEPS, 3e-5), "fashion_vit": (50, 3e-4), "fashion_cnn": (50, 3e-4)}
RECORDED_KEYS = ("finetune", "finetune_steps", "lr", "patience")
COLUMNS = ("del_auc", "ins_auc", "pos_auc", "neg_auc", "adp", "miou", "pointing_game")
# every removal and localisation metric, shown or not, is judged against the reference's interval
JUDGED = (*COLUMNS, "rise_deletion", "rise_insertion", "pic", "pixel_accuracy", "map", "mass_inside")
PEERS = ("gradcam", "dix")


def variants(steps: int, lr: float) -> dict[str, dict[str, Any]]:
    """Row name -> LTX options, relative to the reference ``steps`` and ``lr``."""
    lr = float(f"{lr:.3g}")
    return {
        "reference": {"finetune": "all", "finetune_steps": steps, "lr": lr},
        "pltx": {"finetune_steps": 0},
        "all_half_3lr": {"finetune": "all", "finetune_steps": steps // 2, "lr": float(f"{3 * lr:.3g}")},
        "head_3lr": {"finetune": "head", "lr": float(f"{3 * lr:.3g}")},
        "head_10lr": {"finetune": "head", "lr": float(f"{10 * lr:.3g}")},
        "head_30lr": {"finetune": "head", "lr": float(f"{30 * lr:.3g}")},
        "head_half_30lr": {"finetune": "head", "finetune_steps": steps // 2, "lr": float(f"{30 * lr:.3g}")},
        "head_fifth_30lr": {"finetune": "head", "finetune_steps": max(1, steps // 5), "lr": float(f"{30 * lr:.3g}")},
        "head_30lr_patience3": {"finetune": "head", "lr": float(f"{30 * lr:.3g}"), "patience": 3},
    }


def record(choices: str) -> None:
    """Writes the chosen rows' finetuning settings into the checkpoints' configs."""
    for choice in choices.split(","):
        model, _, row = choice.partition("=")
        if model not in RUNS or row not in variants(*REFERENCE[model]):
            raise SystemExit(f"`--record` expects model=row with a model of {list(RUNS)} and a row of {list(variants(1, 1.0))}, got {choice!r}")
        checkpoint = RUNS[model][1]
        config = Explainer.read_config(checkpoint).to_json()
        finetuning = {k: v for k, v in config.get("finetuning", {}).items() if k not in RECORDED_KEYS}
        config["finetuning"] = {**finetuning, **{"finetune": "all", "finetune_steps": REFERENCE[model][0]}, **variants(*REFERENCE[model])[row]}
        with open(os.path.join(checkpoint, CONFIG_NAME), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        print(f"{checkpoint}: finetuning {config['finetuning']}")


def run(model: str, args: argparse.Namespace) -> str:
    track, checkpoint = RUNS[model]
    options = {f"ltx_{name}=ltx": {"explainer": checkpoint, **opts} for name, opts in variants(*REFERENCE[model]).items()}
    out = os.path.join(args.out, model)
    cli(["benchmark", "--model", model, "--track", track, "--split", "val", "--n", str(args.n), "--no-sanity",
         "--methods", ",".join([*PEERS, *options]), "--options", json.dumps(options), "--out", out])
    return out


def timings(model: str, n: int) -> dict[str, float]:
    """Seconds per image of each row, one image at a time on the first ``n`` val images, rows in
    turn with nothing else running (the benchmark's own seconds share the CPU with its metrics)."""
    import time

    import torch

    from captum_ltx import methods
    from captum_ltx.benchmark import create_track
    from captum_ltx.models import create_model

    track, checkpoint = RUNS[model]
    net = create_model(model).eval()
    x = torch.stack([s.image for s in create_track(track, net, split="val", n=n)])
    with torch.no_grad():
        targets = net(x).argmax(dim=1)
    seconds = {}
    for name, options in variants(*REFERENCE[model]).items():
        ltx = methods.create("ltx", net, explainer=checkpoint, **options)
        ltx.attribute(x[:1], target=targets[:1])  # untimed: the first call copies the explainer
        start = time.perf_counter()
        for i in range(n):
            ltx.attribute(x[i : i + 1], target=targets[i : i + 1])
        seconds[f"ltx_{name}=ltx"] = (time.perf_counter() - start) / n
    # what head-only finetuning would save by reading the model's own features (possible only while
    # the explainer's backbone is an unchanged copy of the model): its one backbone forward per image
    explainer = ltx.explainer
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(n):
            explainer.features(x[i : i + 1])
    seconds["features"] = (time.perf_counter() - start) / n
    return seconds


def rows(model: str, out: str, timed: dict[str, float]) -> list[str]:
    records = load_results(out)
    names = [*PEERS, *(f"ltx_{name}=ltx" for name in variants(*REFERENCE[model]))]

    def values(method: str, metric: str) -> np.ndarray:
        return np.array([r["metrics"][metric] for r in records if r["method"] == method and metric in r["metrics"]], dtype=float)

    def seconds(method: str) -> float:
        return timed.get(method, float(values(method, "seconds").mean()))

    reference = "ltx_reference=ltx"
    intervals = {metric: bootstrap_interval(values(reference, metric)) for metric in JUDGED}
    lines = []
    for method in names:
        means = {metric: float(values(method, metric).mean()) for metric in JUDGED}
        worse = [m for m in JUDGED if (METRICS[m][0] and means[m] < intervals[m][0]) or (not METRICS[m][0] and means[m] > intervals[m][1])]
        cells = [f"{means[m]:.3f}" if m in ("miou", "pointing_game") else f"{means[m]:.1f}" for m in COLUMNS]
        label = split_label(method)[0].removeprefix("ltx_")
        options = variants(*REFERENCE[model]).get(label)
        cost = seconds(method)
        lines.append(
            f"| {model} | {label} | {json.dumps(options) if options is not None else '-'} | " + " | ".join(cells)
            + f" | {cost:.3f} | {cost / seconds(reference):.2f} | {', '.join(worse) if method != reference and method not in PEERS else '-'} |"
        )
    cheapest = min((m for m in timed if "head" in m), key=timed.get)
    lines.append(
        f"| {model} | (backbone features) | - | " + " | ".join("-" for _ in COLUMNS)
        + f" | {timed['features']:.3f} | {timed['features'] / seconds(reference):.2f} | the most that reusing the model's own "
        f"features saves: {timed['features'] / timed[cheapest]:.0%} of {cheapest.split('=')[0].removeprefix('ltx_')} |"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(RUNS), help=f"comma-separated, of {list(RUNS)}")
    parser.add_argument("--n", type=int, default=24, help="validation images per model")
    parser.add_argument("--timing-images", type=int, default=6, help="val images each row is timed on, rows in turn")
    parser.add_argument("--out", default="benchmarks/results/issue21-finetuning-val")
    parser.add_argument("--record", default=None, help="model=row,...: write these rows' settings into the checkpoints and stop")
    args = parser.parse_args()
    if args.record:
        record(args.record)
        return
    command = shlex.join(["python", "benchmarks/tuning/finetune_tradeoff.py"] + sys.argv[1:])
    table = []
    for model in args.models.split(","):
        out = run(model, args)
        table += rows(model, out, timings(model, args.timing_images))
    head = ("| model | row | LTX options | " + " | ".join(f"{m} {'↑' if METRICS[m][0] else '↓'}" for m in COLUMNS)
            + " | seconds ↓ | x reference | worse than reference beyond its interval |")
    text = [
        "# LTX finetuning: quality against cost on validation data", "",
        f"Made by `{command}`. Means over the first {args.n} validation images of each track. Seconds per image: LTX",
        f"rows timed one image at a time on the first {args.timing_images} of them, row after row with nothing else running;",
        "GradCAM and DIX: the benchmark's own timing. 'reference': the finetuning shipped before issue 21. The last column",
        "lists the removal and localisation metrics (shown or not: also RISE deletion/insertion, PIC, pixel accuracy, mAP, mass",
        "inside) whose mean is worse than the reference row's mean beyond that row's 95% bootstrap interval.",
        "Every interval is in the model's `summary.md`.", "",
        head, "|" + "---|" * (head.count("|") - 1), *table,
    ]
    with open(os.path.join(args.out, "tradeoff.md"), "w") as f:
        f.write("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
