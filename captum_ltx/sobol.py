"""Sobol attribution (Fel et al., NeurIPS 2021): total-order Sobol indices of a low-resolution mask."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._base import MapAttribution
from ._validation import check_positive_int, repeat_rows


def replicated_design(cells: int, designs: int, *, scramble: bool = False, seed: int = 0) -> Tensor:
    """The (designs * (cells + 2), cells) masks of a Sobol sequence: matrices A and B (two halves of
    one 2 * cells-dimensional sequence), then for each cell i the matrix C_i, A with column i from B."""
    engine = torch.quasirandom.SobolEngine(2 * cells, scramble=scramble, seed=seed)
    ab = engine.draw(designs, dtype=torch.float64)
    a, b = ab[:, :cells], ab[:, cells:]
    c = a.repeat(cells, 1, 1)  # (cells, designs, cells)
    index = torch.arange(cells)
    c[index, :, index] = b.T
    return torch.cat([a, b, c.reshape(-1, cells)])


def jansen_total_indices(outputs: Tensor, designs: int, cells: int) -> Tensor:
    """Jansen's estimator of each cell's total-order index from the outputs on A, B, C_1 ... C_cells:
    ``sum_n (f(A_n) - f(C_i,n))^2 / (2 N Var f(A))``."""
    a = outputs[:designs]
    c = outputs[2 * designs :].view(cells, designs)
    variance = a.var(unbiased=True).clamp_min(torch.finfo(outputs.dtype).tiny)
    return ((a - c) ** 2).sum(dim=1) / (2 * designs * variance)


class Sobol(MapAttribution):
    r"""Sobol attribution: how much of the variance of the target's output each cell of a
    ``grid_size`` x ``grid_size`` grid explains, with its interactions (total-order Sobol index),
    estimated with a quasi-Monte Carlo design (Fel, Cadène et al., "Look at the Variance!", NeurIPS 2021).

    A black-box method: the model is only run forward, on ``n_designs * (grid_size**2 + 2)`` perturbed
    copies of each image, ``x * M + b * (1 - M)`` with ``M`` a low-resolution mask in [0, 1] upsampled
    (nearest) to the image and ``b`` the baseline (default the zero image of the model's input space,
    as the authors' inpainting). The indices are estimated with Jansen's estimator on the target's
    output (the model's logit) and upsampled bilinearly. Defaults are those of the authors' library
    (Xplique's ``SobolAttributionMethod``): an 8 x 8 grid, 32 designs, an unscrambled Sobol sequence,
    so maps are deterministic; ``scramble=True`` draws a scrambled sequence from ``seed``.

    Args:
        forward_func (Callable): the classifier, CNN or ViT (any callable returning logits).
        grid_size (int): cells per side of the mask.
        n_designs (int): points of the design, a power of two (Sobol sequences balance at powers of
            two), at least 4 unless ``scramble``.
        scramble (bool): scramble the Sobol sequence (Owen scrambling), seeded by ``seed``.
        seed (int): seed of the scrambling.
        internal_batch_size (int): perturbed images per forward pass.
        normalize (bool): min-max normalise each map.

    Example::

        >>> attr = Sobol(model, grid_size=8, n_designs=32).attribute(images, target=labels)
    """

    name = "Sobol"

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        *,
        grid_size: int = 8,
        n_designs: int = 32,
        scramble: bool = False,
        seed: int = 0,
        internal_batch_size: int = 64,
        normalize: bool = True,
    ) -> None:
        super().__init__(forward_func, normalize=normalize, internal_batch_size=internal_batch_size)
        self.grid_size = check_positive_int(grid_size, "grid_size")
        n_designs = check_positive_int(n_designs, "n_designs")
        if n_designs & (n_designs - 1) or n_designs < 2:
            raise ValueError(f"`n_designs` must be a power of two >= 2, got {n_designs}")
        if n_designs == 2 and not scramble:
            # the first two points of an unscrambled Sobol sequence are 0 and 0.5 in every
            # dimension, so B's columns equal A's, every C_i is A and every index comes out 0
            raise ValueError(
                "`n_designs`=2 gives every cell an index of 0 without scrambling: "
                "use n_designs >= 4, or scramble=True"
            )
        self.n_designs = n_designs
        self.masks = replicated_design(
            grid_size**2, n_designs, scramble=bool(scramble), seed=int(seed)
        )

    @property
    def forward_passes(self) -> int:
        """Perturbed images per explained image."""
        return self.masks.shape[0]

    @property
    def upsample_mode(self) -> str:
        return "bilinear"

    def _maps(self, x: Tensor, target: Tensor, baseline: Tensor, args: tuple[Any, ...]) -> Tensor:
        cells, side = self.grid_size**2, self.grid_size
        masks = self.masks.to(x.device, x.dtype).view(-1, 1, side, side)
        outputs = []
        with torch.no_grad():
            for start in range(0, masks.shape[0], self.internal_batch_size):
                chunk = masks[start : start + self.internal_batch_size]
                m = F.interpolate(chunk, size=x.shape[-2:], mode="nearest")
                perturbed = x * m + baseline * (1 - m)
                logits = self.forward_func(perturbed, *repeat_rows(args, len(chunk), 1))
                outputs.append(logits[:, int(target[0])].double())
        indices = jansen_total_indices(torch.cat(outputs), self.n_designs, cells)
        return indices.view(1, 1, side, side).to(x.dtype)
