"""Measures the float32 spreads that the tests' tolerances are derived from (docs/testing.md).

    .venv/bin/python -m tests.measure_tolerances --out=results/tolerances.json

A comparison with stored numbers (or between two code paths) is only as exact as float32 rounding
of that computation: XLA picks other kernels, blockings and fusions on another CPU, and each sums in
another order. One machine cannot produce another CPU's kernels, but it can produce other summation
orders of the same computation, and their spread is the yardstick:

- `batch`: the image alone vs the same image inside a batch of 4 (other convolution blocking);
- `nojit`: the jitted forward vs op-by-op execution (`jax.disable_jit`, no fusion);
- `opt`: the tests' setting (`jax_disable_most_optimizations`) vs full XLA optimisation;
- `isa`: native vector width vs `XLA_FLAGS=--xla_cpu_max_isa=SSE4_2` (narrower vectors);
- the tiled, ONNX and jax.export paths against `stylize.apply` (what the tests bound).

Each figure is the max |diff| on the 0..255 output scale.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REF = Path(__file__).parent / "data" / "shipped_outputs_v1.npz"
MODELS = ("starry_night", "sr_x4_feature", "sr_x4_pixel")  # the shipped files still in format v1


def _child(out: str, optimise: bool) -> None:
    """Writes every shipped model's output on the reference inputs under this process's settings."""
    import jax

    jax.config.update("jax_disable_most_optimizations", not optimise)
    from fastnst import modelfile, stylize

    ref = np.load(REF)
    outs = {}
    for name in MODELS:
        m = modelfile.load_model(name)
        x = ref["input_style"] if m.config["task"] == "style" else ref["input_sr"]
        outs[name] = np.asarray(stylize.apply(m, x))
        others = np.random.default_rng(1).uniform(0, 255, (3, *x.shape[1:])).astype(np.float32)
        outs[name + "/batch"] = np.asarray(stylize.apply(m, np.concatenate([others[:1], x, others[1:]])))[1:2]
        with jax.disable_jit():
            outs[name + "/nojit"] = np.asarray(m.net.apply(m.variables, jax.numpy.asarray(x)))
    np.savez(out, **outs)


def _run_child(tmp: Path, tag: str, optimise: bool, isa: str | None) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if isa:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_cpu_max_isa={isa}".strip()
    path = tmp / f"{tag}.npz"
    subprocess.run([sys.executable, "-m", "tests.measure_tolerances", "--child", str(path)]
                   + (["--optimise"] if optimise else []), cwd=ROOT, env=env, check=True)
    return dict(np.load(path))


def _maxdiff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def shipped_reference(tmp: Path) -> dict:
    """Spreads behind tests/test_nets.py::test_shipped_v1_files_migrate_to_identical_outputs."""
    ref = np.load(REF)
    runs = {"tests": _run_child(tmp, "tests", False, None), "opt": _run_child(tmp, "opt", True, None),
            "isa": _run_child(tmp, "isa", False, "SSE4_2")}
    rows = {}
    for name in MODELS:
        base = runs["tests"][name]
        rows[name] = {"stored_vs_here": _maxdiff(base, ref[name]),
                      "batch": _maxdiff(runs["tests"][name + "/batch"], base),
                      "nojit": _maxdiff(runs["tests"][name + "/nojit"], base),
                      "opt": _maxdiff(runs["opt"][name], base),
                      "isa": _maxdiff(runs["isa"][name], base)}
        rows[name]["spread"] = max(v for k, v in rows[name].items() if k != "stored_vs_here")
    return rows


def tiling_cases() -> dict:
    """tiled vs whole for the cases of tests/test_tiling.py, each also under full optimisation."""
    import jax

    from fastnst import stylize
    from tests import test_tiling as t

    rows = {}
    for optimise in (False, True):
        jax.config.update("jax_disable_most_optimizations", not optimise)
        jax.clear_caches()
        for task, norm, size, tile, opts in t.CASES:
            m = t._model(task, norm, **opts)
            x = t._photo(*size)
            whole, tiled = t.whole_and_tiled(m, x, tile)
            key = (f"{task}/{norm}/{size[0]}x{size[1]}/tile{tile}" + "".join(f"/{v}" for v in opts.values())
                   + ("/opt" if optimise else ""))
            rows[key] = {"max": _maxdiff(tiled, whole), "mean": float(np.abs(tiled - whole).mean())}
        for task, opts, size, tile in t.TRIM_CASES:  # batch norm, every layer trimmed (fastnst/trim.py)
            whole, tiled = t.whole_and_tiled(t._model(task, "batch", **opts), t._photo(*size), tile)
            key = (f"{task}/batch/{size[0]}x{size[1]}/tile{tile}/trimmed"
                   + "".join(f"/{v}" for v in opts.values()) + ("/opt" if optimise else ""))
            rows[key] = {"max": _maxdiff(tiled, whole), "mean": float(np.abs(tiled - whole).mean())}
        m = t._model("style", "batch")
        big, budget, ref = t.over_budget_case(m)
        tiled = np.asarray(stylize.apply(m, big, budget=budget))
        rows["style/batch/360x280/budget" + ("/opt" if optimise else "")] = {
            "max": _maxdiff(tiled, ref), "mean": float(np.abs(tiled - ref).mean())}
    jax.config.update("jax_disable_most_optimizations", True)
    jax.clear_caches()
    return rows


def deploy_cases(tmp: Path) -> dict:
    """ONNX (float32 and float16 weights) and jax.export (run in a fresh interpreter, as the test
    does) vs stylize.apply, on the inputs of tests/test_export.py."""
    from fastnst import modelfile, stylize
    from tests import test_export as t

    rows = {}
    for name in modelfile.available():
        m = modelfile.load_model(name)
        sessions = t.onnx_sessions(m, tmp)
        xs = t._inputs()
        refs = [np.asarray(stylize.apply(m, x)) for x in xs]
        row = {f"onnx_{dt}": max(_maxdiff(s.run(None, {"image": x})[0], r)
                                 for x, r in zip(xs, refs, strict=True)) for dt, s in sessions.items()}
        exported = t.run_exported_in_plain_jax(m, tmp, xs)
        row["jax_export"] = max(_maxdiff(y, r) for y, r in zip(exported, refs, strict=True))
        rows[name] = row
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/tolerances.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--optimise", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        _child(a.child, a.optimise)
        return
    import tempfile

    import jax

    jax.config.update("jax_disable_most_optimizations", True)  # the tests' setting (tests/conftest.py)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result = {"command": "python -m tests.measure_tolerances --out=" + a.out,
                  "machine": {"cpu": _cpu(), "python": platform.python_version(), "jax": jax.__version__},
                  "shipped_reference": shipped_reference(tmp), "tiling": tiling_cases(),
                  "deploy": deploy_cases(tmp)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
