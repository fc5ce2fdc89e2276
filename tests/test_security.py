"""A recipe is data: opening one never runs code it names, and no input crashes the CLI.

Every hostile ``model:`` below would leave a marker file if any of its code ran; each command
must refuse it with exit 2 and a message naming the recipe's file, line and key.
"""
import re
import time

import pytest
import torch

from pruneconf.cli import main
from pruneconf.recipe import write_atomic, write_recipe
from pruneconf.recipe.yamlio import dump_document, load_document

from helpers import analyse

EVIL = '''
import pathlib
pathlib.Path(__file__).with_name("MARKER").write_text("imported")

import torch.nn as nn

def build(**kwargs):
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))

class Evil(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        pathlib.Path(__file__).with_name("MARKER").write_text("constructed")
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        return self.conv(x)
'''

RECIPE_COMMANDS = (["show"], ["show", "--check"], ["prune", "-o", "{out}"], ["report"],
                   ["export", "-o", "{out}.onnx"])


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.py").write_text(EVIL)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    groups = analyse(model, torch.randn(1, 3, 6, 6))
    write_atomic(tmp_path / "base.yaml", write_recipe(tmp_path / "base.yaml", groups, model="evil.py:build",
                                                      input_shapes=[[1, 3, 6, 6]]))
    return tmp_path


def _recipe(workdir, model, model_args=None):
    doc = load_document(workdir / "base.yaml")
    doc["model"] = model
    doc["model_args"] = model_args if model_args is not None else {}
    path = workdir / "r.yaml"
    write_atomic(path, dump_document(doc))
    return path


def _run(command, recipe, workdir, *extra):
    argv = [part.format(out=workdir / "out.pt") for part in command]
    return main([argv[0], str(recipe), *argv[1:], *extra])


HOSTILE = [
    ("os:system", {"command": "touch MARKER"}),
    ("evil.py:build", {}),
    ("./evil.py:build", {}),
    (f"{'x/' * 3}../../../evil.py:build", {}),
    ("evil.py:Evil", {}),
    ("evil:build", {}),                      # importable as a module from the working directory
    ("builtins:exec", {"source": "open('MARKER', 'w')"}),
    ("subprocess:run", {"args": ["touch", "MARKER"]}),
    ("torchvision.models:_api.register_model", {}),
    ("torchvision.models.resnet:ResNet", {"block": "x"}),
    ("timm.models:create_model", {"model_name": "resnet18", "pretrained_cfg_overlay": {"file": "MARKER"}}),
    ("transformers:AutoModel", {}),
]


