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

from fuzzing import mutate, mutations
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

def load_and_plan(text: str) -> None:
    recipe = recipe_from_document(parse_document(text, "fuzz.yaml"), "fuzz.yaml")
    check_against(recipe, GROUPS)
    make_plan(MODEL, GROUPS, recipe)


def test_the_valid_recipe_loads():
    load_and_plan(VALID)


@FUZZ
@given(st.lists(mutations(VALID), min_size=1, max_size=4))
def test_mutated_recipes_raise_only_config_errors(ops):
    try:
        load_and_plan(mutate(VALID, ops))
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
