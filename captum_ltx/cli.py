"""The ``captum-ltx`` command: ``explain``, ``pretrain`` and ``benchmark``.

    captum-ltx explain photo.jpg photos/ --methods ltx,gradcam,iia,dix --out compare.png
    captum-ltx explain photos/ --model resnet50 --weights resnet50.safetensors --per-image --out figures/
    captum-ltx pretrain --model efficientnet_lite0 --data tuxpaint --out checkpoints/efficientnet_lite0-ltx
    captum-ltx benchmark --model efficientnet_lite0 --track imagenet-masks --out benchmarks/results/lite0-masks

``pretrain`` and ``benchmark`` show progress and resume an interrupted run when given the same command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from typing import Any

import torch

from . import methods as registry
from ._distributed import join_torchrun_group, rank_and_world
from ._shipped import available_explainers
from .models import available_models, create_model

# Cost settings of the slow methods on a CPU; the registry's defaults otherwise.
BENCHMARK_OPTIONS = {"ig": {"n_steps": 32, "internal_batch_size": 32}}


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="efficientnet_lite0",
        help=f"explained model: {', '.join(available_models())}, or any timm architecture with --weights",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="local weights file (safetensors, or .pth read weights-only) for the model (default: the ones it ships with)",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes of a timm model's head (default: read from --weights)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _model(args: argparse.Namespace) -> torch.nn.Module:
    options = {
        k: v
        for k, v in (("weights", args.weights), ("num_classes", args.num_classes))
        if v is not None
    }
    if args.weights is not None and not os.path.exists(args.weights):
        raise SystemExit(f"`--weights`: no such file {args.weights!r}")
    if args.num_classes is not None and args.num_classes < 1:
        raise SystemExit(f"`--num-classes` must be an int >= 1, got {args.num_classes}")
    try:
        return create_model(args.model, **options).to(args.device)
    except (ValueError, TypeError, RuntimeError) as e:
        raise SystemExit(f"`--model`/`--weights`: {str(e).splitlines()[0]}") from None


def _method_names(labels: list[str], model: torch.nn.Module) -> None:
    """Refuses an unknown method, or one that does not support the model's family, before any work."""
    from .methods import model_family

    family = model_family(model)
    for label in labels:
        name = registry.split_label(label)[1]
        if name not in registry.available():
            raise SystemExit(
                f"`--methods`: unknown method {name!r}; available: {', '.join(registry.available())}"
            )
        if name not in registry.available(family):
            raise SystemExit(
                f"`--methods`: {name!r} does not support this model (a {family}); it supports: {', '.join(registry.available(family))}"
            )


def _check_options_name_methods(options: dict[str, Any], labels: list[str]) -> None:
    unknown = [k for k in options if k not in labels]
    if unknown:
        raise SystemExit(f"`--options` names methods that `--methods` lacks: {', '.join(unknown)}")


def image_files(paths: list[str]) -> list[str]:
    """The image files named, a folder standing for the images directly inside it (sorted)."""
    from .datasets.image_folder import images_directly_in

    files = []
    for path in paths:
        if os.path.isdir(path):
            inside = images_directly_in(path)
            if not inside:
                raise SystemExit(f"`images`: folder {path!r} holds no image files")
            files += inside
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise SystemExit(f"`images`: no such file or folder {path!r}")
    return files


def _read_images(files: list[str], transform: Any) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                images.append(transform(image.convert("RGB")))
        except (UnidentifiedImageError, OSError) as e:
            raise SystemExit(
                f"`images`: cannot read {path!r} as an image ({type(e).__name__})"
            ) from None
    return torch.stack(images)


