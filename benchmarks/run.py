"""Runs the benchmark harness: a model, a track, a set of methods; writes results, summary and plots.

Example (the committed EfficientNet-Lite0 results):

    python benchmarks/run.py --model efficientnet_lite0 --track imagenet-photos --out benchmarks/results/lite0-photos

Interrupt it at any time; the same command resumes from results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import torch

from captum_ltx import methods as registry
from captum_ltx.benchmark import available_tracks, create_track, run_benchmark, summarise
from captum_ltx.methods import model_family
from captum_ltx.models import available_models, create_model

# Cost settings of the slow methods on a CPU; the registry's defaults otherwise.
DEFAULT_OPTIONS = {"ig": {"n_steps": 32, "internal_batch_size": 32}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=available_models())
    parser.add_argument("--track", required=True, choices=available_tracks())
    parser.add_argument("--methods", default="all", help="comma-separated registry names, or 'all' the model supports")
    parser.add_argument("--options", default="{}", help='JSON: per-method constructor options, e.g. {"ltx": {"explainer": "ckpt"}}')
    parser.add_argument("--out", required=True, help="output folder (resumed if it holds a run with the same settings)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--rise-steps", type=int, default=20)
    parser.add_argument("--no-sanity", action="store_true", help="skip the randomisation and class-sensitivity checks")
    parser.add_argument("--sanity-limit", type=int, default=None, help="sanity checks on the first N images only")
    parser.add_argument("--restart", action="store_true", help="discard earlier results in --out")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = create_model(args.model).to(args.device)
    samples = create_track(args.track, model)[: args.limit]
    names = registry.available(model_family(model)) if args.methods == "all" else args.methods.split(",")
    options = json.loads(args.options)
    plan = {name: {**DEFAULT_OPTIONS.get(name.split("=")[-1], {}), **options.get(name, {})} for name in names}
    summary = run_benchmark(
        model, samples, plan, args.out, model_name=args.model, track=args.track, rise_steps=args.rise_steps,
        sanity=not args.no_sanity, sanity_limit=args.sanity_limit, resume=not args.restart,
    )
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))
    summarise(args.out, command=command)
    print(open(summary).read())


if __name__ == "__main__":
    main()
