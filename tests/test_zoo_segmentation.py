"""Every torchvision segmentation model (with its auxiliary head) pruned at 0.5 at 64 px.

Masked and applied models must agree (``apply_masks`` raises otherwise), every output keeps
its shape, sparsity 0 gives the original bit for bit, and the groups left whole and the MACs
cut are the pinned ones (``zoo_pins.PINS``): see ``helpers.check_pruning``.
"""
import pytest
import torch

from helpers import check_pruning
from zoo_models import SEGMENTATION, segmentation_model

SLOW = {"deeplabv3_resnet101", "fcn_resnet101"}


def test_the_zoo_is_complete():
    assert len(SEGMENTATION) == 6


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in SEGMENTATION])
def test_segmentation_model(name):
    torch.manual_seed(0)
    check_pruning(*segmentation_model(name), f"segmentation:{name}")
