"""Training: one run from a validated config to an exported model.

`train_and_evaluate(config, workdir)` runs a whole job (style transfer or super-resolution, chosen
by `config.model.task`), resuming from the newest checkpoint in `workdir` if there is one. Its
parts: `schema.load` (the config, once), `fastnst.step` (the pure step and its one jitted,
sharded form), `checkpoints` (saving, divergence checks, resume policy), `runlog` (metrics,
progress, samples), and here the set-up (`_setup`), the loop (`_loop`) and the export.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from fastnst import (
    augment,
    checkpoints,
    data,
    dispatch,
    images,
    keys,
    modelfile,
    nets,
    parallel,
    perceptual,
    runlog,
    schema,
    vgg,
    warmstart,
    weights_io,
)
from fastnst.errors import ConfigError, FastnstError, JobError
from fastnst.schema import Config
from fastnst.step import (
    StepInputs,
    TrainState,
    create_train_state,
    jit_side_by_side_step,
    jit_step,
    stack_states,
    step_of,
    unstack_state,
    variables_of,
)


@dataclasses.dataclass
class TrainResult:
    """What a run ended with: the exported model (None if interrupted), step, skipped files, last
    metrics; `model_paths` holds every exported model (several when networks train side by side)."""
    model_path: Path | None
    step: int
    interrupted: bool
    bad_files: int
    last_metrics: dict
    model_paths: list = dataclasses.field(default_factory=list)


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


@dataclasses.dataclass
class _Job:
    """Everything one run's loop reads, set up once by `_setup`."""
    cfg: Config
    workdir: Path
    writer: bool  # process 0 writes logs, samples and the model
    mesh: jax.sharding.Mesh
    net: nets.TransformNet  # float32, for samples and the exported model
    state: TrainState  # with a leading model axis when networks train side by side
    names: tuple[str, ...]  # the networks trained side by side (empty: one network)
    inputs: StepInputs  # the step's other argument
    step_fn: Callable[[int], Callable]  # K -> the jitted call that runs K steps
    mngr: ocp.CheckpointManager
    batches: data.Batches | None  # the host loader (None: the photos are on the device)
    source: object
    samples: list
    bad: set  # photos that could not be read (the host loader's set, or those left out up front)


def _setup(cfg: Config, workdir: Path) -> _Job:
    """Checks the workdir and the devices, then builds the state (restored when resuming), the
    inputs of the step and the data pipeline."""
    t = cfg.train
    if t.batch_size % jax.device_count():
        raise ConfigError(f"train.batch_size ({t.batch_size}) must be a multiple of the "
                          f"{jax.device_count()} devices of this job")
    mesh, writer = parallel.make_mesh(), parallel.is_writer()
    style_paths = cfg.style_images or ((cfg.style_image,) if cfg.loss.style_layers else ())
    key = "style_images" if cfg.style_images else "style_image"
    style_images = [_named(key, lambda p=p: images.load_image(p)) for p in style_paths]
    source = _named("data.folder" if cfg.data.source == "folder" else "data.source",
                    lambda: data.open_source(cfg.data))
    vgg_path = vgg.resolve_weights(cfg.vgg_weights or None)
    # Every process checks the (shared) workdir, so a refusal ends all of them before the first
    # collective; only process 0 writes.
    checkpoints.prepare_workdir(workdir, {**cfg.record(), "vgg_weights_sha256": weights_io.sha256(vgg_path),
                                          "mesh": parallel.mesh_record(mesh)}, write=writer)
    vgg_params = vgg.load_params(vgg_path)
    per_style = [perceptual.style_grams(vgg_params, im, cfg.loss.style_layers, cfg.style_size)
                 for im in style_images]  # [1, C, C] per layer, stacked: [S, C, C]
    old = cfg.kept_styles  # (their rows get zero targets: the batches never draw them)
    grams = {k: jnp.concatenate([jnp.zeros((old, *g.shape[1:]), g.dtype)] + [p[k] for p in per_style])
             for k, g in per_style[0].items()} if per_style else {}
    net = nets.build(cfg.model)
    init_rng, rng = keys.run_keys(cfg.seed)  # rng: the base of every step's keys
    compute = net.clone(dtype=jnp.dtype(t.precision)) if t.precision != "float32" else net
    state = _initial_state(cfg, net, compute, init_rng)
    if cfg.side_by_side:  # Grams [M, 1, C, C]: one style per network
        grams = {k: g[:, None] for k, g in grams.items()}
    sr = cfg.scale if cfg.scale > 1 else 0
    dspec = augment.DataSpec(batch_size=t.batch_size, size=t.image_size, sr_scale=sr,
                             sr_sigma=cfg.data.sr_sigma, flip=cfg.data.flip,
                             num_styles=0 if cfg.side_by_side else len(cfg.style_images), first_style=old)
    photos, bad = (data.decode_all(source, t.image_size, dspec.sr_scale, cfg.data.workers)
                   if cfg.data.on_device else (None, set()))
    parallel.barrier("set-up")  # every process set up before the first collective (see barrier)
    # (the run's key as raw key data: replicable across processes; fold_in accepts it)
    state, vgg_params, grams, rng = parallel.replicate((state, vgg_params, grams, jax.random.key_data(rng)),
                                                       mesh)
    on_device = parallel.replicate(augment.pack(photos, keys.order_key(cfg.seed)), mesh) if photos else None
    inputs = StepInputs(vgg_params, grams, cfg.loss, rng, t.precision, on_device,
                        dspec if on_device is not None else None)
    mngr = checkpoints.manager(workdir, t.keep)
    state = checkpoints.restore_latest(mngr, state)
    batches = None if on_device is not None else data.Batches(
        source, batch_size=t.batch_size, image_size=t.image_size, seed=cfg.seed, sr_scale=dspec.sr_scale,
        sr_sigma=cfg.data.sr_sigma, workers=cfg.data.workers, cache=cfg.data.cache,
        process_index=jax.process_index(), process_count=jax.process_count(), num_styles=dspec.num_styles,
        first_style=old, flip=cfg.data.flip)
    samples = runlog.sample_inputs(source, cfg.scale) if writer else []
    names = tuple(Path(p).stem for p in cfg.style_images) if cfg.side_by_side else ()
    jitted = jit_side_by_side_step if names else jit_step
    return _Job(cfg, workdir, writer, mesh, net, state, names, inputs, lambda k: jitted(mesh, k), mngr,
                batches, source, samples, batches.bad if batches is not None else bad)


