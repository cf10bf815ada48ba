"""Settings shared by the iterated / deep integrated attributions (IIA, DIX)."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from ._cnn import cnn_stages, resolve_layer
from ._validation import check_positive_int


class LayerPair:
    """The penultimate and last representation a method integrates over, found from the model.

    CNN: names of the two last feature stages (timm ``feature_info``, else found by probing). ViT: the
    indices of the two last blocks. ``layers`` overrides them: a pair of module names (CNN) or of block
    indices (ViT).
    """

    def __init__(self, model: nn.Module, family: str, layers: Any) -> None:
        self.model, self.layers = model, layers
        if layers is None:
            return
        if not isinstance(layers, (tuple, list)) or len(layers) != 2:
            raise ValueError(f"`layers` must be a pair (penultimate, last), got {layers!r}")
        if family == "vit":
            blocks = len(cast(nn.Sequential, model.blocks))
            if not all(isinstance(b, int) and -blocks <= b < blocks for b in layers):
                raise ValueError(
                    f"`layers` of a ViT must be two block indices in [-{blocks}, {blocks}), got {layers!r}"
                )
            self.layers = tuple(b % blocks for b in layers)
        else:
            for name in layers:
                resolve_layer(model, name, "layers")

    def cnn(self, x: Tensor, args: tuple[Any, ...]) -> tuple[str, str]:
        if self.layers is None:
            # found once: discovery runs the model a few times to check which layers separate it
            self.layers = cnn_stages(self.model, x, args)
        return tuple(self.layers)  # type: ignore[return-value]

    def vit(self) -> tuple[int, int]:
        blocks = len(cast(nn.Sequential, self.model.blocks))
        if self.layers is not None:
            return self.layers  # type: ignore[return-value]
        if blocks < 2:
            raise ValueError("the ViT needs at least two blocks for this method")
        return blocks - 2, blocks - 1


def steps(n_steps: Any, default: int) -> int:
    return default if n_steps is None else check_positive_int(n_steps, "n_steps")


def alphas(n: int, like: Tensor) -> Tensor:
    """The n + 1 points 0, 1/n, ..., 1 of a path, endpoints included, as in the reference code."""
    return torch.linspace(0, 1, n + 1, device=like.device, dtype=like.dtype)
