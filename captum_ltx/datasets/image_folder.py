"""A user's own images for pretraining: a torchvision ``ImageFolder`` tree or a flat folder.

Files are listed once and read lazily, one per item, through timm's transforms for the model (with
its training augmentation for the train split), so a folder of 50,000 images never sits in memory.
A file that cannot be read is replaced by the next readable one and counted, with one warning per
file: a corrupt image never stops an epoch. The count (``skipped_count``) includes the files that
DataLoader worker processes skipped.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
UNLABELLED = -1


def images_directly_in(folder: str) -> list[str]:
    """The image files directly inside ``folder`` (not in sub-folders), sorted."""
    return sorted(
        os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)
    )


def list_images(root: str) -> tuple[list[str], list[int], list[str]]:
    """Image paths, their labels and the class names under ``root``.

    With sub-folders holding images (an ``ImageFolder`` tree), each sorted sub-folder is a class
    (label = its index); with images directly in ``root``, there are no classes and every label is
    ``UNLABELLED``.
    """
    if not os.path.isdir(root):
        raise ValueError(f"`data` must be a dataset name or an image folder, got {root!r}")

    def images_in(folder: str) -> list[str]:
        found = []
        for base, _, files in sorted(os.walk(folder)):
            found += [
                os.path.join(base, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)
            ]
        return found

    # each class folder is walked once: a tree of 50,000 images is listed, not read
    per_class = {
        d: images_in(os.path.join(root, d))
        for d in sorted(os.listdir(root))
        if os.path.isdir(os.path.join(root, d))
    }
    classes = [d for d, found in per_class.items() if found]
    flat = images_directly_in(root)
    if classes and flat:
        raise ValueError(f"image folder {root!r} mixes images and class folders; use one layout")
    if classes:
        pairs = [(path, label) for label, name in enumerate(classes) for path in per_class[name]]
        return [p for p, _ in pairs], [label for _, label in pairs], classes
    if not flat:
        raise ValueError(f"image folder {root!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return flat, [UNLABELLED] * len(flat), []


class ImageFolderData(Dataset):
    """(image, label, None) items from a folder of images (see :func:`list_images`).

    Args:
        root (str): the folder.
        transform (Callable): PIL image -> tensor, e.g. ``timm.data.create_transform(...)``.
        split (str): ``"train"``, ``"val"`` or ``"all"``. ``val_size`` files, drawn once by ``seed``,
            form the val split and the rest the train split.
        val_size (int): files held out for ``"val"``.
        length (int, optional): at most this many items (the first of the split's order).
        seed (int): seeds the train / val draw.
    """

    def __init__(
        self,
        root: str,
        transform: Callable[[Image.Image], Tensor],
        split: str = "all",
        *,
        val_size: int = 0,
        length: int | None = None,
        seed: int = 0,
    ) -> None:
        if split not in ("train", "val", "all"):
            raise ValueError(f"`split` must be 'train', 'val' or 'all', got {split!r}")
        paths, labels, self.classes = list_images(root)
        order = np.random.default_rng(seed).permutation(len(paths))
        if not 0 <= val_size < len(paths):
            raise ValueError(
                f"`val_size` must be in [0, {len(paths)}) for {len(paths)} images, got {val_size}"
            )
        chosen = {"val": order[:val_size], "train": order[val_size:], "all": np.arange(len(paths))}[
            split
        ]
        if length is not None:
            chosen = chosen[:length]
        self.paths = [paths[i] for i in chosen]
        self.labels = [labels[i] for i in chosen]
        self.transform = transform
        # one flag per file, shared with DataLoader workers (new ones each epoch): a file counts once
        self._skipped_flags = multiprocessing.RawArray("b", len(self.paths))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def skipped(self) -> set[str]:
        """The unreadable files skipped so far, by this process or any DataLoader worker."""
        flags = np.frombuffer(self._skipped_flags, dtype=np.int8)
        return {self.paths[j] for j in np.flatnonzero(flags)}

    @property
    def skipped_count(self) -> int:
        """Distinct unreadable files skipped so far, by this process or any DataLoader worker."""
        return int(np.frombuffer(self._skipped_flags, dtype=np.int8).sum())

    def __getitem__(self, i: int) -> tuple[Tensor, int, None]:
        for k in range(len(self.paths)):
            j = (i + k) % len(self.paths)
            try:
                with Image.open(self.paths[j]) as image:
                    return self.transform(image.convert("RGB")), self.labels[j], None
            except (
                OSError,
                ValueError,
                SyntaxError,
            ) as e:  # what PIL raises for truncated or foreign files
                if not self._skipped_flags[j]:
                    self._skipped_flags[j] = 1
                    warnings.warn(
                        f"skipped unreadable image {self.paths[j]!r} ({e}); {self.skipped_count} so far",
                        stacklevel=2,
                    )
        raise ValueError(f"no image in the folder could be read ({self.skipped_count} files tried)")


def image_folder_for(model: nn.Module, root: str, split: str, **options: Any) -> ImageFolderData:
    """The folder's ``split`` with timm's transforms for ``model`` (training augmentation for "train")."""
    import timm

    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config, is_training=split == "train")
    return ImageFolderData(root, transform, split, **options)
