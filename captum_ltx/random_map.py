"""A random map: the floor every attribution method must beat."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._base import MapAttribution


class RandomMap(MapAttribution):
    r"""Uniform random values per pixel, repeated over channels; independent of the model and the target.

    The random stream of each image is seeded from ``seed`` and the image's bytes, so a map is
    reproducible and the same whether the image is explained alone or in a batch.

    Args:
        forward_func (Callable): the classifier (only used to check targets).
        seed (int): seed of the random maps.

    Example::

        >>> attr = RandomMap(model).attribute(images)
    """

    name = "Random"

    def __init__(self, forward_func: Callable[..., Tensor], *, seed: int = 0) -> None:
        super().__init__(forward_func, normalize=False)
        self.seed = int(seed)

    def _maps(self, x: Tensor, target: Tensor, baseline: Tensor, args: tuple[Any, ...]) -> Tensor:
        digest = zlib.crc32(x.detach().cpu().contiguous().numpy().tobytes())
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + digest) % 2**63)
        return torch.rand(1, 1, *x.shape[-2:], generator=generator).to(x.device)
