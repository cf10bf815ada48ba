"""Localisation of saliency maps against ground-truth object masks, one value per image."""

from __future__ import annotations

import torch
from torch import Tensor

from .._maps import min_max, to_map


def _average_precision(scores: Tensor, labels: Tensor) -> Tensor:
    """Average precision of ``scores`` ranking the positive ``labels`` (tied scores share one threshold)."""
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], labels[order].float()
    tp, fp = torch.cumsum(y, 0), torch.cumsum(1 - y, 0)
    last_of_tie = torch.ones_like(s, dtype=torch.bool)
    last_of_tie[:-1] = s[1:] != s[:-1]
    tp, fp = tp[last_of_tie], fp[last_of_tie]
    recall = tp / y.sum().clamp_min(1)
    precision = tp / (tp + fp)
    previous = torch.cat([recall.new_zeros(1), recall[:-1]])
    return ((recall - previous) * precision).sum()


def localisation(maps: Tensor, masks: Tensor) -> dict[str, Tensor]:
    """Scores how well each map finds its object, as the LTX / IIA segmentation protocol and Quantus do.

    Each map (``to_map`` of the attributions) is min-max normalised; for the thresholded metrics it is
    binarised at its mean. Every value is per image, **higher is better**, in [0, 1]:

    - ``pixel_accuracy``: share of pixels where the binarised map equals the mask;
    - ``miou``: mean of the object's and the background's intersection over union;
    - ``map``: mean of the average precision of the map for the object and of its complement for the
      background (the reference's two-channel mAP);
    - ``pointing_game``: 1 if the map's maximum lies inside the mask;
    - ``mass_inside``: share of the positive attribution that falls inside the mask.

    Args:
        maps (Tensor): (B, H, W) maps or attributions (B, C, H, W).
        masks (Tensor): (B, H, W) or (B, 1, H, W) ground truth, nonzero = object; none may be empty.
    """
    saliency = to_map(maps.detach()).float()
    gt = (masks[:, 0] if masks.dim() == 4 else masks).to(saliency.device) != 0
    if gt.shape != saliency.shape:
        raise ValueError(
            f"`masks` must have shape {tuple(saliency.shape)} (one per map), got {tuple(masks.shape)}"
        )
    if (gt.flatten(1).sum(dim=1) == 0).any():
        raise ValueError("`masks` holds an empty mask: every image needs an object to localise")
    flat, truth = saliency.flatten(1), gt.flatten(1)
    normalised = min_max(flat)
    predicted = normalised > normalised.mean(dim=1, keepdim=True)

    def iou(a: Tensor, b: Tensor) -> Tensor:
        union = (a | b).sum(dim=1).float()
        return torch.where(
            union > 0, (a & b).sum(dim=1).float() / union.clamp_min(1), torch.ones_like(union)
        )

    positive = saliency.clamp_min(0).flatten(1)
    mass = positive.sum(dim=1)
    return {
        "pixel_accuracy": (predicted == truth).float().mean(dim=1),
        "miou": (iou(predicted, truth) + iou(~predicted, ~truth)) / 2,
        "map": torch.stack(
            [
                (_average_precision(n, t) + _average_precision(1 - n, ~t)) / 2
                for n, t in zip(normalised, truth)
            ]
        ),
        "pointing_game": truth.gather(1, flat.argmax(dim=1, keepdim=True))[:, 0].float(),
        "mass_inside": torch.where(
            mass > 0, (positive * truth).sum(dim=1) / mass.clamp_min(1e-12), torch.zeros_like(mass)
        ),
    }
