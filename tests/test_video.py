"""Video: frames, rate, size and audio survive bin/stylize; the warping error is right on known
motion; bad files give one line; the stability term matches NumPy."""

import functools
from fractions import Fraction
from pathlib import Path

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastnst import losses, nets, temporal
from fastnst.step import StepInputs, jit_step, train_step, variables_of
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _clip(path: Path, *, frames=6, h=34, w=46, audio=True, rate=12, vfr=False, faststart=False) -> Path:
    out = av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {})
    v = out.add_stream("libx264", rate=rate)
    v.height, v.width, v.pix_fmt = h, w, "yuv420p"
    v.codec_context.time_base = Fraction(1, 1200)
    a = out.add_stream("aac", rate=16000) if audio else None
    rng = np.random.default_rng(0)
    pts = 0
    for i in range(frames):
        f = av.VideoFrame.from_ndarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), format="rgb24")
        f.pts, f.time_base = pts, Fraction(1, 1200)
        pts += 100 if not vfr or i % 2 else 50  # variable frame durations
        for p in v.encode(f):
            out.mux(p)
    if a is not None:
        _silence(out, a, 6)
    for p in v.encode():
        out.mux(p)
    out.close()
    return path


def _probe(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [(f.pts, f.to_ndarray(format="rgb24").shape) for f in c.decode(v)]
        return {"frames": len(frames), "pts": [p for p, _ in frames], "size": frames[0][1],
                "rate": v.average_rate, "time_base": v.time_base,
                "audio": [s.codec_context.name for s in c.streams.audio]}


@pytest.mark.parametrize("vfr", [False, True])
def test_stylize_keeps_frames_rate_timestamps_size_and_audio(tmp_path, vfr):
    src = _clip(tmp_path / "in.mp4", vfr=vfr)
    r = run_cli("bin/stylize", "--model=the_scream", src, f"--out={tmp_path / 'out.mp4'}", "--batch-size=4")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = _probe(src), _probe(tmp_path / "out.mp4")
    if vfr:  # the container's average rate is an estimate from durations; every timestamp matches
        a.pop("rate"), b.pop("rate")
    assert a == b  # frame count, every timestamp, size, rate, time base, audio
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    from fastnst import images

    image = images.save_image(tmp_path / "image.png", np.zeros((4, 4, 3)))
    assert (tmp_path / "out.mp4").stat().st_mode & 0o777 == image.stat().st_mode & 0o777 == images.FILE_MODE


def test_animated_gif_in_and_out(tmp_path):
    from PIL import Image

    frames = [Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)) for i in range(4)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100)
    r = run_cli("bin/stylize", "--model=the_scream", str(tmp_path / "a.gif"), f"--out={tmp_path / 'o'}")
    assert r.returncode == 0, r.stderr[-2000:]
    with Image.open(tmp_path / "o" / "a.gif") as im:
        assert im.n_frames == 4 and im.size == (24, 20)


@pytest.mark.parametrize("make,match", [
    (lambda p: p.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200)), "not a video file"),
    (lambda p: _audio_only(p), "no video stream"),
])
def test_bad_video_files_get_one_line(tmp_path, make, match):
    src = tmp_path / "bad.mp4"
    make(src)
    r = run_cli("bin/stylize", "--model=the_scream", str(src), f"--out={tmp_path / 'out.mp4'}")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1 and match in lines[0], r.stderr
    assert not (tmp_path / "out.mp4").exists()


def test_truncated_video_is_written_from_its_readable_frames_and_reported(tmp_path):
    """A cut-off mp4 whose index comes first (as streamed files have) decodes quietly short: the
    lost frames are counted against the index, the readable ones written, and the result is an
    error unless the user accepts it."""
    from fastnst import stylize, video

    whole = _clip(tmp_path / "whole.mp4", frames=40, audio=False, faststart=True)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 3 // 5])
    assert video.process_video(whole, tmp_path / "a.mp4", lambda x: x, progress=False).lost == 0
    r = video.process_video(cut, tmp_path / "b.mp4", lambda x: x, progress=False)
    assert r.expected == 40 and 0 < r.frames < 40 and r.lost == 40 - r.frames
    assert _probe(tmp_path / "b.mp4")["frames"] == r.frames
    model = stylize.load_model("the_scream")
    (res,) = stylize.run_files(model, [cut], tmp_path / "c.mp4", progress=False)
    assert res.dst is None and f"{r.lost} of 40 frames could not be read" in res.error
    assert _probe(tmp_path / "c.mp4")["frames"] == r.frames  # written all the same: no work lost
    (res,) = stylize.run_files(model, [cut], tmp_path / "d.mp4", progress=False, allow_missing_frames=True)
    assert res.error is None and f"{r.lost} of 40 frames could not be read" in res.note


