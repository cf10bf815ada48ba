"""Images per second of every method on one model, in one run, as ratios to Integrated Gradients (50 steps).

    python benchmarks/speed.py --model efficientnet_lite0 --out benchmarks/results/issue21-speed-cpu.md

Rows: LTX image by image (``batch_size=1``) and batched (``--batch`` images finetuned together), pLTX,
GradCAM, IIA, DIX and Captum's IG with 50 steps (internal batch 25), each on the same ``--n`` images of
``--track`` (targets: the model's predictions) on the inputs' device (CUDA when there is one). Every
method but batched LTX is called on one image at a time, as the benchmarks time it; batched LTX is
called on ``--batch`` images at a time. Each row starts with one untimed call. Peak memory: on CUDA,
``torch.cuda.max_memory_allocated`` during the row; on CPU, the rise of the process' peak resident
set (``VmHWM``, reset before each row) over its size before the row.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from typing import Any

import torch

from captum_ltx import methods
from captum_ltx.benchmark.tracks import create_track
from captum_ltx.models import create_model

from _output import emit  # benchmarks/_output.py: a script's own folder is on sys.path

EXPLAINERS = {"efficientnet_lite0": "checkpoints/efficientnet_lite0-ltx", "fashion_vit": "checkpoints/fashion_vit-ltx",
              "fashion_cnn": "checkpoints/fashion_cnn-ltx"}


def rows(explainer: str, batch: int, ltx_options: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any], int]]:
    """Row name -> (registry method, options, images per call)."""
    ltx = {"explainer": explainer, **ltx_options}
    return {
        "ltx (image by image)": ("ltx", {**ltx, "batch_size": 1}, 1),
        f"ltx ({batch} images together)": ("ltx", {**ltx, "batch_size": batch}, batch),
        "pltx": ("pltx", {"explainer": explainer}, 1),
        "gradcam": ("gradcam", {}, 1),
        "iia": ("iia", {}, 1),
        "dix": ("dix", {}, 1),
        "ig (50 steps)": ("ig", {"n_steps": 50, "internal_batch_size": 25}, 1),
    }


class PeakMemory:
    """Peak memory of the work inside the block, in MB."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.mb = device, float("nan")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/clear_refs"):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set
            self.before = _status_kb("VmRSS")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif os.path.exists("/proc/self/clear_refs"):
            self.mb = (_status_kb("VmHWM") - self.before) / 1024


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def time_row(method: Any, x: torch.Tensor, targets: torch.Tensor, per_call: int) -> tuple[float, float]:
    """(images per second, peak MB) of ``method`` over ``x``, ``per_call`` images per call."""
    method.attribute(x[:per_call], target=targets[:per_call])  # untimed: first-call set-up
    with PeakMemory(x.device) as peak:
        start = time.perf_counter()
        for i in range(0, len(x), per_call):
            method.attribute(x[i : i + per_call], target=targets[i : i + per_call])
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        seconds = time.perf_counter() - start
    return len(x) / seconds, peak.mb


def main(argv: list[str] | None = None) -> None:
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0", choices=sorted(EXPLAINERS))
    parser.add_argument("--track", default="imagenet-masks")
    parser.add_argument("--split", default="val")
    parser.add_argument("--n", type=int, default=8, help="images per row (a multiple of --batch)")
    parser.add_argument("--batch", type=int, default=8, help="images finetuned together in the batched LTX row")
    parser.add_argument("--ltx-options", default="{}", help="JSON: LTX options over the checkpoint's recorded finetuning")
    parser.add_argument("--rows", default=None, help="comma-separated row names to run, e.g. 'ltx (image by image),gradcam' (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="markdown file for the table")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/speed.py"] + (sys.argv[1:] if argv is None else argv))
    device = torch.device(args.device)
    model = create_model(args.model).eval().to(device)
    samples = create_track(args.track, model, split=args.split, n=args.n)
    x = torch.stack([s.image for s in samples]).to(device)
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    table = rows(EXPLAINERS[args.model], args.batch, json.loads(args.ltx_options))
    wanted = args.rows.split(",") if args.rows else list(table)
    results: dict[str, tuple[float, float]] = {}
    for name in wanted:
        registry_name, options, per_call = table[name]
        results[name] = time_row(methods.create(registry_name, model, **options), x, targets, per_call)
        print(f"{name}: {results[name][0]:.3f} images/s, peak {results[name][1]:.0f} MB", flush=True)
    reference = results.get("ig (50 steps)", (float("nan"), 0))[0]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    lines = [
        f"# Speed on {args.model} ({device.type}: {where})", "",
        f"Made by `{command}` (torch {torch.__version__}). {len(x)} images of `{args.track}` {args.split}, targets: "
        "the model's predictions. LTX: the checkpoint's recorded finetuning" + (f" with {args.ltx_options}" if args.ltx_options != "{}" else "") + ".", "",
        "| method | images/s ↑ | seconds per image ↓ | images/s ÷ IG-50's | peak memory (MB) |", "|---|---|---|---|---|",
    ]
    for name, (rate, mb) in results.items():
        ratio = f"{rate / reference:.2f}" if "ig (50 steps)" in results else "- (IG not run)"
        lines.append(f"| {name} | {rate:.3f} | {1 / rate:.3f} | {ratio} | {mb:.0f} |")
    text = "\n".join(lines) + "\n"
    emit(text, args.out)


if __name__ == "__main__":
    main()
