"""Image transformation networks of the paper (§3.1 and supplementary material).

One module serves both tasks:

* style transfer (`style_net`): reflection-pad 40 px; 32x9x9 s1; 64x3x3 s2; 128x3x3 s2; five
  residual blocks (two unpadded 3x3 convs, centre-cropped identity, no ReLU after the add);
  64x3x3 and 32x3x3 convs of stride 1/2; 3x9x9 s1. Output size = input size.
* super-resolution x f (`sr_net`): 64x9x9; four residual blocks of 64 channels; log2(f) convs of
  stride 1/2 with 64 channels; 3x9x9. Output size = f x input size.

Normalisation + ReLU follow every conv except the last and the second conv of each residual
block. Inputs are RGB NHWC in [0, 255]; they are mapped to [-1, 1] on entry.

Output mapping (documented deviation): `127.5 * (tanh(x) + 1)`, i.e. exactly onto (0, 255). The
paper's code uses `150 * tanh(x)` around the mean pixel and clips when saving; our range needs no
clipping, so the losses see exactly the image that is saved.

Options (all named in the config): `norm` = batch (paper) | instance (Ulyanov et al.);
`upsample` = transpose (paper, fractionally strided conv) | resize_conv (nearest x2 then 3x3 conv;
avoids checkerboard artefacts); `padding` = paper (one big reflection pad, unpadded residual
convs) | reflect_same (reflection padding at every conv); `width` multiplies every hidden width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fastnst import layers

NORMS = ("batch", "instance")
UPSAMPLES = ("transpose", "resize_conv")
PADDINGS = ("paper", "reflect_same")


def _reflect(x: jax.Array, pad: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect") if pad else x


# _PHASE[p][u][t]: whether tap t (offset -1, 0, +1) of a 3x3 conv on the nearest-upsampled image,
# at an output row of parity p, reads row u of a 2-row window of the low-resolution image that
# starts at row offset p - 1 (parity 0 reads rows i-1, i, i; parity 1 reads i, i+1, i+1).
_PHASE = np.array([[[1, 0, 0], [0, 1, 1]],
                   [[1, 1, 0], [0, 0, 1]]], np.float32)


class NearestUpConv(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 conv, computed without upsampling.

    Same parameters as `nn.Conv(features, (3, 3))` applied to the upsampled image, and the same
    result: each of the four output phases (row and column parity) reads only a 2x2 window of the
    low-resolution input, with a kernel made by summing taps. So one 2x2 conv of the input
    (padded by 1) with 4x the output channels, sliced per phase and interleaved, does it, with 4/9
    of the multiplications of the upsample-then-conv form and no 4x larger upsampled tensor. Zero
    padding of the upsampled image equals zero padding here; its reflection padding equals edge
    padding here (`edge_pad`).
    """

    features: int
    edge_pad: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        f = self.features
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, c, f))
        bias = self.param("bias", nn.initializers.zeros_init(), (f,))
        windows = jnp.einsum("pay,qbx,yxio->abipqo", _PHASE, _PHASE, kernel).reshape(2, 2, c, 4 * f)
        if self.edge_pad:
            y = layers.conv2d(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge"), windows)
        else:
            y = layers.conv2d(x, windows, padding=1)
        y = y.reshape(n, h + 1, w + 1, 2, 2, f)  # phase (p, q) of pixel (i, j) is at (i + p, j + q)
        rows = [jnp.stack([y[:, p: p + h, q: q + w, p, q] for q in (0, 1)], axis=3) for p in (0, 1)]
        return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, f) + bias


