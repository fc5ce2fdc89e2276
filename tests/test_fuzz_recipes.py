"""Property test: a mutated recipe is either fine or a ConfigError — never anything else.

`PRUNECONF_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz_recipes.py` runs the long
version; CI runs 1,000 cases per property.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from helpers import analyse
from pruneconf import ConfigError
from pruneconf.masks import make_plan
from pruneconf.recipe import write_recipe
from pruneconf.recipe.load import check_against, load_recipe, recipe_from_document
from pruneconf.recipe.yamlio import parse_document

EXAMPLES = int(os.environ.get("PRUNECONF_FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                         nn.Conv2d(8, 6, 1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 3)).eval()


MODEL = model()
GROUPS = analyse(MODEL, torch.randn(2, 3, 8, 8))
VALID = write_recipe("/nonexistent/never-read.yaml", GROUPS, model="m:f", input_shapes=[[2, 3, 8, 8]])
LINES = VALID.splitlines()

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["0.5", "-0", ".nan", "1e309", "[]", "{}", "[0.1, 2]", "{a: 1}",
                                           "!!binary aGVsbG8=", "&a 1", "*a", "'", '"', "- x", "|", ">", "~",
                                           "0x1F", "1_000", "yes", "l2_norm", "features.0", "\t0.5"]))


def render(value) -> str:
    return value if isinstance(value, str) else repr(value)


def set_value(lines, index, value):
    line = lines[index]
    key, sep, _ = line.partition(":")
    lines[index] = f"{key}{sep} {render(value)}" if sep else render(value)
    return lines


mutation = st.one_of(
    st.tuples(st.just("value"), st.integers(0, len(LINES) - 1), scalars),
    st.tuples(st.just("key"), st.integers(0, len(LINES) - 1), st.text(max_size=10)),
    st.tuples(st.just("delete"), st.integers(0, len(LINES) - 1), st.none()),
    st.tuples(st.just("duplicate"), st.integers(0, len(LINES) - 1), st.none()),
    st.tuples(st.just("indent"), st.integers(0, len(LINES) - 1), st.integers(-4, 4)),
    st.tuples(st.just("insert"), st.integers(0, len(VALID)), st.text(max_size=8)),
)


def mutate(ops) -> str:
    lines = list(LINES)
    text = None
    for op, where, arg in ops:
        where = min(where, len(lines) - 1) if lines else 0
        if not lines:
            break
        if op == "value":
            lines = set_value(lines, where, arg)
        elif op == "key":
            _, sep, rest = lines[where].partition(":")
            indent = len(lines[where]) - len(lines[where].lstrip())
            lines[where] = " " * indent + arg + (sep + rest if sep else ":")
        elif op == "delete":
            del lines[where]
        elif op == "duplicate":
            lines.insert(where, lines[where])
        elif op == "indent":
            lines[where] = (" " * arg + lines[where]) if arg > 0 else lines[where][-arg:]
        elif op == "insert":
            joined = "\n".join(lines)
            at = min(where, len(joined))
            text = joined[:at] + arg + joined[at:]
            lines = text.split("\n")
    return "\n".join(lines) + "\n"


def load_and_plan(text: str) -> None:
    recipe = recipe_from_document(parse_document(text, "fuzz.yaml"), "fuzz.yaml")
    check_against(recipe, GROUPS)
    make_plan(MODEL, GROUPS, recipe)


def test_the_valid_recipe_loads():
    load_and_plan(VALID)


@FUZZ
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_recipes_raise_only_config_errors(ops):
    try:
        load_and_plan(mutate(ops))
    except ConfigError as err:
        assert err.path == "fuzz.yaml"


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_config_errors(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    path.write_bytes(data)
    try:
        recipe = load_recipe(path)
        check_against(recipe, GROUPS)
    except ConfigError as err:
        assert err.path == str(path)


@pytest.mark.parametrize("text, line, key", [
    ("version: 1\ngroups:\n  '0':\n    sparsity: 0.5\n  '0':\n    sparsity: 0.2\n", 5, None),
    ("version: 1\nsettings:\n  metric: &m l2_norm\ngroups: {}\n", 3, None),
    ("version: 1\ngroups:\n  '0': !!python/object/apply:os.system ['true']\n", 3, None),
    ("version: 1\ngroups:\n  '0':\n\tsparsity: 0.5\n", 4, None),
])
def test_syntax_errors_name_the_line(text, line, key):
    with pytest.raises(ConfigError) as err:
        load_and_plan(text)
    assert err.value.line == line and err.value.path == "fuzz.yaml"
