"""Class-diverse pretraining scenes: 1-3 tuxpaint photo stamps on a crop of a training background.

:class:`TuxpaintComposites` pastes one labelled stamp per image and is what the benchmarks measure on;
its 78 training stamps cover 58 classes. An explainer learns more from many classes than from many
images of few classes (Phang et al. 2020), so these scenes draw from every photographic stamp outside
the val and test classes, labelled or not (an unlabelled stamp's target comes from the model), with
random scale, place, flip and colour. Every scene is a pure function of (split, seed, index).
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .image_folder import UNLABELLED
from .tuxpaint import (
    MIN_STAMP_SIDE,
    SPLITS,
    Stamp,
    TuxpaintComposites,
    _tuxpaint_dir,
    read_stamp_labels,
    split_assets,
)

# Drawings, letters and signs have few distinct colours; photographs have many (the labelled photo
# stamps all have at least 500 colour bins of 4 levels per channel, the clip-art at most a few hundred).
MIN_COLOUR_BINS = 500
NOT_PHOTOS = ("cartoon", "symbols")


def _name_words(path: str) -> set[str]:
    return {
        w
        for w in re.split(r"[^a-z]+", os.path.splitext(os.path.basename(path))[0].lower())
        if len(w) >= 3
    }


def _is_photo(path: str) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode != "RGBA" or max(im.size) < MIN_STAMP_SIDE:
            return False
        pixels = np.asarray(im)
    opaque = pixels[pixels[..., 3] > 128][:, :3] // 4
    return len(np.unique(opaque, axis=0)) >= MIN_COLOUR_BINS


@functools.lru_cache(maxsize=4)
def unlabelled_photo_stamps(root: str | None = None) -> tuple[Stamp, ...]:
    """Photographic stamps without an ImageNet label whose file name shares no word with a val or test
    stamp (so that ``frog-2.png`` never trains an explainer tested on ``frog.png``). Without labels,
    "outside the val and test classes" rests on that name rule; how often the model predicts a val or
    test class on the scenes is measured (benchmarks/tuning/learning_curve.py)."""
    share = _tuxpaint_dir(root)
    labelled = {s.path for s in read_stamp_labels()}
    held_out_words = set().union(
        *(_name_words(s.path) for split in ("val", "test") for s in split_assets(split, root)[0])
    )
    found = []
    for base, dirs, files in os.walk(
        os.path.join(share, "stamps")
    ):  # top-down, so pruning `dirs` skips them
        dirs[:] = sorted(d for d in dirs if d not in NOT_PHOTOS)
        for name in sorted(files):
            path = os.path.relpath(os.path.join(base, name), os.path.join(share, "stamps"))
            if (
                name.endswith(".png")
                and path not in labelled
                and not _name_words(path) & held_out_words
                and _is_photo(os.path.join(base, name))
            ):
                found.append(Stamp(path, ()))
    return tuple(sorted(found, key=lambda s: s.path))


class TuxpaintScenes(TuxpaintComposites):
    r"""Scenes of 1 to 3 tuxpaint photo stamps for pretraining, as the model takes them.

    Item ``i`` is ``(image, label, mask)``: the normalised (3, size, size) image, the first ImageNet
    class of the object with the most visible pixels (``UNLABELLED`` = -1 when that stamp has no label: pretrain with
    ``target="predicted"``), and the (size, size) bool mask of all pasted objects. Each object is
    flipped with probability 1/2, its brightness, contrast and saturation scaled by factors in
    [1 - jitter, 1 + jitter], its longest side drawn from ``object_scale`` (divided by the square root
    of the number of objects) times the image side, and placed anywhere; later objects may overlap
    earlier ones. The background is a random square crop (random side, place and flip) of a template.

    Args:
        split (str): ``"train"`` (labelled stamps of the training classes plus every unlabelled photo
            stamp, :func:`unlabelled_photo_stamps`), ``"val"`` or ``"test"`` (their labelled stamps only).
        length (int): number of scenes; any length gives distinct scenes (continuous random draws).
        objects (tuple): least and most objects per scene.
        size, normalization, seed, root: as :class:`TuxpaintComposites`.

    Example::

        >>> scenes = TuxpaintScenes("train", length=12_800, normalization=((0.5,) * 3, (0.5,) * 3))
        >>> explainer = pretrain(model, ImagesAndLabels(scenes), target="predicted")
    """

    def __init__(
        self,
        split: str = "train",
        *,
        length: int = 12_800,
        size: int = 224,
        normalization: tuple[Any, Any] = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        objects: tuple[int, int] = (1, 3),
        object_scale: tuple[float, float] = (0.5, 0.9),
        jitter: float = 0.3,
        seed: int = 0,
        root: str | None = None,
    ) -> None:
        if not 1 <= objects[0] <= objects[1]:
            raise ValueError(
                f"`objects` must be (least, most) with 1 <= least <= most, got {objects!r}"
            )
        if not 0 <= jitter < 1:
            raise ValueError(f"`jitter` must be in [0, 1), got {jitter!r}")
        super().__init__(
            split,
            length=length,
            size=size,
            normalization=normalization,
            object_scale=object_scale,
            seed=seed,
            root=root,
        )
        self.objects, self.jitter = objects, jitter
        if split == "train":
            self.stamps += list(unlabelled_photo_stamps(root))

    def _background(self, rng: np.random.Generator) -> Any:
        from PIL import Image

        image = self._open(
            os.path.join(
                self.share,
                "templates",
                self.backgrounds[rng.integers(len(self.backgrounds))] + ".jpg",
            ),
            "RGB",
        )
        side = int(min(image.size) * rng.uniform(0.3, 1.0))
        left, top = rng.integers(image.width - side + 1), rng.integers(image.height - side + 1)
        crop = image.crop((left, top, left + side, top + side)).resize(
            (self.size, self.size), Image.Resampling.BICUBIC, reducing_gap=2.0
        )
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return crop

    def _object(self, stamp: Stamp, count: int, rng: np.random.Generator) -> Any:
        from PIL import Image, ImageEnhance

        obj = self._open(os.path.join(self.share, "stamps", stamp.path), "RGBA")
        scale = rng.uniform(*self.object_scale) / count**0.5 * self.size / max(obj.size)
        obj = obj.resize(
            (max(1, round(obj.width * scale)), max(1, round(obj.height * scale))),
            Image.Resampling.BICUBIC,
        )
        if rng.random() < 0.5:
            obj = obj.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        rgb, alpha = obj.convert("RGB"), obj.getchannel("A")
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            rgb = enhance(rgb).enhance(rng.uniform(1 - self.jitter, 1 + self.jitter))
        rgb.putalpha(alpha)
        return rgb

    def __getitem__(self, i: int) -> tuple[Tensor, int, Tensor]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        rng = np.random.default_rng(
            [self.seed, SPLITS.index(self.split), i, 1]
        )  # 1: not a TuxpaintComposites stream
        canvas = self._background(rng)
        owner = np.full(
            (self.size, self.size), -1
        )  # which object each pixel shows (later ones on top)
        count = int(rng.integers(self.objects[0], self.objects[1] + 1))
        labels = []
        for k in range(count):
            stamp = self.stamps[rng.integers(len(self.stamps))]
            obj = self._object(stamp, count, rng)
            x0, y0 = (
                int(rng.integers(self.size - obj.width + 1)),
                int(rng.integers(self.size - obj.height + 1)),
            )
            canvas.paste(obj, (x0, y0), obj)  # alpha-blended in place (PIL, in C)
            owner[y0 : y0 + obj.height, x0 : x0 + obj.width][
                np.asarray(obj.getchannel("A")) > 127
            ] = k
            labels.append(stamp.labels[0] if stamp.labels else UNLABELLED)
        visible = np.bincount(owner[owner >= 0], minlength=count)
        label, mask = labels[int(visible.argmax())], owner >= 0
        image = (
            torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)
            - self.mean
        ) / self.std
        return image, label, torch.from_numpy(mask)
