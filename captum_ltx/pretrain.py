"""Pretraining of an LTX explainer over a data set (the reference's "pLTX" stage)."""

from __future__ import annotations

import collections
import copy
import dataclasses
import json
import os
from collections.abc import Sized
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset
from tqdm.auto import tqdm

from ._distributed import rank_and_world
from ._model import (
    black_in_input_space,
    check_normalization,
    eval_mode,
    frozen_parameters,
    normalization_of,
    num_classes_of,
)
from ._validation import check_choice, check_images, check_positive_int, warn_user
from .explainer import Explainer
from .metrics.perturbation import perturbation_auc
from .objective import DEFAULT_FINETUNING_OBJECTIVE, DEFAULT_PRETRAINING_OBJECTIVE, LTXObjective

STATE_NAME = "state.json"
OPTIMIZER_NAME = "optimizer.safetensors"


def _as_dataset(data: Any, name: str) -> Dataset:
    if isinstance(data, Tensor):
        check_images(data, name=name)
        return TensorDataset(data)
    if isinstance(data, Dataset) or hasattr(data, "__getitem__"):
        return data
    raise TypeError(
        f"`{name}` must be a tensor of images or a Dataset of images or (image, label) pairs, got {type(data).__name__}"
    )


def _size(data: Dataset) -> int:
    """The length of a data set: every one pretraining takes has one (``Dataset`` does not say so)."""
    return len(cast(Sized, data))


def _skipped_files(data: Any) -> int:
    """How many unreadable files a folder dataset (``ImageFolderData``, maybe wrapped) has skipped, in
    this process and in DataLoader workers."""
    while not hasattr(data, "skipped_count") and hasattr(data, "data"):
        data = data.data
    return getattr(data, "skipped_count", 0)


def _split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise TypeError(
        f"data items must be images or (image, label) pairs, got {type(batch).__name__}"
    )


def _targets(
    model: nn.Module,
    x: Tensor,
    labels: Tensor | None,
    target: str,
    draw: int = 0,
    num_classes: int | None = None,
) -> Tensor:
    if target == "label":
        if labels is None:
            raise ValueError(
                "`target='label'` needs (image, label) items; use target='predicted' for unlabelled data"
            )
        if (labels < 0).any():  # ImageFolderData.UNLABELLED: a flat folder has no classes
            raise ValueError(
                "`target='label'` needs labelled data (a folder of class folders); use target='predicted'"
            )
        if num_classes is not None and (labels >= num_classes).any():
            raise ValueError(
                f"`target='label'`: label {int(labels.max())} is not one of the model's {num_classes} "
                "classes; labels must be the model's class indices (an ImageFolder's are its folders' "
                "order), or use target='predicted'"
            )
        return labels.to(x.device).long()
    with torch.no_grad():
        logits = model(x)
    if target == "sampled":
        # a generator per batch (``draw``): a resumed run draws the classes an uninterrupted one would
        generator = torch.Generator().manual_seed(draw)
        return torch.multinomial(logits.float().softmax(dim=1).cpu(), 1, generator=generator)[
            :, 0
        ].to(x.device)
    return logits.argmax(dim=1)


