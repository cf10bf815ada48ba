"""RGB scenes of one or two Fashion-MNIST items on a textured background, with a mask per item.

Each item is tinted, scaled and placed at random; two items of different classes sit in different
halves of the scene, so their masks never overlap and explaining either class has its own ground
truth. Training and validation scenes are drawn from Fashion-MNIST's training split (first 50,000 /
last 10,000 images), test scenes from its test split. Every scene is a pure function of
(split, seed, index).

Fashion-MNIST is read from its IDX files: Debian's ``dataset-fashion-mnist`` (``make fashion-assets``
unpacks it under :func:`default_root`) or any folder holding the four files, such as torchvision's
``FashionMNIST/raw`` download.
"""

from __future__ import annotations

import gzip
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SPLITS = ("train", "val", "test")
VAL_START = 50_000  # the last 10,000 training images are the validation split


def default_root() -> str:
    """``$CAPTUM_LTX_DATA/fashion-mnist/usr/share/datasets/fashion-mnist`` (default base ``~/.cache/captum_ltx``)."""
    base = os.environ.get(
        "CAPTUM_LTX_DATA", os.path.join(os.path.expanduser("~"), ".cache", "captum_ltx")
    )
    return os.path.join(base, "fashion-mnist", "usr", "share", "datasets", "fashion-mnist")


def read_idx(path: str) -> np.ndarray:
    """An IDX file (optionally gzip-compressed) as a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"{path!r} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path!r} is cut short: expected {shape}")
    return array.reshape(shape)


def load_fashion_mnist(part: str, root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,)) of ``part`` "train" or "t10k"."""
    root = default_root() if root is None else os.fspath(root)
    arrays = []
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{part}-{kind}-ubyte"
        path = next(
            (
                os.path.join(root, n)
                for n in (name + ".gz", name)
                if os.path.isfile(os.path.join(root, n))
            ),
            None,
        )
        if path is None:
            raise ValueError(
                f"`root` {root!r} holds no Fashion-MNIST file {name}(.gz): run `make fashion-assets` (it unpacks "
                "Debian's dataset-fashion-mnist there), or pass the folder of torchvision's FashionMNIST/raw download"
            )
        arrays.append(read_idx(path))
    return arrays[0], arrays[1]


def _background(rng: np.random.Generator, size: int) -> Tensor:
    # two colours blended by smooth noise, plus fine grain: a texture, not a flat field
    coarse = torch.from_numpy(rng.random((1, 1, 6, 6), dtype=np.float32))
    blend = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(
        0, 1
    )[0]
    a, b = (
        torch.from_numpy(rng.uniform(0.0, 0.45, size=(3, 1, 1)).astype(np.float32))
        for _ in range(2)
    )
    grain = torch.from_numpy(rng.normal(0, 0.04, size=(1, size, size)).astype(np.float32))
    return (a * blend + b * (1 - blend) + grain).clamp(0, 1)


class FashionScenes(Dataset):
    r"""Scenes of ``items`` Fashion-MNIST items (1, 2, or ``"mixed"``: half of each).

    Item ``i`` is ``(image, target, masks)``: the normalised (3, size, size) image; ``target``, the
    (10,) class distribution (1 on a single item's class, 0.5 on each of two); ``masks``, (2, size,
    size) bool, one per item (the second empty in a one-item scene). ``labels_of(i)`` gives the classes.

    Args:
        split (str): ``"train"``, ``"val"`` (both from the training images) or ``"test"``.
        length (int): number of scenes.
        items (int or str): 1, 2 or ``"mixed"``.
        size (int): scene side in pixels.
        item_size (tuple): range of an item's side in pixels.
        normalization (tuple): (mean, std) applied to the [0, 1] image.
        seed (int): with ``split`` and ``i``, fixes every random choice of scene ``i``.
        root (str, optional): folder of the IDX files (default :func:`default_root`).
    """

    def __init__(
        self,
        split: str,
        *,
        length: int = 10_000,
        items: int | str = 1,
        size: int = 64,
        item_size: tuple[int, int] = (26, 34),
        normalization: tuple[Any, Any] = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        seed: int = 0,
        root: str | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}")
        if items not in (1, 2, "mixed"):
            raise ValueError(f"`items` must be 1, 2 or 'mixed', got {items!r}")
        if not 0 < item_size[0] <= item_size[1] or item_size[0] > size // 2:
            raise ValueError(
                f"`item_size` {item_size} must be a range whose low end fits two items side by side in `size` {size}"
            )
        images, labels = load_fashion_mnist("t10k" if split == "test" else "train", root)
        part = {"train": slice(0, VAL_START), "val": slice(VAL_START, None), "test": slice(None)}[
            split
        ]
        self.images, self.labels = torch.from_numpy(images[part].copy()), labels[part]
        self.split, self.length, self.items, self.size, self.item_size, self.seed = (
            split,
            length,
            items,
            size,
            item_size,
            seed,
        )
        self.mean = torch.tensor(normalization[0], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(normalization[1], dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return self.length

    def _plan(self, i: int) -> tuple[np.random.Generator, list[int]]:
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), i])
        count = (
            self.items if isinstance(self.items, int) else 1 + int(rng.integers(2))
        )  # or "mixed"
        first = int(rng.integers(len(self.labels)))
        chosen = [first]
        while len(chosen) < count:  # a second item of another class
            j = int(rng.integers(len(self.labels)))
            if self.labels[j] != self.labels[first]:
                chosen.append(j)
        return rng, chosen

    def labels_of(self, i: int) -> list[int]:
        return [int(self.labels[j]) for j in self._plan(i)[1]]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        rng, chosen = self._plan(i)
        scene = _background(rng, self.size)
        masks = torch.zeros(2, self.size, self.size, dtype=torch.bool)
        target = torch.zeros(10)
        vertical = bool(rng.integers(2))  # two items: split the scene left/right or top/bottom
        for k, j in enumerate(chosen):
            largest = (
                self.item_size[1] if len(chosen) == 1 else min(self.item_size[1], self.size // 2)
            )
            side = int(rng.integers(self.item_size[0], largest + 1))
            item = F.interpolate(
                self.images[j].float()[None, None] / 255,
                size=(side, side),
                mode="bilinear",
                align_corners=False,
            )[0, 0]
            # brighter than the background at its darkest, so that every item stays visible to a person
            tint = torch.from_numpy(rng.uniform(0.5, 1.0, size=(3, 1, 1)).astype(np.float32))
            if len(chosen) == 1:
                y0, x0 = (int(rng.integers(self.size - side + 1)) for _ in range(2))
            else:
                half = self.size // 2
                lo, hi = (0, half - side) if k == 0 else (half, self.size - side)
                along = int(rng.integers(lo, hi + 1))
                across = int(rng.integers(self.size - side + 1))
                y0, x0 = (along, across) if vertical else (across, along)
            alpha = (item * 3).clamp(0, 1)  # opaque item, soft rim
            region = scene[:, y0 : y0 + side, x0 : x0 + side]
            scene[:, y0 : y0 + side, x0 : x0 + side] = (1 - alpha) * region + alpha * tint * (
                0.4 + 0.6 * item
            )
            masks[k, y0 : y0 + side, x0 : x0 + side] = alpha > 0.5
            target[int(self.labels[j])] += 1 / len(chosen)
        return (scene - self.mean) / self.std, target, masks
