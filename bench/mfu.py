"""Model FLOPs utilisation (MFU) of the siamjax train step, BERT-base and MiniLM sized, seq 128.

Why: throughput ratios against PyTorch say nothing about how close to the hardware we are; MFU
does. This times the real `siamjax.train.step` (pairs `[2, B, 128]` with no padding, MNRL,
AdamW, donated state) for random-init encoders and divides analytically counted model FLOPs by
the measured step time and by the device's peak.

FLOPs (per training step; matmuls only, 1 multiply-add = 2 FLOPs), for T = 2 sides x R rows x L
tokens, n layers, hidden d, intermediate f, H query heads and K key/value heads of width h:
  forward per token per layer: 2 * (2 d H h + 2 d K h + m d f)   Q, O and K, V projections, and the
                                                                  MLP's m matmuls (2; 3 when gated)
                             + 4 L H h                          attention scores QK^T and probs x V
  train = 3 x forward (backward = 2 x forward) + the MNRL logits (3 x 2 B^2 D)
(BERT: H h = d, K = H, m = 2, i.e. 2 (4 d^2 + 2 d f) + 4 L d.) Embedding lookups, norms,
activations, softmax, pooling and the AdamW update are not counted (< 2% of the total at these
sizes). Attention is counted over the whole row, as XLA computes it: a packed row's L x L scores
include the masked pairs of different texts, and sliding windows are masked, not skipped. This
is *model* FLOPs: with `--remat` the device also recomputes the forward pass (hardware FLOPs = 4 x
forward), which MFU does not credit. XLA's own count for the compiled step (`cost_analysis`) is
printed beside ours as a cross-check.

`--packed` feeds rows of L tokens holding 4 texts of L/4 tokens each (segment ids, positions
restarting per text, per-text pooling: `siamjax.encoder.rows`), the layout `data.pack_length`
trains on; without it each row is one text of L tokens.

Peak: on GPU/TPU the vendor's dense peak for the compute dtype (table below); on CPU there is no
reliable spec sheet for a shared VM, so the "attainable peak" is measured: the best FLOP/s of a
large matmul in the same dtype under jit. Timing: AOT-compile (reported separately), run
`--warmup` steps, then `--steps` steps dispatched back to back and `jax.block_until_ready` on
the final state; best of `--repeats` such windows.

    python bench/mfu.py                                    # CPU: small batches, ~5 min on 2 cores
    python bench/mfu.py --model bert-base --batch 32 64 128 256 --steps 20   # on a GPU
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without `pip install -e .`

from siamjax import losses, parallel  # noqa: E402
from siamjax.encoder import rows  # noqa: E402
from siamjax.encoder.bert import BertConfig  # noqa: E402
from siamjax.encoder.model import EncoderSpec, init_params, make_encode_fn  # noqa: E402
from siamjax.train import optim, state as train_state, step as train_step  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
import shapes  # noqa: E402

MODELS = {
    "bert-base": BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "minilm": BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "gemma3-300m": shapes.family_config("gemma3-300m"),
}
GATED_MLP = ("modernbert", "gemma3_text", "llama", "mistral", "qwen3")  # three MLP matmuls, not two
# Dense (no sparsity) peak FLOP/s by device_kind substring, for bf16 / fp32 compute.
PEAK_FLOPS = {
    "H100 PCIe": {"bfloat16": 756e12, "float32": 51e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12},
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12 / 4},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12 / 4},
}
CPU_DEFAULT_BATCHES = {"bert-base": [1, 2, 4], "minilm": [4, 8, 16], "gemma3-300m": [1, 2]}
ACCEL_DEFAULT_BATCHES = [32, 64, 128, 256]


def forward_flops_per_token(cfg, seq_len: int) -> int:
    """Matmul FLOPs of one token through the encoder's forward pass (see the module docstring);
    `cfg` is any family's config (BERT-style, ModernBERT, decoder families with GQA)."""
    d, f, heads = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or d // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    mlp = 3 if cfg.model_type in GATED_MLP else 2
    per_layer = 2 * (2 * d * heads * head_dim + 2 * d * kv_heads * head_dim + mlp * d * f)
    return cfg.num_hidden_layers * (per_layer + 4 * seq_len * heads * head_dim)


