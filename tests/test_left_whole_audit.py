"""The "left whole" audit's core: one model audited, rows sorted weakest first, failures first."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import load_benchmark


@pytest.fixture(scope="module")
def audit():
    return load_benchmark("left_whole_audit")


def tiny() -> tuple[nn.Module, torch.Tensor]:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)), torch.randn(2, 3, 8, 8)


def test_a_model_row_lists_every_group_left_whole(audit):
    row = audit.audit(audit.Entry("test", "tiny", tiny))
    assert row.cut > 0 and row.groups == 2 and row.whole == {"3": "reaches the model output"}
    assert audit.reasons_cell(row.whole) == "reaches the model output ×1: `3`"


def test_the_table_puts_failures_then_the_weakest_cuts_first(audit):
    rows = [audit.Row(audit.Entry("test", "strong", tiny), 0.75), audit.Row(audit.Entry("test", "weak", tiny), 0.2),
            audit.Row(audit.Entry("test", "x", tiny), error="RuntimeError: boom")]
    names = [line.split("|")[1].strip() for line in audit.table(rows).splitlines()[2:]]
    assert names == ["x", "weak", "strong"]


def test_sources_and_patterns_choose_the_models(audit):
    args = audit.argparse.Namespace(sources="detection", models="keypoint*", skip="")
    assert [e.name for e in audit.chosen(args)] == ["keypointrcnn_resnet50_fpn"]
    args = audit.argparse.Namespace(sources="yolo", models="", skip="*seg")
    assert [e.name for e in audit.chosen(args)] == ["yolo11n", "yolov8n"]
    args = audit.argparse.Namespace(sources="timm", models="eva*,mixnet*", skip="")
    assert [e.name for e in audit.chosen(args)] == ["mixnet_s", "mixnet_m", "eva02_tiny_patch14_224",
                                                    "eva02_small_patch14_224"]
    with pytest.raises(SystemExit, match="unknown --sources"):
        audit.chosen(audit.argparse.Namespace(sources="bogus", models="", skip=""))
