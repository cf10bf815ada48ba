"""The shared work of every map-producing attribution: checks, targets, eval mode, upsampling, output."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor

from ._maps import FLAT_MAP_HINT, min_max, warn_if_flat
from ._model import eval_mode, num_classes_of
from ._validation import (
    as_input_tuple,
    check_images,
    check_positive_int,
    format_baseline,
    format_forward_args,
    format_target,
    select_rows,
)
from ._vit import is_vit

FAMILIES = ("cnn", "vit")


def model_family(model: Any) -> str:
    """``"vit"`` for timm-style Vision Transformers, else ``"cnn"``."""
    return "vit" if is_vit(model) else "cnn"


def single_image_input(inputs: Any, method: str) -> tuple[Tensor, bool]:
    tensors, is_tuple = as_input_tuple(inputs, method=method)
    if len(tensors) != 1:
        raise ValueError(
            f"`inputs`: {method} explains one image tensor, got a tuple of {len(tensors)}; pass the model's other "
            "inputs through `additional_forward_args`"
        )
    check_images(tensors[0])
    return tensors[0], is_tuple


class MapAttribution(GradientAttribution):
    r"""Base class of methods that explain an image by one map, returned over the input's channels.

    Subclasses set ``families`` (the model families they support) and implement :meth:`_maps`, which
    gives a low-resolution (b, 1, h, w) map for a chunk of images; one with options of its own per call
    (LTX's ``finetune_steps``) checks them in :meth:`_call_options`. This class validates inputs and
    targets, runs the model in eval mode with gradients enabled (also under a caller's ``no_grad``),
    explains images one at a time unless ``batched`` (so instances never interact), upsamples, min-max
    normalises each map if ``normalize`` and repeats it over channels.
    """

    families: tuple[str, ...] = FAMILIES
    batched = False
    name = "Map"

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        *,
        normalize: bool = True,
        internal_batch_size: int = 64,
    ) -> None:
        if not callable(forward_func):
            raise TypeError(f"`forward_func` must be callable, got {type(forward_func).__name__}")
        GradientAttribution.__init__(self, forward_func)
        self.family = model_family(forward_func)
        if self.family not in self.families:
            raise ValueError(
                f"{self.get_name()} supports {' and '.join(self.families)} models; this model is a {self.family}"
            )
        self.normalize = bool(normalize)
        self.internal_batch_size = check_positive_int(internal_batch_size, "internal_batch_size")

    @classmethod
    def get_name(cls) -> str:
        return cls.name

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    @property
    def upsample_mode(self) -> str:
        return "bilinear" if self.family == "vit" else "bicubic"

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: Any = None,
        baselines: Any = None,
        additional_forward_args: Any = None,
        **options: Any,
    ) -> Tensor | tuple[Tensor, ...]:
        r"""Explains each image by a map repeated over its channels.

        Args:
            inputs (Tensor or tuple): images (B, C, H, W) as the model takes them, or a 1-tuple of them.
            target (int, list, Tensor or None): class per image in any Captum form; ``None`` explains the
                model's prediction.
            baselines (scalar or Tensor, optional): the reference image of path methods (default 0, the
                normalised zero image, as in the reference code); for LTX what fills removed pixels
                (default black in pixel space; given, it replaces the objective's blur or mix);
                ignored by the others.
            additional_forward_args (Any, optional): further model arguments, after the images.
            options: the method's own per-call options, if it has any (LTX: ``finetune_steps``).

        Returns:
            Tensor (or 1-tuple) of the inputs' shape; in [0, 1] when ``normalize``.
        """
        x, is_tuple = single_image_input(inputs, self.get_name())
        call = self._call_options(x, baselines, **options)
        args = format_forward_args(additional_forward_args)
        batch = x.shape[0]
        with eval_mode(self.forward_func), torch.enable_grad():
            num_classes, predicted = num_classes_of(self.forward_func, x, args)
            targets = format_target(target, batch, num_classes, predicted).to(x.device)
            fill = format_baseline(baselines, x, self._default_baseline(x)).expand_as(x)
            if self.batched:
                maps = self._maps(x, targets, fill, args, **call)
            else:
                maps = torch.cat(
                    [
                        self._maps(
                            x[i : i + 1],
                            targets[i : i + 1],
                            fill[i : i + 1],
                            select_rows(args, slice(i, i + 1), batch),
                            **call,
                        )
                        for i in range(batch)
                    ]
                )
        maps = maps.detach()
        if maps.dtype not in (torch.float32, torch.float64):  # interpolation wants full precision
            maps = maps.float()
        self._warn_if_uninformative(maps)
        if maps.shape[-2:] != x.shape[-2:]:
            maps = F.interpolate(
                maps, size=x.shape[-2:], mode=self.upsample_mode, align_corners=False
            )
        if self.normalize:
            maps = min_max(maps)
        attributions = maps.to(x.dtype).expand_as(x).contiguous()
        return (attributions,) if is_tuple else attributions

    def _warn_if_uninformative(self, maps: Tensor) -> Tensor:
        """Warns when a map (B, 1, h, w), before normalisation, cannot rank pixels; returns which
        maps are flat."""
        return warn_if_flat(maps, self.get_name(), self._flat_map_hint())

    def _flat_map_hint(self) -> str:
        """What a flat map of this method suggests."""
        return FLAT_MAP_HINT

    def _call_options(self, x: Tensor, baselines: Any, **options: Any) -> dict[str, Any]:
        """Checks a call's own options (none here) and returns what :meth:`_maps` takes of them."""
        if options:
            raise TypeError(
                f"{self.get_name()}.attribute() got unexpected arguments {sorted(options)}"
            )
        return {}

    def _default_baseline(self, x: Tensor) -> Tensor:
        """What fills ``baselines`` when the caller gives none: the normalised zero image."""
        return torch.zeros((), device=x.device, dtype=x.dtype)

    def _maps(self, x: Tensor, target: Tensor, baseline: Tensor, args: tuple[Any, ...]) -> Tensor:
        raise NotImplementedError
