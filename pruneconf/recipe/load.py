"""Read a hand-edited recipe and check it against the model, naming file, line and key."""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import ConfigError
from ..models import InputSpec, check_input_sizes, parse_input_shape
from ..groups import ChannelGroups, Group
from ..trace.fingerprint import first_difference, fingerprint, parameter_shapes
from .applied import EXPERTS_APPLIED, Applied, parse_ranges
from .experts import ExpertChoice, check_experts, parse_experts
from .yamlio import load_document

METRICS = ("l1_norm", "l2_norm", "fpgm", "random", "bn_gamma", "activation", "taylor")
MODES = ("uniform", "global")
SETTINGS = ("default_sparsity", "metric", "round_to", "exclude", "seed", "mode", "max_sparsity", "target_macs",
            "expert_sparsity", "calibration_batches", "target_latency", "latency_table", "conv_groups")
GROUP_KEYS = ("sparsity", "max_sparsity", "conv_groups")
CONV_GROUPS = ("inside", "whole")  # a grouped conv's group loses channels inside each conv group, or whole ones
TOP_LEVEL = ("version", "model", "model_args", "input_shapes", "pruneconf_version", "fingerprint",
             "settings", "groups", "experts", "layers", "applied")


@dataclasses.dataclass
class Settings:
    default_sparsity: float = 0.5
    metric: str = "l2_norm"
    round_to: int = 1
    exclude: tuple[str, ...] = ()
    seed: int = 0
    mode: str = "uniform"       # "global": default_sparsity of all channels, ranked across groups
    max_sparsity: float = 0.9   # the most a group may lose in global mode or under a MAC budget
    target_macs: float | None = None  # the MAC budget (fraction of dense) the group values were chosen for
    expert_sparsity: float = 0.0  # fraction of every mixture-of-experts layer's experts dropped
    calibration_batches: int | None = None  # how many calibration batches a data metric ranked by (a record)
    target_latency: float | None = None  # the fraction of measured dense latency the group values were planned for
    latency_table: dict[str, Any] | None = None  # which table planned them: device, setup, hash (a record)
    conv_groups: str = "inside"  # "whole": groups that can lose whole conv groups do (see Group.whole_conv_groups)


@dataclasses.dataclass
class Recipe:
    """A validated recipe: plain values, plus where each key sits in its file."""

    path: str
    settings: Settings
    sparsity: dict[str, float]  # group center -> sparsity
    max_sparsity: dict[str, float] = dataclasses.field(default_factory=dict)  # group center -> cap
    conv_groups: dict[str, str] = dataclasses.field(default_factory=dict)  # group center -> inside / whole
    model: str | None = None
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    input_shapes: list[InputSpec] = dataclasses.field(default_factory=list)
    fingerprint: str | None = None
    applied: dict[str, Applied] = dataclasses.field(default_factory=dict)
    experts: dict[str, ExpertChoice] = dataclasses.field(default_factory=dict)  # experts module -> choice
    applied_experts: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # experts module -> kept
    layers: dict[str, str] = dataclasses.field(default_factory=dict)
    lines: dict[str, int] = dataclasses.field(default_factory=dict)

    def is_excluded(self, center: str) -> bool:
        return any(fnmatch.fnmatchcase(center, pattern) for pattern in self.settings.exclude)

    def sparsity_of(self, center: str) -> float:
        if self.is_excluded(center):
            return 0.0
        return self.sparsity.get(center, self.settings.default_sparsity)

    def max_sparsity_of(self, center: str) -> float:
        return self.max_sparsity.get(center, self.settings.max_sparsity)

    def dropping_conv_groups(self, groups: Iterable[Group]) -> frozenset[str]:
        """The centers of those of ``groups`` that lose whole conv groups (:meth:`drops_conv_groups`)."""
        return frozenset(g.center for g in groups if self.drops_conv_groups(g))

    def drops_conv_groups(self, group: Group) -> bool:
        """Whether ``group`` loses whole conv groups of its grouped convs (``conv_groups: whole``,
        its own or the setting's): only a group that can (``Group.whole_conv_groups``)."""
        return group.whole_conv_groups and \
            self.conv_groups.get(group.center, self.settings.conv_groups) == "whole"

    def error(self, message: str, key: str) -> ConfigError:
        """A located error; a key without a recorded line is placed at its nearest parent's."""
        parts = key.split(".")
        lines = (self.lines.get(".".join(parts[:n])) for n in range(len(parts), 0, -1))
        return ConfigError(message, path=self.path, line=next((n for n in lines if n), None), key=key)


def _line(mapping: Any, key: Any) -> int | None:
    try:
        return mapping.lc.key(key)[0] + 1
    except (AttributeError, KeyError, TypeError):
        return None


