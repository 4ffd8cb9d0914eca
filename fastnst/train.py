"""Training: the loop, Orbax checkpoints, divergence checks, export.

`train_and_evaluate(config, workdir)` runs a whole job (style transfer or super-resolution,
chosen by `config.model.task`), resuming from the newest checkpoint in `workdir` if there is one.
The step itself (pure, and its one jitted, sharded form) is `fastnst.step`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from fastnst import data, images, losses, modelfile, nets, parallel, schema, stylize, vgg, weights_io
from fastnst.errors import ConfigError, FastnstError, JobError
from fastnst.step import TrainState, create_train_state, jit_step, variables_of


def style_targets(vgg_params: Mapping, style_image: np.ndarray, layers, size: int) -> dict:
    """Gram matrices [1, C, C] of the style image (longer side resized to `size`), once per run."""
    if not layers:
        return {}
    image = np.clip(images.resize(style_image, _scaled(style_image.shape, size), method="lanczos"), 0, 255)
    feats = vgg.features(vgg_params, jnp.asarray(image[None]), layers)
    return {k: losses.gram(f) for k, f in feats.items()}


def _scaled(shape, size):
    h, w = shape[:2]
    s = size / max(h, w)
    return max(32, round(h * s)), max(32, round(w * s))


# --------------------------------------------------------------------------- checkpoints


def _ckpt_item(state: TrainState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats,
            "opt_state": state.opt_state, "step": state.step}


_TRASH = "_pruned"  # old checkpoints are renamed (atomically) into this subfolder, then deleted


def checkpoint_manager(workdir: Path, keep: int) -> ocp.CheckpointManager:
    """Async Orbax manager keeping the newest `keep` steps.

    Pruned steps are first renamed into `checkpoints/_pruned` and deleted from there, so a kill
    while pruning never leaves a half-deleted step folder among the real ones.
    """
    ckpt = (workdir / "checkpoints").absolute()
    _empty_trash(ckpt)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, todelete_subdir=_TRASH,
                                           enable_async_checkpointing=True)
    return ocp.CheckpointManager(ckpt, options=options)


def _empty_trash(ckpt: Path) -> None:
    shutil.rmtree(ckpt / _TRASH, ignore_errors=True)


def restore_latest(mngr: ocp.CheckpointManager, state: TrainState) -> TrainState:
    """The newest checkpoint restored into `state`'s structure, or `state` if there is none."""
    step = mngr.latest_step()
    if step is None:
        return state
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _ckpt_item(state))
    item = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    return state.replace(**item)


@jax.jit
def all_finite(tree) -> jax.Array:
    """True when every array in `tree` is finite (parameters, optimizer state, metrics)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


# --------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class TrainResult:
    """What a run ended with: the exported model (None if interrupted), step, skipped files, last metrics."""
    model_path: Path | None
    step: int
    interrupted: bool
    bad_files: int
    last_metrics: dict


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self.set = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handlers
                pass
        return self

    def _handle(self, *_):
        if self.set:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def itstime(step: int, every: int, total: int) -> bool:
    """True every `every` steps and at the last step."""
    return step == total or (every > 0 and step % every == 0)


def _write_json(path: Path, obj) -> None:
    images.atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode())


def _read_metrics(path: Path) -> list[dict]:
    """The log lines of `metrics.jsonl`; a torn line (a kill mid-write) is skipped."""
    rows = []
    if path.is_file():
        for ln in path.read_text().splitlines():
            try:
                rows.append(json.loads(ln))
            except json.JSONDecodeError:
                continue
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("step"), int)]


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, forget log lines written after the checkpoint we resume from (and torn ones)."""
    if path.is_file():
        keep = [r for r in _read_metrics(path) if r["step"] <= step]
        images.atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in keep).encode())


def prepare_workdir(workdir: Path, record: dict, *, write: bool = True) -> None:
    """Creates `workdir` or checks that resuming it is safe, then records the config.

    A workdir that already holds checkpoints or a model remembers the config it was created with
    (`config.json`). A config that differs in what is trained (architecture, data, loss, VGG
    weights, batch, crop size, seed) is refused with one line naming the keys; harmless
    differences (see `schema.HARMLESS_ON_RESUME`) are allowed and appended to
    `config_changes.jsonl`. With `write=False` (processes other than 0) it only checks.
    """
    recorded_path = workdir / "config.json"
    ckpt = workdir / "checkpoints"
    started = (ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())
               or (workdir / f"model{modelfile.SUFFIX}").is_file())
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
        _write_json(recorded_path, record)


