"""A figure comparing methods on the same images of a benchmark track (rows: images; columns: methods).

    python benchmarks/compare_figure.py --model efficientnet_lite0 --track imagenet-masks --images 6 \
        --options '{"ltx": {"explainer": "checkpoints/efficientnet_lite0-ltx"}}' --out benchmarks/results/lite0-masks/compare.png

Targets are the track's; the column titles give seconds per image measured here.
"""

from __future__ import annotations

import argparse
import json

import timm
import torch

from captum_ltx import methods as registry
from captum_ltx.benchmark import create_track
from captum_ltx.cli import method_plan
from captum_ltx.methods import model_family
from captum_ltx.models import available_models, create_model
from captum_ltx.visualize import comparison_figure, explain_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=available_models())
    parser.add_argument("--track", required=True)
    parser.add_argument("--images", type=int, default=6, help="the first N samples of the track")
    parser.add_argument("--ids", default=None, help="comma-separated sample ids instead of the first N")
    parser.add_argument("--methods", default="all")
    parser.add_argument("--options", default="{}", help="JSON: per-method options (label=name labels allowed)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model(args.model)
    samples = create_track(args.track, model)
    if args.ids:
        by_id = {s.id: s for s in samples}
        missing = [i for i in args.ids.split(",") if i not in by_id]
        if missing:
            raise SystemExit(f"`--ids`: no samples {missing} in track {args.track!r}")
        samples = [by_id[i] for i in args.ids.split(",")]
    else:
        samples = samples[: args.images]
    names = registry.available(model_family(model)) if args.methods == "all" else args.methods.split(",")
    options = json.loads(args.options)
    built = {label: registry.create(registry.split_label(label)[1], model, **o) for label, o in method_plan(names, options).items()}
    images = torch.stack([s.image for s in samples])
    with torch.no_grad():
        predicted = model(images).argmax(1).tolist()
    targets = [s.target if s.target is not None else p for s, p in zip(samples, predicted)]
    maps = explain_all(model, images, {registry.split_label(label)[0]: m for label, m in built.items()}, targets)
    config = timm.data.resolve_data_config({}, model=model)
    describe = timm.data.ImageNetInfo().index_to_description if model.num_classes == 1000 else str
    titles = [f"{s.id.split('/')[-1]}: {describe(c)}" for s, c in zip(samples, targets)]
    comparison_figure(images, maps, titles, (config["mean"], config["std"]), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
