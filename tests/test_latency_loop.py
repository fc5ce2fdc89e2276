"""The closed loop of `--target-latency`: it converges on a fake, deterministic timer, confirms a
plan within the tolerance before trusting it, stops on its bounds, refuses to measure on a
machine or batch the table was not measured for, and the recipe records what it measured; at a
MAC budget the faster of the latency-aware and the uniform plan is kept. No test asserts a real
timing."""
import logging

import pytest
import torch

from pruneconf import Pruner
from pruneconf.cli import main
from pruneconf.errors import ConfigError
from pruneconf.explore.latency_loop import Step, _next_target, choose_faster, refine_plan
from pruneconf.explore.latency_plan import LatencyPlan, plan_latency, write_latency_plan
from pruneconf.explore.latency_table import Predictor
from pruneconf.recipe import build_recipe
from pruneconf.recipe.load import load_recipe, recipe_from_document

from test_latency_plan import SHAPE, _table_file, build, linear_table


@pytest.fixture(scope="module")
def planned():
    """``plan_for(fraction)`` on a synthetic table, and the table's predictor."""
    pruner = Pruner(build(), torch.randn(SHAPE), {"sparsity": 0})
    table = linear_table(pruner, round_to=1)
    scores = pruner.channel_scores(table.groups)

    def plan_for(fraction):
        return plan_latency(pruner.groups, pruner.recipe, table, scores, target_latency=fraction)
    return pruner, table, plan_for


def over_promising(table):
    """A fake whole-model timer: the table's sum of pieces promises more than the model saves
    (an untimed 30 % of the dense time stays), as residual adds and permutes make it."""
    predictor = Predictor(table)
    calls = []

    def measure(plan):
        calls.append(dict(plan.kept))
        return 0.3 + 0.7 * predictor.ms(plan.kept, plan.whole) / table.dense_ms
    return measure, calls


def test_loop_converges_on_an_over_promising_model(planned):
    _, table, plan_for = planned
    measure, calls = over_promising(table)
    alone = plan_for(0.5)
    assert measure(alone) > 0.6  # the table's plan alone misses by > 20 %
    refined = refine_plan(plan_for, measure, 0.5, tolerance=0.05, max_steps=4)
    assert abs(refined.measured / 0.5 - 1) <= 0.05
    # one call above, one per step, one confirming the last step
    assert refined.planned_for < 0.4 and len(refined.steps) <= 5 and len(calls) == 2 + len(refined.steps)
    assert refined.steps[-1].confirmed == pytest.approx(refined.steps[-1].measured)
    assert refined.measured == pytest.approx(measure(refined.plan))
    assert refined.steps[0].planned_for == 0.5 and refined.steps[0].predicted == pytest.approx(alone.fraction)
    again = refine_plan(plan_for, over_promising(table)[0], 0.5)
    assert again.plan.kept == refined.plan.kept and again.history() == refined.history()  # deterministic


def test_loop_keeps_the_closest_plan_when_its_bounds_stop_it(planned):
    _, table, plan_for = planned
    measure, _ = over_promising(table)
    one = refine_plan(plan_for, measure, 0.5, max_steps=0)
    assert len(one.steps) == 1 and one.plan.kept == plan_for(0.5).kept
    ticks = iter(range(100))
    timed_out = refine_plan(plan_for, measure, 0.5, budget_s=0.5, clock=lambda: next(ticks))
    assert len(timed_out.steps) == 1
    noisy = iter([0.8, 0.3, 0.72, 0.35, 0.69, 0.6])  # never within 5 %: the closest measured is kept
    result = refine_plan(plan_for, lambda plan: next(noisy), 0.5, max_steps=3)
    assert len(result.steps) == 4 and result.measured == 0.35


def test_correction_is_a_secant_bisecting_inside_a_bracket():
    assert _next_target([Step(0.5, 0.5, 0.6)], 0.5) == pytest.approx(0.5 * 0.5 / 0.6)  # proportional
    secant = _next_target([Step(0.5, 0.5, 0.7), Step(0.4, 0.4, 0.6)], 0.5)
    assert secant == pytest.approx(0.3)
    # a steep secant that leaves the bracket [0.45, 0.5] (it asks for 0.55): it bisects
    assert _next_target([Step(0.5, 0.5, 0.6), Step(0.3, 0.3, 0.4), Step(0.45, 0.45, 0.46)], 0.5) \
        == pytest.approx(0.475)
    # a near-flat last pair (slope 0.07) is noise: a proportional step, inside the bracket
    assert _next_target([Step(0.5, 0.5, 0.6), Step(0.3, 0.3, 0.45), Step(0.45, 0.45, 0.46)], 0.5) \
        == pytest.approx(0.45 * 0.5 / 0.46)
    # noise: the smaller plan measured slower; step on from the latest point, not back to the first
    assert _next_target([Step(0.5, 0.5, 0.6), Step(0.4, 0.4, 0.7)], 0.5) == pytest.approx(0.4 * 0.5 / 0.7)
    # a table that over-promises by 2x: at most half way to 1, not the dense model itself
    assert _next_target([Step(0.5, 0.5, 0.238)], 0.5) == pytest.approx(0.75)
    # noise: two plans apart measure alike (slope 0.05), and a secant would ask for -0.35
    assert _next_target([Step(0.488, 0.488, 0.542), Step(0.45, 0.45, 0.540)], 0.5) == pytest.approx(0.45 * 0.5 / 0.54)


