"""The global batch across processes: no text twice in it although each process reads only its
own rows, and the text ids that reach MNRL during `siamjax train` (false-negative masking)."""
import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from siamjax.cli import main as cli_main
from siamjax.data import ShardSource, make_train_iterator, prepare_shards
from siamjax.train import builders
from siamjax.train.config_file import load_config

from config_fixtures import read_jsonl, write_tiny_config

SHARED = "the same sentence on two processes"


class ReadLog(ShardSource):
    """A prepared folder that records which rows this process read."""

    def __init__(self, directory):
        super().__init__(directory)
        self.read: set[int] = set()

    def _position(self, index):
        self.read.add(int(index))
        return super()._position(index)


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return AutoTokenizer.from_pretrained(minilm_dir)


def global_batches(source, tokenizer, *, no_duplicates, steps=4):
    """[(process 0's batch, process 1's batch)] of a 2-process run (global batch 8, in file order)."""
    iterators = [make_train_iterator(source, tokenizer, global_batch_size=8, max_seq_length=16, buckets=(16,),
                                     shuffle=False, no_duplicates=no_duplicates, process_index=p, process_count=2,
                                     prefetch=0) for p in range(2)]
    out = [tuple(next(it) for it in iterators) for _ in range(steps)]
    for it in iterators:
        it.close()
    return out


def test_a_text_on_two_processes_never_lands_in_one_global_batch(tmp_path, tokenizer):
    """Row 1's anchor (process 0's slice) is row 6's positive (process 1's slice)."""
    records = [{"a": f"anchor {i}", "p": f"positive {i}"} for i in range(32)]
    records[1]["a"] = records[6]["p"] = SHARED
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    prepare_shards(str(tmp_path / "d.jsonl"), tmp_path / "shards", columns={"a": "a", "p": "p"}, num_shards=4)

    # Without the rule the planted pair shares the first global batch, split over the processes:
    (p0, p1), *_ = global_batches(ShardSource(tmp_path / "shards"), tokenizer, no_duplicates=False)
    ids = np.concatenate([p0["text_ids"], p1["text_ids"]], axis=1)
    assert ids[0, 1] == ids[1, 6], "text ids are global: equal on both processes for the same text"
    assert len(np.unique(ids)) == 15

    source = ReadLog(tmp_path / "shards")
    seen = []
    for p0, p1 in global_batches(source, tokenizer, no_duplicates=True):
        ids = np.concatenate([p0["text_ids"], p1["text_ids"]], axis=1)
        assert len(np.unique(ids)) == ids.size, "a text appeared twice in a global batch"
        seen.append(ids.size)
    assert seen == [16] * 4  # batches stay full: the conflicting row was deferred, not dropped


def test_each_process_reads_only_its_own_rows(tmp_path, tokenizer):
    records = [{"a": f"anchor {i}", "p": f"positive {i}"} for i in range(32)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    prepare_shards(str(tmp_path / "d.jsonl"), tmp_path / "shards", columns={"a": "a", "p": "p"}, num_shards=4)
    sources = [ReadLog(tmp_path / "shards") for _ in range(2)]
    for p, source in enumerate(sources):
        it = make_train_iterator(source, tokenizer, global_batch_size=8, max_seq_length=16, buckets=(16,),
                                 shuffle=False, process_index=p, process_count=2, prefetch=0)
        [next(it) for _ in range(4)]
        it.close()
    assert sources[0].read == {s + i for s in range(0, 32, 8) for i in range(4)}
    assert sources[1].read == {s + i for s in range(4, 32, 8) for i in range(4)}


def masked_infonce(a_BxD, p_BxD, anchors, positives, *, scale=20.0, mask=True):
    """numpy reference of MNRL with false-negative masking by text."""
    a = a_BxD / np.linalg.norm(a_BxD, axis=1, keepdims=True)
    p = p_BxD / np.linalg.norm(p_BxD, axis=1, keepdims=True)
    logits = scale * (a.astype(np.float64) @ p.T.astype(np.float64))
    for i in range(len(anchors)):
        for j in range(len(positives)):
            if mask and j != i and positives[j] in (positives[i], anchors[i]):
                logits[i, j] = -np.inf
    top = logits.max(axis=1, keepdims=True)
    lse = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(lse - np.diag(logits)))


def test_text_ids_reach_mnrl_during_siamjax_train(tmp_path, minilm_dir):
    """Planted duplicates in the first batch: masking changes the step-1 loss of `siamjax train`,
    which equals the numpy reference with masking (and without, when data.text_ids is off)."""
    anchors = [f"anchor sentence {i}" for i in range(16)]
    positives = [f"positive sentence {i}" for i in range(16)]
    positives[5] = positives[2]        # two rows share a positive
    positives[7] = anchors[3]          # a row's positive is another row's anchor
    positives[1] = " positive   sentence 0"  # the same text as row 0's positive, once normalised
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"a": a, "p": p}) + "\n" for a, p in zip(anchors, positives)))
    config = write_tiny_config(tmp_path / "tiny.py", tokenizer=minilm_dir, fields={
        "model.max_seq_length": 16, "data.buckets": (16,), "data.train.path": str(path),
        "data.train.columns": (("a", "a"), ("p", "p")), "data.shuffle": False, "data.no_duplicates": False,
        "loss.name": "mnrl", "train.batch_size": 8, "train.num_steps": 1, "train.dropout": False,
        "mesh.num_devices": 1, "checkpoint.every_steps": 100})
    loss = {}
    for flag in ("true", "false"):
        workdir = tmp_path / flag
        assert cli_main(["train", "--config", str(config), "--workdir", str(workdir),
                         f"--config.data.text_ids={flag}"]) == 0
        loss[flag] = read_jsonl(workdir / "metrics.jsonl")[0]["loss"]
    encoder = builders.build_encoder(load_config(str(config), []).model, 0)
    a, p = encoder.encode(anchors[:8]), encoder.encode(positives[:8])
    normalised = [" ".join(t.split()) for t in positives[:8]]
    masked = masked_infonce(a, p, anchors[:8], normalised)
    plain = masked_infonce(a, p, anchors[:8], normalised, mask=False)
    assert masked < plain - 1e-3, "the planted duplicates must matter"
    assert loss["true"] == pytest.approx(masked, abs=1e-4)
    assert loss["false"] == pytest.approx(plain, abs=1e-4)
