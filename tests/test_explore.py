"""Planning sparsity: cost prediction, reports under rounding, global ranking, budgets, overrides."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import calibrated
from pruneconf import ConfigError, Pruner
from pruneconf.recipe.budget import plan_budget, sparsity_for, write_budget
from pruneconf.recipe.overrides import apply_overrides, overridden_recipe
from pruneconf.analysis.predict import CostModel
from pruneconf.report import build_report, format_report, report_csv
from pruneconf.recipe import build_recipe
from pruneconf.recipe.load import Recipe, Settings, recipe_from_document
from pruneconf.recipe.plan import kept_channels


class Widths(nn.Module):
    """Known channel counts: 20, 36 and 64, then a classifier."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 20, 3, padding=1)
        self.bn = nn.BatchNorm2d(20)
        self.b = nn.Conv2d(20, 36, 3, padding=1)
        self.dw = nn.Conv2d(36, 36, 3, padding=1, groups=36)
        self.c = nn.Conv2d(36, 64, 1)
        self.fc = nn.Linear(64 * 2 * 2, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.a(x)))
        x = F.relu(self.dw(self.b(x)))
        x = F.adaptive_avg_pool2d(F.relu(self.c(x)), 2).flatten(1)
        return self.fc(x)


X = torch.randn(2, 3, 8, 8)


def recipe(**settings) -> Recipe:
    sparsity = settings.pop("groups", {})
    return Recipe(path="<test>", settings=Settings(**settings), sparsity=sparsity)


def outputs(model):
    with torch.no_grad():
        return model.eval()(X)


def pruned(model, rec):
    """Prune a calibrated copy; check masked ≡ applied; return the pruner (model applied)."""
    model = calibrated(copy.deepcopy(model), X)
    pruner = Pruner(model, X, rec)
    pruner.register_masks()
    masked = outputs(model)
    pruner.apply_masks()
    assert torch.allclose(outputs(model), masked, atol=1e-5)
    return pruner


def test_report_under_round_to_8_gives_realised_sparsity_and_measured_totals():
    model = Widths()
    before = Pruner(copy.deepcopy(model), X).report()
    pruner = pruned(model, recipe(default_sparsity=0.5, round_to=8))
    report = build_report(pruner.groups, pruner.applied, pruner.recipe)
    rows = {r.center: r for r in report.rows}
    # 20 ch: remove 10 -> keep 10 -> nearest multiple of 8 is 8; 36 -> 18 -> 16; 64 -> 32
    assert (rows["a"].kept, rows["b"].kept, rows["c"].kept) == (8, 16, 32)
    assert rows["a"].requested == 0.5 and rows["a"].realised == pytest.approx(0.6)
    assert rows["b"].realised == pytest.approx(1 - 16 / 36) and rows["c"].realised == pytest.approx(0.5)
    after = pruner.report()
    assert report.macs == (before["macs"], after["macs"]) and report.params == (before["params"], after["params"])
    assert rows["a"].params[0] > rows["a"].params[1] > 0
    text = format_report(report)
    assert "| a " in text and "20 → 8" in text and "0.600" in text and "total (model)" in text
    assert report_csv(report).splitlines()[1].startswith("a,0.5,0.600000,20,8,")


def test_sparsity_zero_reports_and_changes_nothing():
    model = Widths()
    pruner = pruned(model, recipe(default_sparsity=0.0))
    report = build_report(pruner.groups, pruner.applied, pruner.recipe)
    assert all(r.realised == 0 and r.kept == r.channels for r in report.rows)
    assert report.macs[0] == report.macs[1] and report.params[0] == report.params[1]
    assert torch.equal(outputs(pruner.model), outputs(calibrated(copy.deepcopy(model), X)))


@pytest.mark.parametrize("kept", [{"a": 7, "b": 30, "c": 1}, {"b": 5}, {"a": 19, "c": 63}])
def test_cost_model_predicts_the_applied_model_exactly(kept):
    model = Widths()
    groups = Pruner(copy.deepcopy(model), X).groups
    sparsity = {c: sparsity_for(groups[c].channels, k) for c, k in kept.items()}
    pruner = pruned(model, recipe(default_sparsity=0.0, groups=sparsity))
    predicted = CostModel(groups).costs(kept)
    assert (predicted.macs, predicted.params) == (pruner.report()["macs"], pruner.report()["params"])
    assert CostModel(groups).macs(kept) == pytest.approx(predicted.macs)


def test_global_ranking_honours_fraction_caps_exclude_and_round_to():
    model = Widths()
    pruner = pruned(model, recipe(mode="global", default_sparsity=0.5, max_sparsity=0.75, round_to=4,
                                  exclude=("c",)))
    kept = {c: len(v) for c, v in pruner.applied.kept.items()}
    assert "c" not in kept and pruner.model.c.out_channels == 64
    assert all(k % 4 == 0 and k >= kept_channels(ch, 0.75, 4) for k, ch in
               ((kept.get("a", 20), 20), (kept.get("b", 36), 36)))
    removed = (20 - kept.get("a", 20)) + (36 - kept.get("b", 36))
    assert abs(removed - 28) <= 4  # half of 56 channels, up to rounding
    rows = {r.center: r for r in build_report(pruner.groups, pruner.applied, pruner.recipe).rows}
    assert (rows["a"].requested, rows["b"].requested, rows["c"].requested) == (0.5, 0.5, 0.0)
    assert rows["a"].realised == pytest.approx(1 - kept.get("a", 20) / 20)


