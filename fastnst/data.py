"""Training inputs: image sources, deterministic crops, the SR degradation, parallel batching.

The pipeline is index-based: the images of global step `s` are a pure function of
`(seed, s)` (`augment.draw`: an epoch-wise permutation from the seed and the epoch, crop offsets
and flips from the step's key). The data position is therefore just the step count, which the
checkpoint already holds, and a resumed run sees exactly the batches an uninterrupted one
would. Data that fits on the device skips this loader altogether (`augment.DeviceImages`). We
use a thread pool rather than grain: Pillow decodes with the GIL released, the index-based design
already gives determinism and checkpointability, and it needs no extra dependency.

Unreadable files are skipped (the next image of the permutation is used instead, so the choice
is still deterministic) and counted.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fastnst import augment, images, keys
from fastnst.errors import FastnstError, ImageError
from fastnst.paths import shared_data  # noqa: F401 (data.shared_data, as callers know it)


class FolderSource:
    """Every image under a folder (recursive; jpg, jpeg, png, webp, bmp), sorted by path."""

    def __init__(self, root: str | os.PathLike, *, holdout: int = 0, files: list | None = None):
        files = images.list_images(root) if files is None else files
        if len(files) <= holdout:
            raise FastnstError(f"{root}: found {len(files)} images, need more than {holdout}")
        # The last `holdout` files (in sorted order) are never trained on: they are the samples.
        self.files, self.heldout = files[: len(files) - holdout], files[len(files) - holdout:]
        self.name = str(root)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> np.ndarray:
        """Image i as HxWx3 float32 in [0, 255]."""
        return images.load_image(self.files[i])

    def describe(self, i: int) -> str:
        """A name for image i in messages."""
        return str(self.files[i])


class TfdsSource:
    """COCO 2014 (or any TFDS image dataset) through `tfds.data_source` random access.

    Needs the `tfds` extra and a prepared dataset in ArrayRecord format (internet on first use).
    Access is by index, so in a multi-process run each process reads only the examples of its own
    slice of every batch (`Batches(process_index=...)`).
    """

    def __init__(self, name: str = "coco/2014", split: str = "train", *, holdout: int = 0,
                 data_dir: str | None = None):
        from fastnst.errors import need

        tfds = need("tensorflow_datasets", "tfds", "the COCO source (tensorflow-datasets)")
        try:
            self._ds = tfds.data_source(name, split=split, data_dir=data_dir or None,
                                        builder_kwargs={"file_format": "array_record"})
        except Exception as e:  # TFDS raises many kinds for missing data or no network
            raise FastnstError(f"cannot open TFDS dataset {name}/{split}: {e}") from None
        self._n = len(self._ds) - holdout
        self.heldout = [self._image(self._n + k) for k in range(holdout)]
        self.name = f"tfds:{name}/{split}"

    def _image(self, i: int) -> np.ndarray:
        return np.asarray(self._ds[i]["image"], np.float32)

    def __len__(self) -> int:
        return self._n

    def load(self, i: int) -> np.ndarray:
        im = self._image(i)
        if im.ndim == 2 or im.shape[-1] == 1:
            im = np.repeat(im.reshape(*im.shape[:2], 1), 3, axis=-1)
        return im

    def describe(self, i: int) -> str:
        return f"{self.name}[{i}]"


class SyntheticSource:
    """`n` random photos of 320x400 (smooth colour noise plus fine grain), a pure function of the
    index: training without files, for benchmarks and dry runs (as Flax's fake-data benchmark).
    Decoding costs nothing, so a benchmark on it measures the step and the loop, not the disk."""

    def __init__(self, n: int = 64, *, holdout: int = 0, shape: tuple[int, int] = (320, 400)):
        self._n, self.shape, self.name = n, shape, f"synthetic:{n}"
        self.heldout = [self.load(n + k) for k in range(holdout)]

    def __len__(self) -> int:
        return self._n

    def load(self, i: int) -> np.ndarray:
        rng = np.random.default_rng((7, i))
        h, w = self.shape
        coarse = rng.uniform(0, 255, (h // 40 + 1, w // 40 + 1, 3))
        smooth = np.repeat(np.repeat(coarse, 40, 0), 40, 1)[:h, :w]
        return np.clip(smooth + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.float32)

    def describe(self, i: int) -> str:
        return f"{self.name}[{i}]"


SOURCES = ("folder", "bundled", "tfds", "synthetic")  # config.data.source (schema.validate checks it)


def open_source(data) -> FolderSource | TfdsSource:
    """The source named by a validated `config.data` block (`schema.DataConfig`)."""
    if data.source == "folder":
        return FolderSource(data.folder, holdout=data.holdout)
    if data.source == "bundled":
        return bundled_source(holdout=data.holdout)
    if data.source == "synthetic":
        return SyntheticSource(holdout=data.holdout)
    return TfdsSource(data.tfds_name, holdout=data.holdout, data_dir=data.tfds_data_dir or None)


def prepare_photo(image: np.ndarray, size: int, sr_scale: int) -> np.ndarray:
    """A training photo as both data paths keep it: its shorter side resized to the crop size
    (style), or as stored (SR; resized only when a side is shorter than the crop)."""
    if not sr_scale or min(image.shape[:2]) < size:
        image = images.resize_short_side(image, size)
    return image


def decode_all(source, size: int, sr_scale: int, workers: int = 4) -> tuple[list[np.ndarray], set[str]]:
    """Every photo of `source` prepared as the loader prepares it (`prepare_photo`), decoded by
    `workers` threads, for the on-device path (`augment.pack`). Unreadable photos are left out and
    named in the returned set (the host loader substitutes the next photo instead, so the two paths
    give the same batches only when every photo reads)."""
    def one(i):
        try:
            # (uint8 as each is decoded: a whole SR folder in float32 would need 4x the memory)
            return images.to_uint8(prepare_photo(source.load(i), size, sr_scale))
        except ImageError:
            return None

    with cf.ThreadPoolExecutor(max(1, workers)) as pool:
        photos = list(pool.map(one, range(len(source))))
    bad = {source.describe(i) for i, p in enumerate(photos) if p is None}
    kept = [p for p in photos if p is not None]
    if not kept:
        raise FastnstError(f"{source.name}: no readable image")
    return kept, bad


class Batches:
    """Deterministic batches for steps `start, start+1, ...`, decoded ahead by a thread pool.

    Each batch is a dict with `input` (what the network sees) and `target` (what the losses
    compare to): the same crops for style transfer; LR and HR for super-resolution. With
    `num_styles` S (a multi-style network) it also holds `style`: sample k of the run is trained
    towards style `first_style` + k mod S, so every batch mixes styles and every style gets the
    same images (`first_style` > 0: styles added to a model that holds the first ones).

    Which photos, crops and flips a step uses is `augment`'s plan, the one the on-device path
    (`augment.DeviceImages`) draws inside the step, so both paths give the same batches.
    """

    def __init__(self, source, *, batch_size: int, image_size: int, seed: int, sr_scale: int = 0,
                 sr_sigma: float = 1.0, workers: int = 4, prefetch: int = 2, cache: bool = False,
                 process_index: int = 0, process_count: int = 1, num_styles: int = 0,
                 first_style: int = 0, flip: bool = False):
        # (the trainer refuses a batch that does not split over the job's devices, hence processes)
        assert batch_size % process_count == 0, (batch_size, process_count)
        self.source, self.batch_size, self.size = source, batch_size, image_size
        # In a multi-process run each process makes only its slice of the global batch.
        self.local = batch_size // process_count
        self.offset = process_index * self.local
        self.seed, self.sr_scale, self.sr_sigma, self.flip = seed, sr_scale, sr_sigma, flip
        self.num_styles, self.first_style = num_styles, first_style
        self._order, self._run = keys.order_key(seed), keys.run_keys(seed)[1]
        self.bad: set[str] = set()
        self._lock = threading.Lock()
        self._pool = cf.ThreadPoolExecutor(max(1, workers))
        self._prefetch = prefetch
        # Optional in-memory cache of decoded (and, for style, resized) images as uint8, so that
        # after the first epoch a fast accelerator is not limited by JPEG decoding.
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def _prepared(self, i: int) -> np.ndarray:
        """Image i, its shorter side resized to the crop size (style) or as stored (SR)."""
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        image = prepare_photo(self.source.load(i), self.size, self.sr_scale)
        if self._cache is not None:
            image = images.to_uint8(image)
            self._cache[i] = image
        return image

    def _example(self, index: int, u: np.ndarray, flip: bool) -> np.ndarray:
        """The crop of photo `index` at uniform position `u` (`augment.offsets`); an unreadable
        photo is replaced by the next readable one in index order (deterministically)."""
        n = len(self.source)
        for offset in range(n):
            i = (index + offset) % n
            try:
                image = self._prepared(i)
            except ImageError:
                with self._lock:
                    self.bad.add(self.source.describe(i))
                continue
            h, w = image.shape[:2]
            y = int(augment.offsets(u[0:1], h, self.size)[0])
            x = int(augment.offsets(u[1:2], w, self.size)[0])
            crop = image[y: y + self.size, x: x + self.size]
            return (crop[:, ::-1] if self.flip and flip else crop).astype(np.float32)
        raise FastnstError(f"{self.source.name}: no readable image")

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's slice of the global batch of `step` (all of it in a one-process run)."""
        plan = augment.host_plan(self._order, self._run, step, batch_size=self.batch_size, n=len(self.source))
        part = range(self.offset, self.offset + self.local)
        hr = np.stack(list(self._pool.map(
            lambda j: self._example(int(plan["index"][j]), plan["u"][j], bool(plan["flip"][j])), part)))
        k0 = step * self.batch_size + self.offset
        if self.num_styles:  # multi-style: sample k of the run is trained towards style k mod S
            k = np.arange(k0, k0 + self.local)
            style = (self.first_style + k % self.num_styles).astype(np.int32)
            return {"input": hr, "target": hr, "style": style}
        if not self.sr_scale:
            return {"input": hr, "target": hr}
        lr = np.stack(list(self._pool.map(lambda im: augment.degrade(im, self.sr_scale, sigma=self.sr_sigma),
                                          hr)))
        return {"input": lr, "target": hr}

    def iterate(self, start: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches for steps start, start+1, ...; `prefetch` of them are prepared ahead."""
        ahead = cf.ThreadPoolExecutor(1)
        pending = [ahead.submit(self.batch, s) for s in range(start, start + self._prefetch)]
        step = start + self._prefetch
        try:
            while True:
                out = pending.pop(0).result()
                pending.append(ahead.submit(self.batch, step))
                step += 1
                yield out
        finally:
            for f in pending:
                f.cancel()
            ahead.shutdown(wait=False)

    def close(self) -> None:
        """Stops the worker threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)


# Colour photographs that scikit-image ships inside its wheel (no download needed).
_SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                   "hubble_deep_field.jpg", "retina.jpg", "color.png")


