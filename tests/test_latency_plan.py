"""`pruneconf latency` and `--target-latency`: table structure, caching keys, validation, the planner
on a synthetic table (deterministic), and exact pruning of what it plans. No test asserts a timing."""
import copy
import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

from pruneconf import Pruner
from pruneconf.cli import main
from pruneconf.errors import ConfigError
from pruneconf.explore.heap import timing_memory
from pruneconf.explore.latency_measure import (device_name, find_units, group_probe_counts, learn_round_to,
                                              measure_table, probe_counts)
from pruneconf.explore import latency_plan
from pruneconf.explore.latency_plan import LatencyPlan, plan_latency, plan_mac_budget
from pruneconf.explore.latency_table import (UNIT_INPUTS, Curve, LatencyTable, Predictor, Setup, dump_tables,
                                             read_tables, select_table)
from pruneconf.recipe.load import load_recipe, recipe_from_document
from pruneconf.trace.fingerprint import fingerprint

NET = '''
import torch.nn as nn

def build():
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.Conv2d(64, 16, 1), nn.Flatten(), nn.Linear(16 * 16, 10))
'''
SHAPE = [1, 3, 8, 8]
SETUP = Setup("cpu", "float32", 1, 1, "contiguous")


def build() -> nn.Module:
    namespace: dict = {}
    exec(NET, namespace)  # noqa: S102 - the test's own model source
    return namespace["build"]()


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    root = tmp_path_factory.mktemp("latency")
    (root / "net.py").write_text(NET)
    return f"{root / 'net.py'}:build"


def linear_table(pruner: Pruner, fixed: float = 0.05, per: float = 0.01, round_to: int = 8) -> LatencyTable:
    """A synthetic table: every unit costs ``fixed + per * kept`` in each group it touches."""
    groups = pruner.groups
    parts = [g for g in groups.prunable]
    units = find_units(pruner.model, groups, [g.center for g in parts])
    dense = {u.name: fixed + per * 64 for u in units}
    curves = {}
    for g in parts:
        counts, _ = group_probe_counts(g)
        touched = [u.name for u in units if g.center in u.touching]
        ms = {u: [dense[u] * (fixed + per * k) / (fixed + per * g.channels) for k in counts] for u in touched}
        curves[g.center] = Curve(g.channels, round_to, counts, ms)
    return LatencyTable(SETUP, "test cpu", "net", fingerprint(pruner.graph), ["1,3,8,8"],
                        sum(dense.values()) + 0.5, dense, curves)


