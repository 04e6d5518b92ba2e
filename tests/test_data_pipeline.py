"""Tokenise/bucket, no-duplicate sampling, epochs, mixing, process slices, resume, global arrays."""
import json

import grain
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from siamjax.data import (GlobalBatchSampler, PairDataset, make_train_iterator,
                          read_stsb_split, tokenize_sides)
from siamjax.parallel import to_global_array
from siamjax.encoder.rows import bucket_lengths, pick_bucket


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def stsb_dev(stsb_dir):
    return read_stsb_split(stsb_dir / "sts-dev.csv")


def _pairs(n, name="pairs", dup_every=0):
    """n pairs; with dup_every=k every k-th anchor repeats the same text (NLI-like premises)."""
    anchors = [("shared premise" if dup_every and i % dup_every == 0 else f"anchor {i}")
               for i in range(n)]
    return PairDataset(name, ("anchor", "positive"), (anchors, [f"positive {i}" for i in range(n)]))


def _triplets(n, name="triplets"):
    return PairDataset(name, ("a", "p", "n"), ([f"q{i}" for i in range(n)],
                                               [f"d{i}" for i in range(n)],
                                               [f"x{i}" for i in range(n)]))


def _take(iterator, k):
    return [next(iterator) for _ in range(k)]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_bucket_lengths_and_choice():
    assert bucket_lengths(256) == (32, 64, 128, 256)
    assert bucket_lengths(200) == (32, 64, 128, 200)
    assert bucket_lengths(16) == (16,)
    assert [pick_bucket(n, (32, 64, 128)) for n in (1, 32, 33, 128)] == [32, 32, 64, 128]