def method_plan(labels: list[str], options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Constructor options per method label (``label`` or ``label=registry_name``): the CPU cost
    settings of :data:`BENCHMARK_OPTIONS`, overridden by ``options``."""
    return {
        label: {
            **BENCHMARK_OPTIONS.get(registry.split_label(label)[1], {}),
            **options.get(label, {}),
        }
        for label in labels
    }


def _json_object(text: str, argument: str) -> dict[str, Any]:
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"`{argument}` must be JSON ({e})") from None
    if not isinstance(options, dict):
        raise SystemExit(f"`{argument}` must be a JSON object")
    return options


def _method_options(text: str, argument: str) -> dict[str, dict[str, Any]]:
    options = _json_object(text, argument)
    if not all(isinstance(v, dict) for v in options.values()):
        raise SystemExit(
            f'`{argument}` must map method names to option dicts, e.g. {{"ltx": {{"finetune_steps": 10}}}}'
        )
    return options


def _objective(
    text: str, argument: str, base: dict[str, Any] | None = None, **overrides: Any
) -> Any:
    """The LTXObjective of ``base`` (a recorded objective) with the JSON settings ``text`` over it."""
    from .objective import LTXObjective

    try:
        return LTXObjective.from_config(
            {**(base or {}), **_json_object(text, argument)}, **overrides
        )
    except (TypeError, ValueError) as e:
        raise SystemExit(f"`{argument}`: {e}") from None


def explain(args: argparse.Namespace) -> None:
    import timm
    from tqdm.auto import tqdm

    from .visualize import comparison_figure, explain_all

    files = image_files(args.images)
    labels = args.methods.split(",")
    options = _method_options(args.options, "--options")
    _check_options_name_methods(options, labels)
    model = _model(args)
    _method_names(labels, model)
    # LTX and pLTX use the explainer shipped for the model when there is one, else a fresh head
    explainer = args.explainer or (
        args.model if args.model in available_explainers() and args.weights is None else None
    )
    config = timm.data.resolve_data_config({}, model=model)
    images = _read_images(files, timm.data.create_transform(**config)).to(args.device)
    with torch.no_grad():
        probs = model(images).softmax(dim=1)
    targets = probs.argmax(dim=1).tolist()
    names = timm.data.ImageNetInfo() if probs.shape[1] == 1000 else None
    titles = [
        f"{os.path.basename(p)}: {names.index_to_description(c) if names else c} ({probs[i, c]:.2f})"
        for i, (p, c) in enumerate(zip(files, targets))
    ]
    built = _built_methods(model, method_plan(labels, options), explainer)
    maps = {}
    for label in tqdm(built, desc="explaining"):
        maps.update(explain_all(model, images, {label: built[label]}, targets))
    normalization = (config["mean"], config["std"])
    if args.per_image:
        for i, path in enumerate(files):
            figure = os.path.join(args.out, os.path.splitext(os.path.basename(path))[0] + ".png")
            one = {k: (v[0][i : i + 1], v[1]) for k, v in maps.items()}
            comparison_figure(
                images[i : i + 1].cpu(), one, titles[i : i + 1], normalization, figure
            )
    else:
        comparison_figure(images.cpu(), maps, titles, normalization, args.out)
    for title in titles:
        print(title)
    print("seconds per image: " + ", ".join(f"{k} {v[1]:.2f}" for k, v in maps.items()))
    print(f"wrote {args.out}")


def _built_methods(
    model: torch.nn.Module, plan: dict[str, dict[str, Any]], explainer: str | None
) -> dict[str, Any]:
    """The methods of ``plan``; LTX and pLTX start from ``explainer`` unless told otherwise."""
    built = {}
    for label, method_options in plan.items():
        name = registry.split_label(label)[1]
        if name in ("ltx", "pltx") and explainer:
            method_options.setdefault("explainer", explainer)
        try:
            built[label] = registry.create(name, model, **method_options)
        except (ValueError, TypeError) as e:
            raise SystemExit(
                f"`--explainer`/`--options` for {label!r}: {str(e).splitlines()[0]}"
            ) from None
    return built


def pretrain(args: argparse.Namespace, argv: list[str]) -> None:
    from .datasets import available_datasets
    from .objective import DEFAULT_PRETRAINING_OBJECTIVE
    from .pretrain import pretrain as run_pretraining

    if args.data not in available_datasets() and not os.path.isdir(args.data):
        raise SystemExit(
            f"`--data` must be a folder of images or one of {', '.join(available_datasets())}, got {args.data!r}"
        )
    _finetuning_record(args, None)  # refused before the pretraining, not after it
    objective = _objective(
        args.objective,
        "--objective",
        DEFAULT_PRETRAINING_OBJECTIVE.to_config(),
        mask_weight=args.mask_weight,
    )
    cfg = _pretraining_cfg(args)
    torch.manual_seed(args.seed)
    model = _model(args)
    train, val = _pretraining_data(args, model)
    explainer = run_pretraining(
        model,
        train,
        val_data=val,
        cfg=cfg,
        objective=objective,
        checkpoint_dir=args.checkpoint_dir or args.out + ".work",
        explainer_options=_json_object(args.explainer_options, "--explainer-options"),
    )
    explainer.record_finetuning(**_finetuning_record(args, explainer))
    explainer.record(command=shlex.join(["captum-ltx", "pretrain"] + argv))
    explainer.save(args.out)
    print(f"wrote {args.out}")


# PretrainingCfg's fields that `pretrain` takes as they are (--batch-size: args.batch_size, ...)
PRETRAINING_OPTIONS = (
    "epochs",
    "batch_size",
    "lr",
    "warmup",
    "schedule",
    "target",
    "seed",
    "num_workers",
    "autocast",
)


def _pretraining_cfg(args: argparse.Namespace) -> Any:
    from .pretrain import PretrainingCfg

    try:
        snapshots = tuple(int(n) for n in args.snapshots.split(",") if n.strip())
    except ValueError:
        raise SystemExit(
            f"`--snapshots` must be comma-separated image counts, got {args.snapshots!r}"
        ) from None
    try:
        return PretrainingCfg(
            snapshots=snapshots, **{name: getattr(args, name) for name in PRETRAINING_OPTIONS}
        )
    except ValueError as e:
        raise SystemExit(_as_option(e)) from None


def _as_option(error: Exception, options: dict[str, str] | None = None) -> str:
    """The message with its first `argument` named as the option is spelled (``options``: the
    options of arguments spelled otherwise)."""

    def option(m: re.Match[str]) -> str:
        name = m.group(1)
        return f"`{(options or {}).get(name, '--' + name.replace('_', '-'))}`"

    return re.sub(r"`(\w+)`", option, str(error), count=1)


def _pretraining_data(args: argparse.Namespace, model: torch.nn.Module) -> tuple[Any, Any]:
    from .datasets import ImagesAndLabels, available_datasets, create_dataset

    is_folder = args.data not in available_datasets() and os.path.isdir(args.data)
    folder = {"val_size": args.val_size} if is_folder else {}  # held out of the same folder
    train_size = args.train_size if args.train_size is not None or folder else 800
    try:
        train = create_dataset(
            args.data, model, "train", length=train_size, seed=args.seed, **folder
        )
        val = create_dataset(
            args.data, model, "val", length=args.val_size, seed=args.seed, **folder
        )
    except ValueError as e:
        raise SystemExit(f"`--data` {args.data!r}: {str(e).splitlines()[0]}") from None
    return ImagesAndLabels(train), ImagesAndLabels(val)


# FinetuningCfg's fields as `pretrain` spells them
FINETUNING_OPTIONS = {
    "finetune": "--finetune-part",
    "finetune_steps": "--finetune-steps",
    "lr": "--finetune-lr",
    "backbone_lr": "--finetune-backbone-lr",
    "patience": "--finetune-patience",
}


def _finetuning_record(args: argparse.Namespace, explainer: Any) -> dict[str, Any]:
    """The ``--finetune-*`` settings, checked (before pretraining, ``explainer`` None) as the
    checkpoint will check them; the objective over the one ``pretrain()`` recorded."""
    from .explainer import FinetuningCfg

    objective = None
    if args.finetune_objective != "{}" or args.finetune_mask_weight is not None:
        recorded = explainer.finetuning.objective if explainer is not None else None
        objective = _objective(
            args.finetune_objective,
            "--finetune-objective",
            recorded,
            mask_weight=args.finetune_mask_weight,
        ).to_config()
    settings = dict(
        lr=args.finetune_lr,
        backbone_lr=args.finetune_backbone_lr,
        finetune_steps=args.finetune_steps,
        finetune=args.finetune_part,
        patience=args.finetune_patience,
        objective=objective,
    )
    try:
        FinetuningCfg().over(**settings)
    except ValueError as e:
        raise SystemExit(_as_option(e, FINETUNING_OPTIONS)) from None
    return settings


def benchmark(args: argparse.Namespace, argv: list[str]) -> None:
    from .benchmark import available_tracks, create_track, run_benchmark, summarise
    from .methods import model_family

    if args.track not in available_tracks() and not os.path.isdir(args.track):
        raise SystemExit(
            f"`--track` must be a folder of images or one of {', '.join(available_tracks())}, got {args.track!r}"
        )
    if args.split is not None and args.track not in available_tracks():
        raise SystemExit("`--split` applies to the named tracks only, not to a folder")
    options = _method_options(args.options, "--options")
    torch.manual_seed(0)
    model = _model(args)
    names = (
        registry.available(model_family(model))
        if args.methods == "all"
        else args.methods.split(",")
    )
    _method_names(names, model)
    _check_options_name_methods(options, names)
    track_options = {k: v for k, v in (("n", args.n), ("split", args.split)) if v is not None}
    try:
        samples = create_track(args.track, model, **track_options)[: args.limit]
    except ValueError as e:
        raise SystemExit(f"`--track` {args.track!r}: {str(e).splitlines()[0]}") from None
    plan = method_plan(names, options)
    try:
        summary = run_benchmark(
            model,
            samples,
            plan,
            args.out,
            model_name=args.model,
            track=args.track,
            rise_steps=args.rise_steps,
            sanity=not args.no_sanity,
            sanity_limit=args.sanity_limit,
            resume=not args.restart,
        )
    except ValueError as e:  # e.g. a run in --out that this one cannot continue
        raise SystemExit(f"benchmark: {str(e).splitlines()[0]}") from None
    if rank_and_world()[0] == 0:
        summarise(args.out, command=" ".join(shlex.quote(a) for a in argv))
        print(open(summary).read())


def _explain_parser(commands: Any) -> None:
    """The ``explain`` subcommand's arguments."""
    p = commands.add_parser(
        "explain", help="explain image files with several methods; writes a comparison figure"
    )
    p.add_argument("images", nargs="+", help="image files, or folders of them")
    _add_model(p)
    p.add_argument(
        "--methods",
        default="ltx,gradcam,iia,dix,ig",
        help="comma-separated registry names (label=name to rename)",
    )
    p.add_argument(
        "--explainer",
        default=None,
        help=f"explainer for ltx / pltx: a checkpoint folder or a shipped name ({', '.join(available_explainers())}); default: the model's shipped one, else a fresh head",
    )
    p.add_argument(
        "--options",
        default="{}",
        help='JSON: per-method options, e.g. {"ltx": {"finetune_steps": 10}}',
    )
    p.add_argument(
        "--per-image",
        action="store_true",
        help="one figure per image, written into the folder --out",
    )
    p.add_argument(
        "--out", default="explanations.png", help="figure to write (a folder with --per-image)"
    )


def _pretrain_parser(commands: Any) -> None:
    """The ``pretrain`` subcommand's arguments."""
    p = commands.add_parser("pretrain", help="pretrain an LTX explainer; resumable (same command)")
    _add_model(p)
    p.add_argument(
        "--data",
        default="tuxpaint",
        help="training data: a name (captum_ltx.datasets) or a folder of images (ImageFolder classes or flat; --val-size of them held out)",
    )
    p.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="training images per epoch (default: 800 composites of a named dataset; every image of a folder)",
    )
    p.add_argument(
        "--val-size", type=int, default=48, help="validation composites (choose the epoch)"
    )
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument(
        "--mask-weight", type=float, default=None, help="the objective's mask weight (default 3)"
    )
    p.add_argument(
        "--objective",
        default="{}",
        help='JSON: LTXObjective settings of pretraining over the default (black/blur mix baseline), e.g. {"complement_weight": 1}; {"baseline": "black"} is the reference',
    )
    p.add_argument(
        "--target",
        default="predicted",
        choices=("predicted", "label", "sampled"),
        help="class each training image is explained for; 'sampled' draws it from the model's softmax",
    )
    p.add_argument(
        "--explainer-options",
        default="{}",
        help='JSON: Explainer.from_model options, e.g. {"feature_layer": "blocks.5"}',
    )
    p.add_argument(
        "--checkpoint-dir", default=None, help="resumable checkpoints (default: OUT.work)"
    )
    p.add_argument("--out", required=True, help="checkpoint folder to write (safetensors + JSON)")
    _add_training_schedule(p)
    _add_finetuning_record(p)


