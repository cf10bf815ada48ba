"""The typed settings of an explainer checkpoint (``config.json``): what its network is and how it was
made. Frozen dataclasses, validated when made, so a checkpoint with a bad record is refused when
loaded; ``from_json(to_json(c)) == c`` and a shipped ``config.json`` reads back unchanged."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ._validation import check_choice, check_nonnegative_number, check_positive_int

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "explainer.safetensors"
FORMAT_VERSION = 1
FINETUNED_PARTS = ("all", "head")
HEADS = ("mlp", "conv")
FEATURE_NORMS = ("layer", "image")
ACCESSES = ("forward_features", "hook")
LAYOUTS = ("NCHW", "NHWC", "tokens")
BACKBONE_SOURCES = ("copy", "timm")


def check_explainer_options(
    *,
    head: Any = None,
    feature_norm: Any = None,
    mask_prior: Any = None,
    num_classes: Any = None,
    fine_layers: Any = None,
) -> None:
    """The checks of the settings a user picks for a new explainer, each naming its argument."""
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(f"`num_classes` must be a positive int or None, got {num_classes!r}")
    if head is not None and head not in HEADS:
        raise ValueError(f"`head` must be one of {list(HEADS)}, got {head!r}")
    if feature_norm is not None and feature_norm not in FEATURE_NORMS:
        raise ValueError(
            f"`feature_norm` must be one of {list(FEATURE_NORMS)} or None, got {feature_norm!r}"
        )
    if mask_prior is not None and (
        isinstance(mask_prior, bool)
        or not isinstance(mask_prior, (int, float))
        or not 0 < mask_prior < 1
    ):
        raise ValueError(f"`mask_prior` must be a number in (0, 1) or None, got {mask_prior!r}")
    if fine_layers is not None and (
        isinstance(fine_layers, str) or not all(isinstance(n, str) for n in fine_layers)
    ):
        raise ValueError(f"`fine_layers` must be a sequence of module names, got {fine_layers!r}")


def _from_record(cls: Any, recorded: Any, what: str) -> dict[str, Any]:
    """``recorded`` as keyword arguments of dataclass ``cls``; unknown keys are an error."""
    if not isinstance(recorded, dict):
        raise ValueError(f"the {what} record must be a JSON object, got {recorded!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(recorded) - known)
    if unknown:
        raise ValueError(f"unknown {what} settings {unknown}; expected some of {sorted(known)}")
    return dict(recorded)


@dataclass(frozen=True)
class FinetuningCfg:
    """The per-image finetuning a checkpoint records (``config["finetuning"]``), chosen with it;
    ``None``: not recorded, LTX's own default applies.

    Args:
        finetune (str, optional): explainer parts trained per image, ``"all"`` or ``"head"``.
        finetune_steps (int, optional): steps per image (0: pLTX).
        lr (float, optional): lr of the head (and of the backbone unless ``backbone_lr``).
        backbone_lr (float, optional): lr of the backbone.
        patience (int, optional): stop after this many steps without improvement.
        mask_weight (float, optional): the objective's mask weight, as written before the whole
            objective was recorded.
        objective (dict, optional): :class:`~captum_ltx.LTXObjective` settings.
    """

    finetune: str | None = None
    finetune_steps: int | None = None
    lr: float | None = None
    backbone_lr: float | None = None
    patience: int | None = None
    mask_weight: float | None = None
    objective: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.finetune is not None:
            check_choice(self.finetune, "finetune", FINETUNED_PARTS)
        if self.finetune_steps is not None:
            check_positive_int(self.finetune_steps, "finetune_steps", allow_zero=True)
        if self.patience is not None:
            check_positive_int(self.patience, "patience")
        for name in ("lr", "backbone_lr", "mask_weight"):
            if getattr(self, name) is not None:
                check_nonnegative_number(getattr(self, name), name)
        if self.objective is not None and not isinstance(self.objective, dict):
            raise ValueError(
                f"`objective` must be a dict of LTXObjective settings, got {self.objective!r}"
            )

    @classmethod
    def from_config(cls, recorded: dict[str, Any]) -> FinetuningCfg:
        return cls(**_from_record(cls, recorded, "finetuning"))

    def over(self, **settings: Any) -> FinetuningCfg:
        """These settings with ``settings`` over them (validated); a ``None`` keeps the one here."""
        return replace(self, **{k: v for k, v in settings.items() if v is not None})

    def to_config(self) -> dict[str, Any]:
        """The settings recorded (``None`` ones left out), as JSON takes them."""
        return {
            f.name: copy.deepcopy(getattr(self, f.name))
            for f in fields(self)
            if getattr(self, f.name) is not None
        }


@dataclass(frozen=True)
class FineFeatureCfg:
    """A finer backbone map whose logits the head adds (``multi_stride``)."""

    layer: str
    channels: int
    size: tuple[int, int]


@dataclass(frozen=True)
class FeatureCfg:
    """Where the head reads the backbone: ``access`` ``"forward_features"`` (timm) or ``"hook"`` on
    module ``layer``; ``layout`` of what it gives (a map or tokens after ``num_prefix_tokens``)."""

    access: str
    layer: str | None = None
    layout: str = "NCHW"
    num_prefix_tokens: int = 0
    channels: int = 0
    fine: tuple[FineFeatureCfg, ...] = ()

    def __post_init__(self) -> None:
        check_choice(self.access, "features.access", ACCESSES)
        check_choice(self.layout, "features.layout", LAYOUTS)
        if self.access == "hook" and not isinstance(self.layer, str):
            raise ValueError(f"`features.layer` must name the hooked module, got {self.layer!r}")

    @classmethod
    def from_json(cls, recorded: Any) -> FeatureCfg:
        kwargs = _from_record(cls, recorded, "features")
        kwargs["fine"] = tuple(
            FineFeatureCfg(f["layer"], f["channels"], tuple(f["size"]))  # type: ignore[arg-type]
            for f in kwargs.get("fine", ())
        )
        return cls(**kwargs)

    def to_json(self) -> dict[str, Any]:
        recorded: dict[str, Any] = {
            "access": self.access,
            "layer": self.layer,
            "layout": self.layout,
            "num_prefix_tokens": self.num_prefix_tokens,
            "channels": self.channels,
        }
        if self.fine:
            recorded["fine"] = [
                {"layer": f.layer, "channels": f.channels, "size": list(f.size)} for f in self.fine
            ]
        return recorded


@dataclass(frozen=True)
class BackboneCfg:
    """A copy of the explained model (``"copy"``) or timm architecture ``name`` made with ``kwargs``."""

    source: str
    name: str | None = None
    kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_choice(self.source, "backbone.source", BACKBONE_SOURCES)
        if self.source == "timm" and not isinstance(self.name, str):
            raise ValueError(f"`backbone.name` must name a timm architecture, got {self.name!r}")

    def to_json(self) -> dict[str, Any]:
        recorded: dict[str, Any] = {"source": self.source}
        if self.name is not None:
            recorded["name"] = self.name
        if self.kwargs is not None:
            recorded["kwargs"] = copy.deepcopy(self.kwargs)
        return recorded


# written only when set, as checkpoints from before these settings lack them
_OPTIONAL = ("num_classes", "feature_norm", "mask_prior", "command", "transfer_from")


@dataclass(frozen=True)
class ExplainerCfg:
    """Everything ``config.json`` records about an explainer.

    Args:
        backbone, features: what the head reads (see :class:`BackboneCfg`, :class:`FeatureCfg`).
        head (str): ``"mlp"`` or ``"conv"``.
        input_size (tuple): (C, H, W) of the images it was made for.
        mask_size (tuple): (h, w) of its low-resolution mask.
        model (dict): the explained model's record (class, fingerprints, timm architecture).
        normalization (tuple, optional): (mean, std) of the inputs.
        seed (int): seed of the head's initialisation.
        training (dict): how it was pretrained (empty: never).
        num_classes (int, optional): classes of a class-conditioned head.
        feature_norm (str, optional), mask_prior (float, optional): head settings (``None``: the
            reference's raw features and initialisation).
        finetuning (FinetuningCfg): the per-image finetuning chosen with it.
        command (str, optional): the command that made it.
        transfer_from (dict, optional): the record of the model it was made for, when transferred.
    """

    backbone: BackboneCfg
    features: FeatureCfg
    head: str
    input_size: tuple[int, int, int]
    mask_size: tuple[int, int]
    model: dict[str, Any]
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    seed: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    feature_norm: str | None = None
    mask_prior: float | None = None
    finetuning: FinetuningCfg = field(default_factory=FinetuningCfg)
    command: str | None = None
    transfer_from: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"format version {self.format_version} is not supported (expected {FORMAT_VERSION})"
            )
        check_explainer_options(
            head=self.head,
            feature_norm=self.feature_norm,
            mask_prior=self.mask_prior,
            num_classes=self.num_classes,
        )
        if len(self.input_size) != 3 or not all(
            isinstance(v, int) and v > 0 for v in self.input_size
        ):
            raise ValueError(f"`input_size` must be (C, H, W), got {self.input_size!r}")
        if not isinstance(self.model, dict) or "fingerprint" not in self.model:
            raise ValueError("the `model` record must hold the explained model's fingerprint")

    @classmethod
    def from_json(cls, recorded: Any) -> ExplainerCfg:
        """Reads a ``config.json`` object; raises ``ValueError`` naming what is missing or wrong."""
        kwargs = _from_record(cls, recorded, "explainer")
        required = (
            "format_version",
            "backbone",
            "features",
            "head",
            "input_size",
            "mask_size",
            "model",
        )
        missing = [k for k in required if k not in kwargs]
        if missing:
            raise ValueError(f"the explainer record lacks the keys {missing}")
        kwargs["backbone"] = BackboneCfg(
            **_from_record(BackboneCfg, kwargs["backbone"], "backbone")
        )
        kwargs["features"] = FeatureCfg.from_json(kwargs["features"])
        kwargs["finetuning"] = FinetuningCfg.from_config(kwargs.get("finetuning", {}))
        kwargs["input_size"] = tuple(kwargs["input_size"])
        kwargs["mask_size"] = tuple(kwargs["mask_size"])
        norm = kwargs.get("normalization")
        kwargs["normalization"] = (tuple(norm[0]), tuple(norm[1])) if norm else None
        return cls(**copy.deepcopy(kwargs))

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ExplainerCfg:
        """The ``config.json`` of checkpoint folder ``path``, validated."""
        config_path = os.path.join(path, CONFIG_NAME)
        if not os.path.isdir(path) or not os.path.isfile(config_path):
            raise ValueError(
                f"`path` {str(path)!r} is not an explainer checkpoint: expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
        try:
            with open(config_path) as f:
                recorded = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(
                f"`path` {str(path)!r}: {CONFIG_NAME} is not valid JSON ({e})"
            ) from None
        try:
            return cls.from_json(recorded)
        except (TypeError, ValueError, KeyError, IndexError) as e:
            raise ValueError(f"`path` {str(path)!r}: {CONFIG_NAME} is invalid: {e}") from None

    def to_json(self) -> dict[str, Any]:
        """The ``config.json`` object (a new one each call: changing it changes nothing here)."""
        norm = self.normalization
        recorded: dict[str, Any] = {
            "format_version": self.format_version,
            "backbone": self.backbone.to_json(),
            "features": self.features.to_json(),
            "head": self.head,
            "input_size": list(self.input_size),
            "mask_size": list(self.mask_size),
            "normalization": [list(norm[0]), list(norm[1])] if norm else None,
            "model": copy.deepcopy(self.model),
            "training": copy.deepcopy(self.training),
            "seed": self.seed,
        }
        recorded.update(
            {k: copy.deepcopy(getattr(self, k)) for k in _OPTIONAL if getattr(self, k) is not None}
        )
        finetuning = self.finetuning.to_config()
        if finetuning:
            recorded["finetuning"] = finetuning
        return recorded
