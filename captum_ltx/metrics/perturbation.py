"""Positive / negative perturbation AUC in the protocol of Chefer et al., as used by LTX, IIA and DIX."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .._maps import to_map
from .._model import black_in_input_space, eval_mode, normalization_of
from .._validation import (
    check_choice,
    check_images,
    format_baseline,
    format_forward_args,
    format_target,
    repeat_rows,
    select_rows,
)

PERTURBATION_FRACTIONS = tuple(i / 10 for i in range(10))


def perturbation_auc(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    maps: Tensor,
    target: Any,
    *,
    order: str = "positive",
    score: str = "accuracy",
    baseline: Any = None,
    normalization: Any = None,
    additional_forward_args: Any = None,
    batch_size: int = 64,
    return_curves: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Area under the curve of the model's score as the most (or least) relevant pixels are removed.

    At each fraction 0, 0.1, ..., 0.9 the top-ranked pixels of ``maps`` are replaced by ``baseline`` in
    every channel; the score is top-1 correctness for ``target`` (``score="accuracy"``) or its softmax
    probability (``"probability"``, the papers' deletion / insertion). The AUC uses the trapezoid rule
    on x = 0 ... 0.9 and is multiplied by 100, so it lies in [0, 90].

    ``order="positive"`` removes the most relevant pixels first: **lower is better**.
    ``order="negative"`` removes the least relevant first: **higher is better**.

    Args:
        forward_func: the model.
        inputs (Tensor): images (B, C, H, W), as the model takes them.
        maps (Tensor): (B, H, W) maps or attributions of the inputs' shape (see ``captum_ltx.to_map``).
        target: class per image in any Captum form (``None``: the model's prediction).
        baseline: fill value of removed pixels; ``None`` is black in pixel space, i.e. the normalised
            value of 0 when the normalisation is known (``normalization`` or the model's timm
            ``pretrained_cfg``), else 0.
        batch_size (int): perturbed images per forward pass.
        return_curves (bool): also return the (B, 10) curves.

    Returns:
        Tensor of shape (B,), or ``(auc, curves)``.
    """
    check_images(inputs)
    check_choice(order, "order", ("positive", "negative"))
    check_choice(score, "score", ("accuracy", "probability"))
    saliency = to_map(maps.detach()).to(inputs.device)
    b, _, h, w = inputs.shape
    if saliency.shape != (b, h, w):
        raise ValueError(f"`maps` must give one {h}x{w} map per image, got shape {tuple(maps.shape)}")
    args = format_forward_args(additional_forward_args)
    norm = normalization if normalization is not None else normalization_of(forward_func)
    fill = format_baseline(baseline, inputs, black_in_input_space(norm, inputs))

    flat = saliency.reshape(b, -1).float()
    ranking = torch.argsort(flat if order == "positive" else -flat, dim=1, descending=True, stable=True)
    rank = torch.empty_like(ranking)
    rank.scatter_(1, ranking, torch.arange(h * w, device=ranking.device).expand(b, -1))
    removed = torch.tensor([round(f * h * w) for f in PERTURBATION_FRACTIONS], device=inputs.device)
    keep = (rank.view(b, 1, h * w) >= removed.view(1, -1, 1)).view(b, len(removed), 1, h, w)

    steps = len(removed)
    with eval_mode(forward_func), torch.no_grad():
        clean = forward_func(inputs, *args)
        t = format_target(target, b, clean.shape[1], clean.argmax(dim=1)).to(inputs.device)
        perturbed = torch.where(keep, inputs.unsqueeze(1), fill.unsqueeze(1) if fill.dim() == 4 else fill)
        perturbed = perturbed.reshape(b * steps, *inputs.shape[1:])
        repeated_t = t.repeat_interleave(steps)
        repeated_args = repeat_rows(args, steps, b)
        values = []
        for start in range(0, b * steps, batch_size):
            chunk = slice(start, start + batch_size)
            logits = forward_func(perturbed[chunk], *select_rows(repeated_args, chunk, b * steps))
            if score == "accuracy":
                values.append((logits.argmax(dim=1) == repeated_t[chunk]).float())
            else:
                values.append(logits.softmax(dim=1).gather(1, repeated_t[chunk, None])[:, 0].float())
    curves = torch.cat(values).view(b, steps)
    auc = torch.trapezoid(curves, dx=0.1, dim=1) * 100
    return (auc, curves) if return_curves else auc
