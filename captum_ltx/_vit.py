"""Reading and replacing the attention probabilities of timm Vision Transformers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import Tensor, nn

from ._hooks import forward_hooks
from ._model import target_score
from ._validation import repeat_rows


def is_vit(model: object) -> bool:
    """True for timm-style ViTs: a patch embedding, blocks whose attention has ``attn_drop``."""
    blocks = getattr(model, "blocks", None)
    return (
        isinstance(model, nn.Module)
        and hasattr(model, "patch_embed")
        and isinstance(blocks, nn.Sequential)
        and len(blocks) > 0
        and all(hasattr(getattr(b, "attn", None), "attn_drop") for b in blocks)
    )


def num_prefix_tokens(model: nn.Module) -> int:
    """Class, distillation and register tokens in front of the patch tokens."""
    return int(getattr(model, "num_prefix_tokens", 1))


def token_grid(model: nn.Module, image_size: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) grid of patch tokens for an image of ``image_size``, read from the patch embedding."""
    embed: Any = model.patch_embed
    if hasattr(embed, "dynamic_feat_size") and getattr(embed, "dynamic_img_size", False):
        return cast(tuple[int, int], tuple(embed.dynamic_feat_size(image_size)))
    return cast(tuple[int, int], tuple(embed.grid_size))


class AttentionProbe:
    """Records each block's post-softmax attention probabilities (B, heads, N, N) during a forward.

    ``replace`` maps block indices to tensors used *instead of* that block's probabilities (as given, not
    renormalised). Recorded tensors stay in the autograd graph, so gradients with respect to them come
    from ``torch.autograd.grad(score, probe.attentions)``.
    """

    def __init__(self, replace: dict[int, Tensor] | None = None) -> None:
        self.replace = dict(replace or {})
        self.attentions: list[Tensor] = []


@contextlib.contextmanager
def probe_attention(model: nn.Module, probe: AttentionProbe) -> Iterator[AttentionProbe]:
    """Switches fused attention off (so that probabilities exist) and hooks every block, then restores."""
    blocks: list[Any] = list(cast(nn.Sequential, model.blocks))
    fused = [getattr(b.attn, "fused_attn", None) for b in blocks]

    def hook(index: int):
        def record(_module: nn.Module, _inputs: object, output: Tensor) -> Tensor:
            value = probe.replace.get(index, output)
            probe.attentions.append(value)
            return value

        return record

    try:
        for i, block in enumerate(blocks):
            if fused[i] is not None:
                block.attn.fused_attn = False
        with forward_hooks((b.attn.attn_drop, hook(i)) for i, b in enumerate(blocks)):
            yield probe
    finally:
        for block, flag in zip(blocks, fused):
            if flag is not None:
                block.attn.fused_attn = flag


def rollout(per_block: list[Tensor], add_identity: bool = True) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): the product of row-normalised ``A_b + I`` over blocks.

    Args:
        per_block: one (B, N, N) head-fused matrix per block, first block first.
    Returns:
        (B, N, N) joint attention.
    """
    joint = None
    for a in per_block:
        if add_identity:
            a = a + torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        joint = a if joint is None else a @ joint
    assert joint is not None
    return joint


def output_row_map(joint: Tensor, model: nn.Module, image_size: tuple[int, int]) -> Tensor:
    """The row of ``joint`` (B, N, N) that the classifier reads, over the patch tokens, as a (B, 1, h, w)
    map: the class token's row, or for a ViT that pools its patch tokens (timm ``global_pool="avg"``)
    the average of their rows."""
    h, w = token_grid(model, image_size)
    prefix = num_prefix_tokens(model)
    pooling = getattr(model, "global_pool", "token")
    if pooling == "token":
        row = joint[:, 0, prefix:]
    elif pooling == "avg":
        # timm averages the prefix tokens too when asked to (pool_include_prefix)
        first = 0 if getattr(model, "pool_include_prefix", False) else prefix
        row = joint[:, first:, prefix:].mean(dim=1)
    else:
        raise ValueError(
            f"attention maps read the class token (global_pool='token') or the average of the patch tokens "
            f"(global_pool='avg'); this ViT has global_pool={pooling!r}"
        )
    return row.reshape(row.shape[0], 1, h, w)


def attention_relevance(
    model: nn.Module,
    images: Tensor,
    replace: dict[int, Tensor],
    target: Tensor,
    args: tuple[Any, ...],
    chunk: int,
) -> list[Tensor]:
    """Per block, the mean over points of ``mean_heads ReLU(dy/dA * A)``: the integrand of gradient rollout.

    ``images`` (P, C, H, W) are the points' inputs and ``replace`` maps blocks to (P, heads, N, N)
    probabilities that stand in for theirs; ``target`` is the class (1,) of the one explained image.
    """
    total: list[Tensor] | None = None
    for start in range(0, images.shape[0], chunk):
        rows = slice(start, start + chunk)
        probe = AttentionProbe(
            {b: p[rows].detach().requires_grad_(True) for b, p in replace.items()}
        )
        with probe_attention(model, probe):
            n = images[rows].shape[0]
            logits = model(images[rows], *repeat_rows(args, n, 1))
        grads = torch.autograd.grad(target_score(logits, target.expand(n)), probe.attentions)
        terms = [
            (g * a).clamp_min(0).mean(dim=1).sum(dim=0, keepdim=True).detach()
            for a, g in zip(probe.attentions, grads)
        ]
        total = terms if total is None else [t + s for t, s in zip(total, terms)]
    assert total is not None
    return [t / images.shape[0] for t in total]


def clean_attention(model: nn.Module, images: Tensor, args: tuple[Any, ...]) -> list[Tensor]:
    """Each block's attention probabilities on ``images``, without gradients."""
    probe = AttentionProbe()
    with torch.no_grad(), probe_attention(model, probe):
        model(images, *args)
    return probe.attentions
