"""Benchmark: does analysis (trace + groups) stay near-linear on very deep or wide graphs?

    python benchmarks/analysis_scaling.py

Three families, each at growing size: a deep MLP (up to 2,000 Linear layers), a chain of
concatenations (DenseNet-style growth, up to 800 cats) and torchvision DenseNets. For each
size it prints graph nodes, analysis time, microseconds per node and the ratio to a plain
forward pass; near-linear scaling shows as a flat µs/node column.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torchvision
from torch import nn

import pruneconf
from pruneconf.table import format_table


class DeepMLP(nn.Module):
    def __init__(self, depth: int, width: int = 64) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


class CatChain(nn.Module):
    """``x = cat([x, conv(x)])`` repeated: every step concatenates all earlier channels."""

    def __init__(self, steps: int, growth: int = 2, start: int = 8) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(start + i * growth, growth, 1) for i in range(steps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.cat([x, conv(x)], 1)
        return x.mean((2, 3))


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, model: nn.Module, x: torch.Tensor, repeats: int) -> list[str]:
    model.eval()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def analyse() -> object:
        return pruneconf.find_groups(pruneconf.trace(model, x))

    nodes = pruneconf.trace(model, x).number_of_nodes()
    t_forward, t_analysis = median_time(forward, repeats), median_time(analyse, repeats)
    return [name, f"{nodes:,}", f"{t_analysis:.3f}", f"{1e6 * t_analysis / nodes:.0f}", f"{t_forward:.3f}",
            f"{t_analysis / t_forward:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [(f"mlp depth {d}", DeepMLP(d), torch.randn(8, 64)) for d in (250, 500, 1000, 2000)]
    cases += [(f"cat chain {n}", CatChain(n), torch.randn(1, 8, 4, 4)) for n in (100, 200, 400, 800)]
    cases += [(name, torchvision.models.get_model(name), torch.randn(1, 3, 224, 224))
              for name in ("densenet121", "densenet169", "densenet201")]
    rows = [measure(name, model, x, args.repeats) for name, model, x in cases]
    headers = ["graph", "nodes", "analysis (s)", "µs/node", "forward (s)", "analysis/forward"]
    print(format_table(headers, rows, numeric=[False] + [True] * 5))


if __name__ == "__main__":
    main()
