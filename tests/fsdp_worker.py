"""Run by tests/test_fsdp.py under torchrun: finetune a masked model sharded with FSDP2, then apply."""
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import fully_shard

import pruneconf


def build() -> nn.Module:
    """Odd channel counts, so FSDP2 shards unevenly (8 + 7 rows)."""
    torch.manual_seed(0)  # the same weights on every rank before sharding -> the same plan
    return nn.Sequential(nn.Conv2d(3, 15, 3, padding=1), nn.BatchNorm2d(15), nn.ReLU(),
                         nn.Conv2d(15, 15, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(15, 4))


def pruned_slices_zero(model: nn.Module, masks: dict, optimizer: torch.optim.Optimizer) -> dict:
    """On this rank's shards: pruned slices of each weight and of AdamW's moments are zero."""
    params = dict(model.named_parameters())
    out = {"weights": True, "moments": True, "sharded": True}
    for name, mask in masks.items():
        local, pruned = params[name].to_local(), 1 - mask.to_local()
        state = optimizer.state[params[name]]
        out["weights"] &= not (local * pruned).any()
        out["moments"] &= not any((state[k].to_local() * pruned).any() for k in ("exp_avg", "exp_avg_sq"))
        out["sharded"] &= local.shape[0] < params[name].shape[0]
    return out


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = build()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = pruneconf.Pruner(model, torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
                              {"sparsity": 0.5})
    pruner.plan()  # ranks channels by the whole weights, before sharding
    for layer in (model[0], model[3], model[7]):
        fully_shard(layer)
    fully_shard(model)
    # an L2-SP term pulls each shard toward its dense weights: pruned slices get real gradients
    anchors = {p: p.to_local().detach().clone() for p in model.parameters()}
    masks = pruner.register_masks()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    gen = torch.Generator().manual_seed(rank)
    for _ in range(5):
        x, y = torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 4, (8,), generator=gen)
        optimizer.zero_grad()
        anchoring = sum(((p.to_local() - a) ** 2).sum() for p, a in anchors.items())
        (F.cross_entropy(model(x), y) + 0.1 * anchoring).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    zero = pruned_slices_zero(model, masks.masks, optimizer)
    plain = pruner.gather(build())  # collective: every rank gathers the full weights
    trained = any(not torch.equal(dense[k], v) for k, v in plain.state_dict().items() if k.endswith("weight"))
    pruner.apply_masks()
    torch.save({"state": plain.state_dict(), "zero": zero, "trained": trained}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
