"""Write a recipe: header, global settings and one commented entry per channel group.

Regenerating into an existing recipe edits that document in place, so the user's values,
extra keys and comments survive; only the generated header, the ``model``/``fingerprint``
fields and the per-group summary comments are refreshed.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.tokens import CommentToken

from .._version import __version__
from ..analysis import GroupCost, group_costs, total_macs, total_params
from ..errors import ConfigError
from ..groups import ChannelGroups, Group
from ..models import InputSpec
from ..trace.fingerprint import fingerprint, parameter_shapes
from ..trace.where import located
from .yamlio import dump_document, load_document, round_trip_yaml, template_path

log = logging.getLogger(__name__)

SUMMARY_MARK = "ch ·"  # generated key comments look like "# 32 ch · ..."
HEADER = """\
pruneconf recipe{model}
Structured channel pruning, one entry per group of coupled channels.
Set `sparsity` (the fraction of a group's channels to remove, 0 <= s < 1) per group, or the
defaults under `settings`. A group is named by its center, the first layer whose output
channels it prunes; its comment gives channels, member layers and its share of the model's
MACs and parameters (shares overlap: a layer counts for its input and output groups).
Running `pruneconf init` again keeps your values and comments; this header is regenerated.
"""


def _percent(part: int, whole: int) -> str:
    share = 100.0 * part / whole if whole else 0.0
    return f"{share:.2f}%" if share < 10 else f"{share:.1f}%"


def group_summary(group: Group, cost: GroupCost, macs: int, params: int, shown: int = 4) -> str:
    """``32 ch · 4 layers: a, b, c +1 · MACs 2.31% · params 0.12%``, and ``· 4 conv groups of 8``
    where ``conv_groups: whole`` may drop whole ones (so a reader finds the choice)."""
    layers = group.layers
    listed = ", ".join(layers[:shown]) + (f" +{len(layers) - shown}" if len(layers) > shown else "")
    conv_groups = f" · {group.experts} conv groups of {group.block_width}" \
        if group.whole_conv_groups else ""
    return (f"{group.channels} {SUMMARY_MARK} {len(layers)} layers: {listed} · "
            f"MACs {_percent(cost.macs, macs)} · params {_percent(cost.params, params)}{conv_groups}")


def _header(model: str | None, groups: ChannelGroups) -> str:
    text = HEADER.format(model=f" for {model}" if model else "")
    blocked = [g for g in groups if not g.prunable]
    if blocked:
        text += "\nNot prunable (left as they are):\n"
        for g in blocked:
            text += f"  {g.center} ({g.channels} ch): {'; '.join(located(r, groups.graph) for r in g.reasons[:2])}\n"
    return text.rstrip("\n")


def _set_eol(mapping: CommentedMap, key: str, text: str) -> None:
    """Replace the generated comment on ``key``'s line, keeping comment lines a user put below it."""
    items = mapping.ca.items.get(key)
    old = items[2] if items and len(items) > 2 else None
    extra = ""
    if old is not None and isinstance(old, CommentToken):
        first, _, extra = old.value.partition("\n")
        if SUMMARY_MARK not in first:  # the user's own comment: keep it, add ours after it
            text = f"{first.lstrip('# ').rstrip()} | {text}"
    mapping.yaml_add_eol_comment(text, key, column=2)
    if extra:
        token = mapping.ca.items[key][2]
        token.value = token.value.rstrip("\n") + "\n" + extra


def _flow_shapes(shapes: Sequence[Sequence[int] | InputSpec | str]) -> CommentedSeq:
    """Plain float inputs as ``[1, 3, 224, 224]``; named or non-float ones as their
    ``--input-shape`` text (``input_ids=1,16:long``), so later commands rebuild them exactly."""
    seq = CommentedSeq()
    for shape in shapes:
        if isinstance(shape, InputSpec) and (shape.name or shape.dtype != torch.float32):
            shape = str(shape)
        if isinstance(shape, str):
            seq.append(shape)
            continue
        inner = CommentedSeq(list(shape.shape if isinstance(shape, InputSpec) else shape))
        inner.fa.set_flow_style()
        seq.append(inner)
    seq.fa.set_flow_style()
    return seq


def build_recipe(groups: ChannelGroups, *, model: str | None = None,
                 model_args: Mapping[str, Any] | None = None,
                 input_shapes: Sequence[Sequence[int] | InputSpec | str] = (),
                 settings: Mapping[str, Any] | None = None,
                 existing: Any = None) -> CommentedMap:
    """The recipe document for ``groups``; ``existing`` (a loaded recipe) is updated in place."""
    doc = existing if existing is not None else round_trip_yaml().load(template_path().read_text())
    if not isinstance(doc, CommentedMap) or not isinstance(doc.get("groups", {}), dict):
        raise ConfigError("expected a mapping with a 'groups' mapping", key="groups")
    doc["version"] = 1
    doc["model"] = model
    doc["model_args"] = CommentedMap(model_args or {})
    doc["model_args"].fa.set_flow_style()
    doc["input_shapes"] = _flow_shapes(input_shapes)
    doc["pruneconf_version"] = __version__
    doc["fingerprint"] = fingerprint(groups.graph)
    doc["layers"] = CommentedMap(parameter_shapes(groups.graph))
    doc.move_to_end("layers")
    doc.yaml_add_eol_comment("parameter shapes at `init`: they name what changed in a model that no longer matches",
                             "layers", column=0)
    if "applied" in doc:
        doc.move_to_end("applied")
    current = doc.setdefault("settings", CommentedMap())
    for key, value in (settings or {}).items():
        current[key] = value
    doc.ca.comment = None
    doc.yaml_set_start_comment(_header(model, groups))
    _update_groups(doc, groups, current.get("default_sparsity", 0.5))
    return doc


def _update_groups(doc: CommentedMap, groups: ChannelGroups, default: float) -> None:
    entries = doc.get("groups")
    if not isinstance(entries, CommentedMap):
        entries = doc["groups"] = CommentedMap()
    wanted = [g for g in groups if g.prunable]
    names = {g.center for g in wanted}
    stale = [k for k in entries if k not in names]
    for key in stale:
        del entries[key]
    if stale:
        log.warning("dropped %d groups the model no longer has: %s", len(stale), ", ".join(map(str, stale)))
    costs = group_costs(groups)
    macs, params = total_macs(groups.graph), total_params(groups.graph)
    for position, group in enumerate(wanted):
        if group.center not in entries:
            entries.insert(position, group.center, CommentedMap(sparsity=default))
        _set_eol(entries, group.center, group_summary(group, costs[group.center], macs, params))


def write_recipe(path: str | Path, groups: ChannelGroups, **kwargs: Any) -> str:
    """Render the recipe for ``groups``, merged into ``path`` if it exists; return the text.

    The caller writes the text (atomically); nothing is written here.
    """
    existing = load_document(path) if Path(path).is_file() else None
    return dump_document(build_recipe(groups, existing=existing, **kwargs))
