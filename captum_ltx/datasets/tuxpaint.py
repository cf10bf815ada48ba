"""ImageNet composites with exact object masks: Debian tuxpaint photo stamps pasted on tuxpaint's
template photos.

The stamps' alpha channel is shaped to the object, so the pasted stamp's alpha is a pixel-exact ground
truth mask. Stamps and backgrounds are split into disjoint train / val / test parts once, by a fixed
seed: stamps by ImageNet class (so that two stamps of one subject never sit on both sides), backgrounds
by file. Every composite is a pure function of (split, seed, index).

The packages are GPL-2 and are never committed: ``make benchmark-assets`` fetches them with
``apt-get download`` and unpacks the stamps and templates under :func:`default_root`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

LABELS_FILE = os.path.join(os.path.dirname(__file__), "tuxpaint_stamp_imagenet_labels.txt")
SPLITS = ("train", "val", "test")
# Templates showing an ImageNet object of their own (jellyfish, lighthouse, sheep, spider web, maze,
# machine) would compete with the pasted stamp; only the texture-like ones are backgrounds.
BACKGROUNDS = (
    "burnt_bark",
    "cliff",
    "mossy_bark",
    "mossy_log",
    "mudstone",
    "ocean_splash",
    "ocean_waves",
    "redwoods_above",
    "rocks",
    "sun_behind_clouds",
    "sun_behind_leaves",
    "trees_above",
    "trees_at_dusk",
)
SPLIT_FRACTIONS = (0.6, 0.15, 0.25)
SPLIT_SEED = 0
MIN_STAMP_SIDE = 120  # smaller stamps would be upscaled a lot


def default_root() -> str:
    """Where the unpacked packages live: ``$CAPTUM_LTX_DATA/tuxpaint``, default ``~/.cache/captum_ltx/tuxpaint``."""
    base = os.environ.get(
        "CAPTUM_LTX_DATA", os.path.join(os.path.expanduser("~"), ".cache", "captum_ltx")
    )
    return os.path.join(base, "tuxpaint")


def _tuxpaint_dir(root: str | None) -> str:
    root = default_root() if root is None else os.fspath(root)
    share = os.path.join(root, "usr", "share", "tuxpaint")
    if not (
        os.path.isdir(os.path.join(share, "stamps"))
        and os.path.isdir(os.path.join(share, "templates"))
    ):
        raise ValueError(
            f"`root` {root!r} holds no tuxpaint stamps and templates: run `make benchmark-assets` (it runs "
            "`apt-get download tuxpaint-stamps-default tuxpaint-data` and unpacks them there), or set "
            "CAPTUM_LTX_DATA to the folder holding tuxpaint/usr/share/tuxpaint"
        )
    return share


@dataclass(frozen=True)
class Stamp:
    path: str  # under usr/share/tuxpaint/stamps/
    labels: tuple[int, ...]  # accepted ImageNet-1k indices


def read_stamp_labels() -> list[Stamp]:
    """The labelled photo stamps (``tuxpaint_stamp_imagenet_labels.txt``)."""
    stamps = []
    with open(LABELS_FILE) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            path, labels, _flags = line.split()
            stamps.append(Stamp(path, tuple(int(i) for i in labels.split(","))))
    return stamps


def _split_groups(groups: list[Any]) -> dict[str, set[Any]]:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(groups))
    n_train = round(SPLIT_FRACTIONS[0] * len(groups))
    n_val = round(SPLIT_FRACTIONS[1] * len(groups))
    bounds = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    return {name: {groups[i] for i in idx} for name, idx in bounds.items()}


def split_assets(split: str, root: str | None = None) -> tuple[list[Stamp], list[str]]:
    """The stamps (large enough, grouped by their first ImageNet class) and background files of ``split``."""
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}")
    from PIL import Image

    share = _tuxpaint_dir(root)
    stamps = []
    for stamp in read_stamp_labels():
        with Image.open(os.path.join(share, "stamps", stamp.path)) as im:
            if max(im.size) >= MIN_STAMP_SIDE:
                stamps.append(stamp)
    classes = _split_groups(sorted({s.labels[0] for s in stamps}))[split]
    backgrounds = _split_groups(list(BACKGROUNDS))[split]
    return [s for s in stamps if s.labels[0] in classes], [
        b for b in BACKGROUNDS if b in backgrounds
    ]


class TuxpaintComposites(Dataset):
    r"""Composites of one stamp on a background crop, as the model takes them.

    Item ``i`` is ``(image, label, mask)``: the normalised (3, size, size) image, the stamp's first
    accepted ImageNet class, and the (size, size) bool mask of the pasted object. The stamp's longest
    side is ``object_scale`` (a range) times the image side, at a random place; the background is a
    random square crop of a template.

    Args:
        split (str): ``"train"``, ``"val"`` or ``"test"``; the three share no stamp, class or background.
        length (int): number of composites.
        size (int): image side in pixels.
        normalization (tuple): (mean, std) applied to the [0, 1] image.
        seed (int): with ``split`` and ``i``, fixes every random choice of item ``i``.
        root (str, optional): the unpacked packages (default :func:`default_root`).
    """

    def __init__(
        self,
        split: str,
        *,
        length: int = 1000,
        size: int = 224,
        normalization: tuple[Any, Any] = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        object_scale: tuple[float, float] = (0.6, 0.9),
        seed: int = 0,
        root: str | None = None,
    ) -> None:
        self.split = split
        self.stamps, self.backgrounds = split_assets(split, root)
        self.share = _tuxpaint_dir(root)
        self.length, self.size, self.seed, self.object_scale = length, size, seed, object_scale
        self.mean = torch.tensor(normalization[0], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(normalization[1], dtype=torch.float32).view(3, 1, 1)
        self._cache: dict[str, Any] = {}

    def __len__(self) -> int:
        return self.length

    def _open(self, path: str, mode: str) -> Any:
        from PIL import Image

        if path not in self._cache:
            with Image.open(path) as im:
                self._cache[path] = im.convert(mode)
        return self._cache[path]

    def stamp_of(self, i: int) -> Stamp:
        return self.stamps[self._rng(i).integers(len(self.stamps))]

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS.index(self.split), i])

    def __getitem__(self, i: int) -> tuple[Tensor, int, Tensor]:
        from PIL import Image

        if not 0 <= i < self.length:
            raise IndexError(i)
        rng = self._rng(i)
        stamp = self.stamps[rng.integers(len(self.stamps))]
        background = self._open(
            os.path.join(
                self.share,
                "templates",
                self.backgrounds[rng.integers(len(self.backgrounds))] + ".jpg",
            ),
            "RGB",
        )
        side = int(min(background.size) * rng.uniform(0.5, 1.0))
        left, top = (
            rng.integers(background.width - side + 1),
            rng.integers(background.height - side + 1),
        )
        canvas = background.crop((left, top, left + side, top + side)).resize(
            (self.size, self.size), Image.Resampling.BICUBIC
        )
        obj = self._open(os.path.join(self.share, "stamps", stamp.path), "RGBA")
        scale = rng.uniform(*self.object_scale) * self.size / max(obj.size)
        w, h = max(1, round(obj.width * scale)), max(1, round(obj.height * scale))
        obj = obj.resize((w, h), Image.Resampling.BICUBIC)
        x0, y0 = rng.integers(self.size - w + 1), rng.integers(self.size - h + 1)
        pasted = np.asarray(obj, dtype=np.float32) / 255.0
        alpha = np.zeros((self.size, self.size), dtype=np.float32)
        alpha[y0 : y0 + h, x0 : x0 + w] = pasted[..., 3]
        rgb = np.asarray(canvas, dtype=np.float32) / 255.0
        region = (slice(y0, y0 + h), slice(x0, x0 + w))
        rgb[region] = (1 - pasted[..., 3:]) * rgb[region] + pasted[..., 3:] * pasted[..., :3]
        image = (torch.from_numpy(rgb).permute(2, 0, 1) - self.mean) / self.std
        return image, stamp.labels[0], torch.from_numpy(alpha > 0.5)


class ImagesAndLabels(Dataset):
    """The (image, label) pairs of a dataset of (image, label, mask) items, for :func:`captum_ltx.pretrain`."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image, label, _mask = self.data[i]
        return image, label
