"""Pruned language models leave the process as data and come back exactly.

- A heterogeneous recipe (every layer its own MLP width, one layer keeping all its heads, the
  hidden size halved) pruned from a transformers ``config.json`` by the CLI, written as
  safetensors and rebuilt by ``load_pruned`` in a fresh process: same logits, same greedy
  ``generate()`` tokens as the model pruned in this process.
- A Llama builder file through ``init`` (``--input-shape 1,16:long``), ``prune`` and ``export`` to
  ONNX (the builder named with ``--model``), run in onnxruntime; ``load_pruned`` in a fresh
  process gives identical logits.
"""
import json
import subprocess
import sys

import numpy as np
import onnxruntime
import torch

from pruneconf import Pruner
from pruneconf.cli import main
from pruneconf.hf import build_from_config_file
from pruneconf.recipe import write_atomic
from pruneconf.recipe.yamlio import dump_document, load_document
from pruneconf.reproduce import load_weights, save_weights

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128, "hidden_size": 64,
          "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "max_position_embeddings": 64, "tie_word_embeddings": True}
PROMPT = [[5, 17, 99, 3, 42, 7, 64, 1]]

RELOAD = """
import sys, torch, pruneconf
from pruneconf.hf import build_from_config_file
model = build_from_config_file(sys.argv[1]).eval()
pruneconf.load_pruned(model, sys.argv[2], sys.argv[3])
ids = torch.tensor({prompt})
with torch.no_grad():
    logits = model(ids).logits
    tokens = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
torch.save({{"logits": logits, "tokens": tokens}}, sys.argv[4])
""".format(prompt=PROMPT)


def _outputs(model):
    ids = torch.tensor(PROMPT)
    with torch.no_grad():
        return model(ids).logits, model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                                 pad_token_id=0)


def _fresh_process(*argv):
    subprocess.run([sys.executable, "-c", RELOAD, *map(str, argv)], check=True, timeout=600)
    return torch.load(argv[-1], weights_only=True)


def test_a_heterogeneous_recipe_reloads_in_a_fresh_process(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    recipe, weights = tmp_path / "r.yaml", tmp_path / "w.safetensors"
    assert main(["init", str(config), "--input-shape", "input_ids=1,8:long", "-o", str(recipe)]) == 0
    doc = load_document(recipe)
    values = {"model.embed_tokens": 0.5, "model.layers.0.mlp.gate_proj": 0.25, "model.layers.1.mlp.gate_proj": 0.75,
              "model.layers.0.self_attn.q_proj": 0.5, "model.layers.1.self_attn.q_proj": 0.0}
    assert set(values) == set(doc["groups"]), list(doc["groups"])
    for center, sparsity in values.items():
        doc["groups"][center]["sparsity"] = sparsity
    write_atomic(recipe, dump_document(doc))
    torch.manual_seed(1)
    save_weights(build_from_config_file(str(config)), weights)  # tied embeddings stored once

    out = tmp_path / "p.safetensors"
    assert main(["prune", str(recipe), "--weights", str(weights), "-o", str(out)]) == 0
    model = build_from_config_file(str(config)).eval()
    load_weights(model, weights)
    Pruner(model, {"input_ids": torch.tensor(PROMPT)}, str(recipe)).apply_masks()
    layers = model.model.layers
    assert [layer.mlp.down_proj.in_features for layer in layers] == [96, 32]          # widths differ per layer
    assert [layer.self_attn.q_proj.out_features for layer in layers] == [32, 64]      # layer 1 keeps all heads
    assert [layer.self_attn.k_proj.out_features for layer in layers] == [16, 32]      # whole kv heads, GQA kept
    assert model.lm_head.weight is model.model.embed_tokens.weight and model.lm_head.in_features == 32
    logits, tokens = _outputs(model)

    reloaded = _fresh_process(config, tmp_path / "p.yaml", out, tmp_path / "reloaded.pt")
    assert torch.equal(reloaded["logits"], logits) and torch.equal(reloaded["tokens"], tokens)


BUILDER = """
import torch
from transformers import LlamaConfig, LlamaForCausalLM

def build():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, use_cache=False)
    return LlamaForCausalLM(config).eval()
"""

RELOAD_BUILDER = """
import sys, torch, pruneconf
sys.path.insert(0, sys.argv[1])
from tiny import build
model = build()
pruneconf.load_pruned(model, sys.argv[2], sys.argv[3])
with torch.no_grad():
    torch.save(model(torch.tensor({prompt})).logits, sys.argv[4])
""".format(prompt=PROMPT)


def test_cli_round_trip_of_a_llama_builder_file_to_onnx(tmp_path):
    (tmp_path / "tiny.py").write_text(BUILDER)
    builder, recipe = f"{tmp_path / 'tiny.py'}:build", tmp_path / "r.yaml"
    assert main(["init", builder, "--input-shape", "1,16:long", "-o", str(recipe)]) == 0
    assert load_document(recipe)["input_shapes"] == ["1,16:long"]  # the dtype is recorded
    assert main(["prune", str(recipe), "-o", str(tmp_path / "p.pt")]) == 2  # a local file needs --model
    assert main(["prune", str(recipe), "--model", builder, "-o", str(tmp_path / "p.pt")]) == 0
    onnx_path = tmp_path / "p.onnx"
    assert main(["export", str(tmp_path / "p.yaml"), "--model", builder, "--weights", str(tmp_path / "p.pt"),
                 "-o", str(onnx_path)]) == 0

    sys.path.insert(0, str(tmp_path))
    try:
        from tiny import build
    finally:
        sys.path.remove(str(tmp_path))
    import pruneconf

    model = pruneconf.load_pruned(build(), str(tmp_path / "p.yaml"), str(tmp_path / "p.pt"))
    ids = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits.numpy()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: ids.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())

    reloaded = tmp_path / "logits.pt"
    subprocess.run([sys.executable, "-c", RELOAD_BUILDER, str(tmp_path), str(tmp_path / "p.yaml"),
                    str(tmp_path / "p.pt"), str(reloaded)], check=True, timeout=600)
    with torch.no_grad():
        assert torch.equal(torch.load(reloaded, weights_only=True), model(torch.tensor(PROMPT)).logits)
