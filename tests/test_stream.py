"""Shard-streamed phase two: a safetensors checkpoint pruned tensor by tensor, model on meta,
equals the in-memory prune bit for bit, and load_pruned reads the result."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llm_models import TINY_LLAMA_JSON as LLAMA
from pruneconf import Pruner
from pruneconf.cli import main
from pruneconf.models import build_model
from pruneconf.recipe.load import load_recipe
from pruneconf.reproduce import load_pruned, recipe_inputs


ATTENTION = '''
import torch.nn as nn

class Block(nn.Module):
    """nn.MultiheadAttention: its resizer rescales the query rows when head dims shrink."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(12, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 32))
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        x = self.inp(x)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head((x + self.mlp(x)).mean(1))
'''


def save_sharded(state: dict, directory, shards: int) -> None:
    """``state`` as ``shards`` safetensors files plus the index transformers writes."""
    directory.mkdir()
    names = list(state)
    per = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n].contiguous() for n in names[i * per:(i + 1) * per]}
        save_file(part, str(directory / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _init(tmp_path, model, shape, *extra):
    recipe = tmp_path / "recipe.yaml"
    assert main(["init", model, "--input-shape", shape, "-o", str(recipe), *extra]) == 0
    return recipe


def _in_memory(model_spec, recipe_path, state, trusted_model=None):
    """The reference: the same weights pruned with ``Pruner(...).apply_masks()``."""
    recipe = load_recipe(recipe_path)
    model = build_model(trusted_model or model_spec, recipe.model_args)
    model.load_state_dict(state, strict=False)
    Pruner(model, recipe_inputs(recipe), recipe).apply_masks()
    return model


def _assert_same(streamed: dict, model: nn.Module, stored_names) -> None:
    expected = model.state_dict()
    assert set(streamed) == set(stored_names)
    for name, tensor in streamed.items():
        assert tensor.dtype == expected[name].dtype and torch.equal(tensor, expected[name]), name


def _stream(tmp_path, recipe, weights, *extra, slash=""):
    out = tmp_path / "pruned"
    assert main(["prune", str(recipe), "--weights", str(weights), "-o", str(out) + slash, *extra]) == 0
    files = sorted(out.glob("*.safetensors"))
    state = {k: v for f in files for k, v in load_file(str(f)).items()}
    return out, files, state


@pytest.mark.parametrize("edits", [{}, {"metric: l2_norm": "metric: fpgm"},
                                   {"metric: l2_norm": "metric: bn_gamma", "mode: uniform": "mode: global"}])
def test_cnn_streamed_equals_in_memory(tmp_path, edits):
    spec = "torchvision.models:resnet18"
    recipe = _init(tmp_path, spec, "2,3,32,32", "--device", "cpu")
    text = recipe.read_text()
    for old, new in edits.items():
        text = text.replace(old, new)
    recipe.write_text(text)
    torch.manual_seed(0)
    model = build_model(spec)
    with torch.no_grad():  # distinct BN statistics, so a slicing mistake shows
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.uniform_(0.1, 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_sharded(state, tmp_path / "ckpt", 3)
    out, files, streamed = _stream(tmp_path, recipe, tmp_path / "ckpt")
    assert [f.name for f in files] == sorted(p.name for p in (tmp_path / "ckpt").glob("*.safetensors"))
    reference = _in_memory(spec, recipe, state)
    _assert_same(streamed, reference, state)
    assert streamed["conv1.weight"].shape[0] < 64
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(state)
    rebuilt = load_pruned(build_model(spec), out / "recipe.yaml", out)
    _assert_same(rebuilt.state_dict(), reference, state)


@pytest.mark.parametrize("tied", [False, True])
def test_llama_streamed_equals_in_memory(tmp_path, tied):
    config = {**LLAMA, "tie_word_embeddings": tied}
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = str(tmp_path / "config.json")
    recipe = _init(tmp_path, spec, "input_ids=1,8:long")
    torch.manual_seed(0)
    model = build_model(spec)
    model.save_pretrained(tmp_path / "ckpt", max_shard_size="20KB")
    stored = set(json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())["weight_map"])
    assert len(set(json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
                   ["weight_map"].values())) >= 2
    assert ("lm_head.weight" in stored) != tied
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out, _, streamed = _stream(tmp_path, recipe, tmp_path / "ckpt")
    reference = _in_memory(spec, recipe, state)
    _assert_same(streamed, reference, stored)
    # the MLP, the hidden size and whole grouped-query heads all shrank, as in memory
    assert streamed["model.layers.0.mlp.up_proj.weight"].shape == (32, 16)
    assert streamed["model.layers.0.self_attn.k_proj.weight"].shape[0] < model.model.layers[0].self_attn.k_proj.out_features
    rebuilt = load_pruned(build_model(spec), out / "recipe.yaml", out).eval()
    ids = torch.tensor([[1, 5, 9, 2, 7, 3, 0, 4]])
    with torch.no_grad():
        assert torch.equal(rebuilt.generate(ids, max_new_tokens=4, do_sample=False),
                           reference.eval().generate(ids, max_new_tokens=4, do_sample=False))


def _stream_local_model(tmp_path, source: str, name: str, shape: str) -> dict:
    """A model class defined in ``source``: recipe, seeded weights in one safetensors file,
    streamed into a directory (the trailing "/" says so) and checked equal to the in-memory
    prune of the same weights; returns the streamed tensors."""
    (tmp_path / "net.py").write_text(source)
    spec = f"{tmp_path / 'net.py'}:{name}"
    recipe = _init(tmp_path, spec, shape)
    torch.manual_seed(0)
    state = build_model(spec).state_dict()
    save_file(dict(state), str(tmp_path / "net.safetensors"))
    _, _, streamed = _stream(tmp_path, recipe, tmp_path / "net.safetensors", "--model", spec, slash="/")
    _assert_same(streamed, _in_memory(spec, recipe, state), state)
    return streamed


def test_a_resizer_that_changes_weights_is_applied_when_streaming(tmp_path):
    streamed = _stream_local_model(tmp_path, ATTENTION, "Block", "2,7,12")
    assert streamed["attn.in_proj_weight"].shape == (48, 16)  # head dim 8 -> 4: queries rescaled by sqrt(1/2)


def test_a_checkpoint_that_does_not_fit_is_a_located_error(tmp_path, capsys):
    spec = "torchvision.models:resnet18"
    recipe = _init(tmp_path, spec, "2,3,32,32", "--device", "meta")
    state = build_model(spec).state_dict()
    state["fc.weight"] = torch.zeros(10, 512)
    save_file(dict(state), str(tmp_path / "bad.safetensors"))
    assert main(["prune", str(recipe), "--weights", str(tmp_path / "bad.safetensors"), "-o", f"{tmp_path / 'o'}/"]) == 2
    err = capsys.readouterr().err
    assert "bad.safetensors: 'weights': does not fit the model: 'fc.weight' is [10, 512]" in err
    assert not (tmp_path / "o" / "recipe.yaml").exists()


def test_an_index_pointing_outside_its_folder_is_refused(tmp_path, capsys):
    recipe = _init(tmp_path, "torchvision.models:resnet18", "2,3,32,32", "--device", "meta")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"conv1.weight": "../elsewhere.safetensors"}}))
    assert main(["prune", str(recipe), "--weights", str(tmp_path / "ckpt"), "-o", str(tmp_path / "out")]) == 2
    assert "'weight_map.conv1.weight': maps 'conv1.weight' to '../elsewhere.safetensors'" in capsys.readouterr().err


MLP = '''
import torch.nn as nn

