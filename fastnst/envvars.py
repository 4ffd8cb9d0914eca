"""fastnst's numeric environment variables, read and checked here (a bad value is one line,
`cli.check_environment` checks them before any work). The paths it reads (FASTNST_CACHE_DIR,
FASTNST_VGG_WEIGHTS, FASTNST_SHARED_DATA) stay with the code that resolves them.
"""

from __future__ import annotations

import math
import os

from fastnst.errors import ConfigError

# 64 megapixels: far above most photos, small enough to refuse bombs; FASTNST_MAX_PIXELS raises it
# (e.g. 110000000 for a 100 MP panorama, which tiling runs within the memory budget).
DEFAULT_MAX_PIXELS = 64_000_000


def _positive(name: str, unit: str = "number") -> float | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive {unit}, got {text!r}")
    return value


def memory_budget() -> int | None:
    """`$FASTNST_MEMORY_BUDGET_MB` in bytes (None when unset): tiling's working-memory budget."""
    mb = _positive("FASTNST_MEMORY_BUDGET_MB", "number of megabytes")
    return None if mb is None else int(mb * 2**20)


def max_pixels() -> int:
    """`$FASTNST_MAX_PIXELS` (default 64 million): the largest image `images.load_image` decodes."""
    n = _positive("FASTNST_MAX_PIXELS")
    return DEFAULT_MAX_PIXELS if n is None else int(n)


def check() -> None:
    """Raises ConfigError for the first variable with a bad value."""
    memory_budget()
    max_pixels()
