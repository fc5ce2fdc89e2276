"""Masks under FSDP2 (``fully_shard``): two CPU processes (gloo) launched with torchrun."""
import pytest
import torch

from pruneconf import Pruner
from pruneconf.errors import PruneconfError

from helpers import torchrun_ranks


def test_masks_hold_on_every_shard_and_every_rank_applies_the_same_model(tmp_path):
    ranks = torchrun_ranks("fsdp_worker.py", tmp_path)
    for r in ranks:  # each rank held a shard; its pruned slices and AdamW moments stayed exactly zero
        assert r["zero"] == {"weights": True, "moments": True, "sharded": True}
        assert r["trained"]
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["0.weight"].shape == (8, 3, 3, 3) and a["7.weight"].shape == (4, 8)


@pytest.fixture
def one_rank():
    """A one-process gloo group: enough for FSDP2 to turn parameters into DTensors."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _mlp(width: int = 8) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.ReLU(), torch.nn.Linear(width, 2))


def test_a_sharded_model_is_refused_with_the_route_to_follow(one_rank):
    from torch.distributed.fsdp import fully_shard

    model = _mlp()
    pruner = Pruner(model, torch.randn(2, 4), {"sparsity": 0.5})
    fully_shard(model)
    with pytest.raises(PruneconfError, match=r"make its plan \(pruner.plan\(\)\) before fully_shard"):
        pruner.register_masks()
    with pytest.raises(PruneconfError, match="make its plan"):
        Pruner(model, torch.randn(2, 4))
    with pytest.raises(PruneconfError, match=r"pruner.gather\(unsharded_model\)"):
        pruner.apply_masks()


def test_gather_needs_a_twin_of_the_sharded_model(one_rank):
    from torch.distributed.fsdp import fully_shard

    model = _mlp()
    pruner = Pruner(model, torch.randn(2, 4), {"sparsity": 0.5})
    pruner.plan()
    fully_shard(model)
    pruner.register_masks()
    with pytest.raises(PruneconfError, match=r"unsharded model's 0.weight is \(16, 4\), the sharded model's is \(8, 4\)"):
        pruner.gather(_mlp(16))
    with pytest.raises(PruneconfError, match=r"lacks \['2.bias'\]"):
        pruner.gather(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2, bias=False)))
    plain = pruner.gather(_mlp())
    pruner.apply_masks()
    assert plain[0].out_features == 4 and plain[2].in_features == 4
