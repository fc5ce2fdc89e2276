"""Run by tests/test_ddp.py under torchrun: finetune a masked model with DDP, then apply."""
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import pruneconf


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(100 + rank)  # different initial weights on purpose: DDP broadcasts rank 0's
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 4))
    ddp = DistributedDataParallel(model)  # broadcasts parameters and buffers from rank 0
    example = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    pruner = pruneconf.Pruner(ddp.module, example, {"sparsity": 0.5})
    masks = pruner.register_masks()  # same weights on every rank -> same masks
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(rank)
    for _ in range(5):
        x, y = torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 4, (8,), generator=gen)
        optimizer.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        optimizer.step()
    params = dict(ddp.module.named_parameters())
    zero = all(not (params[n] * (1 - m)).any() for n, m in masks.masks.items())
    torch.save({name: m for name, m in masks.masks.items()}, f"{out_dir}/masks{rank}.pt")
    pruner.apply_masks()  # on the unwrapped module
    torch.save({"state": ddp.module.state_dict(), "zero": zero}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
