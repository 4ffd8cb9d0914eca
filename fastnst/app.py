"""A local web app for people who do not use a terminal (`bin/app`; the `app` extra: Gradio).

One page, two tabs:
- Style: a photo (upload, drop, paste, webcam, or a sample photo) or a video; a shipped model
  picked from a gallery (its painting where this clone has it, and a sample output) or an uploaded
  model file; strength, colours, output size; before/after slider; download; progress.
- Upscale: x4 with the shipped super-resolution models, histogram matching on or off, side by
  side with bicubic.

Every result is the file `stylize.run_files` writes, as `bin/stylize` / `bin/upscale` would
(tiling, memory budget, colour, video). Models load once and stay compiled for the sizes seen.

Safe by default: listens on 127.0.0.1; uploads, megapixels and video length are capped (`Limits`);
uploads and outputs live in one temporary folder, removed when the app stops; one job at a time (a
visible queue). A bad input is a message on the page, and the app keeps working.
"""

import functools
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastnst import data, images, metrics, modelfile, stylize, video
from fastnst.errors import FastnstError


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (the page says so when a request exceeds them)."""
    upload_mb: int = 200
    megapixels: float = 24.0
    video_seconds: float = 60.0


THUMB = 192  # gallery thumbnail height, px


@functools.lru_cache(maxsize=16)
def _model(name_or_path: str) -> stylize.Model:
    """A model loaded once per name or file (its jitted forward stays compiled per input size)."""
    return stylize.load_model(name_or_path)


def shipped(task: str) -> list[str]:
    """Names of the shipped models for `task` ("style" or "sr")."""
    return [n for n in modelfile.available() if _model(n).config["task"] == task]


def check_request(path: str | os.PathLike, limits: Limits) -> None:
    """Refuses (FastnstError, one readable sentence) an input over the limits or of no known type,
    before any work."""
    p = Path(path)
    if video.is_video(p):
        seconds = video_seconds(p)
        if seconds > limits.video_seconds:
            raise FastnstError(f"this video is {seconds:.0f} s long; the limit is "
                               f"{limits.video_seconds:.0f} s")
        return
    from PIL import Image

    try:
        with Image.open(p) as im:
            w, h = im.size
    except (OSError, ValueError):
        raise FastnstError(f"{p.name} is not an image or video this app can read") from None
    if w * h > limits.megapixels * 1e6:
        raise FastnstError(f"{p.name} is {w}x{h} ({w * h / 1e6:.1f} MP); the limit is "
                           f"{limits.megapixels:g} MP")


def video_seconds(path: str | os.PathLike) -> float:
    """A video's duration in seconds (FastnstError if FFmpeg cannot read it)."""
    import av

    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise FastnstError(f"{Path(path).name} has no video stream")
            v = c.streams.video[0]
            if v.duration is not None and v.time_base is not None:
                return float(v.duration * v.time_base)
            return float(c.duration or 0) / 1e6
    except (av.error.FFmpegError, OSError, ValueError):
        raise FastnstError(f"{Path(path).name} is not a video file FFmpeg can read") from None


def run_one(model: stylize.Model, src: str | os.PathLike, out_dir: str | os.PathLike, *, post=None,
            max_size: int | None = None, suffix: str = "", progress: bool = False) -> Path:
    """One input through `stylize.run_files` (the CLIs' path) into a fresh folder under `out_dir`;
    returns the output file. FastnstError with the library's message when the input fails."""
    src = Path(src)
    ext = src.suffix.lower() if video.is_video(src) else ".png"
    dst = Path(out_dir) / uuid.uuid4().hex / f"{src.stem}{suffix}{ext}"
    (r,) = list(stylize.run_files(model, [src], dst, max_size=max_size, post=post, progress=progress))
    if r.error:
        raise FastnstError(r.error.replace(str(src), src.name))
    return Path(r.dst)


def style(src, model: str, out_dir, *, strength: float = 1.0, preserve_color: bool = False,
          max_size: int | None = None, progress: bool = False) -> Path:
    """Stylizes an image or video file with a model name or file: what `bin/stylize` writes."""
    m = _model(model)
    if m.config["task"] != "style":
        raise FastnstError("this is a super-resolution model; use the Upscale tab")
    return run_one(m, src, out_dir, post=stylize.finisher(preserve_colors=preserve_color, strength=strength),
                   max_size=max_size, progress=progress)


def upscale(src, model: str, out_dir, *, histogram_match: bool = False) -> tuple[Path, Path]:
    """Upscales an image with an SR model (what `bin/upscale` writes) and, for comparison, with
    bicubic interpolation to the same size; returns (bicubic, network) files."""
    m = _model(model)
    if m.config["task"] != "sr":
        raise FastnstError("this is a style model; use the Style tab")
    out = run_one(m, src, out_dir, post=metrics.match_histograms if histogram_match else None,
                  suffix=f"_x{m.scale}")
    photo = images.load_image(src)
    big = images.resize(photo, (photo.shape[0] * m.scale, photo.shape[1] * m.scale), method="bicubic")
    return images.save_image(out.parent / f"{Path(src).stem}_bicubic.png", big), out


