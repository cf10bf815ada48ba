"""Algorithmic stability of explanations (Fel, Vigouroux et al. 2022): do models trained on different
folds of the same data explain an image alike when they agree, and differently when they do not?"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from .sanity import spearman


def mege_reco(
    maps: Tensor, predictions: Tensor, labels: Tensor, held_out: Tensor | None = None
) -> dict[str, float]:
    """MeGe and ReCo over the explanations of ``K`` models of the same ``N`` images.

    For every pair of models and image (with ``held_out``, the fold each image was held out of:
    only pairs where one model did not train on it), the distance ``sqrt(1 - |Spearman|)`` of the
    two maps goes to ``S=`` when both models predict the label, to ``S!=`` when one does.
    MeGe = ``1 / (1 + mean S=)`` (1: explanations of agreeing models coincide; **higher is better**);
    ReCo = the best ``TPR + TNR - 1`` of a threshold telling ``S=`` from ``S!=`` (1: explanations
    reveal when models disagree; **higher is better**; 0 when either set is empty).

    Args:
        maps (Tensor): (K, N, H, W) maps, or (K, N, C, H, W) attributions (read through ``to_map``).
        predictions (Tensor): (K, N) predicted classes.
        labels (Tensor): (N,) true classes.
        held_out (Tensor, optional): (N,) index of the model that did not train on each image.

    Returns:
        ``{"mege": float, "reco": float}``.
    """
    k, n = predictions.shape
    if maps.shape[:2] != (k, n) or labels.shape != (n,):
        raise ValueError(
            f"`maps` (K, N, ...), `predictions` (K, N) and `labels` (N,) must agree, got "
            f"{tuple(maps.shape)}, {tuple(predictions.shape)} and {tuple(labels.shape)}"
        )
    same, different = [], []
    for i, j in itertools.combinations(range(k), 2):
        distance = (1 - spearman(maps[i], maps[j]).abs()).clamp_min(0).sqrt()
        right_i, right_j = predictions[i] == labels, predictions[j] == labels
        counted = right_i | right_j
        if held_out is not None:
            counted &= (held_out == i) | (held_out == j)
        same.append(distance[counted & right_i & right_j])
        different.append(distance[counted & (right_i != right_j)])
    s_eq, s_ne = torch.cat(same).double(), torch.cat(different).double()
    mege = float(1 / (1 + s_eq.mean())) if len(s_eq) else float("nan")
    reco = 0.0
    if len(s_eq) and len(s_ne):
        for gamma in torch.cat([s_eq, s_ne]).unique():
            tpr = float((s_eq <= gamma).double().mean())
            tnr = float((s_ne > gamma).double().mean())
            reco = max(reco, tpr + tnr - 1)
    return {"mege": mege, "reco": reco}
