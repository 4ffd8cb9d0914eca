"""VGG-16 port: parity with an independent NumPy reference, conversion, and weight safety."""

import hashlib
import os
import pickle

import jax.numpy as jnp
import numpy as np
import pytest

from fastnst import vgg, weights_io
from fastnst.errors import WeightsError


def _np_conv_relu(x, kernel, bias):
    """Direct 3x3 'same' convolution (cross-correlation) + ReLU on HxWxC, in float64."""
    h, w, _ = x.shape
    xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((h, w, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += xp[dy:dy + h, dx:dx + w, :] @ kernel[dy, dx].astype(np.float64)
    return np.maximum(out + bias, 0.0)


def _np_maxpool(x):
    h, w, c = x.shape
    return x[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c).max(axis=(1, 3))


def _np_reference(image, flat):
    x = (image / 255.0 - vgg.IMAGENET_MEAN.astype(np.float64)) / vgg.IMAGENET_STD
    out = {}
    for name in ("conv1_1", "conv1_2", "pool", "conv2_1", "conv2_2", "pool", "conv3_1", "conv3_2",
                 "conv3_3", "pool", "conv4_1", "conv4_2", "conv4_3"):
        if name == "pool":
            x = _np_maxpool(x)
            continue
        x = _np_conv_relu(x, flat[f"{name}/kernel"], flat[f"{name}/bias"])
        out[name.replace("conv", "relu")] = x
    return out


def test_features_match_numpy_reference(vgg_params):
    flat = vgg.load_flat()
    image = np.random.default_rng(0).uniform(0, 255, (34, 38, 3))
    layers = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")  # every layer the losses use
    ours = vgg.features(vgg_params, jnp.asarray(image[None], jnp.float32), layers)
    ref = _np_reference(image, flat)
    for name in layers:
        got = np.asarray(ours[name][0], np.float64)
        assert got.shape == ref[name].shape
        rel = np.linalg.norm(got - ref[name]) / np.linalg.norm(ref[name])
        assert rel < 1e-4, (name, rel)  # float32 sums of 3x3xC products vs the float64 reference


def test_converted_weights_equal_pickle_bit_for_bit(weights_cache):
    raw = weights_io.read_array_pickle(vgg.find_lpips_checkpoint(), expected_sha256=vgg.LPIPS_SHA256)
    flat = vgg.load_flat()
    assert (weights_cache / vgg.CONVERTED_NAME).is_file()
    for k, name in enumerate(vgg.CONV_NAMES):
        for part in ("kernel", "bias"):
            a, b = flat[f"{name}/{part}"], raw["VGG16_0"][f"Conv_{k}"][part]
            assert a.dtype == b.dtype and np.array_equal(a, b)


def test_only_requested_depth_and_any_size(vgg_params):
    out = vgg.features(vgg_params, jnp.full((2, 32, 45, 3), 128.0), ("relu3_3", "relu1_1"))
    assert set(out) == {"relu3_3", "relu1_1"}
    assert out["relu3_3"].shape == (2, 8, 11, 256) and out["relu1_1"].shape == (2, 32, 45, 64)
    with pytest.raises(ValueError, match="unknown VGG layer"):
        vgg.features(vgg_params, jnp.zeros((1, 32, 32, 3)), ("relu9_9",))


def test_wrong_hash_is_refused(tmp_path):
    bad = tmp_path / "vgg16.ckpt"
    bad.write_bytes(pickle.dumps({"VGG16_0": {}}))
    with pytest.raises(WeightsError, match="SHA-256"):
        vgg.resolve_weights(bad)


def test_truncated_checkpoint_is_refused(tmp_path):
    src = vgg.find_lpips_checkpoint()
    cut = tmp_path / "vgg16.ckpt"
    cut.write_bytes(src.read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="truncated or wrong"):
        vgg.resolve_weights(cut)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_RAN",))


def test_malicious_pickle_is_refused_even_with_matching_hash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": _Evil()}}}))
    digest = hashlib.sha256(evil.read_bytes()).hexdigest()
    with pytest.raises(WeightsError, match="refusing to load global"):
        weights_io.read_array_pickle(evil, expected_sha256=digest)
    assert not (tmp_path / "EVIL_RAN").exists()


def test_non_array_pickle_is_refused(tmp_path):
    f = tmp_path / "x.ckpt"
    f.write_bytes(pickle.dumps({"a": [1, 2]}))
    with pytest.raises(WeightsError):
        weights_io.read_array_pickle(f, expected_sha256=hashlib.sha256(f.read_bytes()).hexdigest())


def test_missing_and_truncated_npz(tmp_path, weights_cache):
    with pytest.raises(WeightsError, match="not found"):
        vgg.load_flat(tmp_path / "nope.npz")
    good = vgg.resolve_weights().read_bytes()  # (converts into the cache if no test did yet)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good[: len(good) // 3])
    with pytest.raises(WeightsError):
        vgg.load_flat(cut)


def test_env_var_points_to_converted_file(tmp_path, monkeypatch, weights_cache):
    copy = tmp_path / "mine.npz"
    copy.write_bytes(vgg.resolve_weights().read_bytes())
    monkeypatch.setenv("FASTNST_VGG_WEIGHTS", str(copy))
    assert vgg.resolve_weights() == copy


def test_a_torchvision_pth_round_trips_and_matches_torch_convolutions(tmp_path, monkeypatch):
    """A torchvision-layout VGG-16 state dict (written by PyTorch from known weights) loads back
    as those weights, and relu1_2 computed from it equals PyTorch's own convolutions on the same
    normalised input (float32 sums in another order; bound 1e-4 of the largest activation, not yet
    measured here). A file whose SHA-256 is not torchvision's is refused before it is unpickled.
    Needs PyTorch, which reading a .pth needs too; skipped where it is not installed (CI: `.[dev]`
    has no torch)."""
    torch = pytest.importorskip("torch")
    from fastnst import vgg, weights_io
    from fastnst.errors import WeightsError

    params = vgg.random_params(3)["params"]
    conv_idx = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    state = {}
    for name, i in zip(vgg.CONV_NAMES, conv_idx, strict=True):
        kernel = np.asarray(params[name]["kernel"]).transpose(3, 2, 0, 1)  # HWIO -> OIHW
        state[f"features.{i}.weight"] = torch.from_numpy(kernel.copy())
        state[f"features.{i}.bias"] = torch.from_numpy(np.asarray(params[name]["bias"]).copy())
    path = tmp_path / "vgg16-test.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="SHA-256"):
        vgg.load_flat(path)
    monkeypatch.setattr(vgg, "TORCHVISION_SHA256_PREFIX", weights_io.sha256(path)[:8])
    flat = vgg.load_flat(path)
    for name in vgg.CONV_NAMES:
        np.testing.assert_array_equal(flat[f"{name}/kernel"], np.asarray(params[name]["kernel"]))
        np.testing.assert_array_equal(flat[f"{name}/bias"], np.asarray(params[name]["bias"]))
    x = np.random.default_rng(0).uniform(0, 255, (1, 20, 24, 3)).astype(np.float32)
    ours = np.asarray(vgg.features(vgg.load_params(path), x, ["relu1_2"])["relu1_2"])
    t = torch.from_numpy(np.asarray(vgg.normalize(x)).transpose(0, 3, 1, 2).copy())
    for i in (0, 2):
        w, b = state[f"features.{i}.weight"], state[f"features.{i}.bias"]
        t = torch.relu(torch.nn.functional.conv2d(t, w, b, padding=1))
    ref = t.numpy().transpose(0, 2, 3, 1)
    assert np.max(np.abs(ours - ref)) <= 1e-4 * np.max(np.abs(ref))
