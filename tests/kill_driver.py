"""Runs the tiny training config and kills itself with SIGKILL at a chosen moment (for the kill -9 test).

  python -m tests.kill_driver TMP WORKDIR MODE STEP

MODE: `step` (right after train step STEP, before its log and checkpoint), `save` (right after the
checkpoint of step STEP was started: the asynchronous save is in flight), `log` (half of a metrics
line written, as a kill mid-write leaves it).
"""

import os
import signal
import sys
from pathlib import Path

import jax

from fastnst import train
from tests.helpers import tiny_config

jax.config.update("jax_disable_most_optimizations", True)  # as in tests/conftest.py: same numerics


def main(tmp: str, workdir: str, mode: str, step: str) -> None:
    cfg = tiny_config(Path(tmp), steps=8)
    cfg.train.update(ckpt_every=1, log_every=1, keep=3)
    at = int(step)

    def hook(s, _flag):
        if mode == "step" and s == at or mode == "save" and s == at + 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "log" and s == at:
            with open(Path(workdir) / "metrics.jsonl", "a") as f:
                f.write(f'{{"step": {at}, "loss": 12.')
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    train.train_and_evaluate(cfg, workdir, progress=False, on_step=hook)


if __name__ == "__main__":
    main(*sys.argv[1:])
