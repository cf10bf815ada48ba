"""DIX: Deep Integrated Explanations (Barkan et al., CIKM 2023), reimplemented from the notes."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import MapAttribution
from ._cnn import StageRunner, gradients_at
from ._integrated import LayerPair, alphas, steps
from ._maps import spatial_size
from ._vit import attention_relevance, clean_attention, output_row_map, rollout


class DIX(MapAttribution):
    r"""Deep Integrated Explanations: integrals over internal representations only (no input path),
    fused over the last and the penultimate representation.

    - **CNN** (the released ``dix2``): at the penultimate stage ``u`` with the per-pixel channel minimum
      ``r`` as reference, points ``v_j = r + (j/n)(u - r)`` give
      ``h2 = sum_j ReLU(dy/dv_j * ReLU(v_j) * ||(v_j - r)/n||)``. At the last stage, with
      ``reference_quirks=True`` (default, as released) the reference is the activation itself, so
      ``h1 = (n+1) ReLU(dy/du) * ReLU(u)``; with ``False`` h1 uses h2's recipe. Fusion: quirks,
      ``sum_c [Up(h2) * Up(h1) + Up(h1)]`` with the released trilinear resampling of channels and space
      to (C_penultimate, 2h, 2w); without quirks, the channel sums are fused at the penultimate grid.
    - **ViT**: for the last and the penultimate block, the block's attention is replaced by ``(j/n) A``
      and gradient rollout is averaged over j; the two maps are added. With ``reference_quirks=True``
      ``A`` is the *last* block's attention for both, as in the released code; with ``False`` each block
      gets its own.

    Args:
        forward_func (nn.Module): a CNN or a timm ViT classifier.
        n_steps (int, optional): steps per integral; default 4 (CNN) or 10 (ViT), as in the reference.
        layers (tuple, optional): (penultimate, last) module names (CNN) or block indices (ViT).
        reference_quirks (bool): reproduce the released code (default) or the papers' definition.
        internal_batch_size (int): integration points per forward pass.
        normalize (bool): min-max normalise each map.

    Example::

        >>> attr = DIX(model).attribute(images, target=labels)
    """

    name = "DIX"

    def __init__(
        self,
        forward_func: nn.Module,
        *,
        n_steps: int | None = None,
        layers: Any = None,
        reference_quirks: bool = True,
        internal_batch_size: int = 64,
        normalize: bool = True,
    ) -> None:
        super().__init__(forward_func, normalize=normalize, internal_batch_size=internal_batch_size)
        self.n_steps = steps(n_steps, 10 if self.family == "vit" else 4)
        self.layers = LayerPair(forward_func, self.family, layers)
        self.reference_quirks = bool(reference_quirks)

    def _maps(self, x: Tensor, target: Tensor, baseline: Tensor, args: tuple[Any, ...]) -> Tensor:
        return self._vit(x, target, args) if self.family == "vit" else self._cnn(x, target, args)

    def _cnn(self, x: Tensor, target: Tensor, args: tuple[Any, ...]) -> Tensor:
        run, n = StageRunner(self.forward_func, x, args), self.n_steps
        previous, last = self.layers.cnn(x, args)
        a = alphas(n, x).view(-1, 1, 1, 1)
        with torch.no_grad():
            _, outputs = run.capture(x, [previous, last], args)
        u_previous, u_last = outputs[previous][0], outputs[last][0]

        def channel_min_integral(layer: str, u: Tensor) -> Tensor:
            r = u.amin(dim=0, keepdim=True)
            v = r + a * (u - r)
            g = gradients_at(run, layer, v, target, args, self.internal_batch_size)
            step = ((v - r) / n).flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            return (g * v.clamp_min(0) * step).clamp_min(0).sum(dim=0)

        h2 = channel_min_integral(previous, u_previous)
        if self.reference_quirks:
            g = gradients_at(run, last, u_last[None], target, args, self.internal_batch_size)[0]
            h1 = (n + 1) * g.clamp_min(0) * u_last.clamp_min(0)
            size = (u_previous.shape[0], 2 * u_previous.shape[1], 2 * u_previous.shape[2])

            def up(t: Tensor) -> Tensor:
                return F.interpolate(
                    t[None, None], size=size, mode="trilinear", align_corners=False
                )[0, 0]

            fused = (up(h2) * up(h1) + up(h1)).sum(dim=0)
        else:
            h1 = channel_min_integral(last, u_last)
            s1 = F.interpolate(
                h1.sum(dim=0)[None, None], size=h2.shape[-2:], mode="bilinear", align_corners=False
            )[0, 0]
            fused = h2.sum(dim=0) * s1 + s1
        return fused[None, None]

    def _vit(self, x: Tensor, target: Tensor, args: tuple[Any, ...]) -> Tensor:
        previous, last = self.layers.vit()
        attention = clean_attention(self.forward_func, x, args)
        a = alphas(self.n_steps, x)
        images = x.expand(a.numel(), *x.shape[1:])
        total = torch.zeros(())
        for block in (last, previous):
            source = attention[last] if self.reference_quirks else attention[block]
            replace = {block: source.expand(a.numel(), *source.shape[1:]) * a.view(-1, 1, 1, 1)}
            relevance = attention_relevance(
                self.forward_func, images, replace, target, args, self.internal_batch_size
            )
            total = total + output_row_map(rollout(relevance), self.forward_func, spatial_size(x))
        return total
