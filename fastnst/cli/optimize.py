"""The Gatys et al. baseline: generate an image by projected L-BFGS (paper §4.1, Figs. 3-5).

  bin/optimize --content=PHOTO --style=ART --size=256 --iters=500 --init=noise --out=out.png
  bin/optimize --content=PHOTO --style-weight=0 --content-layer=relu3_3 --out=recon.png   (Fig. 3)
  bin/optimize --style=ART --content-weight=0 --size=256 --out=texture.png                 (Fig. 4)
  bin/optimize --content=PHOTO --style=ART --preserve-color --out=out.png   (luminance-only transfer)

Writes the image, OUT_objective.csv (objective per iteration) and OUT_objective.png (its plot).
Default weights and layers are those of configs/style.py, so objectives compare with the trained
networks' (paper Fig. 5).
"""

import sys

from fastnst import cli


@cli.one_line_errors
def main(argv=None) -> int:
    from fastnst.configs import style as style_config

    d = style_config.get_config().loss
    ap = cli.Parser(description=__doc__)
    ap.add_argument("--content", help="content image (needed unless --content-weight=0)")
    ap.add_argument("--style", help="style image (needed unless --style-weight=0)")
    ap.add_argument("--size", type=cli.positive_int, default=256,
                    help="longer side of the content image / output")
    ap.add_argument("--style-size", type=cli.positive_int, default=None,
                    help="longer side of the style image")
    ap.add_argument("--iters", type=cli.positive_int, default=500, help="L-BFGS iterations")
    ap.add_argument("--init", choices=["noise", "content"], default="noise",
                    help="start from white noise (the paper's Fig. 5) or from the content image")
    ap.add_argument("--content-weight", type=float, default=d.content, help="feature loss weight")
    ap.add_argument("--style-weight", type=float, default=d.style, help="style (Gram) loss weight")
    ap.add_argument("--tv-weight", type=float, default=d.tv, help="total variation weight")
    ap.add_argument("--content-layer", nargs="+", default=list(d.content_layers),
                    help="VGG-16 layers of the feature loss")
    ap.add_argument("--style-layers", nargs="+", default=list(d.style_layers),
                    help="VGG-16 layers of the style loss")
    ap.add_argument("--seed", type=int, default=0, help="seed of the noise image")
    ap.add_argument("--preserve-color", action="store_true",
                    help="optimise the luminance only (style luminance matched to the photo's), then "
                         "take the colours from the photo")
    ap.add_argument("--out", required=True, help="output image (.png or .jpg)")
    a = ap.parse_args(argv)

    from fastnst import gatys

    spec = gatys.cli_spec(content=a.content_weight, style=a.style_weight, tv=a.tv_weight,
                          content_layers=a.content_layer, style_layers=a.style_layers)
    r, out = gatys.optimize_files(spec, content=a.content, style=a.style, out=a.out, size=a.size,
                                  style_size=a.style_size, iters=a.iters, init=a.init, seed=a.seed,
                                  preserve_color=a.preserve_color)
    print(f"objective {r.objective[0]:.4g} -> {r.objective[-1]:.4g}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
