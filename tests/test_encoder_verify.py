"""Load-time checks of a model folder (`siamjax.encoder.verify`), through `from_pretrained` on
damaged copies of the real all-MiniLM-L6-v2 folder: each damage is an error naming the file."""
import json
import shutil
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import siamjax
from siamjax.encoder import verify


@pytest.fixture
def folder(minilm_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(minilm_dir, dst)
    return dst


def test_intact_folder_loads_and_checks_pass(minilm_dir):
    tensors = verify.load_safetensors(minilm_dir / "model.safetensors")
    verify.check_weights(tensors, "minilm")
    assert len(tensors) > 100


def test_missing_tokenizer_files(folder):
    for name in verify.TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(verify.ModelFolderError, match=r"model: no tokenizer files"):
        siamjax.SentenceEncoder.from_pretrained(folder)


def test_tokenizer_of_another_size(folder, tmp_path):
    """vocab.txt alone, cut to 100 words: 100 tokens for 30522 embedding rows."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    words = (folder / "vocab.txt").read_text().splitlines()
    (folder / "vocab.txt").write_text("\n".join(words[:100]) + "\n")
    with pytest.raises(verify.ModelFolderError, match=r"tokenizer has 10\d tokens for 30522 embedding rows"):
        siamjax.SentenceEncoder.from_pretrained(folder)


def test_tokenizer_larger_than_the_embeddings(tmp_path):
    (tmp_path / "vocab.txt").write_text("a\n")

    class Tokenizer:
        def __len__(self):
            return 40000
    with pytest.raises(verify.ModelFolderError, match=r"40000 tokens but the model's word embeddings only 30522"):
        verify.check_tokenizer(tmp_path, Tokenizer(), 30522)


@pytest.mark.parametrize("value,match", [(np.nan, r"1 non-finite value"), (np.inf, r"1 non-finite value"),
                                         (3e7, r"a value of magnitude 3e\+07")])
def test_non_finite_or_absurd_weights(folder, value, match):
    tensors = load_file(folder / "model.safetensors")
    weight = tensors["encoder.layer.2.output.dense.weight"].copy()
    weight[3, 4] = value
    tensors["encoder.layer.2.output.dense.weight"] = weight
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(verify.ModelFolderError, match=rf"tensor 'encoder\.layer\.2\.output\.dense\.weight' has {match}"):
        siamjax.SentenceEncoder.from_pretrained(folder)
    siamjax.SentenceEncoder.from_pretrained(folder, verify_weights=False)  # the opt-out for huge models


@pytest.mark.parametrize("cut,match", [
    (0, r"truncated safetensors file \(0 bytes; the header is missing\)"),
    (5, r"truncated safetensors file \(5 bytes"),
    (2000, r"truncated safetensors file \(header of \d+ bytes, file of 2000\)"),
    (-10, r"truncated: the header describes \d+ bytes of tensors, the file holds \d+"),
])
def test_truncated_safetensors(folder, cut, match):
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(verify.ModelFolderError, match=rf"model\.safetensors: {match}"):
        siamjax.SentenceEncoder.from_pretrained(folder)


def test_damaged_header(folder):
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    name = "embeddings.word_embeddings.weight"
    header[name]["shape"] = [30522, 385]  # sizes no longer match the byte range
    blob = json.dumps(header, separators=(",", ":")).encode()
    assert len(blob) <= length
    path.write_bytes(bytes(data[:8]) + blob.ljust(length) + bytes(data[8 + length:]))
    with pytest.raises(verify.ModelFolderError, match=rf"tensor '{name}' has \d+ bytes for shape"):
        siamjax.SentenceEncoder.from_pretrained(folder)
    path.write_bytes(bytes(data[:8]) + b"\xff" * length + bytes(data[8 + length:]))
    with pytest.raises(verify.ModelFolderError, match=r"damaged safetensors header \(not JSON\)"):
        siamjax.SentenceEncoder.from_pretrained(folder)
