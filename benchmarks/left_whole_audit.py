"""The "left whole" audit: for every model of torchvision's classification, segmentation,
detection, video and optical-flow zoos, plus YOLO (ultralytics) and diffusers UNets, the
share of MACs pruning at 0.5 removes, and every group it leaves whole with the reason,
weakest cut first.

Each model (``tests/zoo_models.py``) is built untrained, its BatchNorm statistics
calibrated on the example (only the norms in train mode for detectors, which want targets
in train mode), and pruned with ``Pruner(model, x, {"sparsity": 0.5}).apply_masks()``, which
checks masked ≡ applied. MACs are ``pruneconf.analysis.total_macs`` of the traced model
before and after. Groups left whole are ``helpers.left_whole``'s: not prunable (the first
reason), skipped, dropped by the dry run, or too small, each with the line of the model's
code it happened at when the trace knows it. Groups pruned by less than asked (more than 55 %
of their channels kept: whole heads, a share the dry run settled on) are listed too, with the
lines that fix their step (``helpers.pruned_less``). A model that fails is a row too,
first in the table, and makes the exit status 1.

    PYTHONPATH=$PWD python benchmarks/left_whole_audit.py                       # everything (hours here)
    PYTHONPATH=$PWD python benchmarks/left_whole_audit.py --sources detection,yolo,unet
    PYTHONPATH=$PWD python benchmarks/left_whole_audit.py --models 'keypointrcnn*,yolo*' -o audit.md
    PYTHONPATH=$PWD python benchmarks/left_whole_audit.py --sources classification --skip 'vit_h_14,vit_l_*'
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import fnmatch
import logging
import os
import sys
import time
from typing import Any, Callable

import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from helpers import calibrated, left_whole, pruned_less  # noqa: E402
from pruneconf import Pruner, trace  # noqa: E402
from pruneconf.analysis import total_macs  # noqa: E402
from pruneconf.recipe import write_atomic  # noqa: E402
from pruneconf.table import format_table  # noqa: E402
from zoo_models import (DETECTION, OPTICAL_FLOW, SEGMENTATION, TIMM, TIMM_AUDIT, VIDEO, YOLO,  # noqa: E402
                        detection_model, flow_model, segmentation_model, timm_model, torchvision_model,
                        unet2d_model, unet_model, video_model, yolo_model)

SOURCES = ("classification", "segmentation", "detection", "video", "optical_flow", "yolo", "unet", "timm")


@dataclasses.dataclass
class Entry:
    source: str
    name: str
    build: Callable[[], tuple[torch.nn.Module, Any]]
    norms_only: bool = False  # calibrate only the norms in train mode (detectors)


def entries() -> list[Entry]:
    classification = torchvision.models.list_models(module=torchvision.models)
    return [
        *(Entry("classification", n, lambda n=n: torchvision_model(n)) for n in classification),
        *(Entry("segmentation", n, lambda n=n: segmentation_model(n)) for n in SEGMENTATION),
        *(Entry("detection", n, lambda n=n: detection_model(n), norms_only=True) for n in DETECTION),
        *(Entry("video", n, lambda n=n: video_model(n)) for n in VIDEO),
        *(Entry("optical_flow", n, lambda n=n: flow_model(n)) for n in OPTICAL_FLOW),
        *(Entry("yolo", n, lambda n=n: yolo_model(n)) for n in sorted(YOLO)),
        Entry("unet", "UNet2DConditionModel", unet_model),
        Entry("unet", "UNet2DModel", unet2d_model),
        *(Entry("timm", e.name, lambda e=e: timm_model(e)) for e in TIMM + TIMM_AUDIT),
    ]


@dataclasses.dataclass
class Row:
    entry: Entry
    cut: float | None = None  # share of MACs removed; None when the model failed
    macs: int = 0
    groups: int = 0
    whole: dict[str, str] = dataclasses.field(default_factory=dict)
    less: dict[str, str] = dataclasses.field(default_factory=dict)  # pruned, but by less than asked
    error: str = ""
    seconds: float = 0.0


def audit(entry: Entry) -> Row:
    torch.manual_seed(0)
    model, x = entry.build()
    model = calibrated(model, x, entry.norms_only)
    before = total_macs(trace(model, x))
    pruner = Pruner(model, x, {"sparsity": 0.5})
    pruner.apply_masks()  # raises VerificationError unless masked == applied
    after = total_macs(trace(model, x))
    return Row(entry, 1 - after / before, before, len(pruner.groups), left_whole(pruner, lines=True),
               pruned_less(pruner, 0.5))


def reasons_cell(whole: dict[str, str]) -> str:
    """Every group left whole, gathered by reason, most frequent reason first."""
    by_reason: dict[str, list[str]] = collections.defaultdict(list)
    for group, reason in whole.items():
        by_reason[reason].append(group)
    ordered = sorted(by_reason.items(), key=lambda item: -len(item[1]))
    return "; ".join(f"{reason} ×{len(groups)}: {', '.join(f'`{g}`' for g in groups)}"
                     for reason, groups in ordered) or "-"


def less_cell(less: dict[str, str]) -> str:
    """Every group pruned by less than asked, with how many channels it keeps and why."""
    return "; ".join(f"`{group}` {why}" for group, why in less.items()) or "-"


def table(rows: list[Row]) -> str:
    rows = sorted(rows, key=lambda r: (r.cut is not None, r.cut or 0.0, r.entry.name))
    cells = [[r.entry.name, r.entry.source, f"{r.macs / 1e6:,.1f}M" if r.macs else "-",
              f"{100 * r.cut:.1f}%" if r.cut is not None else "FAILED",
              str(r.groups) if r.cut is not None else "-", str(len(r.whole)) if r.cut is not None else "-",
              reasons_cell(r.whole) if r.cut is not None else r.error,
              less_cell(r.less) if r.cut is not None else "-"]
             for r in rows]
    headers = ["model", "source", "MACs", "MACs cut at 0.5", "groups", "left whole", "groups left whole, by reason",
               "groups pruned less than asked"]
    return format_table(headers, cells, numeric=[False, False, True, True, True, True, False, False])


def chosen(args: argparse.Namespace) -> list[Entry]:
    sources = {s.strip() for s in args.sources.split(",") if s.strip()}
    patterns, skipped = ([p.strip() for p in text.split(",") if p.strip()] for text in (args.models, args.skip))
    unknown = sources - set(SOURCES)
    if unknown:
        raise SystemExit(f"unknown --sources {sorted(unknown)}; choose from {', '.join(SOURCES)}")
    return [e for e in entries() if (not sources or e.source in sources)
            and (not patterns or any(fnmatch.fnmatchcase(e.name, p) for p in patterns))
            and not any(fnmatch.fnmatchcase(e.name, p) for p in skipped)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", default="", help=f"comma-separated, from {', '.join(SOURCES)}; default all")
    parser.add_argument("--models", default="", help="comma-separated name patterns (fnmatch), e.g. 'resnet*,yolo*'")
    parser.add_argument("--skip", default="", help="comma-separated name patterns to leave out, e.g. 'vit_h_14,regnet_y_128gf'")
    parser.add_argument("-o", "--output", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    logging.getLogger("pruneconf").setLevel(logging.ERROR)
    todo = chosen(args)
    if not todo:
        parser.error("no model matches --sources/--models")
    rows, start = [], time.perf_counter()
    for entry in todo:
        t = time.perf_counter()
        try:
            row = audit(entry)
        except Exception as exc:  # noqa: BLE001 - a failing model is a row, and a non-zero exit
            row = Row(entry, error=f"{type(exc).__name__}: {str(exc)[:160]}")
        row.seconds = time.perf_counter() - t
        rows.append(row)
        cut = f"{100 * row.cut:.1f}%" if row.cut is not None else "FAILED"
        print(f"{entry.source}/{entry.name}: {cut} in {row.seconds:.0f}s", file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    if args.output:
        write_atomic(args.output, text + "\n")
    failed = sum(r.cut is None for r in rows)
    print(f"\n{len(rows)} models in {time.perf_counter() - start:.0f}s; {failed} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
