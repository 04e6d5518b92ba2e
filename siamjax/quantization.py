"""Quantised embeddings (int8 / uint8 / binary / ubinary) and search over them.

Same encodings as sentence-transformers' `quantize_embeddings`, so files are interchangeable:
  - uint8: per-dimension affine buckets floor((x - min) / ((max - min) / 255)) clipped to 0..255,
    with [min, max] per dimension from calibration embeddings ("ranges", shape [2, D]);
  - int8: the uint8 bucket minus 128;
  - ubinary: np.packbits(x > 0) -> uint8 [N, ceil(D / 8)];
  - binary: the ubinary byte minus 128, as int8.
Searching quantised codes (Hamming ranking with float re-scoring) is `siamjax.search.quantized`.
"""
from __future__ import annotations

import numpy as np


PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def calibration_ranges(calibration_embeddings) -> np.ndarray:
    """Per-dimension [min; max] (float32 [2, D]) of calibration embeddings, for int8/uint8.

    Why: int8 buckets must be fixed once (from a representative sample) so that embeddings
    quantised at different times land in the same buckets and stay comparable.
    """
    calib = np.asarray(calibration_embeddings, dtype=np.float32)
    if calib.ndim != 2 or calib.shape[0] < 2:
        raise ValueError(
            f"calibration embeddings must be 2-D with at least 2 rows; got shape {calib.shape}"
        )
    return np.stack([calib.min(axis=0), calib.max(axis=0)]).astype(np.float32)


def check_ranges(ranges, dim: int) -> np.ndarray:
    """`ranges` as float32 [2, D] = [min; max] per dimension, or a ValueError saying the shape."""
    ranges = np.asarray(ranges, dtype=np.float32)
    if ranges.shape != (2, dim):
        raise ValueError(f"ranges must have shape (2, {dim}) = [min; max] per dimension; got {ranges.shape}")
    return ranges


def quantize_embeddings(embeddings, precision: str, calibration=None, *, ranges=None) -> np.ndarray:
    """Quantise float embeddings [N, D] to `precision` ("float32", "int8", "uint8", "binary", "ubinary").

    Why: int8 is 4x and binary 32x smaller than float32, which is what makes large corpora fit
    in memory and Hamming search fast.

    Args:
      embeddings: float array [N, D].
      precision: target precision.
      calibration: for int8/uint8, embeddings [M, D] whose per-dimension min/max define the buckets.
      ranges: for int8/uint8, explicit [2, D] ranges (wins over `calibration`). With neither, the
        ranges come from `embeddings` itself, which only makes sense for a whole corpus at once.
    Returns:
      float32 [N, D], int8/uint8 [N, D], or int8/uint8 [N, ceil(D/8)] packed bits.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    emb = np.asarray(embeddings)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-D [N, D]; got shape {emb.shape}")
    if not np.issubdtype(emb.dtype, np.floating):
        raise ValueError(f"embeddings to quantise must be float, got {emb.dtype}")
    emb = emb.astype(np.float32, copy=False)
    if precision == "float32":
        return emb
    if precision in ("binary", "ubinary"):
        packed = np.packbits(emb > 0, axis=-1)
        return packed if precision == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    if ranges is None:
        ranges = calibration_ranges(emb if calibration is None else calibration)
    ranges = check_ranges(ranges, emb.shape[1])
    starts_D = ranges[0]
    steps_D = (ranges[1] - starts_D) / 255
    steps_D = np.where(steps_D == 0, 1, steps_D)
    buckets = np.clip(np.floor((emb - starts_D) / steps_D), 0, 255)
    return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)


def dequantize_embeddings(quantized, precision: str, *, ranges=None, dim: int | None = None) -> np.ndarray:
    """Approximate float32 embeddings back from quantised ones (bucket centres, or +-1 for bits).

    Why: asymmetric scoring (float query vs quantised corpus) and inspecting quantisation error.
    """
    q = np.asarray(quantized)
    if precision == "float32":
        return q.astype(np.float32)
    if precision in ("binary", "ubinary"):
        packed = q.view(np.uint8) ^ np.uint8(0x80) if precision == "binary" else q.astype(np.uint8)
        bits = np.unpackbits(packed, axis=-1)
        bits = bits if dim is None else bits[:, :dim]
        return bits.astype(np.float32) * 2 - 1
    if precision not in ("int8", "uint8"):
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if ranges is None:
        raise ValueError(f"dequantising {precision} needs the calibration ranges used to quantise")
    ranges = check_ranges(ranges, q.shape[1])
    steps_D = (ranges[1] - ranges[0]) / 255
    buckets = q.astype(np.float32) + (128 if precision == "int8" else 0)
    return ranges[0] + (buckets + 0.5) * steps_D
