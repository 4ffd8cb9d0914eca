"""Exported models run without fastnst and give the same pixels: onnxruntime and jax.export."""

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fastnst import export, modelfile, stylize
from tests.helpers import one_line_error, run_cli

SIZES = ((45, 61), (64, 64), (101, 77))  # odd, square, taller than wide
ROOT = Path(__file__).resolve().parents[1]


# Bounds on 0..255 (docs/testing.md, results/tolerances.json): both runtimes compute the same float32
# network with their own kernels, so they differ by float32 rounding. Measured max |diff| against
# stylize.apply on this CPU over the shipped models and SIZES: ONNX 7.5e-4 (float32 and float16
# weights alike: the shipped weights are float16 values), jax.export (in a fresh interpreter)
# 7.3e-4. Bounds: 4x that, the margin docs/testing.md derives for other CPUs.
ONNX_MAX_DIFF = 3e-3
JAX_EXPORT_MAX_DIFF = 3e-3


def _inputs():
    rng = np.random.default_rng(0)
    return [rng.uniform(0, 255, (1, *hw, 3)).astype(np.float32) for hw in SIZES]


def onnx_sessions(m, tmp_path) -> dict:
    """onnxruntime sessions of `m` exported with float32 and float16 weights."""
    return {dt: ort.InferenceSession(str(export.to_onnx(m, tmp_path / f"m.{dt}.onnx", dtype=dt)),
                                     providers=["CPUExecutionProvider"]) for dt in ("float32", "float16")}


def run_exported_in_plain_jax(m, tmp_path, xs) -> list[np.ndarray]:
    """Writes `m` with jax.export and runs it on `xs` in a fresh interpreter that never imports fastnst."""
    path = export.to_jax(m, tmp_path / "m.jaxexport")
    code = ("import sys, numpy as np, jax; from jax import export; "
            "e = export.deserialize(open(sys.argv[1], 'rb').read()); "
            "assert 'fastnst' not in sys.modules; "
            "xs = np.load(sys.argv[2]); "
            "np.savez(sys.argv[3], *[np.asarray(e.call(xs[k])) for k in xs.files])")
    np.savez(tmp_path / "in.npz", *xs)
    r = run_cli("-c", code, path, tmp_path / "in.npz", tmp_path / "out.npz", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    outs = np.load(tmp_path / "out.npz")
    return [outs[f"arr_{i}"] for i in range(len(xs))]


@pytest.mark.parametrize("name", modelfile.available())
def test_onnx_matches_fastnst_for_every_shipped_model(name, tmp_path):
    m = modelfile.load_model(name)
    sessions = onnx_sessions(m, tmp_path)
    proto = onnx.load(tmp_path / "m.float32.onnx")
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["layout"] == "NHWC" and meta["range"] == "0..255" and meta["opset"] == str(export.OPSET)
    assert (tmp_path / "m.float16.onnx").stat().st_size < 0.6 * (tmp_path / "m.float32.onnx").stat().st_size
    opencv = cv2.dnn.readNetFromONNX(str(tmp_path / "m.float32.onnx"))  # a third runtime
    for x in _inputs():
        ref = np.asarray(stylize.apply(m, x))
        for dtype, sess in sessions.items():
            y = sess.run(None, {"image": x})[0]
            assert y.shape == ref.shape and np.abs(y - ref).max() <= ONNX_MAX_DIFF, dtype
        opencv.setInput(x)
        y = opencv.forward()  # NaN where the output saturated, before the Clip ahead of Tanh
        assert y.shape == ref.shape and not np.isnan(y).any() and np.abs(y - ref).max() <= ONNX_MAX_DIFF


@pytest.mark.parametrize("name", ["the_scream", "sr_x4_feature"])
def test_jax_export_runs_with_plain_jax(name, tmp_path):
    m = modelfile.load_model(name)
    xs = _inputs()
    xs[2] = np.concatenate([xs[2], xs[2][:, ::-1]])  # a batch of two: polymorphic in the batch too
    for x, y in zip(xs, run_exported_in_plain_jax(m, tmp_path, xs), strict=True):
        ref = np.asarray(stylize.apply(m, x))
        assert y.shape == ref.shape and np.abs(y - ref).max() <= JAX_EXPORT_MAX_DIFF


def test_export_cli_errors_are_one_line(tmp_path):
    mine = tmp_path / "mine.msgpack"
    mine.write_bytes(modelfile.resolve("the_scream").read_bytes())
    out, converted = tmp_path / "out", mine.with_suffix(".onnx")
    for args, code, match in ((["--model=nope", "--format=onnx", f"--out={out}/m.onnx"], 1, "nope"),
                              (["--model=the_scream", "--format=tflite", f"--out={out}/m"], 2, "format"),
                              (["--model=the_scream", "--format=onnx", f"--out={tmp_path}"], 1, "folder"),
                              (["--model=the_scream", "--format=jax", f"--out={out}/m.onnx"], 1, "jaxexport"),
                              (["--model=the_scream", "--format=onnx", f"--out={out}/m.msgpack"], 1, ".onnx"),
                              ([f"--model={mine}", "--format=onnx", f"--out={converted}"], 0, ""),
                              ([f"--model={converted}", "--format=onnx", f"--out={converted}"], 1,
                               "would overwrite an input")):
        r = run_cli("bin/export", *args, timeout=300)
        if code:
            assert match in one_line_error(r, code), args
        else:
            assert r.returncode == 0, r.stderr[-1000:]
    assert not out.exists()
    assert mine.read_bytes() == modelfile.resolve("the_scream").read_bytes()


@pytest.mark.parametrize("model", [
    {"task": "style"},  # the paper's default: batch norm, transposed convolutions, one big padding
    {"task": "style", "norm": "instance", "upsample": "resize_conv", "padding": "reflect_same"},
    {"task": "sr", "scale": 4},  # the paper's SR network
], ids=["style_paper", "style_instance_reflect", "sr_x4_paper"])
def test_onnx_matches_fastnst_for_the_papers_networks(model, tmp_path):
    """Networks no shipped model uses, at random weights with non-trivial batch-norm statistics
    (a running mean and variance far from 0 and 1, so a norm exported as the wrong kind fails):
    onnxruntime gives fastnst's pixels, within the same bound as the shipped models."""
    import jax

    from fastnst import nets

    config = nets.model_config({**model, "width": 0.25})
    net = nets.build(config)
    variables = nets.init(net, jax.random.key(3), scale=config["scale"] if config["task"] == "sr" else 1)
    rng = np.random.default_rng(0)
    if "batch_stats" in variables:
        variables["batch_stats"] = jax.tree.map(
            lambda a: rng.uniform(0.5, 2.0, a.shape).astype(np.float32), variables["batch_stats"])
    m = modelfile.Model(config, variables, {})
    sess = ort.InferenceSession(str(export.to_onnx(m, tmp_path / "m.onnx")),
                                providers=["CPUExecutionProvider"])
    for x in _inputs()[:2]:
        x = x[:, :32, :40] if config["task"] == "sr" else x
        ref = np.asarray(stylize.apply(m, x))
        y = sess.run(None, {"image": x})[0]
        assert y.shape == ref.shape and np.abs(y - ref).max() <= ONNX_MAX_DIFF
        assert ref.std() > 1.0  # (an output that is not flat: the comparison means something)
