"""Forward hooks that never outlive the block that needs them: every method, the explainer and the
model adapters read or replace layer outputs through these two context managers only."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torch import Tensor, nn

Hook = Callable[[nn.Module, Any, Any], Any]


@contextlib.contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, Hook]]) -> Iterator[None]:
    """Registers each ``(module, hook)`` for the block and removes them all, however the block ends
    (a hook that returns a value replaces the module's output, as in ``register_forward_hook``)."""
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def capture(model: nn.Module, layers: Iterable[str]) -> Iterator[dict[str, Tensor]]:
    """The outputs of the named ``layers`` during the block (the last one each produced), by name;
    their gradients are ``torch.autograd.grad(score, [captured[name], ...])``."""
    captured: dict[str, Tensor] = {}

    def keep(name: str) -> Hook:
        return lambda _module, _inputs, output: captured.__setitem__(name, output)

    with forward_hooks((model.get_submodule(name), keep(name)) for name in layers):
        yield captured
