"""Tiny random MPNet, DistilBERT and ModernBERT checkpoints saved by `transformers` (PyTorch), with
`config.json`s that are the released models' own, only shrunk.

Why the released configs: real folders carry fields tiny ones leave at defaults (MPNet's
layer_norm_eps 1e-5 and 514 positions, ModernBERT's old-style `global_attn_every_n_layers` /
`global_rope_theta` / `local_rope_theta` keys and no biases, DistilBERT's own field names), and
those change the maths. Each tiny config is the released dict with only the size fields
(width, depth, heads, vocabulary, special-token ids of the tiny tokenizer) replaced.

Why random weights far from the PyTorch init: with std-0.02 weights and unit LayerNorms,
attention is nearly uniform and a wrong mask, position rule, norm/bias swap or bucket would
barely move the output. Every weight is redrawn (matrices std 0.15, norm scales 1 +- 0.2,
biases +- 0.1, MPNet's relative bias std 1), so each of them shows.
"""
from __future__ import annotations

import json
import pathlib

# sentence-transformers/all-mpnet-base-v2, 0_Transformer/config.json as released.
ALL_MPNET_BASE_V2 = {
    "_name_or_path": "microsoft/mpnet-base", "architectures": ["MPNetForMaskedLM"],
    "attention_probs_dropout_prob": 0.1, "bos_token_id": 0, "eos_token_id": 2, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-05, "max_position_embeddings": 514, "model_type": "mpnet", "num_attention_heads": 12,
    "num_hidden_layers": 12, "pad_token_id": 1, "relative_attention_num_buckets": 32,
    "transformers_version": "4.8.2", "vocab_size": 30527}
# sentence-transformers/msmarco-distilbert-base-v4, config.json as released.
MSMARCO_DISTILBERT_BASE_V4 = {
    "_name_or_path": "old_models/msmarco-distilbert-base-v4/0_Transformer", "activation": "gelu",
    "architectures": ["DistilBertModel"], "attention_dropout": 0.1, "dim": 768, "dropout": 0.1,
    "hidden_dim": 3072, "initializer_range": 0.02, "max_position_embeddings": 512, "model_type": "distilbert",
    "n_heads": 12, "n_layers": 6, "pad_token_id": 0, "qa_dropout": 0.1, "seq_classif_dropout": 0.2,
    "sinusoidal_pos_embds": False, "tie_weights_": True, "transformers_version": "4.7.0", "vocab_size": 30522}
