"""Hardening: every awkward input a user can give ends in one line and a non-zero exit, never a
traceback, a silent wrong result or lost work. One test per category, parametrised over its cases,
through the CLIs where the user meets them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import serialization

from fastnst import checkpoints, images, modelfile, schema, train
from fastnst.errors import ConfigError, FastnstError, WeightsError
from fastnst.step import create_train_state
from tests.helpers import ROOT, free_port, one_line_error, run_cli, tiny_config

# --------------------------------------------------------------------------- config values

@pytest.mark.parametrize("key,value,match", [
    ("train.image_size", 0, "train.image_size"), ("train.batch_size", 0, "train.batch_size"),
    ("model.norm", "bogus", "model.norm"), ("model.upsample", "bogus", "model.upsample"),
    ("model.task", "bogus", "model.task"), ("loss.style_layers", ("relu9_9",), "unknown VGG layer"),
    ("train.steps", -5, "train.steps"), ("train.steps", 0, "train.steps"),
    ("model.width", 0.0, "model.width"),
    ("train.lr", -1.0, "train.lr"), ("train.lr", float("inf"), "train.lr"),
    ("train.time_limit_s", -1.0, "train.time_limit_s"), ("train.keep", 0, "train.keep"),
    ("loss.tv", -1.0, "loss.tv"), ("data.source", "bogus", "data.source"),
    ("data.workers", 0, "data.workers"),
    ("loss.stability_shift", -1, "loss.stability_shift"),
    ("loss.stability_shift", 1.5, "loss.stability_shift"),
    ("loss.stability_shift", 10_000, "loss.stability_shift"),
    ("loss.stability_noise", -1.0, "loss.stability_noise"),
    ("loss.stability_noise", "8", "loss.stability_noise"),
    ("train.stpes", 5, r"unknown key\(s\) \['stpes'\] in config.train"), ("data.cache", "yes", "data.cache"),
    ("train.precision", "float16", "train.precision"), ("data.source", "synthetic ", "data.source"),
])
def test_bad_config_values_are_refused_up_front(tmp_path, key, value, match):
    c = tiny_config(tmp_path).to_dict()
    block, name = key.split(".")
    c[block][name] = value
    with pytest.raises(ConfigError, match=match):
        schema.validate(c)


def test_validate_returns_one_frozen_typed_config(tmp_path):
    import dataclasses

    raw = tiny_config(tmp_path)
    cfg = schema.validate(raw)
    assert schema.validate(cfg) is cfg  # validated once; a Config passes through
    assert isinstance(cfg.train.lr, float) and cfg.loss.weight("content") == raw.loss.content
    assert cfg.model["norm"] == raw.model.norm and cfg.model["scale"] == 1  # completed by nets
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 3
    with pytest.raises(TypeError):
        cfg.model["width"] = 2.0
    # the record is what config.json holds: the config file's keys, plain values
    rec = cfg.record()
    assert rec["train"]["steps"] == raw.train.steps and rec["loss"] == dict(raw.loss.to_dict())
    assert schema.resume_differences(rec, schema.validate(raw).record()) == ({}, {})
    c = raw.to_dict()
    del c["train"]["steps"]
    with pytest.raises(ConfigError, match="train.steps is missing"):
        schema.validate(c)


def test_all_zero_loss_and_unknown_loss_key(tmp_path):
    c = tiny_config(tmp_path).to_dict()
    c["loss"].update(content=0.0, style=0.0, tv=0.0, pixel=0.0)
    with pytest.raises(ConfigError, match="every loss weight is 0"):
        schema.validate(c)
    c["loss"]["stabilty"] = 1.0
    with pytest.raises(ConfigError, match="unknown loss key"):
        schema.validate(c)


def test_bad_config_on_the_cli_writes_nothing(tmp_path):
    work = tmp_path / "run"
    r = run_cli("bin/train", "--config=configs/style.py:runlocal", f"--workdir={work}",
             "--config.train.steps=-5", "--noprogress")
    assert "train.steps" in one_line_error(r)
    assert not work.exists()


# --------------------------------------------------------------------------- resume into a workdir

def test_resume_with_a_different_config_is_refused_and_harmless_changes_recorded(tmp_path, weights_cache):
    cfg = tiny_config(tmp_path, steps=2)
    work = tmp_path / "run"
    train.train_and_evaluate(cfg, work, progress=False)
    recorded = (work / "config.json").read_text()
    model_before = (work / "model.msgpack").read_bytes()
    for key, value in (("model.upsample", "transpose"), ("model.width", 0.25), ("loss.style", 5.0),
                       ("data.folder", str(tmp_path))):
        other = tiny_config(tmp_path, steps=2)
        block, name = key.split(".")
        setattr(other[block], name, value)
        with pytest.raises(FastnstError, match=key.replace(".", r"\.")):
            train.train_and_evaluate(other, work, progress=False)
        assert (work / "config.json").read_text() == recorded
        assert (work / "model.msgpack").read_bytes() == model_before
    longer = tiny_config(tmp_path, steps=3)
    longer.train.log_every = 1
    result = train.train_and_evaluate(longer, work, progress=False)
    assert result.step == 3
    change = json.loads((work / "config_changes.jsonl").read_text().splitlines()[-1])["changes"]
    assert change["train.steps"] == {"was": 2, "now": 3} and "train.log_every" in change
    assert json.loads((work / "config.json").read_text())["train"]["steps"] == 3


# --------------------------------------------------------------------------- non-finite training

@pytest.mark.parametrize("key,value,good_steps,kept", [
    ("train.lr", 1e30, 2, [1, 2]),  # resumed with an absurd lr after 2 good steps: those are kept
    ("loss.tv", 1e32, 0, []),  # Adam's moments overflow at step 1: nothing to keep, and it says so
])
def test_divergence_is_an_error_and_every_kept_checkpoint_is_finite(tmp_path, weights_cache, key, value,
                                                                    good_steps, kept):
    cfg = tiny_config(tmp_path, steps=6)
    cfg.train.update(ckpt_every=1, log_every=1, keep=10)
    work = tmp_path / "run"
    if good_steps:
        cfg.train.steps = good_steps
        train.train_and_evaluate(cfg, work, progress=False)
        (work / "model.msgpack").unlink()
        cfg.train.steps = 6
    block, name = key.split(".")
    setattr(cfg[block], name, value)
    with pytest.raises(FastnstError, match="diverged.*lower train.lr or the loss weights") as e:
        train.train_and_evaluate(cfg, work, progress=False)
    assert ("no checkpoint was saved" in str(e.value)) == (not kept)
    assert not (work / "model.msgpack").exists()
    net_state = create_train_state(train.nets.build(cfg.model.to_dict()), jax.random.key(0), lr=1e-3)
    mngr = checkpoints.manager(work, keep=10)
    assert list(mngr.all_steps()) == kept
    for step in mngr.all_steps():
        item = mngr.restore(step, args=checkpoints.ocp.args.StandardRestore(
            jax.tree.map(checkpoints.ocp.utils.to_shape_dtype_struct, checkpoints._item(net_state))))
        assert all(bool(checkpoints.all_finite(item[k])) for k in ("params", "opt_state"))
    mngr.close()


# --------------------------------------------------------------------------- output paths and inputs

@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for rel in ("a/x.png", "b/x.jpg", "b/sub/y.png", "z.gif"):
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        Image.fromarray(rng.integers(0, 255, (24, 28, 3), dtype=np.uint8)).save(p)
    (d / "empty").mkdir()
    return d


@pytest.mark.parametrize("args,match,code", [
    (["{p}/a/x.png", "{p}/b/x.jpg", "--out={o}"], "would both be written", 1),
    (["{p}/a", "{p}/b", "--out={o}.png"], "is a file name", 1),
    (["{p}/a/x.png", "--out={o}.txt"], "unsupported image type", 1),
    (["{p}/a/x.png", "--out={p}/a/x.png"], "would overwrite an input", 1),
    (["{p}/empty", "--out={o}"], "no input images", 1),
    (["{p}/missing.png", "--out={o}"], "no input images", 1),
    (["{p}/a/x.png", "--out={p}/z.gif/out.png"], "not a folder", 1),
    (["{p}/a/x.png", "--out={o}", "--max-size=-5"], "--max-size", 2),
    (["{p}/a/x.png", "--out={o}", "--batch-size=0"], "--batch-size", 2),
    (["{p}/a/x.png", "--out={o}", "--strength=1.5"], "--strength", 2),
    (["{p}/a/x.png", "--out={o}", "--model=sr_x4_pixel"], "use bin/upscale", 1),
    (["{p}/a/x.png", "--out={o}", "--model=/nonexistent.msgpack"], "no such model file", 1),
])
def test_stylize_refuses_with_one_line_and_writes_nothing(photos, tmp_path, args, match, code):
    out = tmp_path / "out"
    args = [a.format(p=photos, o=out) for a in args]
    if not any(a.startswith("--model") for a in args):
        args.append("--model=the_scream")
    line = one_line_error(run_cli("bin/stylize", *args), code)
    assert match in line
    assert not out.exists() and not Path(f"{out}.png").exists()


def test_folders_are_mirrored_and_gif_is_read_inside_folders(photos, tmp_path):
    out = tmp_path / "out"
    r = run_cli("bin/stylize", "--model=the_scream", str(photos), str(photos / "empty"), f"--out={out}",
             "--preserve-color")
    assert r.returncode == 1  # the empty folder is reported, everything else is written
    assert "empty" in r.stderr and r.stderr.count("\n") == 1
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert got == ["a/x.png", "b/sub/y.png", "b/x.png", "z.png"]


def test_optimize_refuses_meaningless_inputs_before_computing(tmp_path):
    tiny = images.save_image(tmp_path / "tiny.png", np.full((6, 6, 3), 100.0))
    cases = [(["--content", str(tiny), "--style-weight=0", "--out", str(tmp_path / "o.png")], "32 px", 1),
             (["--content", str(tiny), "--iters=0", "--out", str(tmp_path / "o.png")], "--iters", 2),
             (["--style-weight=0", "--content-weight=0", "--tv-weight=0", "--out", str(tmp_path / "o.png")],
              "every loss weight is 0", 1)]
    photo = images.save_image(tmp_path / "photo.png", np.full((40, 40, 3), 100.0))
    side = images.save_image(tmp_path / "p_objective.png", np.full((40, 40, 3), 100.0))
    cases += [(["--content", str(photo), "--style", str(side), "--iters=1", "--out", str(photo)],
               "would overwrite an input", 1),  # the image itself
              (["--content", str(photo), "--style", str(side), "--iters=1", "--out", str(tmp_path / "p.png")],
               "would overwrite an input", 1)]  # the objective plot written next to it
    for args, match, code in cases:
        assert match in one_line_error(run_cli("bin/optimize", *args), code)
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("args,env,match,code", [
    (["bin/bench", "--sizes=abc"], {}, "--sizes", 2),
    (["bin/bench", "--sizes=0"], {}, "--sizes", 2),
    (["bin/bench", "--quick=-2"], {}, "--quick", 2),
    (["bin/bench", "--repeats=0"], {}, "--repeats", 2),
    (["bin/eval_video", "--model=starry_night", "--style=x.png", "--frames=1"], {}, "--frames", 2),
    (["bin/eval_video", "--model=starry_night", "--style=x.png", "--height=8"], {}, "--height", 2),
    (["bin/stylize", "--model=the_scream", "x.png", "--out=o.png"], {"FASTNST_MEMORY_BUDGET_MB": "abc"},
     "FASTNST_MEMORY_BUDGET_MB", 1),
    (["bin/stylize", "--model=the_scream", "x.png", "--out=o.png"], {"FASTNST_MEMORY_BUDGET_MB": "-5"},
     "FASTNST_MEMORY_BUDGET_MB", 1),
    (["bin/stylize", "--model=the_scream", "x.png", "--out=o.png"], {"FASTNST_MAX_PIXELS": "64M"},
     "FASTNST_MAX_PIXELS must be a positive number, got '64M'", 1),
    (["bin/train", "--config=configs/style.py:runlocal", "--workdir={t}/w", "--num_processes=0"], {},
     "--num_processes", 1),
    (["bin/train", "--config=configs/style.py:runlocal", "--workdir={t}/w", "--num_processes=2",
      "--process_id=5", "--coordinator=localhost:12345"], {}, "--process_id", 1),
    (["bin/train", "--config=configs/style.py:runlocal", "--workdir={t}/w", "--num_processes=2",
      "--process_id=0", "--coordinator=no-such-host.invalid:12345"], {}, "cannot resolve", 1),
    (["bin/train", "--config=configs/style.py:runlocal", "--workdir={t}/w", "--num_processes=2",
      "--process_id=0", "--coordinator=localhost"], {}, "HOST:PORT", 1),
    (["bin/train", "--config=configs/style.py:runlocal", "--workdir={t}/w", "--num_processes=2",
      "--process_id=0", "--coordinator=localhost:12345", "--init_timeout_s=0"], {}, "--init_timeout_s", 1),
    # nobody answers: one line after the documented bound, not JAX's native abort 5 minutes later
    (["bin/train", "--config=configs/style.py:runlocal", "--workdir={t}/w", "--num_processes=2",
      "--process_id=1", "--coordinator=localhost:{port}", "--init_timeout_s=2"], {},
     "the job did not assemble within 2 s (--init_timeout_s)", 1),
    (["bin/app", "--port=70000"], {}, "--port", 2),
    (["bin/app", "--host=no-such-host.invalid"], {}, "cannot resolve", 1),
])
def test_flags_and_environment_are_checked_before_any_work(tmp_path, args, env, match, code):
    r = run_cli(*[a.format(t=tmp_path, port=free_port()) for a in args], env=env, timeout=120)
    assert match in one_line_error(r, code)
    assert not (tmp_path / "w").exists()


def test_device_out_of_memory_is_one_line(capsys):
    from fastnst import cli

    @cli.one_line_errors
    def main():
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9 GiB")

    assert main() == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the device ran out of memory; lower --memory-budget")

    @cli.one_line_errors
    def bug():
        raise RuntimeError("some internal failure")

    with pytest.raises(RuntimeError, match="internal"):  # other runtime errors stay tracebacks: bugs
        bug()


# --------------------------------------------------------------------------- bad model files

def _blob(path):
    return serialization.msgpack_restore(Path(path).read_bytes())


def _write(tmp_path, blob, name="m.msgpack"):
    p = tmp_path / name
    p.write_bytes(serialization.msgpack_serialize(blob))
    return p


@pytest.mark.parametrize("mutate,match", [
    (lambda b: b.pop("variables"), "variables"),
    (lambda b: b.update(config=json.dumps({"task": "style", "wdith": 1})), "unknown model key"),
    (lambda b: b.update(config=json.dumps({"task": "sr", "scale": 4})), "shape|missing"),
    (lambda b: b.update(config="{not json"), "not a valid"),
    (lambda b: b.update(format="other-format"), "format"),
    (lambda b: b["variables"]["params"]["conv_in"].update(kernel="a string"), "float array"),
    (lambda b: b["variables"]["params"]["conv_in"].update(kernel=np.zeros((3, 3, 3, 32), np.float32)),
     "shape"),
    (lambda b: b["variables"]["params"].pop("conv_out"), "missing"),
    (lambda b: b["variables"]["params"]["conv_in"].update(bias=np.full(32, np.nan, np.float32)),
     "non-finite"),
])
def test_damaged_model_files_give_one_clear_error(tmp_path, mutate, match):
    blob = _blob(modelfile.resolve("the_scream"))
    mutate(blob)
    with pytest.raises(WeightsError, match=match):
        modelfile.load_model(_write(tmp_path, blob))


def test_fuzzed_model_files_never_raise_anything_but_weights_error(tmp_path):
    data = modelfile.resolve("sr_x4_pixel").read_bytes()
    rng = np.random.default_rng(0)
    outcomes = {"refused": 0, "loaded": 0}
    for i in range(60):
        b = bytearray(data)
        if i % 3 == 0:
            b = b[: int(rng.integers(0, len(b)))]
        else:
            for pos in rng.integers(0, min(len(b), 4096) if i % 3 == 1 else len(b), size=4):
                b[pos] = int(rng.integers(0, 256))
        p = tmp_path / f"f{i}.msgpack"
        p.write_bytes(bytes(b))
        try:
            m = modelfile.load_model(p)
            assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(m.variables))
            outcomes["loaded"] += 1
        except WeightsError:
            outcomes["refused"] += 1
    assert outcomes["refused"] >= 20


# --------------------------------------------------------------------------- crash leftovers

def test_time_limit_stop_logs_each_step_once_and_exports(tmp_path, weights_cache):
    """A time limit that runs out right after a log step: the stop's checkpoint must not log that
    step a second time (it once did), the model is exported, and a longer limit resumes."""
    import time

    cfg = tiny_config(tmp_path, steps=6)
    cfg.train.update(log_every=1, ckpt_every=100, time_limit_s=2.0)  # seconds need not be whole
    work = tmp_path / "run"
    first = train.train_and_evaluate(cfg, work, progress=False,
                                     on_step=lambda s, _: s == 2 and time.sleep(2.5))  # the limit passes
    assert not first.interrupted and 1 <= first.step <= 2 and first.model_path is not None  # 1: slow compile
    assert modelfile.load_model(first.model_path).meta["steps"] == first.step
    cfg.train.time_limit_s = 0  # none: a harmless change on resume
    assert train.train_and_evaluate(cfg, work, progress=False).step == 6
    steps = [json.loads(ln)["step"] for ln in (work / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_torn_metrics_line_and_pruning_leftovers_do_not_break_resume(tmp_path, weights_cache):
    cfg = tiny_config(tmp_path, steps=4)
    work = tmp_path / "run"
    first = train.train_and_evaluate(cfg, work, progress=False,
                                     on_step=lambda s, flag: setattr(flag, "set", s == 2))
    assert first.interrupted
    with open(work / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.2')  # torn by a kill mid-write
    (work / "checkpoints" / "_pruned" / "1").mkdir(parents=True)  # a kill while pruning
    result = train.train_and_evaluate(cfg, work, progress=False)
    assert result.step == 4 and not (work / "checkpoints" / "_pruned").exists()
    again = train.train_and_evaluate(cfg, work, progress=False)  # nothing left to run
    assert modelfile.load_model(again.model_path).meta["final_metrics"]["loss"] > 0


def _jax_native_code_loaded(pid: int) -> bool:
    return "jaxlib" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="watches the child through /proc (Linux)")
def test_sigterm_during_start_up_says_interrupted(tmp_path):
    """SIGTERM at three moments of start-up, each recognised from outside the child (not by a
    fixed sleep, so a slow machine tests the same moments): while jaxlib's native code is being
    imported (its shared objects appear in the child's memory map), once the config is validated
    and recorded (config.json; the VGG weights and compilation follow), and when the training loop
    starts (the progress bar's first frame; the first step compiles). A SIGTERM landing in a native
    extension's import once crashed the interpreter's teardown (exit -11)."""
    import threading
    import time

    for moment in ("native import", "config recorded", "loop started"):
        work = tmp_path / moment.replace(" ", "_")
        args = [sys.executable, "bin/train", "--config=configs/style.py:runlocal", f"--workdir={work}"]
        p = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        err = []
        reader = threading.Thread(target=lambda p=p, err=err: err.extend(iter(lambda: p.stderr.read(1), "")))
        reader.start()
        ready = {"native import": lambda p=p: _jax_native_code_loaded(p.pid),
                 "config recorded": lambda work=work: (work / "config.json").exists(),
                 "loop started": lambda err=err: "0/" in "".join(err)}[moment]
        deadline = time.monotonic() + 300
        while not ready():
            assert p.poll() is None and time.monotonic() < deadline, (moment, "".join(err)[-500:])
            time.sleep(0.01)
        p.terminate()
        p.wait(timeout=120)
        reader.join()
        out = "".join(err)
        assert p.returncode == 130 and "interrupted" in out and "Traceback" not in out, (moment, out[-500:])


@pytest.mark.slow
def test_kill_9_at_several_moments_resumes_to_bit_identical_parameters(tmp_path, weights_cache):
    cfg = tiny_config(tmp_path, steps=8)
    cfg.train.update(ckpt_every=1, log_every=1, keep=3)
    straight = train.train_and_evaluate(cfg, tmp_path / "straight", progress=False)
    work = tmp_path / "killed"
    for mode, step in (("step", 2), ("save", 3), ("log", 5)):
        args = [sys.executable, "-m", "tests.kill_driver", str(tmp_path), str(work), mode, str(step)]
        r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "JAX_PLATFORMS": "cpu"})
        assert r.returncode == -9, r.stderr[-2000:]
    resumed = train.train_and_evaluate(cfg, work, progress=False)
    a, b = modelfile.load_model(straight.model_path), modelfile.load_model(resumed.model_path)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.variables),
                                                     jax.tree.leaves(b.variables), strict=True))
    steps = [json.loads(ln)["step"] for ln in (work / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 8


def test_app_on_a_port_in_use_is_one_line(tmp_path):
    """Met while building the web app: Gradio's OSError traceback; now checked before the page."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("bin/app", f"--port={port}", timeout=120)
    assert f"cannot listen on 127.0.0.1:{port}" in one_line_error(r, 1)
