"""Speed tables: the paper's Table 1 on whatever device JAX finds, plus throughput and peer ratios.

Every timing compiles first (compile time is reported separately), makes one warm-up call, then
times `repeats` calls, each forced with `block_until_ready`; we report the median and min-max.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fastnst import gatys, losses, nets, perceptual, vgg

PAPER_STYLE = dict(norm="batch", upsample="transpose", padding="paper")
# The architecture of shared/peers/torch_peer.py (instance norm, reflection padding at every
# conv, nearest-neighbour upsampling + conv), for like-for-like ratios.
PEER_STYLE = dict(norm="instance", upsample="resize_conv", padding="reflect_same")
LBFGS_COUNTS = (100, 300, 500)


def device_info() -> dict:
    """What the numbers were measured on."""
    d = jax.devices()[0]
    return {"platform": d.platform, "device": d.device_kind, "jax": jax.__version__,
            "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()}


def peak_memory_bytes() -> int | None:
    """Peak device memory so far, where the backend reports it (GPUs/TPUs; not the CPU)."""
    stats = jax.devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def measure(call: Callable[[], object], *, repeats: int, compile_s: float) -> dict:
    """One warm-up `call()`, then `repeats` timed ones, each blocked until ready."""
    jax.block_until_ready(call())
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(call())
        runs.append(time.perf_counter() - t)
    return {"median_s": statistics.median(runs), "min_s": min(runs), "max_s": max(runs),
            "repeats": repeats, "compile_s": compile_s}


def _compile(jitted, *args, **static):
    t = time.perf_counter()
    compiled = jitted.lower(*args, **static).compile()
    return compiled, time.perf_counter() - t


def _image(size: int, batch: int = 1, seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (batch, size, size, 3), jnp.float32, 0, 255)


def feedforward(size: int, *, batch: int = 1, variant=PAPER_STYLE, repeats: int = 5) -> dict:
    """Inference time of the style network (eval mode) on a [batch, size, size, 3] input."""
    net = nets.style_net(**variant)
    variables = nets.init(net, jax.random.key(0))
    x = _image(size, batch)
    compiled, c = _compile(jax.jit(net.apply), variables, x)
    return measure(lambda: compiled(variables, x), repeats=repeats, compile_s=c)


def train_step(loss: Mapping, size: int = 256, batch: int = 4, *, variant=PAPER_STYLE,
               repeats: int = 5, networks: int = 1) -> dict:
    """Time of one training step as training runs it: `train.train_and_evaluate` itself (data
    pipeline, the sharded jitted step, logging and divergence checks) on synthetic photos, with the
    objective `loss` (a `config.loss` block) and the network `variant`.

    The run takes 2 x `repeats` steps with a log line every `repeats`: the first interval holds
    the compilation, the second is `repeats` steady steps; `median_s` is their mean (the loop
    reports no single steps), `compile_s` the first interval less `repeats` steady steps.
    `networks` > 1 trains that many networks side by side (each towards its own style image).
    """
    from fastnst import images, train

    with tempfile.TemporaryDirectory(prefix="fastnst-bench-") as tmp:
        styles = [str(images.save_image(Path(tmp) / f"style{k}.png", np.asarray(_image(size, seed=2 + k)[0])))
                  for k in range(networks)]
        config = {"seed": 0, "style_image": styles[0], "style_size": size,
                  "style_images": tuple(styles) if networks > 1 else (),
                  "model": {"task": "style", **variant}, "data": {"source": "synthetic", "workers": 2},
                  "loss": dict(loss),
                  "train": dict(batch_size=batch, image_size=size, steps=2 * repeats, lr=1e-3,
                                log_every=repeats, ckpt_every=2 * repeats, keep=1, sample_every=0)}
        t0 = time.perf_counter()
        train.train_and_evaluate(config, Path(tmp) / "run", progress=False)
        total = time.perf_counter() - t0
        rows = [json.loads(ln) for ln in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    first, steady = (batch * repeats / r["images_per_s"] for r in rows[:2])
    return {"median_s": steady / repeats, "min_s": steady / repeats, "max_s": steady / repeats,
            "repeats": repeats, "compile_s": max(first - steady, 0.0), "run_s": total}


def lbfgs(spec: losses.LossSpec, size: int, counts=LBFGS_COUNTS, *, vgg_params, repeats: int = 1) -> dict:
    """{n: measure(...)} for n projected L-BFGS iterations of objective `spec` from noise at size²."""
    content, style = np.asarray(_image(size)[0]), np.asarray(_image(size, seed=2)[0])
    cf, sg = perceptual.targets(spec, vgg_params, content, style)
    x0 = gatys.initial_image("noise", (size, size), content=None, key=jax.random.key(0))
    out = {}
    for n in counts:
        compiled, c = _compile(gatys.run, x0, vgg_params, cf, sg, spec=spec, iters=n)
        out[n] = measure(lambda f=compiled: f(x0, vgg_params, cf, sg), repeats=repeats, compile_s=c)
    return out


def table1(spec: losses.LossSpec, sizes=(256, 512, 1024), *, quick: int = 0, repeats: int = 3,
           vgg_params=None) -> list:
    """Rows of the paper's Table 1: L-BFGS at 100/300/500 iterations vs the feed-forward net.

    With `quick=n`, runs of n and 2n iterations are timed and each column is extrapolated as
    t(n) + (count - n) * (t(2n) - t(n)) / n: the first iterations (whose line searches take many
    evaluations from noise) are measured, the steady per-iteration cost is the later one
    (marked estimated).
    """
    vgg_params = vgg_params or vgg.random_params()
    rows = []
    for size in sizes:
        ff = feedforward(size, repeats=repeats)
        row = {"size": size, "feedforward_s": ff["median_s"], "feedforward_min_s": ff["min_s"],
               "feedforward_max_s": ff["max_s"], "feedforward_compile_s": ff["compile_s"],
               "lbfgs_estimated": bool(quick)}
        if quick:
            r = lbfgs(spec, size, (quick, 2 * quick), vgg_params=vgg_params)
            first, both = r[quick]["median_s"], r[2 * quick]["median_s"]
            per_iter = max(both - first, 0.0) / quick
            row.update({"lbfgs_iters_measured": 2 * quick, "lbfgs_compile_s": r[quick]["compile_s"],
                        "lbfgs_s_per_iter": per_iter})
            for n in LBFGS_COUNTS:
                row[f"lbfgs_{n}_s"] = first + (n - quick) * per_iter
        else:
            r = lbfgs(spec, size, LBFGS_COUNTS, vgg_params=vgg_params)
            for n in LBFGS_COUNTS:
                row[f"lbfgs_{n}_compile_s"] = r[n]["compile_s"]
                row[f"lbfgs_{n}_s"] = r[n]["median_s"]
            row["lbfgs_s_per_iter"] = row["lbfgs_500_s"] / 500
        for n in LBFGS_COUNTS:
            row[f"speedup_{n}"] = row[f"lbfgs_{n}_s"] / row["feedforward_s"]
        rows.append(row)
    return rows


def peer(task: str, peer_path: str, **kwargs) -> dict | None:
    """Runs shared/peers/torch_peer.py (needs torch) and returns its JSON line, or None."""
    args = [sys.executable, peer_path, task] + [f"--{k}={v}" for k, v in kwargs.items()]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=1800, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, json.JSONDecodeError, IndexError, OSError) as e:
        print(f"peer {task} failed: {e}", file=sys.stderr)
        return None


def run(loss: Mapping, *, quick: int = 0, sizes=(256, 512, 1024), repeats: int = 3,
        peer_path: str | None = None, train_repeats: int = 5, onnx: bool = False) -> dict:
    """Everything `bin/bench` reports, as one JSON-able dict; `loss` is the style objective's
    `config.loss` block (bin/bench takes it from fastnst.configs/style.py)."""
    spec = losses.LossSpec.from_config(loss)
    vgg_params = vgg.load_params()
    res = {"device": device_info(), "quick": quick, "table1": table1(
        spec, sizes, quick=quick, repeats=repeats, vgg_params=vgg_params)}
    ts = train_step(loss, repeats=train_repeats)
    res["train"] = {"batch": 4, "size": 256, **ts, "steps_per_s": 1 / ts["median_s"],
                    "images_per_s": 4 / ts["median_s"]}
    res["inference"] = []
    for b in (1, 4, 8):
        r = feedforward(256, batch=b, repeats=repeats)
        res["inference"].append({"batch": b, "size": 256, **r, "images_per_s": b / r["median_s"]})
    if peer_path:
        res["peer"] = _peer_comparison(loss, peer_path, repeats)
    if onnx:
        res["onnx"] = onnx_vs_fastnst(repeats=repeats)
    res["peak_memory_bytes"] = peak_memory_bytes()
    return res


def _peer_comparison(loss: Mapping, peer_path: str, repeats: int) -> dict:
    """Like-for-like ratios against the PyTorch peer (ours / theirs: below 1 means faster)."""
    out = {}
    ours = {"stylize_512": feedforward(512, variant=PEER_STYLE, repeats=repeats)["median_s"],
            "stylize_512_paper_net": feedforward(512, repeats=repeats)["median_s"],
            "train_step_4x256": train_step(loss, variant=PEER_STYLE, repeats=max(repeats, 3))["median_s"]}
    theirs = {"stylize_512": peer("stylize", peer_path, size=512, repeats=repeats),
              "train_step_4x256": peer("train-step", peer_path, size=256, batch=4, repeats=repeats),
              "lbfgs_256_per_eval": peer("lbfgs", peer_path, size=256, iters=20, repeats=2)}
    for k, v in ours.items():
        ref = theirs.get(k.replace("_paper_net", ""))
        out[k] = {"fastnst_s": v, "peer_s": ref and ref["median_s"],
                  "ratio": ref and v / ref["median_s"]}
    out["lbfgs_256_per_eval"] = {"peer_s": theirs["lbfgs_256_per_eval"] and
                                 theirs["lbfgs_256_per_eval"]["median_s"]}
    return out


def markdown(res: dict) -> str:
    """The bench results as Markdown tables."""
    d = res["device"]
    lines = [f"Device: {d['device']} ({d['platform']}), jax {d['jax']}, {d['cpus']} host CPUs.", ""]
    if res["quick"]:
        q = res["quick"]
        lines += [f"L-BFGS columns estimated (`--quick={q}`): runs of {q} and {2 * q} iterations "
                  f"timed, each column = t({q}) + (count - {q}) x the per-iteration time of "
                  f"iterations {q + 1}-{2 * q}.", ""]
    lines += ["| size | L-BFGS 100 | L-BFGS 300 | L-BFGS 500 | feed-forward | speed-up "
              "100 / 300 / 500 |", "|---|---|---|---|---|---|"]
    for r in res["table1"]:
        lines.append(
            f"| {r['size']}² | {r['lbfgs_100_s']:.2f} s | {r['lbfgs_300_s']:.2f} s | "
            f"{r['lbfgs_500_s']:.2f} s | {r['feedforward_s'] * 1000:.1f} ms "
            f"({r['feedforward_min_s'] * 1000:.1f}-{r['feedforward_max_s'] * 1000:.1f}) | "
            f"{r['speedup_100']:.0f}x / {r['speedup_300']:.0f}x / {r['speedup_500']:.0f}x |")
    t = res["train"]
    lines += ["", f"Training step 4x256² (the training loop itself, mean of {t['repeats']} steps): "
              f"{t['median_s'] * 1000:.1f} ms ({t['steps_per_s']:.2f} steps/s, {t['images_per_s']:.1f} "
              f"images/s; compile {t['compile_s']:.1f} s).", "", "| inference 256², batch | ms | images/s |",
              "|---|---|---|"]
    for r in res["inference"]:
        lines.append(f"| {r['batch']} | {r['median_s'] * 1000:.1f} | {r['images_per_s']:.1f} |")
    if res.get("peer"):
        lines += ["", "| vs PyTorch peer (same machine) | fastnst | peer | ratio |", "|---|---|---|---|"]
        for k, v in res["peer"].items():
            if v.get("fastnst_s") is not None:
                ratio = f"{v['ratio']:.2f}" if v["ratio"] else "n/a"
                peer_s = f"{v['peer_s'] * 1000:.0f} ms" if v["peer_s"] else "n/a"
                lines.append(f"| {k} | {v['fastnst_s'] * 1000:.0f} ms | {peer_s} | {ratio} |")
    if res.get("onnx"):
        o = res["onnx"]
        lines += ["", f"ONNX ({o['model']}, {o['size']}², CPU): onnxruntime "
                  f"{o['onnxruntime_s'] * 1000:.0f} ms, fastnst {o['fastnst_s'] * 1000:.0f} ms, "
                  f"ratio {o['ratio']:.2f} (onnxruntime / fastnst)."]
    if res.get("peak_memory_bytes"):
        lines += ["", f"Peak device memory: {res['peak_memory_bytes'] / 2**30:.2f} GiB."]
    return "\n".join(lines) + "\n"


def csv(res: dict) -> str:
    """Table 1 rows as CSV."""
    keys = sorted({k for r in res["table1"] for k in r})
    return ",".join(keys) + "\n" + "".join(
        ",".join(str(r.get(k, "")) for k in keys) + "\n" for r in res["table1"])


def write(res: dict, folder: str | Path) -> Path:
    """Writes bench.json, bench.md and bench.csv into `folder`."""
    from fastnst.images import atomic_write_bytes

    folder = Path(folder)
    atomic_write_bytes(folder / "bench.json", json.dumps(res, indent=2).encode())
    atomic_write_bytes(folder / "bench.md", markdown(res).encode())
    atomic_write_bytes(folder / "bench.csv", csv(res).encode())
    return folder


def onnx_vs_fastnst(model_name: str = "the_scream", size: int = 512, repeats: int = 5) -> dict:
    """Inference at size² on the CPU: onnxruntime running the exported ONNX graph vs fastnst
    (`stylize.forward`), in the same process (ratio = onnxruntime / fastnst: below 1 means
    onnxruntime is faster)."""
    import tempfile

    from fastnst.errors import need

    ort = need("onnxruntime", "deploy", "the ONNX benchmark")

    from fastnst import export, modelfile, stylize

    m = modelfile.load_model(model_name)
    x = np.asarray(_image(size))
    with tempfile.TemporaryDirectory() as d:
        path = export.to_onnx(m, Path(d) / "m.onnx")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        t = time.perf_counter()
        sess.run(None, {"image": x})
        ort_first = time.perf_counter() - t
        ort_r = measure(lambda: sess.run(None, {"image": x}), repeats=repeats, compile_s=ort_first)
    t = time.perf_counter()
    jax.block_until_ready(stylize.forward(m.net, m.variables, jnp.asarray(x)))
    ours = measure(lambda: stylize.forward(m.net, m.variables, jnp.asarray(x)), repeats=repeats,
                   compile_s=time.perf_counter() - t)
    return {"model": model_name, "size": size, "onnxruntime_s": ort_r["median_s"],
            "fastnst_s": ours["median_s"], "ratio": ort_r["median_s"] / ours["median_s"],
            "threads": os.cpu_count()}


def write_json(res: dict, folder: str | Path, name: str) -> Path:
    """Writes one result document as `folder/name.json`."""
    from fastnst.images import atomic_write_bytes

    return atomic_write_bytes(Path(folder) / f"{name}.json", json.dumps(res, indent=2).encode())
