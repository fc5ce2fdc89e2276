"""What a recipe asks for and what pruning realises, group by group.

Rounding makes the two differ: ``round_to: 8`` turns "remove half of 20 channels" into
keeping 8, a realised sparsity of 0.6. Each row gives requested and realised sparsity
(``1 - kept / channels``), channels, and the parameters and MACs the group touches, before
and after (shares overlap: a conv counts for its input and its output groups). The totals
are the whole model's, predicted by :class:`CostModel`; ``pruneconf prune`` also measures
them on the applied model.
"""
from __future__ import annotations

import csv
import dataclasses
import io

from .groups import ChannelGroups
from .masks import PruningPlan
from .recipe.load import Recipe
from .table import format_table
from .analysis.predict import CostModel, Costs


@dataclasses.dataclass(frozen=True)
class GroupRow:
    center: str
    requested: float
    realised: float
    channels: int
    kept: int
    params: tuple[int, int]
    macs: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Report:
    rows: list[GroupRow]
    params: tuple[int, int]
    macs: tuple[int, int]
    mode: str = "uniform"

    @property
    def channels(self) -> tuple[int, int]:
        return sum(r.channels for r in self.rows), sum(r.kept for r in self.rows)


def build_report(groups: ChannelGroups, plan: PruningPlan, recipe: Recipe) -> Report:
    """One row per prunable group: what ``recipe`` asks, what ``plan`` keeps; plus model totals."""
    model = CostModel(groups)
    kept = {center: len(indices) for center, indices in plan.kept.items()}
    before, after = model.costs({}), model.costs(kept, recipe.dropping_conv_groups(groups[c] for c in kept))
    rows = [_row(g.center, g.channels, _requested(recipe, g.center), kept.get(g.center, g.channels),
                 before, after) for g in groups.prunable]
    return Report(rows, (before.params, after.params), (before.macs, after.macs), recipe.settings.mode)


def _requested(recipe: Recipe, center: str) -> float:
    """Global mode asks every group for the model-wide fraction; per-group values are not used."""
    if recipe.settings.mode == "global":
        return 0.0 if recipe.is_excluded(center) else recipe.settings.default_sparsity
    return recipe.sparsity_of(center)


def _row(center: str, channels: int, requested: float, keep: int, before: Costs, after: Costs) -> GroupRow:
    return GroupRow(center, requested, 1 - keep / channels, channels, keep,
                    (before.group_params[center], after.group_params[center]),
                    (before.group_macs[center], after.group_macs[center]))


def _arrow(pair: tuple[int, int]) -> str:
    return f"{pair[0]:,} → {pair[1]:,}"


def _change(pair: tuple[int, int]) -> str:
    return f"{100 * (pair[1] / pair[0] - 1):+.1f}%" if pair[0] else "n/a"


def format_report(report: Report) -> str:
    """A terminal table: one line per group and a total line."""
    headers = ["group", "requested", "realised", "channels", "params", "MACs"]
    rows = [[r.center, f"{r.requested:.3f}", f"{r.realised:.3f}", f"{r.channels} → {r.kept}",
             _arrow(r.params), _arrow(r.macs)] for r in report.rows]
    channels = report.channels
    realised = 1 - channels[1] / channels[0] if channels[0] else 0.0
    rows.append(["total (model)", "", f"{realised:.3f}", f"{channels[0]} → {channels[1]}",
                 f"{_arrow(report.params)} ({_change(report.params)})",
                 f"{_arrow(report.macs)} ({_change(report.macs)})"])
    table = format_table(headers, rows, numeric=[False, True, True, True, True, True])
    if report.mode == "global":
        table = ("mode: global: `requested` is the fraction of all channels to remove; "
                 "each group's share comes from the ranking\n" + table)
    return table


def report_csv(report: Report) -> str:
    """The same rows, one value per column, for spreadsheets."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["group", "requested", "realised", "channels", "kept", "params_before", "params_after",
                     "macs_before", "macs_after"])
    for r in report.rows:
        writer.writerow([r.center, r.requested, f"{r.realised:.6f}", r.channels, r.kept, *r.params, *r.macs])
    channels = report.channels
    writer.writerow(["total", "", f"{1 - channels[1] / max(channels[0], 1):.6f}", *channels, *report.params,
                     *report.macs])
    return out.getvalue()
