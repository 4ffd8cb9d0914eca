"""A detector for the bright discs style networks paint into flat regions (skies, walls, fields).

A disc is a connected region of the output that is near saturation and nearly flat while the
photo under it is not: a blown-out sky in the photo is not the network's doing, so it does not
count. The number is the discs' area as a fraction of the image (and their count), per image.
It needs no training and no reference model, so it measures shipped and newly trained networks
alike (`disc_area`), on any photos.
"""

from __future__ import annotations

import dataclasses

import numpy as np

LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)


@dataclasses.dataclass(frozen=True)
class DiscSettings:
    """What counts as a disc. Luminance is 0..255 (BT.601); flatness is the local standard
    deviation of luminance in a `window`-pixel square."""
    bright: float = 225.0  # luminance at least this
    flat: float = 6.0  # local std below this
    window: int = 9
    min_area: float = 2e-4  # regions smaller than this fraction of the image are ignored (specks)


def _local_std(y: np.ndarray, window: int) -> np.ndarray:
    from scipy import ndimage

    mean = ndimage.uniform_filter(y, window, mode="reflect")
    sq = ndimage.uniform_filter(y * y, window, mode="reflect")
    return np.sqrt(np.maximum(sq - mean * mean, 0.0))


def _luma(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, np.float32)[..., :3] @ LUMA


def bright_flat(image: np.ndarray, s: DiscSettings = DiscSettings()) -> np.ndarray:
    """HxW bool: pixels near saturation in a nearly flat neighbourhood."""
    y = _luma(image)
    return (y >= s.bright) & (_local_std(y, s.window) < s.flat)


def disc_mask(output: np.ndarray, photo: np.ndarray, s: DiscSettings = DiscSettings()) -> np.ndarray:
    """HxW bool: the discs of `output` (HxWx3, 0..255) painted over `photo` (same size): each
    connected bright region of the output that holds a flat core (so its rim, where the window
    also sees the surroundings, counts too), where the photo is not bright and flat itself."""
    from scipy import ndimage

    if output.shape[:2] != photo.shape[:2]:
        raise ValueError(f"output {output.shape[:2]} and photo {photo.shape[:2]} differ in size")
    photo_flat = ndimage.binary_dilation(bright_flat(photo, s), iterations=2)
    bright = (_luma(output) >= s.bright) & ~photo_flat
    labels, n = ndimage.label(bright)
    if n == 0:
        return bright
    cores = np.unique(labels[bright_flat(output, s) & bright])
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = [k for k in cores if k and sizes[k] >= s.min_area * bright.size]
    return np.isin(labels, keep)


def disc_area(output: np.ndarray, photo: np.ndarray, s: DiscSettings = DiscSettings()) -> dict:
    """{'area': fraction of the image covered by discs, 'count': how many discs}."""
    from scipy import ndimage

    mask = disc_mask(output, photo, s)
    return {"area": float(mask.mean()), "count": int(ndimage.label(mask)[1])}
