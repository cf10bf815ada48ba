"""Pretraining of an LTX explainer over a data set (the reference's "pLTX" stage)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset
from tqdm.auto import tqdm

from ._model import black_in_input_space, check_normalization, eval_mode, normalization_of
from ._validation import check_choice, check_images, check_positive_int
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
    raise TypeError(f"`{name}` must be a tensor of images or a Dataset of images or (image, label) pairs, got {type(data).__name__}")


def _skipped_files(data: Any) -> int:
    """How many unreadable files a folder dataset (``ImageFolderData``, maybe wrapped) has skipped."""
    while not hasattr(data, "skipped") and hasattr(data, "data"):
        data = data.data
    return len(getattr(data, "skipped", ()))


def _split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise TypeError(f"data items must be images or (image, label) pairs, got {type(batch).__name__}")


def _targets(model: nn.Module, x: Tensor, labels: Tensor | None, target: str, draw: int = 0) -> Tensor:
    if target == "label":
        if labels is None:
            raise ValueError("`target='label'` needs (image, label) items; use target='predicted' for unlabelled data")
        if (labels < 0).any():  # ImageFolderData.UNLABELLED: a flat folder has no classes
            raise ValueError("`target='label'` needs labelled data (a folder of class folders); use target='predicted'")
        return labels.to(x.device).long()
    with torch.no_grad():
        logits = model(x)
    if target == "sampled":
        # a generator per batch (``draw``): a resumed run draws the classes an uninterrupted one would
        generator = torch.Generator().manual_seed(draw)
        return torch.multinomial(logits.float().softmax(dim=1).cpu(), 1, generator=generator)[:, 0].to(x.device)
    return logits.argmax(dim=1)


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _save_optimizer(optimizer: torch.optim.Optimizer, path: str) -> list[dict[str, Any]]:
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors = {
        f"{index}.{key}": (value if isinstance(value, Tensor) else torch.tensor(value)).detach().cpu().contiguous()
        for index, entries in state["state"].items()
        for key, value in entries.items()
    }
    save_file(tensors, path)
    return state["param_groups"]


def _load_optimizer(optimizer: torch.optim.Optimizer, path: str, param_groups: list[dict[str, Any]]) -> None:
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
    model: nn.Module, explainer: Explainer, data: Dataset, *, batch_size: int, target: str, fill: Tensor | None = None, device: Any = None
) -> float:
    """Mean positive-perturbation AUC (accuracy, lower is better) of the explainer's masks on ``data``."""
    rank, world = _distributed()
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, sampler=DistributedSampler(data, shuffle=False) if world > 1 else None)
    total = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for batch in loader:
            x, labels = _split_batch(batch)
            x = x.to(device)
            t = _targets(model, x, labels, target)
            aucs = perturbation_auc(model, x, explainer(x, target=t), t, order="positive", baseline=fill)
            total += torch.stack([aucs.sum().double(), torch.tensor(float(len(aucs)), dtype=torch.float64, device=device)])
    if world > 1:
        dist.all_reduce(total)
    return (total[0] / total[1]).item()


