"""The LTX explainer network: backbone features, a mask head and a sigmoid mask at input resolution."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._cnn import spatial_outputs
from ._model import architecture_fingerprint, check_normalization, layout_fingerprint, normalization_of
from ._validation import format_target

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "explainer.safetensors"
FORMAT_VERSION = 1
HEADS = ("mlp", "conv")
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


def _last_spatial_layer(model: nn.Module, x: Tensor, *args: Any) -> str:
    """Name of the module, last in execution order, whose output is a (B, C, h, w) map with h, w > 1."""
    order = spatial_outputs(model, x, args)
    if not order:
        raise ValueError(
            "could not find a layer with a spatial (B, C, h, w) output in the model; pass `feature_layer` "
            "naming the module whose output the mask head should read"
        )
    return order[-1][0]


def _read_features(net: nn.Module, features: dict[str, Any], x: Tensor, *args: Any) -> Tensor:
    if features["access"] == "forward_features":
        return net.forward_features(x)
    captured: list[Tensor] = []
    layer = net.get_submodule(features["layer"])
    # Registered per call (not once) so that deep copies of an explainer never share a hook.
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        net(x, *args)
    finally:
        handle.remove()
    return captured[-1]


def _feature_grid(raw: Tensor, image_size: Any, features: dict[str, Any]) -> Tensor:
    """Feature map (B, C, h, w) from whatever layout the backbone gives."""
    layout = features["layout"]
    if layout == "NCHW":
        return raw
    if layout == "NHWC":
        return raw.permute(0, 3, 1, 2)
    tokens = raw[:, features["num_prefix_tokens"]:]
    n = tokens.shape[1]
    height, width = image_size
    h = max(1, round((n * height / width) ** 0.5))
    w = n // h
    if h * w != n:
        raise ValueError(f"cannot arrange {n} patch tokens into a grid for an image of size {height}x{width}")
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


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
        if config["head"] == "mlp":
            self.head = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.Tanh(), nn.Conv2d(channels, 1, 1))
            for conv in self.head[0::2]:
                # HF's default init for new heads, as in the reference explainer.
                nn.init.normal_(conv.weight, std=0.02)
                nn.init.zeros_(conv.bias)
        else:
            self.head = nn.Conv2d(channels, 1, 1)
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
    ) -> "Explainer":
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
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be an nn.Module to derive an explainer from, got {type(model).__name__}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"`num_classes` must be a positive int or None, got {num_classes!r}")
        if head is not None and head not in HEADS:
            raise ValueError(f"`head` must be one of {list(HEADS)}, got {head!r}")
        input_size = input_size or (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
        if input_size is None or len(input_size) != 3:
            raise ValueError(f"`input_size` (C, H, W) is needed for a model without timm's pretrained_cfg, got {input_size!r}")
        if normalization is not None:
            normalization = check_normalization(normalization)
        else:
            normalization = normalization_of(model)

        backbone_kwargs = dict(backbone_kwargs or {})
        if backbone is None:
            net, source = _detached_copy(model), {"source": "copy"}
            if feature_layer is None and hasattr(net, "reset_classifier"):
                net.reset_classifier(0)
        elif isinstance(backbone, str):
            import timm

            net = timm.create_model(backbone, num_classes=0, **backbone_kwargs)
            kwargs = {k: v for k, v in backbone_kwargs.items() if k not in ("pretrained", "pretrained_cfg_overlay")}
            source = {"source": "timm", "name": backbone, "kwargs": kwargs}
        elif isinstance(backbone, nn.Module):
            raise TypeError(
                "`backbone` as a module cannot be rebuilt from a checkpoint; pass a timm model name, or None to "
                "copy the explained model"
            )
        else:
            raise TypeError(f"`backbone` must be None or a timm model name, got {type(backbone).__name__}")

        probe = torch.zeros(1, *input_size)
        net.eval()
        if feature_layer is None and hasattr(net, "forward_features"):
            access = {"access": "forward_features", "layer": None}
        else:
            layer = feature_layer or _last_spatial_layer(net, probe, *probe_args)
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
            "normalization": [list(normalization[0]), list(normalization[1])] if normalization else None,
            "model": {"class": type(model).__qualname__, "fingerprint": architecture_fingerprint(model),
                      "layout": layout_fingerprint(model)},
            "training": {},
            "seed": seed,
        }
        if num_classes is not None:
            config["num_classes"] = num_classes
        with torch.no_grad():
            raw = _read_features(net, features, probe, *(probe_args if access["access"] == "hook" else ()))
        if raw.dim() == 3:
            features["layout"] = "tokens"
            features["num_prefix_tokens"] = int(
                num_prefix_tokens if num_prefix_tokens is not None else getattr(net, "num_prefix_tokens", 0)
            )
        elif raw.dim() == 4:
            fmt = getattr(net, "output_fmt", "NCHW")
            features["layout"] = str(getattr(fmt, "value", fmt))
        else:
            raise ValueError(f"backbone features must be tokens (B, N, D) or a map (B, C, h, w), got shape {tuple(raw.shape)}")
        grid = _feature_grid(raw, probe.shape[-2:], features)
        features["channels"] = int(grid.shape[1])
        config["mask_size"] = list(grid.shape[-2:])
        config["head"] = head or ("mlp" if features["layout"] == "tokens" else "conv")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(net, config)

    # -- forward ------------------------------------------------------------------------------------

    def forward(
        self, x: Tensor, *additional_forward_args: Any, target: Tensor | None = None, return_low_res: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Returns the mask (B, 1, H, W) in [0, 1], and with ``return_low_res`` also the (B, 1, h, w) mask.

        ``additional_forward_args`` reach a backbone that is a whole copied model (features read by a
        hook), for models that take more than the image. ``target`` (any Captum class form): needed by
        a class-conditioned explainer, ignored by a class-blind one.
        """
        features = self.config["features"]
        grid = _feature_grid(_read_features(self.backbone, features, x, *additional_forward_args), x.shape[-2:], features)
        if self.class_offset is not None:
            classes = self.class_offset.shape[0]
            if target is None:
                raise ValueError(f"`target` is needed: this explainer makes a mask per class ({classes} classes)")
            target = format_target(target, grid.shape[0], classes).to(grid.device)
            grid = grid * (1 + CLASS_GAIN * self.class_offset[target])[:, :, None, None]
        low_res = torch.sigmoid(self.head(grid))
        mask = F.interpolate(low_res, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return (mask, low_res) if return_low_res else mask

    def train(self, mode: bool = True) -> "Explainer":
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        norm = self.config.get("normalization")
        return (tuple(norm[0]), tuple(norm[1])) if norm else None

    # -- checkpoints --------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes ``path/explainer.safetensors`` and ``path/config.json``."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(path, WEIGHTS_NAME), metadata={"format": "captum_ltx.Explainer"})
        with open(os.path.join(path, CONFIG_NAME), "w") as f:
            json.dump(self.config, f, indent=2, sort_keys=True)

    @staticmethod
    def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
        config_path = os.path.join(path, CONFIG_NAME)
        if not os.path.isdir(path) or not os.path.isfile(config_path):
            raise ValueError(f"`path` {str(path)!r} is not an explainer checkpoint: expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME}")
        try:
            with open(config_path) as f:
                config = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"`path` {str(path)!r}: {CONFIG_NAME} is not valid JSON ({e})") from None
        required = ("format_version", "backbone", "features", "head", "input_size", "model")
        if not isinstance(config, dict) or any(k not in config for k in required):
            raise ValueError(f"`path` {str(path)!r}: {CONFIG_NAME} lacks the keys {list(required)}")
        if config["format_version"] != FORMAT_VERSION:
            raise ValueError(f"`path` {str(path)!r}: format version {config['format_version']} is not supported (expected {FORMAT_VERSION})")
        return config

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: nn.Module | None = None) -> "Explainer":
        """Loads a checkpoint written by :meth:`save`, onto the CPU.

        Args:
            path: the checkpoint folder.
            model (nn.Module, optional): the explained model. Needed when the backbone is a copy of it;
                when given, it must have the architecture the checkpoint was made for.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        config = cls.read_config(path)
        if model is not None:
            expected, actual = config["model"]["fingerprint"], architecture_fingerprint(model)
            if expected != actual:
                raise ValueError(
                    f"`path` {str(path)!r} holds an explainer for a {config['model']['class']} with architecture "
                    f"fingerprint {expected}, but the explained model is a {type(model).__qualname__} with "
                    f"fingerprint {actual}"
                )
            # checkpoints from before the layout was recorded are checked on their weights' shapes alone
            expected_layout, actual_layout = config["model"].get("layout"), layout_fingerprint(model)
            if expected_layout is not None and expected_layout != actual_layout:
                raise ValueError(
                    f"`path` {str(path)!r} holds an explainer for a {config['model']['class']} whose weights fit the "
                    f"explained model but whose layers differ in kernel, stride, padding or dilation (layout "
                    f"fingerprint {expected_layout}, the model's {actual_layout})"
                )
        source = config["backbone"]
        if source["source"] == "copy":
            if model is None:
                raise ValueError(f"`model` is needed to load {str(path)!r}: its backbone is a copy of the explained model")
            net = _detached_copy(model)
            if config["features"]["access"] == "forward_features" and hasattr(net, "reset_classifier"):
                net.reset_classifier(0)
        else:
            import timm

            net = timm.create_model(source["name"], num_classes=0, **source.get("kwargs", {}))
        explainer = cls(net, config)
        try:
            state = load_file(os.path.join(path, WEIGHTS_NAME))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"`path` {str(path)!r}: {WEIGHTS_NAME} is not a readable safetensors file ({e})") from None
        try:
            explainer.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"`path` {str(path)!r}: weights do not fit the explainer ({str(e).splitlines()[0]})") from None
        return explainer