def _initial_state(cfg: Config, net, compute, init_rng) -> TrainState:
    """The state before any step (a checkpoint of the workdir, restored later, still wins): fresh,
    from `init_from`, or side by side one network per style, each its own initialisation."""
    t = cfg.train
    if cfg.side_by_side:
        return stack_states([create_train_state(compute, key, lr=t.lr, scale=cfg.scale)
                             for key in jax.random.split(init_rng, cfg.side_by_side)])
    variables = nets.init(net, init_rng, scale=cfg.scale)
    if cfg.start:
        variables = warmstart.initial_variables(cfg.start, variables)
    return create_train_state(compute, init_rng, lr=t.lr, variables=variables,
                              labels=warmstart.trainable(cfg.start))


def _named(key: str, load: Callable):
    """`load()`, with a missing or unreadable file reported as the config key to set."""
    try:
        return load()
    except FastnstError as e:
        hint = ", or --config.data.source=bundled for scikit-image's photos" if key == "data.folder" else ""
        raise ConfigError(f"{key}: {e} (set --config.{key}{hint})") from None


class _Book:
    """Logging and checkpointing at their steps: every logged state is checked to be finite first,
    so no bad state is saved."""

    def __init__(self, job: _Job, result: TrainResult, bar):
        self.job, self.result, self.bar = job, result, bar
        self.t_last, self.n_last = time.perf_counter(), result.step
        self.last_saved = result.step or None

    def log(self, step: int, state: TrainState, metrics) -> None:
        if step == self.n_last:  # already logged (a stop right after a log step); steps here are > start
            return
        if self.job.names:
            metrics = runlog.per_network(metrics, self.job.names)
        host = checkpoints.check_finite(metrics, state, step, self.job.mngr)
        now = time.perf_counter()
        rate = (step - self.n_last) * self.job.cfg.train.batch_size / max(now - self.t_last, 1e-9)
        self.t_last, self.n_last = now, step
        if self.job.writer:
            runlog.log(self.job.workdir, step, host, rate, len(self.job.bad), self.bar)
        self.result.last_metrics = host

    def save(self, step: int, state: TrainState, metrics, *, force: bool = False) -> None:
        self.log(step, state, metrics)  # raises before saving a non-finite state
        checkpoints.save(self.job.mngr, step, state, force=force)
        self.last_saved = step
        if self.job.writer:
            checkpoints.empty_trash(self.job.workdir)


def train_and_evaluate(config, workdir: str | Path, *, progress: bool = True,
                       on_step: Callable[[int, _StopFlag], None] | None = None) -> TrainResult:
    """Trains (or resumes) the run described by `config` in `workdir`; exports the final model.

    The whole config is validated first (`schema.load`: the `init_from` model read, then
    `validate`), and a workdir created with a different config is refused
    (`checkpoints.prepare_workdir`), before anything is written.

    Args:
      config: an ml_collections config (see configs/style.py), or a validated `schema.Config`.
      workdir: checkpoints, metrics.jsonl, config.json, samples/ and the exported model go here.
      progress: show a progress bar.
      on_step: called after every call of the step (every step unless
        `train.steps_per_dispatch` > 1) with (step, stop_flag); tests use it to interrupt.

    Returns:
      TrainResult; `model_path` is None when the run was interrupted before the end.
    """
    cfg, workdir = schema.load(config), Path(workdir)
    job = _setup(cfg, workdir)
    start = step_of(job.state)
    if job.writer:
        runlog.truncate_metrics(workdir, start)
    result = TrainResult(None, start, False, 0, {})
    bar = runlog.progress(progress and job.writer, start, cfg.train.steps)
    lost = False  # another process of the job failed: nothing collective can complete any more
    try:
        _loop(job, _Book(job, result, bar), on_step)
    except jax.errors.JaxRuntimeError as e:
        if jax.process_count() == 1:
            raise
        lost = True
        raise JobError(_lost_message(e, workdir)) from None
    finally:
        if not lost:  # (with a lost process, finishing a checkpoint waits for it forever)
            job.mngr.wait_until_finished()
            job.mngr.close()
        bar.close()
        if job.batches is not None:
            job.batches.close()
    result.bad_files = len(job.bad)
    if not result.interrupted and job.writer:
        result.last_metrics = result.last_metrics or runlog.last_metrics(workdir)  # (nothing ran now)
        result.model_paths = _export(job, result.last_metrics)
        result.model_path = result.model_paths[0]
        runlog.plot_losses(workdir)
    return result


