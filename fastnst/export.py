"""Deploying trained models outside fastnst: ONNX graphs and serialized JAX (`jax.export`).

Both take and return images the way `stylize.apply` does: NHWC float32 RGB in [0, 255], any
batch, height and width (a scale x larger output for super-resolution).

* ONNX (`to_onnx`): the graph is built node by node with `onnx.helper` from the model's parameters,
  walking `nets.layer_plan` (the description the Flax module is built from); each norm and
  upsampling writes its own nodes (`variants`). It is not traced by a converter: the network is a
  dozen standard operators (Conv, ConvTranspose, Resize, BatchNormalization, InstanceNormalization,
  Pad, Slice, Clip, Tanh), and fastnst's own CPU convolution forms (custom VJPs, padding tricks)
  would otherwise leak into the graph. Height and width are dynamic (the padding to a multiple of
  the stride and the final crop are computed from the input's shape); the opset, layout and value
  range are written into the model's metadata. `dtype='float16'` stores the weights in float16 (half
  the file) and computes in float32. Reflection padding in ONNX needs each side to be larger than
  the pad, so style models with the paper's 40 px border take inputs of at least 41 px per side.
* JAX (`to_jax`): `jax.export` of the inference function with the weights baked in,
  shape-polymorphic in batch, height and width (the same minimum sides), lowered for the CPU and
  CUDA.
  `jax.export.deserialize(blob).call(images)` runs it with plain `jax`, no fastnst import.

A multi-style model (conditional instance norm) is exported whole: both formats take the style
weights [S] (one-hot for one style, convex weights for a mix; the order of `meta["styles"]`) as a
second input, `style`. To export one style or a fixed mix as an ordinary model, `styles.select`
it first (`bin/export --style`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fastnst import __version__, nets, variants
from fastnst.errors import FastnstError, need
from fastnst.images import atomic_write_bytes
from fastnst.modelfile import Model

OPSET = 17
_TANH_CLIP = 10.0
FORMATS = ("onnx", "jax")
SUFFIXES = {"onnx": ".onnx", "jax": ".jaxexport"}  # the file name an export must have, per format
METADATA = {"layout": "NHWC", "range": "0..255", "color": "RGB", "dtype": "float32"}
STYLE_INPUT = variants.STYLE_INPUT  # a multi-style model's second input: style weights [S] (convex)


class _Graph:
    """A tiny builder: unique names, initializers, nodes."""

    def __init__(self, weight_dtype):
        from onnx import helper

        self.helper, self.nodes, self.inits, self.n = helper, [], [], 0
        self.weight_dtype = weight_dtype

    def name(self, prefix: str) -> str:
        """A fresh node or tensor name."""
        self.n += 1
        return f"{prefix}_{self.n}"

    def const(self, value, prefix="c", weight=False) -> str:
        """An initializer (a weight is stored in the graph's weight dtype)."""
        from onnx import numpy_helper

        name = self.name(prefix)
        arr = np.asarray(value)
        if weight and self.weight_dtype == np.float16:
            self.inits.append(numpy_helper.from_array(arr.astype(np.float16), name + "_f16"))
            return self.op("Cast", [name + "_f16"], to=1)  # to float32
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, kind: str, inputs, **attrs) -> str:
        """Appends a node; returns its output's name."""
        out = self.name(kind.lower())
        self.nodes.append(self.helper.make_node(kind, list(inputs), [out], **attrs))
        return out


def _conv(g: _Graph, x, p, *, stride=1, pad=0, reflect=False):
    kernel, bias = np.asarray(p["kernel"], np.float32), np.asarray(p["bias"], np.float32)
    k = kernel.shape[0]
    if reflect and pad:
        x = _pad_const(g, x, pad, "reflect")
        pad = 0
    return g.op("Conv", [x, g.const(kernel.transpose(3, 2, 0, 1), "w", True), g.const(bias, "b", True)],
                kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)


def _pad_const(g: _Graph, x, pad: int, mode: str):
    return g.op("Pad", [x, g.const(np.array([0, 0, pad, pad, 0, 0, pad, pad], np.int64))], mode=mode)


def _res(g: _Graph, x, p, stats, norm, paper: bool):
    """A residual block (`nets.ResidualBlock`): conv, norm, ReLU, conv, norm, identity added (cropped
    by 2 on each side after the paper's unpadded convs)."""
    n0, n1 = nets.RES_NORMS
    y = _conv(g, x, p["conv0"], pad=0 if paper else 1, reflect=not paper)
    y = g.op("Relu", [norm.onnx(g, y, p[n0], stats.get(n0))])
    y = norm.onnx(g, _conv(g, y, p["conv1"], pad=0 if paper else 1, reflect=not paper), p[n1], stats.get(n1))
    if paper:
        x = g.op("Slice", [x, g.const(np.array([2, 2], np.int64)), g.const(np.array([-2, -2], np.int64)),
                           g.const(np.array([2, 3], np.int64))])
    return g.op("Add", [x, y])


