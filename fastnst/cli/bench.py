"""Speed tables on whatever device JAX finds (paper Table 1, training and inference throughput).

  bin/bench [--quick[=N]] [--sizes=256,512,1024] [--peer=../shared/peers/torch_peer.py]
            [--out=runs/bench] [--json]

--quick times runs of N and 2N L-BFGS iterations (default N=5) and extrapolates the 100/300/500
columns from them (the first N iterations measured, the later per-iteration cost for the rest);
the table says so. It also defaults to sizes 256,512 and times 2 training steps instead of 5
(under 5 minutes on a 2-core CPU). --onnx adds onnxruntime vs fastnst at 512² on the CPU
(--only-onnx runs just that).
--video runs only the video benchmark (docs/video.md): the video path vs the per-frame image path
and peak RSS for a 2 s 640x360 clip and 10 s / 60 s clips at --max-size=320; writes video.json.
--recipe runs only the recipe job's tables (bin/recipe): the training loop's step time for 1, 2
and 4 networks side by side, and the images/s the loader delivers (1 and 2 workers, first pass
and cached); writes bench_recipe.json.
--train runs only the training-throughput table (docs/throughput.md): the style and the SR x4
train step as the trainer runs it with its photos on the device, at each of --batches: images/s,
FLOPs per image (XLA's count, the traced count, the forward-count rule), TFLOP/s achieved and the
fraction of the device's peak; the crop is the first of --sizes (default 256 for style, 288 for
SR); writes throughput.json and throughput.md.
--peer adds like-for-like ratios against the PyTorch peer on the same machine
(needs torch). Writes bench.md, bench.csv and bench.json into --out; with --json also prints the
JSON document on stdout (keys: see README).
"""

import json
import sys
from pathlib import Path

from fastnst import cli


# (Long: one argument definition per flag, then one call per mode.)
@cli.one_line_errors
def main(argv=None) -> int:
    ap = cli.Parser(description=__doc__)
    ap.add_argument("--quick", type=cli.positive_int, nargs="?", const=5, default=0, metavar="N")
    ap.add_argument("--sizes", type=cli.int_list(32), default=None,
                    help="comma-separated image sides, each >= 32 (VGG-16's smallest input); default "
                         "256,512,1024, or 256,512 with --quick")
    ap.add_argument("--repeats", type=cli.positive_int, default=3)
    ap.add_argument("--peer", default=None, help="path to torch_peer.py for ratios")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    ap.add_argument("--onnx", action="store_true", help="add onnxruntime vs fastnst at 512² (CPU)")
    ap.add_argument("--only-onnx", action="store_true", help="run only the ONNX comparison")
    ap.add_argument("--video", action="store_true", help="run only the video benchmark")
    ap.add_argument("--recipe", action="store_true",
                    help="run only the recipe job's tables: 1, 2 and 4 networks side by side, and the "
                         "loader's images/s with 1 and 2 workers (--photos)")
    ap.add_argument("--train", action="store_true", help="run only the training-throughput table")
    ap.add_argument("--batches", type=cli.int_list(1), default=(4, 16),
                    help="batch sizes for --train (default 4,16)")
    ap.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                    help="compute precision for --train (default float32)")
    ap.add_argument("--steps-per-call", type=cli.positive_int, default=1,
                    help="train steps per jitted call for --train (default 1)")
    ap.add_argument("--tasks", default="style,sr", help="which steps --train measures (default style,sr)")
    ap.add_argument("--photos", default=None, help="photo folder for --recipe (default ../shared/data/train)")
    a = ap.parse_args(argv)
    from fastnst import bench, bench_media
    from fastnst.configs import style as style_config

    if a.video:
        rows = bench_media.video_table(a.out)
        print(json.dumps(rows, indent=2))
        return 0
    if a.train:
        from fastnst import bench_train
        from fastnst.configs import sr_x4

        tasks = [t for t in a.tasks.split(",") if t]
        if not tasks or set(tasks) - {"style", "sr"}:
            ap.error(f"--tasks must be style, sr or both, got {a.tasks!r}")
        loss = {"style": style_config.get_config().loss.to_dict(), "sr": sr_x4.get_config().loss.to_dict()}
        rows = []
        for task in tasks:
            size = (a.sizes or [256 if task == "style" else 288])[0]
            rows += bench_train.throughput(loss[task], task, batches=a.batches, size=size,
                                           precision=a.precision, steps_per_call=a.steps_per_call,
                                           calls=a.repeats)
        res = {"device": bench.device_info(), "rows": rows}
        bench.write_json(res, a.out, "throughput")
        text = bench_train.throughput_markdown(rows, res["device"])
        from fastnst.images import atomic_write_bytes

        atomic_write_bytes(Path(a.out) / "throughput.md", (text + "\n").encode())
        print(text)
        return 0
    if a.recipe:
        from fastnst import bench_train, data

        res = {"device": bench.device_info(),
               "side_by_side": bench_train.side_by_side(style_config.get_config().loss.to_dict(),
                                                         repeats=a.repeats),
               "loader": bench_train.loader(a.photos or str(data.shared_data() / "train"))}
        bench.write_json(res, a.out, "bench_recipe")
        print(bench_train.markdown(res))
        return 0
    if a.only_onnx:
        res = {"device": bench.device_info(), "onnx": bench.onnx_vs_fastnst(repeats=a.repeats)}
        bench.write_json(res, a.out, "bench_onnx")
        print(json.dumps(res, indent=2))
        return 0
    sizes = a.sizes or ((256, 512) if a.quick else (256, 512, 1024))
    res = bench.run(style_config.get_config().loss.to_dict(), onnx=a.onnx, quick=a.quick, sizes=sizes,
                    repeats=a.repeats, peer_path=a.peer, train_repeats=2 if a.quick else 5)
    bench.write(res, a.out)
    print(json.dumps(res, indent=2) if a.json else bench.markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
