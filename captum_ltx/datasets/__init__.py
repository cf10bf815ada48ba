"""Training and evaluation data with exact object masks, picked by name.

Each dataset yields ``(image, label, mask)`` items as the explained model takes them;
:class:`ImagesAndLabels` drops the mask for :func:`captum_ltx.pretrain`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from .._registry import Registry
from .fashion_scenes import FashionScenes
from .image_folder import ImageFolderData, image_folder_for
from .tuxpaint import ImagesAndLabels, TuxpaintComposites
from .tuxpaint_scenes import TuxpaintScenes

DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")
register_dataset = DATASETS.register


def available_datasets() -> list[str]:
    return DATASETS.names()


def create_dataset(name: str, model: nn.Module, split: str, **options: Any) -> Dataset:
    """Dataset ``name`` of ``split`` ("train", "val", "test"), preprocessed for ``model``; a ``name``
    that is a folder gives its images (:class:`ImageFolderData`; ``val_size`` files held out for "val")."""
    if name not in DATASETS and os.path.isdir(name):
        return image_folder_for(model, name, split, **options)
    return DATASETS.get(name)(model, split, **options)


def _as_model_takes(model: nn.Module) -> dict[str, Any]:
    """Image size and normalisation from the model's timm data config."""
    import timm

    config = timm.data.resolve_data_config({}, model=model)
    return {"size": config["input_size"][-1], "normalization": (config["mean"], config["std"])}


@register_dataset("tuxpaint")
def _tuxpaint(model: nn.Module, split: str, **options: Any) -> Dataset:
    return TuxpaintComposites(split, **_as_model_takes(model), **options)


@register_dataset("tuxpaint-scenes")
def _tuxpaint_scenes(model: nn.Module, split: str, **options: Any) -> Dataset:
    return TuxpaintScenes(split, **_as_model_takes(model), **options)


@register_dataset("fashion-scenes")
def _fashion_scenes(model: nn.Module, split: str, **options: Any) -> Dataset:
    options.setdefault("items", "mixed")
    return FashionScenes(split, **_as_model_takes(model), **options)


__all__ = [
    "FashionScenes",
    "ImageFolderData",
    "ImagesAndLabels",
    "TuxpaintComposites",
    "TuxpaintScenes",
    "available_datasets",
    "create_dataset",
    "register_dataset",
]
