"""LTX (Learning to Explain, Barkan et al., ICDM 2023) as a Captum attribution."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from typing import Any, Callable

import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn

from ._base import single_image_input
from ._model import black_in_input_space, check_normalization, eval_mode, normalization_of, num_classes_of
from ._validation import (
    check_choice,
    check_images,
    check_positive_int,
    format_baseline,
    format_forward_args,
    format_target,
    select_rows,
)
from .explainer import Explainer
from .metrics.perturbation import perturbation_auc
from .objective import DEFAULT_FINETUNING_OBJECTIVE, DEFAULT_MASK_WEIGHT, LTXObjective, blurred

DEFAULT_LR = 2e-3
FRESH_HEAD_STEP = 1.0
FRESH_BACKBONE_LR = 2e-3
DEFAULT_FINETUNE_STEPS = 25

SELECTIONS = ("loss", "last", "mean", "pos_auc")
FINETUNED_PARTS = ("all", "head")


class LTXAttribution(Attribution):
    r"""LTX: an explainer network, pretrained once per model, then finetuned for a few steps per image.

    The explainer predicts a mask m in [0, 1]; finetuning minimises the objective
    (:class:`~captum_ltx.LTXObjective`; by default ``CE(f(x * m + b * (1 - m)), c) + mask_weight * mean(m)``)
    on the explained image alone, starting
    from the same weights for every image, so instances in a batch are explained independently and a
    batch gives the maps its images would give one by one. ``finetune_steps=0`` is pLTX, one forward
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
            its checkpoint folder, or ``None`` to derive one from ``forward_func`` at the first call (a
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
        finetune (str): explainer parts trained per image: ``"all"`` (reference) or ``"head"``.
        pos_auc_early_stop (float): early-stop threshold of ``"pos_auc"`` (reference: 6.0).
        explainer_options (dict, optional): :meth:`Explainer.from_model` options of a fresh head.
        transfer (bool): ``explainer`` (a checkpoint path) was made for another model; explain this
            one with it, finetuned against this model (:meth:`Explainer.load` with ``transfer=True``).

    Example::

        >>> import timm
        >>> from captum_ltx import LTX
        >>> model = timm.create_model("resnet18", num_classes=10).eval()
        >>> ltx = LTX(model, "checkpoints/resnet18-ltx")      # or LTX(model) for a fresh head
        >>> attr = ltx.attribute(images, target=3)             # (B, 3, H, W), mask over channels
    """

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
        finetune: str = "all",
        pos_auc_early_stop: float = 6.0,
        explainer_options: dict[str, Any] | None = None,
        transfer: bool = False,
    ) -> None:
        if not callable(forward_func):
            raise TypeError(f"`forward_func` must be callable, got {type(forward_func).__name__}")
        super().__init__(forward_func)
        for name, value in (("lr", lr), ("backbone_lr", backbone_lr), ("mask_weight", mask_weight), ("weight_decay", weight_decay)):
            if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
        self.weight_decay = float(weight_decay)
        self.selection = check_choice(selection, "selection", SELECTIONS)
        self.finetune = check_choice(finetune, "finetune", FINETUNED_PARTS)
        self.pos_auc_early_stop = float(pos_auc_early_stop)
        self._explainer_options = dict(explainer_options or {})

        if explainer is None:
            if not isinstance(forward_func, nn.Module):
                raise TypeError("`explainer` must be given when `forward_func` is not an nn.Module to copy a backbone from")
            self.explainer: Explainer | None = None
        elif isinstance(explainer, Explainer):
            self.explainer = explainer
        elif isinstance(explainer, (str, os.PathLike)):
            model = forward_func if isinstance(forward_func, nn.Module) else None
            self.explainer = Explainer.load(explainer, model, transfer=transfer)
        else:
            raise TypeError(f"`explainer` must be an Explainer, a checkpoint path or None, got {type(explainer).__name__}")
        # A checkpoint may carry the finetuning settings chosen with it; explicit arguments win.
        chosen = self.explainer.config.get("finetuning", {}) if self.explainer is not None else {}
        self._rates = (lr, backbone_lr)
        self.lr: float | None = None
        self.backbone_lr: float | None = None
        if self.explainer is not None:
            self._resolve_rates(self.explainer)
        self.finetune_steps = check_positive_int(
            finetune_steps if finetune_steps is not None else chosen.get("finetune_steps", DEFAULT_FINETUNE_STEPS),
            "finetune_steps", allow_zero=True)
        if objective is not None and not isinstance(objective, (LTXObjective, dict)):
            raise TypeError(f"`objective` must be an LTXObjective, a dict of its settings or None, got {type(objective).__name__}")
        # "mask_weight" alone was written before the objective was recorded whole
        legacy = {"mask_weight": chosen["mask_weight"]} if "mask_weight" in chosen else {}
        if "objective" in chosen:
            recorded = {**legacy, **chosen["objective"]}
        elif self.explainer is not None and self.explainer.config.get("training"):
            recorded = legacy  # pretrained before objectives were recorded: the reference's, as it was made with
        else:  # a fresh head
            recorded = {**DEFAULT_FINETUNING_OBJECTIVE.to_config(), **legacy}
        if isinstance(objective, LTXObjective):
            objective = objective.to_config()
        base = {**recorded, **objective} if objective is not None else recorded
        self.objective = LTXObjective.from_config(base, mask_weight=mask_weight, counterfactual=counterfactual)

        if normalization is not None:
            self.normalization = check_normalization(normalization)
        else:
            self.normalization = normalization_of(forward_func) or (self.explainer.normalization if self.explainer else None)
        self._work: Explainer | None = None

    @classmethod
    def get_name(cls) -> str:
        return "LTX"

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: Any = None,
        baselines: Any = None,
        additional_forward_args: Any = None,
        *,
        finetune_steps: int | None = None,
    ) -> Tensor | tuple[Tensor, ...]:
        r"""Explains each image by a mask in [0, 1] repeated over its channels.

        Args:
            inputs (Tensor or tuple): images (B, C, H, W) as the model takes them, or a 1-tuple of them.
                Other model inputs go in ``additional_forward_args``.
            target (int, list, Tensor or None): the class explained per image, in any Captum form;
                ``None`` explains the model's own prediction.
            baselines (scalar, Tensor or None): what fills removed pixels, in the inputs' space.
                Default: black in pixel space (the normalised value of 0).
            additional_forward_args (Any, optional): further arguments of the model, after the images.
            finetune_steps (int, optional): overrides the instance's setting for this call; 0 is pLTX.

        Returns:
            Tensor (or 1-tuple, if ``inputs`` was a tuple) of the inputs' shape, values in [0, 1].
        """
        x, is_tuple = single_image_input(inputs, "LTX")
        steps = self.finetune_steps if finetune_steps is None else check_positive_int(
            finetune_steps, "finetune_steps", allow_zero=True
        )
        if self.explainer is not None:
            check_images(x, channels=self.explainer.config["input_size"][0])
        args = format_forward_args(additional_forward_args)
        batch = x.shape[0]
        with eval_mode(self.forward_func):
            num_classes, predicted = num_classes_of(self.forward_func, x, args)
            targets = format_target(target, batch, num_classes, predicted).to(x.device)
            work = self._working_explainer(x, select_rows(args, slice(0, 1), batch))
            fill = format_baseline(baselines, x, black_in_input_space(self.normalization, x))
            # baselines the caller gives replace the objective's own (blur, mix)
            objective = self.objective if baselines is None else dataclasses.replace(self.objective, baseline="black")
            if steps == 0:
                with torch.no_grad():
                    mask = work(x, *args, target=targets)
            else:
                mask = torch.cat([
                    self._finetune(
                        work,
                        x[i : i + 1],
                        targets[i : i + 1],
                        fill[i : i + 1] if fill.dim() == 4 and fill.shape[0] == batch else fill,
                        select_rows(args, slice(i, i + 1), batch),
                        steps,
                        objective,
                    )
                    for i in range(batch)
                ])
        attributions = mask.detach().to(x.dtype).expand_as(x).contiguous()
        return (attributions,) if is_tuple else attributions

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
        chosen = explainer.config.get("finetuning", {})
        fresh = not explainer.config.get("training") and explainer.config.get("mask_prior") is not None
        default = FRESH_HEAD_STEP / explainer.config["features"]["channels"] if fresh else DEFAULT_LR
        self.lr = float(lr if lr is not None else chosen.get("lr", default))
        default_backbone = FRESH_BACKBONE_LR if fresh and lr is None and "lr" not in chosen else self.lr
        self.backbone_lr = float(backbone_lr if backbone_lr is not None else chosen.get("backbone_lr", default_backbone))

    def _finetune(
        self, work: Explainer, x: Tensor, target: Tensor, fill: Tensor, args: tuple[Any, ...], steps: int, objective: LTXObjective
    ) -> Tensor:
        work.load_state_dict(self.explainer.state_dict())
        head = [p for n, p in work.named_parameters() if not n.startswith("backbone.")]
        groups: list[dict[str, Any]] = [{"params": head, "lr": self.lr}]
        if self.finetune == "all":
            groups.append({"params": list(work.backbone.parameters()), "lr": self.backbone_lr})
        params = [p for g in groups for p in g["params"]]
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        best_mask, best_score = None, math.inf
        mask_sum = 0.0
        blur = blurred(x) if objective.baseline in ("blur", "mix") else None
        with torch.enable_grad():
            for step in range(steps + 1):
                mask, low_res = work(x, *args, target=target, return_low_res=True)
                loss = objective(self.forward_func, x, mask, low_res, target, fill, args, blurred_input=blur).sum()
                if self.selection == "mean":
                    mask_sum = mask_sum + mask.detach()
                score = self._selection_score(step, loss, mask, x, target, fill, args)
                if score < best_score:
                    best_mask, best_score = mask.detach(), score
                if step == steps or (self.selection == "pos_auc" and score < self.pos_auc_early_stop):
                    break
                # autograd.grad rather than backward(): nothing accumulates in the explained model's .grad.
                for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
                    p.grad = g
                optimizer.step()
        return mask_sum / (step + 1) if self.selection == "mean" else best_mask

    def _selection_score(
        self, step: int, loss: Tensor, mask: Tensor, x: Tensor, target: Tensor, fill: Tensor, args: tuple[Any, ...]
    ) -> float:
        if self.selection == "loss":
            return loss.item()
        if self.selection in ("last", "mean"):
            return -step
        return perturbation_auc(
            self.forward_func, x, mask.detach(), target, order="positive", baseline=fill, additional_forward_args=args or None
        ).item()


LTX = LTXAttribution
