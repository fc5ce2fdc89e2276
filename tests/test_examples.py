"""Examples stay runnable."""
import runpy
import sys
from pathlib import Path

from pruneconf.recipe import load_document


def test_generate_recipe_example(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r50.yaml"
    monkeypatch.setattr(sys, "argv", ["generate_recipe.py", str(out)])
    runpy.run_path(str(Path(__file__).parents[1] / "examples" / "generate_recipe.py"), run_name="__main__")
    assert "layer1.0.conv1" in load_document(out)["groups"]
    assert "fc: reaches the model output" in capsys.readouterr().out


def test_oneshot_tutorial_example(capsys):
    runpy.run_path(str(Path(__file__).parents[1] / "examples" / "oneshot_mobilenet_v2.py"), run_name="__main__")
    assert "reduced FLOPS 40.99%  (314130496 -> 185359152)" in capsys.readouterr().out