def test_unreachable_first_plan_is_a_config_error(planned):
    _, table, plan_for = planned
    with pytest.raises(ConfigError, match="cannot reach"):
        refine_plan(plan_for, lambda plan: 0.5, 0.001)


def test_recipe_records_predicted_and_measured(planned):
    pruner, table, plan_for = planned
    refined = refine_plan(plan_for, over_promising(table)[0], 0.5)
    doc = build_recipe(pruner.groups, model="net", input_shapes=[])
    write_latency_plan(doc, pruner.groups, refined.plan, table, 1, 0.5, None, refined.record())
    recorded = recipe_from_document(doc, "r.yaml").settings.latency_table
    assert recorded["hash"] == table.hash and recorded["device_name"] == table.device_name
    assert recorded["predicted"] == round(refined.plan.fraction, 4)
    assert recorded["measured"] == round(refined.measured, 4)
    assert recorded["steps"] == len(refined.steps) and recorded["history"] == refined.history()


@pytest.mark.parametrize("machine, shape, message", [
    ("another cpu", "1,3,8,8", "measured on 'another cpu'"),
    (None, "2,3,8,8", "measured at batch 1, the recipe's inputs have batch 2"),
])
def test_loop_refuses_to_measure_elsewhere(tmp_path, capsys, machine, shape, message):
    net = tmp_path / "net.py"
    from test_latency_plan import NET
    net.write_text(NET)
    table = _table_file(tmp_path, None, machine)
    argv = ["init", f"{net}:build", "--input-shape", shape, "-o", str(tmp_path / "r.yaml"), "--target-latency", "0.5",
            "--latency-table", table]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "--latency-refine 0" in err and "Traceback" not in err
    if machine is not None:  # from the table alone it still plans, and says so in the recipe
        assert main(argv + ["--latency-refine", "0"]) == 0
        assert "off" in load_recipe(tmp_path / "r.yaml").settings.latency_table["loop"]


def test_a_confirmation_inside_the_tolerance_stops_the_loop(planned):
    _, table, plan_for = planned
    confirms = []

    def confirm(plan):
        confirms.append(dict(plan.kept))
        return 0.51
    refined = refine_plan(plan_for, lambda plan: 0.49, 0.5, confirm=confirm)
    assert len(refined.steps) == 1 and len(confirms) == 1 and confirms[0] == refined.plan.kept
    # both timings, weighted by their rounds (the confirmation ran twice as many)
    assert refined.steps[0].confirmed == 0.51 and refined.measured == pytest.approx((0.49 + 2 * 0.51) / 3)
    assert refined.record()["history"].endswith("/ 0.490, confirmed 0.510")


def test_a_confirmation_outside_the_tolerance_corrects_from_the_mean(planned):
    """The first timing says 0.49 (within 5 %), the confirmation 0.57: together 0.543, so the
    loop does not trust the plan, steps on from there and stops once a later plan is confirmed."""
    _, table, plan_for = planned
    first = iter([0.49, 0.5])
    second = iter([0.57, 0.505])
    refined = refine_plan(plan_for, lambda plan: next(first), 0.5, confirm=lambda plan: next(second))
    one, two = refined.steps
    assert one.confirmed == 0.57 and one.fraction == pytest.approx((0.49 + 2 * 0.57) / 3)
    assert two.planned_for == pytest.approx(_next_target([Step(0.5, one.predicted, one.fraction)], 0.5))
    assert two.confirmed == 0.505 and refined.plan.kept == plan_for(two.planned_for).kept
    assert refined.measured == pytest.approx((0.5 + 2 * 0.505) / 3)


def test_two_timings_together_decide_not_the_confirmation_alone(planned):
    """Two timings of one plan on this VM, quiet, differed by 14 % (0.479, 0.546): their
    weighted mean, 0.524, is within 5 % of 0.5, so the plan is kept instead of chasing noise."""
    _, table, plan_for = planned
    refined = refine_plan(plan_for, lambda plan: 0.479, 0.5, confirm=lambda plan: 0.546)
    assert len(refined.steps) == 1 and refined.measured == pytest.approx((0.479 + 2 * 0.546) / 3)