class _Checker:
    """Typed reads from the parsed document; every failure names file, line and key."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lines: dict[str, int] = {}

    def fail(self, message: str, key: str, mapping: Any = None, name: Any = None) -> ConfigError:
        line = _line(mapping, name) if mapping is not None else None
        return ConfigError(message, path=self.path, line=line or self.lines.get(key), key=key)

    def keys(self, mapping: Mapping, allowed: tuple[str, ...], prefix: str) -> None:
        for key in mapping:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; expected one of {', '.join(allowed)}"
                raise self.fail(f"unknown key{hint}", f"{prefix}{key}", mapping, key)
            self.lines[f"{prefix}{key}"] = _line(mapping, key)

    def mapping(self, parent: Mapping, name: str, full: str, what: str) -> Mapping:
        """``parent[name]`` as a mapping with string (or integer) keys; absent or empty is {}."""
        value = parent.get(name)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(f"expected {what}, got {_kind(value)}", full, parent, name)
        for key in value:
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise self.fail(f"expected names as keys, got {_kind(key)}", full, parent, name)
        return value

    def string(self, parent: Mapping, name: str, full: str) -> str | None:
        value = parent.get(name)
        if value is not None and not isinstance(value, str):
            raise self.fail(f"expected text, got {_kind(value)}", full, parent, name)
        return value

    def number(self, mapping: Mapping, key: str, full: str, lo: float, hi: float) -> float:
        value = mapping[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= float(value) < hi:
            raise self.fail(f"expected a number in [{lo:g}, {hi:g}), got {value!r}", full, mapping, key)
        return float(value)

    def choice(self, mapping: Mapping, key: str, full: str, allowed: tuple[str, ...]) -> str:
        value = mapping[key]
        if value not in allowed or not isinstance(value, str):
            raise self.fail(f"expected one of {', '.join(allowed)}, got {value!r}", full, mapping, key)
        return value

    def integer(self, mapping: Mapping, key: str, full: str, lo: int) -> int:
        value = mapping[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise self.fail(f"expected an integer >= {lo}, got {value!r}", full, mapping, key)
        return value


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false", type(None): "nothing"}.get(
        type(value), "a mapping" if isinstance(value, Mapping) else "a list" if isinstance(value, list)
        else type(value).__name__)


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Parse and type-check a recipe file (no model needed)."""
    return recipe_from_document(load_document(path), str(path))


def _settings(check: _Checker, doc: Mapping) -> Settings:
    raw = check.mapping(doc, "settings", "settings", "a mapping of settings")
    check.keys(raw, SETTINGS, "settings.")
    settings = Settings()
    if "default_sparsity" in raw:
        settings.default_sparsity = check.number(raw, "default_sparsity", "settings.default_sparsity", 0, 1)
    if "metric" in raw:
        if not isinstance(raw["metric"], str) or raw["metric"] not in METRICS:
            raise check.fail(f"unknown metric {raw['metric']!r}; expected one of {', '.join(METRICS)}",
                             "settings.metric", raw, "metric")
        settings.metric = raw["metric"]
    if "round_to" in raw:
        settings.round_to = check.integer(raw, "round_to", "settings.round_to", 1)
    if "seed" in raw:
        settings.seed = check.integer(raw, "seed", "settings.seed", 0)
    if "mode" in raw:
        if raw["mode"] not in MODES:
            raise check.fail(f"unknown mode {raw['mode']!r}; expected one of {', '.join(MODES)}",
                             "settings.mode", raw, "mode")
        settings.mode = raw["mode"]
    if "max_sparsity" in raw:
        settings.max_sparsity = check.number(raw, "max_sparsity", "settings.max_sparsity", 0, 1)
    if "conv_groups" in raw:
        settings.conv_groups = check.choice(raw, "conv_groups", "settings.conv_groups", CONV_GROUPS)
        if settings.conv_groups == "whole" and settings.mode == "global":
            raise check.fail("whole conv groups are chosen per group: use `mode: uniform` or `conv_groups: inside`",
                             "settings.conv_groups", raw, "conv_groups")
    if "expert_sparsity" in raw:
        settings.expert_sparsity = check.number(raw, "expert_sparsity", "settings.expert_sparsity", 0, 1)
    if raw.get("target_macs") is not None:
        target = raw["target_macs"]
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
            raise check.fail(f"expected a fraction of the dense MACs in (0, 1], got {target!r}",
                             "settings.target_macs", raw, "target_macs")
        settings.target_macs = float(target)
    if raw.get("target_latency") is not None:
        target = raw["target_latency"]
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
            raise check.fail(f"expected a fraction of the dense latency in (0, 1], got {target!r}",
                             "settings.target_latency", raw, "target_latency")
        settings.target_latency = float(target)
    if raw.get("latency_table") is not None:
        table = raw["latency_table"]
        if not isinstance(table, dict) or not all(isinstance(v, (str, int, float)) for v in table.values()):
            raise check.fail("expected a mapping of plain values (device, setup, hash)", "settings.latency_table",
                             raw, "latency_table")
        settings.latency_table = {str(k): v for k, v in table.items()}
    if raw.get("calibration_batches") is not None:
        settings.calibration_batches = check.integer(raw, "calibration_batches", "settings.calibration_batches", 1)
    if raw.get("exclude") is not None:
        exclude = raw["exclude"]
        if not isinstance(exclude, list) or not all(isinstance(p, str) for p in exclude):
            raise check.fail("expected a list of group names or glob patterns", "settings.exclude", raw, "exclude")
        settings.exclude = tuple(exclude)
    return settings


