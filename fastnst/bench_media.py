"""The tiling and video tables (docs/tiling.md, docs/video.md): each case in a fresh process, so
its peak RSS is its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from fastnst import nets
from fastnst.bench import device_info, write_json


def tiling_case(kind: str, h: int, w: int, *, budget_mb: float | None = None, repeats: int = 1) -> dict:
    """One tiled-inference measurement (run in its own process for a clean peak RSS): `kind` is
    `paper_bn` (the paper's network, batch norm, random weights) or a shipped model name; the input
    is uint8, as a decoded photo. Also reports the temporary buffer files left open afterwards (0)."""
    from fastnst import buffers, modelfile, stylize, tiling

    if kind == "paper_bn":
        cfg = nets.model_config({"task": "style"})
        net = nets.build(cfg)
        variables = nets.init(net, jax.random.key(0))
        model = modelfile.Model(config=cfg, variables=variables, meta={})
    else:
        model = modelfile.load_model(kind)
    budget = int(budget_mb * 2**20) if budget_mb else tiling.default_budget()
    x = np.random.default_rng(1).integers(0, 256, (h, w, 3), np.uint8)  # as a decoded photo
    tiled = not tiling.fits(model.net, h, w, budget)
    plan: dict = {}
    if tiled:  # what `stylize.apply` runs for one image over budget, with the plan reported
        run = lambda: tiling.apply_tiled(model.net, model.variables, x, budget=budget, info=plan)  # noqa: E731
    else:
        run = lambda: np.asarray(stylize.apply(model, x, budget=budget))  # noqa: E731
    t = time.perf_counter()
    run()  # includes compilation
    first = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        runs.append(time.perf_counter() - t)
    best = min(runs, default=first)  # repeats=0: the first call only (a 100 MP case takes minutes)
    return {"kind": kind, "h": h, "w": w, "budget_mb": budget / 2**20, "tiled": tiled,
            **plan,
            "first_call_s": first, "s": best, "us_per_pixel": best / (h * w) * 1e6,
            "peak_rss_mb": _peak_rss_mb(), "buffer_files_left": len(buffers.open_buffer_files())}


def _in_fresh_process(call: str) -> dict:
    """`bench_media.<call>` run in a fresh Python process (so its peak RSS is its own): the JSON row it
    returns, or {"error": [last line of stderr]} when it failed."""
    code = ("import json; from fastnst import cli; cli.keep_freed_memory(); from fastnst import bench_media; "
            f"print(json.dumps(bench_media.{call}))")  # inference cases: the malloc settings of bin/stylize
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=7200)
    if r.returncode:
        return {"error": r.stderr.strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports kilobytes)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tiling_table(cases, out: str | Path | None = None) -> list[dict]:
    """Runs each (kind, h, w, budget_mb, repeats) case in a fresh process; returns the rows."""
    rows = []
    for kind, h, w, budget_mb, repeats in cases:
        os.sync()  # the last case's buffer files written back first, not in this case's time
        row = _in_fresh_process(f"tiling_case({kind!r}, {h}, {w}, budget_mb={budget_mb!r}, "
                                f"repeats={repeats})")
        rows.append({"kind": kind, "h": h, "w": w, **row} if "error" in row else row)
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if out:
            write_json({"device": device_info(), "rows": rows}, out, "tiling")
    return rows


VIDEO_CASES = ((48, 24, None), (120, 12, 320), (720, 12, 320))  # frames, fps, --max-size


def video_table(out: str | Path | None = None, *, model_name: str = "the_scream", cases=VIDEO_CASES,
                size=(360, 640)) -> list[dict]:
    """The video benchmark: for each (frames, fps, max_size) case, writes an H.264 pan clip of
    `size` (48 frames at 24 fps = 2 s at full size; 10 s and 60 s at 12 fps resized to 320 px)
    and runs `video_case` on it in a fresh process (a clean peak RSS per clip)."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as d:
        for frames, fps, max_size in cases:
            clip = write_clip(Path(d) / f"clip_{frames}_{fps}.mp4", frames, size=size, fps=fps)
            row = {"frames": frames, "fps": fps, "size": list(size), "max_size": max_size,
                   **_in_fresh_process(f"video_case({model_name!r}, {str(clip)!r}, max_size={max_size!r})")}
            if "error" not in row:
                row["seconds"] = frames / fps
                del row["clip"]  # a temporary path
            rows.append(row)
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if out:
        write_json({"device": device_info(), "rows": rows}, out, "video")
    return rows


def write_clip(path: str | Path, frames: int, *, size=(360, 640), fps: int = 24, seed: int = 0) -> Path:
    """An H.264 test clip of a slow pan over the demo content photo (for the video benchmarks)."""
    import av

    from fastnst import data, images, temporal

    photo = temporal.fit_photo(images.load_image(data.content_photo()), size)
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=fps)
    v.height, v.width, v.pix_fmt = size[0], size[1], "yuv420p"
    chunk = 24
    for start in range(0, frames, chunk):  # render in chunks: memory stays flat for long clips
        clip, _ = temporal.synthetic_clip(photo, "pan", frames=min(chunk, frames - start) + 1, size=size,
                                          speed=0.5, seed=seed + start)
        for f in clip[1:]:
            for p in v.encode(av.VideoFrame.from_ndarray(images.to_uint8(f), format="rgb24")):
                out.mux(p)
    for p in v.encode():
        out.mux(p)
    out.close()
    return Path(path)


def video_case(model_name: str, clip: str, *, max_size: int | None, batch: int = 4) -> dict:
    """Stylizes a clip through `video.process_video` (in its own process: clean peak RSS) and, for
    the same frames already in memory, through `stylize.apply` alone: frames/s of both."""
    import tempfile

    import av

    from fastnst import images, modelfile, stylize, video

    model = modelfile.load_model(model_name)
    with av.open(clip) as c:  # the image path on the same frames (the first 48), decoded beforehand
        frames = [images.resize_max_side(f.to_ndarray(format="rgb24").astype(np.float32), max_size)
                  for _, f in zip(range(48), c.decode(video=0), strict=False)]
    np.asarray(stylize.apply(model, np.stack(frames[:batch])))  # compile once for both paths
    t = time.perf_counter()
    for i in range(0, len(frames), batch):
        np.asarray(stylize.apply(model, np.stack(frames[i: i + batch])))
    image_fps = len(frames) / (time.perf_counter() - t)
    del frames
    with tempfile.TemporaryDirectory() as d:
        fn = lambda x: np.asarray(stylize.apply(model, x))  # noqa: E731
        r = video.process_video(clip, Path(d) / "out.mp4", fn, batch_size=batch, max_size=max_size,
                                progress=False)
    return {"model": model_name, "clip": str(clip), "frames": r.frames, "max_size": max_size,
            "video_fps": r.fps, "image_path_fps": image_fps, "ratio": image_fps / r.fps,
            "peak_rss_mb": _peak_rss_mb()}
