"""The LTX explainer network: backbone features, a mask head and a sigmoid mask at input resolution."""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._cnn import spatial_order, spatial_outputs, stage_names
from ._hooks import capture
from ._model import (
    architecture_fingerprint,
    check_normalization,
    layout_fingerprint,
    normalization_of,
)
from ._shipped import explainer_folder
from ._validation import check_choice, check_positive_int, format_target

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "explainer.safetensors"
FORMAT_VERSION = 1
FINETUNED_PARTS = ("all", "head")


@dataclass(frozen=True)
class FinetuningCfg:
    """The per-image finetuning a checkpoint records (``config["finetuning"]``), chosen with it;
    ``None``: not recorded, LTX's own default applies. Validated when made, so a checkpoint with a bad
    record is refused when loaded.

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
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
        if self.objective is not None and not isinstance(self.objective, dict):
            raise ValueError(
                f"`objective` must be a dict of LTXObjective settings, got {self.objective!r}"
            )

    @classmethod
    def from_config(cls, recorded: dict[str, Any]) -> FinetuningCfg:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(recorded) - known)
        if unknown:
            raise ValueError(
                f"unknown finetuning settings {unknown}; expected some of {sorted(known)}"
            )
        return cls(**recorded)

    def to_config(self) -> dict[str, Any]:
        """The settings recorded (``None`` ones left out), as JSON takes them."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


HEADS = ("mlp", "conv")
FEATURE_NORMS = ("layer", "image")
DEFAULT_FEATURE_NORM = "layer"
DEFAULT_MASK_PRIOR = 0.5
CLASS_GAIN = 50.0
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _detached_copy(model: nn.Module) -> nn.Module:
    """A deep copy that owns its parameters, with no gradients, no hooks and every parameter trainable."""
    clone = copy.deepcopy(model)
    for module in clone.modules():
        for hooks in _HOOK_DICTS:
            getattr(module, hooks, {}).clear()
    for p in clone.parameters():
        p.grad = None
        p.requires_grad_(True)
    return clone


def _read_features(
    net: nn.Module, features: dict[str, Any], x: Tensor, *args: Any
) -> tuple[Tensor, list[Tensor]]:
    """The head's main features and the outputs of the finer layers (``features["fine"]``), in one forward."""
    hooked = [features["layer"]] if features["access"] == "hook" else []
    hooked += [fine["layer"] for fine in features.get("fine", ())]
    # Hooked per call (not once) so that deep copies of an explainer never share a hook.
    with capture(net, hooked) as captured:
        main = (
            cast(Any, net).forward_features(x)
            if features["access"] == "forward_features"
            else net(x, *args)
        )
    if features["access"] == "hook":
        main = captured[features["layer"]]
    return main, [captured[fine["layer"]] for fine in features.get("fine", ())]


