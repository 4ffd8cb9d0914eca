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

from fastnst import data, train
from tests.helpers import ROOT, run_cli, tiny_config, tiny_step, train_cli_args, write_photos

_TWO_DEVICES = textwrap.dedent("""
    import sys
    import chex
    chex.set_n_cpu_devices(2)  # before JAX starts: two CPU devices
    import jax, numpy as np
    jax.config.update("jax_disable_most_optimizations", True)  # tiny graphs: compile time dominates
    from pathlib import Path
    from jax.sharding import Mesh
    from fastnst import losses, nets, parallel, train, vgg
    from fastnst.errors import ConfigError
    from tests.helpers import tiny_config

    assert jax.device_count() == 2
    cfg = tiny_config(Path(sys.argv[1]))
    cfg.model.norm = "batch"  # batch statistics must be those of the global batch
    spec = losses.LossSpec.from_config(cfg.loss)
    params = vgg.random_params()
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 255, (4, 32, 32, 3)).astype(np.float32) for _ in range(3)]
    grams = train.style_targets(params, batches[0][0], spec.style_layers, 32)
    results, losses_ = [], []
    for devices in (jax.devices(), jax.devices()[:1]):
        mesh = Mesh(np.array(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        state = train.create_train_state(nets.build(cfg.model.to_dict()), jax.random.key(0), lr=1e-3)
        step = parallel.sharded_train_step(mesh)
        rep = parallel.replicated(mesh)
        state, p, g, key = jax.device_put((state, params, grams, jax.random.key(1)), rep)
        for x in batches:
            batch = parallel.global_batch({"input": x, "target": x}, mesh)
            if len(devices) == 2:
                assert len(batch["input"].addressable_shards) == 2
                assert batch["input"].addressable_shards[0].data.shape == (2, 32, 32, 3)
            state, m = step(state, batch, p, g, key, spec, "float32")
            losses_.append(float(m["loss"]))
        results.append(jax.device_get(state.params))
    # Same losses at every step (batch norm over the global batch, gradients all-reduced) ...
    np.testing.assert_allclose(losses_[:3], losses_[3:], rtol=1e-4)
    # ... and the same weights. Biases right before a batch norm have a zero true gradient, so Adam
    # turns float rounding into +-lr steps there; they do not change the output and are skipped.
    flat = [jax.tree_util.tree_leaves_with_path(r) for r in results]
    for (path, x), (_, y) in zip(*flat):
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch_two(cfg, work, logs):
    """The README's launch: the same bin/train command twice, process ids 0 and 1, one coordinator.
    Their stderr goes to files in `logs` (a pipe nobody reads could block a process mid-run)."""
    port = _free_port()
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


@pytest.mark.slow
def test_two_processes_stop_together_when_one_gets_sigterm_and_resume(tmp_path, weights_cache, reaped):
    """SIGTERM to process 1 only: both processes leave at the same step, save one checkpoint
    together and exit 130 with the same line (each once decided alone and process 0 waited
    forever in the next collective); the same command resumes from that step."""
    cfg = tiny_config(tmp_path, steps=500)
    cfg.train.update(log_every=1, ckpt_every=1000, sample_every=1000)
    work = tmp_path / "run"
    procs = _launch_two(cfg, work, tmp_path / "logs")
    reaped += procs
    deadline = time.monotonic() + 400
    while len(_steps_logged(work)) < 2:  # training is under way on both
        assert all(p.poll() is None for p in procs), [e[-3000:] for e in _stderr(tmp_path / "logs")]
        assert time.monotonic() < deadline, [e[-3000:] for e in _stderr(tmp_path / "logs")]
        time.sleep(0.05)
    procs[1].terminate()
    sent = time.monotonic()
    for p in procs:
        p.wait(timeout=120)
    gone_after = time.monotonic() - sent
    errs = _stderr(tmp_path / "logs")
    lines = [[ln for ln in err.splitlines() if ln.startswith("interrupted at step")] for err in errs]
    assert [p.returncode for p in procs] == [130, 130], [err[-1500:] for err in errs]
    assert len(lines[0]) == len(lines[1]) == 1 and lines[0] == lines[1], lines
    assert gone_after < 60, gone_after
    stopped = int(lines[0][0].split()[3].rstrip(";"))
    assert 2 <= stopped < 500 and (work / "checkpoints" / str(stopped)).is_dir()
    cfg.train.steps = stopped + 2  # the same command (a longer or shorter run is allowed) resumes
    procs = _launch_two(cfg, work, tmp_path / "logs2")
    reaped += procs
    for p in procs:
        p.wait(timeout=600)
    assert [p.returncode for p in procs] == [0, 0], [e[-1500:] for e in _stderr(tmp_path / "logs2")]
    logged = _steps_logged(work)
    assert logged[-3:] == [stopped, stopped + 1, stopped + 2] and logged == sorted(set(logged))


def test_bfloat16_compute_keeps_float32_parameters_and_losses(vgg_params, tmp_path):
    cfg = tiny_config(tmp_path)
    out = {}
    for dtype in ("float32", "bfloat16"):
        t = tiny_step(vgg_params, cfg, dtype=dtype)
        state, m = train.jit_train_step(t.state, t.batch, vgg_params, t.grams, t.spec, None, dtype)
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
