"""Recipes: generated from a template, commented, and regenerated without losing edits."""
import pytest
import torch
from torch import nn

from helpers import analyse
from pruneconf.recipe import build_recipe, load_document, write_atomic, write_recipe
from pruneconf.recipe.yamlio import dump_document, round_trip_yaml
from pruneconf.trace.fingerprint import fingerprint


def small(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3))


def groups_of(model):
    return analyse(model.eval(), torch.randn(2, 3, 6, 6))


def test_generated_recipe_has_header_settings_and_commented_groups(tmp_path):
    groups = groups_of(small())
    text = write_recipe(tmp_path / "r.yaml", groups, model="tests:small", input_shapes=[[2, 3, 6, 6]])
    doc = round_trip_yaml().load(text)
    assert doc["version"] == 1 and doc["model"] == "tests:small"
    assert doc["input_shapes"] == [[2, 3, 6, 6]]
    assert doc["fingerprint"] == fingerprint(groups.graph)
    assert dict(doc["settings"]) == {"default_sparsity": 0.5, "metric": "l2_norm", "round_to": 1, "exclude": [],
                                     "mode": "uniform", "max_sparsity": 0.9, "conv_groups": "inside"}
    assert list(doc["groups"]) == ["0", "3"]
    assert doc["groups"]["0"]["sparsity"] == 0.5
    assert "# 8 ch · 3 layers: 0, 1, 3 · MACs" in text
    assert "#   6 (3 ch): reaches the model output" in text


def test_regenerate_keeps_edited_values_and_comments(tmp_path):
    path = tmp_path / "r.yaml"
    write_atomic(path, write_recipe(path, groups_of(small()), model="m:f", input_shapes=[[2, 3, 6, 6]]))
    doc = load_document(path)
    doc["groups"]["0"]["sparsity"] = 0.25
    doc["groups"]["0"].yaml_add_eol_comment("first conv: be gentle", "sparsity")
    doc["settings"]["metric"] = "fpgm"
    write_atomic(path, dump_document(doc))

    write_atomic(path, write_recipe(path, groups_of(small()), model="m:f", input_shapes=[[2, 3, 6, 6]]))
    text = path.read_text()
    again = load_document(path)
    assert again["groups"]["0"]["sparsity"] == 0.25
    assert "# first conv: be gentle" in text
    assert again["settings"]["metric"] == "fpgm"
    assert again["groups"]["3"]["sparsity"] == 0.5
    # regenerating twice is stable
    write_atomic(path, write_recipe(path, groups_of(small()), model="m:f", input_shapes=[[2, 3, 6, 6]]))
    assert path.read_text() == text


def test_regenerate_for_a_changed_model_updates_fingerprint_and_groups(tmp_path):
    path = tmp_path / "r.yaml"
    write_atomic(path, write_recipe(path, groups_of(small(8)), model="m:f", input_shapes=[[2, 3, 6, 6]]))
    old = load_document(path)["fingerprint"]
    changed = groups_of(small(12))
    write_atomic(path, write_recipe(path, changed, model="m:f", input_shapes=[[2, 3, 6, 6]]))
    doc = load_document(path)
    assert doc["fingerprint"] != old and doc["fingerprint"] == fingerprint(changed.graph)
    assert "# 12 ch" in path.read_text()


def test_build_recipe_from_template_is_deterministic():
    groups = groups_of(small())
    a = dump_document(build_recipe(groups, model="m:f", input_shapes=[[2, 3, 6, 6]]))
    b = dump_document(build_recipe(groups_of(small()), model="m:f", input_shapes=[[2, 3, 6, 6]]))
    assert a == b


def test_write_atomic_leaves_no_partial_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("keep me")
    with pytest.raises(TypeError):
        write_atomic(path, object())  # not text: fails while writing
    assert path.read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["r.yaml"]
