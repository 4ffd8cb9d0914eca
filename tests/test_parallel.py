"""Data parallelism over several devices equals one device; bf16 compute; per-process data slices;
COCO through TFDS (skipped without the `tfds` extra)."""

import json
import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastnst import data, modelfile
from fastnst.step import StepInputs, jit_step
from tests.helpers import ROOT, free_port, run_cli, tiny_config, tiny_step, train_cli_args, write_photos

_TWO_DEVICES = textwrap.dedent("""
    import sys
    import chex
    chex.set_n_cpu_devices(2)  # before JAX starts: two CPU devices
    import jax, numpy as np
    jax.config.update("jax_disable_most_optimizations", True)  # tiny graphs: compile time dominates
    from pathlib import Path
    from jax.sharding import Mesh
    from fastnst import losses, nets, perceptual, parallel, train, vgg
    from fastnst import step as step_
    from fastnst.errors import ConfigError
    from tests.helpers import tiny_config

    assert jax.device_count() == 2
    cfg = tiny_config(Path(sys.argv[1]))
    cfg.model.norm = "batch"  # batch statistics must be those of the global batch
    spec = losses.LossSpec.from_config(cfg.loss)
    params = vgg.random_params()
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 255, (4, 32, 32, 3)).astype(np.float32) for _ in range(3)]
    grams = perceptual.style_grams(params, batches[0][0], spec.style_layers, 32)
    results, losses_ = [], []
    for devices in (jax.devices(), jax.devices()[:1]):
        mesh = Mesh(np.array(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        state = step_.create_train_state(nets.build(cfg.model.to_dict()), jax.random.key(0), lr=1e-3)
        step = step_.jit_step(mesh)
        rep = parallel.replicated(mesh)
        state, p, g, key = jax.device_put((state, params, grams, jax.random.key(1)), rep)
        for x in batches:
            batch = parallel.global_batch({"input": x, "target": x}, mesh)
            if len(devices) == 2:
                assert len(batch["input"].addressable_shards) == 2
                assert batch["input"].addressable_shards[0].data.shape == (2, 32, 32, 3)
            state, m = step(state, batch, step_.StepInputs(p, g, spec, jax.random.key_data(key)))
            losses_.append(float(m["loss"]))
        results.append(jax.device_get(state.params))
    # Same losses at every step (batch norm over the global batch, gradients all-reduced) ...
    np.testing.assert_allclose(losses_[:3], losses_[3:], rtol=1e-4)
    # ... and the same weights. Biases right before a batch norm have a zero true gradient, so Adam
    # turns float rounding into +-lr steps there; they do not change the output and are skipped.
    flat = [jax.tree_util.tree_leaves_with_path(r) for r in results]
    for (path, x), (_, y) in zip(*flat, strict=True):
        if "kernel" in jax.tree_util.keystr(path) or "scale" in jax.tree_util.keystr(path):
            np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4)
    cfg.train.batch_size = 3
    try:
        train.train_and_evaluate(cfg, Path(sys.argv[1]) / "run", progress=False)
        raise SystemExit("no error for a batch size that does not divide")
    except ConfigError as e:
        assert "multiple of the 2 devices" in str(e), e
    print("ok")
""")


@pytest.mark.slow
def test_two_devices_match_one(tmp_path, weights_cache):
    r = run_cli("-c", _TWO_DEVICES, tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def _launch_two(cfg, work, logs):
    """The README's launch: the same bin/train command twice, process ids 0 and 1, one coordinator.
    Their stderr goes to files in `logs` (a pipe nobody reads could block a process mid-run)."""
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    logs.mkdir(exist_ok=True)
    procs = []
    for i in (0, 1):
        with open(logs / f"p{i}.err", "w") as err:  # the child keeps its own handle
            procs.append(subprocess.Popen([sys.executable, *train_cli_args(cfg, work),
                                           f"--coordinator=localhost:{port}", "--num_processes=2",
                                           f"--process_id={i}"], cwd=ROOT, env=env,
                                          stdout=subprocess.DEVNULL, stderr=err))
    return procs


@pytest.fixture
def reaped():
    """A list to put started processes in; whatever is still running at the end is killed."""
    procs = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _stderr(logs) -> list[str]:
    return [(logs / f"p{i}.err").read_text() for i in (0, 1)]


def _steps_logged(work) -> list[int]:
    path = work / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(ln)["step"] for ln in lines if ln.endswith("}")]


