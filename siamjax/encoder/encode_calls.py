"""How `SentenceEncoder.encode` turns token ids into device calls: row lengths (buckets, packed
rows), the tokens per call, the row split over a mesh's devices, and putting each call's
outputs back in text order. Few distinct shapes, so XLA compiles a handful of programs.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from siamjax.encoder import rows
from siamjax.parallel import make_mesh

_MIN_BUCKET = 16
_MIN_PACK_ROW = 64
# Encoding packs `batch_size * _TOKENS_PER_TEXT` tokens per call (a typical sentence is 10-20
# tokens): with short texts a call holds more than batch_size of them, with long ones fewer, and
# the memory per call stays bounded.
_TOKENS_PER_TEXT = 16
# On CPU a call of more than ~2k tokens no longer fits the caches: measured with MiniLM on 2
# cores, 8.0-8.6k tokens/s at 1-2k tokens per call but 6.8k at 4k. Accelerators want big calls.
_CPU_MAX_TOKENS_PER_CALL = 2048


def bucket_length(longest: int, max_seq_length: int) -> int:
    """Smallest of {16, 32, 64, ...} that fits `longest`, capped at `max_seq_length`."""
    return rows.pick_bucket(min(longest, max_seq_length), rows.bucket_lengths(max_seq_length, _MIN_BUCKET))


def packing_row_length(longest: int, max_seq_length: int) -> int:
    """Row length for packed inference: the text's bucket, but at least `_MIN_PACK_ROW` tokens.

    Why a floor: rows of 64 hold three or four typical sentences, so short texts pack densely;
    longer rows would grow the (quadratic) attention cost for no packing gain.
    """
    return min(max(bucket_length(longest, max_seq_length), _MIN_PACK_ROW), max_seq_length)


def plan_calls(lengths: Sequence[int], batch_size: int, max_seq_length: int,
               num_devices: int = 1) -> list[tuple[int, int, list[list[int]]]]:
    """How `SentenceEncoder.encode` packs texts of these token `lengths`: `(row_length, rows,
    layout)` per encoder call.

    Each call carries about `batch_size * _TOKENS_PER_TEXT` tokens per device (rows of
    `packing_row_length` tokens; a multiple of `num_devices` rows, split evenly over them),
    so `batch_size` keeps sentence-transformers' meaning, roughly sentences per call and
    device, for typical sentences, and bounds memory for long ones. On CPU each device's
    share is capped at `_CPU_MAX_TOKENS_PER_CALL` tokens (cache-sized).
    """
    tokens = batch_size * _TOKENS_PER_TEXT
    if jax.default_backend() == "cpu":
        tokens = min(tokens, _CPU_MAX_TOKENS_PER_CALL)
    return rows.plan_calls(list(lengths), lambda n: packing_row_length(n, max_seq_length),
                           lambda row_length: num_devices * max(1, tokens // row_length), num_devices)


@functools.lru_cache(maxsize=None)
def local_mesh() -> Mesh:
    """All of this process's devices on the batch axes: encoding is data-parallel, and each process
    encodes its own texts (no other process has to join the call).

    On CPU, one device: the host's devices (`--xla_force_host_platform_device_count`) share the
    same cores, so splitting rows over them adds work and buys nothing (pass `mesh=` to split).
    """
    devices = jax.local_devices()
    return make_mesh(data=-1, fsdp=1, devices=devices[:1] if jax.default_backend() == "cpu" else devices)


@functools.lru_cache(maxsize=None)
def rows_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (row) axis split over every axis of `mesh`, its axes made `Auto`: the encoder has
    no sharding annotations, so a mesh with `Explicit` axes (e.g. the search mesh) would leave
    ops like the embedding gather without a resolvable output sharding."""
    auto = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
    return NamedSharding(auto, P(tuple(mesh.axis_names)))


def scatter(out: np.ndarray, order: np.ndarray, emb: jax.Array) -> None:
    """Copy the call's outputs to their texts' rows of `out` (spare slots have order -1)."""
    keep = order >= 0
    out[order[keep]] = np.asarray(emb)[keep]
