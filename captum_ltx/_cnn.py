"""Feature stages of CNN classifiers, and running a CNN from a stage's output onwards."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ._model import target_score
from ._validation import repeat_rows


def spatial_outputs(
    model: nn.Module, x: Tensor, args: tuple[Any, ...], forward: Callable[..., Any] | None = None
) -> list[tuple[str, int]]:
    """(module name, h * w) of every module with a (B, C, h, w) output, h, w > 1, in execution order
    (of completion), running ``forward`` (default: the model) on ``x``."""
    names = {m: n for n, m in model.named_modules() if n}
    order: list[tuple[str, int]] = []

    def record(module: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, Tensor) and out.dim() == 4 and min(out.shape[-2:]) > 1:
            order.append((names[module], out.shape[-2] * out.shape[-1]))

    handles = [m.register_forward_hook(record) for m in names]
    try:
        with torch.no_grad():
            (forward or model)(x, *args)
    finally:
        for h in handles:
            h.remove()
    return order


def spatial_order(model: nn.Module, x: Tensor, args: tuple[Any, ...], hint: str) -> list[tuple[str, int]]:
    """:func:`spatial_outputs`, or a ``ValueError`` ending with ``hint`` (which argument to pass) when
    the model has no module with a spatial output."""
    order = spatial_outputs(model, x, args)
    if not order:
        raise ValueError(f"the model has no layer with a spatial (B, C, h, w) output; {hint}")
    return order


def last_stage(model: nn.Module, x: Tensor, args: tuple[Any, ...] = ()) -> str:
    """Name of the last feature stage: timm's ``feature_info``, else the last module with a spatial output."""
    info = stage_names(model)
    if info:
        return info[-1]
    return spatial_order(model, x[:1], _first_rows(args, x), "pass the layer explicitly")[-1][0]


def cnn_stages(model: nn.Module, x: Tensor, args: tuple[Any, ...] = ()) -> tuple[str, str]:
    """Names of the penultimate and the last feature stage.

    timm models list their stages in ``feature_info``. For other modules the last stage is the last
    module with a spatial output, and the penultimate one the latest module before the last
    downsampling whose output alone determines the logits (so torchvision's ResNets get ``layer3``,
    not a layer inside ``layer4``'s first block); a model that never downsamples gets the latest
    such module before the last stage.
    """
    info = stage_names(model)
    if info and len(info) >= 2:
        return info[-2], info[-1]
    small_args = _first_rows(args, x)
    order = spatial_order(model, x[:1], small_args, "pass `layers` explicitly")
    last, last_area = order[-1]
    calls = Counter(name for name, _ in order)
    # a module run more than once (a shared ReLU) cannot stand for one representation
    candidates = [(name, area) for name, area in order[:-1] if calls[name] == 1 and name != last]
    coarser = [name for name, area in candidates if area > last_area]
    ordered = list(reversed(coarser)) or [name for name, _ in reversed(candidates)]
    runner = StageRunner(model, x[:1], small_args)
    for name in ordered:
        if runner.separates(name):
            return name, last
    raise ValueError(
        f"could not find a layer before {last!r} whose output alone determines the logits; pass `layers` "
        "(penultimate, last) explicitly"
    )


def stage_names(model: nn.Module) -> list[str]:
    """The modules timm's ``feature_info`` names as the model's feature stages, or none."""
    info = getattr(model, "feature_info", None)
    if isinstance(info, (list, tuple)) and all(isinstance(f, dict) and "module" in f for f in info):
        return [f["module"] for f in info]
    return []


def _first_rows(args: tuple[Any, ...], x: Tensor) -> tuple[Any, ...]:
    return tuple(a[:1] if isinstance(a, Tensor) and a.shape[:1] == x.shape[:1] else a for a in args)


def resolve_layer(model: nn.Module, layer: str | nn.Module, name: str = "layer") -> nn.Module:
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"`{name}` is not a module of the model")
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError:
        raise ValueError(f"`{name}` {layer!r} is not a module of the model") from None


