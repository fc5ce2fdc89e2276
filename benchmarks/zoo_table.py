"""The README's per-family table: what pruneconf finds and prunes in each model family.

One row per representative model (``tests/zoo_models.py``): the smallest member of every
torchvision classification family, every torchvision segmentation model (with its
auxiliary head) and one model per timm family. Each is built untrained, calibrated (one
train-mode pass so BatchNorm statistics are sane) and pruned with
``Pruner(model, x, {"sparsity": 0.5}).apply_masks()``, which checks masked ≡ applied.

Columns: groups found; groups pruned at 0.5; groups left whole, counted by reason (a
group's ``reasons`` when it is not prunable, ``Pruner.skipped()`` when pruneconf cannot
shrink it yet, ``Pruner.dropped`` when the dry run saw shrinking it break the model's code,
or too few channels to drop one); MACs before and after
(``pruneconf.analysis.total_macs`` of the traced model) and the reduction.

    PYTHONPATH=$PWD python benchmarks/zoo_table.py                 # everything, 64 px
    PYTHONPATH=$PWD python benchmarks/zoo_table.py --families timm,resnet --size 96
    PYTHONPATH=$PWD python benchmarks/zoo_table.py --headline      # issue 4's models, full size
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import os
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from helpers import calibrated, left_whole  # noqa: E402
from pruneconf import Pruner, trace  # noqa: E402
from pruneconf.analysis import total_macs  # noqa: E402
from pruneconf.table import format_table  # noqa: E402
from zoo_models import (HEADLINE, SEGMENTATION, TIMM, TORCHVISION_FAMILIES,  # noqa: E402
                        segmentation_model, timm_model, torchvision_model)


@dataclasses.dataclass
class Entry:
    source: str
    family: str
    name: str
    build: Callable[[int], tuple[torch.nn.Module, torch.Tensor]]


def entries() -> list[Entry]:
    out = [Entry("torchvision", fam, name, lambda size, n=name: torchvision_model(n, size))
           for fam, name in sorted(TORCHVISION_FAMILIES.items())]
    out += [Entry("segmentation", name.split("_")[0], name, lambda size, n=name: segmentation_model(n, size))
            for name in SEGMENTATION]
    out += [Entry("timm", e.family, e.name, lambda size, e=e: timm_model(e, size)) for e in TIMM]
    return out


def headline_entries() -> list[Entry]:
    """The models issue 4 names, each at its usual input size (``--size`` does not apply)."""
    return [Entry("headline", name.split("_")[0], name, lambda size, make=make: make())
            for name, make in HEADLINE.items()]


def measure(entry: Entry, size: int) -> list:
    torch.manual_seed(0)
    model, x = entry.build(size)
    model = calibrated(model, x)
    before = total_macs(trace(model, x))
    pruner = Pruner(model, x, {"sparsity": 0.5})
    pruner.apply_masks()  # raises VerificationError unless masked == applied
    after = total_macs(trace(model, x))
    reasons = collections.Counter(left_whole(pruner).values())
    text = "; ".join(f"{r} ×{n}" for r, n in reasons.most_common())
    return [len(pruner.groups), len(pruner.plan().kept), sum(reasons.values()), text or "-",
            f"{before / 1e6:.1f}M", f"{after / 1e6:.1f}M", f"{100 * (1 - after / before):.0f}%"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default="",
                        help="comma-separated sources (torchvision, segmentation, timm) or family names; default all")
    parser.add_argument("--size", type=int, default=64, help="input size where the model allows (default 64)")
    parser.add_argument("--headline", action="store_true",
                        help="only the models issue 4 names (ShuffleNetV2, Swin-T, ViT-B/16, ...), full size")
    args = parser.parse_args(argv)
    logging.getLogger("pruneconf").setLevel(logging.ERROR)
    wanted = {f.strip() for f in args.families.split(",") if f.strip()}
    pool = headline_entries() if args.headline else entries()
    chosen = [e for e in pool if not wanted or e.source in wanted or e.family in wanted or e.name in wanted]
    if not chosen:
        parser.error(f"no model matches --families {args.families!r}")
    rows, failed, start = [], 0, time.perf_counter()
    for entry in chosen:
        t = time.perf_counter()
        try:
            cells = measure(entry, args.size)
        except Exception as exc:  # noqa: BLE001 - a failing model is a row, and a non-zero exit
            failed += 1
            cells = ["-", "-", "-", f"FAILED: {type(exc).__name__}: {str(exc)[:120]}", "-", "-", "-"]
        rows.append([entry.source, entry.family, entry.name, *cells])
        print(f"{entry.name}: {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
    headers = ["source", "family", "model", "groups", "pruned", "left whole", "left whole because",
               "MACs", "MACs at 0.5", "MAC reduction"]
    print(format_table(headers, rows, numeric=[False, False, False, True, True, True, False, True, True, True]))
    print(f"\n{len(rows)} models at {args.size} px (fixed-size models at their own) in "
          f"{time.perf_counter() - start:.0f}s; {failed} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
