"""Where fastnst finds data it does not ship: the shared data folder beside a clone."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data() -> Path:
    """`$FASTNST_SHARED_DATA`, else the shared data folder of a clone (`<clone>/../shared/data`,
    found from the package's own location, so from any working directory)."""
    env = os.environ.get("FASTNST_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
