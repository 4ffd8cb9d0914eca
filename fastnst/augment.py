"""Which photos, crops and flips a step trains on (one plan, drawn the same way on the host and on
the device), and the SR degradation that turns a crop into the network's input.

`draw(order, data_key, step, ...)` is the plan of a global step: for each sample of the batch, the
photo (an epoch-wise permutation from `keys.order_key(seed)` and the epoch), the crop position (a
uniform number per axis, turned into pixels by `offsets` once the photo's size is known) and
whether it is mirrored. Both data paths use it:

* the host loader (`data.Batches`) draws the plan, decodes those photos in threads and cuts the
  crops with NumPy, for data that does not fit on the device;
* `DeviceImages` holds every photo once, decoded into one uint8 array on the device; `batch` cuts
  the crops (and, for super-resolution, applies the blur and bicubic downscaling as the same two
  matrices as the host's `degrade`) inside the jitted step, from the step's key. No host work per step,
  so a device can run many steps per dispatch.

For the same seed and step the two paths give the same crops (exactly: both are uint8 pixels of the
same photos at the same offsets; the host loader without its cache keeps the resized photo in
float32, within 0.5 of it); the SR inputs agree to float32 rounding of the two matrix products.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from fastnst import images, keys


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a batch is made of (static): the crop, the SR degradation, the mirroring and, for a
    multi-style net, which style each sample is trained towards (sample k of the run: style
    `first_style + k mod num_styles`)."""
    batch_size: int
    size: int
    sr_scale: int = 0
    sr_sigma: float = 1.0
    flip: bool = False
    num_styles: int = 0
    first_style: int = 0


def draw(order: jax.Array, data_key: jax.Array, step, *, batch_size: int, n: int) -> dict[str, jax.Array]:
    """The plan of global step `step` over `n` photos: `index` [B] int32 (the photo of sample
    `step * B + j`: position `k mod n` of epoch `k // n`'s permutation), `u` [B, 2] float32 in
    [0, 1) (crop position along height and width) and `flip` [B] bool (a fair coin per sample; used
    only where mirroring is on)."""
    k = step * batch_size + jnp.arange(batch_size)
    epoch, pos = k // n, k % n
    index = jax.vmap(lambda e, p: jax.random.permutation(jax.random.fold_in(order, e), n)[p])(epoch, pos)
    r = jax.random.uniform(data_key, (batch_size, 3), jnp.float32)
    return {"index": index.astype(jnp.int32), "u": r[:, :2], "flip": r[:, 2] < 0.5}


@functools.partial(jax.jit, static_argnames=("batch_size", "n"))
def _step_plan(order, run, step, *, batch_size: int, n: int) -> dict[str, jax.Array]:
    return draw(order, keys.step_keys(run, step)[0], step, batch_size=batch_size, n=n)


def host_plan(order: jax.Array, run: jax.Array, step: int, *, batch_size: int, n: int) -> dict:
    """The plan of global step `step` as NumPy arrays (the host loader's), from the photo-order key
    and the run key (`keys`)."""
    return {k: np.asarray(v) for k, v in _step_plan(order, run, step, batch_size=batch_size, n=n).items()}


def offsets(u, extent, size: int, xp=np):
    """Crop offsets in [0, extent - size] from uniform numbers `u` (float32): floor(u * (extent -
    size + 1)), computed in float32 the same way by NumPy (host) and XLA (device), so both paths
    cut the same crop; clipped because the product can round up to the bound."""
    room = xp.asarray(extent - size + 1).astype(xp.float32)
    return xp.minimum(xp.floor(u.astype(xp.float32) * room).astype(xp.int32), extent - size)


# --------------------------------------------------------------------------- photos on the device


@struct.dataclass
class DeviceImages:
    """Every training photo, decoded once: `pixels` [N, H, W, 3] uint8 (each photo at the top left,
    zero-padded to the largest height and width), `shapes` [N, 2] int32 (each photo's own height
    and width) and `order` (raw key data of `keys.order_key(seed)`). A pytree: it travels with the
    step's other inputs, replicated over the devices."""
    pixels: jax.Array
    shapes: jax.Array
    order: jax.Array

    @property
    def count(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.pixels.size)


def pack(photos: Sequence[np.ndarray], order: jax.Array) -> DeviceImages:
    """Host photos (HxWx3, values in [0, 255], any sizes) as one padded uint8 array (on the host;
    the trainer replicates it over the devices)."""
    if not photos:
        raise ValueError("no photos to pack")
    h = max(p.shape[0] for p in photos)
    w = max(p.shape[1] for p in photos)
    pixels = np.zeros((len(photos), h, w, 3), np.uint8)
    for i, p in enumerate(photos):
        pixels[i, : p.shape[0], : p.shape[1]] = np.clip(np.rint(p), 0, 255).astype(np.uint8)
    shapes = np.asarray([p.shape[:2] for p in photos], np.int32)
    return DeviceImages(pixels=pixels, shapes=shapes, order=np.asarray(jax.random.key_data(order)))


