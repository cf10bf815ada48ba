"""Per-image finetuning of LTX's explainer: one copy of its trained parameters per image, all
updated together, and the mask each image keeps along the way."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._validation import select_rows, warn_user
from .explainer import Explainer
from .metrics.perturbation import perturbation_auc
from .objective import LTXObjective, blurred


@dataclass(frozen=True)
class Finetuning:
    """How LTX finetunes each image's copy of the explainer (its resolved settings, see
    :class:`~captum_ltx.LTXAttribution`).

    AdamW is elementwise, so one optimiser over parameters stacked along a new first dimension
    makes the very updates that one optimiser per image would; the images meet only in the
    explained model's forward, which in eval mode treats each row on its own.
    """

    forward_func: Callable[..., Tensor]
    part: str  # "all" or "head"
    lr: float
    backbone_lr: float
    weight_decay: float
    selection: str
    patience: int | None
    pos_auc_early_stop: float
    autocast: bool

    def run(
        self,
        work: Explainer,
        x: Tensor,
        target: Tensor,
        fill: Tensor,
        args: tuple[Any, ...],
        steps: int,
        objective: LTXObjective,
    ) -> FinetuningPath:
        """Finetunes one copy of ``work``'s trained parameters per image of ``x`` for ``steps``
        steps (fewer if stopped); returns each image's path, holding the mask it keeps."""
        copies = {
            name: p.detach().unsqueeze(0).repeat(len(x), *([1] * p.dim())).requires_grad_(True)
            for name, p in work.named_parameters()
            if self.part == "all" or not name.startswith("backbone.")
        }
        optimizer, params = self._optimizer(copies, x)
        blur = blurred(x) if objective.baseline in ("blur", "mix") else None
        features = None
        if self.part == "head":  # the backbone is fixed: its features once, no backward through it
            with torch.no_grad(), self._precision(x):
                features = work.features(x, *args)
        path = FinetuningPath(self.selection, len(x), self.patience, self.pos_auc_early_stop)
        with torch.enable_grad():
            for step in range(steps + 1):
                with self._precision(x):
                    mask, low_res = self._masks(work, copies, x, target, args, features)
                    losses = objective(
                        self.forward_func, x, mask, low_res, target, fill, args, blurred_input=blur
                    )
                mask = mask.to(x.dtype)
                score = (
                    self._pos_auc(mask, x, target, fill, args)
                    if self.selection == "pos_auc"
                    else losses.detach()
                )
                path.see(mask.detach(), losses.detach(), score)
                if step == steps or path.finished:
                    break
                # autograd.grad rather than backward(): nothing accumulates in the model's .grad.
                grads = torch.autograd.grad(losses.sum(), params, allow_unused=True)
                for p, g in zip(params, grads):
                    p.grad = g
                optimizer.step()
        return path

    def _optimizer(
        self, copies: dict[str, Tensor], x: Tensor
    ) -> tuple[torch.optim.Optimizer, list[Tensor]]:
        """AdamW over the copies: the head at ``lr``, the backbone (``part="all"``) at ``backbone_lr``."""
        head = [p for name, p in copies.items() if not name.startswith("backbone.")]
        groups: list[dict[str, Any]] = [{"params": head, "lr": self.lr}]
        if self.part == "all":
            backbone = [p for name, p in copies.items() if name.startswith("backbone.")]
            groups.append({"params": backbone, "lr": self.backbone_lr})
        optimizer = torch.optim.AdamW(
            groups, lr=self.lr, weight_decay=self.weight_decay, fused=_fused_adamw(x)
        )
        return optimizer, [p for g in groups for p in g["params"]]

    @staticmethod
    def _masks(
        work: Explainer,
        copies: dict[str, Tensor],
        x: Tensor,
        target: Tensor,
        args: tuple[Any, ...],
        features: tuple[Tensor, list[Tensor]] | None,
    ) -> tuple[Tensor, Tensor]:
        """Each image's mask from its own copy of the trained parameters."""
        n = x.shape[0]
        masks = []
        for i in range(n):
            own = {name: p[i] for name, p in copies.items()}
            row_features = (
                None
                if features is None
                else (features[0][i : i + 1], [f[i : i + 1] for f in features[1]])
            )
            masks.append(
                torch.func.functional_call(
                    work,
                    own,
                    (x[i : i + 1], *select_rows(args, slice(i, i + 1), n)),
                    {"target": target[i : i + 1], "return_low_res": True, "features": row_features},
                )
            )
        return torch.cat([m for m, _ in masks]), torch.cat([low for _, low in masks])

    def _precision(self, x: Tensor) -> Any:
        return torch.autocast(
            device_type=x.device.type, dtype=torch.bfloat16, enabled=self.autocast
        )

    def _pos_auc(
        self, mask: Tensor, x: Tensor, target: Tensor, fill: Tensor, args: tuple[Any, ...]
    ) -> Tensor:
        auc = perturbation_auc(
            self.forward_func,
            x,
            mask.detach(),
            target,
            order="positive",
            baseline=fill,
            additional_forward_args=args or None,
        )
        assert isinstance(auc, Tensor)  # no curves asked for
        return auc


