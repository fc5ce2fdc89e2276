"""Several timm families (see ``zoo_models.TIMM``), built with ``pretrained=False`` and pruned
at 0.5: masked ≡ applied, output shapes unchanged, sparsity 0 ≡ original
(``helpers.check_pruning``), groups left whole and MACs cut as ``zoo_pins.PINS`` pins them.
timm is a test dependency: without it these tests fail, never skip.
"""
import pytest
import timm  # noqa: F401 - imported plainly: a broken timm must fail the run, not skip 26 cases
import torch

from helpers import check_pruning
from zoo_models import TIMM, timm_model

SLOW = {"swin_tiny_patch4_window7_224", "efficientformer_l1", "cspresnet50", "res2net50_26w_4s"}


@pytest.mark.parametrize("entry", [pytest.param(e, marks=pytest.mark.slow) if e.name in SLOW else e for e in TIMM],
                         ids=[e.name for e in TIMM])
def test_timm_model(entry):
    torch.manual_seed(0)
    check_pruning(*timm_model(entry), f"timm:{entry.name}")
