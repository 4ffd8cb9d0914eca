"""Checkpoints kept good, and when a workdir may be resumed: Orbax saving and restoring, the
divergence checks that stop a bad state from being kept, and the resume policy of `config.json`."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from fastnst import modelfile, runlog, schema
from fastnst.errors import FastnstError
from fastnst.step import TrainState

_TRASH = "_pruned"  # old checkpoints are renamed (atomically) into this subfolder, then deleted


def _item(state: TrainState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats,
            "opt_state": state.opt_state, "step": state.step}


def manager(workdir: Path, keep: int) -> ocp.CheckpointManager:
    """Async Orbax manager keeping the newest `keep` steps.

    Pruned steps are first renamed into `checkpoints/_pruned` and deleted from there, so a kill
    while pruning never leaves a half-deleted step folder among the real ones.
    """
    ckpt = (workdir / "checkpoints").absolute()
    empty_trash(workdir)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, todelete_subdir=_TRASH,
                                           enable_async_checkpointing=True)
    return ocp.CheckpointManager(ckpt, options=options)


def empty_trash(workdir: Path) -> None:
    shutil.rmtree(workdir / "checkpoints" / _TRASH, ignore_errors=True)


def save(mngr: ocp.CheckpointManager, step: int, state: TrainState, *, force: bool = False) -> None:
    mngr.save(step, args=ocp.args.StandardSave(_item(state)), force=force)


def restore_latest(mngr: ocp.CheckpointManager, state: TrainState) -> TrainState:
    """The newest checkpoint restored into `state`'s structure, or `state` if there is none."""
    step = mngr.latest_step()
    if step is None:
        return state
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _item(state))
    item = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    return state.replace(**item)


def last_complete_step(workdir: Path) -> int | None:
    """The newest step folder on disk: Orbax renames a checkpoint into place only once every
    process has written its part."""
    ckpt = workdir / "checkpoints"
    steps = [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()] if ckpt.is_dir() else []
    return max(steps) if steps else None


# --------------------------------------------------------------------------- divergence


@jax.jit
def all_finite(tree) -> jax.Array:
    """True when every array in `tree` is finite (parameters, optimizer state, metrics)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


_DIVERGED = "lower train.lr or the loss weights (a resume with the same settings diverges again)"


def check_finite(metrics, state: TrainState, step: int, mngr: ocp.CheckpointManager) -> dict:
    """Host copy of the metrics; raises if the loss, the parameters or Adam's moments are not
    finite (an overflowing second moment makes every update zero without a NaN loss)."""
    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
    what = None
    if not all(np.isfinite(v) for v in host.values()):
        what = f"loss is not finite ({host})"
    elif not bool(all_finite(state.params)):
        what = "parameters are not finite"
    elif not bool(all_finite(state.opt_state)):
        what = "Adam's moments are not finite (gradients overflow float32)"
    if what:
        last = mngr.latest_step()
        kept = f"the last good checkpoint (step {last}) is kept" if last else "no checkpoint was saved"
        raise FastnstError(f"training diverged at step {step}: {what}; {kept}. To resume, {_DIVERGED}.")
    return host


def check_checkpoint_loss(metrics, step: int, mngr: ocp.CheckpointManager) -> None:
    """The step after a checkpoint evaluates the loss at the checkpointed parameters: if that is not
    finite, the checkpoint is not good and is removed before failing."""
    if bool(all_finite(metrics)):
        return
    bad = mngr.latest_step()
    mngr.wait_until_finished()
    mngr.delete(bad)
    last = mngr.latest_step()
    kept = f"the last good checkpoint (step {last}) is kept" if last else "no good checkpoint is left"
    raise FastnstError(f"training diverged at step {step}: the loss at the parameters of step {bad} is "
                       f"not finite, so that checkpoint was removed; {kept}. To resume, {_DIVERGED}.")


# --------------------------------------------------------------------------- resume policy


def prepare_workdir(workdir: Path, record: dict, *, write: bool = True) -> None:
    """Creates `workdir` or checks that resuming it is safe, then records the config.

    A workdir that already holds checkpoints or a model remembers the config it was created with
    (`config.json`). A config that differs in what is trained (architecture, data, loss, VGG
    weights, batch, crop size, seed) is refused with one line naming the keys; harmless
    differences (see `schema.HARMLESS_ON_RESUME`) are allowed and appended to
    `config_changes.jsonl`. With `write=False` (processes other than 0) it only checks.
    """
    if workdir.exists() and not workdir.is_dir():
        raise FastnstError(f"{workdir}: exists and is not a folder")
    recorded_path = workdir / "config.json"
    started = last_complete_step(workdir) is not None or (workdir / f"model{modelfile.SUFFIX}").is_file()
    if started and recorded_path.is_file():
        try:
            recorded = json.loads(recorded_path.read_text())
        except json.JSONDecodeError:
            raise FastnstError(f"{recorded_path} is damaged; use a new --workdir") from None
        refused, harmless = schema.resume_differences(recorded, record)
        if refused:
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(refused.items())[:4])
            more = f" (and {len(refused) - 4} more)" if len(refused) > 4 else ""
            raise FastnstError(f"{workdir} holds a run with a different config ({shown}{more}); "
                               "rerun with its config.json values, or give a new --workdir to start fresh")
        if harmless and write:
            line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "changes": {k: {"was": a, "now": b} for k, (a, b) in harmless.items()}}
            with open(workdir / "config_changes.jsonl", "a") as f:
                f.write(json.dumps(line, default=str) + "\n")
    if write:
        workdir.mkdir(parents=True, exist_ok=True)
        runlog.write_json(recorded_path, record)
