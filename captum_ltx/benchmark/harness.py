"""Runs attribution methods on one model and a list of images, computing every metric per image.

Results go to ``out_dir/results.jsonl``, one line per (image, method), written as soon as it is known;
a run that is interrupted continues where it stopped when started again with the same settings. Under
``torchrun`` each process takes every world-th image and writes ``results.rank{r}.jsonl``; rank 0 then
merges them into the ``results.jsonl`` and ``summary.md`` one process would have written.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import methods as registry
from .._distributed import barrier, rank_and_world
from .._model import eval_mode
from ..metrics import (
    adp_pic,
    curve_auc,
    deletion_insertion,
    localisation,
    perturbation_curves,
    randomized_copy,
    spearman,
)
from .report import read_records, summarise
from .tracks import Sample

RESULTS = "results.jsonl"
CONFIG = "config.json"


def _shard_files(out_dir: str) -> list[str]:
    """Per-rank results of a sharded run (``torchrun``) not merged yet."""
    return sorted(
        os.path.join(out_dir, n)
        for n in os.listdir(out_dir)
        if n.startswith("results.rank") and n.endswith(".jsonl")
    )


def _merge_shards(out_dir: str, samples: list[Sample], plan: dict[str, Any]) -> None:
    """Appends the ranks' records to ``results.jsonl`` in the order one process writes them (image by
    image, methods in the plan's order), so that a sharded run's files equal a single process's."""
    shards = _shard_files(out_dir)
    if not shards:
        return
    position = {s.id: i for i, s in enumerate(samples)}
    rank = {m: i for i, m in enumerate(plan)}
    new = sorted(
        (r for path in shards for r in read_records(path, missing_ok=True)),
        key=lambda r: (position[r["image"]], rank[r["method"]]),
    )
    results = os.path.join(out_dir, RESULTS)
    with open(results + ".tmp", "w") as f:
        for record in read_records(results, missing_ok=True) + new:
            f.write(json.dumps(record) + "\n")
    os.replace(results + ".tmp", results)
    for path in shards:
        os.remove(path)


