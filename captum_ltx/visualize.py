"""A figure comparing attribution methods side by side on the same images."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._maps import min_max, to_map


def explain_all(
    model: nn.Module, images: Tensor, methods: dict[str, Any], targets: Sequence[int]
) -> dict[str, tuple[Tensor, float]]:
    """Explains each image with each method: name -> ((N, H, W) maps in [0, 1], seconds per image)."""
    out = {}
    for name, method in methods.items():
        maps = []
        start = time.perf_counter()
        for x, c in zip(images, targets):
            maps.append(min_max(to_map(method.attribute(x[None], target=int(c))))[0])
        out[name] = (torch.stack(maps), (time.perf_counter() - start) / len(images))
    return out


def comparison_figure(
    images: Tensor,
    maps: dict[str, tuple[Tensor, float]],
    titles: Sequence[str],
    normalization: tuple[Any, Any],
    path: str | os.PathLike[str],
) -> None:
    """Writes a grid: one row per image (the image, then each method's map over it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = torch.tensor(normalization[0]).view(3, 1, 1)
    std = torch.tensor(normalization[1]).view(3, 1, 1)
    rows, cols = len(images), len(maps) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    for r, x in enumerate(images):
        picture = (x.cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        axes[r, 0].imshow(picture)
        axes[r, 0].set_title(titles[r][:28], fontsize=8)
        for c, (name, (method_maps, seconds)) in enumerate(maps.items(), start=1):
            axes[r, c].imshow(picture)
            axes[r, c].imshow(
                method_maps[r].detach().cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1
            )
            if r == 0:
                axes[r, c].set_title(f"{name}\n{seconds:.2f} s", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
