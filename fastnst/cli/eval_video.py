"""Temporal stability of style models (docs/video.md): warping error and style loss on clips.

  bin/eval_video --model=starry_night [--model=runs/stable/model.msgpack] \
      --style=../shared/data/styles/starry_night.jpg [PHOTO...] [--out=runs/eval_video]

Renders clips with known motion (pan, zoom, slow rotation; sensor noise and JPEG compression)
over each PHOTO (default: ../shared/data/content), stylizes them frame by frame with each model,
and reports the warping error (Lai et al. 2018; flow from the input frames, occlusion-masked) with
DIS flow and with the exact flow, for the input itself (the floor) and each model, and the style
loss of the outputs against --style (with the layers and style size the models were trained with,
as their files record them; Grams as in training).
Writes table.md, results.json and contact.jpg (4 frames of the first clip per row) into --out.
"""

import sys

from fastnst import cli


@cli.one_line_errors
def main(argv=None) -> int:
    ap = cli.Parser(description=__doc__)
    ap.add_argument("photos", nargs="*", help="photos to render clips from (default: shared content)")
    ap.add_argument("--model", action="append", required=True, help="style model file or shipped name")
    ap.add_argument("--style", required=True, help="the style image (for the style loss)")
    ap.add_argument("--frames", type=cli.at_least(2), default=8,
                    help="frames per clip (>= 2: the warping error compares consecutive frames)")
    ap.add_argument("--height", type=cli.at_least(64), default=180, help="clip height (>= 64)")
    ap.add_argument("--width", type=cli.at_least(64), default=320, help="clip width (>= 64)")
    ap.add_argument("--out", default="runs/eval_video")
    a = ap.parse_args(argv)
    from fastnst import data, evaluate, images, perceptual, stylize, vgg
    from fastnst.errors import FastnstError

    photos = a.photos or images.list_images(data.shared_data() / "content")
    models = {}
    for m in a.model:
        models[m] = stylize.load_model(m)
        if models[m].config["task"] != "style":
            raise FastnstError(f"{m}: not a style model")
    trained = {m: perceptual.of_model(models[m].meta) for m in a.model}  # scored as they were trained
    if len(set(trained.values())) > 1:
        raise FastnstError(f"the models were trained with different objectives: {', '.join(a.model)}; "
                           "evaluate them one at a time")
    spec, style_size = trained[a.model[0]]
    params = vgg.load_params()
    grams = perceptual.style_grams(params, images.load_image(a.style), spec.style_layers, style_size)
    clips = evaluate.video_clips(photos, frames=a.frames, size=(a.height, a.width))
    result = evaluate.video_stability(models, clips, vgg_params=params, spec=spec, style_grams=grams)
    meta = {"models": a.model, "style": a.style, "photos": [str(p) for p in photos], "frames": a.frames,
            "size": [a.height, a.width], "clips": list(clips)}
    print(evaluate.write_video_eval(result, a.out, meta=meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
