"""The LTX objective, used unchanged by pretraining and by per-instance finetuning."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validation import check_nonnegative_number, repeat_rows
from .metrics.perturbation import gaussian_blur

DEFAULT_MASK_WEIGHT = 3.0
BASELINES = ("black", "blur", "mix")
# the blur baseline's Gaussian sigma, as a fraction of the image's longer side (11 px at 224)
BLUR_SIGMA = 0.05


def masked_input(x: Tensor, mask: Tensor, baseline: Tensor) -> Tensor:
    """Keeps ``x`` where ``mask`` is 1 and ``baseline`` where it is 0.

    A convex combination commutes with the model's affine normalisation, so doing this on normalised
    inputs with a normalised baseline equals the reference's masking in [0, 1] pixel space.
    """
    return x * mask + baseline * (1 - mask)


def blurred(x: Tensor, sigma: float | None = None) -> Tensor:
    """``x`` under a Gaussian blur with replicated borders (3 sigma each side). Blur is linear and
    keeps constants, so blurring normalised inputs equals normalising blurred pixels."""
    sigma = BLUR_SIGMA * max(x.shape[-2:]) if sigma is None else sigma
    return gaussian_blur(x, 2 * max(1, math.ceil(3 * sigma)) + 1, sigma, padding="replicate")


def complement_loss(logits: Tensor, target: Tensor) -> Tensor:
    """``-log(1 - p_c)``: zero when class c is gone. Unlike the reference's ``-CE`` it is bounded
    below, so it cannot outweigh the rest of the objective by driving one logit to minus infinity."""
    others = logits.scatter(1, target.view(-1, 1), float("-inf"))
    return torch.logsumexp(logits, dim=1) - torch.logsumexp(others, dim=1)


def area_loss(low_res_mask: Tensor, area: tuple[float, float]) -> Tensor:
    """Squared distance of the sorted mask to the band ``area = (low, high)``: the largest ``low``
    share of locations should be 1 and all beyond the largest ``high`` share 0 (with low == high,
    the area constraint of extremal perturbations). Mean over locations, one value per image."""
    values = low_res_mask.flatten(1).sort(dim=1, descending=True).values
    n = values.shape[1]
    rank = torch.arange(n, device=values.device)
    low, high = round(area[0] * n), round(area[1] * n)
    under = torch.where(rank < low, (1 - values) ** 2, torch.zeros_like(values))
    over = torch.where(rank >= high, values**2, torch.zeros_like(values))
    return (under + over).mean(dim=1)


def total_variation(low_res_mask: Tensor) -> Tensor:
    """Mean absolute difference between neighbouring locations (both axes), one value per image."""
    m = low_res_mask[:, 0]
    dh = (
        (m[:, 1:, :] - m[:, :-1, :]).abs().flatten(1).mean(dim=1)
        if m.shape[1] > 1
        else m.new_zeros(m.shape[0])
    )
    dw = (
        (m[:, :, 1:] - m[:, :, :-1]).abs().flatten(1).mean(dim=1)
        if m.shape[2] > 1
        else m.new_zeros(m.shape[0])
    )
    return dh + dw


@dataclass(frozen=True)
class LTXObjective:
    """What LTX minimises, one value per image; every term but the first is optional.

    ``CE(f(x * m + b * (1 - m)), c)``  (keep class c on the kept part)
    ``+ mask_weight * mean(m)``  (the reference's size penalty, on the low-resolution mask)
    ``+ complement_weight * -log(1 - p_c(f(x * (1 - m) + b * m)))``  (class c gone from the rest)
    ``+ area_weight * area_loss(m, area)``  (the mask's sorted values held to an area band)
    ``+ tv_weight * TV(m)``  (smoothness)

    Args:
        mask_weight (float): weight of the mean of the low-resolution mask.
        counterfactual (bool): the reference's first-version term: the prediction term becomes
            ``(CE(m) - CE(1 - m)) / 2``. Kept for old checkpoints; ``complement_weight`` is bounded.
        complement_weight (float): weight of the deletion-side term on the complement ``1 - m``.
        area (tuple, optional): ``(low, high)`` fractions of the image the mask should cover (a
            single number means ``(a, a)``); with ``area_weight``.
        area_weight (float): weight of the area term (used only with ``area``).
        tv_weight (float): weight of the total variation of the low-resolution mask.
        baseline (str): what fills removed pixels: ``"black"`` (the fill the caller gives: black in
            pixel space unless ``baselines`` says otherwise), ``"blur"`` (a Gaussian blur of the image)
            or ``"mix"``: black or blur drawn per image when a ``generator`` is given (pretraining),
            else the mean of the objective over both (finetuning, so that every step sees the same
            objective).

    Example::

        >>> objective = LTXObjective(mask_weight=0, area=(0.05, 0.3), area_weight=3, complement_weight=1)
        >>> LTX(model, objective=objective).attribute(x, target=c)
    """

    mask_weight: float = DEFAULT_MASK_WEIGHT
    counterfactual: bool = False
    complement_weight: float = 0.0
    area: tuple[float, float] | None = None
    area_weight: float = 1.0
    tv_weight: float = 0.0
    baseline: str = "black"

    def __post_init__(self) -> None:
        for name in ("mask_weight", "complement_weight", "area_weight", "tv_weight"):
            check_nonnegative_number(getattr(self, name), name)
        if self.baseline not in BASELINES:
            raise ValueError(f"`baseline` must be one of {list(BASELINES)}, got {self.baseline!r}")
        if self.area is not None:
            area = (self.area, self.area) if isinstance(self.area, (int, float)) else self.area
            try:
                low, high = (float(a) for a in area)
            except (TypeError, ValueError):
                raise ValueError(
                    f"`area` must be a fraction or a pair (low, high) of fractions, got {self.area!r}"
                ) from None
            if not 0 <= low <= high <= 1:
                raise ValueError(f"`area` must satisfy 0 <= low <= high <= 1, got {self.area!r}")
            object.__setattr__(self, "area", (low, high))
        object.__setattr__(self, "counterfactual", bool(self.counterfactual))

    def to_config(self) -> dict[str, Any]:
        """The settings as JSON values, for a checkpoint's config."""
        config = dataclasses.asdict(self)
        config["area"] = list(self.area) if self.area is not None else None
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], **overrides: Any) -> LTXObjective:
        """Reads :meth:`to_config`'s dict (missing keys take the defaults); ``overrides`` win."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown objective settings {unknown}; known: {sorted(known)}")
        values = {**config, **{k: v for k, v in overrides.items() if v is not None}}
        if isinstance(values.get("area"), list):
            values["area"] = tuple(values["area"])
        return cls(**values)

    def __call__(
        self,
        forward_func: Callable[..., Tensor],
        x: Tensor,
        mask: Tensor,
        low_res_mask: Tensor,
        target: Tensor,
        baseline: Tensor,
        additional_forward_args: tuple[Any, ...] = (),
        generator: torch.Generator | None = None,
        blurred_input: Tensor | None = None,
    ) -> Tensor:
        """``blurred_input``: ``blurred(x)`` when the caller already has it (finetuning calls the
        objective on the same image at every step)."""
        fill = baseline.expand_as(x) if baseline.dim() > 0 else baseline
        if self.baseline in ("blur", "mix"):
            blur = (blurred(x) if blurred_input is None else blurred_input).detach()
        if self.baseline == "blur" or (self.baseline == "mix" and generator is not None):
            if self.baseline == "blur":
                fill = blur
            else:
                pick = (
                    torch.rand(x.shape[0], generator=generator).to(x.device).view(-1, 1, 1, 1) < 0.5
                )
                fill = torch.where(pick, blur, baseline.expand_as(x))
        elif self.baseline == "mix":
            # both fills in one forward of twice the batch, image by image: [x0 on black, x0 on blur, x1 ...]
            n = x.shape[0]
            both = self._removal_terms(
                forward_func,
                x.repeat_interleave(2, dim=0),
                mask.repeat_interleave(2, dim=0),
                target.repeat_interleave(2, dim=0),
                torch.stack([baseline.expand_as(x), blur], dim=1).flatten(0, 1),
                repeat_rows(additional_forward_args, 2, n),
            )
            return both.view(n, 2).mean(dim=1) + self._mask_terms(low_res_mask)
        return self._removal_terms(
            forward_func, x, mask, target, fill, additional_forward_args
        ) + self._mask_terms(low_res_mask)

    def _removal_terms(
        self,
        forward_func: Callable[..., Tensor],
        x: Tensor,
        mask: Tensor,
        target: Tensor,
        fill: Tensor,
        args: tuple[Any, ...],
    ) -> Tensor:
        logits = forward_func(masked_input(x, mask, fill), *args)
        loss = F.cross_entropy(logits, target, reduction="none")
        if self.counterfactual or self.complement_weight > 0:
            complement = forward_func(masked_input(x, 1 - mask, fill), *args)
            if self.counterfactual:
                loss = (loss - F.cross_entropy(complement, target, reduction="none")) / 2
            if self.complement_weight > 0:
                loss = loss + self.complement_weight * complement_loss(complement, target)
        return loss

    def _mask_terms(self, low_res_mask: Tensor) -> Tensor:
        loss = self.mask_weight * low_res_mask.flatten(1).mean(dim=1)
        if self.area is not None and self.area_weight > 0:
            loss = loss + self.area_weight * area_loss(low_res_mask, self.area)
        if self.tv_weight > 0:
            loss = loss + self.tv_weight * total_variation(low_res_mask)
        return loss


# What finetuning minimises unless a checkpoint records otherwise: the reference objective with a
# black/blur baseline mixture and a total-variation term, chosen on the validation ablation of
# issue 19 (benchmarks/RESULTS.md, "Issue 19"). Checkpoints record their own, so changing this never
# changes an existing checkpoint's explanations.
DEFAULT_FINETUNING_OBJECTIVE = LTXObjective(baseline="mix", tv_weight=0.5)
# What pretraining minimises unless told otherwise: the reference objective with the black/blur
# mixture, drawn per image (the same ablation: equal or better on all three models).
DEFAULT_PRETRAINING_OBJECTIVE = LTXObjective(baseline="mix")