def _check_config(out_dir: str, config: dict[str, Any], resume: bool, write: bool = True) -> None:
    path = os.path.join(out_dir, CONFIG)
    if os.path.isfile(path) and resume:
        with open(path) as f:
            saved = json.load(f)
        same_run = {k: v for k, v in saved.items() if k != "methods"} == {
            k: v for k, v in config.items() if k != "methods"
        }
        clash = [
            m
            for m in config["methods"]
            if m in saved["methods"] and saved["methods"][m] != config["methods"][m]
        ]
        if not same_run or clash:
            what = (
                f"method(s) {', '.join(clash)} with other options"
                if same_run
                else "other images or settings"
            )
            raise ValueError(
                f"`out_dir` {out_dir!r} holds a run with {what}; use another folder, other labels or resume=False"
            )
        # Methods may be added to a finished run: the images, targets and metrics are the same.
        config = {**config, "methods": {**saved["methods"], **config["methods"]}}
    if not write:
        return
    if not resume:
        for stale in [os.path.join(out_dir, RESULTS)] + _shard_files(out_dir):
            if os.path.isfile(stale):
                os.remove(stale)
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def run_benchmark(
    model: nn.Module,
    samples: list[Sample],
    methods: dict[str, dict[str, Any]] | list[str],
    out_dir: str | os.PathLike[str],
    *,
    model_name: str = "model",
    track: str = "custom",
    rise_steps: int = 20,
    sanity: bool = True,
    sanity_limit: int | None = None,
    batch_size: int = 64,
    resume: bool = True,
    progress: bool = True,
) -> str:
    r"""Explains every sample with every method and writes per-image results, a summary and plots.

    Every method sees the same images and targets (the sample's label, else the model's prediction).
    For each pair it records the seconds the explanation took and every metric of
    :data:`METRICS` that applies (localisation needs a mask; ``sanity`` adds the randomisation and
    class-sensitivity checks, which explain each image twice more).

    Args:
        model (nn.Module): the explained classifier.
        samples (list of Sample): the images.
        methods: registry names, or a dict name -> constructor options; a name may be given as
            ``"label=registry_name"`` to run one method under two settings.
        out_dir: folder for ``results.jsonl``, ``config.json``, ``summary.md``, ``curves.png``.
        rise_steps (int): steps of the RISE curves.
        sanity_limit (int, optional): run the sanity checks on the first ``sanity_limit`` samples only.
        resume (bool): continue an earlier run in ``out_dir`` (same settings), or start afresh.

    Returns:
        The path of ``summary.md``.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    plan = {m: {} for m in methods} if isinstance(methods, list) else dict(methods)
    for label in plan:
        registry.spec(registry.split_label(label)[1])
    config = {
        "model": model_name,
        "track": track,
        "samples": [s.id for s in samples],
        "methods": {k: _jsonable(v) for k, v in plan.items()},
        "rise_steps": rise_steps,
        "sanity": sanity,
        "sanity_limit": sanity_limit,
    }
    rank, world = rank_and_world()
    _check_config(out_dir, config, resume, write=rank == 0)
    barrier()
    shards = [RESULTS] if world == 1 else [RESULTS, *map(os.path.basename, _shard_files(out_dir))]
    done = {
        (r["image"], r["method"])
        for name in shards
        for r in read_records(os.path.join(out_dir, name), missing_ok=True)
    }
    # under torchrun each process explains every world-th image and writes its own file
    results_path = os.path.join(out_dir, RESULTS if world == 1 else f"results.rank{rank}.jsonl")
    todo = [(s, m) for s in samples[rank::world] for m in plan if (s.id, m) not in done]
    device = next(model.parameters()).device
    built: dict[tuple[str, bool], Any] = {}
    randomized = None

    def method(label: str, scrambled: bool) -> Any:
        nonlocal randomized
        if (label, scrambled) not in built:
            target_model = model
            if scrambled:
                if randomized is None:
                    randomized = randomized_copy(model, samples[0].image[None].to(device))
                target_model = randomized
            built[label, scrambled] = registry.create(
                registry.split_label(label)[1], target_model, **plan[label]
            )
        return built[label, scrambled]

    checked = {s.id for s in samples[:sanity_limit]} if sanity else set()
    with open(results_path, "a") as out, eval_mode(model):
        for sample, label in tqdm(
            todo, desc=f"benchmark {model_name} / {track}", disable=not progress
        ):
            x = sample.image[None].to(device)
            with torch.no_grad():
                logits = model(x)
            ranked = logits[0].argsort(descending=True)
            target = int(ranked[0]) if sample.target is None else int(sample.target)
            start = time.perf_counter()
            attr = method(label, False).attribute(x, target=target)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            record = _score(model, x, attr, target, sample, rise_steps, batch_size)
            record["metrics"]["seconds"] = seconds
            if sample.id in checked:
                other = int(ranked[1]) if int(ranked[0]) == target else int(ranked[0])
                record["metrics"]["randomisation"] = spearman(
                    attr, method(label, True).attribute(x, target=target)
                ).item()
                record["metrics"]["class_sensitivity"] = spearman(
                    attr, method(label, False).attribute(x, target=other)
                ).item()
            record.update(
                image=sample.id, method=label, target=target, correct=int(ranked[0]) == target
            )
            out.write(json.dumps(record) + "\n")
            out.flush()
    barrier()
    if rank == 0:
        _merge_shards(out_dir, samples, plan)
        summary = summarise(out_dir)
    barrier()
    return os.path.join(out_dir, "summary.md") if rank else summary


def _score(
    model: nn.Module,
    x: torch.Tensor,
    attr: torch.Tensor,
    target: int,
    sample: Sample,
    rise_steps: int,
    batch_size: int,
) -> dict[str, Any]:
    metrics: dict[str, float] = {}
    curves: dict[str, list[float]] = {}
    for order, accuracy_name, probability_name in (
        ("positive", "pos_auc", "del_auc"),
        ("negative", "neg_auc", "ins_auc"),
    ):
        probability, correct = perturbation_curves(
            model, x, attr, target, order=order, batch_size=batch_size
        )
        for name, curve in ((accuracy_name, correct), (probability_name, probability)):
            metrics[name], curves[name] = curve_auc(curve)[0].item(), curve[0].tolist()
    for mode in ("deletion", "insertion"):
        auc, curve = deletion_insertion(
            model,
            x,
            attr,
            target,
            mode=mode,
            n_steps=rise_steps,
            batch_size=batch_size,
            return_curves=True,
        )
        metrics[f"rise_{mode}"], curves[f"rise_{mode}"] = auc.item(), curve[0].tolist()
    metrics.update({k: v.item() for k, v in adp_pic(model, x, attr, target).items()})
    if sample.mask is not None:
        metrics.update(
            {k: v.item() for k, v in localisation(attr, sample.mask[None].to(x.device)).items()}
        )
    return {"metrics": metrics, "curves": curves}


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
        for k, v in options.items()
    }