def _group_values(check: _Checker, doc: Mapping) -> dict[str, dict[str, Any]]:
    """``groups.<center>.sparsity`` and ``.max_sparsity``, each a number in [0, 1), and
    ``.conv_groups``, one of :data:`CONV_GROUPS`."""
    groups = check.mapping(doc, "groups", "groups", "a mapping of group centers")
    values: dict[str, dict[str, Any]] = {name: {} for name in GROUP_KEYS}
    for center, entry in groups.items():
        key = f"groups.{center}"
        check.lines[key] = _line(groups, center)
        if entry is None:
            continue
        if not isinstance(entry, Mapping):
            raise check.fail("expected a mapping like `sparsity: 0.5`", key, groups, center)
        for name in entry:
            if name not in GROUP_KEYS:
                raise check.fail(f"unknown key; expected one of {', '.join(GROUP_KEYS)}", f"{key}.{name}",
                                 entry, name)
            check.lines[f"{key}.{name}"] = _line(entry, name)
            if name == "conv_groups":
                values[name][str(center)] = check.choice(entry, name, f"{key}.{name}", CONV_GROUPS)
            else:
                values[name][str(center)] = check.number(entry, name, f"{key}.{name}", 0, 1)
    return values


def _input_shapes(check: _Checker, doc: Mapping) -> list[InputSpec]:
    """Each entry a float shape (``[1, 3, 224, 224]``) or an ``--input-shape`` text
    (``input_ids=1,16:long``); recipes before dtypes were recorded hold only the first form."""
    shapes = doc.get("input_shapes") or []
    expected = "expected a list of shapes like [[1, 3, 224, 224]] or texts like 'input_ids=1,16:long'"
    if not isinstance(shapes, list):
        raise check.fail(expected, "input_shapes", doc, "input_shapes")
    specs = []
    for entry in shapes:
        if isinstance(entry, list) and entry and all(
                isinstance(n, int) and not isinstance(n, bool) for n in entry):
            entry = ",".join(map(str, entry))
        if not isinstance(entry, str):
            raise check.fail(expected, "input_shapes", doc, "input_shapes")
        try:
            specs.append(parse_input_shape(entry))
        except ConfigError as exc:
            raise check.fail(exc.message, "input_shapes", doc, "input_shapes") from None
    try:
        check_input_sizes(specs)
    except ConfigError as exc:
        raise check.fail(exc.message, "input_shapes", doc, "input_shapes") from None
    return specs


def recipe_from_document(doc: Any, path: str) -> Recipe:
    check = _Checker(path)
    if not isinstance(doc, Mapping):
        raise ConfigError("expected a mapping of recipe keys (version, settings, groups, ...)", path=path)
    for key in doc:
        if not isinstance(key, str):
            raise check.fail(f"expected a recipe key, got {_kind(key)}", str(key), doc, key)
    check.keys(doc, TOP_LEVEL, "")
    if doc.get("version", 1) != 1 or isinstance(doc.get("version"), bool):
        raise check.fail(f"unsupported recipe version {doc.get('version')!r}; expected 1", "version", doc, "version")
    for key in ("pruneconf_version",):
        if isinstance(doc.get(key), (dict, list)):
            raise check.fail("expected a version string", key, doc, key)
    layers = check.mapping(doc, "layers", "layers", "a mapping of parameter shapes")
    values = _group_values(check, doc)
    recipe = Recipe(path=path, settings=_settings(check, doc), sparsity=values["sparsity"],
                    max_sparsity=values["max_sparsity"], conv_groups=values["conv_groups"],
                    model=check.string(doc, "model", "model"),
                    model_args={str(k): v for k, v in check.mapping(doc, "model_args", "model_args",
                                                                     "a mapping of keyword arguments").items()},
                    input_shapes=_input_shapes(check, doc),
                    fingerprint=check.string(doc, "fingerprint", "fingerprint"), lines=check.lines,
                    layers={str(k): str(v) for k, v in layers.items()}, experts=parse_experts(check, doc))
    for key in doc.get("model_args") or {}:
        check.lines[f"model_args.{key}"] = _line(doc["model_args"], key)
    recipe.applied = _applied(check, check.mapping(doc, "applied", "applied", "the mapping `pruneconf prune` wrote"),
                              recipe)
    return recipe


