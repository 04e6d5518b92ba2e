"""Compiled memory of the loss library: sharded vs unsharded InfoNCE, ring vs all-gather InfoNCE,
GradCache vs full backprop.

Why: the memory claims of `siamjax.losses.in_batch`, `siamjax.losses.ring` and
`siamjax.losses.gradcache` are asymptotic, and this makes them numbers. Nothing is executed:
every program is AOT-compiled with `jax.jit(...).lower(...).compile()` and its
`memory_analysis()` read, so large batches cost no memory on this machine. Sizes are per device
(XLA compiles one SPMD program per device).

1. InfoNCE value_and_grad on `[2, B, D]` embeddings: the plain loss (one device, logits
   [B, B]) vs `sharded_infonce` over n fake CPU devices (logits [B/n, B] per device), and the
   sharded loss with `block_size=--chunk` (logits [chunk, B] live at a time).
2. Ring InfoNCE vs all-gather InfoNCE at a fixed per-device batch b_local (`--ring-b-local`)
   as devices grow 1 -> 8 (global batch b_local x n, one hard negative): the all-gather form
   holds [b_local, B * 2] logits and the gathered candidates, growing linearly with n; the
   ring holds one [b_local, b_local * 2] block at a time and should stay flat.
3. GradCache vs full-batch autodiff for a tiny encoder (embedding table, per-token dense+GELU,
   masked mean, dense) on `[2, B, L]` tokens, chunk 64, InfoNCE in query blocks of 64:
   GradCache's temp memory should stay flat in B while backprop grows linearly.

"peak" below = temp + arguments + outputs (an upper bound on live device memory).

    python bench/loss_memory.py                            # ~2 min on 2 cores
    python bench/loss_memory.py --batches 1024 4096 16384 --dim 256 --json bench/out/loss_memory.json
"""
from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

from siamjax.losses.gradcache import grad_cache_value_and_grad  # noqa: E402
from siamjax.losses import get_loss  # noqa: E402

MIB = 2 ** 20


def memory(fn, *args) -> dict:
    """temp / argument / output bytes of the compiled `fn(*args)` (args are ShapeDtypeStructs)."""
    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    out = {"temp": stats.temp_size_in_bytes, "args": stats.argument_size_in_bytes,
           "out": stats.output_size_in_bytes}
    out["peak"] = out["temp"] + out["args"] + out["out"]
    return out


