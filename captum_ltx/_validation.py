"""Argument checks shared by every attribution method.

Each check raises ``TypeError`` or ``ValueError`` naming the argument and what was expected, so a
user learns from the message what to change.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def as_input_tuple(inputs: Any, *, method: str) -> tuple[tuple[Tensor, ...], bool]:
    """Returns ``(inputs as a tuple, whether the caller passed a tuple)``."""
    if isinstance(inputs, Tensor):
        return (inputs,), False
    if (
        isinstance(inputs, (tuple, list))
        and all(isinstance(t, Tensor) for t in inputs)
        and len(inputs) > 0
    ):
        return tuple(inputs), True
    raise TypeError(
        f"{method}: `inputs` must be a tensor of images (B, C, H, W) or a tuple of such tensors, "
        f"got {type(inputs).__name__}"
    )


def check_images(x: Tensor, *, name: str = "inputs", channels: int | None = None) -> None:
    """Checks that ``x`` is a finite floating batch of images (B, C, H, W) with B > 0."""
    if not torch.is_floating_point(x):
        raise TypeError(
            f"`{name}` must be a floating-point tensor (e.g. float32), got dtype {x.dtype}"
        )
    if x.dim() != 4:
        raise ValueError(
            f"`{name}` must have shape (B, C, H, W), got {x.dim()} dimensions {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(
            f"`{name}` is an empty batch: shape {tuple(x.shape)}; expected at least one image"
        )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"`{name}` must have {channels} channels (dim 1), got {x.shape[1]} in shape {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise ValueError(f"`{name}` contains NaN or Inf values")


def format_target(
    target: Any, batch_size: int, num_classes: int, predicted: Tensor | None = None
) -> Tensor:
    """Turns every Captum target form for a classifier into a LongTensor of shape (batch_size,).

    ``None`` selects ``predicted`` (the model's own top class). Tuples index outputs with more than two
    dimensions, which image classifiers do not have, so they are refused.
    """
    if target is None:
        if predicted is None:
            raise ValueError(
                "`target` is None and no model prediction is available to stand in for it"
            )
        return predicted.long()
    if (
        isinstance(target, bool)
        or isinstance(target, tuple)
        or (isinstance(target, list) and any(isinstance(t, tuple) for t in target))
    ):
        raise TypeError(
            "`target` must be an int, a list of ints, a 1-D integer tensor or None; tuple targets index "
            f"outputs with more than 2 dimensions, which a classifier does not have (got {target!r})"
        )
    if isinstance(target, int):
        t = torch.full((batch_size,), target, dtype=torch.long)
    elif isinstance(target, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in target):
            raise TypeError(f"`target` as a list must hold ints, got {target!r}")
        t = torch.tensor(target, dtype=torch.long)
    elif isinstance(target, Tensor):
        if torch.is_floating_point(target) or target.dtype == torch.bool or target.is_complex():
            raise TypeError(f"`target` must be an integer tensor, got dtype {target.dtype}")
        if target.dim() > 1:
            raise ValueError(f"`target` tensor must be 0-D or 1-D, got shape {tuple(target.shape)}")
        t = target.detach().reshape(-1).long().cpu()
        if t.numel() == 1:
            t = t.expand(batch_size)
    else:
        raise TypeError(
            f"`target` must be an int, a list of ints, a 1-D integer tensor or None, got {type(target).__name__}"
        )
    if t.numel() != batch_size:
        raise ValueError(f"`target` has {t.numel()} entries but the batch has {batch_size} images")
    if ((t < 0) | (t >= num_classes)).any():
        raise ValueError(f"`target` values must lie in [0, {num_classes}), got {t.tolist()}")
    return t.clone()


def format_baseline(baselines: Any, x: Tensor, default: Tensor) -> Tensor:
    """Returns the fill value for removed pixels, broadcastable to ``x``.

    Accepts None (``default``), a number, a tensor broadcastable to ``x`` (per channel (C,), one image
    (1, C, H, W) or a whole batch) or a 1-tuple of those.
    """
    if isinstance(baselines, tuple):
        if len(baselines) != 1:
            raise ValueError(
                f"`baselines` as a tuple must hold one entry per input (1), got {len(baselines)}"
            )
        baselines = baselines[0]
    if baselines is None:
        b = default
    elif isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
        b = torch.tensor(float(baselines))
    elif isinstance(baselines, Tensor):
        b = baselines.detach()
        if b.dim() == 1 and b.numel() == x.shape[1]:
            b = b.view(1, -1, 1, 1)
    else:
        raise TypeError(
            f"`baselines` must be None, a number or a tensor, got {type(baselines).__name__}"
        )
    b = b.to(device=x.device, dtype=x.dtype)
    try:
        torch.broadcast_shapes(b.shape, x.shape)
    except RuntimeError:
        raise ValueError(
            f"`baselines` of shape {tuple(b.shape)} does not broadcast to the inputs' shape {tuple(x.shape)}"
        ) from None
    if not torch.isfinite(b).all():
        raise ValueError("`baselines` contains NaN or Inf values")
    return b


def select_rows(args: Sequence[Any], index: slice, batch_size: int) -> tuple[Any, ...]:
    """Slices the per-example entries (tensors whose dim 0 is the batch) of additional forward args."""
    return tuple(
        a[index] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == batch_size else a
        for a in args
    )


def repeat_rows(args: Sequence[Any], repeats: int, batch_size: int) -> tuple[Any, ...]:
    """Repeats each per-example entry of additional forward args ``repeats`` times, example by example."""
    return tuple(
        a.repeat_interleave(repeats, dim=0)
        if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == batch_size
        else a
        for a in args
    )


def format_forward_args(additional_forward_args: Any) -> tuple[Any, ...]:
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}")
    return value


def check_positive_int(value: Any, name: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
    return value


def check_nonnegative_number(value: Any, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
    return float(value)


def warn_user(message: str) -> None:
    """``warnings.warn`` pointing at the first caller outside captum-ltx and Captum: the user's line."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
        ("captum_ltx", "captum.")
    ):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level + 1)