def build(width=1024, depth=48):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))
'''

PEAK = '''
import sys
import torch
from pruneconf.cli import main
from pruneconf.groups import find_groups
from pruneconf.trace import trace
import pruneconf.pruner, pruneconf.stream, safetensors.torch
with torch.device("meta"):  # the first meta trace loads torch's meta kernels (~150 MB), once
    find_groups(trace(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)),
                      torch.empty(2, 4)))
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))
with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the current RSS
    f.write("5")
base = status("VmRSS")
assert main(sys.argv[1:]) == 0
print(status("VmHWM") - base)
'''


def _peak_growth_mb(tmp_path, *argv) -> float:
    """Peak RSS of a fresh process running ``pruneconf ARGV``, above its RSS just before.

    ``VmHWM`` after resetting it, not ``ru_maxrss``: the latter keeps the RSS of the forking
    parent (here, pytest) from before ``exec``."""
    import subprocess
    import sys
    from pathlib import Path

    import pruneconf

    env = {**os.environ, "PYTHONPATH": str(Path(pruneconf.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    (tmp_path / "peak.py").write_text(PEAK)
    done = subprocess.run([sys.executable, str(tmp_path / "peak.py"), "-q", *argv], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1]) / 1024


@pytest.mark.slow  # about a minute: two fresh processes over a 192 MB checkpoint
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs") or not hasattr(os, "posix_fadvise"),
                    reason="needs Linux's /proc/self/clear_refs and posix_fadvise")
def test_streaming_memory_follows_a_tensor_not_the_checkpoint(tmp_path):
    """A 192 MB checkpoint in 24 shards of at most 12 MB (tensors of 4 MB): the streamed
    prune's peak RSS grows by less than 30 % of it (measured: 15-40 MB, most of it the
    traced graph and the allocator's slack, whatever the checkpoint's size); loading it whole
    (the in-memory prune) grows by more than the checkpoint, so the measurement sees weights."""
    (tmp_path / "mlp.py").write_text(MLP)
    spec = f"{tmp_path / 'mlp.py'}:build"
    recipe = _init(tmp_path, spec, "2,1024", "--device", "meta")
    import importlib.util

    module_spec = importlib.util.spec_from_file_location("stream_mlp", tmp_path / "mlp.py")
    mlp = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(mlp)
    save_sharded(mlp.build().state_dict(), tmp_path / "ckpt", 24)
    for file in (tmp_path / "ckpt").iterdir():  # a checkpoint is read from disk, not just written
        fd = os.open(file, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    total = sum(f.stat().st_size for f in (tmp_path / "ckpt").glob("*.safetensors")) / 2**20
    shard = max(f.stat().st_size for f in (tmp_path / "ckpt").glob("*.safetensors")) / 2**20
    common = ["prune", str(recipe), "--model", spec, "--weights", str(tmp_path / "ckpt")]
    streamed = _peak_growth_mb(tmp_path, *common, "-o", str(tmp_path / "out"))
    in_memory = _peak_growth_mb(tmp_path, *common, "-o", str(tmp_path / "out.safetensors"))
    assert total > 180 and shard < 13
    print(f"peak RSS growth: streamed {streamed:.0f} MB, in memory {in_memory:.0f} MB, checkpoint {total:.0f} MB")
    assert streamed < 0.3 * total, (streamed, total)
    assert in_memory > total, (in_memory, total)


GROUPED = '''
import torch.nn as nn

class Net(nn.Module):
    """A ResNeXt-style bottleneck: its grouped conv loses channels inside every group, a
    column set per row, which the stream must slice as apply does."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 32, 1)
        self.b = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.c = nn.Conv2d(32, 3, 1)

    def forward(self, x):
        return self.c(self.b(self.a(x).relu()).relu())
'''


def test_a_grouped_conv_streamed_equals_in_memory(tmp_path):
    streamed = _stream_local_model(tmp_path, GROUPED, "Net", "2,3,8,8")
    assert streamed["b.weight"].shape == (16, 4, 3, 3)
