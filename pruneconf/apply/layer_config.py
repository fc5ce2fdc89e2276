"""A layer's own view of a model config that every layer shares.

Some model code reads a layer's sizes from the config all layers share, not from the layer:
Phi-3 slices its fused q/k/v projection at ``self.config.num_attention_heads * head_dim``.
Once layers are pruned to different widths, each such layer needs its own number. A
:class:`LayerConfig` answers the sizes its layer was pruned to and reads every other
attribute from the shared config, and writes go there too, so a later change to the model's
config (``model.set_attn_implementation(...)``) still reaches every layer. The model's own
``config`` is left as it was: it describes the model as built.
"""
from __future__ import annotations

from typing import Any


class LayerConfig:
    """``shared`` with ``sizes`` (attribute -> value) overridden for one layer."""

    def __init__(self, shared: Any, sizes: dict[str, int]) -> None:
        if isinstance(shared, LayerConfig):  # pruned again: one overlay over the shared config
            sizes = {**shared.sizes, **sizes}
            shared = shared.shared
        self.__dict__["shared"] = shared
        self.__dict__.update(sizes)

    @property
    def sizes(self) -> dict[str, int]:
        """The overridden sizes."""
        return {k: v for k, v in self.__dict__.items() if k != "shared"}

    def __getattr__(self, name: str) -> Any:  # only for names this layer does not override
        shared = self.__dict__.get("shared")
        if shared is None:  # being copied or unpickled: not initialised yet
            raise AttributeError(name)
        return getattr(shared, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            self.__dict__[name] = value
        else:
            setattr(self.__dict__["shared"], name, value)

    def __repr__(self) -> str:
        return f"LayerConfig({type(self.shared).__name__}, {self.sizes})"


__all__ = ["LayerConfig"]
