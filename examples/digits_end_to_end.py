"""End to end on real data: train, write a recipe, prune 50 % with masks, finetune, apply.

    python examples/digits_end_to_end.py [--epochs 30] [--finetune-epochs 10] [--quiet]

Uses ``sklearn.datasets.load_digits`` (8x8 handwritten digits shipped inside scikit-learn:
nothing is downloaded). Prints accuracy and MACs of the dense model, the masked model before
and after finetuning, and the applied (physically smaller) model; the last two are identical.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from tqdm import tqdm

import pruneconf
from pruneconf.analysis import total_macs
from pruneconf.recipe import write_atomic, write_recipe
from pruneconf.table import format_table


def data(seed: int = 0) -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(x))
    return x[order[:split]], y[order[:split]], x[order[split:]], y[order[split:]]


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, desc: str,
          quiet: bool) -> None:
    """SGD with momentum and weight decay; build the optimizer after masks are registered."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    gen = torch.Generator().manual_seed(1)
    for _ in tqdm(range(epochs), desc=desc, disable=quiet or not sys.stderr.isatty()):
        for batch in torch.randperm(len(x), generator=gen).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x).argmax(1)


def run(epochs: int = 30, finetune_epochs: int = 10, quiet: bool = False, workdir: str | None = None) -> dict:
    """The whole flow; returns accuracies, MACs and whether applied == masked predictions."""
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = data()
    example = x_train[:2]
    model = small_cnn()
    train(model, x_train, y_train, epochs, 0.05, "dense", quiet)
    rows, results = [], {}

    def record(stage: str, predictions: torch.Tensor) -> None:
        accuracy = float((predictions == y_test).float().mean()) * 100
        macs = total_macs(pruneconf.trace(model, example))
        rows.append([stage, f"{accuracy:.2f}%", f"{macs:,}"])
        results[stage] = (accuracy, macs)

    record("dense", predict(model, x_test))
    recipe = Path(workdir or tempfile.mkdtemp()) / "digits.yaml"
    groups = pruneconf.find_groups(pruneconf.trace(model, example))
    write_atomic(recipe, write_recipe(recipe, groups, model="examples/digits_end_to_end.py:small_cnn",
                                      input_shapes=[list(example.shape)]))
    pruner = pruneconf.Pruner(model, example, str(recipe))  # default_sparsity 0.5
    pruner.register_masks()
    record("masked, before finetune", predict(model, x_test))
    train(model, x_train, y_train, finetune_epochs, 0.02, "finetune", quiet)
    masked = predict(model, x_test)
    record("masked, after finetune", masked)
    pruner.apply_masks()
    applied = predict(model, x_test)
    record("applied", applied)
    results["identical"] = bool(torch.equal(applied, masked))
    results["table"] = format_table(["model", "test accuracy", "MACs"], rows, numeric=[False, True, True])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    results = run(args.epochs, args.finetune_epochs, args.quiet)
    print(results["table"])
    print(f"applied predictions identical to masked: {results['identical']}")


if __name__ == "__main__":
    main()
