"""``pruneconf prune RECIPE --weights CKPT -o DIR``: the streamed prune of a safetensors
checkpoint (one file, or shards with their index) into a directory, model on meta."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ..errors import ConfigError
from .common import recipe_model, refuse_outputs
from .targets import plan_document

log = logging.getLogger("pruneconf")

APPLIED = "recipe.yaml"  # the applied recipe, inside the output directory


def is_streamed(args: argparse.Namespace) -> bool:
    """The output is a directory: one that exists, a path ending in a separator, or a path
    without a suffix for sharded weights (a directory or an index JSON)."""
    from ..stream import is_sharded

    output = args.output
    if Path(output).is_dir() or output.endswith(("/", os.sep)):
        return True
    return bool(args.weights) and is_sharded(args.weights) and not Path(output).suffix


def log_costs(pruned: int, before: dict, after: dict) -> None:
    log.info("pruned %d groups: MACs %s -> %s (%+.2f%%), params %s -> %s (%+.2f%%)", pruned,
             f"{before['macs']:,}", f"{after['macs']:,}", 100 * (after["macs"] / before["macs"] - 1),
             f"{before['params']:,}", f"{after['params']:,}", 100 * (after["params"] / before["params"] - 1))


def _outputs(checkpoint) -> list[str]:
    names = [*checkpoint.shards(), APPLIED]
    if checkpoint.source.endswith(".index.json"):
        names.append(Path(checkpoint.source).name)
    return names


def cmd_prune_streamed(args: argparse.Namespace) -> int:
    from ..report import build_report, format_report
    from ..pruner import Pruner
    from ..recipe import load_document, write_atomic
    from ..masks.applied import applied_section
    from ..recipe.yamlio import dump_document
    from ..stream import Checkpoint, pruned_costs
    from ..stream.prune import plan_streamed, write_pruned

    if not args.weights:
        raise ConfigError("pruning into a directory streams a safetensors checkpoint: give --weights (a "
                          ".safetensors file, a directory of shards or its index JSON)", key="--weights")
    output = Path(args.output)
    checkpoint = Checkpoint.open(args.weights)
    if output.resolve() == checkpoint.root.resolve():
        raise ConfigError("is the checkpoint's own directory; choose another output", path=str(output),
                          key="--output")
    refuse_outputs(output, _outputs(checkpoint), args.force)
    doc = load_document(args.recipe)
    recipe = plan_document(doc, args, None, lambda r: Pruner(*recipe_model(r, args, "meta"), r))
    model, inputs = recipe_model(recipe, args, "meta")
    streamed = plan_streamed(model, inputs, recipe, checkpoint)
    write_pruned(streamed, output)
    doc["applied"] = applied_section(streamed.plan)
    write_atomic(output / APPLIED, dump_document(doc))
    print(format_report(build_report(streamed.groups, streamed.plan, recipe)))
    log_costs(len(streamed.plan.kept), *pruned_costs(streamed, inputs))
    log.info("wrote %s (%.1f MB of tensor data read) and %s", output, checkpoint.bytes_read / 1e6, output / APPLIED)
    return 0
