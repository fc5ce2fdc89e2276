"""Peak memory of a shard-streamed prune: a random Llama-shaped checkpoint of ~1.1 B
parameters (bf16, shards of at most 500 MB) pruned at sparsity 0.25.

    PYTHONPATH=$PWD python benchmarks/stream_prune.py /tmp/stream-bench

Writes the config, the checkpoint and the recipe under the folder (~2.2 GB), then runs
``pruneconf prune`` and a bare ``import`` of what it imports under ``/usr/bin/time -v`` and
prints wall time and peak RSS of each, with the largest shard's size.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import torch

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 2048,
          "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
          "vocab_size": 32000, "max_position_embeddings": 2048}
SHARD_BYTES = 500_000_000
BASELINE = "import pruneconf.cli, pruneconf.stream, pruneconf.pruner, transformers, torchvision, safetensors.torch"


def write_checkpoint(folder: Path) -> None:
    """Random bf16 tensors of the model's shapes, shard by shard (never the whole model)."""
    from pruneconf.models import build_model
    from pruneconf.stream.checkpoint import write_index, write_safetensors

    model = build_model(str(folder / "config.json"), device="meta")
    shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    shards, current, size = [], [], 0
    for name, shape in shapes.items():
        nbytes = 2 * int(torch.tensor(shape).prod()) if shape else 2
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    shards.append(current)
    files, total, gen = {}, 0, torch.Generator().manual_seed(0)
    for i, names in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        entries = [(n, shapes[n], "BF16") for n in names]
        total += write_safetensors(folder / "ckpt" / file, entries,
                                   lambda n: (torch.randn(shapes[n], generator=gen) * 0.02).bfloat16(),
                                   {"format": "pt"})
        files.update(dict.fromkeys(names, file))
    write_index(folder / "ckpt" / "model.safetensors.index.json", files, total)


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of ``argv`` under ``/usr/bin/time -v``."""
    done = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    seconds = int(wall[1] or 0) * 3600 + int(wall[2]) * 60 + float(wall[3])
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    return seconds, rss / 1e6


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    if not (folder / "ckpt" / "model.safetensors.index.json").exists():
        (folder / "ckpt").mkdir(exist_ok=True)
        write_checkpoint(folder)
    recipe = folder / "recipe.yaml"
    py = sys.executable
    subprocess.run([py, "-m", "pruneconf", "-q", "init", str(folder / "config.json"), "--input-shape",
                    "input_ids=1,16:long", "--sparsity", "0.25", "-o", str(recipe)], check=True)
    shards = sorted((folder / "ckpt").glob("*.safetensors"))
    params = sum(int(torch.tensor(s).prod()) for s in _shapes(folder))
    print(f"checkpoint: {params / 1e9:.2f} B parameters, {len(shards)} shards, "
          f"{sum(s.stat().st_size for s in shards) / 1e9:.2f} GB, largest {max(s.stat().st_size for s in shards) / 1e9:.3f} GB")
    wall, rss = timed([py, "-c", BASELINE])
    print(f"baseline (imports only): {wall:.1f} s, peak RSS {rss:.2f} GB")
    wall, rss = timed([py, "-m", "pruneconf", "-q", "prune", str(recipe), "--weights", str(folder / "ckpt"),
                       "-o", str(folder / "pruned"), "--force"])
    out = sorted((folder / "pruned").glob("*.safetensors"))
    print(f"streamed prune at 0.25: {wall:.1f} s, peak RSS {rss:.2f} GB, wrote {len(out)} shards "
          f"{sum(s.stat().st_size for s in out) / 1e9:.2f} GB")


def _shapes(folder: Path):
    from pruneconf.stream.checkpoint import Checkpoint

    checkpoint = Checkpoint.open(folder / "ckpt")
    return [checkpoint.shape(n) for n in checkpoint.files]


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/stream-bench"))
