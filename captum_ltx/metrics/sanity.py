"""Sanity checks that catch maps which ignore the model (Adebayo et al. 2018) or the class."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn

from .._base import model_family
from .._cnn import last_stage, resolve_layer
from .._maps import to_map


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation between paired maps, per image (B,). Ties are ranked in pixel order."""

    def ranks(t: Tensor) -> Tensor:
        flat = to_map(t.detach()).flatten(1).float()
        order = torch.argsort(flat, dim=1, stable=True)
        r = torch.empty_like(flat)
        r.scatter_(
            1,
            order,
            torch.arange(flat.shape[1], dtype=flat.dtype, device=flat.device).expand_as(flat),
        )
        return r - r.mean(dim=1, keepdim=True)

    ra, rb = ranks(a), ranks(b)
    return (ra * rb).sum(dim=1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)


def top_layers(model: nn.Module, example: Tensor) -> list[nn.Module]:
    """The classifier and the last feature stage (CNN) or the last block (ViT)."""
    head = cast(Any, model).get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    if model_family(model) == "vit":
        return [head, cast(nn.Sequential, model.blocks)[-1]]
    return [head, resolve_layer(model, last_stage(model, example))]


def randomized_copy(model: nn.Module, example: Tensor, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose top layers (see :func:`top_layers`) are re-initialised."""
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in top_layers(clone, example):
            for module in layer.modules():
                if hasattr(module, "reset_parameters"):
                    cast(Any, module).reset_parameters()
    return clone.eval()


def parameter_randomisation(
    method_factory: Callable[[nn.Module], Any],
    model: nn.Module,
    inputs: Tensor,
    target: Any,
    *,
    seed: int = 0,
    randomized: nn.Module | None = None,
) -> Tensor:
    """Model-parameter randomisation test: Spearman correlation between each image's map for the model
    and for a copy with its top layers re-initialised. A map that ignores the model scores 1: **lower
    is better** (Adebayo et al. 2018).

    Args:
        method_factory: builds the attribution method for a model, e.g. ``lambda m: GradCAM(m)``.
        randomized (nn.Module, optional): the randomised model, to reuse one across calls.
    """
    randomized = randomized if randomized is not None else randomized_copy(model, inputs[:1], seed)
    original = method_factory(model).attribute(inputs, target=target)
    scrambled = method_factory(randomized).attribute(inputs, target=target)
    return spearman(original, scrambled)


def class_sensitivity(method: Any, inputs: Tensor, target: Any, other_target: Any) -> Tensor:
    """Spearman correlation between each image's maps for two different classes: a map that ignores the
    class scores 1, so **lower is better**."""
    return spearman(
        method.attribute(inputs, target=target), method.attribute(inputs, target=other_target)
    )
