"""Captum's own methods, run with the explained model in eval mode so that no call changes it."""

from __future__ import annotations

from typing import Any, cast

import captum.attr as ca
from captum.log import log_usage
from torch import Tensor

from ._maps import to_map, warn_if_flat
from ._model import eval_mode


def _in_eval_mode(base: type) -> type:
    """A subclass of Captum method ``base`` whose ``attribute`` runs the model in eval mode."""

    class Method(base):  # type: ignore[valid-type, misc]
        def __init__(
            self,
            forward_func: Any,
            *args: Any,
            attribute_defaults: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(forward_func, *args, **kwargs)
            # Defaults for attribute() (e.g. IG's n_steps), so the registry can configure a method once.
            self.attribute_defaults = dict(attribute_defaults or {})

        @log_usage()
        def attribute(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            with eval_mode(self.forward_func):
                result = cast(Any, base).attribute.__wrapped__(
                    self, inputs, *args, **{**self.attribute_defaults, **kwargs}
                )
            attributions = result[0] if isinstance(result, tuple) else result
            if isinstance(attributions, Tensor) and attributions.dim() == 4:
                warn_if_flat(to_map(attributions), base.__name__)
            return result

    Method.__name__ = Method.__qualname__ = base.__name__
    Method.__doc__ = f"Captum's {base.__name__}, run with the explained model in eval mode."
    return Method


IntegratedGradients = _in_eval_mode(ca.IntegratedGradients)
Saliency = _in_eval_mode(ca.Saliency)
InputXGradient = _in_eval_mode(ca.InputXGradient)


class Occlusion(_in_eval_mode(ca.Occlusion)):  # type: ignore[misc]
    """Captum's Occlusion with a default window: all channels, an eighth of the image, half-window strides."""

    @log_usage()
    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        baselines: Any = None,
        additional_forward_args: Any = None,
        sliding_window_shapes: Any = None,
        strides: Any = None,
        perturbations_per_eval: int = 16,
        **kwargs: Any,
    ) -> Any:
        x: Tensor = inputs[0] if isinstance(inputs, tuple) else inputs
        if sliding_window_shapes is None:
            sliding_window_shapes = (x.shape[1], max(1, x.shape[2] // 8), max(1, x.shape[3] // 8))
            strides = strides or (
                x.shape[1],
                max(1, sliding_window_shapes[1] // 2),
                max(1, sliding_window_shapes[2] // 2),
            )
        return super().attribute.__wrapped__(
            self,
            inputs,
            sliding_window_shapes,
            strides=strides,
            baselines=baselines,
            target=target,
            additional_forward_args=additional_forward_args,
            perturbations_per_eval=perturbations_per_eval,
            **kwargs,
        )
