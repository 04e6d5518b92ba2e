"""Published peak numbers of the accelerators `siamjax plan` estimates for, one chip each.

Sources (vendor pages, read 2026-12):
- TPU v5e: https://cloud.google.com/tpu/docs/v5e ("197 TFLOPs" bf16, "16 GiB" HBM2 at "819 GBps",
  ICI "1,600 Gbps").
- TPU v5p: https://cloud.google.com/tpu/docs/v5p ("459 TFLOPs" bf16, "95 GiB" HBM2e at "2,765 GBps",
  ICI "4,800 Gbps").
- TPU v6e (Trillium): https://cloud.google.com/tpu/docs/v6e ("918 TFLOPs" bf16, "32 GiB" HBM at
  "1,640 GBps", ICI "3,584 Gbps").
- H100 SXM: https://www.nvidia.com/en-us/data-center/h100/ datasheet (bf16 "1,979 teraFLOPS" with
  2:4 sparsity, i.e. 989 dense; "80GB" HBM3 at "3.35TB/s"; NVLink "900GB/s").
- H200 SXM: https://www.nvidia.com/en-us/data-center/h200/ (bf16 1,979 sparse = 989 dense;
  "141GB" HBM3e at "4.8TB/s"; NVLink "900GB/s").
- A100 SXM 80GB: https://www.nvidia.com/en-us/data-center/a100/ (bf16 "312 TFLOPS" dense;
  "80GB" HBM2e at "2,039 GB/s"; NVLink "600GB/s").

Interconnect figures are published as the total over a chip's links in both directions; a
device sends at half of it, which is what the plan divides its collective bytes by. GPU memory
is what `nvidia-smi` reports as usable (H100 81,559 MiB, H200 143,771 MiB, A100 81,920 MiB).

TPU slices are named as libtpu names their topologies (`v5e:8x8` is a v5e-64): v5e and v6e chips
form 2D tori, v5p 3D ones. `siamjax plan` compiles for such a topology with the TPU compiler
when libtpu is installed (`jax.experimental.topologies`).
"""
from __future__ import annotations

import dataclasses

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """One chip's peaks: dense bf16 FLOP/s, HBM bytes/s, interconnect bytes/s sent, HBM bytes."""

    name: str
    kind: str              # "tpu" or "gpu": which attention kernel it gets
    bf16_flops: float
    hbm_bandwidth: float
    link_bandwidth: float  # bytes/s one device sends (half the published bidirectional total)
    hbm_bytes: float

    def topology(self, chips: int) -> str:
        """libtpu's name of the `chips`-chip slice of this TPU ("v5e:8x8"); ValueError for a
        GPU or a chip count no slice has."""
        shapes = _TORUS_3D if self.name == "v5p" else _TORUS_2D
        if self.kind != "tpu" or chips not in shapes:
            raise ValueError(f"{self.name}: no {chips}-chip TPU slice to compile for"
                             + (f" (slices: {', '.join(map(str, shapes))} chips)" if self.kind == "tpu" else ""))
        return f"{self.name}:{shapes[chips]}"


# Slice shapes by chip count (4 chips = one host; Cloud TPU's v5e/v6e and v5p slice tables).
_TORUS_2D = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_TORUS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
             512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}


ACCELERATORS = {
    "v5e": Accelerator("v5e", "tpu", 197e12, 819e9, 1600e9 / 8 / 2, 16 * GIB),
    "v5p": Accelerator("v5p", "tpu", 459e12, 2765e9, 4800e9 / 8 / 2, 95 * GIB),
    "v6e": Accelerator("v6e", "tpu", 918e12, 1640e9, 3584e9 / 8 / 2, 32 * GIB),
    "h100": Accelerator("h100", "gpu", 989e12, 3.35e12, 900e9 / 2, 81559 * 2**20),
    "h200": Accelerator("h200", "gpu", 989e12, 4.8e12, 900e9 / 2, 143771 * 2**20),
    "a100": Accelerator("a100", "gpu", 312e12, 2.039e12, 600e9 / 2, 81920 * 2**20),
}


def get_accelerator(name: str) -> Accelerator:
    """The named accelerator's peaks; a clear error for an unknown name."""
    if name not in ACCELERATORS:
        raise ValueError(f"accelerator {name!r} is unknown; choose one of {', '.join(ACCELERATORS)}")
    return ACCELERATORS[name]
