"""Faithfulness by perturbation: the LTX/IIA protocol's perturbation AUC, RISE deletion / insertion, ADP / PIC.

All functions take the model, images (B, C, H, W) as the model takes them, maps ((B, H, W) or
attributions of the inputs' shape, read through :func:`captum_ltx.to_map`) and targets in any Captum
form, and return one value per image (shape (B,)). Perturbed images go through the model
``batch_size`` at a time, on the inputs' device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._maps import min_max, to_map
from .._model import black_in_input_space, eval_mode, normalization_of
from .._validation import (
    check_choice,
    check_images,
    check_positive_int,
    format_baseline,
    format_forward_args,
    format_target,
    repeat_rows,
    select_rows,
)

PERTURBATION_FRACTIONS = tuple(i / 10 for i in range(10))


class _Setup:
    """The checked inputs shared by every perturbation metric."""

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        inputs: Tensor,
        maps: Tensor,
        target: Any,
        baseline: Any,
        normalization: Any,
        additional_forward_args: Any,
    ) -> None:
        check_images(inputs)
        saliency = to_map(maps.detach()).to(inputs.device).float()
        b, _, h, w = inputs.shape
        if saliency.shape != (b, h, w):
            raise ValueError(
                f"`maps` must give one {h}x{w} map per image, got shape {tuple(maps.shape)}"
            )
        self.forward_func, self.x, self.map = forward_func, inputs, saliency
        self.args = format_forward_args(additional_forward_args)
        norm = normalization if normalization is not None else normalization_of(forward_func)
        self.fill = format_baseline(baseline, inputs, black_in_input_space(norm, inputs)).expand_as(
            inputs
        )
        with eval_mode(forward_func), torch.no_grad():
            clean = forward_func(inputs, *self.args)
        self.target = format_target(target, b, clean.shape[1], clean.argmax(dim=1)).to(
            inputs.device
        )
        self.clean_probability = clean.softmax(dim=1).gather(1, self.target[:, None])[:, 0].float()

    def ranks(self, descending: bool = True) -> Tensor:
        """Rank of each pixel (0 = first removed) in map order; ties keep pixel order."""
        flat = self.map.reshape(self.map.shape[0], -1)
        order = torch.argsort(flat if descending else -flat, dim=1, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(flat.shape[1], device=order.device).expand_as(order))
        return rank

    def scores(
        self, rank: Tensor, counts: list[int], canvas: Tensor, batch_size: int, reveal: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Target probability and correctness (B, S) when, for each count k, the first k ranked pixels
        are replaced by ``canvas`` (or, with ``reveal``, only the first k pixels are kept from the image)."""
        b, _, h, w = self.x.shape
        steps = len(counts)
        k = torch.tensor(counts, device=self.x.device)
        targets = self.target.repeat_interleave(steps)
        args = repeat_rows(self.args, steps, b)
        probability, correct = [], []
        with eval_mode(self.forward_func), torch.no_grad():
            for start in range(0, b * steps, batch_size):
                rows = torch.arange(start, min(start + batch_size, b * steps), device=self.x.device)
                image, step = rows // steps, rows % steps
                from_image = rank[image] < k[step, None] if reveal else rank[image] >= k[step, None]
                perturbed = torch.where(from_image.view(-1, 1, h, w), self.x[image], canvas[image])
                logits = self.forward_func(
                    perturbed, *select_rows(args, slice(start, start + len(rows)), b * steps)
                )
                t = targets[rows]
                probability.append(logits.softmax(dim=1).gather(1, t[:, None])[:, 0].float())
                correct.append((logits.argmax(dim=1) == t).float())
        return torch.cat(probability).view(b, steps), torch.cat(correct).view(b, steps)


