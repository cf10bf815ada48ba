"""The LTX explainer network: backbone features, a mask head and a sigmoid mask at input resolution."""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._cnn import spatial_order, spatial_outputs, stage_names
from ._explainer_cfg import (
    CONFIG_NAME,
    FINETUNED_PARTS,
    WEIGHTS_NAME,
    BackboneCfg,
    ExplainerCfg,
    FeatureCfg,
    FineFeatureCfg,
    FinetuningCfg,
    check_explainer_options,
)
from ._hooks import capture
from ._model import (
    architecture_fingerprint,
    check_normalization,
    layout_fingerprint,
    normalization_of,
)
from ._shipped import explainer_folder
from ._validation import format_target, warn_user

__all__ = ["FINETUNED_PARTS", "Explainer", "ExplainerCfg", "FinetuningCfg"]

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
    net: nn.Module,
    features: FeatureCfg,
    x: Tensor,
    *args: Any,
    fine_layers: Sequence[str] | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """The head's main features and the outputs of the finer layers (``features.fine``, or
    ``fine_layers``), in one forward."""
    fine = [f.layer for f in features.fine] if fine_layers is None else list(fine_layers)
    hooked = ([features.layer] if features.access == "hook" else []) + fine
    # Hooked per call (not once) so that deep copies of an explainer never share a hook.
    with capture(net, cast(list[str], hooked)) as captured:
        main = (
            cast(Any, net).forward_features(x)
            if features.access == "forward_features"
            else net(x, *args)
        )
    if features.access == "hook":
        main = captured[cast(str, features.layer)]
    return main, [captured[name] for name in fine]


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


