"""Every siamjax training field, commented: the base that the other configs modify.

    siamjax train --config configs/default.py --workdir runs/x \
        --config.model.name_or_path=sentence-transformers/all-MiniLM-L6-v2 \
        --config.data.train.path=pairs.jsonl

Override any field on the command line with --config.<group>.<field>=value; the value is
parsed to the field's type and unknown fields are rejected with the closest known names.
"""
import ml_collections


def get_config(arg=None):
    """The default config; `arg` is unused here (presets use `configs/file.py:arg`)."""
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0  # seeds parameter init (random models), dropout and data order

    # ---------------------------------------------------------------- model
    c.model = ml_collections.ConfigDict()
    c.model.name_or_path = ""  # sentence-transformers/HF folder or hub name; "" = random init below
    c.model.max_seq_length = 128  # tokens per text after truncation (also the largest bucket)
    c.model.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (master weights stay f32)
    c.model.remat = False  # recompute each layer's activations in the backward pass (saves memory)
    # Random initialisation (used only when name_or_path is ""): a BERT of this shape.
    c.model.init = ml_collections.ConfigDict()
    c.model.init.tokenizer = ""  # folder or hub name of the HF tokenizer giving the vocabulary
    c.model.init.hidden_size = 384
    c.model.init.num_hidden_layers = 6
    c.model.init.num_attention_heads = 12
    c.model.init.intermediate_size = 1536
    c.model.init.max_position_embeddings = 512
    c.model.init.hidden_dropout_prob = 0.1
    c.model.init.pooling = "mean"  # "mean", "cls", "max" or "+"-joined, e.g. "mean+max"
    c.model.init.normalize = False  # L2-normalise the output embeddings

    # ---------------------------------------------------------------- data
    c.data = ml_collections.ConfigDict()
    c.data.train = _file_dataset()  # the training file (pairs, triplets or scored pairs)
    c.data.nli_to_triplets = False  # turn an NLI file (premise, hypothesis, nli_label) into triplets
    c.data.nli_symmetric = False  # ... also use hypotheses as anchors (SBERT training_nli_v2)
    c.data.shuffle = True  # reshuffle each epoch (reproducible from seed)
    c.data.no_duplicates = True  # never put one text twice in a global batch (false negatives)
    c.data.group_by_length = False  # batches of similar length: far less padding on CPU
    c.data.buckets = (32, 64, 128)  # padded lengths a batch may take (<= model.max_seq_length)
    # Sequence packing: > 0 packs several texts into rows of this many tokens (>= max_seq_length)
    # instead of padding each to a bucket; same embeddings, far fewer pad tokens. 0 = off.
    c.data.pack_length = 0
    c.data.prefetch = 2  # batches prepared ahead by a background thread

    # ---------------------------------------------------------------- loss
    c.loss = ml_collections.ConfigDict()
    c.loss.name = "mnrl"  # a name from siamjax.losses (cosent, mnrl, triplet, ...)
    # keyword arguments of that loss, e.g. scale=20.0 (new keys may be added by overrides)
    c.loss.kwargs = ml_collections.ConfigDict()
    c.loss.sharded = False  # in-batch negatives gathered across devices (sharded InfoNCE)

    # ---------------------------------------------------------------- optimizer
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 2e-5  # peak learning rate
    c.optim.schedule = "linear"  # decay after warmup: "linear", "cosine" or "constant"
    c.optim.warmup_ratio = 0.1  # warmup as a fraction of train steps (ignored if warmup_steps >= 0)
    c.optim.warmup_steps = -1  # warmup steps; -1 = use warmup_ratio
    c.optim.end_lr = 0.0  # learning rate at the last step
    c.optim.weight_decay = 0.01  # AdamW decay; never applied to biases and LayerNorm
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-6
    c.optim.clip_norm = 1.0  # global gradient-norm clipping; 0 = off

    # ---------------------------------------------------------------- training
    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32  # global batch (pairs/triplets per step), split over all devices
    c.train.num_epochs = 1.0  # length of training in epochs of the (largest) training set ...
    c.train.num_steps = -1  # ... or in steps, if >= 0 (overrides num_epochs)
    c.train.dropout = True  # dropout on while training (as sentence-transformers does)
    c.train.grad_cache_chunk = 0  # GradCache: encode in chunks of this many rows; 0 = off
    c.train.log_every_steps = 50  # metrics to metrics.jsonl / TensorBoard every N steps
    c.train.progress_bar = True  # tqdm bar (loss, pairs/s, ETA) on process 0

    # ---------------------------------------------------------------- mesh
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data-parallel axis size; -1 = all devices not used by fsdp
    c.mesh.fsdp = 1  # parameter-sharding axis size (FSDP); 1 = replicate parameters
    c.mesh.fsdp_min_size = 2**18  # arrays with fewer elements stay replicated
    c.mesh.num_devices = 0  # use only the first N devices (0 = all); data x fsdp must equal it

    # ---------------------------------------------------------------- evaluation
    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 0  # evaluate every N steps (and at the end); 0 = only at the end
    c.eval.batch_size = 64  # sentences per encode batch
    c.eval.sts = _file_dataset()  # an STS dev file (sentence1, sentence2, score); path "" = none

    # ---------------------------------------------------------------- checkpoints
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 500  # save every N steps (also at the end, on evaluation, on preemption)
    c.checkpoint.keep = 2  # keep the latest N checkpoints ...
    c.checkpoint.keep_best = 1  # ... and the best N by best_metric
    c.checkpoint.best_metric = "sts/spearman_cosine"  # evaluation metric ranking checkpoints
    c.checkpoint.best_mode = "max"  # "max" or "min"
    c.checkpoint.async_save = True  # write checkpoints in the background

    # ---------------------------------------------------------------- export
    c.export = ml_collections.ConfigDict()
    # after `siamjax train` finishes, write the best (else last) checkpoint as a
    # sentence-transformers folder here; relative to the workdir; "" = don't (see `siamjax export`)
    c.export.dir = ""
    return c


