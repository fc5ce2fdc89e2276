"""torchvision's detectors (Faster, Mask and Keypoint R-CNN, RetinaNet, FCOS, SSD, SSDlite),
pruned exactly in eval mode: ``helpers.check_pruning`` with the norms calibrated alone (a
detector in train mode wants targets), then the boxes and scores of the masked and the
applied model compared by name. Counts of proposals and detections are fixed
(``zoo_models.detection_model``), so both models keep the same boxes. One two-stage and one
one-stage detector run by default; the slow run prunes every detector.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import check_pruning, prune_exactly
from zoo_models import DETECTION, detection_model

DEFAULT = ["fasterrcnn_mobilenet_v3_large_320_fpn", "fcos_resnet50_fpn"]


def check_detector(name: str) -> None:
    model, x = detection_model(name)
    with torch.no_grad():
        keys = list(model(*x)[0])
    pruned = check_pruning(model, x, f"torchvision.detection:{name}", norms_only=True)
    masked, applied = dict(zip(keys, pruned.masked)), dict(zip(keys, pruned.applied))
    assert {"boxes", "scores"} <= set(keys) and len(masked["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(applied[key], masked[key], atol=1e-5 * max(1.0, float(masked[key].abs().max())),
                                   rtol=0)


def test_the_detection_zoo_is_complete():
    assert len(DETECTION) == 12 and set(DEFAULT) <= set(DETECTION)


@pytest.mark.parametrize("name", DEFAULT)
def test_detector(name):
    check_detector(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(DETECTION) - set(DEFAULT)))
def test_every_detector(name):
    check_detector(name)


class L2Norm(nn.Module):
    """SSD's conv4_3 branch: conv, ReLU, a learned scale times the L2-normalised channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.full((8,), 20.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.scale.view(1, -1, 1, 1) * F.normalize(F.relu(self.conv(x))))


def test_l2_normalised_channels_prune_exactly():
    """The norm over channels is exact because the pruned ones arrive as zeros (noted
    ``masked_contraction``, so only masked ≡ applied can check it)."""
    pruned = prune_exactly(L2Norm(), torch.randn(2, 3, 8, 8))
    assert pruned.pruner.plan().kept["conv"].size == 4
