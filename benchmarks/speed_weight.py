"""What ``--speed-weight`` trades: importance against predicted speed at a MAC budget. No timing.

Plans only, on latency tables measured before (``benchmarks/latency_aware.py --tables DIR``
caches them, one file per model)::

    python benchmarks/speed_weight.py --tables latency_tables --batch 8 --weights 1,auto,5

Per torchvision model (``weights=None``, traced in train mode as ``pruneconf init`` traces it,
default recipe: ``l2_norm``), at ``--target-macs`` (default 0.5): the uniform plan and the
latency-aware plan for each weight, with the fraction of the dense latency the table predicts,
the MACs left and the importance lost by the planner's measure
(:func:`pruneconf.explore.latency_plan.importance_lost`). ``auto`` rows say which weight it chose.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
import torchvision

import pruneconf
from pruneconf.analysis.predict import CostModel
from pruneconf.explore.latency_plan import LatencyPlan, importance_lost, plan_mac_budget, uniform_mac_plan
from pruneconf.explore.latency_table import select_table
from pruneconf.recipe.budget import taking_part
from pruneconf.trace.fingerprint import fingerprint

MODELS = ["resnet50", "mobilenet_v2", "efficientnet_b0", "convnext_tiny", "regnet_y_1_6gf"]


def rows_for(name: str, tables: Path, batch: int, target: float, weights: list[float | None]) -> list[str]:
    """The markdown rows of one model: the uniform plan, then one per weight."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).train()
    pruner = pruneconf.Pruner(model, torch.randn(batch, 3, 224, 224))
    table = select_table(str(tables / f"{name}.json"), fingerprint(pruner.graph), batch)
    groups, recipe, skip = pruner.groups, pruner.recipe, pruner.skipped()
    parts = [g for g in taking_part(groups, recipe, skip) if g.center in table.groups]
    scores = pruner.channel_scores([g.center for g in parts])
    costs = CostModel(groups)
    dense = costs.macs({})

    def row(label: str, plan: LatencyPlan) -> str:
        return (f"| {name} | {label} | {plan.fraction:.3f} | {costs.macs(plan.kept, plan.whole) / dense:.3f} | "
                f"{importance_lost(parts, scores, plan.kept, plan.whole):.3f} | {len(plan.whole)} |")

    lines = [row("uniform", uniform_mac_plan(groups, recipe, table, target, skip))]
    for weight in weights:
        plan = plan_mac_budget(groups, recipe, table, scores, target, skip, weight)
        lines.append(row(f"auto: {plan.speed_weight:.3g}" if weight is None else f"{weight:g}", plan))
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision models")
    p.add_argument("--tables", default="latency_tables", help="folder of latency_aware.py's cached tables")
    p.add_argument("--batch", type=int, default=8, help="the tables' batch")
    p.add_argument("--target-macs", type=float, default=0.5)
    p.add_argument("--weights", default="1,auto,5", help="comma-separated: numbers from 0 to 16, or auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    weights = [None if w == "auto" else float(w) for w in args.weights.split(",")]
    lines = ["| model | speed weight | table predicts (of dense) | MACs left | importance lost | groups dropping "
             "whole conv groups |", "|---|---|---:|---:|---:|---:|"]
    for name in args.models.split(","):
        lines += rows_for(name, Path(args.tables), args.batch, args.target_macs, weights)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