def test_global_ranking_is_scale_free_per_group_and_zero_is_dense():
    model = calibrated(Widths(), X)
    rec = recipe(mode="global", default_sparsity=0.4, metric="bn_gamma")
    plain = Pruner(copy.deepcopy(model), X, rec).plan()
    scaled_model = copy.deepcopy(model)
    with torch.no_grad():
        scaled_model.bn.weight.mul_(100)  # group 'a' scores x100: mean normalisation cancels it
    scaled = Pruner(scaled_model, X, rec).plan()
    assert {c: v.tolist() for c, v in plain.kept.items()} == {c: v.tolist() for c, v in scaled.kept.items()}
    assert Pruner(copy.deepcopy(model), X, recipe(mode="global", default_sparsity=0.0)).plan().kept == {}


def test_global_per_group_cap_of_zero_keeps_the_group_whole():
    doc = build_recipe(Pruner(Widths(), X).groups, settings={"mode": "global", "default_sparsity": 0.6})
    rec = overridden_recipe(doc, ["b.max_sparsity=0"], "<test>")
    pruner = pruned(Widths(), rec)
    assert "b" not in pruner.applied.kept and pruner.model.b.out_channels == 36


def test_budget_lands_on_the_target_and_the_written_recipe_reproduces_it():
    model = Widths()
    groups = Pruner(copy.deepcopy(model), X).groups
    for round_to in (1, 4):
        doc = build_recipe(groups, settings={"round_to": round_to})
        base = recipe_from_document(doc, "<test>")
        kept = plan_budget(groups, base, 0.5)
        write_budget(doc, groups, kept, 0.5, round_to)
        rec = recipe_from_document(doc, "<test>")
        assert rec.settings.target_macs == 0.5
        pruner = pruned(model, rec)
        assert {c: len(v) for c, v in pruner.applied.kept.items()} == kept
        dense = CostModel(groups).macs({})
        assert abs(pruner.report()["macs"] / dense - 0.5) < 0.03  # a tiny model has coarse steps


def test_budget_refuses_unreachable_targets_and_global_mode():
    groups = Pruner(Widths(), X).groups
    with pytest.raises(ConfigError, match="cannot reach"):
        plan_budget(groups, recipe(max_sparsity=0.1), 0.2)
    with pytest.raises(ConfigError, match="mode: uniform"):
        plan_budget(groups, recipe(mode="global"), 0.5)
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        plan_budget(groups, recipe(), 1.5)


@pytest.mark.parametrize("round_to, readme", [(1, 0.5000017), (8, 0.4999975)])
def test_budget_lands_half_the_macs_of_resnet50_where_readme_says(round_to, readme):
    """README: "it lands at 0.5000017 of the dense MACs (0.4999975 with `round_to: 8`), counted
    on the applied model" -- to the 7 digits it prints, on the model actually pruned."""
    import torchvision

    x = torch.randn(1, 3, 224, 224)
    model = torchvision.models.resnet50()
    pruner = Pruner(model, x)
    dense = pruner.report()["macs"]
    doc = build_recipe(pruner.groups)
    doc["settings"]["round_to"] = round_to
    kept = plan_budget(pruner.groups, recipe_from_document(doc, "<r50>"), 0.5, pruner.skipped())
    assert all(k % round_to == 0 for k in kept.values())
    write_budget(doc, pruner.groups, kept, 0.5, round_to)
    applied = Pruner(calibrated(model, x), x, recipe_from_document(doc, "<r50>"))
    plan = applied.apply_masks()
    assert {c: len(k) for c, k in plan.kept.items() if len(k) < applied.groups[c].channels} == kept
    assert applied.report()["macs"] / dense == pytest.approx(readme, abs=5e-8)


def test_overrides_settings_groups_and_errors():
    groups = Pruner(Widths(), X).groups
    doc = build_recipe(groups)
    rec = overridden_recipe(doc, ["b=0", "default_sparsity=0.3", "mode=global", "round_to=4"], "<test>")
    # settings first, groups at the old default follow it, the named group is set
    assert rec.settings.default_sparsity == 0.3 and rec.settings.mode == "global" and rec.settings.round_to == 4
    assert rec.sparsity == {"a": 0.3, "b": 0.0, "c": 0.3}
    with pytest.raises(ConfigError, match="did you mean 'default_sparsity'"):
        apply_overrides(build_recipe(groups), ["default_sparsty=0.3"])
    with pytest.raises(ConfigError, match="'groups.b.sparsity': expected a number in \\[0, 1\\)"):
        overridden_recipe(build_recipe(groups), ["b=1.5"], "<test>")
    with pytest.raises(ConfigError, match="unknown mode 'local'"):
        overridden_recipe(build_recipe(groups), ["mode=local"], "<test>")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides(build_recipe(groups), ["b"])


def test_sensitivity_leaves_the_model_untouched_and_budget_prunes_least_sensitive_first():
    from pruneconf.explore.sensitivity import analyse_sensitivity, budget_by_sensitivity

    model = calibrated(Widths(), X)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    dense = outputs(model)

    def closeness(m):  # higher is better; pruning any channel of group 'b' costs 10
        penalty = 10.0 if bool((m.b.weight.flatten(1).abs().sum(1) == 0).any()) else 0.0
        return -float((m(X) - dense).abs().mean()) - penalty

    groups = Pruner(copy.deepcopy(model), X).groups
    result = analyse_sensitivity(model, groups, recipe(), closeness, [0.25, 0.5])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not model._forward_pre_hooks and torch.equal(outputs(model), dense)
    assert result.ranking()[-1] == "b" and set(result.scores) == {"a", "b", "c"}
    assert result.kept["a"] == {0.25: 15, 0.5: 10}
    kept = budget_by_sensitivity(result, groups, recipe(), 0.8)
    assert "b" not in kept
    assert abs(CostModel(groups).macs(kept) / CostModel(groups).macs({}) - 0.8) < 0.05
