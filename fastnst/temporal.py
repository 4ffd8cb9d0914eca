"""Temporal stability: synthetic clips with known motion, optical flow, and the warping error.

Warping error (Lai et al., ECCV 2018, "Learning Blind Video Temporal Consistency"): for each pair of
consecutive frames, output frame t-1 is warped to frame t with the backward flow computed on the
*input* frames, and the squared RGB difference (values in [0, 1]) is averaged over the pixels
that are not occluded; the clip's error is the mean over pairs. Occlusion comes from a
forward-backward check (Sundaram et al. 2010): a pixel is kept when
|F_b(x) + F_f(x + F_b(x))|^2 < 0.01 (|F_b(x)|^2 + |F_f(x + F_b(x))|^2) + 0.5 and x + F_b(x) is inside
the frame. Flow is OpenCV's DIS (medium preset) on grey frames.

`synthetic_clip` renders pans, zooms and slow rotations over a photo, with sensor-like noise and
JPEG compression, and returns the exact backward flow, so the metric can be checked against it.
"""

from __future__ import annotations

import io

import numpy as np


def _cv2():
    from fastnst.errors import need

    return need("cv2", "video", "optical flow (OpenCV)")


def _motion(kind: str, t: int, h: int, w: int, speed: float) -> np.ndarray:
    """3x3 matrix mapping frame-t pixel coordinates to photo coordinates (about the frame centre)."""
    c = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1]], np.float64)
    c_inv = np.linalg.inv(c)
    if kind == "pan":
        m = np.array([[1, 0, speed * t], [0, 1, 0.4 * speed * t], [0, 0, 1]], np.float64)
        return c @ m @ c_inv
    if kind == "zoom":
        s = (1.0 - 0.004 * speed) ** t
        return c @ np.diag([s, s, 1.0]) @ c_inv
    if kind == "rotate":
        a = np.deg2rad(0.25 * speed * t)
        m = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        return c @ m @ c_inv
    raise ValueError(f"unknown motion {kind!r} (pan, zoom, rotate)")


def fit_photo(photo: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The photo resized (Lanczos) to 1.6x the clip size on its tighter side, so that camera motion
    stays inside it."""
    from fastnst import images

    s = max(size[0] * 1.6 / photo.shape[0], size[1] * 1.6 / photo.shape[1])
    resized = images.resize(photo, (round(photo.shape[0] * s), round(photo.shape[1] * s)), method="lanczos")
    return np.clip(resized, 0, 255)


def synthetic_clip(photo: np.ndarray, kind: str, *, frames: int = 8, size: tuple[int, int] = (180, 320),
                   speed: float = 2.0, noise: float = 2.0, jpeg_quality: int | None = 90,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(frames [T, H, W, 3] float32 in [0, 255], exact backward flow [T-1, H, W, 2]).

    Frame t shows the photo under a camera motion (`pan` px per frame, `zoom`, `rotate`), centred
    on the photo; then Gaussian noise of std `noise` and JPEG compression are applied per frame.
    flow[t-1] maps each pixel x of frame t to its position x + flow in frame t-1.
    """
    cv2 = _cv2()
    from PIL import Image

    h, w = size
    ph, pw = photo.shape[:2]
    offset = np.array([[1, 0, (pw - w) / 2], [0, 1, (ph - h) / 2], [0, 0, 1]], np.float64)
    rng = np.random.default_rng(seed)
    out, flows, mats = [], [], []
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.stack([xs, ys, np.ones_like(xs)], -1)
    for t in range(frames):
        m = offset @ _motion(kind, t, h, w, speed)
        mats.append(m)
        frame = cv2.warpAffine(np.asarray(photo, np.float32), m[:2], (w, h),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
        frame = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255) if noise else frame
        if jpeg_quality:
            buf = io.BytesIO()
            Image.fromarray(np.clip(np.rint(frame), 0, 255).astype(np.uint8)).save(buf, "JPEG",
                                                                                    quality=jpeg_quality)
            frame = np.asarray(Image.open(buf), np.float32)
        out.append(np.asarray(frame, np.float32))
        if t:
            prev = pts @ (np.linalg.inv(mats[t - 1]) @ m).T  # frame-t pixel -> frame t-1 position
            flows.append((prev[..., :2] - pts[..., :2]).astype(np.float32))
    return np.stack(out), np.stack(flows) if flows else np.zeros((0, h, w, 2), np.float32)


def _grey(frame: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(frame @ np.array([0.299, 0.587, 0.114])), 0, 255).astype(np.uint8)


def flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense flow F with a(x) ~ b(x + F(x)) (DIS, medium preset), [H, W, 2] float32 (x, y)."""
    cv2 = _cv2()
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(_grey(a), _grey(b), None)


def _remap(image: np.ndarray, f: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    h, w = f.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(np.asarray(image, np.float32), xs + f[..., 0], ys + f[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def valid_mask(backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Pixels of frame t that are visible in frame t-1: inside the frame and forward-backward
    consistent (the criterion of the module docstring)."""
    fwd_at = _remap(forward, backward)
    total = backward + fwd_at
    ok = np.sum(total**2, -1) < 0.01 * (np.sum(backward**2, -1) + np.sum(fwd_at**2, -1)) + 0.5
    return ok & _inside(backward)


def _inside(backward: np.ndarray) -> np.ndarray:
    """Pixels whose flow lands inside the frame."""
    h, w = backward.shape[:2]
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    return ((xs + backward[..., 0] >= 0) & (xs + backward[..., 0] <= w - 1)
            & (ys + backward[..., 1] >= 0) & (ys + backward[..., 1] <= h - 1))


def warping_error(inputs: np.ndarray, outputs: np.ndarray, *, flows: np.ndarray | None = None) -> float:
    """Mean over consecutive pairs of the masked squared RGB difference (values in [0, 1]) between
    output t and output t-1 warped to t. Flows come from the input frames (DIS), or are given
    (exact backward flows, e.g. from `synthetic_clip`, with no occlusion mask but the frame edge)."""
    errs = []
    for t in range(1, len(inputs)):
        if flows is None:
            back, fwd = flow(inputs[t], inputs[t - 1]), flow(inputs[t - 1], inputs[t])
            mask = valid_mask(back, fwd)
        else:
            back = flows[t - 1]
            mask = _inside(back)
        o_t = np.asarray(outputs[t], np.float32)
        if o_t.shape[:2] != back.shape[:2]:  # SR outputs: compare at the input's resolution
            o_t = _resize(o_t, back.shape[:2])
            o_prev = _resize(np.asarray(outputs[t - 1], np.float32), back.shape[:2])
        else:
            o_prev = np.asarray(outputs[t - 1], np.float32)
        warped = _remap(o_prev, back)
        d = np.sum(((o_t - warped) / 255.0) ** 2, -1)
        errs.append(float(np.sum(d * mask) / max(np.sum(mask), 1)))
    return float(np.mean(errs)) if errs else 0.0


def _resize(image: np.ndarray, hw) -> np.ndarray:
    cv2 = _cv2()
    return cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