def _wait_for_steps(work, procs, logs, n: int, timeout: float = 400) -> None:
    """Until `n` more steps than now are logged (training is under way on both)."""
    target = len(_steps_logged(work)) + n
    deadline = time.monotonic() + timeout
    while len(_steps_logged(work)) < target:
        assert all(p.poll() is None for p in procs), [e[-3000:] for e in _stderr(logs)]
        assert time.monotonic() < deadline, [e[-3000:] for e in _stderr(logs)]
        time.sleep(0.05)


def _finish(procs, logs, timeout: float) -> tuple[list[int], list[list[str]], float]:
    """Waits for every process (at most `timeout` s): exit codes, stderr lines, seconds taken."""
    t = time.monotonic()
    for p in procs:
        p.wait(timeout=timeout)
    lines = [[ln for ln in err.splitlines() if ln.strip()] for err in _stderr(logs)]
    return [p.returncode for p in procs], lines, time.monotonic() - t


@pytest.mark.slow
def test_two_processes_stop_together_refuse_together_and_resume(tmp_path, weights_cache, reaped):
    """The README's two-process launch through every way a run ends, on one workdir:
    a time limit (each process's own clock) ends both at the same step, exported; a changed config
    is refused by both with the same line before any collective; SIGTERM to process 1 only ends both
    at one step with one checkpoint, exit 130 (each once decided alone and the other waited forever);
    kill -9 of process 1 ends process 0 within seconds with one line naming the last complete
    checkpoint (it once waited 70 s, then aborted natively with Orbax tracebacks); the same command
    then resumes from that checkpoint and logs the same losses for the steps it repeats."""
    cfg = tiny_config(tmp_path, steps=500)
    cfg.train.update(log_every=1, ckpt_every=1000, sample_every=1000, time_limit_s=3.0)
    work, n = tmp_path / "run", iter(range(100))

    def launch(c):
        logs = tmp_path / f"logs{next(n)}"
        procs = _launch_two(c, work, logs)
        reaped.extend(procs)
        return procs, logs

    procs, logs = launch(cfg)  # 1. the time limit
    codes, lines, _ = _finish(procs, logs, 600)
    assert codes == [0, 0], lines
    limit = _steps_logged(work)[-1]
    assert 1 <= limit < 500 and (work / "checkpoints" / str(limit)).is_dir()
    assert modelfile.load_model(work / f"model{modelfile.SUFFIX}").meta["steps"] == limit

    wider = cfg.copy_and_resolve_references()  # 2. a config that changes what is trained
    wider.model.width = 0.25
    procs, logs = launch(wider)
    codes, lines, took = _finish(procs, logs, 120)
    assert codes == [1, 1] and lines[0] == lines[1] and len(lines[0]) == 1, lines
    assert "holds a run with a different config (model.width: 0.125 -> 0.25)" in lines[0][0]

    cfg.train.time_limit_s = 0.0  # 3. SIGTERM to process 1 (no limit: a harmless change)
    procs, logs = launch(cfg)
    _wait_for_steps(work, procs, logs, 2)
    procs[1].terminate()
    codes, lines, took = _finish(procs, logs, 120)
    assert codes == [130, 130] and took < 60, (codes, took, lines)
    stops = [[ln for ln in ls if ln.startswith("interrupted at step")] for ls in lines]
    assert len(stops[0]) == 1 and stops[0] == stops[1], lines
    stopped = int(stops[0][0].split()[3].rstrip(";"))
    assert limit + 2 <= stopped < 500 and (work / "checkpoints" / str(stopped)).is_dir()

    procs, logs = launch(cfg)  # 4. kill -9 of process 1
    _wait_for_steps(work, procs, logs, 2)
    procs[1].kill()
    codes, lines, took = _finish(procs, logs, 120)
    assert codes[0] == 1 and took < 30 and len(lines[0]) == 1, (codes, took, lines[0])
    assert lines[0][0].startswith("error: process 0: another process of the job stopped")
    assert lines[0][0].endswith(f"the last complete checkpoint is step {stopped}; rerun the same command "
                                "on every process to resume")
    before = _losses(work, stopped + 1, stopped + 2)  # logged before the kill, dropped on resume

    cfg.train.steps = stopped + 2  # 5. the same command (a longer or shorter run is allowed) resumes
    procs, logs = launch(cfg)
    codes, lines, _ = _finish(procs, logs, 600)
    assert codes == [0, 0], lines
    logged = _steps_logged(work)
    assert logged[-3:] == [stopped, stopped + 1, stopped + 2] and logged == sorted(set(logged))
    assert _losses(work, stopped + 1, stopped + 2) == before  # the same steps again: exact resume