def _shard_size(items: int, world: int) -> int:
    """Items per process and epoch: DistributedSampler pads the data to equal shards."""
    return -(-items // world)


def _save_optimizer(optimizer: torch.optim.Optimizer, path: str) -> list[dict[str, Any]]:
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors = {
        f"{index}.{key}": (value if isinstance(value, Tensor) else torch.tensor(value))
        .detach()
        .cpu()
        .contiguous()
        for index, entries in state["state"].items()
        for key, value in entries.items()
    }
    save_file(tensors, path)
    return state["param_groups"]


def _load_optimizer(
    optimizer: torch.optim.Optimizer, path: str, param_groups: list[dict[str, Any]]
) -> None:
    from safetensors.torch import load_file

    entries: dict[int, dict[str, Tensor]] = {}
    for name, value in load_file(path).items():
        index, key = name.split(".", 1)
        entries.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": entries, "param_groups": param_groups})


def _atomic_json(obj: Any, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def validation_pos_auc(
    model: nn.Module,
    explainer: Explainer,
    data: Dataset,
    *,
    batch_size: int,
    target: str,
    fill: Tensor | None = None,
    device: Any = None,
    num_classes: int | None = None,
) -> float:
    """Mean positive-perturbation AUC (accuracy, lower is better) of the explainer's masks on ``data``."""
    rank, world = rank_and_world()
    loader = DataLoader(
        data,
        batch_size=batch_size,
        shuffle=False,
        sampler=DistributedSampler(data, shuffle=False) if world > 1 else None,
    )
    total = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for batch in loader:
            x, labels = _split_batch(batch)
            x = x.to(device)
            t = _targets(model, x, labels, target, num_classes=num_classes)
            aucs = cast(  # without `return_curves`: the AUCs alone
                Tensor,
                perturbation_auc(
                    model, x, explainer(x, target=t), t, order="positive", baseline=fill
                ),
            )
            total += torch.stack(
                [
                    aucs.sum().double(),
                    torch.tensor(float(len(aucs)), dtype=torch.float64, device=device),
                ]
            )
    if world > 1:
        dist.all_reduce(total)
    return (total[0] / total[1]).item()


SCHEDULES = ("linear", "constant")


@dataclasses.dataclass(frozen=True)
class PretrainingCfg:
    """The settings of one pretraining run (recorded in the checkpoint's ``config["training"]``).

    Args:
        epochs, batch_size, lr, weight_decay: training settings; ``batch_size`` is per process.
        warmup (float): the fraction of all steps over which the learning rate rises linearly.
        schedule (str): after the warm-up, ``"linear"`` decays the rate to 0 at the last step (the
            reference's); ``"constant"`` keeps it, so that snapshots along one run are comparable.
        target (str): ``"predicted"`` (default), ``"label"`` or ``"sampled"`` (see :func:`pretrain`).
        seed (int): seeds the shuffling, the baseline draws and the head's initialisation.
        snapshots (tuple): numbers of training images after which the explainer is also written to
            ``checkpoint_dir/snapshots/<images>/``, for a learning curve from one run.
        num_workers (int): DataLoader worker processes (not recorded: they do not change the result).
        autocast (bool): run the forward passes under ``torch.autocast`` in bfloat16 on the data's
            device (for GPUs; weights and optimiser stay in float32). Recorded when set.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup: float = 0.2
    schedule: str = "linear"
    target: str = "predicted"
    seed: int = 0
    snapshots: tuple[int, ...] = ()
    num_workers: int = 0
    autocast: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.autocast, bool):
            raise TypeError(f"`autocast` must be a bool, got {type(self.autocast).__name__}")
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        check_choice(self.target, "target", ("label", "predicted", "sampled"))
        check_choice(self.schedule, "schedule", SCHEDULES)
        if not 0 <= self.warmup < 1:
            raise ValueError(f"`warmup` must be a fraction in [0, 1), got {self.warmup!r}")
        if any(not isinstance(n, int) or n <= 0 for n in self.snapshots):
            raise ValueError(f"`snapshots` must be positive image counts, got {self.snapshots!r}")

    def record(self, world: int) -> dict[str, Any]:
        """What a resumed run must match; settings added later are recorded only when set, so that
        checkpoints from before them still resume."""
        recorded = dict(
            epochs=self.epochs,
            batch_size=self.batch_size * world,
            lr=self.lr,
            weight_decay=self.weight_decay,
            warmup=self.warmup,
            target=self.target,
            seed=self.seed,
        )
        if self.schedule != "linear":
            recorded["schedule"] = self.schedule
        if self.snapshots:
            recorded["snapshots"] = list(self.snapshots)
        if self.autocast:
            recorded["autocast"] = "bfloat16"
        return recorded


@dataclasses.dataclass
class _Run:
    """Everything one pretraining run carries from step to step."""

    cfg: PretrainingCfg
    model: nn.Module
    explainer: Explainer
    net: nn.Module  # the explainer, wrapped in DistributedDataParallel under torchrun
    objective: LTXObjective
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_set: Dataset
    val_set: Dataset | None
    fill: Tensor
    device: torch.device
    settings: dict[str, Any]
    ckpt: str | None
    progress: bool
    rank: int = 0
    world: int = 1
    state: dict[str, Any] = dataclasses.field(default_factory=dict)
    best_state: dict[str, Tensor] | None = None
    seen_targets: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    num_classes: int | None = None  # the model's, known once it has run


def pretrain(
    model: nn.Module,
    train_data: Any,
    *,
    val_data: Any = None,
    cfg: PretrainingCfg | None = None,
    mask_weight: float | None = None,
    counterfactual: bool | None = None,
    objective: LTXObjective | None = None,
    explainer: Explainer | None = None,
    explainer_options: dict[str, Any] | None = None,
    normalization: Any = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    **settings: Any,
) -> Explainer:
    r"""Pretrains an LTX explainer for ``model`` and returns the one of the best epoch.

    Every step minimises :class:`~captum_ltx.LTXObjective` over a batch with AdamW and a linear
    warm-up, then a linear decay (or a constant rate) of the learning rate. After each epoch the
    explainer is scored on ``val_data`` by its mean positive-perturbation AUC (lower is better) and the
    best epoch is kept, as in the reference; without ``val_data`` the last epoch is kept.

    With ``checkpoint_dir``, each epoch writes ``last/`` and ``best/`` (explainer checkpoints), the
    optimiser state (safetensors) and ``state.json``; a later call with ``resume=True`` continues after
    the last finished epoch with identical shuffling. Under ``torchrun`` (an initialised
    ``torch.distributed`` process group) each process takes a shard of every epoch, the explainer is
    wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (which averages the gradients) and
    rank 0 writes the checkpoints.

    Args:
        model (nn.Module): the explained classifier, on the device to train on; it is not changed.
        train_data: a tensor of images, or a Dataset of images or (image, label) pairs, as the model
            takes them (normalised).
        val_data: the same, for choosing the epoch.
        cfg (PretrainingCfg, optional): the training settings; keyword ``settings`` (``epochs=``,
            ``batch_size=``, ``lr=``, ...: any field of :class:`PretrainingCfg`) override its fields.
            ``lr`` defaults to 2e-4, the most the reference's schedule ever reaches (its 2e-3 flag
            never leaves warm-up); at 2e-3 the copied backbone of EfficientNet-Lite0 collapsed to
            one mask for every image (benchmarks/results/lite0-tuning.md). ``target``: ``"predicted"``
            (the model's top class; the default), ``"label"`` (the data's labels, which must be the
            model's class indices: the reference's "target" checkpoints) or ``"sampled"`` (a class drawn from the model's softmax, so that a
            class-conditioned explainer also learns the masks of runners-up).
        objective (LTXObjective, optional): what each step minimises (default:
            ``DEFAULT_PRETRAINING_OBJECTIVE``, the reference's with a black/blur baseline mixture;
            ``LTXObjective()`` is the reference's own); ``mask_weight`` and ``counterfactual``
            override its fields. With ``baseline="mix"`` each image draws black or blur, seeded by
            the seed, the epoch and the step.
        explainer (Explainer, optional): where to start; default :meth:`Explainer.from_model`
            with ``explainer_options``.
        normalization (tuple, optional): (mean, std) of the inputs; default the model's timm config.
        checkpoint_dir (str, optional): folder for resumable checkpoints (and snapshots).

    Returns:
        The :class:`~captum_ltx.Explainer` of the best epoch, with its settings in ``config["training"]``
        (and, per epoch in its ``history``, how many distinct classes were targeted so far) and,
        unless it already had one, the finetuning objective LTX will use in
        ``config["finetuning"]["objective"]``: ``DEFAULT_FINETUNING_OBJECTIVE`` at the pretraining's
        mask weight.

    Example::

        >>> explainer = pretrain(model, train_set, val_data=val_set, epochs=5, checkpoint_dir="ckpt")
        >>> explainer.save("model-ltx"); attr = LTX(model, "model-ltx").attribute(x, target=c)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
    if cfg is not None and not isinstance(cfg, PretrainingCfg):
        raise TypeError(f"`cfg` must be a PretrainingCfg or None, got {type(cfg).__name__}")
    unknown = set(settings) - {f.name for f in dataclasses.fields(PretrainingCfg)}
    if unknown:
        raise TypeError(
            f"pretrain() got unexpected keyword arguments {sorted(unknown)}; settings are the fields of PretrainingCfg"
        )
    cfg = dataclasses.replace(cfg or PretrainingCfg(), **settings)
    train_set = _as_dataset(train_data, "train_data")
    val_set = _as_dataset(val_data, "val_data") if val_data is not None else None
    if _size(train_set) == 0:
        raise ValueError("`train_data` is empty")
    if cfg.snapshots and checkpoint_dir is None:
        raise ValueError("`snapshots` are written under `checkpoint_dir`: give one")
    objective = _pretraining_objective(objective, mask_weight, counterfactual)
    run = _start(
        model,
        train_set,
        val_set,
        cfg,
        objective,
        explainer,
        explainer_options,
        normalization,
        checkpoint_dir,
        progress,
    )
    if run.ckpt and resume and os.path.isfile(os.path.join(run.ckpt, STATE_NAME)):
        _resume(run)
    with eval_mode(model), frozen_parameters(model):
        first, _ = _split_batch(train_set[0])
        run.num_classes = num_classes_of(model, first[None].to(run.device), ())[0]
        for epoch in range(run.state["epoch"], cfg.epochs):
            _end_epoch(run, epoch, _train_epoch(run, epoch))
    return _finished(run)


def _pretraining_objective(
    objective: LTXObjective | None, mask_weight: float | None, counterfactual: bool | None
) -> LTXObjective:
    if objective is not None and not isinstance(objective, LTXObjective):
        raise TypeError(
            f"`objective` must be an LTXObjective or None, got {type(objective).__name__}"
        )
    return LTXObjective.from_config(
        (objective if objective is not None else DEFAULT_PRETRAINING_OBJECTIVE).to_config(),
        mask_weight=mask_weight,
        counterfactual=counterfactual,
    )


def _initial_explainer(
    model: nn.Module, first: Tensor, seed: int, options: dict[str, Any] | None, norm: Any
) -> Explainer:
    options = dict(options or {})
    options.setdefault("input_size", tuple(first.shape))
    options.setdefault("seed", seed)
    if norm is not None:
        options.setdefault("normalization", norm)
    return Explainer.from_model(model, **options)


def _recorded_settings(
    cfg: PretrainingCfg, objective: LTXObjective, world: int, train_size: int, val_size: int
) -> dict[str, Any]:
    settings = dict(
        cfg.record(world),
        mask_weight=objective.mask_weight,
        counterfactual=objective.counterfactual,
        train_size=train_size,
        val_size=val_size,
    )
    reference = LTXObjective().to_config()
    extra = {
        k: v for k, v in objective.to_config().items() if v != reference[k] and k not in settings
    }
    if extra:  # recorded only when set, so that runs from before these settings resume
        settings["objective"] = extra
    return settings


def _lr_factor(cfg: PretrainingCfg, total_steps: int) -> Any:
    warmup_steps = int(cfg.warmup * total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def _optimizer(
    explainer: Explainer, cfg: PretrainingCfg, train_size: int, world: int
) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the explainer's trainable weights and its warm-up-then-decay schedule."""
    optimizer = torch.optim.AdamW(
        [p for p in explainer.parameters() if p.requires_grad],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )
    steps_per_epoch = -(-_shard_size(train_size, world) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_factor(cfg, cfg.epochs * steps_per_epoch)
    )
    total_images = cfg.epochs * _shard_size(train_size, world) * world
    if any(n > total_images for n in cfg.snapshots):
        warn_user(
            f"`snapshots` {[n for n in cfg.snapshots if n > total_images]} exceed the run's "
            f"{total_images} images; never written"
        )
    return optimizer, scheduler


def _start(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None,
    cfg: PretrainingCfg,
    objective: LTXObjective,
    explainer: Explainer | None,
    explainer_options: dict[str, Any] | None,
    normalization: Any,
    checkpoint_dir: Any,
    progress: bool,
) -> _Run:
    rank, world = rank_and_world()
    device = next(model.parameters()).device
    norm = (
        check_normalization(normalization) if normalization is not None else normalization_of(model)
    )
    first, _ = _split_batch(train_set[0])
    explainer = (
        explainer or _initial_explainer(model, first, cfg.seed, explainer_options, norm)
    ).to(device)
    net: nn.Module = explainer
    if (
        world > 1
    ):  # rank 0's initial weights are broadcast; hooked backbones leave the layers after the hook unused
        net = DistributedDataParallel(
            explainer,
            device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    optimizer, scheduler = _optimizer(explainer, cfg, _size(train_set), world)
    settings = _recorded_settings(
        cfg, objective, world, _size(train_set), _size(val_set) if val_set is not None else 0
    )
    run = _Run(
        cfg,
        model,
        explainer,
        net,
        objective,
        optimizer,
        scheduler,
        train_set,
        val_set,
        black_in_input_space(norm, first.unsqueeze(0).to(device)),
        device,
        settings,
        os.fspath(checkpoint_dir) if checkpoint_dir is not None else None,
        progress,
        rank,
        world,
    )
    run.state = {
        "epoch": 0,
        "images": 0,
        "best_epoch": None,
        "best_val_pos_auc": None,
        "history": [],
        "settings": settings,
    }
    return run


def _resume(run: _Run) -> None:
    ckpt = cast(str, run.ckpt)  # resumed only from a checkpoint folder
    with open(os.path.join(ckpt, STATE_NAME)) as f:
        saved = json.load(f)
    if saved["settings"] != run.settings:
        raise ValueError(
            f"`checkpoint_dir` {ckpt!r} holds a run with other settings {saved['settings']}; use another folder or resume=False"
        )
    run.state = saved
    # runs from before the image count: every finished epoch saw the (padded) data once
    run.state.setdefault(
        "images", saved["epoch"] * _shard_size(_size(run.train_set), run.world) * run.world
    )
    if (
        run.rank == 0
    ):  # the saved counts are over all processes: one holds them, or a later sum multiplies them
        run.seen_targets = collections.Counter(
            {int(k): v for k, v in saved.get("target_counts", {}).items()}
        )
    run.explainer.load_state_dict(
        Explainer.load(os.path.join(ckpt, "last"), run.model).state_dict()
    )
    _load_optimizer(
        run.optimizer, os.path.join(ckpt, OPTIMIZER_NAME), saved["optimizer_param_groups"]
    )
    run.scheduler.load_state_dict(saved["scheduler"])
    if saved["best_epoch"] is not None:
        run.best_state = Explainer.load(os.path.join(ckpt, "best"), run.model).state_dict()


def _train_epoch(run: _Run, epoch: int) -> float:
    """One pass over the training data; returns the mean loss over all processes."""
    cfg = run.cfg
    run.net.train()
    sampler: DistributedSampler | None = (
        DistributedSampler(run.train_set, shuffle=True, seed=cfg.seed) if run.world > 1 else None
    )
    if sampler is not None:
        sampler.set_epoch(epoch)
    loader = DataLoader(
        run.train_set,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed + epoch),
        drop_last=False,
    )
    bar = tqdm(
        loader,
        desc=f"pretrain epoch {epoch + 1}/{cfg.epochs}",
        disable=not run.progress or run.rank != 0,
        leave=False,
    )
    running = 0.0
    for i, batch in enumerate(bar):
        x, labels = _split_batch(batch)
        draw = ((cfg.seed * 1009 + run.rank) * 1009 + epoch) * 100_003 + i
        running += _train_step(run, x.to(run.device), labels, draw)
        bar.set_postfix(loss=f"{running / (i + 1):.4f}")
    total = torch.tensor([running, float(len(loader))], dtype=torch.float64, device=run.device)
    if run.world > 1:
        dist.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).item()


def _train_step(run: _Run, x: Tensor, labels: Tensor | None, draw: int) -> float:
    t = _targets(run.model, x, labels, run.cfg.target, draw=draw, num_classes=run.num_classes)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=run.cfg.autocast):
        mask, low_res = run.net(x, target=t, return_low_res=True)
        loss = run.objective(
            run.model,
            x,
            mask,
            low_res,
            t,
            run.fill,
            generator=torch.Generator().manual_seed(draw + 1),
        ).mean()
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()  # the model's parameters are frozen for the run: nothing reaches its .grad
    run.optimizer.step()
    run.scheduler.step()
    before = run.state["images"]
    run.state["images"] += (
        len(x) * run.world
    )  # DistributedSampler gives every process equal batches
    run.seen_targets.update(t.tolist())
    for images in run.cfg.snapshots:
        if before < images <= run.state["images"]:
            _snapshot(run, images)
    return loss.item()


def _all_targets(run: _Run) -> collections.Counter:
    """The classes targeted so far, over all processes."""
    if run.world == 1:
        return run.seen_targets
    gathered: list[Any] = [None] * run.world
    dist.all_gather_object(gathered, dict(run.seen_targets))
    return sum((collections.Counter(g) for g in gathered), collections.Counter())


def _snapshot(run: _Run, images: int) -> None:
    """Writes the explainer after ``images`` training images, with how many classes they targeted."""
    distinct = len(_all_targets(run))
    if run.rank == 0:
        explainer = copy.deepcopy(run.explainer).cpu()
        explainer.zero_grad(set_to_none=True)
        explainer.record(training=dict(run.settings, images=images, distinct_targets=distinct))
        _record_finetuning_objective(explainer, run.objective)
        # `snapshots` need a `checkpoint_dir`: pretrain() checks
        explainer.save(os.path.join(cast(str, run.ckpt), "snapshots", str(images)))
    if run.rank == 0 and run.progress:
        tqdm.write(f"snapshot after {images} images ({distinct} distinct target classes)")


def _end_epoch(run: _Run, epoch: int, train_loss: float) -> None:
    """Validation, the best epoch so far, the log line and the checkpoint."""
    state = run.state
    targets = _all_targets(run)
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "distinct_targets": len(targets),
    }
    run.explainer.eval()
    if run.val_set is not None:
        record["val_pos_auc"] = validation_pos_auc(
            run.model,
            run.explainer,
            run.val_set,
            batch_size=run.cfg.batch_size,
            fill=run.fill,
            device=run.device,
            num_classes=run.num_classes,
            target="predicted"
            if run.cfg.target == "sampled"
            else run.cfg.target,  # the same classes every epoch
        )
    if (
        run.val_set is None
        or state["best_val_pos_auc"] is None
        or record["val_pos_auc"] < state["best_val_pos_auc"]
    ):
        state["best_epoch"], state["best_val_pos_auc"] = epoch + 1, record.get("val_pos_auc")
        run.best_state = {
            k: v.detach().cpu().clone() for k, v in run.explainer.state_dict().items()
        }
    state["history"].append(record)
    state["epoch"] = epoch + 1
    state["target_counts"] = {str(k): v for k, v in sorted(targets.items())}
    if run.rank == 0 and run.progress:
        skipped = _skipped_files(run.train_set)
        tqdm.write(
            f"epoch {epoch + 1}/{run.cfg.epochs}: "
            + ", ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in record.items()
                if k != "epoch"
            )
            + (f", unreadable images skipped so far: {skipped}" if skipped else "")
        )
    if run.ckpt and run.rank == 0:
        _write_checkpoint(run)


