"""Tiny random Gemma 3, Qwen3, Llama and Mistral checkpoints saved by `transformers` (PyTorch), with
the released embedders' own `config.json`s shrunk, and their sentence-transformers folders.

Why the released configs: EmbeddingGemma-300m's fields that change the maths (3 heads of
head_dim 256 on a 768-wide model, one key/value head, query_pre_attn_scalar 256 != head_dim,
bidirectional attention, sliding window 512 + full layers with separate RoPE bases) stay as
released (3 -> 4 heads: transformers wants hidden % heads == 0), only shrunk so that the window
(16 tokens) is shorter than the test texts; the same for
Qwen3-Embedding-0.6B (q/k norms, head_dim 128 != hidden / heads, GQA, theta 1e6),
e5-mistral-7b-instruct (GQA, sliding window 4096 -> 16) and Llama-3.1-8B (llama3 RoPE scaling,
theta 5e5, as Llama-based embedders inherit it).

Tokenizers: tiny byte-level BPEs with each family's special-token habits: Gemma adds <bos> ...
<eos> (EmbeddingGemma), Qwen3 appends <|endoftext|> and pads on the left (Qwen3-Embedding),
Llama/Mistral add <s> ... </s> (e5-mistral) and pad on the right.
"""
from __future__ import annotations

import json
import pathlib

from family_fixtures import save_random_model

# google/embeddinggemma-300m, config.json as released.
EMBEDDINGGEMMA_300M = {
    "architectures": ["Gemma3TextModel"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": None, "bos_token_id": 2, "eos_token_id": 1, "final_logit_softcapping": None,
    "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 768, "initializer_range": 0.02,
    "intermediate_size": 1152, "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 4,
    "max_position_embeddings": 2048, "model_type": "gemma3_text", "num_attention_heads": 3,
    "num_hidden_layers": 24, "num_key_value_heads": 1, "pad_token_id": 0, "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0, "rope_scaling": None, "rope_theta": 1000000.0,
    "sliding_window": 512, "torch_dtype": "float32", "transformers_version": "4.57.0.dev0",
    "use_bidirectional_attention": True, "use_cache": True, "vocab_size": 262144}
# Qwen/Qwen3-Embedding-0.6B, config.json as released.
QWEN3_EMBEDDING_06B = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151643, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024,
    "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 32768,
    "max_window_layers": 28, "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
    "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "float32",
    "transformers_version": "4.51.3", "use_cache": True, "use_sliding_window": False, "vocab_size": 151669}
# intfloat/e5-mistral-7b-instruct, config.json as released.
E5_MISTRAL_7B = {
    "architectures": ["MistralModel"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "pad_token_id": 2, "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False, "torch_dtype": "float16",
    "transformers_version": "4.34.0", "use_cache": False, "vocab_size": 32000}
# meta-llama/Llama-3.1-8B, config.json as released (the backbone of Llama-based embedders).
LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 128256}
RELEASED = {"gemma3": EMBEDDINGGEMMA_300M, "qwen3": QWEN3_EMBEDDING_06B, "mistral": E5_MISTRAL_7B,
            "llama": LLAMA_31_8B}
FAMILIES = tuple(RELEASED)
HIDDEN = 64
WINDOW = 16  # sliding windows of the tiny models: shorter than the longer test texts

# (specials in id order, template, bos, eos, pad, padding side)
_TOKENIZERS = {
    "gemma3": (["<pad>", "<eos>", "<bos>", "<unk>"], "<bos> $A <eos>", "<bos>", "<eos>", "<pad>", "right"),
    "qwen3": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "$A <|endoftext|>", None, "<|endoftext|>",
              "<|endoftext|>", "left"),
    "mistral": (["<unk>", "<s>", "</s>"], "<s> $A </s>", "<s>", "</s>", "</s>", "right"),
    "llama": (["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], "<|begin_of_text|> $A <|end_of_text|>",
              "<|begin_of_text|>", "<|end_of_text|>", "<|end_of_text|>", "right"),
}


def tiny_tokenizer(family: str, corpus: list[str], vocab_size: int = 700):
    """A byte-level BPE with `family`'s special tokens, BOS/EOS template and padding side
    (`vocab_size` 700 for tests; bench/shapes.py trains a larger one for realistic token counts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials, template, bos, eos, pad, side = _TOKENIZERS[family]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    used = [t for t in (bos, eos) if t]
    bpe.post_processor = processors.TemplateProcessing(
        single=template, pair=template + " $B" + (f" {eos}" if eos else ""),
        special_tokens=[(t, specials.index(t)) for t in used])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos, eos_token=eos, pad_token=pad,
                                   unk_token=specials[0] if family == "mistral" else None, padding_side=side,
                                   model_max_length=WINDOW * 1024)


def tiny_config(family: str, tokenizer, **overrides) -> dict:
    """The released config of `family` with only size, window and special-token fields shrunk."""
    cfg = dict(RELEASED[family])
    vocab = -(-len(tokenizer) // 64) * 64
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if family == "gemma3":  # 4 layers: sliding, sliding, full, sliding; 4 heads of 32 on 64 wide, 1 kv head
        cfg.update(hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4, head_dim=32,
                   layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
                   sliding_window=WINDOW, max_position_embeddings=512, vocab_size=vocab, **ids)
    elif family == "qwen3":  # 3 layers, 4 query heads of 32 on 64 wide, 2 kv heads
        cfg.update(hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=32, max_window_layers=3, vocab_size=vocab, **ids)
    else:  # 3 layers, 4 query heads of 16, 2 kv heads
        cfg.update(hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=vocab, **ids)
        if family == "mistral":
            cfg.update(sliding_window=WINDOW)
    cfg.update(overrides)
    return {k: v for k, v in cfg.items() if v is not None or k in RELEASED[family]}


def build_hf_folder(family: str, folder: pathlib.Path, *, corpus: list[str], seed: int = 0, **overrides):
    """A random tiny `family` model saved by transformers (safetensors), its tokenizer, and the
    released-style config.json (`overrides` change fields of it)."""
    tokenizer = tiny_tokenizer(family, corpus)
    return save_random_model(folder, tiny_config(family, tokenizer, **overrides), tokenizer, seed)


def st_folder(hf_folder: pathlib.Path, out: pathlib.Path, *, pooling: tuple[str, ...], max_seq_length: int,
              dense: tuple[int, ...] = (), normalize: bool = True) -> pathlib.Path:
    """A sentence-transformers folder saved by sentence-transformers: Transformer + Pooling +
    Dense layers of widths `dense` (no bias, identity, as EmbeddingGemma's 2_Dense/3_Dense) +
    Normalize, with the released-style config.json of `hf_folder`."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    torch.manual_seed(1)
    modules = [models.Transformer(str(hf_folder), max_seq_length=max_seq_length),
               models.Pooling(HIDDEN, pooling_mode=pooling)]
    width = HIDDEN * len(pooling)
    for out_features in dense:
        modules.append(models.Dense(width, out_features, bias=False, activation_function=torch.nn.Identity()))
        width = out_features
    if normalize:
        modules.append(models.Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    (out / "config.json").write_text((hf_folder / "config.json").read_text())
    return out