def train_and_evaluate(config, workdir: str | Path, *, progress: bool = True,
                       on_step: Callable[[int, _StopFlag], None] | None = None) -> TrainResult:
    """Trains (or resumes) the run described by `config` in `workdir`; exports the final model.

    The whole config is validated first (`schema.validate`), and a workdir created with a
    different config is refused (`prepare_workdir`), before anything is written.

    Args:
      config: an ml_collections config (see configs/style.py).
      workdir: checkpoints, metrics.jsonl, config.json, samples/ and the exported model go here.
      progress: show a progress bar.
      on_step: called after every step with (step, stop_flag); tests use it to interrupt.

    Returns:
      TrainResult; `model_path` is None when the run was interrupted before the end.
    """
    cfg = schema.validate(config)
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise FastnstError(f"{workdir}: exists and is not a folder")
    tc = config.train
    if tc.batch_size % jax.device_count():
        raise ConfigError(f"train.batch_size ({tc.batch_size}) must be a multiple of the "
                          f"{jax.device_count()} devices of this job")
    precision = tc.get("precision", "float32")
    mesh = parallel.make_mesh()
    writer = parallel.is_writer()
    model_cfg = nets.model_config(cfg["model"])
    spec = losses.LossSpec.from_config(cfg["loss"])
    scale = model_cfg["scale"] if model_cfg["task"] == "sr" else 1
    style_image = images.load_image(config.style_image) if spec.style_layers else None
    source = data.open_source(config.data)
    vgg_path = vgg.resolve_weights(cfg.get("vgg_weights") or None)
    # Every process checks the (shared) workdir, so a refusal ends all of them before the first
    # collective; only process 0 writes.
    prepare_workdir(workdir, {**cfg, "model": model_cfg, "vgg_weights_sha256": weights_io.sha256(vgg_path)},
                    write=writer)

    vgg_params = vgg.load_params(vgg_path)
    grams = style_targets(vgg_params, style_image, spec.style_layers, config.style_size) \
        if spec.style_layers else {}
    net = nets.build(model_cfg)
    rng = jax.random.key(config.seed)
    init_rng, rng = jax.random.split(rng)  # rng: the stochastic loss terms' base key
    state = create_train_state(nets.build(model_cfg, dtype=jnp.dtype(precision)), init_rng, lr=tc.lr,
                               scale=scale)
    parallel.barrier("set-up")  # every process set up before the first collective (see barrier)
    # (the run's key as raw key data: replicable across processes; fold_in accepts it)
    state, vgg_params, grams, rng = parallel.replicate((state, vgg_params, grams, jax.random.key_data(rng)),
                                                       mesh)
    sharded_step = jit_step(mesh)
    mngr = checkpoint_manager(workdir, tc.keep)
    state = restore_latest(mngr, state)
    start = int(state.step)
    if writer:
        _truncate_metrics(workdir / "metrics.jsonl", start)

    batches = data.Batches(source, batch_size=tc.batch_size, image_size=tc.image_size,
                           seed=config.seed, sr_scale=scale if scale > 1 else 0,
                           sr_sigma=config.data.sr_sigma, workers=config.data.workers,
                           cache=config.data.get("cache", False), process_index=jax.process_index(),
                           process_count=jax.process_count())
    samples = _sample_inputs(source, scale) if writer else []

    result = TrainResult(None, start, False, 0, {})
    bar = _progress(progress and writer, start, tc.steps)
    t_last, n_last = time.perf_counter(), start
    deadline = time.monotonic() + tc.time_limit_s if tc.get("time_limit_s") else float("inf")

    def log(step, metrics):
        nonlocal t_last, n_last
        if step == n_last:  # already logged (a stop right after a log step); steps here are > start
            return
        host = _check_finite(metrics, state, step, mngr)
        rate = (step - n_last) * tc.batch_size / max(time.perf_counter() - t_last, 1e-9)
        t_last, n_last = time.perf_counter(), step
        if writer:
            _log(workdir, step, host, rate, len(batches.bad), bar)
        result.last_metrics = host

    last_saved = start if start else None

    def save(step, force=False):
        nonlocal last_saved
        log(step, metrics)  # raises before saving a non-finite state
        mngr.save(step, args=ocp.args.StandardSave(_ckpt_item(state)), force=force)
        last_saved = step
        if writer:
            _empty_trash(workdir / "checkpoints")

    lost = False  # another process of the job failed: nothing collective can complete any more
    try:
        with _StopFlag() as stop:
            it = batches.iterate(start)
            metrics = None
            signalled = False
            for step in range(start + 1, tc.steps + 1):
                signalled, late = parallel.agree(stop.set, time.monotonic() > deadline)
                if signalled or late:
                    break
                batch = parallel.global_batch(next(it), mesh)
                state, metrics = sharded_step(state, batch, vgg_params, grams, spec, rng, precision)
                if on_step:
                    on_step(step, stop)
                result.step = step
                if step - 1 == last_saved:
                    _check_checkpoint_loss(metrics, step, mngr)
                if itstime(step, tc.ckpt_every, tc.steps):
                    save(step)
                elif itstime(step, tc.log_every, tc.steps):
                    log(step, metrics)
                if samples and itstime(step, tc.sample_every, tc.steps):
                    _write_samples(workdir, step, net, variables_of(state), samples)
                bar.update(1)
            if metrics is not None and mngr.latest_step() != result.step:  # stopped early
                save(result.step, force=True)
            # A time limit ends the run normally (exported); a signal (to any process) leaves it to
            # be resumed.
            result.interrupted = signalled and result.step < tc.steps
    except jax.errors.JaxRuntimeError as e:
        if jax.process_count() == 1:
            raise
        lost = True
        raise JobError(_lost_message(e, workdir)) from None
    finally:
        if not lost:  # (with a lost process, finishing a checkpoint waits for it forever)
            mngr.wait_until_finished()
            mngr.close()
        bar.close()
        batches.close()
    result.bad_files = len(batches.bad)
    if not result.interrupted and writer:
        if not result.last_metrics:  # nothing ran in this call: the last logged line
            rows = _read_metrics(workdir / "metrics.jsonl")
            result.last_metrics = {k: v for k, v in (rows[-1] if rows else {}).items()
                                   if k not in ("step", "images_per_s", "bad_files")}
        result.model_path = modelfile.save_model(
            workdir / f"model{modelfile.SUFFIX}", model_cfg, variables_of(state),
            meta={"steps": int(state.step), "planned_steps": tc.steps,
                  "final_metrics": result.last_metrics,
                  "style_image": config.get("style_image", ""), "data": source.name})
        _plot_losses(workdir)
    return result


