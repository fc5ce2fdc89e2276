"""Where a latency plan's MACs and time go, by kind of layer: why measured speedup trails MACs.

Reads a latency table (``pruneconf latency``, e.g. the ones ``latency_aware.py`` caches) for a
torchvision model at one batch, plans ``--target-latency`` (or ``--target-macs``) on it from the
table alone, prunes a copy (``apply_masks()`` verifies masked == applied) and prints, per kind
of timed unit (depthwise conv, 1x1 conv, kxk conv, linear, norm, activation, other), its share
of the dense model's time and MACs and what fraction of each the plan keeps — time as the
table's predictor sees it, MACs counted on the pruned model's trace. A kind that keeps much
more of its time than of its MACs is where MAC-predicted speedup is not delivered::

    OMP_NUM_THREADS=1 python benchmarks/latency_breakdown.py mobilenet_v2 \
        --table latency_tables/mobilenet_v2.json --batch 8
"""
from __future__ import annotations

import argparse
import collections
import copy
import tempfile
from pathlib import Path

import torch
import torchvision
from torch import nn

import pruneconf
from pruneconf.analysis.costs import node_macs
from pruneconf.cli import main as cli
from pruneconf.explore.latency_table import Predictor, select_table
from pruneconf.recipe.load import load_recipe
from pruneconf.trace.fingerprint import fingerprint


def kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return "depthwise conv"
        return "1x1 conv" if module.kernel_size == (1, 1) else "kxk conv" + (" (grouped)" if module.groups > 1 else "")
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)) or "Norm" in type(module).__name__:
        return "norm"
    if isinstance(module, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Sigmoid, nn.Hardsigmoid)):
        return "activation"
    return type(module).__name__


def breakdown(name: str, table_path: str, batch: int, target: list[str]) -> list[str]:
    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(batch, 3, 224, 224)
    dense_graph = pruneconf.trace(model, x)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "r.yaml"
        code = cli(["-q", "init", f"torchvision.models:{name}", "--input-shape", f"{batch},3,224,224", "-o",
                    str(recipe), "--latency-table", table_path, "--latency-refine", "0", *target])
        assert code == 0, f"init exited {code}"
        pruned = copy.deepcopy(model).train()
        pruner = pruneconf.Pruner(pruned, x, load_recipe(recipe))
    table = select_table(table_path, fingerprint(pruner.graph), batch)
    plan = pruner.apply_masks()  # raises unless masked == applied
    kept = {center: len(indices) for center, indices in plan.kept.items()}
    pruned_graph = pruneconf.trace(pruned.eval(), x)
    predictor = Predictor(table)
    rows: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for unit, ms in table.units.items():
        row = rows[kind(model.get_submodule(dense_graph.nodes[unit].get("module", unit)))]
        row[0] += predictor.scale * ms
        row[1] += predictor.unit_ms(unit, kept)
        row[2] += node_macs(dense_graph, unit)
        row[3] += node_macs(pruned_graph, unit) if unit in pruned_graph else 0
    rows["untimed rest (adds, SE scales, ...)"] = [predictor.rest, predictor.rest, 0, 0]
    dense_ms, dense_macs = predictor.ms({}), sum(r[2] for r in rows.values())
    lines = [f"{name}, batch {batch}, {table.setup.key}: plan keeps {predictor.ms(kept) / dense_ms:.3f} of the "
             f"time (predicted), {sum(r[3] for r in rows.values()) / dense_macs:.3f} of the MACs",
             "| kind | share of dense time | share of dense MACs | time kept | MACs kept |",
             "|---|---:|---:|---:|---:|"]
    for label, (t0, t1, m0, m1) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"| {label} | {t0 / dense_ms:.3f} | {m0 / dense_macs:.3f} | {t1 / t0 if t0 else 1:.2f} | "
                     f"{'' if not m0 else f'{m1 / m0:.2f}'} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--table", required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--target-macs", type=float, help="plan a MAC budget on the table instead of a latency target")
    p.add_argument("--target-latency", type=float, default=0.5)
    args = p.parse_args()
    target = ["--target-macs", str(args.target_macs)] if args.target_macs else \
        ["--target-latency", str(args.target_latency)]
    print("\n".join(breakdown(args.model, args.table, args.batch, target)))


if __name__ == "__main__":
    main()
