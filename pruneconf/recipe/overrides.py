"""``--set KEY=VALUE``: edit a recipe from the command line, checked like the file itself.

Values are YAML scalars (``0.3``, ``global``, ``[a, b]``). A known setting
(``default_sparsity``, ``metric``, ``round_to``, ``mode``, ``max_sparsity``, ...) goes under
``settings``; a key naming a group center sets that group's sparsity; ``CENTER.max_sparsity``
sets its cap and ``CENTER.conv_groups`` how it loses a grouped conv's channels. Settings apply before group values, whatever the order on the command line.
Changing ``default_sparsity`` also moves the groups still at the old default, so
``--set default_sparsity=0.3`` means the same for a fresh recipe and one from ``init``.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Sequence

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from ..errors import ConfigError
from .load import GROUP_KEYS, SETTINGS, Recipe, recipe_from_document


def parse_pairs(pairs: Sequence[str]) -> list[tuple[str, Any]]:
    """``["a=1", "b=x"]`` -> ``[("a", 1), ("b", "x")]``, values typed as YAML scalars."""
    out = []
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected KEY=VALUE, got '{pair}'", key="--set")
        try:
            value = YAML(typ="safe").load(text)
        except Exception as exc:  # noqa: BLE001 - any YAML error is a bad value
            raise ConfigError(f"cannot read the value of '{key}': {exc}", key="--set") from None
        out.append((key.strip(), value))
    return out


def _group_target(key: str, centers: Iterable[str]) -> tuple[str, str] | None:
    """``("features.1.conv.1", "sparsity")`` for a group center, optionally ``.max_sparsity``."""
    centers = set(centers)
    if key in centers:
        return key, "sparsity"
    base, _, name = key.rpartition(".")
    if name in GROUP_KEYS and base in centers:
        return base, name
    return None


def _unknown(key: str, centers: Iterable[str]) -> ConfigError:
    known = list(SETTINGS) + [str(c) for c in centers]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; expected a setting ({', '.join(SETTINGS)}) or a group"
    return ConfigError(f"not a setting or group{hint}", key=f"--set {key}")


def apply_overrides(doc: CommentedMap, pairs: Sequence[str], centers: Iterable[str] | None = None) -> CommentedMap:
    """Apply ``--set`` pairs to a round-trip recipe document, in place, and return it.

    ``centers`` are the group names a key may name (default: the document's ``groups``).
    The result is not validated here: pass it to :func:`overridden_recipe` or load it.
    """
    centers = list(centers if centers is not None else (doc.get("groups") or {}))
    parsed = parse_pairs(pairs)
    settings = doc.setdefault("settings", CommentedMap())
    groups = doc.setdefault("groups", CommentedMap())
    for key, value in parsed:
        if key in SETTINGS:
            if key == "default_sparsity":
                _follow_default(groups, settings.get("default_sparsity", 0.5), value)
            settings[key] = value
        elif _group_target(key, centers) is None:
            raise _unknown(key, centers)
    for key, value in parsed:
        target = _group_target(key, centers) if key not in SETTINGS else None
        if target is not None:
            center, name = target
            if not isinstance(groups.get(center), dict):
                groups[center] = CommentedMap()
            groups[center][name] = value
    return doc


def _follow_default(groups: CommentedMap, old: Any, new: Any) -> None:
    for entry in groups.values():
        if isinstance(entry, dict) and entry.get("sparsity") == old:
            entry["sparsity"] = new


def overridden_recipe(doc: CommentedMap, pairs: Sequence[str], path: str,
                      centers: Iterable[str] | None = None) -> Recipe:
    """Apply ``pairs`` and validate the document with the recipe file's own checks."""
    recipe_from_document(doc, path)  # the file itself must be valid: its own located error first
    apply_overrides(doc, pairs, centers)
    try:
        return recipe_from_document(doc, path)
    except ConfigError as exc:
        if pairs and exc.key:
            raise ConfigError(f"{exc.message} (after --set)", path=exc.path, line=exc.line, key=exc.key) from None
        raise
