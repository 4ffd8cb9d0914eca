"""The bright-disc detector against pictures whose discs are known."""

import numpy as np

from fastnst import discs


def _textured(h=120, w=160, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(128, 30, (h, w, 3)), 0, 255).astype(np.float32)


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_a_painted_disc_is_found_with_its_area_and_a_blown_out_sky_is_not():
    photo = _textured()
    disc = _disc(120, 160, 40, 50, 12)
    out = photo.copy()
    out[disc] = 250.0
    got = discs.disc_area(out, photo)
    assert got["count"] == 1
    # the whole disc, rim included (a neighbouring bright pixel of the texture may join it)
    assert disc.mean() <= got["area"] <= 1.05 * disc.mean()
    assert discs.disc_area(photo, photo) == {"area": 0.0, "count": 0}
    sky = photo.copy()
    sky[disc] = 250.0  # the photo itself is blown out there: not the network's doing
    assert discs.disc_area(out, sky)["area"] == 0.0


def test_specks_and_dark_or_textured_patches_are_not_discs():
    photo = _textured(seed=1)
    out = photo.copy()
    out[_disc(120, 160, 60, 80, 1)] = 255.0  # a speck below min_area
    out[_disc(120, 160, 30, 30, 12)] = 40.0  # flat but dark
    bright_noisy = _disc(120, 160, 90, 120, 12)
    out[bright_noisy] = 230.0 + np.random.default_rng(2).normal(0, 20, (int(bright_noisy.sum()), 3))
    assert discs.disc_area(np.clip(out, 0, 255), photo)["area"] == 0.0
    two = photo.copy()
    two[_disc(120, 160, 30, 30, 10) | _disc(120, 160, 90, 120, 10)] = 252.0
    assert discs.disc_area(two, photo)["count"] == 2
