"""Attention rollout and gradient-weighted attention rollout for Vision Transformers."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import MapAttribution
from ._maps import spatial_size
from ._model import target_score
from ._vit import AttentionProbe, output_row_map, probe_attention, rollout


class AttentionRollout(MapAttribution):
    r"""Attention rollout (Abnar & Zuidema 2020): the class token's row (for a ViT that averages its
    patch tokens, their average row) of the product over blocks of the head-averaged, row-normalised
    ``A + I``. It does not depend on the target class.

    Args:
        forward_func (nn.Module): a timm Vision Transformer.
        normalize (bool): min-max normalise each map.

    Example::

        >>> attr = AttentionRollout(vit).attribute(images)
    """

    name = "Rollout"
    families = ("vit",)
    batched = True

    def _maps(self, x: Tensor, target: Tensor, baseline: Tensor, args: tuple[Any, ...]) -> Tensor:
        probe = AttentionProbe()
        with torch.no_grad(), probe_attention(self.forward_func, probe):
            self.forward_func(x, *args)
        joint = rollout([a.mean(dim=1) for a in probe.attentions])
        return output_row_map(joint, self.forward_func, spatial_size(x))


class GradientAttentionRollout(MapAttribution):
    r"""Gradient-weighted attention rollout, "GAE" (Chefer, Gur & Wolf, ICCV 2021, generic attention
    explainability, self-attention rule): ``R = I``; for each block ``R += mean_h[(dA * A)^+] @ R``; the
    map is the class token's row of ``R`` (for a ViT that averages its patch tokens, their average row)
    over the patch tokens.

    Args:
        forward_func (nn.Module): a timm Vision Transformer.
        normalize (bool): min-max normalise each map.

    Example::

        >>> attr = GradientAttentionRollout(vit).attribute(images, target=labels)
    """

    name = "GAE"
    families = ("vit",)
    batched = True

    def _maps(self, x: Tensor, target: Tensor, baseline: Tensor, args: tuple[Any, ...]) -> Tensor:
        probe = AttentionProbe()
        with probe_attention(self.forward_func, probe):
            logits = self.forward_func(x, *args)
        grads = torch.autograd.grad(target_score(logits, target), probe.attentions)
        n = probe.attentions[0].shape[-1]
        relevance = torch.eye(n, device=x.device, dtype=x.dtype).expand(x.shape[0], n, n)
        for a, g in zip(probe.attentions, grads):
            relevance = relevance + (g * a).clamp_min(0).mean(dim=1) @ relevance
        return output_row_map(relevance.detach(), self.forward_func, spatial_size(x))