@pytest.mark.parametrize("model, args", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_recipe_never_runs_the_code_it_names(workdir, capsys, model, args):
    recipe = _recipe(workdir, model, args)
    line = next(i for i, text in enumerate(recipe.read_text().splitlines(), 1) if text.startswith("model:"))
    for command in RECIPE_COMMANDS[1:]:
        capsys.readouterr()
        assert _run(command, recipe, workdir) == 2, command
        err = capsys.readouterr().err
        assert err.startswith(f"pruneconf: error: {recipe}:{line}: 'model': ") and err.count("\n") == 1, err
        assert "--trust-recipe-model" in err and f"--model {model}" in err
        assert not (workdir / "MARKER").exists()
        assert not list(workdir.glob("out*"))


def test_show_reads_the_recipe_without_building_anything(workdir, capsys):
    recipe = _recipe(workdir, "os:system", {"command": "touch MARKER"})
    assert main(["show", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "| 0     |        4 |      0.5 |    2 |" in out and "Not prunable:" in out
    assert not (workdir / "MARKER").exists()


@pytest.mark.parametrize("args, key", [({"weights": "IMAGENET1K_V1"}, "weights"), ({"pretrained": True}, "pretrained"),
                                       ({"weights_backbone": "DEFAULT"}, "weights_backbone")])
def test_zoo_arguments_that_fetch_weights_are_refused(workdir, capsys, args, key):
    recipe = _recipe(workdir, "torchvision.models:resnet18", args)
    assert main(["prune", str(recipe), "-o", str(workdir / "out.pt")]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"r\.yaml:\d+: 'model_args\.{key}': .*--weights", err), err


def test_opting_in_builds_the_named_model(workdir, capsys):
    recipe = _recipe(workdir, "evil.py:build")
    assert main(["prune", str(recipe), "--model", "evil.py:build", "-o", str(workdir / "a.pt")]) == 0
    assert (workdir / "MARKER").read_text() == "imported"
    (workdir / "MARKER").unlink()
    assert main(["prune", str(recipe), "--trust-recipe-model", "-o", str(workdir / "b.pt")]) == 0
    assert (workdir / "b.yaml").is_file()


def test_model_args_must_be_a_mapping(workdir, capsys):
    doc = load_document(workdir / "base.yaml")
    doc["model_args"] = ["--evil"]
    write_atomic(workdir / "r.yaml", dump_document(doc))
    assert main(["prune", str(workdir / "r.yaml"), "--model", "evil.py:build", "-o", str(workdir / "o.pt")]) == 2
    assert re.search(r"r\.yaml:\d+: 'model_args': expected a mapping", capsys.readouterr().err)
    assert not (workdir / "MARKER").exists()


GARBAGE = {
    "empty": b"",
    "list": b"- 1\n- 2\n",
    "scalar": b"42\n",
    "binary": bytes(range(256)) * 4,
    "nul": b"version: 1\x00\n",
    "huge": b"# " + b"x" * (50 << 20) + b"\n",
}
EVERY_RECIPE_COMMAND = [["show"], ["show", "--check"], ["prune", "--model", "evil.py:build", "-o", "{out}"],
                        ["report", "--model", "evil.py:build"], ["export", "--model", "evil.py:build", "-o", "{out}"]]


@pytest.mark.parametrize("kind", GARBAGE)
def test_garbage_recipes_are_one_line_errors_for_every_command(workdir, capsys, kind):
    recipe = workdir / "g.yaml"
    recipe.write_bytes(GARBAGE[kind])
    (workdir / "existing.yaml").write_bytes(GARBAGE[kind])
    commands = EVERY_RECIPE_COMMAND + [["__init__"], ["__flops__"]]
    for command in commands:
        capsys.readouterr()
        if command == ["__init__"]:  # init refreshes an existing recipe: that file is read too
            argv = ["init", "evil.py:build", "--input-shape", "1,3,6,6", "-o", str(workdir / "existing.yaml")]
        elif command == ["__flops__"]:
            argv = ["flops", "evil.py:build", "--input-shape", "1,3,6,6", "--recipe", str(recipe)]
        else:
            argv = [command[0], str(recipe)] + [a.format(out=workdir / "out.pt") for a in command[1:]]
        start = time.perf_counter()
        assert main(argv) == 2, argv
        assert time.perf_counter() - start < 30
        err = capsys.readouterr().err
        assert err.startswith("pruneconf: error: ") and err.count("\n") == 1, (argv, err[:300])
    assert (workdir / "existing.yaml").read_bytes() == GARBAGE[kind]
    assert not list(workdir.glob("out*"))


@pytest.mark.parametrize("shape", ["1,3,200000,200000", "99999999999999999999", "1," * 40 + "1", "1,-3", "0,3",
                                   "1,3:complex", "1,3:long:long", "x=", "=1,3", "in put=1,3", "", "1,,", "١,٣"])
def test_input_shapes_are_refused_before_allocating(workdir, capsys, shape):
    out = workdir / "s.yaml"
    start = time.perf_counter()
    assert main(["init", "evil.py:build", "--input-shape", shape, "-o", str(out)]) == 2
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert "'--input-shape'" in err and err.count("\n") == 1 and not out.exists()


def test_applied_ranges_are_checked_on_their_bounds(workdir, capsys):
    doc = load_document(workdir / "base.yaml")
    doc["applied"] = {"0": {"channels": 4, "kept": 2, "sparsity": 0.5, "indices": "0-999999999999"}}
    write_atomic(workdir / "r.yaml", dump_document(doc))
    start = time.perf_counter()
    assert main(["show", str(workdir / "r.yaml")]) == 2
    assert time.perf_counter() - start < 5
    assert re.search(r"r\.yaml:\d+: 'applied\.0\.indices': expected ranges", capsys.readouterr().err)


def test_weights_that_are_not_a_state_dict_are_refused(workdir, capsys):
    recipe = workdir / "base.yaml"
    for name, payload in [("t.pt", torch.zeros(3)), ("l.pt", [torch.zeros(3)]), ("n.pt", {1: torch.zeros(1)})]:
        torch.save(payload, workdir / name)
        assert main(["prune", str(recipe), "--model", "evil.py:build", "--weights", str(workdir / name),
                     "-o", str(workdir / "out.pt")]) == 2
        assert "expected a state dict" in capsys.readouterr().err
    (workdir / "g.safetensors").write_bytes(b"\xff" * 64)
    assert main(["prune", str(recipe), "--model", "evil.py:build", "--weights", str(workdir / "g.safetensors"),
                 "-o", str(workdir / "out.pt")]) == 2
    assert "not a weights-only state dict" in capsys.readouterr().err and not list(workdir.glob("out*"))


@pytest.mark.parametrize("pair", ["x", "=1", "a=[", "a={", "a=!!python/object:os.system", "a=@", "1a=2"])
def test_model_args_that_are_not_yaml_values(workdir, capsys, pair):
    assert main(["init", "evil.py:build", "--input-shape", "1,3,6,6", "--model-arg", pair,
                 "-o", str(workdir / "s.yaml")]) == 2
    assert "'--model-arg'" in capsys.readouterr().err


def test_a_builder_that_rejects_its_arguments_is_bad_input(workdir, capsys):
    assert main(["init", "torchvision.models:resnet18", "--input-shape", "1,3,32,32", "--model-arg", "nope=1",
                 "-o", str(workdir / "s.yaml")]) == 2
    assert "building 'torchvision.models:resnet18' failed: TypeError" in capsys.readouterr().err


LLAMA = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 64, "max_position_embeddings": 32}


@pytest.mark.parametrize("model, args, shape", [
    ("timm.models:resnet18", {"num_classes": 10}, "2,3,32,32"),
    ("transformers:LlamaForCausalLM", LLAMA, "input_ids=1,8:long"),
    ("config.json", {}, "1,8:long"),
])
def test_zoo_recipes_need_no_flag(workdir, model, args, shape):
    import json

    (workdir / "config.json").write_text(json.dumps({"model_type": "llama", **LLAMA}))
    argv = ["init", model, "--input-shape", shape, "-o", str(workdir / "z.yaml")]
    for key, value in args.items():
        argv += ["--model-arg", f"{key}={value}"]
    assert main(argv) == 0
    assert main(["prune", str(workdir / "z.yaml"), "-o", str(workdir / "z-pruned.safetensors")]) == 0
    assert main(["report", str(workdir / "z-pruned.yaml")]) == 0
    assert main(["show", str(workdir / "z-pruned.yaml"), "--check"]) == 0


def test_set_on_a_recipe_with_an_empty_key_is_the_files_error(workdir, capsys):
    """Found by the long CLI fuzz run: `--set` on a recipe whose group key was blanked crashed."""
    text = (workdir / "base.yaml").read_text().replace("\n  '0':", "\n  :", 1)
    (workdir / "r.yaml").write_text(text)
    assert main(["prune", str(workdir / "r.yaml"), "--model", "evil.py:build", "--set", "0=None",
                 "-o", str(workdir / "out.pt")]) == 2
    assert re.search(r"r\.yaml:\d+: 'groups': expected names as keys", capsys.readouterr().err)
