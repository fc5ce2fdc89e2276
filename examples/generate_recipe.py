"""Phase one from Python: trace a model, inspect its channel groups, write a recipe.

    python examples/generate_recipe.py [output.yaml]
"""
import sys

import torch
import torchvision

import pruneconf
from pruneconf.analysis import group_costs, total_macs
from pruneconf.recipe import write_atomic, write_recipe
from pruneconf.table import format_table


def main(output: str = "resnet50.yaml") -> None:
    model = torchvision.models.resnet50(weights=None).eval()
    graph = pruneconf.trace(model, torch.randn(1, 3, 224, 224))
    groups = pruneconf.find_groups(graph)
    costs, macs = group_costs(groups), total_macs(graph)
    rows = [[g.center, g.channels, len(g.layers), f"{100 * costs[g.center].macs / macs:.1f}%"]
            for g in groups.prunable[:8]]
    print(format_table(["group", "channels", "layers", "MACs"], rows))
    print(f"... {len(groups.prunable)} prunable groups of {len(groups)}; not prunable:")
    for g in groups:
        if not g.prunable:
            print(f"  {g.center}: {g.reasons[0]}")
    write_atomic(output, write_recipe(output, groups, model="torchvision.models:resnet50",
                                      input_shapes=[[1, 3, 224, 224]]))
    print(f"wrote {output}")


if __name__ == "__main__":
    main(*sys.argv[1:])
