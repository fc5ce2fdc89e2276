"""torchvision's optical-flow models (RAFT) pruned at 0.5 on two 128 px frames, 3 refinement
steps (``zoo_models.flow_model``).

Masked and applied models must agree (``apply_masks`` raises otherwise), every output keeps
its shape, sparsity 0 gives the original bit for bit, and the groups left whole and the MACs
cut are the pinned ones (``zoo_pins.PINS``): see ``helpers.check_pruning``. raft_small's
context encoder output is split into hidden state and context, each keeping its own share
(:mod:`pruneconf.groups.pieces`).
"""
import pytest
import torch

from helpers import check_pruning
from zoo_models import OPTICAL_FLOW, flow_model



def test_the_zoo_is_complete():
    assert sorted(OPTICAL_FLOW) == ["raft_large", "raft_small"]


@pytest.mark.slow  # 7 s (raft_small) and 20 s (raft_large) here; the mechanism's fast test: test_weak_cuts_tv
@pytest.mark.parametrize("name", OPTICAL_FLOW)
def test_flow_model(name):
    torch.manual_seed(0)
    check_pruning(*flow_model(name), f"optical_flow:{name}")