def test_probe_counts_and_learned_round_to():
    counts, probe = probe_counts(256)
    assert counts[-1] == 256 and counts == sorted(set(counts)) and probe == 128
    assert {127, 120, 112, 96} <= set(counts)  # one step of 1, 8, 16 and 32 below the probe
    assert probe_counts(3) == ([1, 2, 3], 1)
    linear = {k: 1.0 + 0.01 * k for k in counts}
    assert learn_round_to(256, linear) == 1
    padded = {k: 1.0 + 0.01 * (-(-k // 8) * 8) for k in counts}  # counts pay for the next multiple of 8
    assert learn_round_to(256, padded) == 8
    flat = {k: 1.0 for k in counts}
    assert learn_round_to(256, flat) == 64


def test_measured_table_covers_non_mac_ops_and_round_trips(tmp_path):
    model = build()
    pruner = Pruner(model, torch.randn(SHAPE))
    table = measure_table(model, torch.randn(SHAPE), pruner.groups, SETUP, model_name="net",
                          fingerprint=fingerprint(pruner.graph), input_shapes=["1,3,8,8"], skip={},
                          min_run_time=0.001)
    first = table.groups["0"]
    assert first.counts[-1] == 32 and set(first.ms) == {"0", "1", "2", "3", "4"}  # conv, norm, ReLU, pool, consumer
    assert all(len(v) == len(first.counts) for v in first.ms.values()) and first.round_to >= 1
    assert set(table.units) >= {"0", "1", "2", "3", "4", "5", "6", "7", "9"}
    path = tmp_path / "t.json"
    path.write_text(dump_tables({SETUP.key: table}))
    again = select_table(path, fingerprint(pruner.graph))
    assert again.to_json() == table.to_json() and again.hash == table.hash
    assert SETUP.key == "cpu|float32|batch=1|threads=1|contiguous"


def _bad(tmp_path, edit) -> str:
    pruner = Pruner(build(), torch.randn(SHAPE))
    raw = json.loads(dump_tables({SETUP.key: linear_table(pruner)}))
    edit(raw["tables"][SETUP.key])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as info:
        select_table(path, fingerprint(pruner.graph))
    return str(info.value)


@pytest.mark.parametrize("edit, key", [
    (lambda t: t["groups"]["0"]["counts"].reverse(), "groups.0.counts"),
    (lambda t: t["groups"]["0"]["ms"]["0"].pop(), "groups.0.ms.0"),
    (lambda t: t["groups"]["0"]["ms"].update({"nowhere": [1.0]}), "groups.0.ms.nowhere"),
    (lambda t: t["units"].update({"0": -1}), "units.0"),
    (lambda t: t.update({"threads": "two"}), "threads"),
    (lambda t: t.update({"batch": 8}), "device"),
    (lambda t: t.pop("dense_ms"), "dense_ms"),
    (lambda t: t.update({"layout": "nhwc"}), "layout"),
])
def test_bad_tables_name_file_and_key(tmp_path, edit, key):
    assert f"bad.json: 'tables.{SETUP.key}.{key}'" in _bad(tmp_path, edit)


def test_not_a_table_file(tmp_path):
    for text, key in (("[]", "format"), ('{"format": "pruneconf-latency-table", "version": 9}', "version"),
                      ("{not json", "--latency-table")):
        (tmp_path / "x.json").write_text(text)
        with pytest.raises(ConfigError, match=f"x.json: '{key}'"):
            read_tables(tmp_path / "x.json")


def test_planner_meets_target_on_synthetic_table_deterministically():
    pruner = Pruner(build(), torch.randn(SHAPE), {"sparsity": 0})
    table = linear_table(pruner)
    scores = pruner.channel_scores([g.center for g in pruner.groups.prunable])
    plans = [plan_latency(pruner.groups, pruner.recipe, table, scores, target_latency=0.5) for _ in range(2)]
    assert plans[0].kept == plans[1].kept
    predictor = Predictor(table)
    assert predictor.ms(plans[0].kept) == pytest.approx(plans[0].predicted_ms)
    assert abs(plans[0].fraction - 0.5) < 0.05
    for center, keep in plans[0].kept.items():
        assert keep % 8 == 0 or keep == pruner.groups[center].channels  # the learned step
        assert keep >= pruner.groups[center].channels * 0.1  # max_sparsity 0.9


def test_importance_decides_which_group_shrinks_first():
    """Two groups whose steps save the same time: the one with unimportant channels goes first."""
    pruner = Pruner(build(), torch.randn(SHAPE), {"sparsity": 0})
    table = linear_table(pruner)
    centers = [g.center for g in pruner.groups.prunable]
    base = pruner.channel_scores(centers)
    skewed = {c: np.ones_like(s) for c, s in base.items()}
    skewed["4"] = np.r_[np.full(32, 1e-3), np.ones(32)]  # half of group 4 is worthless
    plan = plan_latency(pruner.groups, pruner.recipe, table, skewed, target_latency=0.9)
    assert plan.kept["4"] < 64 and plan.kept["4"] >= 32


def test_unreachable_target_is_a_config_error():
    pruner = Pruner(build(), torch.randn(SHAPE), {"sparsity": 0})
    table = linear_table(pruner)
    table.dense_ms *= 100  # an untimed rest no pruning can shrink
    with pytest.raises(ConfigError, match="cannot reach"):
        plan_latency(pruner.groups, pruner.recipe, table, pruner.channel_scores(table.groups), target_latency=0.5)


def _table_file(tmp_path, net, machine: str | None = None) -> str:
    """A synthetic table file, as if measured on ``machine`` (default: this one)."""
    pruner = Pruner(build(), torch.randn(SHAPE))
    table = linear_table(pruner)
    table.device_name = machine or device_name("cpu")
    table.memory = timing_memory()
    path = tmp_path / "table.json"
    path.write_text(dump_tables({SETUP.key: table}))
    return str(path)


def test_init_and_prune_with_target_latency_are_exact(tmp_path, net):
    """The closed loop on by default: one correction, measured on this machine (no timing asserted)."""
    table = _table_file(tmp_path, net)
    recipe = tmp_path / "r.yaml"
    assert main(["init", net, "--input-shape", "1,3,8,8", "-o", str(recipe), "--target-latency", "0.5",
                 "--latency-table", table, "--latency-refine", "1", "--latency-run-time", "0.01"]) == 0
    loaded = load_recipe(recipe)
    assert loaded.settings.target_latency == 0.5
    assert "a multiple of 8, the step the table measured as fast" in recipe.read_text()
    recorded = loaded.settings.latency_table
    assert recorded["device"] == "cpu" and recorded["hash"] == select_table(table, fingerprint(
        Pruner(build(), torch.randn(SHAPE)).graph)).hash
    assert recorded["steps"] in (1, 2) and recorded["measured"] > 0 and 0 < recorded["planned_for"] <= 1
    assert recorded["history"].count("->") == recorded["steps"] and 0 < recorded["predicted"] <= 1
    model = build().eval()
    x = torch.randn(SHAPE)
    pruner = Pruner(model, x, loaded)
    pruner.register_masks()
    with torch.no_grad():
        masked = model(x)
    pruner.apply_masks()  # raises VerificationError unless the shrunk model computes the masked one
    with torch.no_grad():
        assert torch.allclose(model(x), masked, atol=1e-5)
    assert main(["prune", str(recipe), "--model", net, "-o", str(tmp_path / "p.pt"), "--target-macs", "0.6",
                 "--latency-table", table, "--latency-run-time", "0.01"]) == 0


def test_full_latency_target_keeps_the_model_whole(tmp_path, net):
    table = _table_file(tmp_path, net)
    recipe = tmp_path / "r.yaml"
    assert main(["init", net, "--input-shape", "1,3,8,8", "-o", str(recipe), "--target-latency", "1",
                 "--latency-table", table, "--latency-refine", "0"]) == 0
    model = build().eval()
    original = copy.deepcopy(model)
    x = torch.randn(SHAPE)
    Pruner(model, x, load_recipe(recipe)).apply_masks()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), original.state_dict().values()))