class StageRunner:
    """Runs a CNN from the output of one of its stages, with that output replaced by given values.

    Only what follows the stage is worth computing, so the front of the network runs on a small
    stand-in image and the stage's output is swapped for the given tensor. This is exact when the
    stage's output alone determines the logits (true of the stage-by-stage timm CNNs); it is checked
    once per stage against a normal forward pass, falling back to a full-size stand-in, and refused
    with an error if the layer does not separate the network.
    """

    def __init__(self, model: nn.Module, x: Tensor, args: tuple[Any, ...]) -> None:
        self.model, self.x, self.args = model, x, args
        small = min(64, x.shape[-2]), min(64, x.shape[-1])
        self.sizes: dict[str, tuple[int, int]] = {}
        self.candidates = [small, tuple(x.shape[-2:])]

    def capture(self, x: Tensor, layers: list[str], args: tuple[Any, ...]) -> tuple[Tensor, dict[str, Tensor]]:
        """Runs the model on ``x``; returns its logits and the outputs of ``layers``."""
        captured: dict[str, Tensor] = {}
        handles = [
            self.model.get_submodule(n).register_forward_hook(lambda _m, _i, out, n=n: captured.__setitem__(n, out)) for n in layers
        ]
        try:
            logits = self.model(x, *args)
        finally:
            for h in handles:
                h.remove()
        return logits, captured

    def run_from(self, layer: str, value: Tensor, args: tuple[Any, ...], capture: str | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits with ``layer``'s output replaced by ``value`` (and ``capture``'s output, if named)."""
        if layer not in self.sizes:
            self.sizes[layer] = self._separating_size(layer)
        return self._run(layer, value, args, capture, self.sizes[layer])

    def _run(self, layer: str, value: Tensor, args: tuple[Any, ...], capture: str | None, size: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
        stand_in = torch.zeros(value.shape[0], *self.x.shape[1:2], *size, device=value.device, dtype=value.dtype)
        captured: list[Tensor] = []
        handles = [self.model.get_submodule(layer).register_forward_hook(lambda _m, _i, _out: value)]
        if capture is not None:
            handles.append(self.model.get_submodule(capture).register_forward_hook(lambda _m, _i, out: captured.append(out)))
        try:
            logits = self.model(stand_in, *args)
        finally:
            for h in handles:
                h.remove()
        return logits, (captured[-1] if captured else None)

    def separates(self, layer: str) -> bool:
        """Whether ``layer``'s output alone determines the logits (the size it needs is remembered)."""
        try:
            self.sizes[layer] = self._separating_size(layer)
        except ValueError:
            return False
        return True

    def _separating_size(self, layer: str) -> tuple[int, int]:
        with torch.no_grad():
            expected, outputs = self.capture(self.x, [layer], self.args)
            for size in self.candidates:
                try:
                    logits, _ = self._run(layer, outputs[layer], self.args, None, size)  # type: ignore[arg-type]
                except RuntimeError:
                    continue
                if torch.allclose(logits, expected, rtol=1e-4, atol=1e-4 * (1 + expected.abs().max().item())):
                    return size
        raise ValueError(f"layer {layer!r} does not separate the model: its output alone does not determine the logits")


def gradients_at(
    runner: StageRunner, layer: str, points: Tensor, target: Tensor, args: tuple[Any, ...], chunk: int
) -> Tensor:
    """Gradient of each point's target logit with respect to ``layer``'s output set to that point.

    ``points`` is (P, C, h, w) for one image; ``target`` its class (1,). Points go ``chunk`` at a time.
    """
    grads = []
    for start in range(0, points.shape[0], chunk):
        value = points[start : start + chunk].detach().requires_grad_(True)
        logits, _ = runner.run_from(layer, value, repeat_rows(args, value.shape[0], 1))
        grads.append(torch.autograd.grad(target_score(logits, target.expand(value.shape[0])), value)[0])
    return torch.cat(grads)


def stage_outputs(runner: StageRunner, layer: str, values: Tensor, capture: str, args: tuple[Any, ...], chunk: int) -> Tensor:
    """``capture``'s output when ``layer``'s output is each of ``values`` in turn, without gradients."""
    outputs = []
    with torch.no_grad():
        for start in range(0, values.shape[0], chunk):
            value = values[start : start + chunk]
            _, out = runner.run_from(layer, value, repeat_rows(args, value.shape[0], 1), capture=capture)
            outputs.append(out)
    return torch.cat(outputs)
