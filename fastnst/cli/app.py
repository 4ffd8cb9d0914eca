"""A local web page for stylizing photos and videos and upscaling x4, in the browser.

  bin/app [--host=127.0.0.1] [--port=7860] [--max-upload-mb=200] [--max-megapixels=24]
          [--max-video-seconds=60]

Needs the `app` extra (`pip install 'fastnst[app]'`; from a clone `pip install -e '.[app]'`).
Listens on this computer only unless --host says otherwise (e.g. --host=0.0.0.0 serves the local
network: anyone who can reach the port can use it). Uploads and results live in a temporary folder
removed when the app stops (Ctrl-C). One job runs at a time; others wait in a visible queue.
"""

import sys

from fastnst import cli

cli.keep_freed_memory()  # before JAX starts any thread: inference only, windows reuse memory (docs/tiling.md)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise cli.argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:
        raise cli.argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


@cli.one_line_errors
def main(argv=None) -> int:
    ap = cli.Parser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this computer only)")
    ap.add_argument("--port", type=cli.at_least(1), default=7860, help="port (default 7860)")
    ap.add_argument("--max-upload-mb", type=cli.positive_int, default=200, help="largest upload, MB")
    ap.add_argument("--max-megapixels", type=_positive_float, default=24.0, help="largest photo, megapixels")
    ap.add_argument("--max-video-seconds", type=_positive_float, default=60.0, help="longest video, seconds")
    a = ap.parse_args(argv)
    if a.port > 65535:
        ap.error(f"--port must be <= 65535, got {a.port}")
    from fastnst import app
    from fastnst.errors import need

    need("gradio", "app", "the web app")
    limits = app.Limits(upload_mb=a.max_upload_mb, megapixels=a.max_megapixels,
                        video_seconds=a.max_video_seconds)
    app.serve(a.host, a.port, limits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