def perturbation_curves(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    maps: Tensor,
    target: Any,
    *,
    order: str = "positive",
    baseline: Any = None,
    normalization: Any = None,
    additional_forward_args: Any = None,
    batch_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """The (B, 10) curves behind :func:`perturbation_auc`: target probability and top-1 correctness at
    removed fractions 0, 0.1, ..., 0.9, from one pass over the perturbed images."""
    check_choice(order, "order", ("positive", "negative"))
    check_positive_int(batch_size, "batch_size")
    setup = _Setup(
        forward_func, inputs, maps, target, baseline, normalization, additional_forward_args
    )
    pixels = inputs.shape[-2] * inputs.shape[-1]
    counts = [round(f * pixels) for f in PERTURBATION_FRACTIONS]
    return setup.scores(setup.ranks(descending=order == "positive"), counts, setup.fill, batch_size)


def curve_auc(curves: Tensor) -> Tensor:
    """AUC x 100 of perturbation curves sampled at x = 0, 0.1, ..., 0.9 (trapezoid rule)."""
    return torch.trapezoid(curves, dx=0.1, dim=-1) * 100


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

    The protocol of Chefer et al., used by LTX, IIA and DIX: at each fraction 0, 0.1, ..., 0.9 the
    top-ranked pixels of ``maps`` are replaced by ``baseline`` in every channel; the score is top-1
    correctness for ``target`` (``score="accuracy"``: POS / NEG) or its softmax probability
    (``"probability"``: the papers' deletion with ``order="positive"`` and insertion with
    ``"negative"``). The AUC uses the trapezoid rule on x = 0 ... 0.9 and is multiplied by 100, so it
    lies in [0, 90].

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
    check_choice(score, "score", ("accuracy", "probability"))
    probability, correct = perturbation_curves(
        forward_func,
        inputs,
        maps,
        target,
        order=order,
        baseline=baseline,
        normalization=normalization,
        additional_forward_args=additional_forward_args,
        batch_size=batch_size,
    )
    curves = correct if score == "accuracy" else probability
    auc = curve_auc(curves)
    return (auc, curves) if return_curves else auc


def gaussian_blur(
    x: Tensor, kernel_size: int = 11, sigma: float = 5.0, padding: str = "zeros"
) -> Tensor:
    """Separable Gaussian blur, as RISE makes its insertion canvas (11 px, sigma 5). ``padding``:
    ``"zeros"`` (RISE's) or ``"replicate"`` (borders keep their colour instead of fading to 0)."""
    radius = kernel_size // 2
    t = torch.arange(kernel_size, device=x.device, dtype=x.dtype) - radius
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    check_choice(padding, "padding", ("zeros", "replicate"))
    c = x.shape[1]
    if padding == "replicate":
        x = F.conv2d(
            F.pad(x, (radius, radius, 0, 0), mode="replicate"),
            kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1),
            groups=c,
        )
        return F.conv2d(
            F.pad(x, (0, 0, radius, radius), mode="replicate"),
            kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1),
            groups=c,
        )
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, radius), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(radius, 0), groups=c)