def _add_training_schedule(p: argparse.ArgumentParser) -> None:
    """How ``pretrain`` trains: epochs, batches, learning rate, snapshots, precision, seed."""
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument(
        "--warmup", type=float, default=0.2, help="fraction of the steps over which the lr rises"
    )
    p.add_argument(
        "--schedule",
        default="linear",
        choices=("linear", "constant"),
        help="lr after the warm-up: linear decay to 0, or constant",
    )
    p.add_argument(
        "--snapshots",
        default="",
        help="comma-separated image counts after which the explainer is also written to CHECKPOINT_DIR/snapshots/N (a learning curve from one run)",
    )
    p.add_argument(
        "--autocast",
        action="store_true",
        help="pretrain under torch.autocast in bfloat16 (for GPUs)",
    )
    p.add_argument("--seed", type=int, default=0)


def _add_finetuning_record(p: argparse.ArgumentParser) -> None:
    """The finetuning settings ``pretrain`` records in the checkpoint for LTX to use."""
    p.add_argument(
        "--finetune-objective",
        default="{}",
        help="JSON: LTXObjective settings recorded for finetuning, over the default (captum_ltx.objective.DEFAULT_FINETUNING_OBJECTIVE at the pretraining mask weight)",
    )
    p.add_argument(
        "--finetune-backbone-lr",
        type=float,
        default=None,
        help="finetuning lr of the explainer's backbone recorded in the checkpoint",
    )
    p.add_argument(
        "--finetune-lr",
        type=float,
        default=None,
        help="finetuning lr recorded in the checkpoint for LTX to use",
    )
    p.add_argument(
        "--finetune-mask-weight",
        type=float,
        default=None,
        help="finetuning mask weight recorded in the checkpoint",
    )
    p.add_argument(
        "--finetune-steps",
        type=int,
        default=None,
        help="finetuning steps per image recorded in the checkpoint",
    )
    p.add_argument(
        "--finetune-part",
        choices=["all", "head"],
        default=None,
        help="explainer parts finetuned per image, recorded in the checkpoint",
    )
    p.add_argument(
        "--finetune-patience",
        type=int,
        default=None,
        help="finetuning stops once the objective has not improved for this many steps (recorded)",
    )


