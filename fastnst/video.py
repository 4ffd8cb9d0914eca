"""Video in, video out, through PyAV (FFmpeg's libraries): streamed in bounded memory.

`process_video(src, dst, fn)` decodes frames, runs `fn` on batches of them, encodes the results
and writes `dst` atomically (a temporary file renamed at the end). Frame timestamps are copied, so
the frame rate, time base and variable frame rates are kept; the audio stream is copied unchanged
where the output container accepts its codec (else dropped with a warning). Frames are turned
upright by their rotation metadata. Frames that cannot be read (a packet that fails to decode, or
a truncated file whose index lists more frames than the data holds) are counted, not hidden: the
result's `lost` (callers report it and fail unless the user accepts it). Memory holds one batch of
frames, whatever the film's length.

Codecs by suffix: .mp4/.mov/.mkv H.264 (yuv420p, CRF 18), .webm VP9, .avi MPEG-4 Part 2, .gif GIF.
yuv420p needs even sizes: an odd width or height is padded by one edge-replicated pixel. AVI stores
a constant frame rate (one tick per frame), so its frames are renumbered at the stream's average rate
(copying a finer time base made players report e.g. 600 fps for a 10 fps clip).
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from fastnst import images
from fastnst.errors import FastnstError, ImageError, need

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif")
_CODECS = {".mp4": ("libx264", "yuv420p"), ".mov": ("libx264", "yuv420p"), ".mkv": ("libx264", "yuv420p"),
           ".webm": ("libvpx-vp9", "yuv420p"), ".avi": ("mpeg4", "yuv420p"), ".gif": ("gif", "rgb8")}
_CONSTANT_RATE = (".avi",)  # containers whose time base is the frame duration
_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi", ".gif": "gif"}


def is_video(path: str | os.PathLike) -> bool:
    """Video containers by suffix; a GIF counts as a video when it has more than one frame."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".gif":
        try:
            from PIL import Image

            with Image.open(p) as im:
                return getattr(im, "n_frames", 1) > 1
        except OSError:
            return False
    return suffix in VIDEO_SUFFIXES


@dataclass
class VideoResult:
    """Frames written, frames that could not be read, wall time and what happened to the audio."""
    frames: int
    skipped: int  # packets the decoder refused
    seconds: float
    audio: str  # "copied", "none" or why it was dropped
    expected: int = 0  # frames the file says it has (its index, or the packets read when larger)
    lost: int = 0  # expected - frames: unreadable packets and frames missing from a truncated file

    @property
    def fps(self) -> float:
        """Frames processed per second of wall time."""
        return self.frames / max(self.seconds, 1e-9)


def _av():
    return need("av", "video", "video (PyAV)")


