"""How far a training step is from what the device allows: FLOPs per image, achieved FLOP/s and
the fraction of the device's peak.

Three counts of a step's floating-point operations (multiply and add counted as two):

* `xla_flops`: XLA's own cost analysis of the compiled step (what `bin/bench --train` reports);
* `jaxpr_flops`: every convolution and matrix product in the traced step (forward and the
  backward passes JAX's autodiff wrote), 2 x output elements x the products each one sums; the
  element-wise work (norms, activations, Adam) is left out, so it is a little below XLA's;
* `rule_of_thumb`: forward counts alone: the transformation net x 3 (forward, and the gradients
  with respect to its input and its weights), VGG-16 on the output x 2 (forward, and the
  gradient with respect to its input: its weights are frozen), VGG-16 on the content target x 1.
  docs/throughput.md writes the paper network's count at 256² out by hand.

`peak_flops` is the device's dense peak: a table for common GPUs (bf16 tensor-core and float32
figures from the vendors' data sheets), and on a CPU a measured float32 matrix product.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense peak FLOP/s (no structured sparsity) by a substring of `device_kind`, most specific first:
# (bfloat16 tensor cores, float32). Sources: NVIDIA's data sheets (SXM parts unless named).
GPU_PEAKS = (
    ("H100 PCIe", 756e12, 51e12),
    ("H100", 989e12, 67e12),
    ("H200", 989e12, 67e12),
    ("GH200", 989e12, 67e12),
    ("A100", 312e12, 19.5e12),
    ("L40S", 362e12, 91.6e12),
    ("L4", 121e12, 30.3e12),
    ("A10", 125e12, 31.2e12),
    ("RTX 4090", 165e12, 82.6e12),
)


def conv_flops(eqn) -> float:
    """2 x output elements x (kernel window x input features per group) of a convolution; for one
    over a zero-dilated input (a transposed convolution, or the gradient of a strided one) only
    the products with real input pixels, 1 in prod(lhs_dilation): what XLA counts and what cuDNN
    computes."""
    rhs = eqn.invars[1].aval.shape
    dn = eqn.params["dimension_numbers"]
    _, in_dim, *spatial = dn.rhs_spec
    window = math.prod(rhs[d] for d in spatial)
    dilation = math.prod(eqn.params.get("lhs_dilation") or (1,))
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * window * rhs[in_dim] / dilation


def dot_flops(eqn) -> float:
    """2 x output elements x contracted size of a `dot_general`."""
    (contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)


def _walk(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            total += conv_flops(eqn)
        elif name == "dot_general":
            total += dot_flops(eqn)
        times = eqn.params.get("length", 1) if name == "scan" else 1
        for v in eqn.params.values():
            for sub in v if isinstance(v, tuple | list) else (v,):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None and hasattr(inner, "eqns"):
                    total += times * _walk(inner)
                elif hasattr(sub, "eqns"):
                    total += times * _walk(sub)
    return total


def jaxpr_flops(fn, *args) -> float:
    """Convolution and matrix-product FLOPs of `fn(*args)` as traced (sub-programs included,
    a scan's body times its length)."""
    return _walk(jax.make_jaxpr(fn)(*args).jaxpr)


def xla_flops(compiled) -> float | None:
    """FLOPs of a compiled program by XLA's cost analysis (None where the backend gives none)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def rule_of_thumb(net, variables, size: int, scale: int, vgg_params, content_layers, vgg_layers) -> dict:
    """The step's FLOPs per image from forward counts (module docstring): net x 3, VGG on the output
    x 2, VGG on the content target x 1 (Grams and element-wise work left out)."""
    from fastnst import vgg

    x = jnp.zeros((1, size // scale, size // scale, 3), jnp.float32)
    y = jnp.zeros((1, size, size, 3), jnp.float32)
    kw = {"style": jnp.ones((1, net.num_styles)) / net.num_styles} if net.num_styles > 1 else {}
    net_f = jaxpr_flops(lambda v, a: net.apply(v, a, **kw), variables, x)
    vgg_out = jaxpr_flops(lambda p, a: vgg.features(p, a, vgg_layers), vgg_params, y) if vgg_layers else 0.0
    vgg_content = (jaxpr_flops(lambda p, a: vgg.features(p, a, content_layers), vgg_params, y)
                   if content_layers else 0.0)
    return {"net_forward": net_f, "vgg_output_forward": vgg_out, "vgg_content_forward": vgg_content,
            "per_image": 3 * net_f + 2 * vgg_out + vgg_content}


def cpu_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """The float32 FLOP/s of an n x n matrix product on the CPU (the best of `repeats`): the CPU's
    practical peak, which no convolution network exceeds."""
    cpu = jax.devices("cpu")[0]
    a = jax.device_put(jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32), cpu)
    f = jax.jit(lambda m: m @ m)
    jax.block_until_ready(f(a))
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(a))
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best


def peak_flops(device=None) -> dict:
    """{'device', 'bf16', 'fp32', 'source'}: the device's dense peak FLOP/s (None where unknown)."""
    device = device or jax.devices()[0]
    kind = device.device_kind
    if device.platform == "cpu":
        p = cpu_matmul_peak()
        return {"device": kind, "bf16": None, "fp32": p, "source": "measured: float32 2048² matmul"}
    for name, bf16, fp32 in GPU_PEAKS:
        if name.lower() in kind.lower():
            return {"device": kind, "bf16": bf16, "fp32": fp32, "source": f"data sheet ({name})"}
    return {"device": kind, "bf16": None, "fp32": None, "source": "unknown device"}