def test_a_missed_confirmation_counts_as_a_step_and_the_budget_holds(planned):
    _, table, plan_for = planned
    missed = refine_plan(plan_for, lambda plan: 0.49, 0.5, max_steps=1, confirm=lambda plan: 0.6)
    assert len(missed.steps) == 1 and missed.measured == pytest.approx((0.49 + 2 * 0.6) / 3)  # + 1 missed confirmation
    ticks = iter(range(100))
    calls = []
    late = refine_plan(plan_for, lambda plan: 0.49, 0.5, budget_s=0.5, clock=lambda: next(ticks),
                       confirm=lambda plan: calls.append(kept) or 0.5)
    assert not calls and late.steps[0].confirmed is None and late.measured == 0.49  # no timing after the budget


def test_identical_mac_plans_are_not_timed():
    def compare(*_):
        raise AssertionError("identical plans must not be timed")
    aware = LatencyPlan({"a": 4, "b": 8}, 1.0, 2.0, {})
    chosen = choose_faster(aware, LatencyPlan({"a": 4}, 1.0, 2.0, {}), {"a": 8, "b": 8}, compare)  # b whole either way
    assert chosen.plan == "latency-aware" and chosen.winner is aware and chosen.speedup is None
    assert "not timed" in chosen.record()["kept_plan"]


def test_plans_that_differ_only_in_whole_conv_groups_are_timed():
    """The same counts, one losing whole conv groups: two different models."""
    seen = []

    def compare(first, second):
        seen.append((first, second))
        return 0.5, 0.4, 0.8
    aware, uniform = LatencyPlan({"a": 4}, 1.0, 2.0, {}, frozenset({"a"})), LatencyPlan({"a": 4}, 1.0, 2.0, {})
    chosen = choose_faster(aware, uniform, {"a": 8}, compare)
    assert seen == [(uniform, aware)] and chosen.winner is aware and chosen.speedup == 1.25


@pytest.mark.parametrize("ratio, kept_plan", [(1.25, "uniform"), (0.8, "latency-aware"), (1.0, "latency-aware")])
def test_the_faster_mac_plan_is_kept(ratio, kept_plan):
    """``compare(uniform, aware)`` -> (uniform's fraction, aware's fraction, aware over uniform)."""
    aware, uniform = LatencyPlan({"a": 2, "b": 8}, 1.0, 2.0, {}), LatencyPlan({"a": 4, "b": 6}, 1.0, 2.0, {})
    seen = []

    def compare(first, second):
        seen.append((first, second))
        return 0.5, 0.5 * ratio, ratio
    chosen = choose_faster(aware, uniform, {"a": 8, "b": 8}, compare)
    assert seen == [(uniform, aware)] and chosen.plan == kept_plan
    assert chosen.winner is (uniform if kept_plan == "uniform" else aware)
    record = chosen.record()
    assert record["kept_plan"] == kept_plan and record["measured_uniform"] == 0.5
    assert record["measured_aware"] == round(0.5 * ratio, 4) and record["aware_speedup"] == round(1 / ratio, 4)
    assert record["measured"] == min(0.5, round(0.5 * ratio, 4))


@pytest.mark.parametrize("ratio, kept_plan", [(1.25, "uniform"), (0.8, "latency-aware")])
def test_init_at_a_mac_budget_keeps_the_faster_plan_in_the_recipe(tmp_path, monkeypatch, caplog, ratio, kept_plan):
    """Through the CLI, with the whole-model timer's comparison faked: the recipe holds the counts
    of the plan kept and records both measured fractions; the pruned model is exact."""
    from pruneconf.explore.latency_loop import WholeModelTimer
    from test_latency_plan import NET, SHAPE, build
    net = tmp_path / "net.py"
    net.write_text(NET)
    table = _table_file(tmp_path, None)
    monkeypatch.setattr(WholeModelTimer, "compare", lambda self, first, second: (0.6, 0.6 * ratio, ratio))
    common = ["init", f"{net}:build", "--input-shape", "1,3,8,8", "--target-macs", "0.5"]
    paths = {name: tmp_path / f"{name}.yaml" for name in ("uniform", "table", "chosen")}
    assert main(common + ["-o", str(paths["uniform"])]) == 0
    assert main(common + ["-o", str(paths["table"]), "--latency-table", table, "--latency-refine", "0"]) == 0
    caplog.set_level(logging.INFO)
    assert main(common + ["-o", str(paths["chosen"]), "--latency-table", table]) == 0
    assert f"keeping the {kept_plan} plan" in caplog.text
    recipes = {name: load_recipe(path) for name, path in paths.items()}
    assert recipes["uniform"].sparsity != recipes["table"].sparsity  # the table's plan differs: it is timed
    expected = recipes["uniform" if kept_plan == "uniform" else "table"]
    model = build()
    pruner = Pruner(model, torch.randn(SHAPE), recipes["chosen"])
    assert {g: len(i) for g, i in pruner.plan().kept.items()} == \
        {g: len(i) for g, i in Pruner(build(), torch.randn(SHAPE), expected).plan().kept.items()}
    recorded = recipes["chosen"].settings.latency_table
    assert recorded["kept_plan"] == kept_plan and recorded["measured_uniform"] == 0.6
    assert recorded["measured_aware"] == round(0.6 * ratio, 4)
    assert "off" in recipes["table"].settings.latency_table["loop"]
    pruner.apply_masks()  # raises unless masked == applied


