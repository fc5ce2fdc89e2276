"""``conv_groups: whole``: a group whose blocks are whole conv groups (RegNet, ResNeXt) drops
whole conv groups instead of thinning each, so ``groups`` shrinks and each conv group keeps its
width. Exact (masked ≡ applied, sparsity 0 ≡ original), the best conv groups by summed
importance, MACs predicted exactly, located recipe errors, and a latency table that measures
both ways for the planner to choose. No test asserts a timing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from ruamel.yaml.comments import CommentedMap

from helpers import analyse, prune_exactly
from pruneconf import Pruner
from pruneconf.analysis.predict import CostModel
from pruneconf.cli import main
from pruneconf.errors import ConfigError
from pruneconf.explore.latency_measure import find_units, measure_table, whole_probe_counts
from pruneconf.explore.latency_plan import plan_latency, write_latency_plan
from pruneconf.explore.latency_table import Curve, Predictor, dump_tables, select_table
from pruneconf.masks.keep import group_keep
from pruneconf.recipe.budget import write_group_sparsities
from pruneconf.recipe.load import check_against, recipe_from_document
from pruneconf.recipe.plan import kept_blocks
from pruneconf.trace.fingerprint import fingerprint
from test_grouped_conv import Grouped, Unequal, example, macs
from test_latency_plan import SETUP, SHAPE, grouped_net, linear_table

WHOLE = {"sparsity": 0.5, "conv_groups": "whole"}


def test_whole_conv_groups_go_exactly_and_groups_shrinks():
    torch.manual_seed(0)
    model, x = Grouped(), example()
    groups = analyse(model, x)
    assert groups["a.2"].whole_conv_groups and groups["a.2"].experts == 4
    with torch.no_grad():  # conv group 3 (channels 24-31) the strongest by far
        model.a[2].weight[24:32] *= 100
    pruned = prune_exactly(model, x, WHOLE)
    kept = pruned.pruner.plan().kept["a.2"]
    assert len(kept) == 16 and set(kept.tolist()) >= set(range(24, 32))
    assert all(len(set(kept.tolist()) & set(range(8 * g, 8 * g + 8))) in (0, 8) for g in range(4))
    b = model.b[2]
    assert (b.groups, b.in_channels, b.out_channels, tuple(b.weight.shape[:2])) == (2, 16, 16, (16, 8))
    counts = {c: len(k) for c, k in pruned.pruner.plan().kept.items()}
    assert CostModel(groups).macs(counts, {"a.2"}) == macs(model, x)  # the columns stay


def test_sparsity_zero_with_whole_conv_groups_is_the_original():
    torch.manual_seed(0)
    model, x = Grouped(), example()
    with torch.no_grad():
        before = model(x)
    Pruner(model, x, {"sparsity": 0.0, "conv_groups": "whole"}).apply_masks()
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert model.b[2].groups == 4


@pytest.mark.parametrize("name", ["regnet_x_400mf", "regnet_y_400mf"])
def test_regnets_lose_whole_conv_groups_exactly(name):
    """In float64: on one thread, float32 kernels for fewer conv groups sum in another order,
    and 20 random-init blocks grow that to 5e-5 of the output, so the dry run would leave
    some groups whole; in float64 they agree to 1e-11 of the output and every group prunes."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval().double()
    dense = {n: (m.groups, m.weight.shape[1]) for n, m in model.named_modules()
             if isinstance(m, torch.nn.Conv2d) and m.groups > 1}
    pruned = prune_exactly(model, torch.randn(2, 3, 32, 32, dtype=torch.float64), WHOLE)
    assert pruned.pruner.dropped == {}
    after = {n: (m.groups, m.weight.shape[1]) for n, m in model.named_modules() if n in dense}
    # each conv group keeps its full width: fewer groups, not narrower ones
    assert dense and all(after[n][1] == width and after[n][0] < groups for n, (groups, width) in dense.items())