def _feature_grid(raw: Tensor, image_size: Any, features: FeatureCfg) -> Tensor:
    """Feature map (B, C, h, w) from whatever layout the backbone gives."""
    if features.layout == "NCHW":
        return raw
    if features.layout == "NHWC":
        return raw.permute(0, 3, 1, 2)
    tokens = raw[:, features.num_prefix_tokens :]
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
    features: FeatureCfg,
    probe: Tensor,
    args: tuple[Any, ...],
    names: Sequence[str] | None,
    size: tuple[int, int],
) -> tuple[FineFeatureCfg, ...]:
    """Name, channels and size of each finer map the head adds; by default the last feature stage
    finer than the head's grid (timm's ``feature_info``, else any module's output)."""
    outputs = spatial_outputs(
        net,
        probe,
        args,
        forward=cast(Callable[..., Any], net.forward_features)
        if features.access == "forward_features"
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
        _, maps = _read_features(net, features, probe, *args, fine_layers=names)
    result = []
    previous = size
    for name, out in zip(names, maps):
        if out.dim() != 4 or out.shape[-2] < previous[0] or out.shape[-1] < previous[1]:
            raise ValueError(
                f"`fine_layers`: {name!r} must give a (B, C, h, w) map at least as fine as the one before it "
                f"({previous[0]}x{previous[1]}), got shape {tuple(out.shape)}"
            )
        previous = (int(out.shape[-2]), int(out.shape[-1]))
        result.append(FineFeatureCfg(name, int(out.shape[1]), previous))
    return tuple(result)


def _input_size(model: nn.Module, given: Any) -> tuple[int, int, int]:
    """``given``, else the (C, H, W) of the model's timm ``pretrained_cfg``."""
    size = given or (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if size is None or len(size) != 3:
        raise ValueError(
            f"`input_size` (C, H, W) is needed for a model without timm's pretrained_cfg, got {size!r}"
        )
    return cast(tuple[int, int, int], tuple(int(v) for v in size))


def _backbone(
    model: nn.Module,
    backbone: Any,
    backbone_kwargs: dict[str, Any],
    feature_layer: str | None,
) -> tuple[nn.Module, BackboneCfg]:
    """The backbone network in eval mode, and how a checkpoint rebuilds it."""
    if backbone is None:
        net = _detached_copy(model)
        if feature_layer is None and hasattr(net, "reset_classifier"):
            cast(Any, net).reset_classifier(0)
        return net.eval(), BackboneCfg("copy")
    if isinstance(backbone, str):
        import timm

        net = timm.create_model(backbone, num_classes=0, **backbone_kwargs)
        kwargs = {
            k: v
            for k, v in backbone_kwargs.items()
            if k not in ("pretrained", "pretrained_cfg_overlay")
        }
        return net.eval(), BackboneCfg("timm", backbone, kwargs)
    if isinstance(backbone, nn.Module):
        raise TypeError(
            "`backbone` as a module cannot be rebuilt from a checkpoint; pass a timm model name, or None to "
            "copy the explained model"
        )
    raise TypeError(f"`backbone` must be None or a timm model name, got {type(backbone).__name__}")


def _probe_features(
    net: nn.Module,
    probe: Tensor,
    probe_args: tuple[Any, ...],
    feature_layer: str | None,
    num_prefix_tokens: int | None,
) -> tuple[FeatureCfg, Tensor]:
    """Where the head reads the backbone and in what layout, from one forward of ``probe``; and
    what it read."""
    if feature_layer is None and hasattr(net, "forward_features"):
        features = FeatureCfg("forward_features")
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
        features = FeatureCfg("hook", layer)
    with torch.no_grad():
        raw, _ = _read_features(
            net, features, probe, *(probe_args if features.access == "hook" else ())
        )
    if raw.dim() == 3:
        prefix = num_prefix_tokens
        if prefix is None:
            prefix = getattr(net, "num_prefix_tokens", 0)
        return replace(features, layout="tokens", num_prefix_tokens=int(prefix)), raw
    if raw.dim() == 4:
        fmt = getattr(net, "output_fmt", "NCHW")
        return replace(features, layout=str(getattr(fmt, "value", fmt))), raw
    raise ValueError(
        f"backbone features must be tokens (B, N, D) or a map (B, C, h, w), got shape {tuple(raw.shape)}"
    )


def _mask_head(
    cfg: ExplainerCfg,
) -> tuple[nn.Module, nn.Module, nn.ModuleList, nn.Parameter | None]:
    """The explainer's head: feature norm, mask head, heads of the finer maps, class offsets."""
    channels = cfg.features.channels
    # checkpoints from before these settings existed read raw features with the reference's init
    norm = _feature_norm(cfg.feature_norm, channels)
    head: nn.Module
    if cfg.head == "mlp":
        head = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.Tanh(), nn.Conv2d(channels, 1, 1))
        for conv in head[0::2]:
            # HF's default init for new heads, as in the reference explainer.
            nn.init.normal_(cast(Tensor, conv.weight), std=0.02)
            nn.init.zeros_(cast(Tensor, conv.bias))
        last = head[-1]
    else:
        head = last = nn.Conv2d(channels, 1, 1)
    if cfg.mask_prior is not None:
        _prior_init(cast(nn.Conv2d, last), cfg.mask_prior)
    # finer feature maps each add their own logits, upsampled coarse to fine, for a finer mask
    fine_heads = nn.ModuleList()
    for fine in cfg.features.fine:
        fine_head = nn.Sequential(
            _feature_norm(cfg.feature_norm, fine.channels), nn.Conv2d(fine.channels, 1, 1)
        )
        _prior_init(cast(nn.Conv2d, fine_head[-1]), None)
        fine_heads.append(fine_head)
    classes = cfg.num_classes
    # the per-class scale is 1 + CLASS_GAIN * class_offset: zero at first (the class-blind explainer),
    # and the gain lets it move at the backbone's small lr (without it, 2e-4 x 250 steps moved the
    # scales by 1% and the masks did not depend on the class)
    class_offset = nn.Parameter(torch.zeros(classes, channels)) if classes else None
    return norm, head, fine_heads, class_offset


def _scaled_by_class(grid: Tensor, class_offset: Tensor, target: Any) -> Tensor:
    """Features scaled channel-wise by the explained class's learned gain."""
    classes = class_offset.shape[0]
    if target is None:
        raise ValueError(
            f"`target` is needed: this explainer makes a mask per class ({classes} classes)"
        )
    target = format_target(target, grid.shape[0], classes).to(grid.device)
    return grid * (1 + CLASS_GAIN * class_offset[target])[:, :, None, None]


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
        config (ExplainerCfg or dict): how features are read and the head is built (made by
            :meth:`from_model`; a dict is read as ``config.json``).

    Example::

        >>> explainer = Explainer.from_model(model)          # timm model: copy of its backbone
        >>> mask = explainer(x)                               # (B, 1, H, W) in [0, 1]
        >>> explainer.save("ckpt/"); Explainer.load("ckpt/", model)
        >>> per_class = Explainer.from_model(model, num_classes=10)
        >>> mask = per_class(x, target=torch.tensor([3]))
    """

    def __init__(self, backbone: nn.Module, config: ExplainerCfg | dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.cfg = config if isinstance(config, ExplainerCfg) else ExplainerCfg.from_json(config)
        self.norm, self.head, self.fine_heads, self.class_offset = _mask_head(self.cfg)
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
        check_explainer_options(
            head=head,
            feature_norm=feature_norm,
            mask_prior=mask_prior,
            num_classes=num_classes,
            fine_layers=fine_layers,
        )
        input_size = _input_size(model, input_size)
        norm = check_normalization(normalization) if normalization is not None else None
        net, source = _backbone(model, backbone, dict(backbone_kwargs or {}), feature_layer)
        probe = torch.zeros(1, *input_size)
        features, raw = _probe_features(net, probe, probe_args, feature_layer, num_prefix_tokens)
        grid = _feature_grid(raw, probe.shape[-2:], features).shape
        features = replace(features, channels=int(grid[1]))
        mask_size = (int(grid[-2]), int(grid[-1]))
        if multi_stride or fine_layers is not None:
            net_args = probe_args if features.access == "hook" else ()
            fine = _fine_features(net, features, probe, net_args, fine_layers, mask_size)
            features, mask_size = replace(features, fine=fine), fine[-1].size
        cfg = ExplainerCfg(
            backbone=source,
            features=features,
            head=head or ("mlp" if features.layout == "tokens" else "conv"),
            input_size=input_size,
            mask_size=mask_size,
            model=_model_record(model),
            normalization=norm or normalization_of(model),
            seed=seed,
            num_classes=num_classes,
            feature_norm=feature_norm,
            mask_prior=None if mask_prior is None else float(mask_prior),
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(net, cfg)

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
        return _read_features(self.backbone, self.cfg.features, x, *additional_forward_args)

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
        grid = self.norm(_feature_grid(raw, image_size, self.cfg.features))
        if self.class_offset is not None:
            grid = _scaled_by_class(grid, self.class_offset, target)
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
        return self.cfg.normalization

    # -- checkpoints --------------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """The checkpoint's ``config.json`` object: a copy (record through :meth:`record` and
        :meth:`record_finetuning`; the settings themselves are :attr:`cfg`)."""
        return self.cfg.to_json()

    @property
    def input_size(self) -> tuple[int, ...]:
        """(channels, height, width) of the images the explainer was made for."""
        return self.cfg.input_size

    @property
    def pretrained(self) -> bool:
        """Whether the explainer was pretrained (its config records the training)."""
        return bool(self.cfg.training)

    @property
    def fresh_head_channels(self) -> int | None:
        """For a head never pretrained that starts at its prior, the channels it reads; else ``None``."""
        if self.pretrained or self.cfg.mask_prior is None:
            return None
        return self.cfg.features.channels

    def record(self, **facts: Any) -> None:
        """Records facts about how the checkpoint was made (``training``, ``command``) in its config."""
        unknown = sorted(set(facts) - {"training", "command"})
        if unknown:
            raise ValueError(
                f"unknown checkpoint records {unknown}; expected 'training' or 'command'"
            )
        self.cfg = replace(self.cfg, **copy.deepcopy(facts))

    @property
    def finetuning(self) -> FinetuningCfg:
        """The per-image finetuning recorded with this explainer (``LTX`` uses it unless told otherwise)."""
        return self.cfg.finetuning

    def record_finetuning(self, **settings: Any) -> None:
        """Records :class:`FinetuningCfg` settings over the recorded ones (validated; ``None``: kept)."""
        self.cfg = replace(self.cfg, finetuning=self.cfg.finetuning.over(**settings))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes ``path/explainer.safetensors`` and ``path/config.json``."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        save_file(
            state, os.path.join(path, WEIGHTS_NAME), metadata={"format": "captum_ltx.Explainer"}
        )
        with open(os.path.join(path, CONFIG_NAME), "w") as f:
            json.dump(self.cfg.to_json(), f, indent=2, sort_keys=True)

    @staticmethod
    def read_config(path: str | os.PathLike[str]) -> ExplainerCfg:
        """The settings of a checkpoint folder, validated."""
        return ExplainerCfg.read(path)

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
        config = cls.read_config(path)
        transferred = (
            model is not None
            and transfer
            and config.model["fingerprint"] != architecture_fingerprint(model)
        )
        if model is not None and not transferred:
            _check_same_model(path, config, model, transfer_hint=not transfer)
        if transferred:
            config = _transferred_config(path, config, cast(nn.Module, model))
            config = replace(config, backbone=_rebuilt_backbone_source(path, config))
        explainer = cls(_rebuilt_backbone(path, config, model), config)
        _load_weights(explainer, path)
        return explainer


def _rebuilt_backbone(path: Any, config: ExplainerCfg, model: nn.Module | None) -> nn.Module:
    source = config.backbone
    if source.source == "timm":
        import timm

        return timm.create_model(
            cast(str, source.name), **{"num_classes": 0, **(source.kwargs or {})}
        )
    if model is None:
        raise ValueError(
            f"`model` is needed to load {str(path)!r}: its backbone is a copy of the explained model"
        )
    net = _detached_copy(model)
    if config.features.access == "forward_features" and hasattr(net, "reset_classifier"):
        cast(Any, net).reset_classifier(0)
    return net


def _load_weights(explainer: Explainer, path: Any) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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


def _check_same_model(
    path: Any, config: ExplainerCfg, model: nn.Module, transfer_hint: bool
) -> None:
    expected, actual = config.model["fingerprint"], architecture_fingerprint(model)
    if expected != actual:
        raise ValueError(
            f"`path` {str(path)!r} holds an explainer for a {config.model['class']} with architecture "
            f"fingerprint {expected}, but the explained model is a {type(model).__qualname__} with "
            f"fingerprint {actual}"
            + (
                "; to explain this model with it anyway, pass transfer=True"
                if transfer_hint
                else ""
            )
        )
    # checkpoints from before the layout was recorded are checked on their weights' shapes alone
    expected_layout, actual_layout = config.model.get("layout"), layout_fingerprint(model)
    if expected_layout is not None and expected_layout != actual_layout:
        raise ValueError(
            f"`path` {str(path)!r} holds an explainer for a {config.model['class']} whose weights fit the "
            f"explained model but whose layers differ in kernel, stride, padding or dilation (layout "
            f"fingerprint {expected_layout}, the model's {actual_layout})"
        )


def _transferred_config(path: Any, config: ExplainerCfg, model: nn.Module) -> ExplainerCfg:
    """The config of a checkpoint made for another model, now recorded for ``model``."""
    theirs, ours = config.normalization, normalization_of(model)
    if theirs is not None and ours is not None and ours != theirs:
        raise ValueError(
            f"`path` {str(path)!r}: transfer needs the models to take the same normalisation; the explainer's "
            f"is {[list(v) for v in theirs]}, the explained model's {[list(v) for v in ours]}"
        )
    if theirs is not None and ours is None:
        warn_user(
            f"transfer of {str(path)!r}: the explained model records no normalisation; the explainer "
            f"expects {[list(v) for v in theirs]}"
        )
    classes = config.num_classes  # a class-conditioned head has a row per class of the first model
    if classes is not None and classes != getattr(model, "num_classes", classes):
        raise ValueError(
            f"`path` {str(path)!r}: its explainer reads the class ({classes} classes); the explained model has {model.num_classes}"
        )
    return replace(config, model=_model_record(model), transfer_from=config.model)


def _rebuilt_backbone_source(path: Any, config: ExplainerCfg) -> BackboneCfg:
    """A copied backbone as the timm model it copied (its weights are in the checkpoint)."""
    source, made_for = config.backbone, cast(dict[str, Any], config.transfer_from)
    if source.source != "copy":
        return source
    if "architecture" not in made_for:
        raise ValueError(
            f"`path` {str(path)!r}: its backbone copies a {made_for['class']} whose timm architecture is not recorded, so it "
            "cannot be rebuilt to explain another model; re-make the checkpoint with a timm model"
        )
    # a hooked backbone is the whole model, classifier included
    keeps_classifier = config.features.access != "forward_features"
    kwargs = {"num_classes": made_for["num_classes"]} if keeps_classifier else {}
    return BackboneCfg("timm", made_for["architecture"], kwargs)
