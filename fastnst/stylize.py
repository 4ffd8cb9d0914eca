"""Inference with exported models: arrays in, arrays out; files in, files out.

Used by `bin/stylize`, `bin/upscale` and the notebook. Same-size images are batched; a new size
triggers one compilation (XLA specialises on shapes).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fastnst import images
from fastnst.errors import FastnstError
from fastnst.export import Model, load_model

__all__ = ["Model", "load_model", "apply", "forward", "run_files", "FileResult", "output_path"]


@functools.partial(jax.jit, static_argnums=0)
def forward(net, variables, x):
    """The jitted inference pass of a network (compiled once per net and input shape)."""
    return net.apply(variables, x)


def apply(model: Model, batch: np.ndarray | jax.Array) -> jax.Array:
    """Runs the network on NHWC images in [0, 255]; returns NHWC in [0, 255] (x scale for SR)."""
    batch = jnp.asarray(batch, jnp.float32)
    if batch.ndim == 3:
        return forward(model.net, model.variables, batch[None])[0]
    return forward(model.net, model.variables, batch)


@dataclass
class FileResult:
    src: Path
    dst: Path | None
    seconds: float
    error: str | None = None


def output_path(src: Path, out: Path, many: bool, suffix: str) -> Path:
    """`out` itself for a single input with an image suffix, else `out/<stem><suffix>.png`."""
    if not many and out.suffix.lower() in (".png", ".jpg", ".jpeg"):
        return out
    return out / f"{src.stem}{suffix}.png"


def run_files(model: Model, inputs: Sequence[str | Path], out: str | Path, *,
              max_size: int | None = None, batch_size: int = 4, suffix: str = "",
              post=None) -> Iterator[FileResult]:
    """Processes image files (folders are expanded) and writes each result atomically.

    A bad input yields a FileResult with `error` set; the others are still processed. Images of
    the same size after `max_size` are run as one batch; `seconds` is the batch time per image.
    `post(output, input)` optionally post-processes each output (e.g. histogram matching).
    """
    files, errors = [], []
    for item in inputs:
        try:
            files += images.list_images(item)
        except FastnstError as e:
            errors.append(FileResult(Path(item), None, 0.0, str(e)))
    yield from errors
    out = Path(out)
    many = len(files) > 1 or any(Path(i).is_dir() for i in inputs)
    groups: dict[tuple, list] = {}
    for f in files:
        try:
            im = images.resize_max_side(images.load_image(f), max_size)
        except FastnstError as e:
            yield FileResult(f, None, 0.0, str(e))
            continue
        groups.setdefault(im.shape, []).append((f, im))
    for group in groups.values():
        for i in range(0, len(group), batch_size):
            chunk = group[i: i + batch_size]
            t = time.perf_counter()
            y = np.asarray(apply(model, np.stack([im for _, im in chunk])))
            dt = (time.perf_counter() - t) / len(chunk)
            for (f, im), o in zip(chunk, y, strict=True):
                dst = output_path(f, out, many, suffix)
                try:
                    images.save_image(dst, post(o, im) if post else o)
                    yield FileResult(f, dst, dt)
                except (FastnstError, OSError) as e:
                    yield FileResult(f, None, dt, str(e))
