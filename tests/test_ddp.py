"""Masks under DistributedDataParallel: two CPU processes (gloo) launched with torchrun."""
import os
import subprocess
import sys
from pathlib import Path

import torch


def test_masks_survive_ddp_and_every_rank_applies_the_same_model(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(worker), str(tmp_path)], capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    masks = [torch.load(tmp_path / f"masks{r}.pt", weights_only=True) for r in range(2)]
    assert masks[0].keys() == masks[1].keys() and all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    assert ranks[0]["zero"] and ranks[1]["zero"]  # pruned channels stayed exactly zero through DDP's all-reduce
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["0.weight"].shape[0] == 8 and a["7.weight"].shape == (4, 8)
