"""Pretraining throughput (images/s) of the data pipelines against tensors already in memory, in one run.

Each source feeds the same pretraining (EfficientNet-Lite0, a fresh explainer, the default objective)
for ``--steps`` steps of ``--batch-size``; the sources take turns for ``--rounds`` rounds and each
reports its median, so that a slow spell of the machine hits them all alike:

- ``memory``: the scenes made beforehand, as one tensor (no data work during training);
- ``scenes``: :class:`TuxpaintScenes` made on the fly, in the training process;
- ``scenes-worker``: the same in one DataLoader worker process;
- ``folder`` / ``folder-worker``: the same scenes written as JPEG files and read back lazily through
  timm's training transforms (:func:`image_folder_for`).

Example (the committed table):

    python benchmarks/pipeline_throughput.py --out benchmarks/results/issue20-pipeline-throughput.md
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time

import torch
from torch.utils.data import TensorDataset
from torchvision.transforms.functional import to_pil_image

from captum_ltx import pretrain
from captum_ltx.datasets import ImagesAndLabels, create_dataset
from captum_ltx.models import create_model

from _output import emit  # benchmarks/_output.py: a script's own folder is on sys.path


def _sources(model: torch.nn.Module, n: int, folder: str) -> dict[str, tuple[object, int]]:
    scenes = create_dataset("tuxpaint-scenes", model, "train", length=n)
    images = torch.stack([scenes[i][0] for i in range(n)])
    for i in range(n):  # back to pixels: Lite0's normalisation is mean 0.5, std 0.5
        to_pil_image((images[i] * 0.5 + 0.5).clamp(0, 1)).save(os.path.join(folder, f"{i:05d}.jpg"), quality=95)
    files = ImagesAndLabels(create_dataset(folder, model, "train", val_size=0))
    return {
        "memory": (TensorDataset(images), 0),
        "scenes": (ImagesAndLabels(scenes), 0),
        "scenes-worker": (ImagesAndLabels(scenes), 1),
        "folder": (files, 0),
        "folder-worker": (files, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sources", default="memory,scenes,scenes-worker,folder,folder-worker", help="comma-separated sources to time")
    parser.add_argument("--out", default=None, help="markdown table to write")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0")
    n = args.steps * args.batch_size
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        sources = {name: v for name, v in _sources(model, n, folder).items() if name in args.sources.split(",")}
        # untimed: the first pretraining in a process pays one-off costs (allocator, lazy inits)
        pretrain(model, TensorDataset(torch.randn(args.batch_size, 3, 224, 224)), epochs=1, batch_size=args.batch_size, target="predicted", progress=False)
        for round_ in range(args.rounds):
            for name, (data, workers) in sources.items():
                start = time.perf_counter()
                pretrain(model, data, epochs=1, batch_size=args.batch_size, target="predicted", num_workers=workers, progress=False)
                times.setdefault(name, []).append(n / (time.perf_counter() - start))
                print(f"round {round_ + 1}: {name} {times[name][-1]:.2f} images/s", flush=True)
    base = statistics.median(times["memory"])
    lines = [
        "# Pretraining throughput by data pipeline (EfficientNet-Lite0)",
        "",
        f"{args.steps} steps of batch {args.batch_size} per source, {args.rounds} rounds taken in turn; median images/s "
        f"(threads: {torch.get_num_threads()}), after one untimed warm-up run. Made by `"
        + shlex.join(["python", "benchmarks/pipeline_throughput.py"] + sys.argv[1:]) + "`.",
        "",
        "| source | images/s | vs memory | every round |",
        "|---|---|---|---|",
    ]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.2f} | {median / base:.3f} | {', '.join(f'{v:.2f}' for v in values)} |")
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
