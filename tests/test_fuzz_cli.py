"""Property tests of the command line itself: whatever the recipe bytes, weights file or option
values, every command exits 0 or 2 with one line, writes nothing when it fails and never
changes a file that was there before.

Each command's entry function runs in-process. ``PRUNECONF_FUZZ_EXAMPLES=10000 python -m
pytest tests/test_fuzz_cli.py`` is the long run; CI runs 25 cases per command.
"""
import contextlib
import io
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzzing import mutate, mutations, scalars
from pruneconf.cli import main

EXAMPLES = int(os.environ.get("PRUNECONF_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

NET = '''
import torch.nn as nn

def build(width=4):
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 4, 1),
                         nn.Flatten(), nn.Linear(4 * 16, 2))
'''
SHAPE = "2,3,6,6"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """net.py, its recipe, an applied recipe with weights, and the original weights."""
    root = tmp_path_factory.mktemp("cli-fuzz")
    (root / "net.py").write_text(NET)
    model = f"{root / 'net.py'}:build"
    assert run(["init", model, "--input-shape", SHAPE, "-o", str(root / "r.yaml")])[0] == 0
    assert run(["prune", str(root / "r.yaml"), "--model", model, "-o", str(root / "p.pt")])[0] == 0
    torch.save(torch.nn.Sequential().state_dict(), root / "empty.pt")
    return root


def run(argv):
    """``main(argv)`` in-process: its exit status and what it printed to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
    return code, err.getvalue()


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def check(argv_of, files, may_change=()):
    """Run in a fresh folder holding ``files`` plus an output that existed before; only the
    files in ``may_change`` may change, and only when the command succeeds."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, data in {"net.py": NET.encode(), **files}.items():
            (folder / name).write_bytes(data)
        (folder / "old.pt").write_bytes(b"previous output")
        before = snapshot(folder)
        code, err = run(argv_of(folder))
        assert code in (0, 2), (code, err[-500:])
        assert "Traceback" not in err
        after = snapshot(folder)
        changed = {name for name, data in before.items() if after.get(name) != data}
        assert not changed - (set(may_change) if code == 0 else set()), f"{changed} changed"
        if code == 2:
            assert err.splitlines()[-1].startswith("pruneconf: error: ") and err.endswith("\n"), err[-500:]
            assert set(after) == set(before), f"wrote {set(after) - set(before)} on failure"
        return code


def recipe_bytes(base_name):
    text = st.shared(st.sampled_from([base_name]), key=base_name)
    return st.one_of(
        text.flatmap(lambda name: st.lists(mutations(READ[name]), min_size=1, max_size=3)
                     .map(lambda ops, name=name: mutate(READ[name], ops).encode())),
        st.binary(max_size=300),
        st.text(max_size=200).map(str.encode),
    )


READ: dict = {}
weights = st.one_of(st.just("valid"), st.just("empty"), st.binary(max_size=200),
                    st.integers(1, 400).map(lambda n: ("truncated", n)))
set_pairs = st.lists(st.one_of(st.sampled_from(["default_sparsity=0.3", "mode=global", "0=0.9", "round_to=2",
                                                "metric=fpgm", "0.max_sparsity=0.1"]),
                               st.tuples(st.text(max_size=12), scalars).map(lambda kv: f"{kv[0]}={kv[1]}")),
                     max_size=2)


def weight_bytes(base, choice):
    valid = (base / "p.pt").read_bytes()
    if choice == "valid":
        return valid
    if choice == "empty":
        return (base / "empty.pt").read_bytes()
    if isinstance(choice, tuple):
        return valid[:choice[1]]
    return choice


@pytest.fixture(scope="module")
def texts(base):
    READ.update({"r.yaml": (base / "r.yaml").read_text(), "p.yaml": (base / "p.yaml").read_text()})
    return READ


def _recipe_command(command, extra):
    @FUZZ
    @given(data=st.data())
    def test(base, texts, data):
        name = "p.yaml" if command in ("export", "report") and data.draw(st.booleans()) else "r.yaml"
        recipe = data.draw(st.one_of(st.just(texts[name].encode()), recipe_bytes(name)))
        weights_file = weight_bytes(base, data.draw(weights)) if data.draw(st.booleans()) else None
        pairs = data.draw(set_pairs) if command in ("prune", "report") else []
        trust = data.draw(st.sampled_from(["--model", "--trust-recipe-model", None]))
        out = data.draw(st.sampled_from(["new.pt", "old.pt"]))

        def argv(folder):
            args = [command, str(folder / "recipe.yaml"), *extra]
            args += {"--model": ["--model", f"{folder / 'net.py'}:build"], "--trust-recipe-model":
                     ["--trust-recipe-model"], None: []}[trust]
            args += ["--weights", str(folder / "w.pt")] if weights_file is not None else []
            for pair in pairs:
                args += ["--set", pair]
            if command in ("prune", "export"):
                args += ["-o", str(folder / out)]
            return args

        files = {"recipe.yaml": recipe, **({"w.pt": weights_file} if weights_file is not None else {})}
        check(argv, files)
    return test


test_show = _recipe_command("show", [])
test_show_check = _recipe_command("show", ["--check"])
test_prune = _recipe_command("prune", [])
test_report = _recipe_command("report", [])
test_export = _recipe_command("export", ["--format", "torchscript"])

shape_text = st.one_of(st.just(SHAPE), st.text(max_size=20),
                       st.lists(st.integers(-2, 10**6), min_size=1, max_size=6).map(lambda s: ",".join(map(str, s))),
                       st.sampled_from(["2,3,6,6:long", "x=2,3,6,6", "2,3,6,6:half", "2x3x6x6", "1,3,200000,200000"]))
model_arg = st.one_of(st.sampled_from(["width=6", "width=0", "width=-1", "width=x", "width=[1]", "width=1e9",
                                       "depth=2", "width="]), st.text(max_size=12))
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6)).map(str)


