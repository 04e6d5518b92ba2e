"""A released sentence-transformers folder: siamjax against PyTorch sentence-transformers, same run.

Why: the tiny random models of `tests/test_families.py` cover every code path, but a released
folder carries config fields, tokenizer quirks and weight names tiny ones leave at defaults; only
a real checkpoint shows they load and compute the same. This prints, for the STS-b test sentences,
the per-sentence cosine between siamjax's and sentence-transformers' embeddings (packed rows, the
default `encode`, and padded rows) and both libraries' STS Spearman.

    python bench/real_checkpoint_parity.py --model /path/to/all-mpnet-base-v2 \
        --sts /work/shared/data/stsbenchmark/sts-test.csv
"""
import argparse
import csv

import jax
import numpy as np
from scipy.stats import spearmanr

import siamjax

PADDED_BATCH = 32


def read_sts(path: str, limit: int | None) -> tuple[list[str], list[str], np.ndarray]:
    """(sentences1, sentences2, gold scores) of an STS-b tab-separated file."""
    with open(path, encoding="utf-8") as f:
        lines = [row for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(row) >= 7]
    lines = lines[:limit]
    return [r[5] for r in lines], [r[6] for r in lines], np.array([float(r[4]) for r in lines])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def padded(model: siamjax.SentenceEncoder, texts: list[str]) -> np.ndarray:
    """One text per row, right-padded to the longest text (one compiled shape)."""
    ids = model.token_ids(texts)
    length = max(len(x) for x in ids)
    encode = jax.jit(model.encode_fn)
    chunks = [ids[i:i + PADDED_BATCH] for i in range(0, len(ids), PADDED_BATCH)]
    chunks[-1] = chunks[-1] + [chunks[-1][-1]] * (PADDED_BATCH - len(chunks[-1]))  # same shape
    out = np.concatenate([np.asarray(encode(model.params, model.pad(c, length))) for c in chunks])
    return out[:len(ids)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="sentence-transformers folder")
    parser.add_argument("--sts", required=True, help="STS-b file (sts-test.csv)")
    parser.add_argument("--limit", type=int, help="first N pairs only")
    args = parser.parse_args()
    import torch
    from sentence_transformers import SentenceTransformer

    s1, s2, gold = read_sts(args.sts, args.limit)
    texts = s1 + s2
    # float32 like siamjax: sentence-transformers would load e5-mistral in its config's float16
    theirs = SentenceTransformer(args.model, device="cpu", model_kwargs={"dtype": torch.float32}).encode(
        texts, batch_size=32)
    model = siamjax.SentenceEncoder.from_pretrained(args.model)
    ours = {"packed": model.encode(texts, batch_size=32), "padded": padded(model, texts)}
    print(f"{args.model}: {model.spec.transformer.model_type}, {len(s1)} pairs, {len(texts)} sentences, "
          f"max_seq_length {model.max_seq_length}")
    n = len(s1)
    st_rho = spearmanr(cosines(theirs[:n], theirs[n:]), gold).statistic
    print(f"sentence-transformers STS Spearman {st_rho:.5f}")
    for layout, emb in ours.items():
        cos = cosines(emb, theirs)
        rho = spearmanr(cosines(emb[:n], emb[n:]), gold).statistic
        print(f"siamjax {layout}: per-sentence cosine min {cos.min():.7f} mean {cos.mean():.7f}; "
              f"STS Spearman {rho:.5f} (diff {rho - st_rho:+.2e})")


if __name__ == "__main__":
    main()