def readable(name: str) -> str:
    """A model name as the page shows it: `the_scream` -> `The Scream`."""
    return " ".join(w.capitalize() for w in name.replace("-", "_").split("_"))


SAMPLE_PHOTOS = ("chelsea.png", "astronaut.png", "coffee.png")  # scikit-image's, in its wheel


def sample_photos(out_dir: str | os.PathLike, size: int = 512) -> list[str]:
    """Photos to try the page with, one click away: the demo photo (where this clone has it) and
    scikit-image's, at most `size` px, copied into the workspace (where the page may serve them)."""
    out = []
    for src in dict.fromkeys([data.content_photo(), *map(data.sample_photo, SAMPLE_PHOTOS)]):
        if Path(src).is_file():
            photo = images.resize_max_side(images.load_image(src), size)
            out.append(str(images.save_image(Path(out_dir) / f"sample_{Path(src).stem}.jpg", photo)))
    return out


def gallery(out_dir: str | os.PathLike, size: int = 256) -> list[tuple[str, str]]:
    """(thumbnail file, model name) per shipped style model: its style image where this clone has
    it (`../shared/data/styles`) beside its output on the demo photo, at most `size` px."""
    photo = images.resize_max_side(images.load_image(data.content_photo()), size)
    items = []
    for name in shipped("style"):
        parts = [np.asarray(stylize.apply(_model(name), photo))]
        style_file = data.shared_data() / "styles" / f"{name}.jpg"
        if style_file.is_file():
            parts.insert(0, images.resize_max_side(images.load_image(style_file), size))
        thumb = images.side_by_side(parts, height=THUMB) if len(parts) > 1 else \
            images.resize_max_side(parts[0], THUMB)
        items.append((str(images.save_image(Path(out_dir) / f"gallery_{name}.jpg", thumb)), readable(name)))
    return items