class FinetuningPath:
    """Per image, the mask chosen among those seen along finetuning, and whether its finetuning stopped.

    An image stops when ``selection="pos_auc"`` sees a score below ``pos_auc_early_stop``, or when its
    objective has not improved for ``patience`` steps; what it is given after that is never looked at,
    so an image finetuned among others gets the mask it would get alone.
    """

    def __init__(
        self, selection: str, n: int, patience: int | None, pos_auc_early_stop: float
    ) -> None:
        self.selection, self.patience, self.pos_auc_early_stop = (
            selection,
            patience,
            pos_auc_early_stop,
        )
        self.active = torch.ones(n, dtype=torch.bool)
        self.best_score = torch.full((n,), math.inf, dtype=torch.float64)
        self.best_loss = torch.full((n,), math.inf, dtype=torch.float64)
        self.since_best_loss = torch.zeros(n, dtype=torch.long)
        self.seen = torch.zeros(n, dtype=torch.long)
        self.chosen_step = torch.zeros(n, dtype=torch.long)
        self.chosen: Tensor | None = None
        self.mask_sum: Tensor | None = None

    def see(self, mask: Tensor, loss: Tensor, score: Tensor) -> None:
        active = self.active
        loss, score = loss.double().cpu(), score.double().cpu()
        if self.selection in ("loss", "pos_auc"):
            take = active & (score < self.best_score)
            self.best_score = torch.where(take, score, self.best_score)
        else:  # "last", and "mean" keeps the last too for its shape
            take = active
        rows = take.to(mask.device).view(-1, *([1] * (mask.dim() - 1)))
        self.chosen = mask.clone() if self.chosen is None else torch.where(rows, mask, self.chosen)
        self.chosen_step = torch.where(take, self.seen, self.chosen_step)
        if self.selection == "mean":
            kept = active.to(mask.device).view_as(rows)
            self.mask_sum = torch.where(kept, mask, 0) + (
                0 if self.mask_sum is None else self.mask_sum
            )
        self.seen += active.long()
        improved = loss < self.best_loss
        self.best_loss = torch.where(active & improved, loss, self.best_loss)
        self.since_best_loss = torch.where(improved, 0, self.since_best_loss + 1)
        stop = torch.zeros_like(active)
        if self.patience is not None:
            stop |= self.since_best_loss >= self.patience
        if self.selection == "pos_auc":
            stop |= score < self.pos_auc_early_stop
        self.active = active & ~stop

    def unchanged(self) -> Tensor:
        """Which images' results are their masks before finetuning."""
        return self.seen == 1 if self.selection == "mean" else self.chosen_step == 0

    @staticmethod
    def warn_if_unchanged(paths: list[FinetuningPath]) -> None:
        """Says so when an image's result is its mask before finetuning: pLTX under LTX's name."""
        unchanged = torch.cat([p.unchanged() for p in paths])
        if not unchanged.any():
            return
        first = paths[0]
        stopped = 0
        if first.selection == "pos_auc":
            stopped = sum(int((p.unchanged() & (p.seen == 1)).sum()) for p in paths)
        unchanged_count = int(unchanged.sum())
        why = []
        if stopped:
            why.append(
                f"{stopped} scored below pos_auc_early_stop={first.pos_auc_early_stop} at once, "
                "which stops finetuning"
            )
        if unchanged_count > stopped:
            why.append(f"{unchanged_count - stopped} found no later mask scoring better")
        warn_user(
            f"LTX: {unchanged_count} of {len(unchanged)} image(s) got the explainer's mask before "
            f"any finetuning (pLTX): with selection={first.selection!r}, {' and '.join(why)}"
        )

    @property
    def finished(self) -> bool:
        return not bool(self.active.any())

    def result(self) -> Tensor:
        assert self.chosen is not None
        if self.selection == "mean":
            assert self.mask_sum is not None
            return self.mask_sum / self.seen.to(self.mask_sum).view(
                -1, *([1] * (self.mask_sum.dim() - 1))
            )
        return self.chosen


def _fused_adamw(x: Tensor) -> bool | None:
    """AdamW's fused kernel where torch has one (3.8x the for-loop's step on CPU, issue 21); the same
    arithmetic per element, so it changes no result beyond rounding. ``None``: torch's default."""
    if x.device.type in ("cpu", "cuda") and x.dtype in (torch.float32, torch.float64):
        return True
    return None
