"""Reading and writing images safely: the only module that touches Pillow.

Convention everywhere in fastnst: float32 arrays, RGB, values in [0, 255]; single images are
HxWx3, batches are NHWC.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fastnst import envvars
from fastnst.errors import ImageError, OutputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
SAVE_SUFFIXES = tuple(_SAVE_FORMATS)


def load_image(path: str | os.PathLike, *, max_pixels: int | None = None,
               keep_8bit: bool = False) -> np.ndarray:
    """Loads an image file as float32 HxWx3 RGB in [0, 255].

    Applies the EXIF orientation; converts grayscale, palette, CMYK and 16-bit images; composites
    transparency on white. `keep_8bit`: an 8-bit source comes back as uint8 instead, the same values
    in a quarter of the memory (1.2 GB less for a 100 MP photo); 16-bit and float sources stay
    float32.

    Raises:
      ImageError: the file is missing, empty, truncated, not an image, or has more than
        `max_pixels` pixels (None: `envvars.max_pixels()`, 64 million unless FASTNST_MAX_PIXELS).
    """
    max_pixels = envvars.max_pixels() if max_pixels is None else max_pixels
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: file is empty")
    # Our `max_pixels` is the bomb limit, checked on the header before anything is decoded; Pillow's
    # own (about 89 MP) would refuse a photo the caller allowed, so it is lifted to ours. (Raised
    # only, never lowered: other threads may be opening files.)
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; make every bomb fatal.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(f"{path}: {w}x{h} exceeds the limit of {max_pixels} pixels "
                                     "(FASTNST_MAX_PIXELS=N allows more)")
                im.load()
                return _to_rgb_array(ImageOps.exif_transpose(im), keep_8bit)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: cannot decode image ({e})") from None


def _to_rgb_array(im: Image.Image, keep_8bit: bool = False) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float32)
        # Mode "I" holds 16-bit PNG data as int32; scale the 16-bit range onto [0, 255].
        a = a * (255.0 / 65535.0) if im.mode != "I" or a.max() > 255 else a
        return np.repeat(np.clip(a, 0, 255)[..., None], 3, axis=-1)
    if im.mode == "F":
        a = np.clip(np.asarray(im, dtype=np.float32), 0, 255)
        return np.repeat(a[..., None], 3, axis=-1)
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    rgb = np.asarray(im.convert("RGB"))
    return rgb if keep_8bit else rgb.astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Rounds a [0, 255] float image to uint8, clipping out-of-range values (a uint8 image as is)."""
    if np.asarray(image).dtype == np.uint8:
        return np.asarray(image)
    return np.clip(np.rint(np.asarray(image, dtype=np.float32)), 0, 255).astype(np.uint8)


def check_output_path(path: str | os.PathLike) -> Path:
    """Fails early (before any long computation) on an output path `save_image` would refuse."""
    path = Path(path)
    if path.suffix.lower() not in _SAVE_FORMATS:
        raise ImageError(f"{path}: output must end in {', '.join(SAVE_SUFFIXES)}")
    if path.parent.exists() and not path.parent.is_dir():
        raise ImageError(f"{path.parent}: not a folder")
    return path


def save_image(path: str | os.PathLike, image: np.ndarray, *, quality: int = 95) -> Path:
    """Writes an HxWx3 [0, 255] image as PNG or JPEG (by suffix), atomically.

    The image is written to a temporary file in the destination folder and renamed over the
    destination, so a crash never leaves a partial file.
    """
    path = check_output_path(path)
    fmt = _SAVE_FORMATS[path.suffix.lower()]
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ImageError(f"{path}: expected an HxWx3 image, got shape {image.shape}")
    _mkdir(path.parent)
    kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    _atomic_write(path, lambda f: Image.fromarray(to_uint8(image)).save(f, format=fmt, **kwargs))
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's files are 0600


def _atomic_write(path: Path, write) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes bytes to `path` through a temporary file and a rename."""
    path = Path(path)
    _mkdir(path.parent)
    _atomic_write(path, lambda f: f.write(data))
    return path


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{folder}: cannot create folder ({e.strerror})") from None


def check_not_an_input(out: str | os.PathLike, inputs) -> None:
    """Raises OutputError when writing `out` would replace one of the files `inputs` (compared
    after resolving links), so a command never destroys what it reads."""
    target = Path(out).resolve()
    for src in inputs:
        if src and Path(src).is_file() and Path(src).resolve() == target:
            raise OutputError(f"{out} would overwrite an input ({src}); choose another --out")


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """Fails early if `folder` cannot be created or written (checked on its nearest existing parent)."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ImageError(f"{probe}: exists and is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ImageError(f"{folder}: not writable")
    return folder