def _page_faults_per_big_tensor(times: int) -> list[int]:
    """Minor page faults of each of ``times`` makings and droppings of a 64 MiB tensor."""
    import resource
    faults = []
    for _ in range(times):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(16 * 2**20)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults


def test_timings_reuse_memory():
    """Every timing runs under ``reused_memory``: glibc would otherwise map a block over 32 MiB
    afresh on every call and fault in its pages (nearly half of a batch-8 forward on the development
    VM, and different from process to process). Inside, once the heap has settled (it may grow
    again once or twice: what ran before in the process fragments it), a 64 MiB tensor reuses
    pages: most calls fault in none of its 16384 pages."""
    import statistics

    from pruneconf.explore.heap import _glibc, reused_memory
    if _glibc() is None:
        pytest.skip("mallopt is glibc's")
    with reused_memory() as applies:
        faults = _page_faults_per_big_tensor(10)
    assert applies
    assert statistics.median(faults[2:]) < 1000, faults


class _FakeLibc:
    """Records ``mallopt`` and ``malloc_trim`` calls in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, option: int, value: int) -> int:
        self.calls.append(("mallopt", option, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


def test_reused_memory_turns_mmap_off_inside_and_back_on_after(monkeypatch):
    """Inside: no mmap and no trimming, so freed blocks stay in the heap. After, even when the
    block raised: mmap is back at glibc's 32 MiB ceiling (big blocks are mapped afresh, the
    default's behaviour) and the heap's free memory goes back to the system. Checked on the
    calls made, since what the kernel reports depends on the process's history."""
    from pruneconf.explore import heap
    fake = _FakeLibc()
    monkeypatch.setattr(heap, "_glibc", lambda: fake)
    with pytest.raises(RuntimeError), heap.reused_memory() as applies:
        assert applies
        assert fake.calls == [("mallopt", heap._M_MMAP_MAX, 0), ("mallopt", heap._M_TRIM_THRESHOLD, 2**31 - 1)]
        raise RuntimeError("a timing that fails")
    assert fake.calls[2:] == [("mallopt", heap._M_MMAP_MAX, heap._MMAP_MAX_DEFAULT),
                              ("mallopt", heap._M_MMAP_THRESHOLD, 32 * 2**20),
                              ("mallopt", heap._M_TRIM_THRESHOLD, 64 * 2**20), ("malloc_trim", 0)]
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    with heap.reused_memory() as applies:
        assert not applies


def test_every_timing_runs_with_memory_reused(monkeypatch):
    """``time_ms`` (the tables' units and the whole-model timings) calls under ``reused_memory``."""
    import contextlib

    from pruneconf.explore import latency
    inside = []
    active = [False]

    @contextlib.contextmanager
    def recording():
        active[0] = True
        try:
            yield True
        finally:
            active[0] = False

    monkeypatch.setattr(latency, "reused_memory", recording)
    latency.time_ms(lambda: inside.append(active[0]), (), 1, 0.001)
    assert inside and all(inside)


def test_whole_model_timings_take_at_least_model_calls_samples():
    """A slow call (20 ms) with a 1 ms run time is still timed MODEL_CALLS times over: one sample
    would let one busy moment decide a round."""
    import time as clock

    from pruneconf.explore.latency import MODEL_CALLS, time_ms
    calls = []

    def slow() -> None:
        calls.append(1)
        clock.sleep(0.02)

    assert time_ms(slow, (), 1, 0.001, "min", min_calls=MODEL_CALLS) >= 20
    assert len(calls) >= 2 + MODEL_CALLS  # warm-up, the probe, then the timed blocks
    calls.clear()
    time_ms(slow, (), 1, 0.001, "min")
    assert len(calls) < 2 + MODEL_CALLS
