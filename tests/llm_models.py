"""Tiny random-config transformers language models, one per family, for ``tests/test_llm.py``
and ``benchmarks/llm_table.py``.

Every model is built with ``from_config`` (random weights, nothing downloaded): 2 layers,
hidden size 64, 4 query heads over 2 key/value heads where the family has grouped-query
attention, intermediate size 128, vocabulary 128.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
import transformers
from torch import nn

SIZES = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
SEQ = 8
# A tiny Llama as a ``config.json`` would hold it (meta-device and streaming tests).
TINY_LLAMA_JSON = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 32,
                   "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "vocab_size": 64, "max_position_embeddings": 32}


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    config: Callable[[], Any]
    model: str                          # the transformers class to build from the config
    inputs: Callable[[torch.Generator], dict] | None = None  # example inputs (default: input_ids)
    decoder: bool = True                 # generate() from input_ids alone
    attention: str = "sdpa"              # the attention implementation (Gemma2 has eager only)

    def build(self, seed: int = 0) -> tuple[nn.Module, dict]:
        torch.manual_seed(seed)
        config = self.config()
        config._attn_implementation = self.attention
        model = getattr(transformers, self.model)(config).eval()
        gen = torch.Generator().manual_seed(seed)
        inputs = (self.inputs or _token_inputs)(gen)
        return model, inputs


def _token_inputs(gen: torch.Generator) -> dict:
    return {"input_ids": torch.randint(0, SIZES["vocab_size"], (2, SEQ), generator=gen)}


def _seq2seq_inputs(gen: torch.Generator) -> dict:
    return {"input_ids": torch.randint(0, SIZES["vocab_size"], (2, SEQ), generator=gen),
            "decoder_input_ids": torch.randint(0, SIZES["vocab_size"], (2, 4), generator=gen)}


def _whisper_inputs(gen: torch.Generator) -> dict:
    return {"input_features": torch.randn(2, 16, 32, generator=gen),
            "decoder_input_ids": torch.randint(0, SIZES["vocab_size"], (2, 4), generator=gen)}


def _decoder(config_class: str, **extra) -> Callable[[], Any]:
    return lambda: getattr(transformers, config_class)(**{**SIZES, **extra})


FAMILIES = [
    Family("llama", _decoder("LlamaConfig"), "LlamaForCausalLM"),
    Family("mistral", _decoder("MistralConfig", sliding_window=None), "MistralForCausalLM"),
    Family("qwen2", _decoder("Qwen2Config"), "Qwen2ForCausalLM"),
    Family("qwen3", _decoder("Qwen3Config", head_dim=16), "Qwen3ForCausalLM"),
    Family("phi3", _decoder("Phi3Config", pad_token_id=0), "Phi3ForCausalLM"),
    Family("gemma2", _decoder("Gemma2Config", head_dim=16), "Gemma2ForCausalLM", attention="eager"),
    Family("gemma3", _decoder("Gemma3TextConfig", head_dim=16), "Gemma3ForCausalLM"),
    Family("olmo2", _decoder("Olmo2Config"), "Olmo2ForCausalLM"),
    Family("gpt_neox", lambda: transformers.GPTNeoXConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64), "GPTNeoXForCausalLM"),
    Family("opt", lambda: transformers.OPTConfig(
        vocab_size=128, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
        word_embed_proj_dim=64, max_position_embeddings=64), "OPTForCausalLM"),
    Family("t5", lambda: transformers.T5Config(
        vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
        num_heads=4, decoder_start_token_id=0), "T5ForConditionalGeneration", _seq2seq_inputs, decoder=False),
    Family("whisper", lambda: transformers.WhisperConfig(
        vocab_size=128, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16,
        max_source_positions=16, max_target_positions=32, decoder_start_token_id=1, pad_token_id=0,
        eos_token_id=2, bos_token_id=1, suppress_tokens=None, begin_suppress_tokens=None),
        "WhisperForConditionalGeneration", _whisper_inputs, decoder=False),
]
# Mixture of experts (2 layers, 4 experts, top-2, GQA): ``tests/test_moe.py`` and the table.
EXPERTS = 4
MOE_SIZES = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, num_experts_per_tok=2, max_position_embeddings=64)
MOE_FAMILIES = [
    Family("mixtral", lambda: transformers.MixtralConfig(intermediate_size=32, num_local_experts=EXPERTS,
                                                         **MOE_SIZES), "MixtralForCausalLM"),
    Family("qwen2_moe", lambda: transformers.Qwen2MoeConfig(
        moe_intermediate_size=32, num_experts=EXPERTS, intermediate_size=48, shared_expert_intermediate_size=48,
        norm_topk_prob=False, **MOE_SIZES), "Qwen2MoeForCausalLM"),
]
BY_NAME = {f.name: f for f in FAMILIES + MOE_FAMILIES}


def generate(family: Family, model: nn.Module, inputs: dict, tokens: int = 6) -> torch.Tensor:
    """Greedy decoding with the key/value cache, from the example's prompt (or encoder input)."""
    prompt = {k: v for k, v in inputs.items() if k != "decoder_input_ids"}
    with torch.no_grad():
        return model.generate(**prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                              use_cache=True, pad_token_id=0)
