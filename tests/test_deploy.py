"""Exported models run without fastnst and give the same pixels: onnxruntime and jax.export."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fastnst import deploy, export, stylize

SIZES = ((45, 61), (64, 64), (101, 77))  # odd, square, taller than wide
ROOT = Path(__file__).resolve().parents[1]


def _inputs():
    rng = np.random.default_rng(0)
    return [rng.uniform(0, 255, (1, *hw, 3)).astype(np.float32) for hw in SIZES]


@pytest.mark.parametrize("name", export.available())
def test_onnx_matches_fastnst_for_every_shipped_model(name, tmp_path):
    m = export.load_model(name)
    path = deploy.to_onnx(m, tmp_path / f"{name}.onnx")
    proto = onnx.load(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["layout"] == "NHWC" and meta["range"] == "0..255" and meta["opset"] == str(deploy.OPSET)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    half = ort.InferenceSession(str(deploy.to_onnx(m, tmp_path / "h.onnx", dtype="float16")),
                                providers=["CPUExecutionProvider"])
    assert (tmp_path / "h.onnx").stat().st_size < 0.6 * path.stat().st_size
    for x in _inputs():
        ref = np.asarray(stylize.apply(m, x))
        y = sess.run(None, {"image": x})[0]
        assert y.shape == ref.shape and np.abs(y - ref).max() <= 0.5
        assert np.abs(half.run(None, {"image": x})[0] - ref).max() <= 0.5


@pytest.mark.parametrize("name", ["the_scream", "sr_x4_feature"])
def test_jax_export_runs_with_plain_jax(name, tmp_path):
    m = export.load_model(name)
    path = deploy.to_jax(m, tmp_path / "m.jaxexport")
    # a fresh interpreter that never imports fastnst
    code = ("import sys, numpy as np, jax; from jax import export; "
            "e = export.deserialize(open(sys.argv[1], 'rb').read()); "
            "assert 'fastnst' not in sys.modules; "
            "xs = [np.load(sys.argv[2])[k] for k in ('a', 'b', 'c')]; "
            "np.savez(sys.argv[3], *[np.asarray(e.call(x)) for x in xs])")
    xs = _inputs()
    np.savez(tmp_path / "in.npz", a=xs[0], b=xs[1], c=np.concatenate([xs[2], xs[2][:, ::-1]]))
    args = [sys.executable, "-c", code, str(path), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    outs = np.load(tmp_path / "out.npz")
    for i, x in enumerate((xs[0], xs[1], np.concatenate([xs[2], xs[2][:, ::-1]]))):
        ref = np.asarray(stylize.apply(m, x))
        assert np.abs(outs[f"arr_{i}"] - ref).max() <= 0.5


def test_export_cli_errors_are_one_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "bin/export", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)

    for args, code, match in ((["--model=nope", "--format=onnx", f"--out={tmp_path}/m.onnx"], 1, "nope"),
                              (["--model=the_scream", "--format=tflite", f"--out={tmp_path}/m"], 2, "format"),
                              (["--model=the_scream", "--format=onnx", f"--out={tmp_path}"], 1, "folder")):
        r = run(*args)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == code and len(lines) == 1 and match in lines[0], r.stderr
    assert not list(tmp_path.iterdir())
