"""The LTX objective, used unchanged by pretraining and by per-instance finetuning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch.nn.functional as F
from torch import Tensor

# Provisional: on EfficientNet-Lite0 with a fresh head (examples/demo.py photos), weight 10 collapsed 2 of
# 4 masks to empty and 3 kept the class on all 4. The reference's 50 acts on softplus(m) after pretraining.
DEFAULT_MASK_WEIGHT = 3.0


def masked_input(x: Tensor, mask: Tensor, baseline: Tensor) -> Tensor:
    """Keeps ``x`` where ``mask`` is 1 and ``baseline`` where it is 0.

    A convex combination commutes with the model's affine normalisation, so doing this on normalised
    inputs with a normalised baseline equals the reference's masking in [0, 1] pixel space.
    """
    return x * mask + baseline * (1 - mask)


@dataclass(frozen=True)
class LTXObjective:
    """``CE(f(x * m + b * (1 - m)), c) + mask_weight * mean(m)``, one value per image.

    Args:
        mask_weight (float): weight of the mean of the low-resolution mask.
        counterfactual (bool): add the reference's first-version term: the complement ``1 - m``
            should lose class ``c``; the prediction term becomes ``(CE(m) - CE(1 - m)) / 2``.
    """

    mask_weight: float = DEFAULT_MASK_WEIGHT
    counterfactual: bool = False

    def __call__(
        self,
        forward_func: Callable[..., Tensor],
        x: Tensor,
        mask: Tensor,
        low_res_mask: Tensor,
        target: Tensor,
        baseline: Tensor,
        additional_forward_args: tuple[Any, ...] = (),
    ) -> Tensor:
        logits = forward_func(masked_input(x, mask, baseline), *additional_forward_args)
        prediction = F.cross_entropy(logits, target, reduction="none")
        if self.counterfactual:
            complement = forward_func(masked_input(x, 1 - mask, baseline), *additional_forward_args)
            prediction = (prediction - F.cross_entropy(complement, target, reduction="none")) / 2
        return prediction + self.mask_weight * low_res_mask.flatten(1).mean(dim=1)
