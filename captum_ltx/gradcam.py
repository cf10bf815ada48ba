"""GradCAM for CNNs and ViTs, built on Captum's LayerGradCam."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from captum.attr import LayerGradCam
from torch import Tensor, nn

from ._base import MapAttribution
from ._cnn import last_stage, resolve_layer
from ._maps import spatial_size
from ._vit import num_prefix_tokens, token_grid


class _TokenGrid(nn.Module):
    """Identity on a token sequence that passes the patch tokens through ``grid`` as a (B, D, h, w) map."""

    def __init__(self, prefix: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.prefix, self.size = prefix, size
        self.grid = nn.Identity()

    def forward(self, tokens: Tensor) -> Tensor:
        prefix, patches = tokens[:, : self.prefix], tokens[:, self.prefix :]
        b, n, d = patches.shape
        grid = self.grid(patches.transpose(1, 2).reshape(b, d, *self.size))
        return torch.cat([prefix, grid.flatten(2).transpose(1, 2)], dim=1)


@contextlib.contextmanager
def _token_grid_after(model: nn.Module, layer: str, size: tuple[int, int]) -> Iterator[nn.Module]:
    """Temporarily follows ``layer`` with a token-to-grid identity; yields the module whose output is the grid."""
    parent_name, _, child = layer.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    original = getattr(parent, child)
    grid = _TokenGrid(num_prefix_tokens(model), size)
    setattr(parent, child, nn.Sequential(original, grid))
    try:
        yield grid.grid
    finally:
        setattr(parent, child, original)


class GradCAM(MapAttribution):
    r"""Grad-CAM (Selvaraju et al. 2017) at image resolution, for CNNs and Vision Transformers.

    The channel weights are the spatially averaged gradients of the target logit at ``layer``; the map
    is the ReLU of the weighted sum of its activations (Captum's ``LayerGradCam`` with
    ``relu_attributions=True``), upsampled (bicubic for CNNs, bilinear for ViTs) and min-max normalised.

    Args:
        forward_func (nn.Module): the classifier.
        layer (str or nn.Module, optional): CNN default: the last feature stage (timm ``feature_info``,
            else the last module with a spatial output).
            ViT default: the last block's ``norm1``, read as a token grid, since the class-token pooling
            leaves the final block's patch tokens with no gradient.
        normalize (bool): min-max normalise each map.

    Returns (of ``attribute``): the map repeated over the input's channels.

    Example::

        >>> attr = GradCAM(model).attribute(images, target=labels)
    """

    name = "GradCAM"
    batched = True

    def __init__(
        self,
        forward_func: nn.Module,
        layer: str | nn.Module | None = None,
        *,
        normalize: bool = True,
    ) -> None:
        super().__init__(forward_func, normalize=normalize)
        if layer is not None:
            resolve_layer(forward_func, layer)
        self.layer = layer

    def _maps(self, x: Tensor, target: Tensor, baseline: Tensor, args: tuple[Any, ...]) -> Tensor:
        model = self.forward_func
        if self.family == "vit":
            name = (
                self.layer
                if isinstance(self.layer, str)
                else f"blocks.{len(model.blocks) - 1}.norm1"
            )
            with _token_grid_after(model, name, token_grid(model, spatial_size(x))) as grid:
                return self._layer_gradcam(grid, x, target, args)
        layer = self.layer if self.layer is not None else last_stage(model, x, args)
        return self._layer_gradcam(resolve_layer(model, layer), x, target, args)

    def _layer_gradcam(
        self, layer: nn.Module, x: Tensor, target: Tensor, args: tuple[Any, ...]
    ) -> Tensor:
        return LayerGradCam(self.forward_func, layer).attribute(
            x, target=target, additional_forward_args=args or None, relu_attributions=True
        )
