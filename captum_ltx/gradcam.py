"""GradCAM for CNNs and ViTs, built on Captum's LayerGradCam."""

from __future__ import annotations

from typing import Any, cast

import torch
from captum.attr import LayerGradCam
from torch import Tensor, nn

from ._base import MapAttribution
from ._cnn import last_stage, resolve_layer
from ._hooks import forward_hooks
from ._maps import spatial_size
from ._model import target_score
from ._vit import num_prefix_tokens, token_grid


def _vit_gradcam(
    model: nn.Module, layer: nn.Module, x: Tensor, target: Tensor, args: tuple[Any, ...]
) -> Tensor:
    """Grad-CAM on ``layer``'s patch tokens read as a (B, D, h, w) grid: what ``LayerGradCam`` computes
    on a grid-shaped layer, from a forward hook (removed again) rather than a module put into the model."""
    captured: list[Tensor] = []
    with forward_hooks([(layer, lambda _module, _inputs, output: captured.append(output))]):
        logits = model(x, *args)
    tokens = captured[-1]
    (grads,) = torch.autograd.grad(target_score(logits, target), tokens)
    prefix, (h, w) = num_prefix_tokens(model), token_grid(model, spatial_size(x))

    def grid(t: Tensor) -> Tensor:
        return t[:, prefix:].transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)

    activations, gradients = grid(tokens), grid(grads)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1, keepdim=True).clamp_min(0)


class GradCAM(MapAttribution):
    r"""Grad-CAM (Selvaraju et al. 2017) at image resolution, for CNNs and Vision Transformers.

    The channel weights are the spatially averaged gradients of the target logit at ``layer``; the map
    is the ReLU of the weighted sum of its activations (Captum's ``LayerGradCam`` with
    ``relu_attributions=True``; on a ViT the same on the layer's patch tokens read as a grid, through a
    forward hook that is removed again, so the model is never edited), upsampled (bicubic for CNNs, bilinear for ViTs) and min-max normalised.

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
            blocks = cast(nn.Sequential, model.blocks)
            layer = self.layer if self.layer is not None else f"blocks.{len(blocks) - 1}.norm1"
            return _vit_gradcam(model, resolve_layer(model, layer), x, target, args)
        layer = self.layer if self.layer is not None else last_stage(model, x, args)
        return self._layer_gradcam(resolve_layer(model, layer), x, target, args)

    def _layer_gradcam(
        self, layer: nn.Module, x: Tensor, target: Tensor, args: tuple[Any, ...]
    ) -> Tensor:
        return LayerGradCam(self.forward_func, layer).attribute(
            x, target=target, additional_forward_args=args or None, relu_attributions=True
        )