def test_tokenize_sides_pads_to_bucket_and_truncates(tokenizer):
    short = ["a cat", "a dog sits here"]
    batch = tokenize_sides(tokenizer, [short, ["x", "y"]], max_seq_length=128)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        k: ((2, 2, 32), np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    ids = tokenizer(short[1])["input_ids"]
    np.testing.assert_array_equal(batch["input_ids"][0, 1, : len(ids)], ids)
    assert batch["input_ids"][0, 1, len(ids):].tolist() == [tokenizer.pad_token_id] * (32 - len(ids))
    assert batch["attention_mask"][0, 1].sum() == len(ids) and not batch["token_type_ids"].any()
    long = " ".join(["word"] * 100)
    batch = tokenize_sides(tokenizer, [[long], ["x"]], max_seq_length=40)
    assert batch["input_ids"].shape == (2, 1, 40)  # buckets (32, 40): truncated at 40
    assert batch["input_ids"][0, 0, -1] == tokenizer.sep_token_id
    assert tokenize_sides(tokenizer, [[" ".join(["w"] * 40)]],
                          max_seq_length=128)["input_ids"].shape[-1] == 64


def test_no_duplicate_texts_in_any_global_batch_and_batches_are_full():
    data = _pairs(96, dup_every=24)  # 4 rows per epoch share one anchor text
    sampler = GlobalBatchSampler([data], global_batch_size=16, seed=0)
    deferred = 0
    for _ in range(30):
        _, batch = sampler.next()
        texts = [t for i in batch for t in data.example_texts(i)]
        assert len(batch) == 16 and len(set(texts)) == len(texts)
        deferred += len(sampler.streams[0].deferred)
    assert deferred > 0  # conflicts happened and were deferred, not dropped
    assert sampler.streams[0].dropped == 0


def test_text_repeated_more_often_than_batches_is_capped_counted_and_logged(caplog):
    data = _pairs(60, dup_every=5)  # 12 rows share a text; an epoch has only 7.5 batches
    sampler = GlobalBatchSampler([data], global_batch_size=8, seed=0)
    for _ in range(100):
        sampler.next()
        assert len(sampler.streams[0].deferred) <= 8  # the state stays small
    dropped = sampler.get_state()["dropped_duplicates"][0]
    assert dropped > 0 and "example(s) skipped so far because their text repeats" in caplog.text


def test_deferred_examples_are_not_dropped_over_a_finite_run():
    data = _pairs(64, dup_every=8)
    sampler = GlobalBatchSampler([data], global_batch_size=8, seed=1, num_epochs=1)
    seen = []
    with pytest.raises(StopIteration):
        while True:
            seen += sampler.next()[1]
    assert len(seen) == len(set(seen))
    assert len(seen) + sampler.streams[0].leftover() == 64  # every example yielded or counted


def test_impossible_no_duplicate_batch_fails_clearly():
    data = PairDataset("same", ("a", "b"), (["x"] * 10, [f"y{i}" for i in range(10)]))
    with pytest.raises(ValueError, match="cannot fill a batch of 4 examples without repeating"):
        GlobalBatchSampler([data], global_batch_size=4, seed=0).next()
    _, batch = GlobalBatchSampler([data], global_batch_size=4, seed=0, no_duplicates=False).next()
    assert len(batch) == 4


def test_shuffle_is_reproducible_per_seed_and_differs_per_epoch():
    data = _pairs(32)

    def order(seed, steps=8):
        sampler = GlobalBatchSampler([data], global_batch_size=8, seed=seed)
        return [i for _ in range(steps) for i in sampler.next()[1]]

    assert order(0) == order(0) and order(0) != order(1)
    epoch0, epoch1 = order(0)[:32], order(0)[32:]
    assert sorted(epoch0) == sorted(epoch1) == list(range(32))  # each epoch is a permutation
    assert epoch0 != epoch1
    unshuffled = GlobalBatchSampler([data], global_batch_size=8, seed=0, shuffle=False)
    assert unshuffled.next()[1] == list(range(8))


def test_epochs_are_counted(tokenizer):
    it = make_train_iterator(_pairs(40), tokenizer, global_batch_size=8, max_seq_length=32,
                             seed=0, prefetch=0)
    _take(it, 7)
    assert it.step == 7 and it.epochs == {"pairs": pytest.approx(56 / 40)}
    it.close()


def test_round_robin_mixing_alternates_datasets_and_shapes(tokenizer):
    it = make_train_iterator({"p": _pairs(40), "t": _triplets(24)}, tokenizer,
                             global_batch_size=8, max_seq_length=32, seed=0, prefetch=0)
    shapes = [b["input_ids"].shape[0] for b in _take(it, 6)]
    assert shapes == [2, 3, 2, 3, 2, 3]
    it.close()


def test_proportional_mixing_follows_dataset_sizes():
    sources = [_pairs(64, "small"), _triplets(192, "big")]
    sampler = GlobalBatchSampler(sources, global_batch_size=16, seed=0, mixing="proportional")
    picks = [sampler.next()[0] for _ in range(32)]  # two rounds of 4 + 12 batches
    assert picks[:16].count(0) == 4 and picks[16:].count(0) == 4
    assert picks[:16] != picks[16:]  # each round has its own shuffled schedule
    with pytest.raises(ValueError, match="mixing must be one of"):
        GlobalBatchSampler(sources, global_batch_size=16, seed=0, mixing="random")


def test_processes_get_disjoint_slices_of_the_same_global_batch(tokenizer, stsb_dev):
    kwargs = dict(global_batch_size=16, max_seq_length=64, seed=2, prefetch=0)
    whole = _take(make_train_iterator(stsb_dev, tokenizer, process_index=0, process_count=1,
                                      **kwargs), 3)
    parts = [_take(make_train_iterator(stsb_dev, tokenizer, process_index=p, process_count=2,
                                       **kwargs), 3) for p in range(2)]
    for step, batch in enumerate(whole):
        assert parts[0][step]["input_ids"].shape[1] == 8
        np.testing.assert_array_equal(
            np.concatenate([parts[0][step]["labels"], parts[1][step]["labels"]]), batch["labels"])
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            for p in range(2):  # the same rows, padded to the same bucket on every process
                np.testing.assert_array_equal(parts[p][step][key],
                                              batch[key][:, 8 * p: 8 * p + 8])
    lengths = {b["input_ids"].shape[-1] for b in whole}
    assert len(lengths) > 1  # buckets do vary between batches here, so the check has teeth
    with pytest.raises(ValueError, match="global_batch_size=16 is not divisible by the 3 processes"):
        make_train_iterator(stsb_dev, tokenizer, process_index=0, process_count=3, **kwargs)


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_replays_exactly_the_same_batches(tokenizer, prefetch):
    sources = {"p": _pairs(60, "p", dup_every=5), "t": _triplets(30)}
    kwargs = dict(global_batch_size=8, max_seq_length=32, seed=11, mixing="proportional",
                  prefetch=prefetch)
    k, n = 5, 14  # n > one epoch of either dataset
    it = make_train_iterator(sources, tokenizer, **kwargs)
    first = _take(it, k)
    state = json.loads(json.dumps(it.get_state()))  # a small JSON-able dict
    assert len(json.dumps(state)) < 1000 and state["step"] == k
    rest = _take(it, n - k)
    restored = make_train_iterator(sources, tokenizer, **kwargs)
    restored.set_state(state)
    _assert_same(_take(restored, n - k), rest)
    fresh = make_train_iterator(sources, tokenizer, **kwargs)
    _assert_same(_take(fresh, n), first + rest)  # and the run itself is reproducible
    for x in (it, restored, fresh):
        x.close()


def test_restoring_a_state_from_other_settings_is_refused(tokenizer):
    it = make_train_iterator(_pairs(40), tokenizer, global_batch_size=8, max_seq_length=32,
                             seed=0, prefetch=0)
    state = it.get_state()
    other = make_train_iterator(_pairs(40), tokenizer, global_batch_size=4, max_seq_length=32,
                                seed=0, prefetch=0)
    with pytest.raises(ValueError, match="global_batch_size.*8, 4"):
        other.set_state(state)
    with pytest.raises(ValueError, match="state version"):
        other.set_state({**state, "version": 99})


def test_orbax_saves_and_restores_the_iterator(tokenizer, tmp_path):
    import orbax.checkpoint as ocp

    kwargs = dict(global_batch_size=8, max_seq_length=32, seed=3, prefetch=2)
    it = make_train_iterator(_pairs(40, dup_every=3), tokenizer, **kwargs)
    _take(it, 4)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
        expected = _take(it, 3)
        restored = make_train_iterator(_pairs(40, dup_every=3), tokenizer, **kwargs)
        manager.restore(4, args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointRestore(restored)))
    _assert_same(_take(restored, 3), expected)
    it.close()
    restored.close()


