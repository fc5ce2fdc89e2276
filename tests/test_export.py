"""Pruned models export to ONNX and TorchScript and compute the same there."""
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torchvision

from helpers import calibrated
from pruneconf import Pruner, load_pruned
from pruneconf.cli import main
from pruneconf.export import export
from pruneconf.recipe import write_atomic, write_recipe


@pytest.fixture(scope="module")
def pruned():
    x = torch.randn(2, 3, 32, 32)
    model = calibrated(torchvision.models.mobilenet_v3_small(), x)
    Pruner(model, x, {"sparsity": 0.5}).apply_masks()
    with torch.no_grad():
        return model.eval(), x, model(x)


def close(a, b) -> bool:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max()) <= 1e-4 * max(1.0, float(np.abs(b).max()))


def test_onnx_matches_pytorch(tmp_path, pruned):
    model, x, expected = pruned
    path = export(model, x, tmp_path / "m.onnx", "onnx")
    onnx.checker.check_model(onnx.load(str(path)))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert close(got, expected.numpy())


def test_torchscript_matches_pytorch(tmp_path, pruned):
    model, x, expected = pruned
    path = export(model, x, tmp_path / "m.pt", "torchscript")
    with torch.no_grad():
        got = torch.jit.load(str(path))(x)
    assert close(got.numpy(), expected.numpy())


def test_cli_exports_from_an_applied_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    model = torchvision.models.resnet18()
    write_atomic(recipe, write_recipe(recipe, Pruner(model, torch.randn(2, 3, 32, 32), {}).groups,
                                      model="torchvision.models:resnet18", input_shapes=[[2, 3, 32, 32]]))
    assert main(["prune", str(recipe), "-o", str(tmp_path / "p.pt")]) == 0
    onnx_path = tmp_path / "p.onnx"
    assert main(["export", str(tmp_path / "p.yaml"), "--weights", str(tmp_path / "p.pt"), "-o", str(onnx_path)]) == 0
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 3, 32, 32]
    state = torch.load(tmp_path / "p.pt", weights_only=True)
    assert state["conv1.weight"].shape[0] == 32
    pruned = load_pruned(torchvision.models.resnet18(), tmp_path / "p.yaml", tmp_path / "p.pt").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = pruned(x).numpy()
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert got.shape == expected.shape and np.isfinite(expected).all() and np.abs(expected).max() > 0
    assert close(got, expected)
    assert main(["export", str(tmp_path / "p.yaml"), "--weights", str(tmp_path / "p.pt"), "-o", str(onnx_path)]) == 2


def test_cli_export_without_a_model_is_bad_input(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    write_atomic(recipe, write_recipe(recipe, Pruner(torchvision.models.resnet18(), torch.randn(2, 3, 32, 32), {}).groups,
                                      input_shapes=[[2, 3, 32, 32]]))
    assert main(["export", str(recipe), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "'model': no model to build" in capsys.readouterr().err