def _upright(frame, arr: np.ndarray) -> np.ndarray:
    rot = int(getattr(frame, "rotation", 0) or 0)  # counter-clockwise display rotation
    return np.ascontiguousarray(np.rot90(arr, k=-(rot // 90) % 4)) if rot % 360 else arr


def _even(arr: np.ndarray) -> np.ndarray:
    h, w = arr.shape[:2]
    return np.pad(arr, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else arr


def process_video(src: str | os.PathLike, dst: str | os.PathLike, fn: Callable[[np.ndarray], np.ndarray], *,
                  batch_size: int = 4, max_size: int | None = None, progress: bool = True) -> VideoResult:
    """Runs `fn` ([N, H, W, 3] float32 in [0, 255] -> [N, H', W', 3]) over every frame of `src`
    and writes the result to `dst` (container and codec by its suffix), atomically.

    Raises:
      FastnstError: not a video FFmpeg can read, no video stream, or an unsupported output suffix.
    """
    av = _av()
    src, dst = Path(src), Path(dst)
    suffix = dst.suffix.lower()
    if suffix not in _CODECS:
        raise FastnstError(f"{dst}: unsupported video type {suffix!r} (use {', '.join(VIDEO_SUFFIXES)})")
    try:
        inp = av.open(str(src))
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise ImageError(f"{src}: not a video file FFmpeg can read ({e})") from None
    with inp:
        if not inp.streams.video:
            raise ImageError(f"{src}: has no video stream")
        images.check_writable_folder(dst.parent)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=f".tmp{suffix}")
        os.close(fd)
        try:
            result = _transcode(av, inp, tmp, suffix, fn, batch_size, max_size, progress, src)
            os.chmod(tmp, images.FILE_MODE)  # the mode an image output gets, not mkstemp's 0600
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return result


# (Long: one demux -> decode -> batch -> network -> encode -> mux pass whose streams, timestamps and
# frame counts must stay in one scope; split, they would be passed around as a bag of state.)
def _transcode(av, inp, tmp, suffix, fn, batch_size, max_size, progress, src) -> VideoResult:
    from tqdm.auto import tqdm

    in_v = inp.streams.video[0]
    in_v.thread_type = "AUTO"
    in_a = inp.streams.audio[0] if inp.streams.audio else None
    out = av.open(tmp, "w", format=_FORMATS[suffix])
    out_v = out_a = None
    audio = "none" if in_a is None else "copied"
    batch, skipped, frames = [], 0, 0
    bar = tqdm(total=in_v.frames or None, unit="frame", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    pending_audio = []
    rate = in_v.average_rate or in_v.guessed_rate or 25
    out_tb = 1 / Fraction(rate) if suffix in _CONSTANT_RATE else in_v.time_base

    def open_output(first: np.ndarray):
        nonlocal out_v, out_a, audio
        codec, pix_fmt = _CODECS[suffix]
        out_v = out.add_stream(codec, rate=rate)
        out_v.time_base = out_tb
        out_v.codec_context.time_base = out_tb  # timestamps copied exactly (variable rates too), but AVI
        out_v.height, out_v.width = first.shape[:2]
        out_v.pix_fmt = pix_fmt
        if codec == "libx264":
            out_v.options = {"crf": "18"}
        if in_a is not None:
            try:
                out_a = out.add_stream_from_template(in_a)
            except (ValueError, av.error.FFmpegError) as e:
                audio = f"dropped ({in_a.codec_context.name} audio cannot go into {suffix}: {e})"
                warnings.warn(f"{src}: audio not copied: {audio}", stacklevel=3)

    def encode(items):
        nonlocal frames
        arrs = np.stack([a for a, _ in items]).astype(np.float32)
        outs = np.asarray(fn(arrs))
        for (_, pts), o in zip(items, outs, strict=True):
            o = _even(images.to_uint8(o)) if _CODECS[suffix][1] == "yuv420p" else images.to_uint8(o)
            if out_v is None:
                open_output(o)
                for p in pending_audio:
                    _mux_audio(out, out_a, p)
                pending_audio.clear()
            vf = av.VideoFrame.from_ndarray(o, format="rgb24")
            vf.pts, vf.time_base = (frames if suffix in _CONSTANT_RATE else pts), out_tb
            for packet in out_v.encode(vf):
                out.mux(packet)
            frames += 1
            bar.update(1)
        bar.set_postfix({"frames/s": f"{frames / (time.perf_counter() - t0):.2f}"}, refresh=False)

    packets = discarded = 0
    try:
        counter = 0
        for packet in inp.demux(*(s for s in (in_v, in_a) if s is not None)):
            if packet.stream.type == "video" and packet.size:  # size 0: the flush packet at the end
                packets += 1
                discarded += bool(packet.is_discard)  # before an edit list's start: decoded, not shown
            if packet.stream.type == "audio":
                if out_v is None:
                    pending_audio.append(packet)  # the output's streams open with the first frame
                else:
                    _mux_audio(out, out_a, packet)
                continue
            try:
                decoded = packet.decode()
            except (av.error.InvalidDataError, av.error.FFmpegError, ValueError):
                skipped += 1
                continue
            for frame in decoded:
                arr = _upright(frame, frame.to_ndarray(format="rgb24"))
                arr = images.resize_max_side(arr.astype(np.float32), max_size)
                pts = frame.pts if frame.pts is not None else counter
                counter += 1
                batch.append((arr, pts))
                if len(batch) == batch_size:
                    encode(batch)
                    batch = []
        if batch:
            encode(batch)
        if out_v is None:
            raise ImageError(f"{src}: no frame could be decoded")
        for packet in out_v.encode():
            out.mux(packet)
    finally:
        bar.close()
        out.close()
    # The index's count catches a truncated file (the demuxer stops early, quietly); the packets
    # read catch a container without a count (MKV, WebM) and decoder errors its threads swallow.
    expected = max(in_v.frames, packets) - discarded
    return VideoResult(frames, skipped, time.perf_counter() - t0, audio, expected, max(expected - frames, 0))


def _mux_audio(out, out_a, packet) -> None:
    if out_a is None or packet.dts is None:
        return
    packet.stream = out_a
    out.mux(packet)
