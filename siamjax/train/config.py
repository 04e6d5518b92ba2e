"""The training config: every field with its default and meaning (checked by
`siamjax.train.config_checks.validate`).

A config is an `ml_collections.ConfigDict`; config files (`configs/*.py`) start from
`default_config()` and change fields. `validate` runs every check that needs no compilation,
once, before anything is built, so a typo costs seconds, not a compile; each error names the
field. Only the entry points (`siamjax.train.experiment`, the CLI) read configs: library
functions take typed arguments.
"""
from __future__ import annotations

import ml_collections

from siamjax.encoder.lora import LoRAConfig

TFDS_BUILDERS = ("stsb", "sick", "nli")


class ConfigError(ValueError):
    """A config file, field or value that cannot be used; the message says which and why."""


def default_config() -> ml_collections.ConfigDict:
    """A fresh ConfigDict with every field at its default (the base every config file edits)."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # seeds parameter init (random models), dropout and data order
    c.model = _model_fields()
    c.data = _data_fields()
    c.loss = _loss_fields()
    c.optim = _optim_fields()
    c.train = _train_fields()
    c.mesh = _mesh_fields()
    c.eval = _eval_fields()
    c.checkpoint = _checkpoint_fields()
    c.export = _export_fields()
    return c


def _model_fields() -> ml_collections.ConfigDict:
    """The encoder to train: a pretrained folder, or a random BERT of a given shape."""
    g = ml_collections.ConfigDict()
    g.name_or_path = ""  # sentence-transformers/HF folder or hub name; "" = random init below
    g.max_seq_length = 128  # tokens per text after truncation (also the largest bucket)
    g.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (weights stay in param_dtype)
    # dtype the encoder weights are loaded, stored and trained in: "float32", or "bfloat16" to halve
    # parameter memory (LLM embedders); updates are then rounded to bf16 (see optim.float32_moments)
    g.param_dtype = "float32"
    g.remat = False  # recompute each layer's activations in the backward pass (saves memory)
    # attention kernel: "auto" (cuDNN's fused kernel on a GPU with dtype="bfloat16", Pallas splash
    # attention on a TPU (XLA for MPNet, whose score bias it cannot add), XLA elsewhere; `siamjax
    # plan` lists the choice), "xla" (every backend), "cudnn" (GPU only, bfloat16) or "splash"
    # (TPU only, any length: padded to its 128-token blocks; not MPNet)
    g.attention = "auto"
    # check at load that every pretrained weight is finite (one pass; False skips it for huge models)
    g.verify_weights = True
    g.lora = _lora_fields()
    # A sentence-transformers Router model (name_or_path is a Router folder: one shared trunk, a
    # Dense etc. per route): the task each text side is encoded as, (side role, task) pairs as in
    # sentence-transformers' `router_mapping`; a task picks a route as `encode(task=)` does. Sides
    # not listed take the Router's default route. Models without a Router ignore it.
    g.router_mapping = (("anchor", "query"), ("positive", "document"), ("negative", "document"))
    # Random initialisation (used only when name_or_path is ""): a BERT of this shape.
    g.init = ml_collections.ConfigDict()
    g.init.tokenizer = ""  # folder or hub name of the HF tokenizer giving the vocabulary
    g.init.hidden_size = 384
    g.init.num_hidden_layers = 6
    g.init.num_attention_heads = 12
    g.init.intermediate_size = 1536
    g.init.max_position_embeddings = 512
    g.init.hidden_dropout_prob = 0.1
    g.init.pooling = "mean"  # "mean", "cls", "max" or "+"-joined, e.g. "mean+max"
    g.init.normalize = False  # L2-normalise the output embeddings
    # pool prompt tokens with the text (True), or only the text's own tokens (sentence-transformers'
    # Pooling include_prompt=False; then the data's prompts are masked out of pooling in training too).
    # A pretrained model keeps its folder's 1_Pooling/config.json setting.
    g.init.include_prompt = True
    return g


def _lora_fields() -> ml_collections.ConfigDict:
    """LoRA (Hu et al. 2021): train low-rank adapters on chosen projections, the base frozen.

    Only the adapters (and, with train_heads, the Dense heads) get gradients and Adam moments;
    the export folds them into the weights (a plain model), `SentenceEncoder.save_adapter` writes
    them as a PEFT folder."""
    g = ml_collections.ConfigDict()
    g.rank = 0  # adapter rank r; 0 = off (full fine-tuning)
    g.alpha = 16.0  # adapters are scaled by alpha / rank (PEFT's lora_alpha)
    g.dropout = 0.0  # dropout on each adapter's input while training (PEFT's lora_dropout)
    # projections that get adapters, in every family's one vocabulary: q k v o (attention) and
    # gate up down (MLP; decoder LLMs' gate_proj/up_proj/down_proj, BERT-like families' up
    # (intermediate) and down (output)); Hu et al.'s and PEFT's default is q, v
    g.targets = ("q", "v")
    g.train_heads = False  # also train the Dense heads after pooling (2_Dense, ...); pooling has no weights
    # dtype the frozen base is stored in while training: "" = model.param_dtype, or "float32" /
    # "bfloat16" (half the memory of a float32 base; the adapters stay float32)
    g.base_dtype = ""
    return g


def lora_config(g: ml_collections.ConfigDict | None) -> LoRAConfig | None:
    """The `LoRAConfig` of a `model.lora` group, None when rank is 0 or the group is missing (a
    run folder's config.json from before LoRA); errors name the field."""
    if g is None:
        return None
    if not isinstance(g.rank, int) or isinstance(g.rank, bool) or g.rank < 0:
        raise ConfigError(f"model.lora.rank={g.rank!r}: must be an int >= 0 (0 = no LoRA)")
    if g.rank == 0:
        return None
    try:
        return LoRAConfig(rank=g.rank, alpha=float(g.alpha), dropout=float(g.dropout), targets=tuple(g.targets),
                          train_heads=bool(g.train_heads), base_dtype=g.base_dtype)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.lora.{err}") from None


def _data_fields() -> ml_collections.ConfigDict:
    """The training data and how batches are formed from it."""
    g = ml_collections.ConfigDict()
    g.train = train_dataset()  # the training data (pairs, triplets or scored pairs) when `datasets` is empty
    # Several training datasets: name -> train_dataset() group (replaces `train`; give one or the
    # other). Each batch comes from one dataset (in-batch negatives stay in-domain), in name order
    # for round_robin; metrics are also logged per dataset as loss/<name>.
    g.datasets = ml_collections.ConfigDict()
    g.mixing = "round_robin"  # which dataset each batch comes from: "round_robin" or "proportional"
    # Emit text ids with every batch, so MNRL/InfoNCE masks in-batch candidates whose (normalised)
    # text equals the row's query or positive (false negatives); other losses ignore them.
    g.text_ids = True
    g.nli_to_triplets = False  # turn an NLI file (premise, hypothesis, nli_label) into triplets
    g.nli_symmetric = False  # ... also use hypotheses as anchors (SBERT training_nli_v2)
    g.shuffle = True  # reshuffle each epoch (reproducible from seed)
    g.no_duplicates = True  # never put one text twice in a global batch (false negatives)
    g.group_by_length = False  # batches of similar length: far less padding on CPU
    g.buckets = (32, 64, 128)  # padded lengths a batch may take (<= model.max_seq_length)
    # Sequence packing: > 0 packs several texts into rows of this many tokens (>= max_seq_length)
    # instead of padding each to a bucket; same embeddings, far fewer pad tokens. 0 = off.
    g.pack_length = 0
    g.prefetch = 2  # batches prepared ahead by a background thread
    return g


def _loss_fields() -> ml_collections.ConfigDict:
    """The training objective (a name from `siamjax.losses`) and its options."""
    g = ml_collections.ConfigDict()
    g.name = "mnrl"  # a name from siamjax.losses (cosent, mnrl, gist, margin_mse, triplet, ...)
    # keyword arguments of that loss, e.g. scale=20.0, directions=("query_to_doc", "doc_to_query"),
    # hardness_mode="hard_negatives", ring=True (new keys may be added by overrides)
    g.kwargs = ml_collections.ConfigDict()
    # in-batch negatives from every device (mnrl/infonce, sigmoid, gist): all-gathered, or
    # passed around the devices with loss.kwargs.ring=True (mnrl/infonce)
    g.sharded = False
    # GIST's frozen guide model (sentence-transformers folder or hub name), needed by loss.name
    # "gist": it embeds every batch inside the train step, no gradients, sharded like the model;
    # it must use the model's tokenizer vocabulary (the same token ids feed both)
    g.guide = ""
    return g


def _optim_fields() -> ml_collections.ConfigDict:
    """AdamW with warmup and decay: sentence-transformers' recipe by default."""
    g = ml_collections.ConfigDict()
    g.lr = 2e-5  # peak learning rate
    g.schedule = "linear"  # decay after warmup: "linear", "cosine" or "constant"
    g.warmup_ratio = 0.1  # warmup as a fraction of train steps (ignored if warmup_steps >= 0)
    g.warmup_steps = -1  # warmup steps; -1 = use warmup_ratio
    g.end_lr = 0.0  # learning rate at the last step
    g.weight_decay = 0.01  # AdamW decay; never applied to biases and LayerNorm
    g.b1 = 0.9
    g.b2 = 0.999
    g.eps = 1e-6
    g.clip_norm = 1.0  # global gradient-norm clipping; 0 = off
    # with model.param_dtype="bfloat16": Adam moments and updates in float32 (each update rounded
    # once into the bf16 weights); False keeps them in bf16 too (half the optimizer memory)
    g.float32_moments = True
    return g


def _train_fields() -> ml_collections.ConfigDict:
    """Length of training, global batch, dropout, GradCache and logging."""
    g = ml_collections.ConfigDict()
    g.batch_size = 32  # global batch (pairs/triplets per step), split over all devices
    g.num_epochs = 1.0  # length of training in epochs of the (largest) training set ...
    g.num_steps = -1  # ... or in steps, if >= 1 (overrides num_epochs); -1 = use num_epochs
    g.dropout = True  # dropout on while training (as sentence-transformers does)
    g.grad_cache_chunk = 0  # GradCache on padded batches: encode in chunks of this many pairs; 0 = off
    # GradCache on packed batches (data.pack_length > 0): chunks of this many tokens per side on
    # each batch device, a multiple of data.pack_length (whole packed rows); 0 = off
    g.grad_cache_tokens = 0
    g.log_every_steps = 50  # metrics to metrics.jsonl / TensorBoard every N steps
    g.progress_bar = True  # tqdm bar (loss, pairs/s, ETA) on process 0
    return g


def _mesh_fields() -> ml_collections.ConfigDict:
    """The ('data', 'fsdp') device mesh."""
    g = ml_collections.ConfigDict()
    g.data = -1  # data-parallel axis size; -1 = all devices not used by fsdp
    g.fsdp = 1  # parameter-sharding axis size (FSDP); 1 = replicate parameters
    g.fsdp_min_size = 2**18  # arrays with fewer elements stay replicated
    g.num_devices = 0  # use only the first N devices (0 = all); data x fsdp must equal it
    return g


def _eval_fields() -> ml_collections.ConfigDict:
    """Evaluation on an STS dev file during and at the end of training."""
    g = ml_collections.ConfigDict()
    g.every_steps = 0  # evaluate every N steps (and at the end); 0 = only at the end
    g.batch_size = 64  # sentences per encode batch
    g.sts = file_dataset()  # an STS dev file (sentence1, sentence2, score); path "" = none
    return g


def _checkpoint_fields() -> ml_collections.ConfigDict:
    """Orbax checkpoints: how often, how many, which is best."""
    g = ml_collections.ConfigDict()
    g.every_steps = 500  # save every N steps (also at the end, on evaluation, on preemption)
    g.keep = 2  # keep the latest N checkpoints ...
    g.keep_best = 1  # ... and the best N by best_metric
    # evaluation metric ranking checkpoints: sts/{pearson,spearman}_cosine, or _<the model's
    # similarity_fn_name> (e.g. sts/spearman_dot); another name is a config error when eval.sts is set
    g.best_metric = "sts/spearman_cosine"
    g.best_mode = "max"  # "max" or "min"
    g.async_save = True  # write checkpoints in the background
    return g


def _export_fields() -> ml_collections.ConfigDict:
    """The sentence-transformers folder written when training ends."""
    g = ml_collections.ConfigDict()
    # after `siamjax train` finishes, write the best (else last) checkpoint as a
    # sentence-transformers folder here; relative to the workdir; "" = don't (see `siamjax export`)
    g.dir = ""
    return g


def train_dataset() -> ml_collections.ConfigDict:
    """Fields of one training dataset: its source (`file_dataset` fields, or prepared shards)
    plus its sampling weight, its own loss and its prompts."""
    d = file_dataset()
    # proportional mixing: this dataset's share of batches, relative to the others' weights;
    # 0 = in proportion to its size (give every dataset a weight, or none)
    d.weight = 0.0
    d.loss = ml_collections.ConfigDict()  # this dataset's loss; name "" = the run's `loss` group
    d.loss.name = ""
    d.loss.kwargs = ml_collections.ConfigDict()  # options of that loss (as loss.kwargs)
    # side role -> text prepended to that side's texts before tokenising, e.g. (("anchor", "query: "),);
    # pooled with the text unless the model pools with include_prompt=False (model.init.include_prompt,
    # or the pretrained folder's Pooling config). The exported folder lists them as its prompts: an
    # anchor's as "query", a positive's/negative's as "document", another side's under its role.
    d.prompts = ()
    return d


def file_dataset() -> ml_collections.ConfigDict:
    """Fields of one dataset: a local jsonl/csv/tsv/parquet file read through a column mapping,
    a folder of prepared shards, or a siamjax tfds builder."""
    d = ml_collections.ConfigDict()
    d.path = ""  # the file (.jsonl, .csv, .tsv, .parquet; text files optionally .gz)
    # Instead of `path`: a folder written by `siamjax data prepare` (array_record shards read
    # lazily, each process reading only its own rows; columns and labels come from its index)
    d.shards = ""
    d.format = ""  # "jsonl", "csv", "tsv" or "parquet"; "" = from the suffix
    # role -> column (header name or 0-based index): text sides in order, then optionally one
    # label role "score", "label", "nli_label" or "teacher" (distillation targets: a number or
    # a JSON list per row), as (role, column) pairs in order, e.g.
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


def train_groups(data_cfg: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
    """The training dataset groups by field name: `data.datasets`' entries (in name order), or
    {"train": data.train} when `data.datasets` is empty."""
    if len(data_cfg.datasets):
        return {name: data_cfg.datasets[name] for name in sorted(data_cfg.datasets)}
    return {"train": data_cfg.train}
