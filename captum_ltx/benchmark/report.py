"""Summaries of a benchmark run: a Markdown table with 95% bootstrap intervals and curve plots."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any

import numpy as np

# metric name -> (True if higher is better, what it is)
METRICS: dict[str, tuple[bool, str]] = {
    "pos_auc": (False, "positive perturbation AUC, top-1 accuracy (x100, 0-90)"),
    "neg_auc": (True, "negative perturbation AUC, top-1 accuracy (x100, 0-90)"),
    "del_auc": (
        False,
        "deletion in the LTX/IIA protocol: positive perturbation, target probability (x100, 0-90)",
    ),
    "ins_auc": (
        True,
        "insertion in the LTX/IIA protocol: negative perturbation, target probability (x100, 0-90)",
    ),
    "rise_deletion": (False, "RISE deletion AUC, target probability (0-1)"),
    "rise_insertion": (True, "RISE insertion AUC onto a blurred canvas, target probability (0-1)"),
    "adp": (False, "average drop on image x map (%)"),
    "pic": (True, "increase in confidence on image x map (% of images)"),
    "mufidelity": (
        True,
        "MuFidelity: correlation of the map's mass on 200 random fifths of a 9x9 grid with the "
        "probability drop when they are blacked out (-1 to 1)",
    ),
    "pixel_accuracy": (True, "map thresholded at its mean vs mask"),
    "miou": (True, "mean IoU of object and background"),
    "map": (True, "mean average precision of object and background"),
    "pointing_game": (True, "map maximum inside the mask"),
    "mass_inside": (True, "share of positive attribution inside the mask"),
    "randomisation": (
        False,
        "Spearman correlation with the map of a model with re-initialised top layers",
    ),
    "class_sensitivity": (False, "Spearman correlation with the map of another class"),
    "seconds": (False, "seconds per explanation"),
}

PERCENT_SCALE = {"pos_auc", "neg_auc", "del_auc", "ins_auc", "adp", "pic"}

CURVE_PANELS = (
    ("pos_auc", "POS: top-1 accuracy, most relevant removed", "removed fraction"),
    ("neg_auc", "NEG: top-1 accuracy, least relevant removed", "removed fraction"),
    ("del_auc", "deletion (LTX/IIA): probability, most relevant removed", "removed fraction"),
    ("ins_auc", "insertion (LTX/IIA): probability, least relevant removed", "removed fraction"),
    ("rise_deletion", "RISE deletion", "deleted fraction"),
    ("rise_insertion", "RISE insertion (blurred canvas)", "inserted fraction"),
)


def bootstrap_interval(
    values: np.ndarray, *, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean (resampling images)."""
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def read_records(path: str, missing_ok: bool = False) -> list[dict[str, Any]]:
    """The records of a JSONL results file, skipping a last line cut short by an interruption."""
    if missing_ok and not os.path.isfile(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def latest_records(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """One record per (image, method), at the place of the pair's first: the one with the most
    metrics (a record completed with a new metric over the one it completes), the later on a tie."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        key = (r["image"], r["method"])
        if key not in latest or len(r["metrics"]) >= len(latest[key]["metrics"]):
            latest[key] = r
    return latest


def load_results(out_dir: str) -> list[dict[str, Any]]:
    """The records of a run, one per (image, method) (:func:`latest_records`)."""
    return list(latest_records(read_records(os.path.join(out_dir, "results.jsonl"))).values())


def summarise(out_dir: str | os.PathLike[str], *, command: str | None = None) -> str:
    """Writes ``summary.md`` (mean and 95% bootstrap interval of each metric per method) and
    ``curves.png`` (mean curves) from ``results.jsonl``; returns the summary's path."""
    out_dir = os.fspath(out_dir)
    records = load_results(out_dir)
    with open(os.path.join(out_dir, "config.json")) as f:
        config = json.load(f)
    methods = list(dict.fromkeys(r["method"] for r in records))
    values = metric_values(records)
    present = [m for m in METRICS if any(m in values[meth] for meth in methods)]
    images = {r["image"] for r in records}
    lines = [
        f"# {config['model']} on {config['track']}",
        "",
        f"{len(images)} images, {len(methods)} methods, every method on the same images and targets. "
        "Each cell: mean [95% bootstrap interval over images] (n images). Arrows: which direction is better.",
    ]
    commands = _commands(out_dir, command)
    if commands:
        lines += [
            "",
            "Made by (methods added to the run in turn):" if len(commands) > 1 else "Made by:",
        ]
        lines += [f"- `{c}`" for c in commands]
    lines += [
        "",
        "| method | " + " | ".join(f"{m} {'↑' if METRICS[m][0] else '↓'}" for m in present) + " |",
    ]
    lines.append("|---" * (len(present) + 1) + "|")
    lines += [f"| {meth} | " + " | ".join(_cells(values[meth], present)) + " |" for meth in methods]
    lines += ["", "Metrics:"] + [
        f"- `{m}` ({'higher' if METRICS[m][0] else 'lower'} is better): {METRICS[m][1]}"
        for m in present
    ]
    path = os.path.join(out_dir, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    _plot_curves(records, methods, os.path.join(out_dir, "curves.png"))
    return path


def against_reference(
    out_dir: str | os.PathLike[str], reference: str, metrics: list[str] | None = None
) -> dict[str, dict[str, str]]:
    """Where each method's mean falls against ``reference``'s 95% bootstrap interval, per metric of
    ``metrics`` (default: every metric the reference has but the sanity checks and seconds):
    ``"better"`` or ``"worse"`` beyond it in the metric's direction, else ``"inside"``; a metric the
    method lacks, or that the reference has on fewer than two images (no interval), is left out."""
    values = metric_values(load_results(os.fspath(out_dir)))
    if reference not in values:
        raise ValueError(f"`reference`: no method {reference!r} in {os.fspath(out_dir)}")
    skip = {"randomisation", "class_sensitivity", "seconds"}
    metrics = metrics or [m for m in METRICS if m in values[reference] and m not in skip]
    bounds = {
        m: bootstrap_interval(np.asarray(values[reference][m], dtype=float))
        for m in metrics
        if len(values[reference][m]) >= 2
    }
    verdicts: dict[str, dict[str, str]] = {}
    for method, by_metric in values.items():
        if method == reference:
            continue
        verdicts[method] = {}
        for m, (low, high) in bounds.items():
            if m not in by_metric:
                continue
            mean = float(np.mean(by_metric[m]))
            above, below = mean > high, mean < low
            if above or below:
                verdicts[method][m] = "better" if above == METRICS[m][0] else "worse"
            else:
                verdicts[method][m] = "inside"
    return verdicts


def metric_values(records: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Each method's per-image values of each metric, methods in the records' order."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        for k, v in r["metrics"].items():
            values[r["method"]][k].append(v)
    return values


def format_value(metric: str, value: float) -> str:
    """A value of ``metric`` as the summaries print it (1 decimal on the x100 scales, else 3)."""
    return f"{value:.{1 if metric in PERCENT_SCALE else 3}f}"


def _cells(values: dict[str, list[float]], metrics: list[str]) -> list[str]:
    """One method's row: each metric's mean [95% bootstrap interval] (n images)."""
    cells = []
    for m in metrics:
        v = np.asarray(values.get(m, []), dtype=float)
        if len(v) == 0:
            cells.append("")
        elif len(v) < 2:  # no interval from one image
            cells.append(f"{format_value(m, v.mean())} ({len(v)})")
        else:
            low, high = bootstrap_interval(v)
            cells.append(
                f"{format_value(m, v.mean())} [{format_value(m, low)}, {format_value(m, high)}] "
                f"({len(v)})"
            )
    return cells


def _commands(out_dir: str, command: str | None) -> list[str]:
    """Every command that wrote to this run, oldest first (``commands.txt``)."""
    path = os.path.join(out_dir, "commands.txt")
    commands = open(path).read().splitlines() if os.path.isfile(path) else []
    if command and command not in commands:
        commands.append(command)
        with open(path, "w") as f:
            f.write("\n".join(commands) + "\n")
    return commands


def _plot_curves(records: list[dict[str, Any]], methods: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    # tab10 repeats after ten methods; tab20 plus line styles keeps every method distinguishable
    styles = {
        m: (plt.cm.tab20(i % 20), ("-", "--", ":")[i // 20 % 3]) for i, m in enumerate(methods)
    }
    for ax, (key, title, xlabel) in zip(axes.flat, CURVE_PANELS):
        for meth in methods:
            curves = [
                r["curves"][key]
                for r in records
                if r["method"] == meth and key in r.get("curves", {})
            ]
            if not curves:
                continue
            mean = np.mean(curves, axis=0)
            end = 0.9 if key in ("pos_auc", "neg_auc", "del_auc", "ins_auc") else 1.0
            ax.plot(
                np.linspace(0, end, len(mean)),
                mean,
                label=meth,
                color=styles[meth][0],
                linestyle=styles[meth][1],
            )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