def test_avi_output_keeps_the_frame_rate(tmp_path):
    """AVI stores one tick per frame: a 12 fps clip stays 12 fps with 6 frames (copying the mp4's
    fine time base once gave 600 fps and thousands of empty frames)."""
    from fastnst import video

    r = video.process_video(_clip(tmp_path / "in.mp4", audio=False), tmp_path / "o.avi", lambda x: x,
                            progress=False)
    got = _probe(tmp_path / "o.avi")
    assert r.frames == got["frames"] == 6 and got["rate"] == 12 and got["pts"] == list(range(6))


def _silence(out, stream, frames: int) -> None:
    """Encodes `frames` frames of silent mono AAC into `stream` and flushes it."""
    for i in range(frames):
        af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        af.sample_rate, af.pts = 16000, i * 1024
        for p in stream.encode(af):
            out.mux(p)
    for p in stream.encode():
        out.mux(p)


def _audio_only(path):
    out = av.open(str(path), "w")
    _silence(out, out.add_stream("aac", rate=16000), 4)
    out.close()


def test_warping_error_is_near_zero_on_known_motion_and_checks_against_exact_flow():
    rng = np.random.default_rng(1)
    small = rng.uniform(0, 255, (20, 30, 3)).astype(np.float32)
    from fastnst import images

    photo = np.clip(images.resize(small, (200, 300), method="bicubic"), 0, 255)
    for kind in ("pan", "zoom", "rotate"):
        clip, flows = temporal.synthetic_clip(photo, kind, frames=4, size=(96, 128), noise=0,
                                              jpeg_quality=None)
        assert temporal.warping_error(clip, clip) < 2e-3  # the input (an identity network) is stable
        assert temporal.warping_error(clip, clip, flows=flows) < 2e-3
        est = temporal.flow(clip[1], clip[0])
        assert np.median(np.linalg.norm(est - flows[0], axis=-1)) < 0.5  # DIS agrees with the motion
        shuffled = clip[::-1]  # outputs that do not follow the motion
        assert temporal.warping_error(clip, shuffled) > 10 * temporal.warping_error(clip, clip)


def test_perturbation_is_gaussian_noise_of_the_given_std_clipped_to_the_pixel_range():
    """What docs/video.md says of the perturbation, checked on its statistics (not by drawing the
    same numbers again): away from 0 and 255 the added noise has mean 0 and std `noise` and does
    not depend on the image; at the range's ends it is clipped; keys draw anew, a key repeats."""
    mid = jnp.asarray(np.random.default_rng(0).uniform(64, 191, (4, 48, 48, 3)), jnp.float32)
    key = jax.random.key(5)
    d = np.asarray(losses.perturb(mid, key, 8.0)[0] - mid, np.float64)  # 27648 draws, none clipped at 8 std
    assert abs(d.mean()) < 0.2 and abs(d.std() - 8.0) < 0.2  # (the estimates' std: 0.05 and 0.03)
    assert abs(np.mean(np.abs(d) > 16.0) - 0.0455) < 0.006  # Gaussian tails: P(|z| > 2) = 4.55%
    other = mid[::-1]  # another image, the same key: the same noise
    np.testing.assert_allclose(np.asarray(losses.perturb(other, key, 8.0)[0] - other), d, atol=1e-4)
    assert np.abs(np.asarray(losses.perturb(mid, jax.random.key(6), 8.0)[0] - mid) - d).mean() > 5
    ends = jnp.concatenate([jnp.zeros((1, 32, 32, 3)), jnp.full((1, 32, 32, 3), 255.0)])
    e = np.asarray(losses.perturb(ends, key, 8.0)[0])
    assert e.min() == 0.0 and e.max() == 255.0
    assert 0.45 < np.mean(e[0] == 0.0) < 0.55 and 0.45 < np.mean(e[1] == 255.0) < 0.55  # half clipped


