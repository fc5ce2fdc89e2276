"""Masks under DistributedDataParallel: two CPU processes (gloo) launched with torchrun."""
import torch

from helpers import torchrun_ranks


def test_masks_survive_ddp_and_every_rank_applies_the_same_model(tmp_path):
    ranks = torchrun_ranks("ddp_worker.py", tmp_path)
    masks = [torch.load(tmp_path / f"masks{r}.pt", weights_only=True) for r in range(2)]
    assert masks[0].keys() == masks[1].keys() and all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    assert ranks[0]["zero"] and ranks[1]["zero"]  # pruned channels stayed exactly zero through DDP's all-reduce
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["0.weight"].shape[0] == 8 and a["7.weight"].shape == (4, 8)
