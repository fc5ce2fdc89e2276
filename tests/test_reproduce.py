"""A checked-in recipe rebuilds the pruned model anywhere: no pickle, no guessed channels."""
import subprocess
import sys

import pytest
import torch
import torchvision

from helpers import calibrated
from pruneconf import ConfigError, Pruner, load_pruned
from pruneconf.recipe import load_document, write_atomic, write_recipe
from pruneconf.recipe.applied import parse_ranges, ranges
from pruneconf.recipe.yamlio import dump_document

REBUILD = """
import sys, torch, torchvision, pruneconf
torch.set_num_threads({threads})
model = torchvision.models.get_model("{name}")
pruneconf.load_pruned(model, sys.argv[1], sys.argv[2])
with torch.no_grad():
    torch.save(model.eval()(torch.load(sys.argv[3])), sys.argv[4])
"""


def prune_and_save(tmp_path, name, size, sparsity=0.5):
    x = torch.randn(2, 3, size, size)
    model = calibrated(torchvision.models.get_model(name), x)
    recipe, applied, weights = tmp_path / "r.yaml", tmp_path / "pruned.yaml", tmp_path / "pruned.pt"
    write_atomic(recipe, write_recipe(recipe, Pruner(model, x, {}).groups, model=f"torchvision.models:{name}",
                                      input_shapes=[list(x.shape)], settings={"default_sparsity": sparsity}))
    pruner = Pruner(model, x, str(recipe))
    pruner.apply_masks()
    pruner.write_applied(recipe, applied)
    torch.save(model.state_dict(), weights)
    with torch.no_grad():
        expected = model.eval()(x)
    return x, expected, applied, weights


@pytest.mark.parametrize("name, size", [("resnet50", 64), ("mobilenet_v2", 64), ("vit_b_16", 224)])
def test_round_trip_in_a_new_process(tmp_path, name, size):
    x, expected, applied, weights = prune_and_save(tmp_path, name, size)
    torch.save(x, tmp_path / "x.pt")
    code = REBUILD.format(name=name, threads=torch.get_num_threads())
    run = subprocess.run([sys.executable, "-c", code, str(applied), str(weights), str(tmp_path / "x.pt"),
                          str(tmp_path / "y.pt")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert torch.equal(torch.load(tmp_path / "y.pt"), expected)


def test_recipe_edited_after_apply_is_refused(tmp_path):
    _, _, applied, weights = prune_and_save(tmp_path, "resnet18", 32)
    doc = load_document(applied)
    doc["groups"]["layer1.0.conv1"]["sparsity"] = 0.25
    write_atomic(applied, dump_document(doc))
    model = torchvision.models.resnet18()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"pruned.yaml:\d+: 'groups.layer1.0.conv1': the applied section "
                                          r"no longer matches: sparsity is now 0.25 but 0.5 was applied"):
        load_pruned(model, applied, weights)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_weights_that_do_not_fit_leave_the_model_as_it_was(tmp_path):
    _, _, applied, _ = prune_and_save(tmp_path, "resnet18", 32)
    model = torchvision.models.resnet18()
    original = torchvision.models.resnet18().state_dict()
    with pytest.raises(ConfigError, match="does not fit the pruned model"):
        load_pruned(model, applied, original)
    assert model.conv1.out_channels == 64 and model.conv1.weight.shape[0] == 64


def test_ranges_round_trip_and_reject_garbage():
    for indices in ([0], [0, 1, 2, 5, 7, 8, 20], list(range(100))):
        assert parse_ranges(ranges(indices), 100).tolist() == indices
    assert ranges([3, 1, 2, 9]) == "1-3,9"
    with pytest.raises(ValueError):
        parse_ranges("1-3,x", 10)


def test_generated_and_applied_recipes_follow_the_json_schema(tmp_path):
    import json
    from pathlib import Path

    import jsonschema
    from ruamel.yaml import YAML

    schema = json.loads((Path(__file__).parents[1] / "templates" / "recipe.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    _, _, applied, _ = prune_and_save(tmp_path, "resnet18", 32)
    for path in (tmp_path / "r.yaml", applied):
        jsonschema.validate(YAML(typ="safe").load(path.read_text()), schema)
    bad = YAML(typ="safe").load(applied.read_text())
    bad["groups"]["conv1"]["sparsity"] = 1.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_fingerprint_mismatch_names_the_first_layer_that_differs():
    from pruneconf.trace.fingerprint import first_difference

    old = {"a.weight": "8x3", "b.weight": "4x8"}
    assert first_difference(old, {"a.weight": "8x3", "b.weight": "5x8"}) == \
        "'b.weight' is 5x8 in this model but 4x8 in the recipe"
    assert first_difference(old, {"a.weight": "8x3", "n.weight": "2x2", "b.weight": "4x8"}) == \
        "'n.weight' (2x2) is new in this model"
    assert first_difference(old, {"a.weight": "8x3"}) == "'b.weight' (4x8) is gone from this model"


def test_same_inputs_give_a_byte_identical_recipe(tmp_path):
    texts = []
    for _ in range(2):
        model = torchvision.models.resnet18()
        texts.append(write_recipe(tmp_path / "none.yaml", Pruner(model, torch.randn(2, 3, 32, 32), {}).groups,
                                  model="torchvision.models:resnet18", input_shapes=[[2, 3, 32, 32]]))
    assert texts[0] == texts[1]
