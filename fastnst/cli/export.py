"""Exports a trained (or shipped) model to run without fastnst: ONNX or serialized JAX.

  bin/export --model=MODEL --format=onnx --out=model.onnx [--dtype=float16]
  bin/export --model=MODEL --format=jax --out=model.jaxexport
  bin/export --model=MULTI --format=onnx --out=candy.onnx --style=candy   # one style of a multi-style model

--out must end in the format's suffix (.onnx, .jaxexport) and may not be the model file itself.

Both take NHWC float32 RGB images in [0, 255] of any batch, height and width (style models with
the paper's padding: at least 41 px per side) and return the same (x scale for SR models).
ONNX: opset 17, conventions in the model's metadata; --dtype=float16 stores float16 weights
(half the size) and computes in float32. JAX: `jax.export.deserialize(open(f, 'rb').read())
.call(images)` with plain jax; lowered for CPU and CUDA. Written atomically.
A multi-style model is exported whole, with its style weights [S] as a second input `style`
(one-hot = one style, convex weights = a mix, in the order of the model's style names), unless
--style bakes one style or mix in (as bin/stylize --style).
"""

import sys
from pathlib import Path

from fastnst import cli


@cli.one_line_errors
def main(argv=None) -> int:
    ap = cli.Parser(description=__doc__)
    ap.add_argument("--model", required=True, help="model file or shipped model name")
    ap.add_argument("--format", required=True, choices=("onnx", "jax"))
    ap.add_argument("--out", required=True, help="output file")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                    help="ONNX weight storage (compute is float32)")
    ap.add_argument("--style", default=None, metavar="NAME_OR_INDEX[:W],...",
                    help="multi-style models: export this style or mix only")
    a = ap.parse_args(argv)
    from fastnst import export, images, styles
    from fastnst.errors import FastnstError
    from fastnst.modelfile import load_model, resolve

    out = Path(a.out)
    if out.is_dir():
        raise FastnstError(f"--out {out} is a folder; give a file name")
    if out.suffix.lower() != export.SUFFIXES[a.format]:
        raise FastnstError(f"--out {out}: the {a.format} format is written to a "
                           f"{export.SUFFIXES[a.format]} file")
    images.check_not_an_input(out, [resolve(a.model)])
    images.check_writable_folder(out.parent)
    model = load_model(a.model)
    if a.style or not styles.is_multistyle(model):
        model = styles.select(model, a.style)
    path = export.export_model(model, out, a.format, dtype=a.dtype)
    print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