def _lost_message(error: Exception, workdir: Path) -> str:
    """One line for a collective that failed in a multi-process run: a process of the job stopped
    (killed, crashed, its machine lost). Names the last checkpoint that is complete on disk (Orbax
    renames a checkpoint into place only once every process has written its part)."""
    ckpt = workdir / "checkpoints"
    steps = [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()] if ckpt.is_dir() else []
    resume = (f"the last complete checkpoint is step {max(steps)}" if steps else "no checkpoint is complete")
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return (f"process {jax.process_index()}: another process of the job stopped ({first}); {resume}; "
            "rerun the same command on every process to resume")


_DIVERGED = "lower train.lr or the loss weights (a resume with the same settings diverges again)"


def _check_finite(metrics, state: TrainState, step: int, mngr: ocp.CheckpointManager) -> dict:
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


def _check_checkpoint_loss(metrics, step: int, mngr: ocp.CheckpointManager) -> None:
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


def _log(workdir: Path, step: int, metrics: dict, rate: float, bad: int, bar) -> None:
    line = {"step": step, **{k: round(v, 6) for k, v in metrics.items()},
            "images_per_s": round(rate, 3), "bad_files": bad}
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()} | {"img/s": f"{rate:.2f}"},
                    refresh=False)


def _progress(enabled: bool, start: int, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, dynamic_ncols=True, unit="step")


def _sample_inputs(source, scale: int, size: int = 256) -> list[np.ndarray]:
    """Held-out images (never trained on), at most 256 px (HR side for SR), as inputs."""
    out = []
    for item in source.heldout[:4]:
        try:
            im = images.load_image(item) if isinstance(item, str | Path) else item
        except FastnstError:
            continue
        im = images.resize_max_side(im, size)
        out.append(data.degrade(im, scale) if scale > 1 else im)
    return out


def _write_samples(workdir: Path, step: int, net, variables, samples) -> None:
    outs = [np.asarray(stylize.forward(net, variables, jnp.asarray(s[None])))[0] for s in samples]
    images.save_image(workdir / "samples" / f"step_{step:07d}.png",
                      images.side_by_side(outs, height=192))


def _plot_losses(workdir: Path) -> None:
    from fastnst import plots

    path = workdir / "metrics.jsonl"
    if path.is_file():
        rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln]
        plots.loss_curves(rows, workdir / "loss_curve.png")
