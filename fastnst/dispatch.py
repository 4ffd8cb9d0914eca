"""Steps grouped into calls: how many the next jitted call runs (`size`), the host batches it takes
(`batches`) and one step's metrics out of a call's stacked ones (`at`). The trainer's loop
(`train._loop`) acts between calls: logging, checkpoints, divergence checks, samples, the stop
agreement of a multi-process job and the time limit.
"""

from __future__ import annotations

import jax
import numpy as np

from fastnst import parallel


def at(stacked: dict, n: int, i: int) -> dict:
    """Step `i` of one call's metrics (stacked [n] when the call ran n > 1 steps)."""
    return stacked if n == 1 else jax.tree.map(lambda m: m[i], stacked)


def size(step: int, t) -> int:
    """How many steps the next call runs after `step`: up to `t.steps_per_dispatch`, ending at the
    next step that logs, checkpoints or writes samples, or at the last, so those act at exactly
    their steps whatever K is (with those intervals multiples of K, every call runs K steps and one
    program is compiled)."""
    events = [t.steps] + [step + every - step % every for every in (t.log_every, t.ckpt_every, t.sample_every)
                          if every > 0]
    return max(1, min(t.steps_per_dispatch, min(events) - step))


def batches(it, n: int, mesh) -> dict:
    """The next `n` batches as the step takes them: one global batch (n = 1), n stacked on a
    leading axis, or nothing when the step makes them on the device."""
    if it is None:
        return {}
    local = [next(it) for _ in range(n)]
    if n == 1:
        return parallel.global_batch(local[0], mesh)
    return parallel.global_batch({k: np.stack([b[k] for b in local]) for k in local[0]}, mesh, axis=1)
