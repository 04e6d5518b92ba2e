"""What every side-by-side benchmark shares: the STS-b reader, the environment record (device,
versions, load average), thread and device choice for PyTorch, and the `--shape` / `--dtype`
flags that pick the model folder and the compute precision of both libraries.

Why one module: each benchmark's JSON must say the same things about where it ran, and each
script must pick the model (a real folder, all-MiniLM-L6-v2, or a random folder of a named shape,
`bench/shapes.py`) and the precision the same way, so their numbers can be set side by side.
"""
from __future__ import annotations

import datetime
import os
import pathlib
import platform

import jax
import numpy as np

from siamjax.data import read_stsb_split

REPO = pathlib.Path(__file__).resolve().parents[1]
STSB_DIR = REPO.parent / "shared" / "data" / "stsbenchmark"
SHAPE_CACHE = REPO / "bench" / "out" / "shapes"  # git-ignored; a built shape is reused
DTYPES = ("float32", "bfloat16")


def read_stsb(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """(sentences1, sentences2, scores 0-5) of an STS-b split, read by siamjax's one data reader."""
    data = read_stsb_split(path, normalize_scores=False)
    return data.texts[0], data.texts[1], data.labels


def torch_device() -> str:
    """"cuda" when PyTorch sees a GPU (then both libraries run on the accelerator), else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def environment() -> dict:
    """Device, library versions, thread count, date and load: what a benchmark number depends on."""
    import flax
    import sentence_transformers
    import torch

    dev = jax.devices()[0]
    env = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "device": f"{dev.platform}: {getattr(dev, 'device_kind', '')}", "torch_device": torch_device(),
           "cpu": cpu_name(), "cores": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
           "torch_threads": torch.get_num_threads(),
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
           "jax": jax.__version__, "flax": flax.__version__,
           "torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
           "python": platform.python_version()}
    if env["torch_device"] == "cuda":
        env["torch_cuda_device"] = torch.cuda.get_device_name(0)
    return env


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


def add_model_args(parser) -> None:
    """The flags that pick the model and precision: --model, --shape, --tiny, --dtype."""
    import shapes

    parser.add_argument("--model", default=None,
                        help="sentence-transformers folder (default: --shape, else all-MiniLM-L6-v2)")
    parser.add_argument("--shape", default=None, choices=list(shapes.SHAPES),
                        help=f"random-init folder of this shape, built once under {SHAPE_CACHE}")
    parser.add_argument("--tiny", action="store_true", help="the --shape shrunk to hidden 32, 2 layers (smoke runs)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="compute dtype of both libraries (bfloat16: torch autocast / siamjax dtype)")


def model_folder(args, corpus: list[str]) -> str:
    """The folder `add_model_args`' flags name (a --shape is built from `corpus` if not cached)."""
    import shapes

    return shapes.shape_folder(args.model, args.shape, cache=SHAPE_CACHE, corpus=corpus, tiny=args.tiny)