def _write_checkpoint(run: _Run) -> None:
    ckpt = cast(str, run.ckpt)  # written only with a checkpoint folder
    os.makedirs(ckpt, exist_ok=True)
    run.explainer.save(os.path.join(ckpt, "last"))
    if run.best_state is not None and run.state["best_epoch"] == run.state["epoch"]:
        run.explainer.save(os.path.join(ckpt, "best"))
    groups = _save_optimizer(run.optimizer, os.path.join(ckpt, OPTIMIZER_NAME))
    _atomic_json(
        dict(run.state, optimizer_param_groups=groups, scheduler=run.scheduler.state_dict()),
        os.path.join(ckpt, STATE_NAME),
    )


def _finished(run: _Run) -> Explainer:
    """The best epoch's explainer with its training record and the finetuning objective LTX will use."""
    explainer, state = run.explainer, run.state
    run.optimizer.zero_grad(set_to_none=True)
    # the first epoch sets the best state (or a resumed run loads it)
    explainer.load_state_dict(cast(dict[str, Tensor], run.best_state))
    explainer.record(
        training=dict(
            run.settings,
            best_epoch=state["best_epoch"],
            best_val_pos_auc=state["best_val_pos_auc"],
            history=state["history"],
        )
    )
    _record_finetuning_objective(explainer, run.objective)
    return explainer.cpu().eval()


def _record_finetuning_objective(explainer: Explainer, objective: LTXObjective) -> None:
    """Unless it has one: LTX finetunes this checkpoint with the default objective at the pretraining's mask weight."""
    if explainer.finetuning.objective is None:
        default = dataclasses.replace(
            DEFAULT_FINETUNING_OBJECTIVE, mask_weight=objective.mask_weight
        )
        explainer.record_finetuning(objective=default.to_config())
