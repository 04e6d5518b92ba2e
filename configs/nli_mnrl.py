"""SBERT's NLI recipe (training_nli_v2.py): MultipleNegativesRanking with hard negatives on AllNLI.

    siamjax train --config configs/nli_mnrl.py --workdir runs/nli
    siamjax train --config configs/nli_mnrl.py --workdir runs/nli \
        --config.data.train.tfds.manual_dir=/data/nli_jsonl   # offline: SNLI/MultiNLI jsonl files

AllNLI = SNLI + MultiNLI train, built once as array_record by the `nli` tfds builder
(downloaded from the official URLs unless manual_dir holds the jsonl files). Each premise
with an entailed and a contradicted hypothesis gives (anchor, positive, hard negative); with
nli_symmetric the hypotheses serve as anchors too, as in the ST script. Batches never hold a
text twice (ST's NoDuplicatesDataLoader): in-batch negatives are then true negatives.
Model selection on STS-b dev (tfds `stsb` builder, validation split).
"""
from siamjax.train.config import default_config


def get_config(arg=None):
    """The NLI/MNRL config; `arg` is unused."""
    del arg
    c = default_config()
    c.model.name_or_path = "bert-base-uncased"  # a plain HF model gets mean pooling
    c.model.max_seq_length = 75

    c.data.train.tfds.builder = "nli"
    c.data.train.tfds.configs = "snli,multinli"
    c.data.train.tfds.split = "train"
    c.data.nli_to_triplets = True
    c.data.nli_symmetric = True
    c.data.no_duplicates = True
    c.data.buckets = (32, 64, 75)

    c.loss.name = "mnrl"
    c.loss.kwargs.scale = 20.0
    c.loss.sharded = True  # negatives from every device's slice of the batch

    c.optim.lr = 2e-5
    c.optim.warmup_ratio = 0.1

    c.train.batch_size = 128
    c.train.num_epochs = 1.0
    c.train.log_every_steps = 100

    c.eval.every_steps = 1000
    c.eval.sts.tfds.builder = "stsb"
    c.eval.sts.tfds.split = "validation"
    c.eval.sts.normalize_scores = True
    c.eval.sts.score_range = (0.0, 5.0)

    c.checkpoint.every_steps = 1000
    c.checkpoint.best_metric = "sts/spearman_cosine"
    return c