def bundled_source(*, holdout: int = 1) -> FolderSource:
    """The colour photos scikit-image ships in its wheel (`data.source=bundled`): training with no
    photo folder at all, e.g. from an installed fastnst. Eight photos; the last `holdout` held out."""
    files = [sample_photo(n) for n in _SKIMAGE_PHOTOS]
    return FolderSource("scikit-image's photos", holdout=holdout, files=[f for f in files if f.is_file()])


def builtin_photos(dst: str | os.PathLike) -> Path:
    """Copies the colour sample photos bundled with scikit-image into `dst` (a fallback
    training folder for machines without a photo collection)."""
    try:
        import skimage
    except ImportError:
        raise FastnstError("no training photos: pass a folder, or pip install scikit-image "
                           "for its bundled sample photos") from None
    src = Path(skimage.__file__).parent / "data"
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in _SKIMAGE_PHOTOS:
        if (src / name).is_file() and not (dst / name).is_file():
            images.atomic_write_bytes(dst / name, (src / name).read_bytes())
    return dst


def photo_subset(folder: str | Path, dst: Path, n: int, holdout: int) -> Path:
    """A folder `dst` of links to the first `n` training photos of `folder` and its `holdout`
    held-out ones, in the same order (`data.FolderSource`); made once, then reused."""
    if dst.is_dir():
        return dst
    files = images.list_images(folder)
    if len(files) <= holdout:
        raise FastnstError(f"{folder}: found {len(files)} images, need more than {holdout}")
    keep = files[: min(n, len(files) - holdout)] + files[len(files) - holdout:]
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, f in enumerate(keep):
        (tmp / f"{i:05d}_{f.name}").symlink_to(Path(f).resolve())
    tmp.rename(dst)
    return dst


def sample_photo(name: str) -> Path:
    """A photo scikit-image ships (e.g. `chelsea.png`), available offline after installation."""
    import skimage

    return Path(skimage.__file__).parent / "data" / name


def training_folder(fallback_dir: str | os.PathLike) -> tuple[Path, int]:
    """(folder of training photos, photos to hold out): `../shared/data/train` when the clone has
    it, else scikit-image's bundled photos copied into `fallback_dir` (one held out)."""
    shared = shared_data() / "train"
    if shared.is_dir():
        return shared, 4
    return builtin_photos(fallback_dir), 1


def content_photo() -> Path:
    """A content photo for demos: `../shared/data/content/chicago.jpg`, else scikit-image's astronaut."""
    p = shared_data() / "content" / "chicago.jpg"
    return p if p.is_file() else sample_photo("astronaut.png")


def style_photo(name: str) -> Path:
    """The style image `name` from `../shared/data/styles`, else scikit-image's coffee photo."""
    p = shared_data() / "styles" / f"{name}.jpg"
    return p if p.is_file() else sample_photo("coffee.png")