def pretrain(
    model: nn.Module,
    train_data: Any,
    *,
    val_data: Any = None,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 2e-4,
    weight_decay: float = 0.01,
    warmup: float = 0.2,
    mask_weight: float | None = None,
    counterfactual: bool | None = None,
    objective: LTXObjective | None = None,
    target: str = "label",
    explainer: Explainer | None = None,
    explainer_options: dict[str, Any] | None = None,
    normalization: Any = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
) -> Explainer:
    r"""Pretrains an LTX explainer for ``model`` and returns the one of the best epoch.

    Every step minimises :class:`~captum_ltx.LTXObjective` over a batch with AdamW and a linear
    warm-up then linear decay of the learning rate. After each epoch the explainer is scored on
    ``val_data`` by its mean positive-perturbation AUC (lower is better) and the best epoch is kept, as
    in the reference; without ``val_data`` the last epoch is kept.

    With ``checkpoint_dir``, each epoch writes ``last/`` and ``best/`` (explainer checkpoints), the
    optimiser state (safetensors) and ``state.json``; a later call with ``resume=True`` continues after
    the last finished epoch with identical shuffling. Under ``torchrun`` (an initialised
    ``torch.distributed`` process group) each process takes a shard of every epoch, gradients are
    averaged across processes and rank 0 writes the checkpoints.

    Args:
        model (nn.Module): the explained classifier, on the device to train on; it is not changed.
        train_data: a tensor of images, or a Dataset of images or (image, label) pairs, as the model
            takes them (normalised).
        val_data: the same, for choosing the epoch.
        epochs, batch_size, lr, weight_decay: training settings; ``warmup`` is the warm-up fraction.
            ``lr`` defaults to 2e-4, the most the reference's schedule ever reaches (its 2e-3 flag
            never leaves warm-up); at 2e-3 the copied backbone of EfficientNet-Lite0 collapsed to
            one mask for every image (benchmarks/results/lite0-tuning.md).
        objective (LTXObjective, optional): what each step minimises (default:
            ``DEFAULT_PRETRAINING_OBJECTIVE``, the reference's with a black/blur baseline mixture;
            ``LTXObjective()`` is the reference's own);
            ``mask_weight`` and ``counterfactual`` override its fields. With ``baseline="mix"`` each
            image draws black or blur, seeded by ``seed``, the epoch and the step.
        target (str): ``"label"`` (the data's labels, the reference's "target" checkpoints),
            ``"predicted"`` (the model's top class) or ``"sampled"`` (a class drawn from the model's
            softmax, so that a class-conditioned explainer also learns the masks of runners-up,
            such as the second item of a two-item scene).
        explainer (Explainer, optional): where to start; default :meth:`Explainer.from_model`
            with ``explainer_options``.
        normalization (tuple, optional): (mean, std) of the inputs; default the model's timm config.
        checkpoint_dir (str, optional): folder for resumable checkpoints.
        seed (int): seeds the shuffling and the head's initialisation.

    Returns:
        The :class:`~captum_ltx.Explainer` of the best epoch, with its settings in ``config["training"]``
        and, unless it already had one, the finetuning objective LTX will use in
        ``config["finetuning"]["objective"]``: ``DEFAULT_FINETUNING_OBJECTIVE`` at the pretraining's
        mask weight.

    Example::

        >>> explainer = pretrain(model, train_set, val_data=val_set, epochs=5, checkpoint_dir="ckpt")
        >>> explainer.save("model-ltx"); attr = LTX(model, "model-ltx").attribute(x, target=c)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size")
    check_choice(target, "target", ("label", "predicted", "sampled"))
    if not 0 <= warmup < 1:
        raise ValueError(f"`warmup` must be a fraction in [0, 1), got {warmup!r}")
    train_set = _as_dataset(train_data, "train_data")
    val_set = _as_dataset(val_data, "val_data") if val_data is not None else None
    if len(train_set) == 0:
        raise ValueError("`train_data` is empty")
    rank, world = _distributed()
    device = next(model.parameters()).device
    norm = check_normalization(normalization) if normalization is not None else normalization_of(model)

    first, _ = _split_batch(train_set[0])
    if explainer is None:
        options = dict(explainer_options or {})
        options.setdefault("input_size", tuple(first.shape))
        options.setdefault("seed", seed)
        if norm is not None:
            options.setdefault("normalization", norm)
        explainer = Explainer.from_model(model, **options)
    explainer.to(device)
    if objective is not None and not isinstance(objective, LTXObjective):
        raise TypeError(f"`objective` must be an LTXObjective or None, got {type(objective).__name__}")
    objective = LTXObjective.from_config(
        (objective if objective is not None else DEFAULT_PRETRAINING_OBJECTIVE).to_config(), mask_weight=mask_weight, counterfactual=counterfactual
    )
    settings = dict(
        epochs=epochs, batch_size=batch_size * world, lr=lr, weight_decay=weight_decay, warmup=warmup,
        mask_weight=objective.mask_weight, counterfactual=objective.counterfactual, target=target, seed=seed,
        train_size=len(train_set), val_size=len(val_set) if val_set is not None else 0,
    )
    reference = LTXObjective().to_config()
    extra = {k: v for k, v in objective.to_config().items() if v != reference[k] and k not in settings}
    if extra:  # recorded only when set, so that runs from before these settings resume
        settings["objective"] = extra
    params = [p for p in explainer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sampler = DistributedSampler(train_set, shuffle=True, seed=seed) if world > 1 else None
    steps_per_epoch = -(-len(sampler if sampler else train_set) // batch_size)
    total_steps = epochs * steps_per_epoch
    warmup_steps = int(warmup * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (step + 1) / warmup_steps if step < warmup_steps else max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps)),
    )
    fill = black_in_input_space(norm, first.unsqueeze(0).to(device))

    state: dict[str, Any] = {"epoch": 0, "best_epoch": None, "best_val_pos_auc": None, "history": [], "settings": settings}
    best_state = None
    ckpt = os.fspath(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt and resume and os.path.isfile(os.path.join(ckpt, STATE_NAME)):
        with open(os.path.join(ckpt, STATE_NAME)) as f:
            saved = json.load(f)
        if saved["settings"] != settings:
            raise ValueError(
                f"`checkpoint_dir` {ckpt!r} holds a run with other settings {saved['settings']}; use another folder or resume=False"
            )
        state = saved
        explainer.load_state_dict(Explainer.load(os.path.join(ckpt, "last"), model).state_dict())
        _load_optimizer(optimizer, os.path.join(ckpt, OPTIMIZER_NAME), saved["optimizer_param_groups"])
        scheduler.load_state_dict(saved["scheduler"])
        if saved["best_epoch"] is not None:
            best_state = Explainer.load(os.path.join(ckpt, "best"), model).state_dict()

    with eval_mode(model):
        for epoch in range(state["epoch"], epochs):
            explainer.train()
            if sampler is not None:
                sampler.set_epoch(epoch)
            loader = DataLoader(
                train_set, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, num_workers=num_workers,
                generator=torch.Generator().manual_seed(seed + epoch), drop_last=False,
            )
            bar = tqdm(loader, desc=f"pretrain epoch {epoch + 1}/{epochs}", disable=not progress or rank != 0, leave=False)
            running = 0.0
            for i, batch in enumerate(bar):
                x, labels = _split_batch(batch)
                x = x.to(device)
                draw = ((seed * 1009 + rank) * 1009 + epoch) * 100_003 + i
                t = _targets(model, x, labels, target, draw=draw)
                mask, low_res = explainer(x, target=t, return_low_res=True)
                loss = objective(model, x, mask, low_res, t, fill, generator=torch.Generator().manual_seed(draw + 1)).mean()
                # autograd.grad rather than backward(): nothing accumulates in the explained model's .grad.
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for p, g in zip(params, grads):
                    if world > 1 and g is not None:
                        dist.all_reduce(g)
                        g /= world
                    p.grad = g
                optimizer.step()
                scheduler.step()
                running += loss.item()
                bar.set_postfix(loss=f"{running / (i + 1):.4f}")
            mean_loss = torch.tensor([running, float(len(loader))], dtype=torch.float64, device=device)
            if world > 1:
                dist.all_reduce(mean_loss)
            record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": (mean_loss[0] / mean_loss[1].clamp(min=1)).item()}
            explainer.eval()
            improved = val_set is None
            if val_set is not None:
                record["val_pos_auc"] = validation_pos_auc(
                    model, explainer, val_set, batch_size=batch_size, fill=fill, device=device,
                    target="predicted" if target == "sampled" else target,  # the same classes every epoch
                )
                improved = state["best_val_pos_auc"] is None or record["val_pos_auc"] < state["best_val_pos_auc"]
            if improved:
                state["best_epoch"], state["best_val_pos_auc"] = epoch + 1, record.get("val_pos_auc")
                best_state = {k: v.detach().cpu().clone() for k, v in explainer.state_dict().items()}
            state["history"].append(record)
            state["epoch"] = epoch + 1
            if rank == 0 and progress:
                skipped = _skipped_files(train_set)
                tqdm.write(f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch")
                           + (f", unreadable images skipped so far: {skipped}" if skipped else ""))
            if ckpt and rank == 0:
                _write_checkpoint(ckpt, explainer, best_state, optimizer, scheduler, state, settings)

    explainer.load_state_dict(best_state)
    explainer.config["training"] = dict(settings, best_epoch=state["best_epoch"], best_val_pos_auc=state["best_val_pos_auc"], history=state["history"])
    # LTX finetunes this checkpoint with the library's default objective at the pretraining's mask weight
    explainer.config.setdefault("finetuning", {}).setdefault(
        "objective", dataclasses.replace(DEFAULT_FINETUNING_OBJECTIVE, mask_weight=objective.mask_weight).to_config()
    )
    return explainer.cpu().eval()


def _write_checkpoint(
    ckpt: str, explainer: Explainer, best_state: dict[str, Tensor] | None, optimizer: torch.optim.Optimizer,
    scheduler: Any, state: dict[str, Any], settings: dict[str, Any],
) -> None:
    os.makedirs(ckpt, exist_ok=True)
    explainer.save(os.path.join(ckpt, "last"))
    if best_state is not None and state["best_epoch"] == state["epoch"]:
        explainer.save(os.path.join(ckpt, "best"))
    state = dict(state, optimizer_param_groups=_save_optimizer(optimizer, os.path.join(ckpt, OPTIMIZER_NAME)), scheduler=scheduler.state_dict())
    _atomic_json(state, os.path.join(ckpt, STATE_NAME))