def _check_conv_groups(recipe: Recipe, group: Group) -> None:
    """``conv_groups: whole`` needs a group whose blocks are whole conv groups, ranked per group."""
    if recipe.conv_groups.get(group.center) != "whole":
        return
    key = f"groups.{group.center}.conv_groups"
    if not group.whole_conv_groups:
        why = ("its channels feed no grouped conv" if group.blocks is None else
               "its grouped convs' conv groups are not the same blocks (or it stacks experts)")
        raise recipe.error(f"cannot drop whole conv groups here: {why}; expected `inside` or no conv_groups", key)
    if recipe.settings.mode == "global":
        raise recipe.error("whole conv groups are chosen per group: use `mode: uniform` or `conv_groups: inside`",
                           key)


def _applied(check: "_Checker", section: Mapping, recipe: Recipe) -> dict[str, Applied]:
    """Parse ``applied`` and refuse it when the sparsities above no longer say the same."""
    out = {}
    for center, entry in section.items():
        key = f"applied.{center}"
        if isinstance(entry, Mapping) and set(entry) == set(EXPERTS_APPLIED):
            recipe.applied_experts[str(center)] = _applied_experts(check, section, str(center))
            continue
        if not isinstance(entry, Mapping) or set(entry) != {"channels", "kept", "sparsity", "indices"}:
            raise check.fail("expected channels, kept, sparsity and indices", key, section, center)
        channels = check.integer(entry, "channels", f"{key}.channels", 1)
        try:
            kept = parse_ranges(entry["indices"], channels)
        except ValueError as exc:
            raise check.fail(str(exc), f"{key}.indices", entry, "indices") from None
        count = check.integer(entry, "kept", f"{key}.kept", 1)
        sparsity = check.number(entry, "sparsity", f"{key}.sparsity", 0, 1)
        if count != len(kept):
            raise check.fail(f"indices list {len(kept)} channels; expected {count} below {channels}",
                             key, section, center)
        out[str(center)] = Applied(channels, kept, sparsity)
        now = recipe.sparsity_of(str(center))
        if abs(now - sparsity) > 1e-12:
            where = f"groups.{center}" if str(center) in recipe.sparsity else "settings.default_sparsity"
            raise check.fail(f"the applied section no longer matches: sparsity is now {now:g} but "
                             f"{sparsity:g} was applied; prune again to apply a new sparsity",
                             where if where in check.lines else key)
    return out


def _applied_experts(check: "_Checker", section: Mapping, layer: str) -> np.ndarray:
    """``applied.<experts module>``: ``experts`` before, ``kept`` count and kept ``indices``."""
    entry, key = section[layer], f"applied.{layer}"
    count = check.integer(entry, "experts", f"{key}.experts", 1)
    try:
        kept = parse_ranges(entry["indices"], count)
    except ValueError as exc:
        raise check.fail(str(exc), f"{key}.indices", entry, "indices") from None
    if check.integer(entry, "kept", f"{key}.kept", 1) != len(kept):
        raise check.fail(f"indices list {len(kept)} experts; expected {entry['kept']} below {count}",
                         key, section, layer)
    return kept


def check_against(recipe: Recipe, groups: ChannelGroups) -> None:
    """The recipe must describe this model: same fingerprint, known prunable group centers."""
    # a config dict has no fingerprint: the graph is only hashed for a recipe that records one
    if recipe.fingerprint is not None and recipe.fingerprint != (actual := fingerprint(groups.graph)):
        change = first_difference(recipe.layers, parameter_shapes(groups.graph)) if recipe.layers else \
            f"fingerprint {recipe.fingerprint}, this model traces to {actual}"
        raise recipe.error(f"the recipe was made for another model: {change}; run `pruneconf init` again",
                           "fingerprint")
    for center in {**recipe.sparsity, **recipe.max_sparsity, **recipe.conv_groups}:
        if center in groups.by_center and groups[center].prunable:
            _check_conv_groups(recipe, groups[center])
            continue
        owner = next(iter(groups.groups_of_layer(center)), None)
        if center in groups.by_center:
            why = f"this group is not prunable: {'; '.join(groups[center].reasons[:2])}"
        elif owner is not None:
            why = f"'{center}' is a member of group '{owner.center}', not a group center; set the sparsity there"
        else:
            close = difflib.get_close_matches(center, [g.center for g in groups.prunable], n=1)
            why = "no such group in the model" + (f"; did you mean '{close[0]}'?" if close else "")
        raise recipe.error(why, f"groups.{center}")
    check_experts(recipe, groups.graph)
