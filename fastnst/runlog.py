"""What a training run leaves for people to read: `metrics.jsonl`, the progress bar, sample
images of held-out photos and the loss curves."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fastnst import augment, images, nets, stylize
from fastnst.errors import FastnstError


def write_json(path: Path, obj) -> None:
    images.atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode())


def read_metrics(path: Path) -> list[dict]:
    """The log lines of `metrics.jsonl`; a torn line (a kill mid-write) is skipped."""
    rows = []
    if path.is_file():
        for ln in path.read_text().splitlines():
            try:
                rows.append(json.loads(ln))
            except json.JSONDecodeError:
                continue
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("step"), int)]


def last_metrics(workdir: Path) -> dict:
    """The losses of the last logged line (without step, rate and file counts)."""
    rows = read_metrics(workdir / "metrics.jsonl")
    return {k: v for k, v in (rows[-1] if rows else {}).items()
            if k not in ("step", "images_per_s", "bad_files")}


def truncate_metrics(workdir: Path, step: int) -> None:
    """On resume, forget log lines written after the checkpoint we resume from (and torn ones)."""
    path = workdir / "metrics.jsonl"
    if path.is_file():
        keep = [r for r in read_metrics(path) if r["step"] <= step]
        images.atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in keep).encode())


def log(workdir: Path, step: int, metrics: dict, rate: float, bad: int, bar) -> None:
    """Appends one line to `metrics.jsonl` and shows it on the progress bar."""
    line = {"step": step, **{k: round(v, 6) for k, v in metrics.items()},
            "images_per_s": round(rate, 3), "bad_files": bad}
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()} | {"img/s": f"{rate:.2f}"},
                    refresh=False)


def progress(enabled: bool, start: int, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, dynamic_ncols=True, unit="step")


def sample_inputs(source, scale: int, size: int = 256) -> list[np.ndarray]:
    """Held-out images (never trained on), at most 256 px (HR side for SR), as inputs."""
    out = []
    for item in source.heldout[:4]:
        try:
            im = images.load_image(item) if isinstance(item, str | Path) else item
        except FastnstError:
            continue
        im = images.resize_max_side(im, size)
        out.append(augment.degrade(im, scale) if scale > 1 else im)
    return out


def write_samples(workdir: Path, step: int, net, variables: list, samples) -> None:
    """Every held-out photo through every network (`variables`: one per network trained side by
    side) in a row; a multi-style net: the first photo in every style."""
    if nets.is_multistyle(net):
        outs = [np.asarray(stylize.forward(net, variables[0], jnp.asarray(samples[0][None]),
                                           nets.style_weights(net, i)))[0] for i in range(net.num_styles)]
    else:
        outs = [np.asarray(stylize.forward(net, v, jnp.asarray(s[None])))[0]
                for v in variables for s in samples]
    images.save_image(workdir / "samples" / f"step_{step:07d}.png",
                      images.side_by_side(outs, height=192))


def per_network(metrics: dict, names) -> dict:
    """Metrics of networks trained side by side (each value [M]) as floats: `loss` (their sum,
    the objective of the joint step) and `<name>/<part>` per network."""
    host = jax.device_get(metrics)
    out = {"loss": float(np.sum(host["loss"]))}
    for i, name in enumerate(names):
        out.update({f"{name}/{k}": float(v[i]) for k, v in host.items()})
    return out


def plot_losses(workdir: Path) -> None:
    from fastnst import plots

    rows = read_metrics(workdir / "metrics.jsonl")
    # side by side: each network's total only (its parts are in metrics.jsonl)
    rows = [{k: v for k, v in r.items() if "/" not in k or k.endswith("/loss")} for r in rows]
    if rows:
        plots.loss_curves(rows, workdir / "loss_curve.png")
