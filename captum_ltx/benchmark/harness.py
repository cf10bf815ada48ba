"""Runs attribution methods on one model and a list of images, computing every metric per image.

Results go to ``out_dir/results.jsonl``, one line per (image, method), written as soon as it is known;
a run that is interrupted continues where it stopped when started again with the same settings. Under
``torchrun`` each process takes every world-th image and writes ``results.rank{r}.jsonl``; rank 0 then
merges them into the ``results.jsonl`` and ``summary.md`` one process would have written.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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
    mufidelity,
    perturbation_curves,
    randomized_copy,
    spearman,
)
from .report import PERCENT_SCALE, latest_records, read_records, summarise
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


def _recorded(out_dir: str, world: int) -> list[dict[str, Any]]:
    """Records written so far, by this run and by the ranks of an interrupted ``torchrun``."""
    names = [RESULTS] if world == 1 else [RESULTS, *map(os.path.basename, _shard_files(out_dir))]
    return [r for n in names for r in read_records(os.path.join(out_dir, n), missing_ok=True)]


def _end_line(path: str) -> None:
    """Ends a results file's last line if an interruption cut it, so that the next record appended
    starts a line of its own (the cut one is skipped when read)."""
    if os.path.isfile(path) and os.path.getsize(path):
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def _merge_shards(out_dir: str, samples: list[Sample], plan: dict[str, Any]) -> None:
    """Appends the ranks' records to ``results.jsonl`` in the order one process writes them (image by
    image, methods in the plan's order), so that a sharded run's files equal a single process's,
    and keeps one record per (image, method) and no line an interruption cut."""
    shards = _shard_files(out_dir)
    position = {s.id: i for i, s in enumerate(samples)}
    rank = {m: i for i, m in enumerate(plan)}
    new = sorted(
        (r for path in shards for r in read_records(path, missing_ok=True)),
        key=lambda r: (position[r["image"]], rank.get(r["method"], len(rank))),
    )
    results = os.path.join(out_dir, RESULTS)
    records = read_records(results, missing_ok=True) + new
    latest = latest_records(records)
    written = 0
    if os.path.isfile(results):
        with open(results) as f:
            written = sum(1 for _ in f)
    if len(latest) == written and not shards:  # no duplicate, no line cut by an interruption
        return
    with open(results + ".tmp", "w") as f:
        for record in latest.values():
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
    class-sensitivity checks, which explain each image twice more). Resuming a run whose records
    lack a metric added to the harness since explains those images again and adds the metric, after
    checking that the map is the one recorded.

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
    run = _Run(model, samples, plan, rise_steps, batch_size)
    checked = {s.id for s in samples[:sanity_limit]} if sanity else set()
    recorded = latest_records(_recorded(out_dir, world))
    todo = [
        (s, m, recorded.get((s.id, m)))
        for s in samples[rank::world]
        for m in plan
        if (s.id, m) not in recorded or _missing(recorded[s.id, m], s)
    ]
    # under torchrun each process explains every world-th image and writes its own file
    results_path = os.path.join(out_dir, RESULTS if world == 1 else f"results.rank{rank}.jsonl")
    _end_line(results_path)
    try:
        with open(results_path, "a") as out, eval_mode(model):
            for sample, label, earlier in tqdm(
                todo, desc=f"benchmark {model_name} / {track}", disable=not progress
            ):
                if earlier is None:
                    record = run.record(sample, label, sanity=sample.id in checked)
                else:
                    record = run.complete(earlier, sample, label)
                out.write(json.dumps(record) + "\n")
                out.flush()
    finally:
        if world == 1:  # one record per pair in results.jsonl, also when stopped
            _merge_shards(out_dir, samples, plan)
    barrier()
    if rank == 0:
        if world > 1:  # one process merged in its finally
            _merge_shards(out_dir, samples, plan)
        summary = summarise(out_dir)
    barrier()
    return os.path.join(out_dir, "summary.md") if rank else summary


class _Run:
    """Explains and scores (image, method) pairs of one run; builds each method once."""

    def __init__(
        self,
        model: nn.Module,
        samples: list[Sample],
        plan: dict[str, dict[str, Any]],
        rise_steps: int,
        batch_size: int,
    ) -> None:
        self.model, self.samples, self.plan = model, samples, plan
        self.rise_steps, self.batch_size = rise_steps, batch_size
        self.device = next(model.parameters()).device
        self.built: dict[tuple[str, bool], Any] = {}
        self.randomized: nn.Module | None = None

    def method(self, label: str, scrambled: bool = False) -> Any:
        if (label, scrambled) not in self.built:
            target_model = self.model
            if scrambled:
                if self.randomized is None:
                    first = self.samples[0].image[None].to(self.device)
                    self.randomized = randomized_copy(self.model, first)
                target_model = self.randomized
            self.built[label, scrambled] = registry.create(
                registry.split_label(label)[1], target_model, **self.plan[label]
            )
        return self.built[label, scrambled]

    def _input(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        x = sample.image[None].to(self.device)
        with torch.no_grad():
            ranked = self.model(x)[0].argsort(descending=True)
        return x, ranked

    def score(
        self,
        x: torch.Tensor,
        attr: torch.Tensor,
        target: int,
        sample: Sample,
        only: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        return _score(
            self.model, x, attr, target, sample, self.rise_steps, self.batch_size, only=only
        )

    def record(self, sample: Sample, label: str, sanity: bool) -> dict[str, Any]:
        """Explains ``sample`` with method ``label``, timed, and computes every metric."""
        x, ranked = self._input(sample)
        target = int(ranked[0]) if sample.target is None else int(sample.target)
        start = time.perf_counter()
        attr = self.method(label).attribute(x, target=target)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        record = self.score(x, attr, target, sample)
        record["metrics"]["seconds"] = seconds
        if sanity:
            other = int(ranked[1]) if int(ranked[0]) == target else int(ranked[0])
            scrambled = self.method(label, scrambled=True).attribute(x, target=target)
            record["metrics"]["randomisation"] = spearman(attr, scrambled).item()
            record["metrics"]["class_sensitivity"] = spearman(
                attr, self.method(label).attribute(x, target=other)
            ).item()
        record.update(
            image=sample.id, method=label, target=target, correct=int(ranked[0]) == target
        )
        return record

    def complete(self, earlier: dict[str, Any], sample: Sample, label: str) -> dict[str, Any]:
        """``earlier`` with the metrics it lacks, from the same explanation computed again; refuses
        when the map differs from the recorded one (as its deletion, insertion, ADP and localisation tell)."""
        x, _ = self._input(sample)
        attr = self.method(label).attribute(x, target=earlier["target"])
        check = self.score(x, attr, earlier["target"], sample, only=_CHECKED)["metrics"]
        for name in set(_CHECKED) & set(check):
            # a map equal up to float rounding (code refactored since) may rank tied pixels
            # otherwise: a small change of a curve is the same explanation, a large one is not
            scale = 100.0 if name in PERCENT_SCALE else 1.0
            recorded = earlier["metrics"][name]
            if not math.isclose(check[name], recorded, rel_tol=0.02, abs_tol=0.01 * scale):
                raise ValueError(
                    f"method {label!r} no longer gives the map recorded for {sample.id!r} "
                    f"({name} {check[name]:.4g}, recorded {recorded:.4g}): its options, "
                    "checkpoint or code changed since; run it under a new label"
                )
        added = self.score(x, attr, earlier["target"], sample, only=_missing(earlier, sample))
        return {
            **earlier,
            "metrics": {**earlier["metrics"], **added["metrics"]},
            "curves": {**earlier.get("curves", {}), **added["curves"]},
        }


@dataclass
class _Case:
    """One explanation to score."""

    model: nn.Module
    x: torch.Tensor
    attr: torch.Tensor
    target: int
    mask: torch.Tensor | None
    rise_steps: int
    batch_size: int


Scores = tuple[dict[str, float], dict[str, list[float]]]


def _perturbation(c: _Case) -> Scores:
    metrics: dict[str, float] = {}
    curves: dict[str, list[float]] = {}
    for order, accuracy_name, probability_name in (
        ("positive", "pos_auc", "del_auc"),
        ("negative", "neg_auc", "ins_auc"),
    ):
        probability, correct = perturbation_curves(
            c.model, c.x, c.attr, c.target, order=order, batch_size=c.batch_size
        )
        for name, curve in ((accuracy_name, correct), (probability_name, probability)):
            metrics[name], curves[name] = curve_auc(curve)[0].item(), curve[0].tolist()
    return metrics, curves


def _rise(c: _Case) -> Scores:
    metrics: dict[str, float] = {}
    curves: dict[str, list[float]] = {}
    for mode in ("deletion", "insertion"):
        auc, curve = deletion_insertion(
            c.model,
            c.x,
            c.attr,
            c.target,
            mode=mode,
            n_steps=c.rise_steps,
            batch_size=c.batch_size,
            return_curves=True,
        )
        metrics[f"rise_{mode}"], curves[f"rise_{mode}"] = auc.item(), curve[0].tolist()
    return metrics, curves


def _adp_pic(c: _Case) -> Scores:
    return {k: v.item() for k, v in adp_pic(c.model, c.x, c.attr, c.target).items()}, {}


def _mufidelity(c: _Case) -> Scores:
    score = mufidelity(c.model, c.x, c.attr, c.target, batch_size=c.batch_size)
    return {"mufidelity": score.item()}, {}


def _localisation(c: _Case) -> Scores:
    assert c.mask is not None
    return {k: v.item() for k, v in localisation(c.attr, c.mask[None].to(c.x.device)).items()}, {}


LOCALISATION = ("pixel_accuracy", "miou", "map", "pointing_game", "mass_inside")
# metric names -> what computes them; the sanity checks and seconds are recorded with the explanation
_GROUPS: dict[tuple[str, ...], Callable[[_Case], Scores]] = {
    ("pos_auc", "neg_auc", "del_auc", "ins_auc"): _perturbation,
    ("rise_deletion", "rise_insertion"): _rise,
    ("adp", "pic"): _adp_pic,
    ("mufidelity",): _mufidelity,
    LOCALISATION: _localisation,
}
# cheap metrics of a map's whole ranking (and values, ADP) that tell whether an explanation computed
# again is the one recorded
_CHECKED = ("del_auc", "ins_auc", "adp", "map", "mass_inside")


def _applicable(sample: Sample) -> list[tuple[str, ...]]:
    return [names for names in _GROUPS if sample.mask is not None or names != LOCALISATION]


def _missing(record: dict[str, Any], sample: Sample) -> set[str]:
    """Metric names that apply to ``sample`` but ``record`` lacks (added to the harness since)."""
    return {n for names in _applicable(sample) for n in names} - set(record["metrics"])


def _score(
    model: nn.Module,
    x: torch.Tensor,
    attr: torch.Tensor,
    target: int,
    sample: Sample,
    rise_steps: int,
    batch_size: int,
    only: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Every metric that applies (or only the groups holding a name in ``only``), with curves."""
    case = _Case(model, x, attr, target, sample.mask, rise_steps, batch_size)
    wanted = None if only is None else set(only)
    metrics: dict[str, float] = {}
    curves: dict[str, list[float]] = {}
    for names in _applicable(sample):
        if wanted is None or wanted & set(names):
            group_metrics, group_curves = _GROUPS[names](case)
            metrics.update(group_metrics)
            curves.update(group_curves)
    return {"metrics": metrics, "curves": curves}


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
        for k, v in options.items()
    }