def _model_record(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint says about the model it was made for; a timm model's architecture and class
    count let a copied backbone be rebuilt without that model (to explain another, ``transfer=True``)."""
    record: dict[str, Any] = {
        "class": type(model).__qualname__,
        "fingerprint": architecture_fingerprint(model),
        "layout": layout_fingerprint(model),
    }
    architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if architecture and isinstance(getattr(model, "num_classes", None), int):
        record.update(architecture=architecture, num_classes=model.num_classes)
    return record


class _LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels at each location of a (B, C, h, w) map."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _feature_norm(kind: str | None, channels: int) -> nn.Module:
    """``"layer"``: each location's channels; ``"image"``: each image's features over all channels and
    locations (one group), so that locations keep their relative strength; ``None``: raw features."""
    if kind is None:
        return nn.Identity()
    return _LayerNorm2d(channels) if kind == "layer" else nn.GroupNorm(1, channels)


def _prior_init(conv: nn.Conv2d, prior: float | None) -> None:
    """Near-zero weights and a bias that starts the mask at ``prior`` everywhere (the prior-bias
    initialisation of detection heads), so the sigmoid starts unsaturated whatever the features."""
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.constant_(
        cast(Tensor, conv.bias), 0.0 if prior is None else math.log(prior / (1 - prior))
    )


def _feature_grid(raw: Tensor, image_size: Any, features: dict[str, Any]) -> Tensor:
    """Feature map (B, C, h, w) from whatever layout the backbone gives."""
    layout = features["layout"]
    if layout == "NCHW":
        return raw
    if layout == "NHWC":
        return raw.permute(0, 3, 1, 2)
    tokens = raw[:, features["num_prefix_tokens"] :]
    n = tokens.shape[1]
    height, width = image_size
    h = max(1, round((n * height / width) ** 0.5))
    w = n // h
    if h * w != n:
        raise ValueError(
            f"cannot arrange {n} patch tokens into a grid for an image of size {height}x{width}"
        )
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


def _fine_features(
    net: nn.Module,
    features: dict[str, Any],
    probe: Tensor,
    args: tuple[Any, ...],
    names: Sequence[str] | None,
    size: tuple[int, int],
) -> list[dict[str, Any]]:
    """Name, channels and size of each finer map the head adds; by default the last feature stage
    finer than the head's grid (timm's ``feature_info``, else any module's output)."""
    outputs = spatial_outputs(
        net,
        probe,
        args,
        forward=cast(Callable[..., Any], net.forward_features)
        if features["access"] == "forward_features"
        else None,
    )
    if names is None:
        stages = set(stage_names(net))
        finer = [
            n for n, area in outputs if area > size[0] * size[1] and (not stages or n in stages)
        ]
        if not finer:
            raise ValueError(
                f"`multi_stride`: the backbone has no feature map finer than the head's {size[0]}x{size[1]}; "
                "pass `fine_layers` naming modules with finer (B, C, h, w) outputs"
            )
        names = [finer[-1]]
    modules = dict(net.named_modules())
    for name in names:
        if name not in modules:
            raise ValueError(f"`fine_layers`: {name!r} is not a module of the backbone")
    with torch.no_grad():
        _, maps = _read_features(
            net, dict(features, fine=[{"layer": n} for n in names]), probe, *args
        )
    result = []
    previous = size
    for name, out in zip(names, maps):
        if out.dim() != 4 or out.shape[-2] < previous[0] or out.shape[-1] < previous[1]:
            raise ValueError(
                f"`fine_layers`: {name!r} must give a (B, C, h, w) map at least as fine as the one before it "
                f"({previous[0]}x{previous[1]}), got shape {tuple(out.shape)}"
            )
        previous = (out.shape[-2], out.shape[-1])
        result.append({"layer": name, "channels": int(out.shape[1]), "size": list(previous)})
    return result


class Explainer(nn.Module):
    r"""The network that LTX trains to predict an explanation mask.

    A backbone (by default a copy of the explained model without its classifier) gives a feature map;
    a mask head turns it into one logit per location (ViT: an MLP ``Linear(d, d) -> tanh -> Linear(d, 1)``
    on each patch token; CNN: a 1x1 convolution on the last feature map); a sigmoid gives the
    low-resolution mask, upsampled bilinearly to the input size. The backbone always runs in eval mode
    (BatchNorm statistics frozen, as in the reference code) while its weights may be trained.

    The reference explainer is blind to the class: one mask per image, made class-specific only by
    finetuning. With ``num_classes`` (an extension of ours) the head reads the features scaled
    channel-wise by a learned embedding of the explained class, so that one forward gives each class
    its own mask; such an explainer needs ``target`` in every call.

    Build one with :meth:`from_model`; store and restore it with :meth:`save` and :meth:`load`
    (safetensors weights plus a JSON config).

    Args:
        backbone (nn.Module): the feature extractor.
        config (dict): how features are read and the head is built; written by :meth:`from_model`.

    Example::

        >>> explainer = Explainer.from_model(model)          # timm model: copy of its backbone
        >>> mask = explainer(x)                               # (B, 1, H, W) in [0, 1]
        >>> explainer.save("ckpt/"); Explainer.load("ckpt/", model)
        >>> per_class = Explainer.from_model(model, num_classes=10)
        >>> mask = per_class(x, target=torch.tensor([3]))
    """

    def __init__(self, backbone: nn.Module, config: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        channels = config["features"]["channels"]
        # checkpoints from before these settings existed read raw features with the reference's init
        norm, prior = config.get("feature_norm"), config.get("mask_prior")
        self.norm = _feature_norm(norm, channels)
        self.head: nn.Module
        if config["head"] == "mlp":
            self.head = nn.Sequential(
                nn.Conv2d(channels, channels, 1), nn.Tanh(), nn.Conv2d(channels, 1, 1)
            )
            for conv in self.head[0::2]:
                # HF's default init for new heads, as in the reference explainer.
                nn.init.normal_(cast(Tensor, conv.weight), std=0.02)
                nn.init.zeros_(cast(Tensor, conv.bias))
            last = self.head[-1]
        else:
            self.head = last = nn.Conv2d(channels, 1, 1)
        if prior is not None:
            _prior_init(cast(nn.Conv2d, last), prior)
        # finer feature maps each add their own logits, upsampled coarse to fine, for a finer mask
        self.fine_heads = nn.ModuleList()
        for fine in config["features"].get("fine", ()):
            fine_head = nn.Sequential(
                _feature_norm(norm, fine["channels"]), nn.Conv2d(fine["channels"], 1, 1)
            )
            _prior_init(cast(nn.Conv2d, fine_head[-1]), None)
            self.fine_heads.append(fine_head)
        classes = config.get("num_classes")
        # the per-class scale is 1 + CLASS_GAIN * class_offset: zero at first (the class-blind explainer),
        # and the gain lets it move at the backbone's small lr (without it, 2e-4 x 250 steps moved the
        # scales by 1% and the masks did not depend on the class)
        self.class_offset = nn.Parameter(torch.zeros(classes, channels)) if classes else None
        self.backbone.eval()

    # -- construction -------------------------------------------------------------------------------

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        *,
        backbone: str | nn.Module | None = None,
        head: str | None = None,
        feature_layer: str | None = None,
        num_prefix_tokens: int | None = None,
        input_size: tuple[int, int, int] | None = None,
        normalization: Any = None,
        seed: int = 0,
        num_classes: int | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        probe_args: tuple[Any, ...] = (),
        feature_norm: str | None = DEFAULT_FEATURE_NORM,
        mask_prior: float | None = DEFAULT_MASK_PRIOR,
        multi_stride: bool = False,
        fine_layers: Sequence[str] | None = None,
    ) -> Explainer:
        """Derives an explainer for ``model``.

        Args:
            model (nn.Module): the explained classifier.
            backbone (str or nn.Module, optional): ``None`` copies ``model``; a string names a timm
                architecture (created without downloading; give ``backbone_kwargs`` such as
                ``pretrained_cfg_overlay=dict(file=...)`` for local weights).
            head (str, optional): ``"mlp"`` (default for token backbones) or ``"conv"`` (default for
                feature maps).
            feature_layer (str, optional): name of the backbone module whose output the head reads.
                Default: timm's ``forward_features``, else the last module with a spatial output.
            num_prefix_tokens (int, optional): class/register tokens to drop from a token output.
                Default: the backbone's ``num_prefix_tokens`` or 0.
            input_size (tuple, optional): (C, H, W). Default: the model's ``pretrained_cfg``.
            normalization (tuple, optional): (mean, std) of the inputs. Default: ``pretrained_cfg``.
            seed (int): seed of the head's initialisation, so that a fresh explainer is reproducible.
            num_classes (int, optional): make the mask depend on the explained class (see above).
            probe_args (tuple): further model arguments for one probing forward pass (batch of 1),
                for models that take more than the image.
            feature_norm (str, optional): how the head normalises the features it reads: ``"layer"``
                (default: the channels at each location), ``"image"`` (each image's features as a
                whole, so locations keep their relative strength) or ``None`` (raw features, as the
                reference; a model with large unnormalised features then starts saturated).
            mask_prior (float, optional): the mask every location starts at, in (0, 1): the head's
                last layer starts with near-zero weights and the bias ``log(p / (1 - p))``
                (default 0.5). ``None`` keeps the reference's initialisation.
            multi_stride (bool): add the logits of a finer feature map (the stage before the last
                downsampling, or ``fine_layers``) to the head's, for a mask at the finer resolution.
            fine_layers (sequence of str, optional): backbone modules with finer (B, C, h, w) outputs,
                coarse to fine; implies ``multi_stride``.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"`model` must be an nn.Module to derive an explainer from, got {type(model).__name__}"
            )
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
            raise ValueError(
                f"`fine_layers` must be a sequence of module names, got {fine_layers!r}"
            )
        input_size = input_size or (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
        if input_size is None or len(input_size) != 3:
            raise ValueError(
                f"`input_size` (C, H, W) is needed for a model without timm's pretrained_cfg, got {input_size!r}"
            )
        if normalization is not None:
            normalization = check_normalization(normalization)
        else:
            normalization = normalization_of(model)

        backbone_kwargs = dict(backbone_kwargs or {})
        source: dict[str, Any]
        if backbone is None:
            net, source = _detached_copy(model), {"source": "copy"}
            if feature_layer is None and hasattr(net, "reset_classifier"):
                cast(Any, net).reset_classifier(0)
        elif isinstance(backbone, str):
            import timm

            net = timm.create_model(backbone, num_classes=0, **backbone_kwargs)
            kwargs = {
                k: v
                for k, v in backbone_kwargs.items()
                if k not in ("pretrained", "pretrained_cfg_overlay")
            }
            source = {"source": "timm", "name": backbone, "kwargs": kwargs}
        elif isinstance(backbone, nn.Module):
            raise TypeError(
                "`backbone` as a module cannot be rebuilt from a checkpoint; pass a timm model name, or None to "
                "copy the explained model"
            )
        else:
            raise TypeError(
                f"`backbone` must be None or a timm model name, got {type(backbone).__name__}"
            )

        probe = torch.zeros(1, *input_size)
        net.eval()
        if feature_layer is None and hasattr(net, "forward_features"):
            access = {"access": "forward_features", "layer": None}
        else:
            layer = (
                feature_layer
                or spatial_order(
                    net,
                    probe,
                    probe_args,
                    "pass `feature_layer` naming the module whose output the mask head should read",
                )[-1][0]
            )
            if layer not in dict(net.named_modules()):
                raise ValueError(f"`feature_layer` {layer!r} is not a module of the backbone")
            access = {"access": "hook", "layer": layer}
        features: dict[str, Any] = dict(access)
        features.update(layout="NCHW", num_prefix_tokens=0, channels=0)
        config = {
            "format_version": FORMAT_VERSION,
            "backbone": source,
            "features": features,
            "head": "conv",
            "input_size": list(input_size),
            "mask_size": None,
            "normalization": [list(normalization[0]), list(normalization[1])]
            if normalization
            else None,
            "model": _model_record(model),
            "training": {},
            "seed": seed,
        }
        if num_classes is not None:
            config["num_classes"] = num_classes
        if feature_norm is not None:
            config["feature_norm"] = feature_norm
        if mask_prior is not None:
            config["mask_prior"] = float(mask_prior)
        net_args = probe_args if access["access"] == "hook" else ()
        with torch.no_grad():
            raw, _ = _read_features(net, features, probe, *net_args)
        if raw.dim() == 3:
            features["layout"] = "tokens"
            features["num_prefix_tokens"] = int(
                num_prefix_tokens
                if num_prefix_tokens is not None
                else getattr(net, "num_prefix_tokens", 0)
            )
        elif raw.dim() == 4:
            fmt = getattr(net, "output_fmt", "NCHW")
            features["layout"] = str(getattr(fmt, "value", fmt))
        else:
            raise ValueError(
                f"backbone features must be tokens (B, N, D) or a map (B, C, h, w), got shape {tuple(raw.shape)}"
            )
        grid = _feature_grid(raw, probe.shape[-2:], features)
        features["channels"] = int(grid.shape[1])
        config["mask_size"] = list(grid.shape[-2:])
        if multi_stride or fine_layers is not None:
            features["fine"] = _fine_features(
                net, features, probe, net_args, fine_layers, (grid.shape[-2], grid.shape[-1])
            )
            config["mask_size"] = features["fine"][-1]["size"]
        config["head"] = head or ("mlp" if features["layout"] == "tokens" else "conv")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(net, config)

    # -- forward ------------------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        *additional_forward_args: Any,
        target: Tensor | None = None,
        return_low_res: bool = False,
        features: tuple[Tensor, list[Tensor]] | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Returns the mask (B, 1, H, W) in [0, 1], and with ``return_low_res`` also the (B, 1, h, w) mask.

        ``additional_forward_args`` reach a backbone that is a whole copied model (features read by a
        hook), for models that take more than the image. ``target`` (any Captum class form): needed by
        a class-conditioned explainer, ignored by a class-blind one. ``features``: :meth:`features` of
        ``x``, computed before, so that only the head runs (finetuning the head alone).
        """
        raw, fines = self.features(x, *additional_forward_args) if features is None else features
        return self.mask_from_features(
            raw, fines, x.shape[-2:], target=target, return_low_res=return_low_res
        )

    def features(self, x: Tensor, *additional_forward_args: Any) -> tuple[Tensor, list[Tensor]]:
        """The backbone's outputs that the head reads: the main features and the finer maps."""
        return _read_features(self.backbone, self.config["features"], x, *additional_forward_args)

    def mask_from_features(
        self,
        raw: Tensor,
        fines: list[Tensor],
        image_size: Any,
        *,
        target: Tensor | None = None,
        return_low_res: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The head's part of :meth:`forward`, on :meth:`features`' outputs."""
        grid = self.norm(_feature_grid(raw, image_size, self.config["features"]))
        if self.class_offset is not None:
            classes = self.class_offset.shape[0]
            if target is None:
                raise ValueError(
                    f"`target` is needed: this explainer makes a mask per class ({classes} classes)"
                )
            target = format_target(target, grid.shape[0], classes).to(grid.device)
            grid = grid * (1 + CLASS_GAIN * self.class_offset[target])[:, :, None, None]
        logits = self.head(grid)
        for fine_head, fine in zip(self.fine_heads, fines):
            logits = F.interpolate(
                logits, size=fine.shape[-2:], mode="bilinear", align_corners=False
            ) + fine_head(fine)
        low_res = torch.sigmoid(logits)
        mask = F.interpolate(low_res, size=tuple(image_size), mode="bilinear", align_corners=False)
        return (mask, low_res) if return_low_res else mask

    def train(self, mode: bool = True) -> Explainer:
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        norm = self.config.get("normalization")
        return (tuple(norm[0]), tuple(norm[1])) if norm else None

    # -- checkpoints --------------------------------------------------------------------------------

    @property
    def input_size(self) -> tuple[int, ...]:
        """(channels, height, width) of the images the explainer was made for."""
        return tuple(self.config["input_size"])

    @property
    def pretrained(self) -> bool:
        """Whether the explainer was pretrained (its config records the training)."""
        return bool(self.config.get("training"))

    @property
    def fresh_head_channels(self) -> int | None:
        """For a head never pretrained that starts at its prior, the channels it reads; else ``None``."""
        if self.pretrained or self.config.get("mask_prior") is None:
            return None
        return int(self.config["features"]["channels"])

    def record(self, **facts: Any) -> None:
        """Records facts about how the checkpoint was made (``training``, ``command``) in its config."""
        unknown = sorted(set(facts) - {"training", "command"})
        if unknown:
            raise ValueError(
                f"unknown checkpoint records {unknown}; expected 'training' or 'command'"
            )
        self.config.update(facts)

    @property
    def finetuning(self) -> FinetuningCfg:
        """The per-image finetuning recorded with this explainer (``LTX`` uses it unless told otherwise)."""
        return FinetuningCfg.from_config(self.config.get("finetuning", {}))

    def record_finetuning(self, **settings: Any) -> None:
        """Records :class:`FinetuningCfg` settings over the recorded ones (validated; ``None``: kept)."""
        given = {k: v for k, v in settings.items() if v is not None}
        self.config["finetuning"] = replace(self.finetuning, **given).to_config()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes ``path/explainer.safetensors`` and ``path/config.json``."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        save_file(
            state, os.path.join(path, WEIGHTS_NAME), metadata={"format": "captum_ltx.Explainer"}
        )
        with open(os.path.join(path, CONFIG_NAME), "w") as f:
            json.dump(self.config, f, indent=2, sort_keys=True)

    @staticmethod
    def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
        config_path = os.path.join(path, CONFIG_NAME)
        if not os.path.isdir(path) or not os.path.isfile(config_path):
            raise ValueError(
                f"`path` {str(path)!r} is not an explainer checkpoint: expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
        try:
            with open(config_path) as f:
                config = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(
                f"`path` {str(path)!r}: {CONFIG_NAME} is not valid JSON ({e})"
            ) from None
        required = ("format_version", "backbone", "features", "head", "input_size", "model")
        if not isinstance(config, dict) or any(k not in config for k in required):
            raise ValueError(f"`path` {str(path)!r}: {CONFIG_NAME} lacks the keys {list(required)}")
        if config["format_version"] != FORMAT_VERSION:
            raise ValueError(
                f"`path` {str(path)!r}: format version {config['format_version']} is not supported (expected {FORMAT_VERSION})"
            )
        try:
            FinetuningCfg.from_config(config.get("finetuning", {}))
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"`path` {str(path)!r}: its finetuning record is invalid: {e}"
            ) from None
        return config

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        model: nn.Module | None = None,
        *,
        transfer: bool = False,
    ) -> Explainer:
        """A shipped explainer by the name of the model it explains (:func:`available_explainers`), or a
        checkpoint folder; then as :meth:`load`.

        Example::

            >>> explainer = Explainer.from_pretrained("efficientnet_lite0", create_model("efficientnet_lite0"))
        """
        return cls.load(explainer_folder(name_or_path), model, transfer=transfer)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], model: nn.Module | None = None, *, transfer: bool = False
    ) -> Explainer:
        """Loads a checkpoint written by :meth:`save`, onto the CPU.

        Args:
            path: the checkpoint folder.
            model (nn.Module, optional): the explained model. Needed when the backbone is a copy of it;
                when given, it must have the architecture the checkpoint was made for, unless ``transfer``.
            transfer (bool): explain ``model`` with an explainer made for another model (as TVE's
                transfer): a backbone that copied the other model is rebuilt from the timm architecture
                recorded for it, with its trained weights, and ``config["transfer_from"]`` keeps the
                other model's record. The two models must take the same normalisation.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        config = cls.read_config(path)
        transferred = (
            model is not None
            and transfer
            and config["model"]["fingerprint"] != architecture_fingerprint(model)
        )
        if model is not None and not transferred:
            _check_same_model(path, config, model, transfer_hint=not transfer)
        if transferred:
            config = _transferred_config(path, config, cast(nn.Module, model))
            config["backbone"] = _rebuilt_backbone_source(path, config)
        source = config["backbone"]
        if source["source"] == "copy":
            if model is None:
                raise ValueError(
                    f"`model` is needed to load {str(path)!r}: its backbone is a copy of the explained model"
                )
            net = _detached_copy(model)
            if config["features"]["access"] == "forward_features" and hasattr(
                net, "reset_classifier"
            ):
                cast(Any, net).reset_classifier(0)
        else:
            import timm

            net = timm.create_model(
                source["name"], **{"num_classes": 0, **source.get("kwargs", {})}
            )
        explainer = cls(net, config)
        try:
            state = load_file(os.path.join(path, WEIGHTS_NAME))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(
                f"`path` {str(path)!r}: {WEIGHTS_NAME} is not a readable safetensors file ({e})"
            ) from None
        try:
            explainer.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(
                f"`path` {str(path)!r}: weights do not fit the explainer ({str(e).splitlines()[0]})"
            ) from None
        return explainer


def _check_same_model(
    path: Any, config: dict[str, Any], model: nn.Module, transfer_hint: bool
) -> None:
    expected, actual = config["model"]["fingerprint"], architecture_fingerprint(model)
    if expected != actual:
        raise ValueError(
            f"`path` {str(path)!r} holds an explainer for a {config['model']['class']} with architecture "
            f"fingerprint {expected}, but the explained model is a {type(model).__qualname__} with "
            f"fingerprint {actual}"
            + (
                "; to explain this model with it anyway, pass transfer=True"
                if transfer_hint
                else ""
            )
        )
    # checkpoints from before the layout was recorded are checked on their weights' shapes alone
    expected_layout, actual_layout = config["model"].get("layout"), layout_fingerprint(model)
    if expected_layout is not None and expected_layout != actual_layout:
        raise ValueError(
            f"`path` {str(path)!r} holds an explainer for a {config['model']['class']} whose weights fit the "
            f"explained model but whose layers differ in kernel, stride, padding or dilation (layout "
            f"fingerprint {expected_layout}, the model's {actual_layout})"
        )


def _transferred_config(path: Any, config: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """The config of a checkpoint made for another model, now recorded for ``model``."""
    theirs, ours = config.get("normalization"), normalization_of(model)
    if theirs is not None and ours is not None and [list(v) for v in ours] != theirs:
        raise ValueError(
            f"`path` {str(path)!r}: transfer needs the models to take the same normalisation; the explainer's "
            f"is {theirs}, the explained model's {[list(v) for v in ours]}"
        )
    if theirs is not None and ours is None:
        warnings.warn(
            f"transfer of {str(path)!r}: the explained model records no normalisation; the explainer expects {theirs}",
            stacklevel=3,
        )
    classes = config.get(
        "num_classes"
    )  # a class-conditioned head has a row per class of the first model
    if classes is not None and classes != getattr(model, "num_classes", classes):
        raise ValueError(
            f"`path` {str(path)!r}: its explainer reads the class ({classes} classes); the explained model has {model.num_classes}"
        )
    return dict(config, model=_model_record(model), transfer_from=config["model"])


def _rebuilt_backbone_source(path: Any, config: dict[str, Any]) -> dict[str, Any]:
    """A copied backbone as the timm model it copied (its weights are in the checkpoint)."""
    source, made_for = config["backbone"], config["transfer_from"]
    if source["source"] != "copy":
        return source
    if "architecture" not in made_for:
        raise ValueError(
            f"`path` {str(path)!r}: its backbone copies a {made_for['class']} whose timm architecture is not recorded, so it "
            "cannot be rebuilt to explain another model; re-make the checkpoint with a timm model"
        )
    keeps_classifier = (
        config["features"]["access"] != "forward_features"
    )  # a hooked backbone is the whole model
    return {
        "source": "timm",
        "name": made_for["architecture"],
        "kwargs": {"num_classes": made_for["num_classes"]} if keeps_classifier else {},
    }