# Alibaba-NLP/gte-modernbert-base (modernbert-embed-base has the same fields), as released.
GTE_MODERNBERT_BASE = {
    "architectures": ["ModernBertModel"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 50281, "classifier_activation": "gelu", "classifier_bias": False, "classifier_dropout": 0.0,
    "classifier_pooling": "mean", "cls_token_id": 50281, "decoder_bias": True, "deterministic_flash_attn": False,
    "embedding_dropout": 0.0, "eos_token_id": 50282, "global_attn_every_n_layers": 3,
    "global_rope_theta": 160000.0, "gradient_checkpointing": False, "hidden_activation": "gelu",
    "hidden_size": 768, "initializer_cutoff_factor": 2.0, "initializer_range": 0.02, "intermediate_size": 1152,
    "layer_norm_eps": 1e-05, "local_attention": 128, "local_rope_theta": 10000.0,
    "max_position_embeddings": 8192, "mlp_bias": False, "mlp_dropout": 0.0, "model_type": "modernbert",
    "norm_bias": False, "norm_eps": 1e-05, "num_attention_heads": 12, "num_hidden_layers": 22,
    "pad_token_id": 50283, "position_embedding_type": "absolute", "reference_compile": True,
    "sep_token_id": 50282, "sparse_pred_ignore_index": -100, "sparse_prediction": False,
    "torch_dtype": "float32", "transformers_version": "4.48.0.dev0", "vocab_size": 50368}
RELEASED = {"mpnet": ALL_MPNET_BASE_V2, "distilbert": MSMARCO_DISTILBERT_BASE_V4, "modernbert": GTE_MODERNBERT_BASE}
FAMILIES = tuple(RELEASED)
HIDDEN = 64


def tiny_mpnet_tokenizer(minilm_dir: pathlib.Path):
    """MPNet's tokenizer layout: <s> <pad> </s> <unk>, then the uncased BERT vocabulary, <mask> last
    (the released vocabulary has exactly this shape, 30527 entries)."""
    from transformers import MPNetTokenizer

    words = (minilm_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab = {tok: i for i, tok in enumerate(["<s>", "<pad>", "</s>", "<unk>"] + words + ["<mask>"])}
    return MPNetTokenizer(vocab=vocab, do_lower_case=True, model_max_length=512)


def _tiny_distilbert_tokenizer(minilm_dir: pathlib.Path):
    """distilbert-base-uncased's tokenizer is the uncased BERT WordPiece, without token types."""
    from transformers import DistilBertTokenizer

    words = (minilm_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return DistilBertTokenizer(vocab={tok: i for i, tok in enumerate(words)}, do_lower_case=True,
                               model_max_length=512)


def tiny_modernbert_tokenizer(corpus: list[str], vocab_size: int = 700):
    """ModernBERT's kind of tokenizer: byte-level BPE, [CLS] text [SEP], no token types
    (`vocab_size` 700 for tests; bench/shapes.py trains a larger one for realistic token counts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", mask_token="[MASK]", model_max_length=8192,
                                   model_input_names=["input_ids", "attention_mask"])


def tiny_config(family: str, tokenizer) -> dict:
    """The released config of `family` with only its size and special-token fields shrunk."""
    cfg = dict(RELEASED[family])
    vocab = -(-len(tokenizer) // 64) * 64  # padded like the released vocabularies
    if family == "mpnet":
        cfg.update(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                   vocab_size=len(tokenizer))
    elif family == "distilbert":
        cfg.update(dim=HIDDEN, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=len(tokenizer))
    else:  # 4 layers: global, sliding, sliding, global (global_attn_every_n_layers = 3)
        cfg.update(hidden_size=HIDDEN, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96,
                   vocab_size=vocab, pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id,
                   bos_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                   eos_token_id=tokenizer.sep_token_id)
    return cfg


def _randomise(model, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if "relative_attention_bias" in name:
                param.copy_(noise)
            elif "norm" in name.lower() and name.endswith("weight"):
                param.copy_(1 + 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.1 * noise)
            else:
                param.copy_(0.15 * noise)


def build_hf_folder(family: str, folder: pathlib.Path, *, minilm_dir: pathlib.Path, corpus: list[str],
                    seed: int = 0, **overrides) -> pathlib.Path:
    """A random tiny `family` model saved by transformers (safetensors) with its tokenizer, and the
    released-style config.json (`overrides` change fields of it, e.g. biases on)."""
    tokenizer = {"mpnet": lambda: tiny_mpnet_tokenizer(minilm_dir),
                 "distilbert": lambda: _tiny_distilbert_tokenizer(minilm_dir),
                 "modernbert": lambda: tiny_modernbert_tokenizer(corpus)}[family]()
    return save_random_model(folder, {**tiny_config(family, tokenizer), **overrides}, tokenizer, seed)


def save_random_model(folder: pathlib.Path, config: dict, tokenizer, seed: int) -> pathlib.Path:
    """The transformers model of `config` with random weights (`_randomise`), saved as safetensors
    with `tokenizer`, and `config` (released style) as its config.json."""
    from transformers import AutoConfig, AutoModel

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    model = AutoModel.from_config(AutoConfig.from_pretrained(str(folder)), attn_implementation="eager").eval()
    _randomise(model, seed)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    # transformers 5 rewrote config.json in its own style; put the released style back.
    (folder / "config.json").write_text(json.dumps({**config, "architectures": [type(model).__name__]}, indent=2))
    return folder


def st_folder(hf_folder: pathlib.Path, out: pathlib.Path, *, pooling: tuple[str, ...], max_seq_length: int,
              dense_dim: int | None = None, normalize: bool = True) -> pathlib.Path:
    """A sentence-transformers folder saved by sentence-transformers itself:
    Transformer + Pooling(`pooling` modes, concatenated) [+ Dense(tanh)] [+ Normalize], with the
    released-style config.json of `hf_folder` (saving rewrote it in transformers-5 style)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    torch.manual_seed(1)
    modules = [models.Transformer(str(hf_folder), max_seq_length=max_seq_length),
               models.Pooling(HIDDEN, pooling_mode=pooling)]
    if dense_dim:
        modules.append(models.Dense(HIDDEN * len(pooling), dense_dim, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(models.Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    (out / "config.json").write_text((hf_folder / "config.json").read_text())
    return out