def _model_command(command):
    @FUZZ
    @given(data=st.data())
    def test(base, texts, data):
        shapes = data.draw(st.lists(shape_text, min_size=1, max_size=2))
        model_args = data.draw(st.lists(model_arg, max_size=2))
        option = data.draw(st.sampled_from([[], ["--sparsity"], ["--target-macs"], ["--round-to"], ["--set"]]))
        value = data.draw(number if option[:1] != ["--set"] else set_pairs.map(lambda p: p[0] if p else "x=1"))
        existing = data.draw(st.one_of(st.none(), st.just(texts["r.yaml"].encode()), recipe_bytes("r.yaml")))

        def argv(folder):
            args = [command, f"{folder / 'net.py'}:build"]
            for shape in shapes:
                args += ["--input-shape", shape]
            for pair in model_args:
                args += ["--model-arg", pair]
            if command == "init":
                args += [*option, value] if option else []
                args += ["-o", str(folder / ("recipe.yaml" if existing is not None else "new.yaml"))]
            elif command == "graph":
                args += ["-o", str(folder / data.draw(st.sampled_from(["g.dot", "g.graphml", "g.txt", "old.pt"])))]
            elif existing is not None:
                args += ["--recipe", str(folder / "recipe.yaml")]
            return args

        files = {"recipe.yaml": existing} if existing is not None else {}
        check(argv, files, may_change={"recipe.yaml"} if command == "init" else ())  # init refreshes in place
    return test


test_init = _model_command("init")
test_graph = _model_command("graph")
test_flops = _model_command("flops")


@pytest.fixture(scope="module")
def table(base):
    """A latency table of net.py, measured fast (timings are not what these tests check)."""
    path = base / "t.json"
    assert run(["latency", f"{base / 'net.py'}:build", "--input-shape", SHAPE, "--min-run-time", "0.001",
                "-o", str(path)])[0] == 0
    return path.read_bytes()


def table_bytes(valid: bytes):
    return st.one_of(st.just(valid), st.binary(max_size=200),
                     st.lists(mutations(valid.decode()), min_size=1, max_size=3).map(
                         lambda ops: mutate(valid.decode(), ops).encode()))


latency_option = st.one_of(st.just([]), st.tuples(st.sampled_from(["--threads", "--dtype", "--device",
                                                                   "--min-run-time"]),
                                                  st.one_of(number, st.sampled_from(["cuda", "cpu", "bfloat16",
                                                                                     "0", "-3", "cuda:x"])))
                           .map(list), st.just(["--channels-last"]))


@FUZZ
@given(data=st.data())
def test_latency(base, table, data):
    shapes = data.draw(st.lists(shape_text, min_size=1, max_size=2))
    option = data.draw(latency_option)
    existing = data.draw(st.one_of(st.none(), table_bytes(table)))
    out = data.draw(st.sampled_from(["new.json", "old.pt", "t.json"] if existing is not None else ["new.json",
                                                                                                   "old.pt"]))

    def argv(folder):
        args = ["latency", f"{folder / 'net.py'}:build", "--min-run-time", "0.001", *option]
        for shape in shapes:
            args += ["--input-shape", shape]
        return args + ["-o", str(folder / out)]

    check(argv, {"t.json": existing} if existing is not None else {}, may_change={"t.json", "new.json"})


@FUZZ
@given(data=st.data())
def test_init_target_latency(base, table, data):
    table_file = data.draw(table_bytes(table))
    target = data.draw(st.one_of(number, st.sampled_from(["0.5", "0.9", "1", "0.01"])))
    also = data.draw(st.sampled_from([[], ["--target-macs", "0.5"], ["--set", "default_sparsity=0.3"],
                                      ["--set", "mode=global"], ["--round-to", "2"]]))
    use_target = data.draw(st.booleans())
    refine = data.draw(st.sampled_from(["0", "1"]))  # the loop and the MAC comparison time: keep them short

    def argv(folder):
        args = ["init", f"{folder / 'net.py'}:build", "--input-shape", SHAPE, "-o", str(folder / "new.yaml"),
                "--latency-table", str(folder / "t.json"), "--latency-run-time", "0.01", "--latency-refine", refine, *also]
        return args + (["--target-latency", target] if use_target else [])

    check(argv, {"t.json": table_file}, may_change={"new.yaml"})
