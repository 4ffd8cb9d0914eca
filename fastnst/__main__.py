"""`fastnst PROGRAM [ARGS]`: every fastnst program as one command (`python -m fastnst` too).

One command with subcommands rather than one per program: a single name on PATH, no clash with
other packages' `train` or `export`, and `fastnst --help` lists everything. From a clone,
`bin/PROGRAM` runs the same code. Each program lives in `fastnst/cli/PROGRAM.py`.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys

PROGRAMS = ("stylize", "upscale", "train", "demo", "app", "export", "optimize", "eval_style", "eval_sr",
            "eval_video", "bench", "recipe")


def summary(program: str) -> str:
    """The first line of a program's docstring, read without importing it (imports are heavy)."""
    spec = importlib.util.find_spec(f"fastnst.cli.{program}")
    with open(spec.origin, encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    return doc.splitlines()[0] if doc else ""


def usage() -> str:
    """`fastnst --help`: the programs, one line each."""
    rows = "\n".join(f"  {p:<11} {summary(p)}" for p in PROGRAMS)
    return (f"usage: fastnst PROGRAM [ARGS]   (fastnst PROGRAM --help for its options)\n\n"
            "Fast style transfer and super-resolution with perceptual losses (Johnson et al. 2016), "
            f"in JAX.\n\nprograms:\n{rows}\n")


def main(argv: list[str] | None = None) -> int:
    """Runs `fastnst PROGRAM ARGS`; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), end="")
        return 0 if argv else 2
    name = argv[0].replace("-", "_")
    if name not in PROGRAMS:
        print(f"error: no program {argv[0]!r}; one of: {', '.join(PROGRAMS)} (see fastnst --help)",
              file=sys.stderr)
        return 2
    sys.argv = [f"fastnst {argv[0]}", *argv[1:]]  # (what argparse and absl print as the program name)
    module = importlib.import_module(f"fastnst.cli.{name}")
    if hasattr(module, "run"):  # absl's app.run parses sys.argv itself and exits
        module.run(sys.argv)
        return 0
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
