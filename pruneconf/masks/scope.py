"""A ``TorchFunctionMode`` that is active only while one module runs its forward.

Masked statistics (norm modules, tensor-op norms) must rewrite a few calls inside one module
and leave the rest of the model alone, at no cost to it. A forward pre-hook enters the mode
and an ``always_call`` forward hook leaves it, so the mode is also left when the forward
raises. The pre-hook runs before the module's own pre-hooks, which belong to its forward
(``torch.nn.utils.weight_norm`` computes the weight in one). The modes form a stack because
a module may run inside itself (weight sharing).
"""
from __future__ import annotations

from typing import Any

from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle


class ModuleScope:
    """Enters ``make_mode()`` around each forward of the modules it is attached to."""

    def __init__(self) -> None:
        self.active: list[TorchFunctionMode] = []

    def make_mode(self) -> TorchFunctionMode:
        """The mode one forward of the module runs under."""
        raise NotImplementedError

    def enter(self, module: nn.Module, args: Any) -> None:
        mode = self.make_mode()
        mode.__enter__()
        self.active.append(mode)

    def leave(self, module: nn.Module, args: Any, out: Any) -> None:
        if self.active:  # empty when an earlier pre-hook raised before ours ran
            self.active.pop().__exit__(None, None, None)

    def attach(self, module: nn.Module) -> list[RemovableHandle]:
        """Hook ``module`` so the mode is active during its forward; returns the handles."""
        return [module.register_forward_pre_hook(self.enter, prepend=True),
                module.register_forward_hook(self.leave, prepend=True, always_call=True)]