def crops(images: DeviceImages, plan: dict, size: int, flip: bool) -> jax.Array:
    """The plan's [B, size, size, 3] float32 crops, cut on the device."""
    hw = images.shapes[plan["index"]]
    y, x = offsets(plan["u"][:, 0], hw[:, 0], size, jnp), offsets(plan["u"][:, 1], hw[:, 1], size, jnp)

    def one(i, y0, x0):
        return jax.lax.dynamic_slice(images.pixels[i], (y0, x0, 0), (size, size, 3))

    out = jax.vmap(one)(plan["index"], y, x)
    if flip:
        out = jnp.where(plan["flip"][:, None, None, None], out[:, :, ::-1], out)
    return out.astype(jnp.float32)


# --------------------------------------------------------------------------- the SR degradation


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Normalised 1-D Gaussian with radius int(truncate * sigma + 0.5), as scipy.ndimage uses."""
    radius = max(1, int(truncate * sigma + 0.5))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(image: np.ndarray, sigma: float, *, truncate: float = 4.0) -> np.ndarray:
    """Separable Gaussian blur of HxWxC with mirrored borders (scipy.ndimage's 'reflect')."""
    out = np.asarray(image)
    out = out.astype(np.result_type(out.dtype, np.float32))
    k = gaussian_kernel(sigma, truncate).astype(out.dtype)
    r = len(k) // 2
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="symmetric")
        n = out.shape[axis]
        out = sum(k[i] * np.take(p, range(i, i + n), axis=axis) for i in range(len(k)))
    return out


@functools.lru_cache(maxsize=32)
def degrade_operator(n: int, scale: int, sigma: float) -> np.ndarray:
    """The (n // scale, n) matrix that `degrade` applies along an axis of n pixels: the Gaussian
    blur (`gaussian_blur`, sigma 0: none) followed by Pillow's bicubic downsampling (`images.resize`),
    each obtained by applying that very function to the n unit vectors (a one-pixel-wide image with
    n channels: the blur and the resize act along its height only)."""
    eye = np.eye(n, dtype=np.float32)[:, None, :]
    blur = gaussian_blur(eye, sigma)[:, 0, :].astype(np.float64) if sigma else np.eye(n)
    down = images.resize(eye, (n // scale, 1), method="bicubic")[:, 0, :].astype(np.float64)
    return (down @ blur).astype(np.float32)


def degrade(hr: np.ndarray, scale: int, *, sigma: float = 1.0) -> np.ndarray:
    """The paper's SR input: Gaussian blur (sigma 1.0), then bicubic downsampling by `scale`.

    Both are linear and separable, so they are applied as one matrix per axis (two matrix products,
    in BLAS, which does not hold the GIL): a training batch is degraded by the loader's threads in
    parallel, where the NumPy blur's many small operations made the loader the bottleneck of SR
    training on a GPU (78 vs 209 images/s with and without the blur on an H200, results/recipe_h200/).
    """
    h, w = hr.shape[:2]
    rows, cols = degrade_operator(h, scale, float(sigma)), degrade_operator(w, scale, float(sigma))
    x = np.asarray(hr, np.float32)
    c = x.shape[2]
    x = (rows @ x.reshape(h, w * c)).reshape(h // scale, w, c)  # along the height
    x = (cols @ x.transpose(1, 0, 2).reshape(w, -1)).reshape(w // scale, h // scale, c)  # along the width
    return np.clip(x.transpose(1, 0, 2), 0, 255)



def degrade_batch(hr: jax.Array, scale: int, sigma: float) -> jax.Array:
    """`degrade` for a batch on the device: the same blur + bicubic matrices, one per axis,
    multiplied at full float32 precision (no TF32 on GPUs), clipped to [0, 255]."""
    _, h, w, _ = hr.shape
    rows = jnp.asarray(degrade_operator(h, scale, float(sigma)))
    cols = jnp.asarray(degrade_operator(w, scale, float(sigma)))
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("ph,nhwc->npwc", rows, hr, precision=hi)
    x = jnp.einsum("qw,npwc->npqc", cols, x, precision=hi)
    return jnp.clip(x, 0, 255)


def batch(images: DeviceImages, spec: DataSpec, data_key: jax.Array, step) -> dict[str, jax.Array]:
    """The batch of global step `step`, made on the device: `input` and `target` as `data.Batches`
    makes them (and `style` for a multi-style net)."""
    plan = draw(images.order, data_key, step, batch_size=spec.batch_size, n=images.count)
    hr = crops(images, plan, spec.size, spec.flip)
    out = {"input": degrade_batch(hr, spec.sr_scale, spec.sr_sigma) if spec.sr_scale else hr, "target": hr}
    if spec.num_styles:
        k = step * spec.batch_size + jnp.arange(spec.batch_size)
        out["style"] = (spec.first_style + k % spec.num_styles).astype(jnp.int32)
    return out
