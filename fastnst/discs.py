"""A detector for the bright discs style networks paint into flat regions (skies, walls, fields).

A disc is a connected region of the output that is near saturation in some colour channel and
nearly flat, where the photo is not blown out itself (a white sky is not the network's doing).
Brightness is the largest channel (HSV's value), not luminance: a network fine-tuned for two
steps turned its white discs cyan (0, 255, 255: luminance 179) and kept them, and a luminance
rule no longer saw them (results/discs/README.md). The number is the discs' area as a fraction
of the image (and their count), per image. It needs no training and no reference model, so it
measures shipped and newly trained networks alike (`disc_area`), on any photos.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class DiscSettings:
    """What counts as a disc. Brightness is the largest channel (0..255); flatness is its local
    standard deviation in a `window`-pixel square. Not the network's doing: where the photo is
    blown out (its luminance, BT.601, that bright and flat), and where the photo is bright and
    flat and the output kept its colour (every channel within `same`)."""
    bright: float = 225.0  # brightness at least this
    flat: float = 6.0  # local std below this
    window: int = 9
    min_area: float = 2e-4  # regions smaller than this fraction of the image are ignored (specks)
    same: float = 12.0  # the output kept the photo's colour: channels this close (0..255)


LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)


def _local_std(y: np.ndarray, window: int) -> np.ndarray:
    from scipy import ndimage

    mean = ndimage.uniform_filter(y, window, mode="reflect")
    sq = ndimage.uniform_filter(y * y, window, mode="reflect")
    return np.sqrt(np.maximum(sq - mean * mean, 0.0))


def _value(image: np.ndarray) -> np.ndarray:
    return np.max(np.asarray(image, np.float32)[..., :3], axis=-1)


def bright_flat(image: np.ndarray, s: DiscSettings = DiscSettings(), weights=None) -> np.ndarray:
    """HxW bool: pixels near saturation in a nearly flat neighbourhood. Brightness is the largest
    channel, or with `weights` (e.g. LUMA) the weighted sum of the channels."""
    image = np.asarray(image, np.float32)[..., :3]
    y = _value(image) if weights is None else image @ weights
    return (y >= s.bright) & (_local_std(y, s.window) < s.flat)


def disc_mask(output: np.ndarray, photo: np.ndarray, s: DiscSettings = DiscSettings()) -> np.ndarray:
    """HxW bool: the discs of `output` (HxWx3, 0..255) painted over `photo` (same size): each
    connected bright region of the output that holds a flat core (so its rim, where the window
    also sees the surroundings, counts too), less what is the photo's own (`DiscSettings`)."""
    from scipy import ndimage

    if output.shape[:2] != photo.shape[:2]:
        raise ValueError(f"output {output.shape[:2]} and photo {photo.shape[:2]} differ in size")
    out, photo = (np.asarray(a, np.float32)[..., :3] for a in (output, photo))
    kept = bright_flat(photo, s) & (np.max(np.abs(out - photo), -1) < s.same)
    photos = ndimage.binary_dilation(bright_flat(photo, s, LUMA), iterations=2) | kept
    bright = (_value(out) >= s.bright) & ~photos
    labels, n = ndimage.label(bright)
    if n == 0:
        return bright
    cores = np.unique(labels[bright_flat(out, s) & bright])
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = [k for k in cores if k and sizes[k] >= s.min_area * bright.size]
    return np.isin(labels, keep)


def disc_area(output: np.ndarray, photo: np.ndarray, s: DiscSettings = DiscSettings()) -> dict:
    """{'area': fraction of the image covered by discs, 'count': how many discs}."""
    from scipy import ndimage

    mask = disc_mask(output, photo, s)
    return {"area": float(mask.mean()), "count": int(ndimage.label(mask)[1])}
