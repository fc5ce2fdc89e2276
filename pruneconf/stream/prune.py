"""Phase two without the model in memory: prune a safetensors checkpoint tensor by tensor.

The model's structure comes from the recipe's model built on the meta device (shapes, no
weights). Channel importance is computed from the checkpoint one tensor at a time (the
metrics read a mapping; here every lookup is a read from the shard), and each output
tensor is produced from the kept slices of its input, written, and dropped. What the
in-memory path does with the whole model, and how it is done here:

- **Ranking** reads the same weights, so it keeps the same channels.
- **Shrinking** is ``index_select`` of the kept positions, as :func:`pruneconf.apply.shrink`
  does. A layer with a resizer (``nn.MultiheadAttention`` rescales its query rows when its
  head dim shrinks) is rebuilt alone on the CPU from its kept slices and its resizer run,
  so what it changes in the weights is written too.
- **The dry run** that leaves whole the groups whose shrinking breaks the model's code runs
  on a meta copy: it finds every group whose shrunk model fails to run or changes the
  output shapes. A shrunk model that runs and keeps its shapes but computes something else
  (code that scales by a size it stored) can only be seen with values: that check, and
  apply's masked ≡ applied check, need the model in memory.
- **Size attributes** (``self.num_heads``) live in the model's code and config, not in the
  checkpoint; ``load_pruned`` sets them again from the applied recipe.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from ..analysis import total_macs, total_params
from ..apply import shrink, unsupported_groups
from ..apply.attributes import size_attribute_changes
from ..apply.resize import resizer_for
from ..apply.shrink import owner
from ..apply.dryrun import drop_breaking_groups
from ..apply.verify import kept_outputs, model_outputs
from ..errors import ConfigError
from ..groups import ChannelGroups, find_groups
from ..masks import PruningPlan, make_plan
from ..recipe.load import Recipe, check_against
from ..trace import trace
from .checkpoint import Checkpoint, shard_metadata, write_index, write_safetensors

log = logging.getLogger("pruneconf")

WEIGHT_METRICS = ("l1_norm", "l2_norm", "fpgm", "bn_gamma", "random")


class CheckpointTensors(Mapping[str, torch.Tensor]):
    """The model's parameters and persistent buffers by name, each read from the checkpoint
    when it is looked up. A tied parameter is found under any of its names."""

    def __init__(self, model: nn.Module, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.stored: dict[str, str] = {}      # model name -> the checkpoint's name for that tensor
        self.canonical: dict[str, str] = {}   # model or checkpoint name -> first name of the tensor
        self.unstored: set[str] = set()       # tensors the model has and the checkpoint cannot hold
        names: dict[int, list[str]] = {}
        for name, tensor in [*model.named_parameters(remove_duplicate=False),
                             *model.named_buffers(remove_duplicate=False)]:
            names.setdefault(id(tensor), []).append(name)
        persistent = set(model.state_dict(keep_vars=True))
        for aliases in names.values():
            found = [n for n in aliases if n in checkpoint.files]
            for name in aliases:
                self.canonical[name] = aliases[0]
                if found:
                    self.stored[name] = found[0]
                elif name in persistent:
                    raise ConfigError(f"does not fit the model: '{name}' is missing", path=checkpoint.source,
                                      key="weights")
                else:
                    self.unstored.add(name)
        self._check_names_and_shapes(model)

    def _check_names_and_shapes(self, model: nn.Module) -> None:
        state = model.state_dict(keep_vars=True)
        for name in self.checkpoint.files:
            if name not in state:
                raise ConfigError(f"does not fit the model: '{name}' is not a tensor of the model",
                                  path=self.checkpoint.source, key="weights")
            if tuple(state[name].shape) != self.checkpoint.shape(name):
                raise ConfigError(f"does not fit the model: '{name}' is {list(self.checkpoint.shape(name))} in "
                                  f"the checkpoint, {list(state[name].shape)} in the model",
                                  path=self.checkpoint.source, key="weights")

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self.unstored:
            raise ConfigError(f"ranking needs '{name}', a buffer the checkpoint does not hold (it is not "
                              "saved with the model); prune this model in memory", path=self.checkpoint.source,
                              key="weights")
        return self.checkpoint.read(self.stored[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self.stored)

    def __len__(self) -> int:
        return len(self.stored)


class ShapeDryRun:
    """The dry run on the meta device: shrink a copy of the model and run it. Without values,
    only a failure to run or changed output shapes can show."""

    def __init__(self, model: nn.Module, example: Any) -> None:
        self.model = copy.deepcopy(model).eval()
        self.example = example
        self.expected = model_outputs(self.model, example)  # meta tensors: shapes only

    def problem(self, plan: PruningPlan) -> str | None:
        expected = _signature(kept_outputs(self.expected, plan))
        done = shrink(self.model, plan, log_changes=False)
        try:
            got = _signature(model_outputs(self.model, self.example))
            return None if got == expected else "returns outputs of other shapes"
        except Exception as exc:  # noqa: BLE001 - a shrunk model that does not run is the finding
            return f"fails to run: {type(exc).__name__}: {exc}"
        finally:
            done.undo()


def _signature(outputs: list[torch.Tensor]) -> list[tuple]:
    return [(tuple(t.shape), t.dtype) for t in outputs]


@dataclasses.dataclass
class StreamedPlan:
    """What :func:`plan_streamed` decided, with what writing and reporting need."""

    model: nn.Module            # on the meta device
    groups: ChannelGroups
    plan: PruningPlan
    dropped: dict[str, str]
    tensors: CheckpointTensors


def plan_streamed(model: nn.Module, inputs: Any, recipe: Recipe, checkpoint: Checkpoint) -> StreamedPlan:
    """Trace the meta ``model``, rank its groups' channels from ``checkpoint`` and dry-run the plan."""
    if recipe.settings.metric not in WEIGHT_METRICS:
        raise recipe.error(f"metric '{recipe.settings.metric}' needs the model to run; a streamed prune ranks "
                           f"by weights only ({', '.join(WEIGHT_METRICS)})", "settings.metric")
    groups = find_groups(trace(model, inputs))
    check_against(recipe, groups)
    tensors = CheckpointTensors(model, checkpoint)
    skip = unsupported_groups(model, groups)
    skip.update({g.center: "its layers would read channels a channel shuffle reorders; a streamed prune does not "
                 "reorder columns (prune it in memory)" for g in groups.prunable if g.routing is not None})
    plan = make_plan(model, groups, recipe, skip, tensors=tensors)
    log.warning("dry run on the meta device: groups whose shrinking fails or changes output shapes are left whole; "
                "one whose shrunk model runs but computes something else needs values to be seen (see README, "
                "'Shard-streamed pruning')")
    plan, dropped = drop_breaking_groups(model, inputs, plan, run=ShapeDryRun(model, inputs))
    return StreamedPlan(model, groups, plan, dropped, tensors)


