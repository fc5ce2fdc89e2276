"""TinyNeuralNetwork's one-shot pruning tutorial, with only the import changed.

    python examples/oneshot_mobilenet_v2.py

Prints the FLOPs before and after (tutorial convention, see README) and each layer change.
"""
import logging

import torch
import torchvision

from pruneconf import OneShotChannelPruner


def main() -> tuple[int, int]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = torchvision.models.mobilenet_v2()
    model.train()
    dummy_input = torch.randn(1, 3, 224, 224)
    pruner = OneShotChannelPruner(model, dummy_input, config={"sparsity": 0.25, "metrics": "l2_norm"})
    st_flops = pruner.calc_flops()
    pruner.prune()
    ed_flops = pruner.calc_flops()
    print(f"Pruning over, reduced FLOPS {100 * (st_flops - ed_flops) / st_flops:.2f}%  ({st_flops} -> {ed_flops})")
    return st_flops, ed_flops


if __name__ == "__main__":
    main()
