"""IIA: Iterated Integrated Attributions (Barkan et al., ICCV 2023), reimplemented from the notes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._base import MapAttribution
from ._cnn import StageRunner, gradients_at, stage_outputs
from ._integrated import LayerPair, alphas, steps
from ._maps import spatial_size
from ._validation import repeat_rows
from ._vit import attention_relevance, clean_attention, output_row_map, rollout


class IIA(MapAttribution):
    r"""Iterated Integrated Attributions: integrals over the input path iterated with integrals over
    one (IIA2) or two (IIA3) internal representations.

    Input path: ``x_k = b + (k/n)(x - b)``, k = 0..n (b: ``baselines``, default the zero image).

    - **CNN IIA2.** With ``reference_quirks=True`` (default) it computes what the released code does: its
      activation reference is the activation itself, so the inner integral collapses and the map is
      ``sum_c sum_k [dy/du_k * ReLU(u_k)]`` with ``u_k`` the last stage's output at ``x_k``. With
      ``False``, the reference is the element-wise minimum over the path, ``r = min_k u_k``, inner points
      ``v_kj = r + (j/n)(u_k - r)`` and the map ``sum_c sum_kj dy/dv_kj * ReLU(v_kj - r)``.
    - **CNN IIA3** (both settings, as released): penultimate stage ``u_k``, ``r = min_k u_k``,
      ``w_kj = r + (j/n)(u_k - r)``; last stage ``t_kj`` of ``w_kj``, per j ``s_j = min_k t_kj``,
      ``z_kjl = s_j + (l/n)(t_kj - s_j)``; map ``sum_c sum_kjl ReLU(dy/dz * ReLU(z))``.
    - **ViT IIA2**: at each ``x_k`` the last block's attention ``A`` is replaced by ``(j/n) A``;
      gradient rollout (rollout of ``mean_heads ReLU(dy/dA_b * A_b)`` averaged over points, every block)
      gives the class token's row (the patch tokens' average row if the ViT pools them). **ViT IIA3**
      also scales the penultimate block's attention by l/n.

    The quirks default follows the reference code so that its published numbers can be reproduced;
    ``False`` computes the non-degenerate integral the paper describes.

    Args:
        forward_func (nn.Module): a CNN or a timm ViT classifier.
        variant (int): 2 (IIA2) or 3 (IIA3, the paper's best).
        n_steps (int, optional): steps per integral; default 10 (CNN) or 5 (ViT), as in the reference.
        layers (tuple, optional): (penultimate, last) module names (CNN) or block indices (ViT).
        reference_quirks (bool): reproduce the released code (default) or the papers' definition.
        internal_batch_size (int): integration points per forward pass.
        normalize (bool): min-max normalise each map.

    Example::

        >>> attr = IIA(model, variant=3).attribute(images, target=labels)
    """

    name = "IIA"

    def __init__(
        self,
        forward_func: nn.Module,
        *,
        variant: int = 2,
        n_steps: int | None = None,
        layers: Any = None,
        reference_quirks: bool = True,
        internal_batch_size: int = 64,
        normalize: bool = True,
    ) -> None:
        super().__init__(forward_func, normalize=normalize, internal_batch_size=internal_batch_size)
        if variant not in (2, 3):
            raise ValueError(f"`variant` must be 2 (IIA2) or 3 (IIA3), got {variant!r}")
        self.variant = variant
        self.n_steps = steps(n_steps, 5 if self.family == "vit" else 10)
        self.layers = LayerPair(forward_func, self.family, layers)
        self.reference_quirks = bool(reference_quirks)

    def _maps(self, x: Tensor, target: Tensor, baseline: Tensor, args: tuple[Any, ...]) -> Tensor:
        a = alphas(self.n_steps, x)
        path = baseline + a.view(-1, 1, 1, 1) * (x - baseline)
        if self.family == "vit":
            return self._vit(x, path, a, target, args)
        return self._cnn(x, path, a, target, args)

    def _cnn(
        self, x: Tensor, path: Tensor, a: Tensor, target: Tensor, args: tuple[Any, ...]
    ) -> Tensor:
        run, chunk, points = (
            StageRunner(self.forward_func, x, args),
            self.internal_batch_size,
            a.numel(),
        )
        previous, last = self.layers.cnn(x, args)
        with torch.no_grad():
            _, outputs = run.capture(path, [previous, last], repeat_rows(args, points, 1))
        if self.variant == 2:
            u = outputs[last]
            if self.reference_quirks:
                g = gradients_at(run, last, u, target, args, chunk)
                total = (g * u.clamp_min(0)).sum(dim=0)
            else:
                r = u.amin(dim=0)
                v = (r + a.view(-1, 1, 1, 1, 1) * (u - r)).flatten(0, 1)  # (j, k) points
                g = gradients_at(run, last, v, target, args, chunk)
                total = (g * (v - r).clamp_min(0)).sum(dim=0)
            return total.sum(dim=0)[None, None]
        u = outputs[previous]
        r = u.amin(dim=0)
        w = (r + a.view(-1, 1, 1, 1, 1) * (u - r)).transpose(0, 1).flatten(0, 1)  # (k, j) points
        t = stage_outputs(run, previous, w, last, args, chunk).view(
            points, points, *outputs[last].shape[1:]
        )
        total = torch.zeros_like(t[0, 0])
        for j in range(points):
            s = t[:, j].amin(dim=0)
            z = (s + a.view(-1, 1, 1, 1, 1) * (t[:, j] - s)).flatten(0, 1)  # (l, k) points
            g = gradients_at(run, last, z, target, args, chunk)
            total += (g * z.clamp_min(0)).clamp_min(0).sum(dim=0)
        return total.sum(dim=0)[None, None]

    def _vit(
        self, x: Tensor, path: Tensor, a: Tensor, target: Tensor, args: tuple[Any, ...]
    ) -> Tensor:
        previous, last = self.layers.vit()
        points = a.numel()
        attention = clean_attention(self.forward_func, path, repeat_rows(args, points, 1))
        if self.variant == 2:
            images = path.repeat_interleave(points, dim=0)  # (k, j) points
            replace = {
                last: attention[last].repeat_interleave(points, dim=0)
                * a.repeat(points).view(-1, 1, 1, 1)
            }
        else:
            images = path.repeat_interleave(points * points, dim=0)  # (k, j, l) points
            scale_last = a.repeat_interleave(points).repeat(points).view(-1, 1, 1, 1)
            scale_previous = a.repeat(points * points).view(-1, 1, 1, 1)
            replace = {
                last: attention[last].repeat_interleave(points * points, dim=0) * scale_last,
                previous: attention[previous].repeat_interleave(points * points, dim=0)
                * scale_previous,
            }
        relevance = attention_relevance(
            self.forward_func, images, replace, target, args, self.internal_batch_size
        )
        return output_row_map(rollout(relevance), self.forward_func, spatial_size(x))
