"""Inference with exported models: arrays in, arrays out; files in, files out.

Used by `bin/stylize`, `bin/upscale`, the demo and the notebook. `apply` runs a batch whole when
it fits the memory budget and tile by tile otherwise (`tiling`), so any image size works. Same-size
images are batched; a new size triggers one compilation (XLA specialises on shapes). Colour
preservation and style strength are post-processing of the network's output (`finish`).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
from skimage import color

from fastnst import images, nets, tiling
from fastnst.errors import ConfigError, FastnstError
from fastnst.modelfile import Model, load_model

__all__ = ["Model", "load_model", "apply", "forward", "finish", "preserve_color", "blend",
           "finisher", "run_files", "iter_files", "plan_outputs", "FileResult"]


@functools.partial(jax.jit, static_argnums=0)
def forward(net, variables, x, style=None):
    """The jitted inference pass of a network (compiled once per net and input shape); `style`:
    the style weights of a multi-style net."""
    return net.apply(variables, x, style=style)


def apply(model: Model, batch: np.ndarray | jax.Array, *, budget: int | None = None,
          uint8: bool = False) -> jax.Array | np.ndarray:
    """Runs the network on NHWC (or HWC) images in [0, 255] (float, or uint8 as decoded); returns
    them in [0, 255] (x scale for SR), float32, or with `uint8` rounded as `images.to_uint8` rounds
    them (as they will be saved; a tiled image's output then takes a quarter of the memory).

    The batch runs whole when it fits `budget` bytes of working memory (default
    `tiling.default_budget()`), else image by image, and images that do not fit alone run stage
    by stage in windows (`tiling.apply_tiled`); all give the same result.

    Raises:
      ConfigError: the budget is too small for even one window.
    """
    x = batch if isinstance(batch, jax.Array) else np.asarray(batch)  # float32 per window when tiled
    single = x.ndim == 3
    x = x[None] if single else x
    chex.assert_rank(x, 4)
    chex.assert_axis_dimension(x, 3, 3)
    net = model.net
    if nets.is_multistyle(net):
        raise ConfigError("a multi-style model: choose a style or a mix first (styles.select)")
    budget = budget or tiling.default_budget()
    n, h, w, _ = x.shape
    if tiling.fits(net, h, w, budget, batch=n):
        y = forward(net, model.variables, jnp.asarray(x, jnp.float32))
    elif tiling.fits(net, h, w, budget):
        y = jnp.concatenate([forward(net, model.variables, jnp.asarray(x[i: i + 1], jnp.float32))
                             for i in range(n)])
    else:
        outs = [tiling.apply_tiled(net, model.variables, np.asarray(im), budget=budget,
                                   out_dtype=np.uint8 if uint8 else np.float32) for im in x]
        y = outs[0][None] if n == 1 else np.stack(outs)  # host arrays: no device copy of a huge image
    if uint8:
        y = images.to_uint8(np.asarray(y))
    return y[0] if single else y


def rgb_to_yiq(image: np.ndarray) -> np.ndarray:
    """RGB [0, 255] -> YIQ (NTSC; scikit-image's matrix), float64."""
    return color.rgb2yiq(np.asarray(image, np.float64))


def yiq_to_rgb(yiq: np.ndarray) -> np.ndarray:
    """YIQ -> RGB, float32 (not clipped: saving clips to [0, 255])."""
    return color.yiq2rgb(np.asarray(yiq, np.float64)).astype(np.float32)


def preserve_color(stylized: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """Luminance-only transfer (Gatys et al. 2016, "Preserving Color in Neural Artistic Style
    Transfer"): Y from the stylized image, I and Q (chroma) from the photo."""
    out = rgb_to_yiq(photo)
    out[..., 0] = rgb_to_yiq(stylized)[..., 0]
    return yiq_to_rgb(out)


def blend(stylized: np.ndarray, photo: np.ndarray, strength: float) -> np.ndarray:
    """`strength` x stylized + (1 - strength) x photo: a pixel blend, not a retrained style weight."""
    return (strength * np.asarray(stylized, np.float32)
            + (1.0 - strength) * np.asarray(photo, np.float32)).astype(np.float32)


def finish(stylized: np.ndarray, photo: np.ndarray, *, preserve_colors: bool = False,
           strength: float = 1.0) -> np.ndarray:
    """A style network's output post-processed: colours kept from the photo, then blended with it."""
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"strength must be in [0, 1], got {strength}")
    out = preserve_color(stylized, photo) if preserve_colors else np.asarray(stylized, np.float32)
    return blend(out, photo, strength) if strength < 1.0 else out


def finisher(*, preserve_colors: bool = False, strength: float = 1.0) -> Callable | None:
    """`run_files`'s `post` for these settings (`finish` with them), or None when there is nothing
    to do; bin/stylize and the web app both use it."""
    if not (preserve_colors or strength < 1.0):
        return None
    return functools.partial(finish, preserve_colors=preserve_colors, strength=strength)


# --------------------------------------------------------------------------- files


@dataclass
class FileResult:
    """What happened to one input: its output, time per image or frame, or an error."""
    src: Path
    dst: Path | None
    seconds: float
    error: str | None = None
    note: str = ""


def plan_outputs(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *, suffix: str = "",
                 ext: str = ".png") -> tuple[list[tuple[Path, Path]], list[FileResult]]:
    """Decides every output path before any work: (src, dst) pairs and errors for missing inputs.

    One input file and an `out` with an image (or, for a video, video) suffix: `out` itself.
    Otherwise `out` is a folder: a file input goes to `out/<stem><suffix><ext>`, a folder input's
    images keep their subfolders (`out/<relative path without suffix><suffix><ext>`). Videos keep
    their container suffix.

    Raises:
      FastnstError: no images at all, two inputs that would write the same output, an output that
        would overwrite an input, an unsupported output suffix, or an unwritable destination.
    """
    from fastnst import video

    out = Path(out)
    pairs, errors = [], []
    single_file = len(inputs) == 1 and Path(inputs[0]).is_file()
    single_video = single_file and video.is_video(inputs[0])
    if out.suffix and not out.is_dir():
        allowed = video.VIDEO_SUFFIXES if single_video else images.SAVE_SUFFIXES
        if out.suffix.lower() not in allowed:
            kind = "video" if single_video else "image"
            raise FastnstError(f"--out {out}: unsupported {kind} type {out.suffix!r} "
                               f"(use {', '.join(allowed)}, or a folder)")
        missing = [str(i) for i in inputs if not Path(i).exists()]
        if len(inputs) == 1 and missing:
            raise FastnstError(f"{missing[0]}: no such file or folder")
        if not single_file:
            raise FastnstError(f"--out {out} is a file name, but the inputs are several images or a "
                               "folder: give a folder")
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = images.list_images(p, images.IMAGE_SUFFIXES + video.VIDEO_SUFFIXES)
            if not files:
                errors.append(FileResult(p, None, 0.0, f"{p}: no images or videos in this folder"))
            pairs += [(f, out / f.relative_to(p).with_name(f.stem + suffix + _ext(f, ext))) for f in files]
        elif p.is_file():
            dst = out if single_file and out.suffix and not out.is_dir() else \
                out / f"{p.stem}{suffix}{_ext(p, ext)}"
            pairs.append((p, dst))
        else:
            errors.append(FileResult(p, None, 0.0, f"{p}: no such file or folder"))
    if not pairs:
        raise FastnstError("no input images" + (f" ({errors[0].error})" if errors else ""))
    seen: dict[Path, Path] = {}
    srcs = {src.resolve() for src, _ in pairs}
    for src, dst in pairs:
        key = dst.resolve()
        if key in seen:
            raise FastnstError(f"{seen[key]} and {src} would both be written to {dst}; "
                               "stylize them into different --out folders")
        if key in srcs:
            raise FastnstError(f"{dst} would overwrite an input; choose another --out")
        seen[key] = src
    images.check_writable_folder(pairs[0][1].parent if single_file else out)
    return pairs, errors


def _ext(src: Path, image_ext: str) -> str:
    from fastnst import video

    return src.suffix.lower() if video.is_video(src) else image_ext


def _batches(pairs, load: Callable, batch_size: int) -> Iterator:
    """Yields lists of (src, dst, image) of one size, at most `batch_size`, reading lazily (only the
    current batch is in memory); unreadable files come as (src, dst, error message)."""
    group: list = []
    for src, dst in pairs:
        try:
            im = load(src)
        except FastnstError as e:
            if group:
                yield group
                group = []
            yield [(src, dst, str(e))]
            continue
        if group and (group[0][2].shape != im.shape or len(group) == batch_size):
            yield group
            group = []
        group.append((src, dst, im))
    if group:
        yield group


def iter_files(model: Model, inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
              max_size: int | None = None, batch_size: int = 4, suffix: str = "",
              post: Callable | None = None, budget: int | None = None,
              on_plan: Callable[[int], None] | None = None, progress: bool = True,
              allow_missing_frames: bool = False) -> Iterator[FileResult]:
    """Processes image files (folders are expanded) and writes each result atomically, lazily:
    nothing runs until the results are iterated, one FileResult per input as it is written
    (`run_files` runs them all at once).

    Outputs are planned and checked first (`plan_outputs`); images then stream through: consecutive
    images of the same size (after `max_size`) run as one batch, so memory holds one batch.
    A bad input yields a FileResult with `error` set; the others are still processed. `seconds` is
    the batch time per image (per frame for videos, which stream through `video.process_video`).
    `post(output, input)` optionally post-processes each output. A video with frames that could not be
    read (truncated or damaged) is still written, from the frames that could, but its FileResult is
    an error unless `allow_missing_frames`.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if max_size is not None and max_size < 1:
        raise ConfigError(f"max size must be >= 1, got {max_size}")
    from fastnst import video

    pairs, errors = plan_outputs(inputs, out, suffix=suffix)
    if on_plan:
        on_plan(len(pairs))
    yield from errors
    is_video = [video.is_video(s) for s, _ in pairs]
    videos = [p for p, v in zip(pairs, is_video, strict=True) if v]
    pairs = [p for p, v in zip(pairs, is_video, strict=True) if not v]
    for src, dst in videos:
        yield _run_video(model, src, dst, max_size=max_size, batch_size=batch_size, post=post,
                         budget=budget, progress=progress, allow_missing_frames=allow_missing_frames)
    # Photos stay uint8 until a window needs them and, without `post`, outputs come back as the
    # uint8 they are saved as: for a 100 MP photo that is 2.7 GB less resident memory.
    load = lambda f: _model_input(  # noqa: E731
        model, images.resize_max_side(images.load_image(f, keep_8bit=True), max_size), f)
    for group in _batches(pairs, load, batch_size):
        if isinstance(group[0][2], str):
            yield FileResult(group[0][0], None, 0.0, group[0][2])
            continue
        t = time.perf_counter()
        x = group[0][2][None] if len(group) == 1 else np.stack([im for _, _, im in group])  # no copy of one
        y = np.asarray(apply(model, x, budget=budget, uint8=post is None))
        dt = (time.perf_counter() - t) / len(group)
        for (src, dst, im), o in zip(group, y, strict=True):
            try:
                images.save_image(dst, post(o, im) if post else o)
                yield FileResult(src, dst, dt)
            except FastnstError as e:
                yield FileResult(src, None, dt, str(e))


def run_files(model: Model, inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
              **options) -> list[FileResult]:
    """Processes every input now (`iter_files`, with its options) and returns their FileResults."""
    return list(iter_files(model, inputs, out, **options))


def _run_video(model: Model, src: Path, dst: Path, *, max_size, batch_size, post, budget,
               progress, allow_missing_frames) -> FileResult:
    from fastnst import video

    def fn(frames):
        for im in frames:
            _model_input(model, im, src)
        out = np.asarray(apply(model, frames, budget=budget))
        return np.stack([post(o, f) for o, f in zip(out, frames, strict=True)]) if post else out

    try:
        r = video.process_video(src, dst, fn, batch_size=batch_size, max_size=max_size, progress=progress)
    except FastnstError as e:
        return FileResult(src, None, 0.0, str(e))
    lost = f"{r.lost} of {r.expected} frames could not be read (truncated or damaged file)"
    if r.lost and not allow_missing_frames:
        return FileResult(src, None, 0.0, f"{src}: {lost}; the {r.frames} readable frames were written to "
                                          f"{dst}; --allow-missing-frames accepts this")
    note = f"{r.frames} frames, {r.fps:.2f} frames/s, audio {r.audio}" + (f", {lost}" if r.lost else "")
    return FileResult(src, dst, r.seconds / max(r.frames, 1), note=note)


def _model_input(model: Model, image: np.ndarray, path) -> np.ndarray:
    min_side = 8 if model.config["task"] == "sr" else 16
    if min(image.shape[:2]) < min_side:
        raise images.ImageError(f"{path}: {image.shape[1]}x{image.shape[0]} is too small "
                                f"(at least {min_side} px per side)")
    return image
