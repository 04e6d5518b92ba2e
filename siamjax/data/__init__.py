"""Input data: one file-row reader for every verb, datasets of pairs/triplets/scored pairs, the
no-duplicates global batch sampler, tokenisation and the grain training pipeline.

Sources: local jsonl/csv/tsv/parquet files through a declared column mapping (`read_pairs`),
prepared array_record shards (`prepare_shards` writes them by streaming the input, `open_shards`
reads them lazily), or the tfds builders for STS benchmark, SICK and NLI
(`siamjax.data.tfds_builders`, imported only by whoever uses them, because importing
tensorflow_datasets is slow). `make_train_iterator`
shuffles reproducibly by (seed, epoch), never puts a text twice in a global batch, tokenises and
pads to bucket lengths or packs, and gives this process its slice of every global batch.
"""
from siamjax.data.beir import RetrievalData, read_beir
from siamjax.data.datasets import concat_datasets, in_memory, length_grouped
from siamjax.data.nli import nli_to_triplets
from siamjax.data.pipeline import TrainIterator, make_train_iterator
from siamjax.data.readers import (detect_format, pair_rows, read_labelled_pairs, read_pairs, read_scored_pairs,
                                  read_stsb_split, read_texts, read_triplets)
from siamjax.data.records import BadRow, BadRowError, DataError, Example, PairDataset, text_key
from siamjax.data.sampler import GlobalBatchSampler
from siamjax.data.shards import ShardSource, open_shards, prepare_shards
from siamjax.data.tokenization import pack_sides, tokenize_sides

__all__ = [
    "BadRow", "BadRowError", "DataError", "Example", "GlobalBatchSampler", "PairDataset", "RetrievalData",
    "ShardSource", "TrainIterator", "concat_datasets", "detect_format", "in_memory", "length_grouped",
    "make_train_iterator", "nli_to_triplets", "open_shards", "pack_sides", "pair_rows", "prepare_shards",
    "read_beir", "read_labelled_pairs", "read_pairs", "read_scored_pairs", "read_stsb_split", "read_texts",
    "read_triplets", "text_key", "tokenize_sides",
]