def resize(image: np.ndarray, size: tuple[int, int], *, method: str = "bicubic") -> np.ndarray:
    """Resizes an HxWx3 float image to (height, width) with Pillow, per channel in float."""
    h, w = size
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS,
                "nearest": Image.NEAREST}[method]
    channels = [Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32), mode="F")
                .resize((w, h), resample) for c in range(image.shape[-1])]
    return np.stack([np.asarray(c, dtype=np.float32) for c in channels], axis=-1)


def resize_uint8(image: np.ndarray, size: tuple[int, int], *, method: str = "bicubic") -> np.ndarray:
    """Resizes like MATLAB's `imresize` on uint8 data: rounds to uint8, resizes (antialiased when
    shrinking), returns float32 of the rounded uint8 result. HxW or HxWx3."""
    h, w = size
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[method]
    out = Image.fromarray(to_uint8(image)).resize((w, h), resample)
    return np.asarray(out, dtype=np.float32)


def is_grayscale_file(path: str | os.PathLike) -> bool:
    """Whether the file stores a single channel (evaluated on its gray values by SR protocols)."""
    try:
        with Image.open(path) as im:
            return im.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F")
    except (OSError, UnidentifiedImageError) as e:
        raise ImageError(f"{path}: cannot read ({e})") from None


def resize_max_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscales so that the longer side is at most `max_side` (never upscales)."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image
    s = max_side / max(h, w)
    return np.clip(resize(image, (max(1, round(h * s)), max(1, round(w * s))), method="lanczos"),
                   0, 255)


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """Resizes so that the shorter side equals `short_side`, keeping the aspect ratio."""
    h, w = image.shape[:2]
    s = short_side / min(h, w)
    return np.clip(resize(image, (max(short_side, round(h * s)), max(short_side, round(w * s))),
                          method="bilinear"), 0, 255)


def list_images(root: str | os.PathLike, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """All image files (or files with one of `suffixes`) under `root`, recursive, sorted."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ImageError(f"{root}: no such file or folder")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


def side_by_side(images: list[np.ndarray], *, height: int = 256, gap: int = 8) -> np.ndarray:
    """Concatenates images horizontally at a common height, with white gaps, for figures."""
    rows = []
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        rows.append(np.clip(resize(im, (height, max(1, round(w * height / h)))), 0, 255))
        if i < len(images) - 1:
            rows.append(np.full((height, gap, 3), 255.0, np.float32))
    return np.concatenate(rows, axis=1)


def labelled(panels: list[np.ndarray], labels: list[str], *, height: int = 256, gap: int = 8,
             font_px: int = 18) -> np.ndarray:
    """`side_by_side` with a caption centred above each panel (figures for the README and docs); a
    panel narrower than its caption is centred on white as wide as the caption."""
    from PIL import ImageDraw, ImageFont

    if len(panels) != len(labels):
        raise ValueError(f"{len(panels)} panels but {len(labels)} labels")
    font = ImageFont.load_default(size=font_px)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [draw.textlength(t, font=font) for t in labels]
    padded = []
    for im, tw in zip(panels, widths, strict=True):
        im = resize(im, (height, max(1, round(im.shape[1] * height / im.shape[0]))))
        extra = max(0, int(np.ceil(tw)) + 8 - im.shape[1])
        padded.append(np.pad(im, ((0, 0), (extra // 2, extra - extra // 2), (0, 0)), constant_values=255))
    row = side_by_side(padded, height=height, gap=gap)
    strip = Image.new("RGB", (row.shape[1], font_px + 12), "white")
    draw = ImageDraw.Draw(strip)
    x = 0
    for im, text, tw in zip(padded, labels, widths, strict=True):
        draw.text((x + (im.shape[1] - tw) / 2, 4), text, fill="black", font=font)
        x += im.shape[1] + gap
    return np.concatenate([np.asarray(strip, np.float32), row], axis=0)