class TransformNet(nn.Module):
    """Conv encoder, residual blocks, fractionally strided decoder, scaled tanh.

    Attributes:
      stem: channels of the first 9x9 conv.
      down: channels of each stride-2 3x3 conv.
      res_channels / num_res: residual blocks.
      up: channels of each stride-1/2 3x3 conv.
      norm, upsample, padding: see the module docstring.
    """

    stem: int = 32
    down: tuple[int, ...] = (64, 128)
    num_res: int = 5
    res_channels: int = 128
    up: tuple[int, ...] = (64, 32)
    norm: str = "batch"
    upsample: str = "transpose"
    padding: str = "paper"

    def _norm(self, x, train: bool, name: str):
        if self.norm == "batch":
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)(x)
        return nn.InstanceNorm(epsilon=1e-5, name=name)(x)

    def _conv(self, x, features: int, kernel: int, name: str, stride: int = 1, pad: bool = True):
        p = kernel // 2 if pad else 0
        if self.padding == "reflect_same" and p:
            x, p = _reflect(x, p), 0
        return layers.Conv(features, kernel, strides=stride, padding=p, name=name)(x)

    def _up(self, x, features: int, name: str):
        if self.upsample == "transpose":
            # Stride 1/2: same output size as torch's ConvTranspose2d(k=3, s=2, p=1, output_padding=1).
            return nn.ConvTranspose(features, (3, 3), strides=(2, 2), padding="SAME", name=name)(x)
        return NearestUpConv(features, edge_pad=self.padding == "reflect_same", name=name)(x)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        if self.norm not in NORMS or self.upsample not in UPSAMPLES or self.padding not in PADDINGS:
            raise ValueError(f"bad net options norm={self.norm} upsample={self.upsample} "
                             f"padding={self.padding}")
        _, h, w, _ = images.shape
        mult = 2 ** len(self.down)
        x = images / 127.5 - 1.0
        # Sizes not divisible by the total stride: reflect-pad up to a multiple, crop back at the end.
        ph, pw = -h % mult, -w % mult
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect") if ph or pw else x
        big_pad = 2 * self.num_res * mult if self.padding == "paper" else 0
        x = _reflect(x, big_pad)

        x = nn.relu(self._norm(self._conv(x, self.stem, 9, "conv_in"), train, "norm_in"))
        for i, c in enumerate(self.down):
            x = nn.relu(self._norm(self._conv(x, c, 3, f"down{i}", stride=2), train, f"norm_down{i}"))
        for i in range(self.num_res):
            x = self._residual(x, train, f"res{i}")
        for i, c in enumerate(self.up):
            x = nn.relu(self._norm(self._up(x, c, f"up{i}"), train, f"norm_up{i}"))
        x = self._conv(x, 3, 9, "conv_out")

        factor = 2 ** len(self.up) // mult  # 1 for style transfer, the SR scale for SR
        x = x[:, : h * factor, : w * factor]
        return 127.5 * (jnp.tanh(x) + 1.0)

    def _residual(self, x, train: bool, name: str):
        c = self.res_channels
        paper = self.padding == "paper"
        y = self._conv(x, c, 3, f"{name}_conv0", pad=not paper)
        y = nn.relu(self._norm(y, train, f"{name}_norm0"))
        y = self._norm(self._conv(y, c, 3, f"{name}_conv1", pad=not paper), train, f"{name}_norm1")
        if paper:  # two unpadded 3x3 convs shrink each side by 2: crop the identity to match
            x = x[:, 2:-2, 2:-2, :]
        return x + y


def style_net(*, norm: str = "batch", upsample: str = "transpose", padding: str = "paper",
              width: float = 1.0) -> TransformNet:
    """The paper's style-transfer network (width 1.0), or a narrower/wider variant."""
    c = lambda n: max(1, int(round(n * width)))  # noqa: E731
    return TransformNet(stem=c(32), down=(c(64), c(128)), num_res=5, res_channels=c(128),
                        up=(c(64), c(32)), norm=norm, upsample=upsample, padding=padding)


def sr_net(scale: int, *, norm: str = "batch", upsample: str = "transpose", padding: str = "paper",
           width: float = 1.0) -> TransformNet:
    """The paper's super-resolution network for an upsampling factor of 2, 4 or 8."""
    if scale not in (2, 4, 8):
        raise ValueError(f"scale must be 2, 4 or 8, got {scale}")
    c = max(1, int(round(64 * width)))
    return TransformNet(stem=c, down=(), num_res=4, res_channels=c, up=(c,) * int(math.log2(scale)),
                        norm=norm, upsample=upsample, padding=padding)


def build(model: Mapping) -> TransformNet:
    """Builds a network from its config (`task`, `scale`, `norm`, `upsample`, `padding`, `width`)."""
    opts = {k: model[k] for k in ("norm", "upsample", "padding", "width")}
    if model["task"] == "style":
        return style_net(**opts)
    if model["task"] == "sr":
        return sr_net(int(model["scale"]), **opts)
    raise ValueError(f"unknown task {model['task']!r} (style or sr)")


def init(net: TransformNet, rng: jax.Array, size: int = 64, scale: int = 1) -> dict:
    """Initial variables (`params`, plus `batch_stats` for batch norm)."""
    return net.init(rng, jnp.zeros((1, size // scale, size // scale, 3), jnp.float32))
