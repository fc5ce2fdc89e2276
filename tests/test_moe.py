"""Mixture-of-experts layers of transformers 5.x: per-expert channel groups and dropped experts.

Tiny random Mixtral and Qwen2-MoE configs (2 layers, 4 experts, top-2, GQA). Their experts
are stacked 3-D parameters run by a fused kernel by default (``grouped_mm``); pruneconf
traces every expert (pruneconf.trace.experts) and the checks below run the model's own
implementation: masked ≡ applied, sparsity 0 ≡ original, greedy ``generate()`` with the KV
cache unchanged, and a reload from the applied recipe.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema

import pytest
import torch
import transformers
from ruamel.yaml import YAML

from helpers import prune_exactly
from pruneconf import ConfigError, Pruner, find_groups, load_pruned, load_recipe, trace
from pruneconf.analysis import total_macs
from pruneconf.recipe.experts import ExpertChoice
from pruneconf.recipe.load import Recipe, Settings

from llm_models import BY_NAME, EXPERTS

MODELS = ("mixtral", "qwen2_moe")


def build(name: str):
    torch.manual_seed(0)
    return getattr(transformers, BY_NAME[name].model)(BY_NAME[name].config()).eval()


def example(tokens: int = 8) -> dict:
    return {"input_ids": torch.randint(0, 128, (1, tokens), generator=torch.Generator().manual_seed(1)),
            "use_cache": False}


def greedy(model, ids: torch.Tensor) -> torch.Tensor:
    return model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)


def experts_of(model):
    return [layer.mlp for layer in model.model.layers]


@pytest.mark.parametrize("name", MODELS)
def test_every_expert_of_every_layer_has_its_group(name):
    """One token routes to 2 of 4 experts per layer: the other two still get their channels."""
    model = build(name)
    single = example(tokens=1)
    routed = []
    hooks = [mlp.gate.register_forward_hook(lambda m, a, out: routed.append(set(out[2].flatten().tolist())))
             for mlp in experts_of(model)]
    with torch.no_grad():
        model(**single)
    for h in hooks:
        h.remove()
    assert all(len(r) < EXPERTS for r in routed), routed  # some experts were not reached
    groups = find_groups(trace(model, single))
    for i in range(len(model.model.layers)):
        center = f"model.layers.{i}.mlp.experts.gate_up_proj"
        group = groups[center]
        assert group.prunable and group.experts == EXPERTS, group.reasons
        assert group.channels == EXPERTS * 32
        covered = {(m.param.rpartition(".")[2], m.slice) for m in group.members}
        assert covered == {(p, e) for p in ("gate_up_proj", "down_proj") for e in range(EXPERTS)}
        assert sorted(set(group.blocks.tolist())) == list(range(EXPERTS))


@pytest.mark.parametrize("name", MODELS)
def test_half_the_expert_channels_masked_equals_applied(name):
    model, ex = build(name), example()
    ids = ex["input_ids"]
    before = total_macs(trace(model, ex))
    pruned = prune_exactly(model, ex, {"sparsity": 0.5})
    after = total_macs(trace(model, ex))
    for mlp in experts_of(model):  # half the experts' channels, and half the hidden size
        assert mlp.experts.gate_up_proj.shape == (EXPERTS, 32, 32)
        assert mlp.experts.down_proj.shape == (EXPERTS, 32, 16)
    assert not pruned.pruner.dropped and not pruned.pruner.skipped()
    # Left whole as channels: the logits, the routers' expert dim (pruned as whole experts by
    # `experts:`, see below) and Qwen's one-channel shared-expert gate.
    for group in (g for g in pruned.pruner.groups if not g.prunable):
        reasons = "; ".join(group.reasons)
        assert (group.center == "lm_head" and "reaches the model output" in reasons
                or group.center.endswith("mlp.gate.weight") and "'softmax'" in reasons
                or group.center.endswith("shared_expert_gate") and group.channels == 1), (group.center, reasons)
    assert after <= 0.3 * before, after / before  # MACs of the active path down by 70 % or more
    # each expert chose its own channels: not every expert kept the same indices
    kept = pruned.pruner.applied.members[("model.layers.0.mlp.experts.down_proj", 2)]
    assert kept.shape == (EXPERTS, 32) and (kept.sum(1) == 16).all() and not (kept == kept[0]).all()


@pytest.mark.parametrize("name", MODELS)
def test_generate_is_unchanged_by_applying(name):
    model, ex = build(name), example()
    ids = ex["input_ids"]
    pruner = Pruner(model, ex, {"sparsity": 0.5})
    pruner.register_masks()
    masked = greedy(model, ids)
    pruner.apply_masks()
    assert torch.equal(greedy(model, ids), masked)


def drop_recipe(path: str = "<moe>") -> Recipe:
    return Recipe(path=path, settings=Settings(default_sparsity=0.5, expert_sparsity=0.25), sparsity={},
                  experts={"model.layers.1.mlp.experts": ExpertChoice(drop=(0, 3))})


@pytest.mark.parametrize("name", MODELS)
def test_dropped_experts_route_exactly(name, tmp_path):
    model, ex = build(name), example()
    ids = ex["input_ids"]
    original = copy.deepcopy(model)
    pruner = Pruner(model, ex, drop_recipe())
    pruner.register_masks()
    masked = greedy(model, ids)
    with torch.no_grad():
        masked_logits = model(**ex).logits
    pruner.apply_masks()
    assert torch.equal(greedy(model, ids), masked)
    with torch.no_grad():
        torch.testing.assert_close(model(**ex).logits, masked_logits, atol=1e-5, rtol=0)
    first, second = experts_of(model)
    assert first.experts.gate_up_proj.shape[0] == 3 and first.gate.weight.shape[0] == 3  # expert_sparsity 0.25
    assert second.experts.down_proj.shape[0] == 2 and second.gate.weight.shape[0] == 2   # drop: [0, 3]
    assert (first.experts.num_experts, first.gate.num_experts) == (3, 3)
    assert (second.experts.num_experts, second.gate.num_experts) == (2, 2)
    kept = pruner.applied.experts["model.layers.1.mlp.experts"].keep
    assert kept.tolist() == [False, True, True, False]

    recipe_path, weights = tmp_path / "r.yaml", tmp_path / "w.pt"
    (tmp_path / "base.yaml").write_text("version: 1\nsettings:\n  default_sparsity: 0.5\n  expert_sparsity: 0.25\n"
                                        "groups: {}\nexperts:\n  model.layers.1.mlp.experts:\n    drop: [0, 3]\n")
    pruner.write_applied(str(tmp_path / "base.yaml"), recipe_path)
    schema = json.loads((Path(__file__).parents[1] / "templates" / "recipe.schema.json").read_text())
    jsonschema.validate(YAML(typ="safe").load(recipe_path.read_text()), schema)
    torch.save(model.state_dict(), weights)
    rebuilt = load_pruned(original, recipe_path, weights, example_inputs=ex)
    assert torch.equal(greedy(rebuilt, ids), masked)


def test_uneven_expert_counts_leave_the_config_alone():
    model = build("mixtral")
    Pruner(model, example(), Recipe(path="<moe>", settings=Settings(default_sparsity=0.0), sparsity={},
                                    experts={"model.layers.0.mlp.experts": ExpertChoice(drop=(2,))})).apply_masks()
    assert model.config.num_local_experts == EXPERTS
    assert model.model.layers[0].mlp.experts.num_experts == 3


@pytest.mark.parametrize("text, key, message", [
    ("experts:\n  model.layers.0.mlp.experts:\n    drop: [1, 1]\n", "experts.model.layers.0.mlp.experts.drop",
     "distinct expert indices"),
    ("experts:\n  model.layers.0.mlp.experts:\n    sparsity: 1.5\n", "experts.model.layers.0.mlp.experts.sparsity",
     "[0, 1)"),
    ("experts:\n  model.layers.0.mlp.experts:\n    keep: 2\n", "experts.model.layers.0.mlp.experts.keep",
     "unknown key"),
    ("settings:\n  expert_sparsity: -0.1\n", "settings.expert_sparsity", "[0, 1)"),
])
def test_bad_experts_entries_are_located(tmp_path, text, key, message):
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\n" + text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert info.value.key == key and message in str(info.value) and info.value.line is not None


@pytest.mark.parametrize("entry, key, message", [
    ("model.layers.0.mlp.expert:\n    drop: [1]", "experts.model.layers.0.mlp.expert", "no experts module"),
    ("model.layers.0.mlp.experts:\n    drop: [4]", "experts.model.layers.0.mlp.experts.drop", "does not exist"),
    ("model.layers.0.mlp.experts:\n    drop: [0, 1, 2]", "experts.model.layers.0.mlp.experts", "fewer than the 2"),
])
def test_experts_entries_are_checked_against_the_model(tmp_path, entry, key, message):
    path = tmp_path / "r.yaml"
    path.write_text(f"version: 1\nsettings:\n  default_sparsity: 0\nexperts:\n  {entry}\n")
    with pytest.raises(ConfigError) as info:
        Pruner(build("mixtral"), example(), load_recipe(path)).plan()
    assert info.value.key == key and message in str(info.value)