def test_round_to_counts_whole_conv_groups():
    """``round_to: 16`` on conv groups of 8: an even number of them."""
    assert kept_blocks(4, 8, 0.5, 16) == 16 and kept_blocks(4, 8, 0.75, 16) == 16
    assert kept_blocks(14, 24, 0.5, 1) == 168 and kept_blocks(14, 24, 0.99, 1) == 24
    torch.manual_seed(0)
    model, x = Grouped(), example()
    pruned = prune_exactly(model, x, {**WHOLE, "sparsity": 0.75, "round_to": 16})
    assert len(pruned.pruner.plan().kept["a.2"]) == 16 and model.b[2].groups == 2


def test_written_sparsity_reproduces_the_planned_conv_groups():
    model, x = Grouped(), example()
    groups = analyse(model, x)
    doc = CommentedMap()
    write_group_sparsities(doc, groups, {"a.2": 24}, 1, {"a.2"})
    entry = doc["groups"]["a.2"]
    assert entry["conv_groups"] == "whole" and group_keep(groups["a.2"], entry["sparsity"], 1, True) == 24


def _recipe(text: str):
    return recipe_from_document(__import__("ruamel.yaml", fromlist=["YAML"]).YAML().load(text), "r.yaml")


@pytest.mark.parametrize("model, text, key, words", [
    (Grouped, "groups:\n  stem:\n    conv_groups: whole\n", "groups.stem.conv_groups", "feed no grouped conv"),
    (Unequal, "groups:\n  a:\n    conv_groups: whole\n", "groups.a.conv_groups", "cannot drop whole conv groups"),
    (Grouped, "settings:\n  mode: global\ngroups:\n  a.2:\n    conv_groups: whole\n", "groups.a.2.conv_groups",
     "mode: uniform"),
])
def test_whole_where_it_cannot_be_is_a_located_error(model, text, key, words):
    groups = analyse(model(), example())
    with pytest.raises(ConfigError) as info:
        check_against(_recipe(text), groups)
    assert f"'{key}'" in str(info.value) and words in str(info.value) and "r.yaml:" in str(info.value)


@pytest.mark.parametrize("text, key", [
    ("groups:\n  a.2:\n    conv_groups: sideways\n", "groups.a.2.conv_groups"),
    ("groups:\n  a.2:\n    conv_groups: [whole]\n", "groups.a.2.conv_groups"),
    ("settings:\n  conv_groups: 1\n", "settings.conv_groups"),
    ("settings:\n  mode: global\n  conv_groups: whole\n", "settings.conv_groups"),
])
def test_bad_conv_groups_values_are_located_errors(text, key):
    with pytest.raises(ConfigError) as info:
        _recipe(text)
    assert f"r.yaml:" in str(info.value) and f"'{key}'" in str(info.value)


def test_the_setting_applies_to_groups_that_can_and_leaves_the_rest(tmp_path, capsys):
    """``settings.conv_groups: whole`` on a model with a group that cannot (Unequal's conv
    groups span two groups, so they go whole anyway) and one that can."""
    recipe = _recipe("settings:\n  conv_groups: whole\n")
    groups = analyse(Grouped(), example())
    check_against(recipe, groups)
    assert recipe.drops_conv_groups(groups["a.2"]) and not recipe.drops_conv_groups(groups["stem"])


