"""A registry of every attribution method the benchmarks compare, created by name.

Example::

    >>> from captum_ltx import methods
    >>> methods.available("vit")
    >>> gradcam = methods.create("gradcam", model)
    >>> attr = gradcam.attribute(images, target=labels)
    >>> saliency = captum_ltx.to_map(attr)      # (B, H, W), as the benchmarks read every method
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from captum.attr import Attribution

from ._base import model_family
from ._registry import Registry

__all__ = ["MethodSpec", "available", "create", "model_family", "register", "spec", "split_label"]


@dataclass(frozen=True)
class MethodSpec:
    """What the registry knows of a method: how to build it and which model families it supports."""

    name: str
    build: Callable[..., Attribution]
    families: tuple[str, ...]
    summary: str


METHODS: Registry[MethodSpec] = Registry("method")


def register(name: str, families: tuple[str, ...], summary: str) -> Callable:
    def add(build: Callable[..., Attribution]) -> Callable[..., Attribution]:
        METHODS.add(name, MethodSpec(name, build, families, summary))
        return build

    return add


def available(family: str | None = None) -> list[str]:
    """Names of the registered methods, all or those supporting ``family`` (``"cnn"`` or ``"vit"``)."""
    if family is not None and family not in ("cnn", "vit"):
        raise ValueError(f"`family` must be 'cnn', 'vit' or None, got {family!r}")
    return [n for n, s in METHODS.items() if family is None or family in s.families]


def split_label(label: str) -> tuple[str, str]:
    """(shown name, registry name) of a method label: ``"gradcam"`` or ``"shown=gradcam"``."""
    shown, _, name = label.partition("=")
    return shown, name or shown


def spec(name: str) -> MethodSpec:
    return METHODS.get(name)


def create(name: str, model: Any, **options: Any) -> Attribution:
    """Creates method ``name`` for ``model``; ``options`` go to its constructor.

    Raises ``ValueError`` for an unknown name, or a method that does not support the model's family.
    """
    entry = spec(name)
    family = model_family(model)
    if family not in entry.families:
        raise ValueError(
            f"method {name!r} supports {' and '.join(entry.families)} models; this model is a {family}"
        )
    return entry.build(model, **options)


BOTH = ("cnn", "vit")


@register(
    "ltx",
    BOTH,
    "LTX: pretrained explainer finetuned per image, mask chosen by the lowest objective",
)
def _ltx(model: Any, explainer: Any = None, **options: Any) -> Attribution:
    from .ltx import LTX

    return LTX(model, explainer, **options)


@register(
    "ltx_pos_auc",
    BOTH,
    "LTX with the reference's mask selection by positive-perturbation AUC (selects by the benchmark's metric)",
)
def _ltx_pos_auc(model: Any, explainer: Any = None, **options: Any) -> Attribution:
    from .ltx import LTX

    return LTX(model, explainer, selection="pos_auc", **options)


@register("pltx", BOTH, "pLTX: one forward of the pretrained explainer")
def _pltx(model: Any, explainer: Any = None, **options: Any) -> Attribution:
    from .ltx import LTX

    if "finetune_steps" in options:
        raise ValueError(
            "`finetune_steps`: pltx never finetunes (it is one explainer forward); use method 'ltx'"
        )
    return LTX(model, explainer, finetune_steps=0, **options)


@register("ig", BOTH, "Integrated Gradients (Captum), per channel")
def _ig(
    model: Any, n_steps: int = 50, internal_batch_size: int | None = None, **options: Any
) -> Attribution:
    from ._captum import IntegratedGradients

    defaults = {"n_steps": n_steps, "internal_batch_size": internal_batch_size}
    return IntegratedGradients(model, attribute_defaults=defaults, **options)


@register("saliency", BOTH, "absolute input gradient (Captum Saliency), per channel")
def _saliency(model: Any, **options: Any) -> Attribution:
    from ._captum import Saliency

    return Saliency(model, **options)


@register("input_x_gradient", BOTH, "input times gradient (Captum), per channel")
def _input_x_gradient(model: Any, **options: Any) -> Attribution:
    from ._captum import InputXGradient

    return InputXGradient(model, **options)


@register("occlusion", BOTH, "sliding-window occlusion (Captum)")
def _occlusion(model: Any, **options: Any) -> Attribution:
    from ._captum import Occlusion

    return Occlusion(model, **options)


@register(
    "gradcam",
    BOTH,
    "Grad-CAM at the last feature stage (CNN) or the last block's norm1 tokens (ViT)",
)
def _gradcam(model: Any, **options: Any) -> Attribution:
    from .gradcam import GradCAM

    return GradCAM(model, **options)


@register("iia", BOTH, "Iterated Integrated Attributions, IIA2 by default (variant=3 for IIA3)")
def _iia(model: Any, **options: Any) -> Attribution:
    from .iia import IIA

    return IIA(model, **options)


@register("iia3", BOTH, "Iterated Integrated Attributions, IIA3")
def _iia3(model: Any, **options: Any) -> Attribution:
    from .iia import IIA

    return IIA(model, variant=3, **options)


@register("sobol", BOTH, "Sobol attribution: total-order Sobol indices of a low-resolution mask")
def _sobol(model: Any, **options: Any) -> Attribution:
    from .sobol import Sobol

    return Sobol(model, **options)


@register("dix", BOTH, "Deep Integrated Explanations")
def _dix(model: Any, **options: Any) -> Attribution:
    from .dix import DIX

    return DIX(model, **options)


@register("rollout", ("vit",), "attention rollout (Abnar & Zuidema 2020)")
def _rollout(model: Any, **options: Any) -> Attribution:
    from .rollout import AttentionRollout

    return AttentionRollout(model, **options)


@register("gae", ("vit",), "gradient-weighted attention rollout (Chefer et al. 2021)")
def _gae(model: Any, **options: Any) -> Attribution:
    from .rollout import GradientAttentionRollout

    return GradientAttentionRollout(model, **options)


@register("random", BOTH, "a random map: the floor every method must beat")
def _random(model: Any, **options: Any) -> Attribution:
    from .random_map import RandomMap

    return RandomMap(model, **options)