def test_finite_epochs_stop_and_report_the_leftover(tokenizer, stsb_dev, caplog):
    it = make_train_iterator(stsb_dev, tokenizer, global_batch_size=500, max_seq_length=128,
                             seed=0, num_epochs=1, no_duplicates=False, prefetch=0)
    batches = list(it)
    assert len(batches) == 3 and all(b["labels"].dtype == np.float32 for b in batches)
    assert all(0.0 <= b["labels"].min() and b["labels"].max() <= 1.0 for b in batches)
    assert max(b["input_ids"].shape[-1] for b in batches) in bucket_lengths(128)
    # STS-b dev repeats some sentences: with no duplicates the last batch cannot be filled,
    # and the examples left over are reported rather than silently lost.
    it = make_train_iterator(stsb_dev, tokenizer, global_batch_size=500, max_seq_length=128,
                             seed=0, num_epochs=1, prefetch=0)
    assert len(list(it)) == 2
    assert "examples left that do not fill a global batch of 500: {'sts-dev.csv': 500}" in (
        caplog.text)


def test_to_global_array_shards_the_batch_dimension(tokenizer, stsb_dev):
    assert jax.device_count() == 8
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
    it = make_train_iterator(stsb_dev, tokenizer, global_batch_size=16, max_seq_length=64,
                             seed=0, prefetch=0)
    local = next(it)
    assert local.pop("dataset") == 0  # host-side: which dataset the batch came from
    batch = to_global_array(local, mesh)
    assert batch["input_ids"].sharding.spec == P(None, ("data", "fsdp"), None)
    assert batch["text_ids"].sharding.spec == P(None, ("data", "fsdp"))
    assert batch["labels"].sharding.spec == P(("data", "fsdp"))
    for key, value in local.items():
        np.testing.assert_array_equal(np.asarray(batch[key]), value)
        assert batch[key].dtype == value.dtype
    assert batch["input_ids"].addressable_shards[0].data.shape[1] == 2  # 16 rows / 8 devices
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        to_global_array({k: v[..., :12, :] if v.ndim == 3 else v[..., :12] for k, v in local.items()},
                        mesh)
    it.close()