def train_step_flops(cfg, batch: int, seq_len: int, sides: int = 2, texts_per_row: int = 1) -> int:
    """Model FLOPs of one MNRL train step on `batch` pairs in rows of `seq_len` tokens holding
    `texts_per_row` texts each (3 x forward)."""
    tokens = sides * (batch // texts_per_row) * seq_len
    loss = 2 * batch * batch * (sides - 1) * cfg.hidden_size
    return 3 * (tokens * forward_flops_per_token(cfg, seq_len) + loss)


def device_peak(dtype: str, matmul_size: int = 2048) -> tuple[float, str]:
    """(peak FLOP/s, how it was obtained) for the default device and compute dtype."""
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", "")
    if dev.platform != "cpu":
        for name, peaks in PEAK_FLOPS.items():
            if name in kind:
                return peaks[dtype], f"vendor dense {dtype} peak of {name}"
        raise ValueError(f"no peak FLOP/s known for device {kind!r}; add it to PEAK_FLOPS in bench/mfu.py")
    return measured_matmul_peak(dtype, matmul_size), f"measured: best {dtype} {matmul_size}^3 jit matmul"


def measured_matmul_peak(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n x n matmul chain (the attainable peak of this CPU, right now)."""
    key = jax.random.key(0)
    a = jax.random.normal(key, (n, n), jnp.dtype(dtype))
    mm = jax.jit(lambda x: (x @ x) * jnp.asarray(1e-3, x.dtype))
    jax.block_until_ready(mm(a))
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(mm(a))
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
    return best


PACKED_TEXTS_PER_ROW = 4


def synthetic_batch(cfg, batch: int, seq_len: int, packed: bool, seed: int = 0) -> dict:
    """`[2, R, L]` random token rows for `batch` pairs: one text of L tokens per row, or
    (`packed`) 4 texts of L/4 tokens per row with segment ids and `text_index`, packed by
    `siamjax.encoder.rows` exactly as training packs them (no padding rows when batch/4 is on
    the row ladder)."""
    rng = np.random.default_rng(seed)
    if not packed:
        ids = rng.integers(1000, cfg.vocab_size, (2, batch, seq_len), dtype=np.int32)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    if seq_len % PACKED_TEXTS_PER_ROW:
        raise ValueError(f"--packed needs a sequence length divisible by {PACKED_TEXTS_PER_ROW}, got {seq_len}")
    text_len = seq_len // PACKED_TEXTS_PER_ROW
    sides = [rows.pack(rng.integers(1000, cfg.vocab_size, (batch, text_len)).tolist(), row_length=seq_len)
             for _ in range(2)]
    return {key: np.stack([side[key] for side in sides]).astype(np.int32) for key in sides[0]}


def build_step(cfg, batch: int, seq_len: int, dtype: str, remat: bool, seed: int = 0, *,
               packed: bool = False, attention: str = "xla"):
    """(compiled step, state, batch, compile seconds, XLA's FLOP count) for a random-init encoder."""
    graphdef, params = init_params(EncoderSpec(transformer=cfg), seed=seed, dtype=jnp.dtype(dtype), remat=remat,
                                   attention=attention)
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    optimizer = optim.make_optimizer(1e-5)
    state, shardings = train_state.create_train_state({"encoder": params, "loss": {}}, optimizer,
                                                      jax.random.key_data(jax.random.key(seed)), mesh, 2**20)
    step = train_step.make_train_step(make_encode_fn(graphdef), losses.get_loss("mnrl"), optimizer)
    tokens = jax.device_put(synthetic_batch(cfg, batch, seq_len, packed, seed))
    start = time.perf_counter()
    compiled = train_step.compile_train_step(step, shardings, tokens, mesh).lower(state, tokens).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    return compiled, state, tokens, compile_s, xla_flops


def peak_device_bytes() -> int | None:
    """The device allocator's peak bytes in use so far (GPU/TPU; None where not reported, e.g. CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def measure(model: str, batch: int, *, seq_len: int = 128, dtype: str = "bfloat16", remat: bool = False,
            warmup: int = 1, steps: int = 3, repeats: int = 2, peak: float | None = None,
            cfg=None, packed: bool = False, attention: str = "xla") -> dict:
    """Time the train step of `model` at `batch`; FLOPs, TFLOP/s and MFU against `peak`."""
    cfg = cfg or MODELS[model]
    compiled, state, tokens, compile_s, xla_flops = build_step(cfg, batch, seq_len, dtype, remat, packed=packed,
                                                               attention=attention)
    for _ in range(warmup):
        state, _ = compiled(state, tokens)
    jax.block_until_ready(state)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, tokens)
        jax.block_until_ready((state, metrics))
        best = min(best, (time.perf_counter() - start) / steps)
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        raise FloatingPointError(f"{model} batch {batch}: train loss is {loss}")
    flops = train_step_flops(cfg, batch, seq_len, texts_per_row=PACKED_TEXTS_PER_ROW if packed else 1)
    achieved = flops / best
    return {"model": model, "batch": batch, "seq_len": seq_len, "dtype": dtype, "remat": remat,
            "packed": packed, "attention": attention, "rows": int(tokens["input_ids"].shape[1]),
            "step_s": best, "pairs_per_s": batch / best, "model_flops": flops, "xla_flops": xla_flops,
            "tflops": achieved / 1e12, "mfu": achieved / peak if peak else float("nan"),
            "compile_s": compile_s, "loss": loss, "peak_device_bytes": peak_device_bytes()}


def main(argv=None) -> int:
    """CLI: MFU table for each --model x --batch, optionally written as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", default=["bert-base", "minilm"], choices=list(MODELS))
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="pairs per step (default: small on CPU, 32..256 on accelerators)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--packed", action="store_true", help="4 texts of L/4 tokens per row (data.pack_length)")
    parser.add_argument("--attention", default="xla", choices=["xla", "cudnn", "splash"])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per window (default 3 CPU, 20 GPU)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="hidden 32, 2 layers of each shape (smoke runs)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    on_cpu = jax.devices()[0].platform == "cpu"
    steps = args.steps or (3 if on_cpu else 20)
    peak, peak_how = device_peak(args.dtype)
    dev = jax.devices()[0]
    env = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "device": f"{dev.platform}: {getattr(dev, 'device_kind', '')}", "cores": os.cpu_count(),
           "jax": jax.__version__, "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0],
           "peak_tflops": peak / 1e12, "peak_source": peak_how}
    print(f"# {env}")
    rows = []
    for model in args.model:
        batches = args.batch or (CPU_DEFAULT_BATCHES[model] if on_cpu else ACCEL_DEFAULT_BATCHES)
        for batch in batches:
            row = measure(model, batch, seq_len=args.seq_len, dtype=args.dtype, remat=args.remat,
                          warmup=args.warmup, steps=steps, repeats=args.repeats, peak=peak, packed=args.packed,
                          attention=args.attention, cfg=shapes.family_config(model, tiny=True) if args.tiny else None)
            rows.append(row)
            print(f"  {model} batch {batch}: {row['step_s'] * 1e3:.0f} ms/step, {row['tflops']:.3f} TFLOP/s, "
                  f"MFU {100 * row['mfu']:.1f}%", flush=True)
    if on_cpu:  # a shared CPU's attainable peak drifts with the load: measure again, keep the best
        again, _ = device_peak(args.dtype)
        env["peak_tflops_start_end"] = [peak / 1e12, again / 1e12]
        peak = max(peak, again)
        env["peak_tflops"] = peak / 1e12
        for row in rows:
            row["mfu"] = row["tflops"] * 1e12 / peak
    env["load_avg_1m_end"] = os.getloadavg()[0]
    print(f"\n| model | batch | seq | dtype | ms/step | pairs/s | model TFLOP/step | XLA TFLOP/step "
          f"| TFLOP/s | MFU (peak {peak / 1e12:.2f} TFLOP/s) | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['seq_len']} | {r['dtype']}{' remat' if r['remat'] else ''} | "
              f"{r['step_s'] * 1e3:.0f} | {r['pairs_per_s']:.1f} | {r['model_flops'] / 1e12:.3f} | "
              f"{r['xla_flops'] / 1e12:.3f} | {r['tflops']:.3f} | {100 * r['mfu']:.1f}% | {r['compile_s']:.1f} |")
    if args.json:
        command = "python bench/mfu.py " + " ".join(sys.argv[1:] if argv is None else argv)
        out = {"command": command, "environment": env, "results": rows}
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
