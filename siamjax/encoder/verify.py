"""Checks on a model folder at load time, so a damaged folder is an error naming its file, never a
model that encodes garbage.

Why each check exists (each was a silent wrong answer once):
- `load_safetensors` verifies the header and that every tensor's byte range lies inside the
  file before reading it: a truncated or 0-byte `model.safetensors` is one clear error, not a
  `SafetensorError` traceback;
- `check_weights` rejects non-finite or absurdly large values (bytes garbled inside the data
  section decode to such floats; a model with them encodes NaN). It reads every value once,
  cheap next to loading them; `verify_weights=False` skips it for huge models;
- `check_tokenizer` refuses a folder whose tokenizer files are missing (transformers then builds
  a 5-token vocabulary that maps every word to [UNK]) or whose vocabulary does not match the
  embedding matrix (ids past its end, or a vocabulary far smaller than it).
"""
from __future__ import annotations

import json
import pathlib
import struct

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

# bytes per element of each safetensors dtype
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
# No trained encoder has a weight this large; random bytes read as float32 exceed it ~45% of the time.
MAX_ABS_WEIGHT = 1e6
# Elements checked at a time by `check_weights` (16 MiB of float32).
_CHUNK = 1 << 22
# Files one of which holds a tokenizer's vocabulary (fast tokenizers, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")


class ModelFolderError(ValueError):
    """A model folder file that is missing, damaged or inconsistent; the message names the file."""


def safetensors_header(path: pathlib.Path) -> tuple[dict, int]:
    """(header, offset of the data section) of a safetensors file, every tensor's byte range
    checked against the file's size (for readers that then read tensors one at a time)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelFolderError(f"{path}: no such file")
    header = _header(path)
    with open(path, "rb") as f:
        return header, 8 + struct.unpack("<Q", f.read(8))[0]


def _header(path: pathlib.Path) -> dict:
    """The JSON header of a safetensors file, checked against the file's size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFolderError(f"{path}: truncated safetensors file ({size} bytes; the header is missing)")
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            raise ModelFolderError(f"{path}: truncated safetensors file (header of {length} bytes, "
                                   f"file of {size})")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelFolderError(f"{path}: damaged safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise ModelFolderError(f"{path}: damaged safetensors header (not a JSON object)")
    data_bytes = size - 8 - length
    end_max = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = (int(x) for x in info["data_offsets"])
            count = int(np.prod(info["shape"], dtype=np.int64))
            itemsize = _DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise ModelFolderError(f"{path}: damaged safetensors header entry for tensor {name!r}") from None
        if not 0 <= start <= end or end - start != count * itemsize:
            raise ModelFolderError(f"{path}: tensor {name!r} has {end - start} bytes for shape "
                                   f"{info['shape']} {info['dtype']} (damaged header)")
        end_max = max(end_max, end)
    if end_max != data_bytes:
        what = "truncated" if end_max > data_bytes else "has trailing bytes"
        raise ModelFolderError(f"{path}: {what}: the header describes {end_max} bytes of tensors, the "
                               f"file holds {data_bytes}")
    return header


def load_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file, after checking its header and sizes."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelFolderError(f"{path}: no such file")
    _header(path)
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFolderError(f"{path}: unreadable safetensors file ({err})") from None


def check_weights(tensors: dict[str, np.ndarray], source: str) -> None:
    """Every floating tensor is finite and below `MAX_ABS_WEIGHT` in magnitude."""
    for name, value in tensors.items():
        array = np.asarray(value)
        if array.dtype.kind not in "fV" or array.size == 0:
            continue
        flat, bad, peak = array.reshape(-1), 0, 0.0
        for start in range(0, flat.size, _CHUNK):  # a 262k x 768 embedding must not be copied whole
            chunk = flat[start:start + _CHUNK].astype(np.float32, copy=False)
            bad += int(chunk.size - np.count_nonzero(np.isfinite(chunk)))
            peak = max(peak, float(np.nanmax(np.abs(chunk), initial=0.0)))
        if bad:
            raise ModelFolderError(f"{source}: tensor {name!r} has {bad} non-finite value(s) (damaged "
                                   "weights; pass verify_weights=False / --no-verify-weights to load anyway)")
        if peak > MAX_ABS_WEIGHT:
            raise ModelFolderError(f"{source}: tensor {name!r} has a value of magnitude {peak:.3g} (damaged "
                                   "weights; pass verify_weights=False / --no-verify-weights to load anyway)")


def check_tokenizer(folder: pathlib.Path, tokenizer, embedding_rows: int) -> None:
    """The folder has tokenizer files and their vocabulary fits the word-embedding matrix."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelFolderError(f"{folder}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)})")
    size = len(tokenizer)
    if size > embedding_rows:
        raise ModelFolderError(f"{folder}: the tokenizer has {size} tokens but the model's word embeddings "
                               f"only {embedding_rows} rows (tokenizer of another model?)")
    if size <= embedding_rows // 2:
        raise ModelFolderError(f"{folder}: the tokenizer has {size} tokens for {embedding_rows} embedding "
                               "rows (damaged or missing tokenizer files, or another model's tokenizer)")
