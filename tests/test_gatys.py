"""Projected L-BFGS: close to SciPy's L-BFGS-B, stays in the box, decreases the objective."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from fastnst import gatys, losses, perceptual

SPEC = losses.LossSpec.from_config(dict(
    content=1.0, style=2.0, tv=2e-5, content_layers=("relu2_2",),
    style_layers=("relu1_2", "relu2_2")))


def _images():
    rng = np.random.default_rng(0)
    content = np.kron(rng.uniform(0, 255, (4, 5, 3)), np.ones((8, 8, 1))).astype(np.float32)
    style = np.zeros((40, 36, 3), np.float32)
    style[::4] = [240, 180, 20]  # stripes, a different size from the content
    style[:, ::7] = [20, 60, 220]
    return content, style


@pytest.fixture(scope="module")
def problem(vgg_params):
    content, style = _images()
    cf, sg = perceptual.targets(SPEC, vgg_params, content, style)
    x0 = gatys.initial_image("noise", content.shape[:2], content=None, key=jax.random.key(1))
    return content, style, cf, sg, x0


def test_close_to_scipy_lbfgsb(vgg_params, problem):
    content, style, cf, sg, x0 = problem
    iters = 15
    ours = gatys.optimize(vgg_params, SPEC, content=content, style=style, iters=iters,
                          key=jax.random.key(1))
    f = gatys.objective(SPEC, vgg_params, cf, sg)
    vg = jax.jit(jax.value_and_grad(lambda x: f(x.reshape(x0.shape))))

    def fun(x):
        v, g = vg(jnp.asarray(x, jnp.float32))
        return float(v), np.asarray(g, np.float64)

    ref = minimize(fun, np.asarray(x0, np.float64).ravel(), jac=True, method="L-BFGS-B",
                   bounds=[(0.0, 255.0)] * x0.size, options={"maxiter": iters, "maxcor": 10})
    assert ours.objective[0] == pytest.approx(float(f(x0)), rel=1e-5)
    assert ours.objective[-1] <= 1.05 * ref.fun, (ours.objective[-1], ref.fun)


def test_stays_in_box_and_never_increases(vgg_params, problem):
    content, style, *_ = problem
    seen = []
    r = gatys.optimize(vgg_params, SPEC, content=content, style=style, iters=12, init="content",
                       callback=lambda i, v: seen.append((int(i), float(v))), every=4)
    assert r.image.min() >= 0.0 and r.image.max() <= 255.0 and r.image.shape == content.shape
    assert r.objective.shape == (13,)
    assert np.all(np.diff(r.objective) <= 1e-5 * r.objective[:-1]), r.objective
    assert [i for i, _ in seen] == [4, 8, 12]
    # the objective reported for the last iterate is that of the returned (projected) image
    cf, sg = perceptual.targets(SPEC, vgg_params, content, style)
    f = gatys.objective(SPEC, vgg_params, cf, sg)
    assert r.objective[-1] == pytest.approx(float(f(r.image)), rel=1e-5)
    np.testing.assert_allclose([v for _, v in seen], r.objective[[4, 8, 12]], rtol=1e-6)


def test_content_only_and_style_only(vgg_params):
    content, style = _images()
    c_only = losses.LossSpec.from_config(dict(content=1.0, content_layers=("relu2_2",)))
    r = gatys.optimize(vgg_params, c_only, content=content, iters=8)
    assert r.objective[-1] < 0.5 * r.objective[0]
    s_only = losses.LossSpec.from_config(dict(style=1.0, style_layers=("relu1_2",)))
    r = gatys.optimize(vgg_params, s_only, style=style, shape=(32, 32), iters=8)
    assert r.image.shape == (32, 32, 3) and r.objective[-1] < 0.5 * r.objective[0]


def test_traced_layer_weights_select_layers(vgg_params):
    content, _ = _images()
    two = losses.LossSpec.from_config(dict(content=1.0, content_layers=("relu1_2", "relu2_2")))
    one = losses.LossSpec.from_config(dict(content=1.0, content_layers=("relu2_2",)))
    x = jnp.asarray(np.random.default_rng(1).uniform(0, 255, content.shape), jnp.float32)
    cf2, _ = perceptual.targets(two, vgg_params, content, None)
    cf1, _ = perceptual.targets(one, vgg_params, content, None)
    lw = {"content": {"relu1_2": jnp.float32(0.0), "relu2_2": jnp.float32(1.0)}}
    np.testing.assert_allclose(gatys.objective(two, vgg_params, cf2, None, lw)(x),
                               gatys.objective(one, vgg_params, cf1, None)(x), rtol=1e-6)
