"""Turning attributions of any method into one saliency map per image."""

from __future__ import annotations

import torch
from torch import Tensor

from ._validation import warn_user

# a map whose values all lie within this fraction of its largest magnitude ranks no pixel above another
FLAT_SPAN = 0.01
FLAT_MAP_HINT = (
    "the model's output does not depend on the input as the method probes it (an untrained or "
    "saturated model, or a class with no evidence in the image?)"
)


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


def flat_rows(maps: Tensor) -> Tensor:
    """Which maps of a batch are flat: constant, all zero, or varying by less than ``FLAT_SPAN`` of
    their magnitude. Such a map looks like an answer but orders no pixel."""
    values = maps.detach().flatten(1)
    span = values.amax(dim=1) - values.amin(dim=1)
    return span <= FLAT_SPAN * values.abs().amax(dim=1)


def warn_if_flat(maps: Tensor, method: str, hint: str = FLAT_MAP_HINT) -> Tensor:
    """Warns (one line) when a map of the batch is flat; returns :func:`flat_rows`."""
    rows = flat_rows(maps)
    flat = rows.nonzero()[:, 0].tolist()
    if flat:
        level = float(maps[flat[0]].detach().abs().amax())
        warn_user(
            f"{method}: the map of input(s) {flat} is flat (all values within {FLAT_SPAN:.0%} of "
            f"{level:.3g}), so it ranks no pixel above another; {hint}"
        )
    return rows
