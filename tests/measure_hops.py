"""Module hops of one tiny training run and one stylize call: every Python call from one fastnst
module into another (tracing included), counted with sys.setprofile. Prints the distinct
caller -> callee module pairs, the calls across them, and the pairs that go both ways (a layer
that calls back into the one that called it).

  .venv/bin/python tests/measure_hops.py                 # this checkout
  PYTHONPATH=/path/to/other/checkout .venv/bin/python tests/measure_hops.py   # another commit
"""
import collections
import sys
import tempfile
from pathlib import Path


def _module(frame) -> str | None:
    name = frame.f_globals.get("__name__", "")
    return name if name.startswith("fastnst") else None


def count(fn):
    calls = collections.Counter()

    def prof(frame, event, arg):
        if event != "call":
            return
        callee, caller = _module(frame), frame.f_back and _module(frame.f_back)
        if callee and caller and callee != caller:
            calls[(caller, callee)] += 1

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def report(name, calls):
    pairs = set(calls)
    both = sorted({tuple(sorted(p)) for p in pairs if (p[1], p[0]) in pairs})
    print(f"{name}: {len(pairs)} module pairs, {sum(calls.values())} calls across modules, "
          f"{len(both)} pairs both ways: {', '.join(f'{a}<->{b}' for a, b in both) or '-'}")


def main():
    import numpy as np

    import fastnst
    from fastnst import stylize, train
    from fastnst.configs import style

    print("fastnst from", Path(fastnst.__file__).parent)
    cfg = style.get_config("runlocal")
    cfg.data.source = "synthetic"
    cfg.style_size = 32
    cfg.model.width = 0.25
    cfg.train.update(steps=2, batch_size=1, image_size=32, log_every=1, ckpt_every=2, sample_every=2)
    with tempfile.TemporaryDirectory() as d:
        run = count(lambda: train.train_and_evaluate(cfg, Path(d) / "w", progress=False))
    report("one training run (2 steps)", run)
    model = stylize.load_model("the_scream")
    photo = np.random.default_rng(0).uniform(0, 255, (64, 64, 3)).astype(np.float32)
    report("one stylize call", count(lambda: np.asarray(stylize.apply(model, photo))))


if __name__ == "__main__":
    main()
