"""The two training loops `bench/train_throughput.py` and `bench/device_check.py` set side by side:
sentence-transformers (PyTorch) and siamjax, with the same loss, optimiser and data.

Both: MultipleNegativesRankingLoss / InfoNCE (scale 20, cosine), AdamW (lr 2e-5 constant, eps
1e-6, weight decay 0.01 except biases and norms, global-norm clipping at 1.0), dropout on.
Precision: "float32", or "bfloat16" compute over float32 weights in both: PyTorch autocast (what
sentence-transformers' Trainer does with `bf16=True`) and siamjax's `dtype="bfloat16"`.
Device: PyTorch uses CUDA when it sees it, siamjax JAX's default device.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from environment import torch_device
from siamjax import SentenceEncoder, losses, parallel
from siamjax.data.tokenization import pack_sides, tokenize_sides
from siamjax.train import optim, state as train_state, step as train_step

LR, EPS, WEIGHT_DECAY, CLIP, SCALE = 2e-5, 1e-6, 0.01, 1.0, 20.0


def mnrl_loss_fn(scale: float = SCALE):
    """The registry's MNRL LossFn (InfoNCE over in-batch negatives, cosine, `scale`)."""
    return losses.get_loss("mnrl", scale=scale, similarity="cosine")


class TorchTrainer:
    """sentence-transformers model + MultipleNegativesRankingLoss + torch AdamW, stepped by hand.

    A hand-written loop (the HF Trainer needs `accelerate`, and adds data-loading overhead we
    do not want to time): forward, backward, clip, step, exactly what the Trainer does per step.
    """

    def __init__(self, model_dir: str, max_seq_length: int, seed: int = 0, dtype: str = "float32"):
        import torch
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        torch.manual_seed(seed)
        self.torch, self.device = torch, torch.device(torch_device())
        self.autocast_dtype = torch.bfloat16 if dtype == "bfloat16" else None
        self.model = SentenceTransformer(str(model_dir), device=str(self.device))
        self.model.max_seq_length = max_seq_length
        self.model.train()
        self.loss = MultipleNegativesRankingLoss(self.model, scale=SCALE)
        no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias", "norm.weight")
        named = list(self.model.named_parameters())
        groups = [{"params": [p for n, p in named if not any(k in n for k in no_decay)],
                   "weight_decay": WEIGHT_DECAY},
                  {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0}]
        self.optimizer = self.torch.optim.AdamW(groups, lr=LR, eps=EPS)
        self.compile_seconds = 0.0  # eager: nothing to compile

    def _autocast(self):
        return self.torch.autocast(self.device.type, dtype=self.autocast_dtype or self.torch.float32,
                                   enabled=self.autocast_dtype is not None)

    def prepare(self, anchors: list[str], positives: list[str]) -> list[dict]:
        """Tokenised features on the device, one dict per side, padded to that side's longest."""
        return [{k: v.to(self.device) if isinstance(v, self.torch.Tensor) else v
                 for k, v in self.model.preprocess(texts).items()} for texts in (anchors, positives)]

    def eval_loss(self, features: list[dict]) -> float:
        """The loss of one batch with dropout off and no update (the side-by-side parity check)."""
        self.model.eval()
        with self.torch.no_grad(), self._autocast():
            loss = float(self.loss(features, None))
        self.model.train()
        return loss

    def step(self, features: list[dict]) -> float:
        """One optimiser step; returns the loss as a tensor (no host sync on CUDA)."""
        with self._autocast():
            loss = self.loss(features, None)
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def sync(self) -> None:
        """Wait for queued CUDA work (CPU ops are synchronous)."""
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()


class JaxTrainer:
    """SentenceEncoder + siamjax.train.step (AdamW via siamjax.train.optim), one device, donated state."""

    def __init__(self, model_dir: str, max_seq_length: int, seed: int = 0,
                 buckets: tuple[int, ...] | None = None, encoder=None, pack_length: int = 0,
                 grad_cache_chunk: int = 0, grad_cache_tokens: int = 0, dtype: str = "float32",
                 attention: str = "xla"):
        self.encoder = encoder or SentenceEncoder.from_pretrained(model_dir, max_seq_length=max_seq_length,
                                                                  dtype=dtype, attention=attention)
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

    def eval_loss(self, anchors: list[str], positives: list[str]) -> float:
        """The loss of one batch's texts with dropout off and no update, through the public
        `encode` (the side-by-side parity check against `TorchTrainer.eval_loss`)."""
        emb_SxBxD = np.stack([self.encoder.encode(texts) for texts in (anchors, positives)])
        return float(mnrl_loss_fn()(emb_SxBxD, None, {}, None))

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