def _losses(work, *steps) -> list[float]:
    rows = {r["step"]: r["loss"] for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines())}
    return [rows[s] for s in steps]


def test_bfloat16_compute_keeps_float32_parameters_and_losses(vgg_params, tmp_path):
    cfg = tiny_config(tmp_path)
    out = {}
    for dtype in ("float32", "bfloat16"):
        t = tiny_step(vgg_params, cfg, dtype=dtype)
        state, m = jit_step()(t.state, t.batch, StepInputs(vgg_params, t.grams, t.spec, precision=dtype))
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
        assert all(np.asarray(v).dtype == np.float32 and np.isfinite(float(v)) for v in m.values())
        out[dtype] = {k: float(v) for k, v in m.items()}
    for k in out["float32"]:
        assert out["bfloat16"][k] == pytest.approx(out["float32"][k], rel=0.05, abs=1e-3), k


def test_process_slices_make_up_the_global_batch(tmp_path):
    src = data.FolderSource(write_photos(tmp_path / "p", 6))
    whole = data.Batches(src, batch_size=4, image_size=32, seed=3, workers=1)
    parts = [data.Batches(src, batch_size=4, image_size=32, seed=3, workers=1, process_index=i,
                          process_count=2) for i in range(2)]
    for step in (0, 5):
        joined = np.concatenate([p.batch(step)["input"] for p in parts])
        np.testing.assert_array_equal(joined, whole.batch(step)["input"])
    for b in (whole, *parts):
        b.close()


def test_coco_through_tfds_on_a_tiny_dataset_in_tfds_format(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets", reason="needs the `tfds` extra "
                               "(pip install -e '.[tfds]'); see the README for CI")
    import tensorflow as tf

    class TinyCoco(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(None, None, 3))}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            rng = np.random.default_rng(0)
            for i in range(6):
                yield i, {"image": rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)}

    builder = TinyCoco(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    del tf
    src = data.TfdsSource("tiny_coco", "train", holdout=1, data_dir=str(tmp_path))
    assert len(src) == 5
    b = data.Batches(src, batch_size=2, image_size=32, seed=0, workers=1)
    assert b.batch(0)["input"].shape == (2, 32, 32, 3)
    b.close()


def test_an_all_gather_that_loses_its_peer_is_a_lost_process_not_a_traceback(monkeypatch):
    """A process killed while the others are in `parallel.agree` made the all-gather raise
    ValueError (seen once under load in the two-process test above: a traceback, then a native
    abort 43 s later). `agree` raises it as the JaxRuntimeError that the train loop turns into its
    one line naming the last complete checkpoint."""
    from jax.experimental import multihost_utils

    from fastnst import parallel

    def reset(_):
        raise ValueError("UNKNOWN: Gloo AllGather failed: [pair.cc:538] Read error: Connection reset by peer")

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", reset)
    with pytest.raises(jax.errors.JaxRuntimeError, match="Connection reset by peer"):
        parallel.agree(False, True)