def deletion_insertion(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    maps: Tensor,
    target: Any,
    *,
    mode: str = "deletion",
    n_steps: int = 20,
    baseline: Any = None,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    normalization: Any = None,
    additional_forward_args: Any = None,
    batch_size: int = 64,
    return_curves: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """RISE deletion / insertion AUC (Petsiuk et al. 2018), in [0, 1].

    Deletion replaces pixels by ``baseline`` (default black) in map order, in ``n_steps`` equal steps
    from none to all: **lower is better**. Insertion starts from a blurred copy of the image and reveals
    the original pixels in map order: **higher is better**. The score is the target's softmax
    probability; the AUC uses the trapezoid rule over the removed (revealed) fraction 0 ... 1.

    Returns:
        Tensor of shape (B,), or ``(auc, curves)`` with (B, n_steps + 1) curves.
    """
    check_choice(mode, "mode", ("deletion", "insertion"))
    check_positive_int(n_steps, "n_steps")
    check_positive_int(batch_size, "batch_size")
    setup = _Setup(
        forward_func, inputs, maps, target, baseline, normalization, additional_forward_args
    )
    pixels = inputs.shape[-2] * inputs.shape[-1]
    counts = [math.ceil(i * pixels / n_steps) for i in range(n_steps + 1)]
    if mode == "deletion":
        curves, _ = setup.scores(setup.ranks(), counts, setup.fill, batch_size)
    else:
        canvas = gaussian_blur(inputs.detach(), blur_kernel, blur_sigma)
        curves, _ = setup.scores(setup.ranks(), counts, canvas, batch_size, reveal=True)
    auc = torch.trapezoid(curves, dx=1.0 / n_steps, dim=1)
    return (auc, curves) if return_curves else auc


def adp_pic(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    maps: Tensor,
    target: Any,
    *,
    baseline: Any = None,
    normalization: Any = None,
    additional_forward_args: Any = None,
) -> dict[str, Tensor]:
    """Average Drop and Increase in Confidence (Chattopadhay et al. 2018) per image, on image * map.

    Each map is min-max normalised to [0, 1] and the image kept in proportion to it, the rest filled
    with ``baseline`` (default black in pixel space). With Y the target probability on the image and
    O on the masked image: ``adp = 100 * max(0, Y - O) / Y`` (**lower is better**) and
    ``pic = 100 * [Y < O]`` (**higher is better**); their means over images are ADP and PIC.

    Returns:
        ``{"adp": (B,), "pic": (B,)}``.
    """
    setup = _Setup(
        forward_func, inputs, maps, target, baseline, normalization, additional_forward_args
    )
    weight = min_max(setup.map).unsqueeze(1)
    masked = setup.fill + weight.to(inputs.dtype) * (inputs - setup.fill)
    with eval_mode(forward_func), torch.no_grad():
        masked_probability = (
            forward_func(masked, *setup.args)
            .softmax(dim=1)
            .gather(1, setup.target[:, None])[:, 0]
            .float()
        )
    y = setup.clean_probability
    return {
        "adp": 100 * (y - masked_probability).clamp_min(0) / y.clamp_min(1e-12),
        "pic": 100 * (y < masked_probability).float(),
    }


def mufidelity(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    maps: Tensor,
    target: Any,
    *,
    grid_size: int = 9,
    subset_fraction: float = 0.2,
    n_samples: int = 200,
    baseline: Any = None,
    normalization: Any = None,
    additional_forward_args: Any = None,
    seed: int = 0,
    batch_size: int = 64,
) -> Tensor:
    """MuFidelity (Bhatt et al. 2020): the Pearson correlation, over ``n_samples`` random subsets of
    the cells of a ``grid_size`` x ``grid_size`` grid (``subset_fraction`` of them each), between the
    map's mass on a subset and the drop of the target's probability when that subset is replaced by
    ``baseline`` (default black). In [-1, 1], **higher is better**; 0 where the map's mass or the drop
    does not vary over the subsets (a flat map, a model blind to them). The subsets come from ``seed``
    and are the same for every image, so a value does not depend on the batch.

    Returns:
        Tensor of shape (B,).
    """
    check_positive_int(grid_size, "grid_size")
    check_positive_int(n_samples, "n_samples")
    check_positive_int(batch_size, "batch_size")
    if not 0 < subset_fraction < 1:
        raise ValueError(f"`subset_fraction` must be in (0, 1), got {subset_fraction!r}")
    setup = _Setup(
        forward_func, inputs, maps, target, baseline, normalization, additional_forward_args
    )
    b, _, h, w = inputs.shape
    cells = grid_size**2
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.rand(n_samples, cells, generator=generator).argsort(dim=1)
    chosen = chosen[:, : max(1, round(subset_fraction * cells))]
    subsets = (
        torch.zeros(n_samples, cells).scatter_(1, chosen, 1.0).view(-1, 1, grid_size, grid_size)
    )
    removed = F.interpolate(subsets, size=(h, w), mode="nearest").to(inputs.device).bool()
    mass = (setup.map[:, None] * removed[None, :, 0]).flatten(2).sum(dim=2).double()  # (B, n)
    drops = []
    with eval_mode(forward_func), torch.no_grad():
        for i in range(b):
            row = []
            for start in range(0, n_samples, batch_size):
                m = removed[start : start + batch_size]
                perturbed = torch.where(m, setup.fill[i : i + 1], inputs[i : i + 1])
                args = repeat_rows(select_rows(setup.args, slice(i, i + 1), b), len(m), 1)
                logits = forward_func(perturbed, *args)
                row.append(logits.softmax(dim=1)[:, int(setup.target[i])].double())
            drops.append(setup.clean_probability[i].double() - torch.cat(row))
    return _pearson(mass, torch.stack(drops)).float()


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Pearson correlation; 0 where either row is constant."""
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    scale = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(
        scale > 0, (a * b).sum(dim=1) / scale.clamp_min(1e-300), torch.zeros_like(scale)
    )
