"""Input pipeline: pair/triplet/scored-pair datasets -> tokenised, bucketed global batches.

Sources: local jsonl/csv/tsv files through a declared column mapping (`read_pairs`), or the
tfds builders for STS benchmark, SICK and NLI (`load_tfds_pairs`, array_record, no
TensorFlow). `make_train_iterator` shuffles reproducibly by (seed, epoch), never puts a text
twice in a global batch, mixes datasets, tokenises and pads to bucket lengths, and gives this
process its slice; `to_global_array` turns that slice into a sharded global array. The
iterator's state is a small JSON dict (`get_state` / `set_state`, or orbax via
`grain.checkpoint.CheckpointSave(iterator)`).
"""
from siamjax.data.global_array import to_global_array
from siamjax.data.nli import nli_to_triplets
from siamjax.data.pipeline import TrainIterator, make_train_iterator
from siamjax.data.readers import read_pairs, read_stsb_split
from siamjax.data.records import BadRow, BadRowError, Example, PairDataset
from siamjax.data.sampler import GlobalBatchSampler
from siamjax.data.tfds_builders import (BUILDERS, NliPairs, Sick, StsBenchmark,
                                        load_tfds_pairs)
from siamjax.data.tfds_source import TfdsPairSource
from siamjax.data.tokenization import bucket_lengths, tokenize_sides

__all__ = [
    "BUILDERS", "BadRow", "BadRowError", "Example", "GlobalBatchSampler", "NliPairs",
    "PairDataset", "Sick", "StsBenchmark", "TfdsPairSource", "TrainIterator",
    "bucket_lengths", "load_tfds_pairs", "make_train_iterator", "nli_to_triplets",
    "read_pairs", "read_stsb_split", "to_global_array", "tokenize_sides",
]
