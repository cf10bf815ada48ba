"""Helpers about the explained model: its mode during a call, its normalisation, its fingerprint."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn


@contextlib.contextmanager
def eval_mode(forward_func: Callable[..., Any]) -> Iterator[None]:
    """Runs the body with ``forward_func`` (if a module) in eval mode, then restores every module's flag.

    Explanations of a model in train mode would be random (dropout) and would move BatchNorm running
    statistics, i.e. change the model; so methods explain the eval-mode function and put the flags back.
    """
    if not isinstance(forward_func, nn.Module):
        yield
        return
    flags = [(m, m.training) for m in forward_func.modules()]
    forward_func.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Runs the body with every parameter of ``model`` out of autograd, then restores each flag, so that
    a ``backward()`` through the model (to train something upstream) never writes its ``.grad``."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def normalization_of(model: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Mean and std that ``model`` expects its inputs normalised with, from timm's ``pretrained_cfg``."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("mean") is not None and cfg.get("std") is not None:
        return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    return None


def check_normalization(
    normalization: Any, name: str = "normalization"
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        mean, std = normalization
        mean = tuple(float(v) for v in mean)
        std = tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be a pair (mean, std) of per-channel sequences, got {normalization!r}"
        ) from None
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ValueError(
            f"`{name}` must have equal-length mean and std with std > 0, got {normalization!r}"
        )
    return mean, std


def black_in_input_space(
    normalization: tuple[Sequence[float], Sequence[float]] | None, x: Tensor
) -> Tensor:
    """The value a black pixel (0 in [0, 1] pixel space) takes after the model's normalisation."""
    if normalization is None:
        return torch.zeros((), device=x.device, dtype=x.dtype)
    mean, std = normalization
    if len(mean) not in (1, x.shape[1]):
        raise ValueError(
            f"`normalization` has {len(mean)} channels but the inputs have {x.shape[1]}"
        )
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return -mean_t / std_t


def architecture_fingerprint(model: nn.Module) -> str:
    """A hash of the model's class and the names and shapes of its state, independent of its weights."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        h.update(f"{name}:{tuple(tensor.shape)};".encode())
    return h.hexdigest()[:16]


_LAYOUT_ATTRIBUTES = ("kernel_size", "stride", "padding", "dilation")


def layout_fingerprint(model: nn.Module) -> str:
    """A hash of each module's type and its kernel, stride, padding and dilation: what
    :func:`architecture_fingerprint` cannot see, as two ResNets that differ only in a removed max-pool
    or a dilated stage hold the same weights."""
    h = hashlib.sha256()
    for name, module in model.named_modules():
        attributes = ",".join(
            f"{a}={getattr(module, a)}" for a in _LAYOUT_ATTRIBUTES if hasattr(module, a)
        )
        h.update(f"{name}:{type(module).__qualname__}:{attributes};".encode())
    return h.hexdigest()[:16]


def _floating_dtype(forward_func: Any) -> torch.dtype | None:
    """The dtype of a module's first floating-point parameter, if it has one."""
    if isinstance(forward_func, nn.Module):
        for p in forward_func.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def num_classes_of(
    forward_func: Callable[..., Any], x: Tensor, args: tuple[Any, ...]
) -> tuple[int, Tensor]:
    """Runs ``forward_func`` once without gradients; returns (number of classes, predicted class per image)."""
    with torch.no_grad():
        try:
            logits = forward_func(x, *args)
        except RuntimeError as e:
            weights = _floating_dtype(forward_func)
            if weights is not None and weights != x.dtype:
                raise TypeError(
                    f"`inputs` are {x.dtype} but the model's weights are {weights}: pass "
                    f"`inputs.to({weights})` (or convert the model with `model.to({x.dtype})`)"
                ) from e
            raise ValueError(
                f"`inputs` of shape {tuple(x.shape)} could not be run through the model (wrong channel count or "
                f"size?): {str(e).splitlines()[0]}"
            ) from e
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"`forward_func` must return logits of shape (B, num_classes) for B = {x.shape[0]}, got {shape}"
        )
    return logits.shape[1], logits.argmax(dim=1).cpu()


def target_score(logits: Tensor, target: Tensor) -> Tensor:
    """Sum over the batch of each row's target logit: its gradient is each row's own gradient."""
    return logits.gather(1, target.view(-1, 1)).sum()
