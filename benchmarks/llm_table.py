"""The README's language-model table: what pruneconf prunes in each transformers family.

One row per family of ``tests/llm_models.py`` (tiny random configs: 2 layers, hidden 64,
4 query heads over 2 key/value heads where the family has grouped-query attention,
intermediate 128, vocabulary 128; mixture-of-experts models with 4 experts of 32 channels,
top-2, MACs of the active path; nothing downloaded), pruned with
``Pruner(model, inputs, {"sparsity": 0.5})``, ``register_masks()``, ``apply_masks()``.

Columns: groups found; groups pruned; groups left whole with their first reason (the
output layer's "reaches the model output" is expected); MACs before and after
(``pruneconf.analysis.total_macs`` of the traced model); exact: ``apply_masks`` verified that
the shrunk model computes the masked model's outputs; generate: greedy ``generate()`` with the
key/value cache gives the same tokens from the masked and the shrunk model.

    PYTHONPATH=$PWD python benchmarks/llm_table.py
    PYTHONPATH=$PWD python benchmarks/llm_table.py --families llama,t5
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from llm_models import BY_NAME, FAMILIES, MOE_FAMILIES, Family, generate  # noqa: E402
from pruneconf import Pruner, trace  # noqa: E402
from pruneconf.analysis import total_macs  # noqa: E402
from pruneconf.errors import PruneconfError  # noqa: E402
from pruneconf.table import format_table  # noqa: E402

HEADERS = ["family", "groups", "pruned", "left whole (why)", "MACs before", "MACs after", "change",
           "exact", "generate identical"]


def whole_groups(pruner: Pruner) -> str:
    """Each group left whole, with the first reason (shortened to its cause)."""
    reasons = {g.center: g.reasons[0] for g in pruner.groups if not g.prunable}
    reasons.update(pruner.skipped())
    reasons.update(pruner.dropped)
    return "; ".join(f"{center}: {why.split(' at ')[0]}" for center, why in reasons.items()) or "none"


def row(family: Family) -> list:
    model, inputs = family.build()
    before = total_macs(trace(model, inputs))
    pruner = Pruner(model, inputs, {"sparsity": 0.5})
    pruner.register_masks()
    masked = generate(family, model, inputs)
    try:
        pruner.apply_masks()
        exact = "yes"
    except PruneconfError as exc:
        logging.getLogger("llm_table").warning("%s: %s", family.name, exc)
        exact = "no"
    after = total_macs(trace(model, inputs))
    same = "yes" if torch.equal(generate(family, model, inputs), masked) else "no"
    pruned = len(pruner.applied.kept) if pruner.applied is not None else 0
    return [family.name, len(pruner.groups), pruned, whole_groups(pruner), f"{before:,}", f"{after:,}",
            f"{after / before - 1:+.1%}", exact, same]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(f.name for f in FAMILIES + MOE_FAMILIES),
                        help="comma-separated families (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    rows = [row(BY_NAME[name]) for name in args.families.split(",")]
    sys.stdout.write(format_table(HEADERS, rows, numeric=[False, True, True, False, True, True, True, False, False]) + "\n")


if __name__ == "__main__":
    main()
