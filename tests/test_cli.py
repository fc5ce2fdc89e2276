"""The `pruneconf` command: init, show, graph, and one-line errors with exit status 2."""
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from pruneconf.cli import main
from pruneconf.recipe import load_document

USER_MODEL = '''
import torch.nn as nn

def build(width=8):
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2))
'''


@pytest.fixture
def user_model(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(USER_MODEL)
    return f"{path}:build"


def test_init_then_show(tmp_path, user_model, capsys):
    out = tmp_path / "recipe.yaml"
    assert main(["init", user_model, "--input-shape", "2,3,8,8", "--model-arg", "width=6",
                 "--sparsity", "0.3", "-o", str(out)]) == 0
    doc = load_document(out)
    assert doc["settings"]["default_sparsity"] == 0.3 and list(doc["groups"]) == ["0"]
    assert dict(doc["model_args"]) == {"width": 6}
    assert main(["show", str(out)]) == 0  # from the recipe alone: nothing is built
    assert "| 0     |        6 |      0.3 |    5 |" in capsys.readouterr().out


def test_show_prints_a_table(tmp_path, user_model, capsys):
    out = tmp_path / "recipe.yaml"
    assert main(["init", user_model, "--input-shape", "2,3,8,8", "-o", str(out)]) == 0
    assert main(["show", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| group | channels | sparsity | keep |" in text.replace("  ", " ").replace("  ", " ")
    assert "| 0 " in text and "Not prunable:" in text and "5 (2 ch): reaches the model output" in text


def test_show_does_not_guess_what_a_global_recipe_keeps(tmp_path, user_model, capsys):
    out = tmp_path / "recipe.yaml"
    assert main(["init", user_model, "--input-shape", "2,3,8,8", "--set", "mode=global", "-o", str(out)]) == 0
    assert main(["show", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| 0     |        8 |   global | global |" in text and "mode: global" in text


def test_torchvision_model_and_graph_exports(tmp_path):
    recipe = tmp_path / "r18.yaml"
    assert main(["init", "torchvision.models:resnet18", "--input-shape", "2,3,32,32", "-o", str(recipe)]) == 0
    assert "layer1.0.conv1" in load_document(recipe)["groups"]
    graphml, dot = tmp_path / "g.graphml", tmp_path / "g.dot"
    assert main(["graph", "torchvision.models:resnet18", "--input-shape", "2,3,32,32", "-o", str(graphml)]) == 0
    assert main(["graph", "torchvision.models:resnet18", "--input-shape", "2,3,32,32", "-o", str(dot)]) == 0
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    nodes = ET.parse(graphml).getroot().findall(".//g:node", ns)
    assert any(n.get("id") == "layer1.0.conv1" for n in nodes)
    assert '"layer1.0.conv1" -> "layer1.0.bn1";' in dot.read_text()


@pytest.mark.parametrize("argv, message", [
    (["init", "nosuchmodule:f", "--input-shape", "1,3", "-o", "x.yaml"], "cannot import 'nosuchmodule'"),
    (["init", "torchvision.models", "--input-shape", "1,3", "-o", "x.yaml"], "expected MODEL as 'module:callable'"),
    (["init", "torchvision.models:resnet18", "--input-shape", "1,3,a", "-o", "x.yaml"], "comma-separated integers"),
    (["init", "torchvision.models:resnet18", "--input-shape", "1,3,8,8", "-o", "x.yaml"], "tracing failed in module 'layer2.0.bn1'"),
    (["graph", "torchvision.models:resnet18", "--input-shape", "2,3,8,8", "-o", "x.png"], "expected a .graphml or .dot"),
    (["show", "missing.yaml"], "missing.yaml: cannot read the file"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "x.yaml").exists()


def test_console_script_is_installed(tmp_path, user_model):
    out = tmp_path / "r.yaml"
    run = subprocess.run([sys.executable, "-m", "pruneconf", "init", user_model, "--input-shape", "2,3,8,8",
                          "-o", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stderr and out.exists()


def test_prune_writes_weights_and_applied_recipe_that_reload(tmp_path, user_model, capsys):
    import torch

    from pruneconf.models import build_model

    recipe, weights = tmp_path / "r.yaml", tmp_path / "in.pt"
    assert main(["init", user_model, "--input-shape", "2,3,8,8", "--model-arg", "width=8", "-o", str(recipe)]) == 0
    torch.save(build_model(user_model, {"width": 8}).state_dict(), weights)
    out = tmp_path / "pruned.pt"
    assert main(["prune", str(recipe), "--model", user_model, "--weights", str(weights), "-o", str(out)]) == 0
    state = torch.load(out, weights_only=True)
    assert state["0.weight"].shape[0] == 4 and state["5.weight"].shape == (2, 4)
    applied = load_document(tmp_path / "pruned.yaml")["applied"]
    assert dict(applied["0"]) == {"channels": 8, "kept": 4, "sparsity": 0.5, "indices": applied["0"]["indices"]}
    # existing outputs are never overwritten without --force
    before = out.read_bytes()
    assert main(["prune", str(recipe), "--model", user_model, "-o", str(out)]) == 2
    assert out.read_bytes() == before
    assert main(["prune", str(recipe), "--model", user_model, "-o", str(out), "--force"]) == 0
    # a pickled (non weights-only) file is refused
    bad = tmp_path / "bad.pt"
    torch.save({"model": build_model(user_model, {})}, bad)
    assert main(["prune", str(recipe), "--model", user_model, "--weights", str(bad), "-o", str(tmp_path / "x.pt")]) == 2
    assert "not a weights-only state dict" in capsys.readouterr().err


def test_flops_before_and_after(tmp_path, user_model, capsys):
    recipe = tmp_path / "r.yaml"
    assert main(["init", user_model, "--input-shape", "2,3,8,8", "-o", str(recipe)]) == 0
    assert main(["flops", user_model, "--input-shape", "2,3,8,8", "--recipe", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "| MACs " in out and "| params " in out and "%" in out
