"""Feature stages of CNN classifiers, and running a CNN from a stage's output onwards."""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from . import _hooks
from ._maps import spatial_size
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

    with _hooks.forward_hooks((m, record) for m in names), torch.no_grad():
        (forward or model)(x, *args)
    return order


def spatial_order(
    model: nn.Module, x: Tensor, args: tuple[Any, ...], hint: str
) -> list[tuple[str, int]]:
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

    Only what follows the stage is worth computing. Where ``torch.fx`` can trace the model, the part
    after the stage becomes a function of the stage's output alone (as the authors' code runs it);
    otherwise the front of the network runs on a small stand-in image and the stage's output is
    swapped for the given tensor. Either is exact only when the stage's output alone determines the
    logits (true of the stage-by-stage timm and torchvision CNNs); that is checked once per stage
    against a normal forward pass, trying the traced tail, then a small, then a full-size stand-in,
    and refused with an error if the layer does not separate the network.
    """

    def __init__(self, model: nn.Module, x: Tensor, args: tuple[Any, ...]) -> None:
        self.model, self.x, self.args = model, x, args
        small = min(64, x.shape[-2]), min(64, x.shape[-1])
        self.runs: dict[tuple[str, str | None], Callable[..., Tensor]] = {}
        self.candidates: list[tuple[int, int]] = [small, spatial_size(x)]

    def capture(
        self, x: Tensor, layers: list[str], args: tuple[Any, ...]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Runs the model on ``x``; returns its logits and the outputs of ``layers``."""
        with _hooks.capture(self.model, layers) as captured:
            logits = self.model(x, *args)
        return logits, captured

    def run_from(
        self, layer: str, value: Tensor, args: tuple[Any, ...], capture: str | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Logits with ``layer``'s output replaced by ``value`` (and ``capture``'s output, if named)."""
        if (layer, capture) not in self.runs:
            self.runs[layer, capture] = self._separating_run(layer, capture)
        with _hooks.capture(self.model, [capture] if capture is not None else []) as captured:
            logits = self.runs[layer, capture](value, args)
        return logits, (captured.get(capture) if capture is not None else None)

    def _stand_in(self, layer: str, size: tuple[int, int]) -> Callable[..., Tensor]:
        def run(value: Tensor, args: tuple[Any, ...]) -> Tensor:
            stand_in = torch.zeros(
                value.shape[0], *self.x.shape[1:2], *size, device=value.device, dtype=value.dtype
            )
            with _hooks.forward_hooks(
                [(self.model.get_submodule(layer), lambda _m, _i, _out: value)]
            ):
                return self.model(stand_in, *args)

        return run

    def separates(self, layer: str) -> bool:
        """Whether ``layer``'s output alone determines the logits (how to run from it is remembered)."""
        try:
            self.runs[layer, None] = self._separating_run(layer, None)
        except ValueError:
            return False
        return True

    def _separating_run(self, layer: str, capture: str | None) -> Callable[..., Tensor]:
        with torch.no_grad():
            expected, outputs = self.capture(self.x, [layer], self.args)
            tail = traced_tail(self.model, layer, [capture] if capture else [], len(self.args))
            runs = ([tail] if tail is not None else []) + [
                self._stand_in(layer, size) for size in self.candidates
            ]
            for run in runs:
                try:
                    logits = run(outputs[layer], self.args)
                except RuntimeError:
                    continue
                if torch.allclose(
                    logits, expected, rtol=1e-4, atol=1e-4 * (1 + expected.abs().max().item())
                ):
                    return run
        raise ValueError(
            f"layer {layer!r} does not separate the model: its output alone does not determine the logits"
        )


class _StageTracer(torch.fx.Tracer):
    """fx's tracer, keeping the named stages whole so that the graph has one node per stage, and the
    modules and functions timm marks as untraceable (size-dependent "same" padding) as single calls."""

    def __init__(self, stages: set[str]) -> None:
        try:
            from timm.layers import get_notrace_functions, get_notrace_modules

            functions, self.opaque = tuple(get_notrace_functions()), tuple(get_notrace_modules())
        except ImportError:
            functions, self.opaque = (), ()
        super().__init__(autowrap_functions=functions)
        self.stages = stages

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            module_qualified_name in self.stages
            or isinstance(m, self.opaque)
            or super().is_leaf_module(m, module_qualified_name)
        )


def traced_tail(
    model: nn.Module, layer: str, keep: list[str], num_args: int
) -> Callable[..., Tensor] | None:
    """The model after ``layer`` as a function ``(value, args) -> logits``, traced by ``torch.fx``, or
    ``None`` when the model cannot be traced or the image itself reaches past ``layer`` (a skip
    around it). The traced graph calls the model's own submodules, so their weights and hooks are the
    model's; ``keep`` names modules to keep whole (to hook their outputs)."""
    key = (layer, tuple(keep), num_args)
    cache = _TAILS.setdefault(model, {})
    if key not in cache:
        cache[key] = _trace_tail(model, layer, keep, num_args)
    return cache[key]


# traced once per model and stage: tracing a ResNet-50 costs about as much as a forward pass
_TAILS: weakref.WeakKeyDictionary[nn.Module, dict[Any, Any]] = weakref.WeakKeyDictionary()


def _trace_tail(
    model: nn.Module, layer: str, keep: list[str], num_args: int
) -> Callable[..., Tensor] | None:
    try:
        tail = torch.fx.GraphModule(model, _StageTracer({layer, *keep}).trace(model))
    except (
        Exception
    ):  # any model fx cannot follow (data-dependent control flow, ...) runs the fallback
        return None
    graph = tail.graph
    nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == layer]
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(nodes) != 1 or len(placeholders) != 1 + num_args:
        return None
    with graph.inserting_before(placeholders[0]):
        value = graph.placeholder("stage_value")
    nodes[0].replace_all_uses_with(value)
    graph.erase_node(nodes[0])
    graph.eliminate_dead_code()
    if placeholders[0].users:
        return None
    tail.recompile()

    def run(value: Tensor, args: tuple[Any, ...]) -> Tensor:
        return tail(value, None, *args)

    return run


def gradients_at(
    runner: StageRunner,
    layer: str,
    points: Tensor,
    target: Tensor,
    args: tuple[Any, ...],
    chunk: int,
) -> Tensor:
    """Gradient of each point's target logit with respect to ``layer``'s output set to that point.

    ``points`` is (P, C, h, w) for one image; ``target`` its class (1,). Points go ``chunk`` at a time.
    """
    grads = []
    for start in range(0, points.shape[0], chunk):
        value = points[start : start + chunk].detach().requires_grad_(True)
        logits, _ = runner.run_from(layer, value, repeat_rows(args, value.shape[0], 1))
        grads.append(
            torch.autograd.grad(target_score(logits, target.expand(value.shape[0])), value)[0]
        )
    return torch.cat(grads)


def stage_outputs(
    runner: StageRunner, layer: str, values: Tensor, capture: str, args: tuple[Any, ...], chunk: int
) -> Tensor:
    """``capture``'s output when ``layer``'s output is each of ``values`` in turn, without gradients."""
    outputs: list[Tensor] = []
    with torch.no_grad():
        for start in range(0, values.shape[0], chunk):
            value = values[start : start + chunk]
            _, out = runner.run_from(
                layer, value, repeat_rows(args, value.shape[0], 1), capture=capture
            )
            assert out is not None  # captured: `capture` is named
            outputs.append(out)
    return torch.cat(outputs)