def _benchmark_parser(commands: Any) -> None:
    """The ``benchmark`` subcommand's arguments."""
    p = commands.add_parser(
        "benchmark", help="run methods x metrics on a track; resumable (same command)"
    )
    _add_model(p)
    p.add_argument(
        "--track",
        required=True,
        help="a named track (imagenet-photos, imagenet-masks, fashion-one, fashion-two) or a folder of your images",
    )
    p.add_argument("--n", type=int, default=None, help="number of composites (imagenet-masks)")
    p.add_argument(
        "--split",
        default=None,
        choices=("val", "test"),
        help="imagenet-masks split: val for choosing settings, test (default) for results",
    )
    p.add_argument(
        "--methods",
        default="all",
        help="comma-separated registry names (label=name to rename), or 'all' the model supports",
    )
    p.add_argument(
        "--options",
        default="{}",
        help='JSON: per-method options, e.g. {"ltx": {"explainer": "ckpt"}}',
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder (resumed if it holds a run with the same settings)",
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--rise-steps", type=int, default=20)
    p.add_argument(
        "--no-sanity",
        action="store_true",
        help="skip the randomisation and class-sensitivity checks",
    )
    p.add_argument(
        "--sanity-limit", type=int, default=None, help="sanity checks on the first N images only"
    )
    p.add_argument("--restart", action="store_true", help="discard earlier results in --out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captum-ltx", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _explain_parser(commands)
    _pretrain_parser(commands)
    _benchmark_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.command in (
        "pretrain",
        "benchmark",
    ):  # under torchrun: one process per GPU (or CPU share)
        local_rank = join_torchrun_group()
        if args.device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            args.device = f"cuda:{local_rank}"
    if args.command == "explain":
        explain(args)
    elif args.command == "pretrain":
        pretrain(args, argv[1:])
    else:
        benchmark(args, ["captum-ltx"] + argv)


if __name__ == "__main__":
    main()