def test_latency_command_caches_by_setup(tmp_path, net, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "t.json"
    common = ["latency", net, "--input-shape", "1,3,8,8", "--min-run-time", "0.001", "-o", str(out)]
    assert main(common) == 0
    first = out.read_bytes()
    assert main(common) == 0
    assert out.read_bytes() == first and "already holds" in caplog.text
    assert main(common + ["--channels-last"]) == 0
    keys = set(read_tables(out))
    assert keys == {SETUP.key, "cpu|float32|batch=1|threads=1|channels_last"}
    assert main(["report", str(tmp_path / "missing.yaml"), "--latency-table", str(out)]) == 2


@pytest.mark.parametrize("key, warning", [
    ("memory", "by an older pruneconf (page faults included)"),
    ("unit_inputs", "inputs in the default memory order"),
])
def test_a_table_timed_the_old_way_is_measured_again_and_warned_about(tmp_path, net, caplog, key, warning):
    """Tables record how their timings treated memory (:mod:`pruneconf.explore.heap`) and that
    their units read inputs laid out as in the model; one from an older pruneconf, without
    the record, is measured again by `latency` instead of reused, and planning from one says so."""
    caplog.set_level(logging.INFO)
    out = tmp_path / "t.json"
    common = ["latency", net, "--input-shape", "1,3,8,8", "--min-run-time", "0.001", "-o", str(out)]
    recorded = {"memory": timing_memory(), "unit_inputs": UNIT_INPUTS}[key]
    assert main(common) == 0
    raw = json.loads(out.read_text())
    assert raw["tables"][SETUP.key][key] == recorded
    caplog.clear()
    assert main(common) == 0
    assert "already holds" in caplog.text
    del raw["tables"][SETUP.key][key]
    out.write_text(json.dumps(raw))
    assert main(["init", net, "--input-shape", "1,3,8,8", "-o", str(tmp_path / "r.yaml"), "--target-macs", "0.6",
                 "--latency-table", str(out), "--latency-refine", "0"]) == 0
    assert warning in caplog.text and "--force" in caplog.text
    caplog.clear()
    assert main(common) == 0
    assert "measuring again" in caplog.text and "already holds" not in caplog.text
    assert json.loads(out.read_text())["tables"][SETUP.key][key] == recorded


@pytest.mark.parametrize("argv, message", [
    (["--target-latency", "0.5"], "add --latency-table"),
    (["--target-latency", "1.5", "--latency-table", "t.json"], "(0, 1]"),
    (["--latency-table", "t.json"], "need a target"),
    (["--target-latency", "0.5", "--target-macs", "0.5", "--latency-table", "t.json"], "give one target"),
    (["--target-latency", "0.5", "--latency-table", "t.json", "--latency-refine", "-1"], "0 to 20 corrections"),
    (["--target-latency", "0.5", "--latency-table", "t.json", "--latency-tolerance", "0"], "relative tolerance"),
    (["--target-latency", "0.5", "--latency-table", "t.json", "--latency-budget", "nan"], "seconds above 0"),
    (["--target-latency", "0.5", "--latency-table", "t.json", "--speed-weight", "2"], "with --target-macs"),
    (["--target-macs", "0.5", "--speed-weight", "2"], "with --target-macs and --latency-table"),
    (["--target-macs", "0.5", "--latency-table", "t.json", "--speed-weight", "-1"], "from 0 to 16"),
])
def test_option_errors(tmp_path, net, capsys, argv, message):
    assert main(["init", net, "--input-shape", "1,3,8,8", "-o", str(tmp_path / "r.yaml"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_speed_weight_must_be_auto_or_a_number(tmp_path, net, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["init", net, "--input-shape", "1,3,8,8", "-o", str(tmp_path / "r.yaml"), "--target-macs", "0.5",
              "--latency-table", "t.json", "--speed-weight", "fast"])
    assert exit_.value.code == 2 and "expected auto or a number from 0 to 16, got 'fast'" in capsys.readouterr().err


def test_recipe_settings_are_validated(tmp_path):
    doc = {"settings": {"target_latency": 2}}
    with pytest.raises(ConfigError, match="settings.target_latency"):
        recipe_from_document(doc, "r.yaml")
    with pytest.raises(ConfigError, match="settings.latency_table"):
        recipe_from_document({"settings": {"latency_table": [1]}}, "r.yaml")


def test_sweep_over_latency_targets(tmp_path, net):
    table = _table_file(tmp_path, net)
    out = tmp_path / "sweep"
    argv = ["sweep", net, "--input-shape", "1,3,8,8", "--target-latency", "0.6,1", "-o", str(out)]
    assert main(argv) == 2  # no table
    assert main(argv + ["--latency-table", table, "--latency-refine", "0"]) == 0
    recipes = [load_recipe(out / f"target_latency_{t}.yaml") for t in ("0.60", "1.00")]
    assert [r.settings.target_latency for r in recipes] == [0.6, 1.0]
    assert all(v == 0 for v in recipes[1].sparsity.values()) and any(v > 0 for v in recipes[0].sparsity.values())
    assert "target latency" in (out / "table.md").read_text()


def test_mac_budget_is_spent_where_macs_cost_time():
    """Group 0's norm, ReLU and pool are slow but count no MACs: at the same MAC budget the
    latency-aware plan cuts it deeper than the uniform plan and is predicted faster."""
    from pruneconf.recipe.budget import plan_budget
    from pruneconf.analysis.predict import CostModel

    pruner = Pruner(build(), torch.randn(SHAPE), {"sparsity": 0})
    table = linear_table(pruner, fixed=0.0)
    for unit in ("1", "2", "3"):
        table.units[unit] *= 20
    table.dense_ms = sum(table.units.values())
    scores = pruner.channel_scores(table.groups)
    aware = plan_latency(pruner.groups, pruner.recipe, table, scores, target_macs=0.5)
    uniform = plan_budget(pruner.groups, pruner.recipe, 0.5)
    costs = CostModel(pruner.groups)
    assert abs(costs.macs(aware.kept) / costs.macs({}) - 0.5) < 0.05
    assert aware.kept["0"] < uniform["0"]
    predictor = Predictor(table)
    assert predictor.ms(aware.kept) < predictor.ms(uniform)
    # a larger speed weight spends the same budget for at least as much predicted time
    faster = plan_latency(pruner.groups, pruner.recipe, table, scores, target_macs=0.5, speed_weight=4)
    assert abs(costs.macs(faster.kept) / costs.macs({}) - 0.5) < 0.05
    assert predictor.ms(faster.kept) <= predictor.ms(aware.kept)


def _fake_plans(monkeypatch, fraction):
    """plan_latency replaced by plans whose predicted fraction is ``fraction(weight)``: the weight
    search is tested on its own, on a curve it cannot see."""
    asked = []

    def fake(groups, recipe, table, scores, target_macs=None, skip=None, speed_weight=1.0):
        asked.append(speed_weight)
        return LatencyPlan({}, fraction(speed_weight), 1.0, {}, speed_weight=speed_weight)

    monkeypatch.setattr(latency_plan, "plan_latency", fake)
    return asked


@pytest.mark.parametrize("goal_weight", [2.0, 4.3, 11.0])
def test_auto_speed_weight_is_the_smallest_that_is_as_fast_as_the_macs(monkeypatch, goal_weight):
    """Predicted 0.7 at weight 1, falling linearly to the goal 0.525 (0.5 of the MACs, tolerance
    0.05) at ``goal_weight``: the search returns a weight that meets it, at most one bisection
    step above it, after the two ends and the bisections."""
    slope = 0.175 / (goal_weight - 1)
    asked = _fake_plans(monkeypatch, lambda w: 0.7 - slope * (w - 1))
    plan = plan_mac_budget(None, None, None, {}, 0.5)
    assert plan.fraction <= 0.525 + 1e-12
    assert goal_weight <= plan.speed_weight <= goal_weight + 15 / 64
    assert asked[:2] == [1.0, 16.0] and len(asked) == 2 + latency_plan.SEARCH_STEPS


def test_auto_speed_weight_keeps_weight_one_when_it_is_fast_enough(monkeypatch):
    asked = _fake_plans(monkeypatch, lambda w: 0.45)
    assert plan_mac_budget(None, None, None, {}, 0.5).speed_weight == 1.0 and asked == [1.0]
    assert plan_mac_budget(None, None, None, {}, 0.5, speed_weight=3.0).speed_weight == 3.0 and asked[-1] == 3.0


def test_auto_speed_weight_out_of_reach_keeps_the_faster_end(monkeypatch, caplog):
    _fake_plans(monkeypatch, lambda w: 0.8 - 0.001 * w)
    with caplog.at_level(logging.INFO, logger="pruneconf"):
        plan = plan_mac_budget(None, None, None, {}, 0.5)
    assert plan.speed_weight == 16.0 and "even 16 predicts" in caplog.text


def test_mac_budget_records_the_speed_weight(tmp_path, net):
    """The default (auto) and a given weight: both plans are exact and the recipe says which weight."""
    table = _table_file(tmp_path, net)
    for weight, expected in ((None, None), ("2.5", 2.5)):
        recipe = tmp_path / f"r{weight}.yaml"
        extra = [] if weight is None else ["--speed-weight", weight]
        assert main(["init", net, "--input-shape", "1,3,8,8", "-o", str(recipe), "--target-macs", "0.5",
                     "--latency-table", table, "--latency-refine", "0", *extra]) == 0
        recorded = load_recipe(recipe).settings.latency_table["speed_weight"]
        assert recorded == expected if expected is not None else 1.0 <= recorded <= 16.0
        model = build().eval()
        x = torch.randn(SHAPE)
        dense = model(x)
        pruner = Pruner(model, x, str(recipe))
        pruner.apply_masks()  # verifies masked == applied
        assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in build().parameters())
        assert dense.shape == model(x).shape


def test_predictor_is_calibrated_on_two_whole_model_timings():
    pruner = Pruner(build(), torch.randn(SHAPE), {"sparsity": 0})
    table = linear_table(pruner, fixed=0.0)
    half = {c: probe_counts(g.channels)[1] for c, g in table.groups.items()}
    table.dense_ms = 3 * sum(table.units.values())  # whole-model timings three times the units'
    table.calibration = {"kept": half, "ms": 0.5 * table.dense_ms}
    predictor = Predictor(table)
    assert predictor.ms({}) == pytest.approx(table.dense_ms)
    assert predictor.ms(half) == pytest.approx(0.5 * table.dense_ms)


def grouped_net() -> nn.Module:
    """A ResNeXt-like bottleneck: 1x1, grouped 3x3 (4 groups of 8), 1x1; the grouped conv's
    group keeps equal counts in each conv group (``Group.blocks``)."""
    return nn.Sequential(nn.Conv2d(3, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 16, 1), nn.Flatten(), nn.Linear(16 * 64, 10)).eval()


def test_a_grouped_conv_is_timed_at_counts_every_conv_group_keeps():
    """The group of a grouped conv's channels is in the table, probed at multiples of its 4
    conv groups, with a learned step that is one too; a plan (on a synthetic table: these
    timings are noise) keeps such a multiple and prunes exactly."""
    model, x = grouped_net(), torch.randn(SHAPE)
    pruner = Pruner(model, x, {"sparsity": 0})
    grouped = pruner.groups["0"]
    assert grouped.rounds_total and grouped.experts == 4
    table = measure_table(model, x, pruner.groups, SETUP, model_name="net", fingerprint=fingerprint(pruner.graph),
                          input_shapes=["1,3,8,8"], skip={}, min_run_time=0.001)
    curve = table.groups["0"]
    assert curve.counts[-1] == 32 and all(k % 4 == 0 for k in curve.counts) and len(curve.counts) > 3
    assert curve.round_to % 4 == 0 and "3" in curve.ms  # the grouped conv itself is timed
    scores = pruner.channel_scores([g.center for g in pruner.groups.prunable])
    plan = plan_latency(pruner.groups, pruner.recipe, linear_table(pruner), scores, target_latency=0.5)
    assert plan.kept["0"] % 4 == 0 and plan.kept["0"] < 32
    with torch.no_grad():
        dense = model(x)
    pruned = Pruner(model, x, {"sparsity": 1 - plan.kept["0"] / 32})
    pruned.apply_masks()  # raises unless masked == applied
    assert model[3].groups == 4 and model[3].out_channels == plan.kept["0"]
    with torch.no_grad():
        assert model(x).shape == dense.shape


def test_importance_lost_counts_removed_channels_by_their_normalised_importance():
    """Per channel of the plan's groups, mean-normalised: nothing removed loses 0, everything 1;
    inside conv groups the worst channels go, with whole conv groups the worst conv groups."""
    from pruneconf.explore.latency_plan import importance_lost
    from pruneconf.masks.global_rank import normalised

    pruner = Pruner(grouped_net(), torch.randn(SHAPE), {"sparsity": 0})
    group = pruner.groups["0"]
    scores = {"0": np.arange(1.0, 33.0)}  # channel i's importance i + 1; conv group j holds 8j+1 .. 8j+8
    assert group.whole_conv_groups and group.block_width == 8
    assert importance_lost([group], scores, {}) == 0
    assert importance_lost([group], scores, {"0": 0}) == pytest.approx(1.0)
    norm = normalised(scores["0"])
    assert importance_lost([group], scores, {"0": 16}) == pytest.approx(norm[:16].sum() / 32)
    blocks = np.bincount(group.blocks, norm, group.experts)
    assert importance_lost([group], scores, {"0": 16}, {"0"}) == pytest.approx(np.sort(blocks)[:2].sum() / 32)