def test_cli_refuses_whole_where_it_cannot_be_with_exit_2(tmp_path, capsys):
    (tmp_path / "net.py").write_text("import torch.nn as nn\n\ndef build():\n    return nn.Sequential("
                                     "nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))\n")
    recipe = tmp_path / "r.yaml"
    net = f"{tmp_path / 'net.py'}:build"
    assert main(["init", net, "--input-shape", "1,3,8,8", "-o", str(recipe)]) == 0
    text = recipe.read_text()
    recipe.write_text(text.replace("    sparsity: 0.5\n", "    sparsity: 0.5\n    conv_groups: whole\n", 1))
    assert recipe.read_text() != text
    out = tmp_path / "out.pt"
    assert main(["prune", str(recipe), "--model", net, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "r.yaml:" in err and "groups.0.conv_groups" in err and "Traceback" not in err and not out.exists()


def _with_whole_curves(pruner, table, cheap: float):
    """Give every group that can lose whole conv groups a synthetic whole curve whose time
    falls ``cheap`` times as fast as thinning's (the table's linear model)."""
    units = find_units(pruner.model, pruner.groups, list(table.groups))
    for g in pruner.groups.prunable:
        if not g.whole_conv_groups:
            continue
        curve, counts = table.groups[g.center], whole_probe_counts(g)
        touched = [u.name for u in units if g.center in u.touching]
        curve.whole = Curve(g.channels, g.channels // g.experts, counts,
                            {u: [table.units[u] * max(0.0, 1 - cheap * (1 - k / g.channels)) for k in counts]
                             for u in touched})
    return table


def test_planner_drops_whole_conv_groups_where_the_table_says_they_save_more():
    model, x = grouped_net(), torch.randn(SHAPE)
    pruner = Pruner(model, x, {"sparsity": 0})
    scores = pruner.channel_scores([g.center for g in pruner.groups.prunable])
    fast = _with_whole_curves(pruner, linear_table(pruner, round_to=4), cheap=3.0)
    plan = plan_latency(pruner.groups, pruner.recipe, fast, scores, target_latency=0.6)
    assert plan.whole == {"0"} and plan.kept["0"] % 8 == 0 and plan.kept["0"] < 32
    slow = _with_whole_curves(pruner, linear_table(pruner, round_to=4), cheap=0.1)
    assert plan_latency(pruner.groups, pruner.recipe, slow, scores, target_latency=0.6).whole == frozenset()
    inside = _recipe("groups:\n  '0':\n    conv_groups: inside\n")
    assert plan_latency(pruner.groups, inside, fast, scores, target_latency=0.6).whole == frozenset()
    # the plan as a recipe: conv_groups written, the same counts kept, exact
    doc = CommentedMap()
    write_latency_plan(doc, pruner.groups, plan, fast, 1, 0.6, None)
    assert doc["groups"]["0"]["conv_groups"] == "whole"
    recipe = recipe_from_document(doc, "planned.yaml")
    applied = Pruner(model, x, recipe)
    assert len(applied.plan().kept["0"]) == plan.kept["0"]
    applied.apply_masks()  # raises unless masked == applied
    assert model[3].groups == plan.kept["0"] // 8 and model[3].weight.shape[1] == 8


def test_planning_whole_on_a_table_without_whole_timings_is_an_error():
    model, x = grouped_net(), torch.randn(SHAPE)
    pruner = Pruner(model, x, {"sparsity": 0})
    scores = pruner.channel_scores([g.center for g in pruner.groups.prunable])
    with pytest.raises(ConfigError, match="no whole-conv-group timings"):
        plan_latency(pruner.groups, _recipe("settings:\n  conv_groups: whole\n"), linear_table(pruner), scores,
                     target_latency=0.6)


def test_a_measured_table_times_whole_conv_groups_and_round_trips(tmp_path):
    model, x = grouped_net(), torch.randn(SHAPE)
    pruner = Pruner(model, x, {"sparsity": 0})
    table = measure_table(model, x, pruner.groups, SETUP, model_name="net", fingerprint=fingerprint(pruner.graph),
                          input_shapes=["1,3,8,8"], skip={}, min_run_time=0.001)
    whole = table.groups["0"].whole
    assert whole is not None and whole.round_to == 8 and whole.counts == [8, 16, 24, 32] and "3" in whole.ms
    assert all(table.groups[c].whole is None for c in table.groups if c != "0")
    path = tmp_path / "t.json"
    path.write_text(dump_tables({SETUP.key: table}))
    again = select_table(path, fingerprint(pruner.graph))
    assert again.to_json() == table.to_json() and again.hash == table.hash
    assert Predictor(again).ms({"0": 16}, {"0"}) != Predictor(again).ms({"0": 16})
    raw = json.loads(path.read_text())
    raw["tables"][SETUP.key]["groups"]["0"]["whole"]["channels"] = 16
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="groups.0.whole"):
        select_table(path, fingerprint(pruner.graph))


def test_a_table_without_whole_curves_keeps_its_hash():
    pruner = Pruner(grouped_net(), torch.randn(SHAPE), {"sparsity": 0})
    table = linear_table(pruner)
    assert "whole" not in json.dumps(table.to_json())
    assert np.isfinite(Predictor(table).ms({"0": 16}, {"0"}))  # no whole curve: read as thinning
