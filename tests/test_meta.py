"""Phase one on the meta device: the same recipe text as on the CPU, without any weights."""
import json

import pytest
import torch

from llm_models import TINY_LLAMA_JSON as LLAMA
from pruneconf.cli import main
from pruneconf.meta import build_and_trace
from pruneconf.models import parse_input_shape


NEEDS_VALUES = '''
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 4)

    def forward(self, x):
        y = self.head(x)
        return y[y > 0]  # boolean-mask indexing: the output shape depends on values
'''


def _init(tmp_path, name, model, shape, *extra):
    out = tmp_path / name
    assert main(["init", model, "--input-shape", shape, "-o", str(out), *extra]) == 0
    return out.read_text()


@pytest.mark.parametrize("extra", [[], ["--target-macs", "0.6"]])
def test_torchvision_recipe_is_the_same_on_meta(tmp_path, extra):
    model, shape = "torchvision.models:resnet18", "2,3,32,32"
    cpu = _init(tmp_path, "cpu.yaml", model, shape, "--device", "cpu", *extra)
    meta = _init(tmp_path, "meta.yaml", model, shape, "--device", "meta", *extra)
    assert "fingerprint: sha256:" in cpu and "· MACs " in cpu
    assert meta == cpu


def test_llama_config_recipe_is_the_same_on_meta(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    config, shape = str(tmp_path / "config.json"), "input_ids=1,8:long"
    cpu = _init(tmp_path, "cpu.yaml", config, shape, "--device", "cpu")
    auto = _init(tmp_path, "auto.yaml", config, shape)
    meta = _init(tmp_path, "meta.yaml", config, shape, "--device", "meta")
    assert "mlp.up_proj" in cpu
    assert auto == cpu and meta == cpu


def test_a_config_json_builds_on_meta_by_default(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    model, _, graph, device = build_and_trace(str(tmp_path / "config.json"), {},
                                              [parse_input_shape("input_ids=1,8:long")], "auto")
    assert device == "meta"
    assert all(p.is_meta for p in model.parameters())
    assert graph.graph["params"]["lm_head.weight"] == (64, 32)


def test_an_op_that_needs_values_is_a_located_error_on_meta(tmp_path, capsys):
    (tmp_path / "net.py").write_text(NEEDS_VALUES)
    model = f"{tmp_path / 'net.py'}:Net"
    assert main(["init", model, "--input-shape", "2,4", "--device", "meta", "-o", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "on the meta device" in err and "'<root>' (Net)" in err and "nonzero" in err and "--device cpu" in err
    assert not (tmp_path / "r.yaml").exists()
    assert main(["init", model, "--input-shape", "2,4", "--device", "cpu", "-o", str(tmp_path / "r.yaml")]) == 0


def test_auto_falls_back_to_the_cpu_when_meta_cannot_trace(tmp_path, monkeypatch):
    (tmp_path / "net.py").write_text(NEEDS_VALUES)
    monkeypatch.setattr("pruneconf.meta.prefers_meta", lambda spec: True)
    model, _, _, device = build_and_trace(f"{tmp_path / 'net.py'}:Net", {}, [parse_input_shape("2,4")], "auto")
    assert device == "cpu" and not any(p.is_meta for p in model.parameters())
    assert isinstance(model.head.weight, torch.nn.Parameter)
