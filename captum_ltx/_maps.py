"""Turning attributions of any method into one saliency map per image."""

from __future__ import annotations

import torch
from torch import Tensor


def to_map(attributions: Tensor) -> Tensor:
    """Returns a (B, H, W) map from (B, H, W), (B, 1, H, W) or input-shaped (B, C, H, W) attributions.

    Channels are combined as the benchmarks do: absolute value summed over channels. For maps repeated
    over channels (LTX, GradCAM) this is C times the map, so rankings and thresholds at the mean are
    unchanged; for per-channel methods such as Integrated Gradients it is the usual magnitude map.
    """
    if attributions.dim() == 3:
        return attributions
    if attributions.dim() != 4:
        raise ValueError(
            f"`attributions` must be (B, H, W) or (B, C, H, W), got shape {tuple(attributions.shape)}"
        )
    if attributions.shape[1] == 1:
        return attributions[:, 0]
    return attributions.abs().sum(dim=1)


def spatial_size(x: Tensor) -> tuple[int, int]:
    """(height, width) of images or maps (the last two dimensions)."""
    return int(x.shape[-2]), int(x.shape[-1])


def min_max(maps: Tensor) -> Tensor:
    """Each map (first dimension: the batch) scaled to [0, 1]; a constant map becomes all zeros."""
    dims = tuple(range(1, maps.dim()))
    low = maps.amin(dim=dims, keepdim=True)
    span = maps.amax(dim=dims, keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp_min(1e-12), torch.zeros_like(maps))
