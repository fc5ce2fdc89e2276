"""Each kind of bad recipe: one message naming file, line and key; nothing changed or lost."""
import re

import pytest
import torch

from pruneconf import ConfigError, Pruner
from pruneconf.cli import main

NET = '''
import torch.nn as nn

def build():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                         nn.Conv2d(8, 6, 1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 3))
'''

# (edit of the recipe text, fragment of the message, key the message must name)
BAD = [
    (lambda t: t.replace("\n  '4':", "\n  '44':"), "no such group in the model; did you mean '4'?", "groups.44"),
    (lambda t: t.replace("\n  '4':", "\n  '3':"), "'3' is a member of group '0', not a group center", "groups.3"),
    (lambda t: re.sub(r"(\n  '4':[^\n]*\n    sparsity: )0.5", r"\g<1>1.5", t), "expected a number in [0, 1), got 1.5",
     "groups.4.sparsity"),
    (lambda t: re.sub(r"(\n  '4':[^\n]*\n    sparsity: )0.5", r"\g<1>half", t), "got 'half'", "groups.4.sparsity"),
    (lambda t: t.replace("metric: l2_norm", "metric: l2norm"), "unknown metric 'l2norm'", "settings.metric"),
    (lambda t: t.replace("round_to: 1", "roundto: 1"), "did you mean 'round_to'?", "settings.roundto"),
    (lambda t: t.replace("round_to: 1", "round_to: 0"), "expected an integer >= 1, got 0", "settings.round_to"),
    (lambda t: t.replace("metric: l2_norm", "metric: l2_norm\n  metric: l1_norm"), "duplicate key", None),
    (lambda t: t.replace("metric: l2_norm", "metric: &m l2_norm"), "anchor or alias 'm' is not allowed", None),
    (lambda t: t.replace("metric: l2_norm", "metric: !!python/name:os.system"), "tag 'tag:yaml.org,2002:python/name:os.system' is not allowed", None),
    (lambda t: t.replace("\n  round_to: 1", "\n\tround_to: 1"), "found character '\\t'", None),
    (lambda t: t.replace("fingerprint: sha256:", "fingerprint: sha256:f"), "the recipe was made for another model", "fingerprint"),
    (lambda t: t.replace("0.weight: 8x3x3x3", "0.weight: 8x3x5x5").replace("fingerprint: sha256:", "fingerprint: sha256:0"),
     "'0.weight' is 8x3x3x3 in this model but 8x3x5x5 in the recipe", "fingerprint"),
]


@pytest.fixture
def recipe_text(tmp_path):
    net = tmp_path / "net.py"
    net.write_text(NET)
    recipe = tmp_path / "r.yaml"
    assert main(["init", f"{net}:build", "--input-shape", "2,3,8,8", "-o", str(recipe)]) == 0
    return recipe.read_text()


@pytest.mark.parametrize("edit, fragment, key", BAD, ids=[b[1][:40] for b in BAD])
def test_prune_refuses_and_keeps_existing_outputs(tmp_path, capsys, recipe_text, edit, fragment, key):
    bad = tmp_path / "bad.yaml"
    text = edit(recipe_text)
    assert text != recipe_text
    bad.write_text(text)
    out, applied = tmp_path / "out.pt", tmp_path / "out.yaml"
    out.write_bytes(b"previous weights")
    applied.write_bytes(b"previous recipe")
    capsys.readouterr()
    assert main(["prune", str(bad), "--trust-recipe-model", "-o", str(out), "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.match(rf"pruneconf: error: {re.escape(str(bad))}:\d+(:\d+)?: ", err), err
    assert fragment in err and "Traceback" not in err
    if key:
        assert f"'{key}'" in err
    assert out.read_bytes() == b"previous weights" and applied.read_bytes() == b"previous recipe"


@pytest.mark.parametrize("edit, fragment, key", BAD, ids=[b[1][:40] for b in BAD])
def test_model_unchanged_on_bad_recipe(tmp_path, recipe_text, edit, fragment, key):
    import importlib.util

    net = tmp_path / "net.py"
    spec = importlib.util.spec_from_file_location("net_for_errors", net)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build().eval()
    x = torch.randn(2, 3, 8, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(x)
    bad = tmp_path / "bad.yaml"
    bad.write_text(edit(recipe_text))
    with pytest.raises(ConfigError) as err:
        Pruner(model, x, str(bad)).apply_masks()
    assert fragment in str(err.value) and err.value.line is not None
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert not model._forward_pre_hooks