# (Long: the input mapping and padding, the walk over `nets.layer_plan`, the crop and the output
# mapping, and the graph's inputs and metadata, in the order the network computes them.)
def onnx_graph(model: Model, *, dtype: str = "float32"):
    """The model as an `onnx.ModelProto` (see the module docstring for its conventions)."""
    onnx = need("onnx", "deploy", "ONNX export")
    from onnx import TensorProto, helper

    if dtype not in ("float32", "float16"):
        raise FastnstError(f"ONNX dtype must be float32 or float16, got {dtype!r}")
    net, cfg = model.net, model.config
    params, stats = model.variables["params"], model.variables.get("batch_stats", {})
    norm, up = variants.norm(net.norm), variants.upsample(net.upsample)
    paper = net.padding == "paper"
    g = _Graph(np.float16 if dtype == "float16" else np.float32)
    mult = 2 ** len(net.down)
    factor = 2 ** len(net.up) // mult

    x = g.op("Transpose", ["image"], perm=[0, 3, 1, 2])
    x = g.op("Sub", [g.op("Div", [x, g.const(np.float32(127.5))]), g.const(np.float32(1.0))])
    shape = g.op("Shape", ["image"])
    hw = g.op("Slice", [shape, g.const(np.array([1], np.int64)), g.const(np.array([3], np.int64))])
    if mult > 1:  # reflect-pad bottom/right to a multiple of the stride, as the network does
        m = g.const(np.array([mult, mult], np.int64))
        extra = g.op("Mod", [g.op("Sub", [m, g.op("Mod", [hw, m])]), m])
        pads = g.op("Concat", [g.const(np.zeros(4, np.int64)), g.const(np.zeros(2, np.int64)), extra], axis=0)
        x = g.op("Pad", [x, pads], mode="reflect")
    if paper:
        x = _pad_const(g, x, 2 * net.num_res * mult, "reflect")

    for blk in nets.layer_plan(net):
        if blk.kind == "res":
            x = _res(g, x, params[blk.name], stats.get(blk.name, {}), norm, paper)
        elif blk.kind == "up":
            x = up.onnx(g, x, params[blk.name], edge_pad=not paper)
        else:
            x = _conv(g, x, params[blk.name], stride=blk.stride, pad=blk.kernel // 2, reflect=not paper)
        if blk.norm:
            x = g.op("Relu", [norm.onnx(g, x, params[blk.norm], stats.get(blk.norm))])
    ends = g.op("Mul", [hw, g.const(np.array([factor, factor], np.int64))])
    x = g.op("Slice", [x, g.const(np.array([0, 0], np.int64)), ends, g.const(np.array([2, 3], np.int64))])
    # Clip before Tanh: OpenCV's DNN module fuses Conv+Tanh into a kernel that returns NaN for large
    # inputs (0.1% of the_scream's pixels where its output saturates). In float32 tanh(x) is
    # exactly +-1 for |x| >= 10 (NumPy; XLA from 9), so clipping at +-10 changes no output value.
    x = g.op("Clip", [x, g.const(np.float32(-_TANH_CLIP)), g.const(np.float32(_TANH_CLIP))])
    x = g.op("Mul", [g.op("Add", [g.op("Tanh", [x]), g.const(np.float32(1.0))]), g.const(np.float32(127.5))])
    g.nodes.append(helper.make_node("Transpose", [x], ["output"], perm=[0, 2, 3, 1]))

    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", "height", "width", 3])]
    if norm.multistyle:
        inputs.append(helper.make_tensor_value_info(STYLE_INPUT, TensorProto.FLOAT, [net.num_styles]))
    graph = helper.make_graph(
        g.nodes, f"fastnst_{cfg['task']}", inputs,
        [helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                       ["batch", f"height*{factor}" if factor > 1 else "height",
                                        f"width*{factor}" if factor > 1 else "width", 3])],
        g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fastnst", producer_version=__version__)
    meta = {**METADATA, "weights_dtype": dtype, "opset": str(OPSET), "task": cfg["task"],
            "scale": str(model.scale), "min_side": str(_min_side(net)),
            "config": str(cfg), "model_meta": str(model.meta)}
    helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto)
    return proto


def _min_side(net: nets.TransformNet) -> int:
    """Smallest input side the ONNX graph accepts (reflection pads must be smaller than the side)."""
    if net.padding == "paper":
        return 2 * net.num_res * 2 ** len(net.down) + 1
    return 16


def to_onnx(model: Model, out: str | os.PathLike, *, dtype: str = "float32") -> Path:
    """Writes the model as an ONNX file, atomically."""
    return atomic_write_bytes(out, onnx_graph(model, dtype=dtype).SerializeToString())


def jax_export(model: Model, *, platforms=("cpu", "cuda")):
    """`jax.export.Exported` of the inference function with the weights baked in, polymorphic in
    batch, height and width."""
    import jax
    import jax.numpy as jnp
    from jax import export

    net, variables = model.net, jax.tree.map(jnp.asarray, model.variables)
    side = _min_side(net)
    b, h, w = export.symbolic_shape("b, h, w", constraints=(f"h >= {side}", f"w >= {side}"))
    image = jax.ShapeDtypeStruct((b, h, w, 3), jnp.float32)
    if nets.is_multistyle(net):  # style weights [S] as the second argument
        fn = jax.jit(lambda x, style: net.apply(variables, x, style=style))
        style = jax.ShapeDtypeStruct((net.num_styles,), jnp.float32)
        return export.export(fn, platforms=platforms)(image, style)
    fn = jax.jit(lambda x: net.apply(variables, x))
    return export.export(fn, platforms=platforms)(image)


def to_jax(model: Model, out: str | os.PathLike) -> Path:
    """Writes the serialized `jax.export` artifact (bytes), atomically."""
    return atomic_write_bytes(out, bytes(jax_export(model).serialize()))


def export_model(model: Model, out: str | os.PathLike, fmt: str, *, dtype: str = "float32") -> Path:
    """`to_onnx` or `to_jax` by format name."""
    if fmt == "onnx":
        return to_onnx(model, out, dtype=dtype)
    if fmt == "jax":
        if dtype != "float32":
            raise FastnstError("the jax format is float32 only")
        return to_jax(model, out)
    raise FastnstError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