def _file_dataset():
    """Fields of one local jsonl/csv/tsv file read through a column mapping."""
    d = ml_collections.ConfigDict()
    d.path = ""  # the file (.jsonl, .csv, .tsv, optionally .gz)
    d.format = ""  # "jsonl", "csv" or "tsv"; "" = from the suffix
    # role -> column (header name or 0-based index): text sides in order, then optionally one
    # label role "score", "label" or "nli_label", as (role, column) pairs in order, e.g.
    # (("sentence1", 5), ("sentence2", 6), ("score", 4))
    d.columns = (("anchor", "anchor"), ("positive", "positive"))
    d.header = True  # the file has a header row (csv/tsv)
    d.quoting = ""  # csv quoting: "none" or "minimal"; "" = "none" for tsv, "minimal" for csv
    d.score_range = (0.0, 1.0)  # allowed range of "score" labels
    d.normalize_scores = False  # map score_range linearly to [0, 1] (STS-b: 0..5 -> 0..1)
    d.on_bad_row = "error"  # "error": stop naming file:line; "skip": count, log and skip the row
    # Instead of `path`: a siamjax tfds builder (array_record, built once, no TensorFlow needed).
    d.tfds = ml_collections.ConfigDict()
    d.tfds.builder = ""  # "stsb", "sick" or "nli"; "" = read `path` instead
    d.tfds.configs = ""  # builder configs to concatenate, comma-separated (nli: "snli,multinli")
    d.tfds.split = "train"  # split name, e.g. "train", "validation"
    d.tfds.data_dir = "~/tensorflow_datasets"  # where prepared datasets live
    d.tfds.manual_dir = ""  # folder with the raw source files (offline build); "" = download
    return d