class Workspace:
    """The app's temporary folder (uploads, outputs, thumbnails), removed by `close()`."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="fastnst-app-"))
        self.outputs = self.root / "outputs"
        self.uploads = self.root / "uploads"
        self.outputs.mkdir()
        self.uploads.mkdir()

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _photo_input(gr, **kwargs):
    """A gr.Image that hands the uploaded file over untouched: fastnst reads it as the CLIs do (so
    the result equals bin/stylize's), and a file that is not an image gets fastnst's one-line
    message instead of Gradio's preprocessing error and server traceback. (The instance's
    `preprocess` is replaced rather than subclassed: Gradio writes a .pyi stub next to the source
    of every component subclass.)"""
    image = gr.Image(type="filepath", image_mode=None, **kwargs)
    default = image.preprocess

    def preprocess(payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return default(payload)  # a pasted or webcam image sent as data

    image.preprocess = preprocess
    return image


# (Long: the page's layout and its event wiring read top to bottom as the page shows them; the
# handlers it wires are the small functions above.)
def build(ws: Workspace, limits: Limits = Limits()):
    """The page (a gradio.Blocks); `launch()` serves it. Handlers turn FastnstError into a message
    on the page (gradio.Error) and leave the app running."""
    import gradio as gr

    def guarded(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except FastnstError as e:  # the workspace's paths mean nothing to the visitor: names only
                raise gr.Error(re.sub(re.escape(str(ws.root)) + r"/\S*/", "", str(e)),
                               print_exception=False) from None
            except MemoryError:
                raise gr.Error("out of memory: choose a smaller output size", print_exception=False) from None
        return run

    styles = gallery(ws.root)
    names = shipped("style")  # in the gallery's order; the gallery shows them `readable`
    samples = sample_photos(ws.root)
    sr_names = shipped("sr")

    @guarded
    def on_style(photo, vid, chosen, upload, strength, keep_color, max_side,
                 progress=gr.Progress(track_tqdm=True)):  # noqa: B008 -- Gradio's way to ask for a bar
        src = vid or photo
        if not src:
            raise FastnstError("add a photo or a video first")
        check_request(src, limits)
        model = upload or chosen
        if not model:
            raise FastnstError("pick a style in the gallery or upload a model file")
        out = style(src, model, ws.outputs, strength=strength, preserve_color=keep_color,
                    max_size=int(max_side) if max_side else None, progress=True)
        if video.is_video(out):
            return gr.update(value=None, visible=False), gr.update(value=str(out), visible=True), str(out)
        before = images.resize_max_side(images.load_image(src), int(max_side) if max_side else None)
        before_file = images.save_image(out.parent / "before.png", before)
        return (gr.update(value=(str(before_file), str(out)), visible=True),
                gr.update(value=None, visible=False), str(out))

    @guarded
    def on_upload_model(file):
        if not file:
            return None, "no model file: the gallery's choice is used"
        m = _model(file)
        if m.config["task"] != "style":
            raise FastnstError("this is a super-resolution model; use the Upscale tab")
        return file, f"using {Path(file).name} ({m.meta.get('steps', '?')} training steps)"

    @guarded
    def on_upscale(photo, model, match):
        if not photo:
            raise FastnstError("add a photo first")
        check_request(photo, limits)
        bicubic, out = upscale(photo, model, ws.outputs, histogram_match=match)
        return (str(bicubic), str(out)), str(out)

    with gr.Blocks(title="fastnst") as page:
        gr.Markdown("**fastnst**: fast neural style transfer and x4 super-resolution, on this computer.")
        with gr.Tab("Style"):
            chosen = gr.State(names[0] if names else None)
            uploaded = gr.State(None)
            with gr.Row():  # the first screen (1366x768): photo, samples, styles, Stylize; the rest folds
                with gr.Column():
                    photo = _photo_input(gr, label="Photo", elem_id="style-photo", height=250,
                                         sources=["upload", "clipboard", "webcam"])
                    if samples:
                        gr.Examples([[f] for f in samples], inputs=[photo], label="or try a sample photo",
                                    examples_per_page=len(samples), elem_id="style-samples")
                with gr.Column():
                    pick = gr.Gallery(value=styles, label="Style (click to choose)", columns=len(styles) or 1,
                                      allow_preview=False, height=THUMB + 60, object_fit="contain",
                                      elem_id="style-gallery")
                    picked = gr.Markdown(f"Style: **{readable(names[0])}**" if names else "no style model")
                    go = gr.Button("Stylize", variant="primary", elem_id="stylize")
                    with gr.Accordion("More: a video, your own model, strength, colours, size", open=False,
                                      elem_id="more-options"):
                        vid = gr.Video(label="a video instead of the photo", sources=["upload"],
                                       elem_id="style-video")
                        model_file = gr.File(label="your own model file (.msgpack)", file_types=[".msgpack"],
                                             elem_id="model-file")
                        model_note = gr.Markdown()
                        strength = gr.Slider(0, 1, value=1, step=0.05, label="Strength")
                        keep_color = gr.Checkbox(label="Preserve the photo's colours")
                        max_side = gr.Number(value=1024, precision=0, minimum=16,
                                             label="Output size (longer side, px)")
                with gr.Column():
                    result = gr.ImageSlider(label="Before / after", type="filepath", format="png",
                                            elem_id="style-result")
                    result_video = gr.Video(label="Result", visible=False, elem_id="style-result-video")
                    download = gr.File(label="Download", elem_id="style-download")

            def on_pick(evt: gr.SelectData):
                name = names[evt.index]
                return name, f"Style: **{readable(name)}**"

            pick.select(on_pick, None, [chosen, picked])
            model_file.change(on_upload_model, model_file, [uploaded, model_note])
            go.click(on_style, [photo, vid, chosen, uploaded, strength, keep_color, max_side],
                     [result, result_video, download])
        with gr.Tab("Upscale"):
            with gr.Row():
                with gr.Column():
                    sr_photo = _photo_input(gr, label="Photo", sources=["upload", "clipboard"],
                                            elem_id="sr-photo")
                    sr_model = gr.Dropdown(sr_names, value=sr_names[0] if sr_names else None, label="Model")
                    match = gr.Checkbox(label="Match the photo's colour histogram")
                    sr_go = gr.Button("Upscale x4", variant="primary", elem_id="upscale")
                with gr.Column():
                    sr_result = gr.ImageSlider(label="Bicubic / network", type="filepath", format="png",
                                               elem_id="sr-result")
                    sr_download = gr.File(label="Download", elem_id="sr-download")
            sr_go.click(on_upscale, [sr_photo, sr_model, match], [sr_result, sr_download])
    return page.queue(default_concurrency_limit=1)  # one job at a time per device; the queue is shown


def _check_port(host: str, port: int) -> None:
    """FastnstError when `host:port` cannot be bound (in use, or not an address of this machine)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise FastnstError(f"--host {host}: cannot resolve this address") from None
    family, *_, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(addr)
        except OSError as e:
            raise FastnstError(f"cannot listen on {host}:{port} ({e.strerror}); "
                               "choose another --port") from None


def serve(host: str = "127.0.0.1", port: int = 7860, limits: Limits = Limits(), *, block: bool = True):
    """Builds the page in a fresh temporary workspace and serves it; the workspace is removed when
    the server stops (Ctrl-C, SIGTERM)."""
    _check_port(host, port)  # before the page is built: a clear line, not Gradio's traceback
    ws = Workspace()
    os.environ["GRADIO_TEMP_DIR"] = str(ws.uploads)  # uploads and Gradio's copies live in the workspace
    print(f"uploads and results go to {ws.root} (removed when the app stops)", flush=True)
    try:
        page = build(ws, limits)
        try:
            page.launch(server_name=host, server_port=port, max_file_size=f"{limits.upload_mb}mb",
                        share=False, inbrowser=False, show_error=True, prevent_thread_lock=not block,
                        allowed_paths=[str(ws.root)])
        except OSError as e:  # the port was taken meanwhile, or the address is not this machine's
            raise FastnstError(f"cannot serve on {host}:{port}: {str(e).splitlines()[0]}") from None
    finally:
        if block:
            ws.close()
    return page, ws
