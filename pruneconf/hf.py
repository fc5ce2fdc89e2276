"""Transformers models described as data: a model class plus config values, or a ``config.json``.

Both build the architecture with random weights through the class's own config path
(``from_config``), so no weights are downloaded and no remote code is read: a config's
``auto_map`` is ignored, as transformers does without ``trust_remote_code``. This is what lets
a recipe name a language model (``model: transformers:LlamaForCausalLM`` with the config
fields as ``model_args``, or ``model: path/to/config.json``) without the user writing Python.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

from torch import nn

from .errors import ConfigError
from .jsonfile import read_json

MAX_CONFIG_BYTES = 4 << 20  # a config.json is a few KiB; refuse anything absurd before parsing


def _model_class(name: str) -> type | None:
    """``transformers.<name>`` if it is one of transformers' own model classes."""
    try:
        import transformers

        cls = getattr(transformers, name)
    except Exception:  # noqa: BLE001 - not installed, no such name, or a backend it lacks
        return None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)
            and cls.__module__.startswith("transformers.")):
        return None
    return cls


def _build(cls: type, config: Any) -> nn.Module:
    return cls._from_config(config)  # the path AutoModel*.from_config takes: no download


def build_from_values(cls: type, **values: Any) -> nn.Module:
    """``cls`` built from its config class and ``values`` (the config's fields)."""
    try:
        config = cls.config_class(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cls.__name__}'s config refuses these values: {exc}", key="model_args") from None
    return _build(cls, config)


def model_class_builder(name: str) -> Callable[..., nn.Module] | None:
    cls = _model_class(name)
    return None if cls is None else functools.partial(build_from_values, cls)


def config_path(spec: str) -> Path:
    path = Path(spec)
    return path / "config.json" if path.is_dir() else path


def read_config(spec: str) -> dict[str, Any]:
    """The fields of a transformers ``config.json``, checked to be plain data of a known type."""
    path = config_path(spec)
    values = read_json(path, MAX_CONFIG_BYTES, "transformers config.json", "MODEL")
    if not isinstance(values, dict) or not isinstance(values.get("model_type"), str):
        raise ConfigError("expected a transformers config: a JSON object with a `model_type`",
                          path=str(path), key="MODEL")
    return values


def build_from_config_file(spec: str, **overrides: Any) -> nn.Module:
    """The model a ``config.json`` describes (its first known ``architectures`` entry, else a
    causal LM), with ``overrides`` applied to the config's fields."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        raise ConfigError("building from a config.json needs transformers: pip install transformers",
                          key="MODEL") from None
    values = {**read_config(spec), **overrides}
    values.pop("auto_map", None)
    model_type = values.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **values)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"not a config transformers can build: {exc}", path=str(config_path(spec)),
                          key="MODEL") from None
    classes = [c for c in map(_model_class, getattr(config, "architectures", None) or []) if c is not None]
    if classes:
        return _build(classes[0], config)
    try:
        return AutoModelForCausalLM.from_config(config)
    except ValueError as exc:
        raise ConfigError(f"no model class for this config (give `architectures`): {exc}",
                          path=str(config_path(spec)), key="MODEL") from None


def is_config_path(spec: str) -> bool:
    """``path/to/config.json`` or a folder holding one: a transformers model described as data."""
    path = Path(spec)
    return spec.endswith(".json") or (path.is_dir() and (path / "config.json").is_file())


def config_file_builder(spec: str) -> Callable[..., nn.Module] | None:
    return functools.partial(build_from_config_file, spec) if is_config_path(spec) else None
