"""Checkpoints that install with the package (``captum_ltx/checkpoints/``, package data), found by name.

The repository's ``checkpoints/`` is a link to that folder, so repository paths and names reach the same files.
"""

from __future__ import annotations

import os

SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints")
_EXPLAINER_SUFFIX = "-ltx"


def available_explainers() -> list[str]:
    """Names of the shipped explainers: the explained model each was pretrained for."""
    if not os.path.isdir(SHIPPED_DIR):
        return []
    return sorted(
        f[: -len(_EXPLAINER_SUFFIX)]
        for f in os.listdir(SHIPPED_DIR)
        if f.endswith(_EXPLAINER_SUFFIX)
    )


def explainer_folder(name_or_path: str | os.PathLike[str], argument: str = "explainer") -> str:
    """The checkpoint folder of ``name_or_path``: an existing folder as given, else a shipped explainer's name."""
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        return path
    if path in available_explainers():
        return os.path.join(SHIPPED_DIR, path + _EXPLAINER_SUFFIX)
    raise ValueError(
        f"`{argument}` {path!r} is neither a checkpoint folder nor a shipped explainer's name "
        f"({', '.join(available_explainers()) or 'none installed'})"
    )


def shipped_model_folder(name: str) -> str:
    """Folder of a shipped explained model (``fashion-vit`` ...)."""
    return os.path.join(SHIPPED_DIR, name)
