"""JAX's persistent compilation cache, safe to share between processes.

Without a size limit JAX writes each cache entry with a plain `write_bytes` and reads entries with
no lock (jax/_src/lru_cache.py), so a process can read a truncated entry that another process is
still writing. With a limit, JAX takes a file lock (`filelock`) around every read and write. So
every place that shares a cache (the tests and the CLIs they start, `bin/recipe --parallel`'s
processes) sets one here. (A crash loading one cached program in the test suite, seen with the
lock on as well, is another matter and still open: docs/testing.md.)
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

MAX_BYTES = 16 * 2**30  # a limit so large it only turns the lock on (the suite's cache is ~50 MB)


def use(folder: str | os.PathLike, *, min_compile_s: float = 0.5, environ: bool = False) -> Path:
    """Caches compiled programs in `folder` for this process (and, with `environ`, for the
    processes it starts, through JAX's environment variables)."""
    folder = Path(folder)
    settings = {"jax_compilation_cache_dir": str(folder), "jax_compilation_cache_max_size": MAX_BYTES,
                "jax_persistent_cache_min_compile_time_secs": min_compile_s}
    for name, value in settings.items():
        jax.config.update(name, value)
        if environ:
            os.environ[name.upper()] = str(value)
    return folder