def sharded_rows(batches, devices, dim, block) -> list[dict]:
    """Per-device temp memory of InfoNCE value_and_grad: unsharded, sharded over n devices, and
    sharded with queries scored in blocks of `block` rows (logits [block, B] live at a time)."""
    rows = []
    plain = jax.value_and_grad(get_loss("mnrl"))
    for b in batches:
        emb = jax.ShapeDtypeStruct((2, b, dim), jnp.float32)
        unsharded = memory(plain, emb)
        for n in devices:
            mesh = jax.make_mesh((n, 1), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2,
                                 devices=jax.devices()[:n])
            sharded = memory(jax.value_and_grad(get_loss("mnrl", mesh=mesh)), emb)
            blocked = memory(jax.value_and_grad(get_loss("mnrl", mesh=mesh, block_size=block)), emb)
            rows.append({"devices": n, "global_batch": b, "b_local": b // n,
                         "unsharded_temp_mib": unsharded["temp"] / MIB,
                         "sharded_temp_mib": sharded["temp"] / MIB,
                         "logits_b_local_x_B_mib": 4 * (b // n) * b / MIB,
                         f"sharded_block{block}_temp_mib": blocked["temp"] / MIB})
    return rows


def ring_rows(b_local, devices, dim) -> list[dict]:
    """Per-device temp memory of MNRL value_and_grad (anchor, positive, 1 hard negative) at a
    fixed b_local: all-gathered candidates vs the ring."""
    rows = []
    for n in devices:
        mesh = jax.make_mesh((n, 1), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2, devices=jax.devices()[:n])
        emb = jax.ShapeDtypeStruct((3, b_local * n, dim), jnp.float32)
        gathered = memory(jax.value_and_grad(get_loss("mnrl", mesh=mesh)), emb)
        ring = memory(jax.value_and_grad(get_loss("mnrl", mesh=mesh, ring=True)), emb)
        rows.append({"devices": n, "b_local": b_local, "global_batch": b_local * n,
                     "all_gather_temp_mib": gathered["temp"] / MIB, "ring_temp_mib": ring["temp"] / MIB,
                     "logits_b_local_x_2B_mib": 4 * b_local * 2 * b_local * n / MIB,
                     "logit_block_b_local_x_2b_local_mib": 4 * b_local * 2 * b_local / MIB})
    return rows


def tiny_encoder(vocab=1000, hidden=64, dim=32):
    """A pure encoder big enough that its activations dominate: [B, L, 4H] per-token states."""
    k = jax.random.split(jax.random.key(0), 3)
    params = {"table": jax.random.normal(k[0], (vocab, hidden)),
              "w1": jax.random.normal(k[1], (hidden, 4 * hidden)) / 8,
              "w2": jax.random.normal(k[2], (4 * hidden, dim)) / 16, "b2": jnp.zeros(dim)}

    def encode(p, batch, *, rng=None):
        x_BxLxF = jax.nn.gelu(p["table"][batch["input_ids"]] @ p["w1"])
        m_BxLx1 = batch["attention_mask"][..., None].astype(jnp.float32)
        h_BxF = jnp.sum(x_BxLxF * m_BxLx1, 1) / jnp.maximum(jnp.sum(m_BxLx1, 1), 1.0)
        return jnp.tanh(h_BxF @ p["w2"] + p["b2"])

    return encode, params


def gradcache_rows(batches, chunk, length) -> list[dict]:
    """Memory of one GradCache value_and_grad vs plain autodiff through the whole batch."""
    encode, params = tiny_encoder()
    loss_fn = get_loss("mnrl", block_size=chunk)
    rows = []
    for b in batches:
        tokens = {k: jax.ShapeDtypeStruct((2, b, length), jnp.int32) for k in ("input_ids", "attention_mask")}
        gc = memory(lambda p, x: grad_cache_value_and_grad(encode, loss_fn, p, x, chunk), params, tokens)
        full = memory(lambda p, x: jax.value_and_grad(
            lambda p: loss_fn(jax.vmap(lambda s: encode(p, s))(x), None, {}))(p), params, tokens)
        rows.append({"batch": b, "chunk": chunk, "gradcache_temp_mib": gc["temp"] / MIB,
                     "gradcache_peak_mib": gc["peak"] / MIB, "backprop_temp_mib": full["temp"] / MIB,
                     "backprop_peak_mib": full["peak"] / MIB})
    return rows


def print_table(title, rows):
    """Rows of dicts as a markdown table (floats with 2 decimals)."""
    cols = list(rows[0])
    print(f"\n{title}\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---:" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


def main(argv=None) -> int:
    """Compile everything, print both tables (markdown), optionally write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1024, 4096, 8192],
                        help="global batches for the sharded-loss table")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--dim", type=int, default=128, help="embedding dim for the sharded-loss table")
    parser.add_argument("--ring-b-local", type=int, default=1024, help="per-device batch for the ring table")
    parser.add_argument("--gc-batches", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--chunk", type=int, default=64, help="GradCache chunk and InfoNCE block size")
    parser.add_argument("--length", type=int, default=32, help="tokens per text for the GradCache table")
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    if max(args.devices) > jax.device_count():
        parser.error(f"--devices up to {jax.device_count()} (fake CPU devices available)")

    sharded = sharded_rows(args.batches, args.devices, args.dim, args.chunk)
    print_table(f"InfoNCE value_and_grad, D={args.dim}: compiled temp memory per device (MiB)", sharded)
    ring = ring_rows(args.ring_b_local, args.devices, args.dim)
    print_table(f"Ring vs all-gather MNRL value_and_grad, b_local={args.ring_b_local}, 1 hard negative, "
                f"D={args.dim}: temp memory per device (MiB)", ring)
    gc = gradcache_rows(args.gc_batches, args.chunk, args.length)
    print_table(f"GradCache (chunk {args.chunk}) vs full backprop, tiny encoder, L={args.length} (MiB)", gc)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"sharded_infonce": sharded, "ring_infonce": ring, "gradcache": gc},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
