"""Does splash attention build for a real TPU, and what does it save? Answered without a TPU.

Why: on CPU the splash kernel only runs in Pallas interpret mode (`tests/test_splash.py`), which
checks its maths but not that Mosaic lowers it for the chip's shapes (head_dim 32/128/256, GQA,
windows) nor that it runs per device under `jax.shard_map` instead of being gathered. libtpu can
AOT-compile for a TPU topology it does not have (`jax.experimental.topologies`), so this
compiles one train-like encoder step (both sides of a pair through the vmapped encoder, a pair
loss, gradients of every weight; bf16 compute; rows split over the chips' 'data' axis) with
attention "xla" and "splash", and prints each compiled program's XLA temporary bytes per chip
(`memory_analysis().temp_size_in_bytes`: activations kept for the backward pass, XLA attention's
[L, L] scores and probabilities among them), the number of Mosaic kernels (3 per layer: forward,
dq, dk/dv) and of all-gathers (0: nothing gathered onto every chip).

Needs libtpu, which must not be installed in the project's environment (every JAX start would
then probe for a TPU): run it with an interpreter that has it, e.g.

    PYTHONPATH=. /work/tpuenv/bin/python bench/splash_tpu_compile.py --model minilm --topology v5e:2x2

Compiling for TPU on a CPU host is slow (2-10 minutes per program on 2 cores).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from siamjax.encoder.bert import BertConfig
from siamjax.encoder.gemma3 import Gemma3Config
from siamjax.encoder.model import EncoderSpec, abstract_params, encode_sides, make_encode_fn
from siamjax.encoder.pooling import PoolingConfig
from siamjax.parallel import BATCH_AXES

MODELS = {  # 2-layer stand-ins with the released models' attention shapes
    "minilm": BertConfig(vocab_size=1024, hidden_size=384, num_hidden_layers=2, num_attention_heads=12,
                         intermediate_size=1536),  # 12 heads of 32
    "gemma3": Gemma3Config(vocab_size=1024, hidden_size=768, intermediate_size=1152, num_hidden_layers=2,
                           num_attention_heads=3, num_key_value_heads=1, head_dim=256, max_position_embeddings=1024,
                           sliding_window=128, use_bidirectional_attention=True,
                           layer_types=("sliding_attention", "full_attention")),  # EmbeddingGemma's heads
}


def compile_step(cfg, attention: str, mesh: Mesh, rows: int, length: int):
    """The compiled step for `rows` pairs of `length` tokens (segment ids in `attention_mask`)."""
    spec = EncoderSpec(transformer=cfg, pooling=PoolingConfig(("mean",)), dense=(), normalize=True)
    graphdef, params = abstract_params(spec, dtype=jnp.bfloat16, attention=attention)
    encode_fn = make_encode_fn(graphdef)

    def loss(params, sides):
        e_SxBxD = encode_sides(encode_fn, params, sides)
        return jnp.sum(e_SxBxD[0] * e_SxBxD[1])

    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, BATCH_AXES))
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), params)
    sides = {k: jax.ShapeDtypeStruct((2, rows, length), jnp.int32, sharding=split)
             for k in ("input_ids", "attention_mask", "token_type_ids")}
    with jax.set_mesh(mesh):
        lowered = jax.jit(jax.value_and_grad(loss)).lower(params, sides)
    return lowered.compile()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=list(MODELS), default="minilm")
    parser.add_argument("--topology", default="v5e:2x2", help="a TPU topology name, e.g. v5e:2x2, v5p:2x2x1")
    parser.add_argument("--rows-per-chip", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()
    devices = topologies.get_topology_desc(platform="tpu", topology_name=args.topology).devices
    mesh = Mesh(np.array(devices).reshape(len(devices), 1), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    temp = {}
    for attention in ("xla", "splash"):
        start = time.perf_counter()
        compiled = compile_step(MODELS[args.model], attention, mesh, args.rows_per_chip * len(devices), args.seq_len)
        hlo = compiled.as_text()
        temp[attention] = compiled.memory_analysis().temp_size_in_bytes
        print(f"{args.model} {attention}: compiled for {args.topology} in {time.perf_counter() - start:.0f} s; "
              f"temp {temp[attention] / 2**20:.1f} MiB per chip ({args.rows_per_chip} pairs x {args.seq_len} tokens); "
              f"Mosaic kernels {hlo.count('tpu_custom_call')}; all-gathers {hlo.count('all-gather')}", flush=True)
    print(f"splash / xla temporary bytes: {temp['splash'] / temp['xla']:.2f}")


if __name__ == "__main__":
    main()