def test_stability_term_matches_numpy_on_a_tiny_net():
    net = nets.style_net(width=0.125, norm="instance")
    v = nets.init(net, jax.random.key(0), size=32)
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)), jnp.float32)
    noisy, _ = losses.perturb(x, jax.random.key(5), 8.0)
    a, b = np.asarray(net.apply(v, x)), np.asarray(net.apply(v, noisy))
    got = losses.total_loss({"stability": 3.0}, pred=jnp.asarray(a), pred_perturbed=jnp.asarray(b))[1]
    np.testing.assert_allclose(float(got["stability"]), 3.0 * np.mean((a - b) ** 2), rtol=1e-5)


def test_shifted_stability_compares_the_same_content():
    """With a shift, the perturbed input is a crop at the drawn offset, and the term compares its
    output with the same crop of the unperturbed output (NumPy reference)."""
    net = nets.style_net(width=0.125, norm="instance")
    v = nets.init(net, jax.random.key(0), size=32)
    x = np.random.default_rng(1).uniform(0, 255, (2, 36, 36, 3)).astype(np.float32)
    key = jax.random.key(7)
    shifted, offset = losses.perturb(jnp.asarray(x), key, 0.0, shift=4)
    dy, dx = (int(o) for o in offset)
    assert shifted.shape == (2, 32, 32, 3) and 0 <= dy <= 4 and 0 <= dx <= 4
    np.testing.assert_array_equal(np.asarray(shifted), x[:, dy:dy + 32, dx:dx + 32])
    offsets = {tuple(int(o) for o in losses.perturb(jnp.asarray(x), jax.random.key(k), 0.0, 4)[1])
               for k in range(40)}
    assert len(offsets) > 10  # drawn, not fixed
    a, b = np.asarray(net.apply(v, x)), np.asarray(net.apply(v, shifted))
    got = losses.total_loss({"stability": 2.0}, pred=jnp.asarray(a), pred_perturbed=jnp.asarray(b),
                            perturb_offset=offset)[1]
    np.testing.assert_allclose(float(got["stability"]),
                               2.0 * np.mean((a[:, dy:dy + 32, dx:dx + 32] - b) ** 2), rtol=1e-5)


def test_train_step_with_stability_uses_the_step_key(vgg_params, tmp_path):
    """The perturbation of step s is drawn with the loss key of `keys.step_keys(rng, s)`: the
    metric equals the term evaluated with that draw, so a step key that were ignored (or not folded
    with the step) fails."""
    from tests.helpers import tiny_config, tiny_step

    cfg = tiny_config(tmp_path)
    cfg.loss.stability = 0.01
    t = tiny_step(vgg_params, cfg)
    with pytest.raises(ValueError, match="rng"):
        train_step(t.state, t.batch, StepInputs(vgg_params, t.grams, t.spec))
    forward = jax.jit(functools.partial(t.net.apply, variables_of(t.state), train=True))

    def metric(step, key, spec=t.spec):
        state = jax.tree.map(jnp.copy, t.state).replace(step=jnp.asarray(step, jnp.int32))
        inputs = StepInputs(vgg_params, t.grams, spec, jax.random.key_data(key))
        return float(jit_step()(state, t.batch, inputs)[1]["stability"])

    def expected(step, key):
        loss_key = jax.random.split(jax.random.fold_in(key, step))[1]  # (keys.step_keys, written out)
        noisy, _ = losses.perturb(t.x, loss_key, t.spec.option("stability", "noise"))
        a, b = (np.asarray(forward(v), np.float64) for v in (t.x, noisy))
        return 0.01 * np.mean((a - b) ** 2)

    got = {(s, k): metric(s, jax.random.key(k)) for s, k in ((0, 1), (3, 1), (0, 2))}
    for (s, k), v in got.items():
        assert v == pytest.approx(expected(s, jax.random.key(k)), rel=1e-4), (s, k)
    assert len({round(v, 9) for v in got.values()}) == 3  # each step and each run key draws anew
    cfg.loss.stability_shift = 3  # the shifted variant runs through the jitted step too
    shifted = losses.LossSpec.from_config(cfg.loss)
    v = metric(0, jax.random.key(1), shifted)
    assert np.isfinite(v) and v > 0


def test_video_benchmark_row_is_complete():
    """The video benchmark (bin/bench --video) on a tiny clip: both paths timed, RSS recorded."""
    from fastnst import bench_media

    (row,) = bench_media.video_table(None, cases=((5, 5, 48),), size=(40, 64))
    assert "error" not in row, row
    assert row["frames"] == 5 and row["seconds"] == 1.0 and row["max_size"] == 48
    assert row["video_fps"] > 0 and row["image_path_fps"] > 0 and row["peak_rss_mb"] > 100