def _export(job: _Job, last_metrics: dict) -> list[Path]:
    """Writes `model.msgpack` (side by side: `model_<style>.msgpack`) with its objective, for evaluations."""
    cfg = job.cfg
    meta = {"steps": step_of(job.state), "planned_steps": cfg.train.steps, "data": job.source.name,
            perceptual.RECORD_KEY: perceptual.record(cfg.loss_settings, cfg.style_size)}
    if not job.names:
        return [modelfile.save_model(
            job.workdir / f"model{modelfile.SUFFIX}", dict(cfg.model), variables_of(job.state),
            meta={**meta, "final_metrics": last_metrics, "style_image": cfg.style_image,
                  **({"styles": _style_names(cfg)} if cfg.style_images else {})})]
    def own(name):  # this network's part of the joint metrics
        return {k.partition("/")[2]: v for k, v in last_metrics.items() if k.startswith(f"{name}/")}

    return [modelfile.save_model(job.workdir / f"model_{name}{modelfile.SUFFIX}", dict(cfg.model),
                                 variables_of(unstack_state(job.state, i)),
                                 meta={**meta, "style_image": path, "final_metrics": own(name)})
            for i, (name, path) in enumerate(zip(job.names, cfg.style_images, strict=True))]


def _loop(job: _Job, book: _Book, on_step) -> None:
    """Steps until `train.steps`, a signal to any process or the time limit; leaves the final state
    in `job.state` and what happened in `book.result`. Each jitted call runs up to
    `train.steps_per_dispatch` steps (`dispatch.size`); everything else acts between calls."""
    t, result = job.cfg.train, book.result
    deadline = time.monotonic() + t.time_limit_s if t.time_limit_s else float("inf")
    metrics, signalled = None, False
    with _StopFlag() as stop:
        it = job.batches.iterate(result.step) if job.batches is not None else None
        while result.step < t.steps:
            signalled, late = parallel.agree(stop.set, time.monotonic() > deadline)
            if signalled or late:
                break
            n = dispatch.size(result.step, t)
            job.state, stacked = job.step_fn(n)(job.state, dispatch.batches(it, n, job.mesh), job.inputs)
            first, step = result.step + 1, result.step + n
            metrics = dispatch.at(stacked, n, -1)
            if on_step:
                on_step(step, stop)
            result.step = step
            if first - 1 == book.last_saved:  # the loss at the saved parameters (the call's first step)
                checkpoints.check_checkpoint_loss(dispatch.at(stacked, n, 0), first, job.mngr)
            if itstime(step, t.ckpt_every, t.steps):
                book.save(step, job.state, metrics)
            elif itstime(step, t.log_every, t.steps):
                book.log(step, job.state, metrics)
            if job.samples and itstime(step, t.sample_every, t.steps):
                runlog.write_samples(job.workdir, step, job.net, *_sample_variables(job))
            book.bar.update(n)
        if metrics is not None and job.mngr.latest_step() != result.step:  # stopped early
            book.save(result.step, job.state, metrics, force=True)
    # A time limit ends the run normally (exported); a signal (to any process) leaves it to be resumed.
    result.interrupted = signalled and result.step < t.steps


def _sample_variables(job: _Job) -> tuple[list, list]:
    """(variables, inputs) for the samples: each held-out photo through the net, or, side by side,
    the first one through every network."""
    if not job.names:
        return [variables_of(job.state)], job.samples
    return [variables_of(unstack_state(job.state, i)) for i in range(len(job.names))], job.samples[:1]


def _style_names(cfg: Config) -> list[str]:
    """A multi-style model's style names: those it started from, then the files' stems."""
    kept = list(cfg.start.old_names) if cfg.start else []
    return kept + [Path(p).stem for p in cfg.style_images]


def _lost_message(error: Exception, workdir: Path) -> str:
    """One line for a collective that failed in a multi-process run: a process of the job stopped
    (killed, crashed, its machine lost). Names the last checkpoint that is complete on disk."""
    last = checkpoints.last_complete_step(workdir)
    resume = (f"the last complete checkpoint is step {last}" if last is not None
              else "no checkpoint is complete")
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return (f"process {jax.process_index()}: another process of the job stopped ({first}); {resume}; "
            "rerun the same command on every process to resume")
