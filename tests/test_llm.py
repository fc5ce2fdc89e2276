"""Language models from transformers, built from tiny random configs (``llm_models``), pruned
to full width at sparsity 0.5: the hidden size through every residual stream (RMSNorm written
as tensor ops included), attention heads (grouped-query: whole key/value heads with the query
heads that read them) and the MLP.

For every family: sparsity 0 gives the original outputs and tokens; the masked model and the
shrunk one compute the same logits and greedy ``generate()`` (with the key/value cache) gives
the same tokens; nothing is left whole but the output layer (the logits); MACs drop by 70 % or
more. Phi-3's fused q/k/v projection loses whole heads (its slice offsets follow the head
counts); T5's and Whisper's encoder width shrinks with the ``encoder_last_hidden_state``
their decoders read.
"""
from __future__ import annotations

import copy

import pytest
import torch

from llm_models import FAMILIES, SIZES, generate
from pruneconf import Pruner, trace
from pruneconf.analysis import total_macs

OUTPUT = "reaches the model output"

@pytest.fixture(params=FAMILIES, ids=[f.name for f in FAMILIES])
def family(request):
    return request.param


def outputs(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def test_prunes_to_full_width_exactly_and_generates_the_same_tokens(family):
    model, inputs = family.build()
    before = total_macs(trace(model, inputs))
    reference = outputs(model, inputs), generate(family, model, inputs)
    untouched = copy.deepcopy(model)
    Pruner(untouched, inputs, {"sparsity": 0.0}).apply_masks()
    assert torch.equal(outputs(untouched, inputs), reference[0])
    assert torch.equal(generate(family, untouched, inputs), reference[1])

    pruner = Pruner(model, inputs, {"sparsity": 0.5})
    pruner.register_masks()
    masked = outputs(model, inputs), generate(family, model, inputs)
    pruner.apply_masks()  # raises unless the shrunk model computes the masked model's logits
    assert pruner.dropped == {} and pruner.skipped() == {}
    applied = outputs(model, inputs)
    torch.testing.assert_close(applied, masked[0], atol=1e-5 * max(1.0, float(masked[0].abs().max())), rtol=0)
    assert torch.equal(generate(family, model, inputs), masked[1])

    whole = {g.center: g.reasons for g in pruner.groups if not g.prunable}
    head = {c for c, reasons in whole.items()
            if pruner.groups[c].channels == SIZES["vocab_size"] and all(OUTPUT in r for r in reasons)}
    assert len(head) == 1
    assert {c: reasons for c, reasons in whole.items() if c not in head} == {}
    assert total_macs(trace(model, inputs)) / before <= 0.30


def test_layers_keep_different_widths_and_still_generate():
    """Per-layer widths: layer 0 keeps half its key/value heads (and the query heads reading
    them), layer 1 keeps all its heads and a quarter of its MLP; the hidden size stays."""
    family = next(f for f in FAMILIES if f.name == "llama")
    model, inputs = family.build()
    config = {"sparsity": 0.5, "groups": {"model.embed_tokens": 0.0, "model.layers.1.self_attn.q_proj": 0.0,
                                          "model.layers.1.mlp.gate_proj": 0.75}}
    pruner = Pruner(model, inputs, config)
    pruner.register_masks()
    masked = generate(family, model, inputs)
    pruner.apply_masks()
    first, second = model.model.layers[0], model.model.layers[1]
    assert (first.self_attn.q_proj.out_features, first.self_attn.k_proj.out_features) == (32, 16)
    assert (second.self_attn.q_proj.out_features, second.self_attn.k_proj.out_features) == (64, 32)
    assert first.self_attn.num_key_value_groups == second.self_attn.num_key_value_groups == 2
    assert (first.mlp.gate_proj.out_features, second.mlp.gate_proj.out_features) == (64, 32)
    assert torch.equal(generate(family, model, inputs), masked)


def test_phi3_layers_slice_their_fused_projection_at_their_own_head_counts():
    """Phi-3 computes its q/k/v offsets from ``config.num_attention_heads``, which every layer
    shares: layer 0 loses half its heads and reads its own count from a ``LayerConfig``,
    layer 1 keeps all its heads and the model's config."""
    from pruneconf.apply.layer_config import LayerConfig

    family = next(f for f in FAMILIES if f.name == "phi3")
    model, inputs = family.build()
    pruner = Pruner(model, inputs, {"sparsity": 0.5, "groups": {"model.layers.1.self_attn.qkv_proj": 0.0}})
    pruner.register_masks()
    masked = generate(family, model, inputs)
    pruner.apply_masks()
    first, second = model.model.layers[0].self_attn, model.model.layers[1].self_attn
    assert (first.qkv_proj.out_features, second.qkv_proj.out_features) == (64, 128)
    assert isinstance(first.config, LayerConfig) and first.config.num_attention_heads == 2
    assert first.num_key_value_heads == 1 and second.num_key_value_heads == 2
    assert second.config is model.config and model.config.num_attention_heads == 4
    assert torch.equal(generate(family, model, inputs), masked)
