"""Image I/O: every common kind of file loads correctly; every bad one raises ImageError."""

import numpy as np
import pytest
from PIL import Image

from fastnst import images
from fastnst.errors import ImageError

GRAD = np.stack(np.meshgrid(np.arange(24) * 10, np.arange(16) * 15), -1)  # 16x24 x 2


def _rgb():
    return np.concatenate([GRAD, GRAD[..., :1] // 2], -1).astype(np.uint8)  # 16x24x3


def test_rgb_png_roundtrip(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    out = images.load_image(tmp_path / "a.png")
    assert out.dtype == np.float32 and out.shape == (16, 24, 3)
    np.testing.assert_array_equal(out, _rgb())


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(_rgb()).save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = images.load_image(tmp_path / "r.jpg")
    assert out.shape == (24, 16, 3)
    ref = np.rot90(_rgb(), k=-1).astype(np.float32)
    assert np.abs(out - ref).mean() < 3


def test_grayscale_palette_and_cmyk(tmp_path):
    g = (GRAD[..., 0]).astype(np.uint8)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    out = images.load_image(tmp_path / "g.png")
    np.testing.assert_array_equal(out, np.repeat(g[..., None], 3, -1))

    Image.fromarray(_rgb()).convert("P", palette=Image.ADAPTIVE, colors=256).save(tmp_path / "p.png")
    p = Image.open(tmp_path / "p.png")
    np.testing.assert_array_equal(images.load_image(tmp_path / "p.png"), np.asarray(p.convert("RGB")))

    Image.fromarray(_rgb()).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    out = images.load_image(tmp_path / "c.jpg")
    assert out.shape == (16, 24, 3) and np.abs(out - _rgb()).mean() < 6


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = images.load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[3, 3], [255, 255, 255])

    la = np.stack([np.full((4, 4), 10, np.uint8), np.full((4, 4), 0, np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(images.load_image(tmp_path / "la.png"), 255)


def test_16_bit_grayscale_is_scaled(tmp_path):
    a = np.array([[0, 65535], [32768, 257]], np.uint16)
    Image.fromarray(a).save(tmp_path / "d.png")
    out = images.load_image(tmp_path / "d.png")
    np.testing.assert_allclose(out[..., 0], a / 257.0, atol=1e-3)
    kept = images.load_image(tmp_path / "d.png", keep_8bit=True)  # not 8-bit: stays float32
    assert kept.dtype == np.float32
    np.testing.assert_array_equal(kept, out)


def test_keep_8bit_gives_the_same_values_as_uint8(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), np.uint8)
    Image.fromarray(a).save(tmp_path / "c.png")
    kept = images.load_image(tmp_path / "c.png", keep_8bit=True)
    assert kept.dtype == np.uint8
    np.testing.assert_array_equal(kept, images.load_image(tmp_path / "c.png"))
    np.testing.assert_array_equal(images.to_uint8(kept), a)  # uint8 passes through as is


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "text", "too_big"])
def test_bad_files_raise_image_error(tmp_path, kind):
    p = tmp_path / "x.jpg"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(p)
        p.write_bytes(p.read_bytes()[:600])
    elif kind == "text":
        p.write_text("not an image at all")
    elif kind == "too_big":
        Image.fromarray(_rgb()).save(p)
    with pytest.raises(ImageError, match="x.jpg"):
        images.load_image(p, max_pixels=100 if kind == "too_big" else None)


def test_the_pixel_limit_is_ours_not_pillows(tmp_path, monkeypatch):
    """An image above Pillow's own bomb limit but within ours loads (a 100 MP photo with
    FASTNST_MAX_PIXELS raised); one above ours is refused from its header, before decoding."""
    Image.fromarray(_rgb()).save(tmp_path / "b.png")
    n = _rgb().shape[0] * _rgb().shape[1]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", n // 4)  # the file is a "bomb" to Pillow now
    assert images.load_image(tmp_path / "b.png", max_pixels=n).shape == _rgb().shape
    decoded = []
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1))  # (PNG's decoder)
    with pytest.raises(ImageError, match="exceeds the limit.*FASTNST_MAX_PIXELS"):
        images.load_image(tmp_path / "b.png", max_pixels=n - 1)
    assert not decoded


def test_save_is_atomic_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    out = images.save_image(tmp_path / "o" / "x.jpg", np.full((8, 8, 3), 300.0))
    assert np.all(images.load_image(out) >= 250)
    images.save_image(tmp_path / "x.png", _rgb().astype(np.float32))
    before = (tmp_path / "x.png").read_bytes()

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError):
        images.save_image(tmp_path / "x.png", np.zeros((8, 8, 3)))
    assert (tmp_path / "x.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "x.png"]
    with pytest.raises(ImageError, match="must end in"):
        images.save_image(tmp_path / "x.gif", np.zeros((8, 8, 3)))


def test_resize_helpers():
    im = np.random.default_rng(0).uniform(0, 255, (30, 60, 3)).astype(np.float32)
    assert images.resize_max_side(im, 20).shape == (10, 20, 3)
    assert images.resize_max_side(im, 100) is im
    assert images.resize_short_side(im, 60).shape == (60, 120, 3)
    assert images.side_by_side([im, im], height=15).shape == (15, 30 + 8 + 30, 3)


def test_labelled_puts_a_caption_strip_above_the_panels_and_widens_a_panel_narrower_than_its_caption():
    a = np.full((40, 60, 3), 100.0, np.float32)
    b = np.zeros((40, 10, 3), np.float32)  # narrower than its caption
    fig = images.labelled([a, b], ["photo", "a long caption"], height=40, gap=4, font_px=12)
    strip, row = fig[:24], fig[24:]
    assert row.shape[0] == 40 and np.allclose(row[:, :60], 100.0)  # the first panel, unscaled
    assert np.all(row[:, 60:64] == 255)  # the gap
    dark = np.flatnonzero((row[20] == 0).all(-1))
    assert dark.min() > 64 + 5 and dark.size == 10  # b is centred on white, as wide as its caption
    ink = np.flatnonzero((strip < 128).any(axis=(0, 2)))
    assert ink.size and ink.min() > 0 and ink.max() > 64  # both captions are drawn, within the figure
    with pytest.raises(ValueError, match="2 panels but 1 labels"):
        images.labelled([a, b], ["one"])
