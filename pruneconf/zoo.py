"""The model builders a recipe may name by itself: zoo constructors that only build modules.

A recipe is shared like any data file, so opening one must be as safe as opening YAML:
nothing it names is imported or called unless the user opted in outside the recipe
(``--model`` on the command line, ``--trust-recipe-model``, or building the model in code).
The one exception is this allow-list. Its builders construct a module from plain values and
run no code of the recipe author's choosing:

- torchvision's registered model builders (``torchvision.models:resnet50``,
  ``torchvision.models.detection:fasterrcnn_resnet50_fpn``, ...);
- timm's registered models (``timm.models:resnet50``, ``timm:resnet50``);
- transformers model classes built from a config (``transformers:LlamaForCausalLM`` with the
  config's fields as ``model_args``), or a local ``config.json`` (see :mod:`pruneconf.hf`).

Arguments that make a torchvision or timm builder fetch or read something (``weights``,
``pretrained``, ``checkpoint_path``, ``cache_dir``, ...) are refused from a recipe: weights are
loaded by pruneconf itself, with ``weights_only=True``, from ``--weights``. A transformers
config's fields are values (``pad_token_id`` names no token file); building from a config never
reads remote code.
"""
from __future__ import annotations

import importlib
import re
from typing import Any, Callable, Mapping


TORCHVISION_MODULES = ("torchvision.models", "torchvision.models.detection", "torchvision.models.segmentation",
                       "torchvision.models.video", "torchvision.models.optical_flow")
TIMM_MODULES = ("timm", "timm.models")
# Words of argument names (split at "_") that load files, weights or code, or reach the network.
FETCHING = frozenset({"weights", "weight", "pretrained", "pretrain", "checkpoint", "ckpt", "quantize", "url",
                      "path", "file", "dir", "cache", "hub", "download", "remote", "token", "revision"})
BENIGN = frozenset({"init_weights"})  # torchvision: how to initialise, not what to load

Builder = Callable[..., Any]


def _torchvision_builder(module: str, name: str) -> Builder | None:
    if module not in TORCHVISION_MODULES:
        return None
    import torchvision.models

    if name not in torchvision.models.list_models():
        return None
    builder = torchvision.models.get_model_builder(name)
    return builder if getattr(importlib.import_module(module), name, None) is builder else None


def _timm_builder(module: str, name: str) -> Builder | None:
    if module not in TIMM_MODULES:
        return None
    try:
        import timm
    except ImportError:
        return None
    if name not in timm.list_models():
        return None
    return getattr(importlib.import_module(module), name, None)


def _transformers_builder(module: str, name: str) -> Builder | None:
    if module != "transformers":
        return None
    from .hf import model_class_builder

    return model_class_builder(name)


def zoo_builder(spec: str) -> Builder | None:
    """The allow-listed builder ``spec`` names, or None; decided before importing anything
    outside torchvision, timm and transformers."""
    if ":" not in spec:
        from .hf import config_file_builder

        return config_file_builder(spec)
    module, _, name = spec.rpartition(":")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", module) or not name.isidentifier():
        return None
    for find in (_torchvision_builder, _timm_builder, _transformers_builder):
        builder = find(module, name)
        if builder is not None:
            return builder
    return None


def check_plain_arguments(spec: str, model_args: Mapping[str, Any],
                          refuse: Callable[[str, str], Exception]) -> None:
    """Refuse recipe arguments that would make a torchvision or timm builder fetch or read something."""
    if not spec.startswith(TORCHVISION_MODULES + TIMM_MODULES):
        return
    for key in model_args:
        words = set(str(key).lower().split("_"))
        if str(key) not in BENIGN and words & FETCHING:
            raise refuse(f"'{key}' would make the builder load weights, files or code, which a recipe may not "
                         "ask for; load weights with --weights instead",
                         f"model_args.{key}")


def refusal(spec: str) -> str:
    """Why a recipe's ``model:`` is not built, and how to opt in."""
    kind = "a local file" if (":" not in spec or "/" in spec or "\\" in spec or ".py:" in spec) else "code"
    return (f"'{spec}' is {kind} outside the model zoos a recipe may name (torchvision, timm, transformers "
            "configs); a recipe never imports or runs code by itself. If you trust it, name the model on the "
            f"command line (--model {spec}) or pass --trust-recipe-model")