class PrunedTensors:
    """Produces each output tensor from the kept slices of the checkpoint's."""

    def __init__(self, streamed: StreamedPlan) -> None:
        self.model = streamed.model
        self.tensors = streamed.tensors
        self.keep: dict[str, dict[int, np.ndarray]] = {}
        for (name, dim), mask in streamed.plan.members.items():
            self.keep.setdefault(name, {})[dim] = mask
        self.attributes: dict[int, list[tuple[str, int]]] = {}
        for module, attr, value in size_attribute_changes(self.model, streamed.plan):
            self.attributes.setdefault(id(module), []).append((attr, value))
        self.touched = set(self.attributes)
        for name in self.keep:
            self.touched.add(id(owner(self.model, name)[0]))
        self._cached: tuple[str, dict[str, torch.Tensor]] | None = None

    def shape(self, stored: str) -> list[int]:
        shape = list(self.tensors.checkpoint.shape(stored))
        for dim, mask in self.keep.get(self.tensors.canonical[stored], {}).items():
            shape[dim] = int(mask.reshape(-1, mask.shape[-1])[0].sum())  # a 2-D mask: each row keeps as many
        return shape

    def __call__(self, stored: str) -> torch.Tensor:
        name = self.tensors.canonical[stored]
        module, attr = owner(self.model, name)
        if id(module) in self.touched and resizer_for(module) is not None:
            return self._resized(name.rpartition(".")[0], module)[attr]
        return self.tensors.checkpoint.read(stored, self.keep.get(name))

    def _resized(self, path: str, module: nn.Module) -> dict[str, torch.Tensor]:
        """The layer at ``path`` rebuilt on the CPU from its kept slices, with its size
        attributes set and its resizer run, as :func:`pruneconf.apply.shrink` leaves it."""
        if self._cached is not None and self._cached[0] == path:
            return self._cached[1]
        layer = copy.deepcopy(module)
        old = dict(module.__dict__)
        for table in (layer._parameters, layer._buffers):
            for attr, value in table.items():
                name = f"{path}.{attr}" if path else attr
                if value is None or name not in self.tensors.stored:
                    continue
                kept = self.tensors.checkpoint.read(self.tensors.stored[name],
                                                    self.keep.get(self.tensors.canonical[name]))
                table[attr] = nn.Parameter(kept, requires_grad=False) if table is layer._parameters else kept
        for attr, value in self.attributes.get(id(module), []):
            setattr(layer, attr, value)
        with torch.no_grad():
            resizer_for(module)(layer, old)
        out = {attr: t.detach() for table in (layer._parameters, layer._buffers) for attr, t in table.items()
               if t is not None}
        self._cached = (path, out)
        return out


def write_pruned(streamed: StreamedPlan, output: Path) -> int:
    """Write the pruned checkpoint to the directory ``output``, shard by shard, with the
    same shard names (and index) as the input. Returns the bytes of tensor data written."""
    checkpoint = streamed.tensors.checkpoint
    produce = PrunedTensors(streamed)
    output.mkdir(parents=True, exist_ok=True)
    total = 0
    for shard in checkpoint.shards():
        entries = [(n, produce.shape(n), checkpoint.dtype(n)) for n in checkpoint.names(shard)]
        total += write_safetensors(output / shard, entries, produce, shard_metadata(checkpoint, shard))
        log.info("wrote %s (%d tensors; %.1f MB read so far)", output / shard, len(entries),
                 checkpoint.bytes_read / 1e6)
    if checkpoint.source.endswith(".index.json"):
        write_index(output / Path(checkpoint.source).name, checkpoint.files, total)
    return total


def pruned_costs(streamed: StreamedPlan, inputs: Any) -> tuple[dict[str, int], dict[str, int]]:
    """MACs and parameters before and after, counted on the meta model (which is shrunk)."""
    before = trace(streamed.model, inputs)
    shrink(streamed.model, streamed.plan, log_changes=False)
    after = trace(streamed.model, inputs)
    return ({"macs": total_macs(before), "params": total_params(before)},
            {"macs": total_macs(after), "params": total_params(after)})


__all__ = ["CheckpointTensors", "ShapeDryRun", "StreamedPlan", "WEIGHT_METRICS", "plan_streamed", "pruned_costs",
           "write_pruned"]
