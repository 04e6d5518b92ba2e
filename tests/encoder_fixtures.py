"""Builders shared by the encoder tests: varied sentences and tiny PyTorch-saved checkpoints."""
from __future__ import annotations

import csv
import pathlib


def varied_sentences(stsb_dir: pathlib.Path, n_sts: int = 190) -> list[str]:
    """200+ sentences: STS-b test text plus edge cases (empty, very long, non-ASCII, odd spacing)."""
    with open(stsb_dir / "sts-test.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    sts = [r[5] for r in rows[:n_sts // 2]] + [r[6] for r in rows[:n_sts - n_sts // 2]]
    edge = [
        "", " ", "a", ".", "?!", "123 456 7890", "UPPER CASE SHOUTING", "tab\tseparated\twords",
        "line\nbreaks\nhere", "  leading and trailing spaces  ",
        "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.",
        "Le cœur déçu mais l'âme plutôt naïve, Louÿs rêva de crapaüter en canoë.",
        "日本語のテキストも埋め込めるはずです。", "Съешь же ещё этих мягких французских булок.",
        "ملأ الفضاء بالضوء", "🙂 emoji 🚀 and symbols ∑∫√", "naïve café résumé",
        "The quick brown fox jumps over the lazy dog. " * 60,  # far beyond max_seq_length
        " ".join(f"token{i}" for i in range(400)),
        "x" * 3000,
    ]
    return sts + edge


def build_tiny_roberta(folder: pathlib.Path, corpus: list[str]) -> pathlib.Path:
    """A random tiny RoBERTa + byte-level BPE tokenizer saved by `transformers` (PyTorch)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=specials)
    bpe._tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                                        model_max_length=64)
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, max_position_embeddings=66,
                           type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    model = RobertaModel(config).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder
