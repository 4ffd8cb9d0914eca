"""What every bin/ script shares: one-line errors, exit codes, argument types, signal handling."""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys


def one_line_errors(main):
    """Runs `main`; a FastnstError (a user mistake) becomes `error: ...` on stderr and exit 1 (at
    once in a multi-process job, or for a JobError); Ctrl-C or SIGTERM becomes `interrupted` and
    exit 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        from fastnst.errors import FastnstError, JobError

        interrupt_on_sigterm()
        try:
            import_native_code()
            check_environment()
            return main(*args, **kwargs)
        except FastnstError as e:
            print(f"error: {e}", file=sys.stderr)
            if _in_distributed_job():
                # Processes that fail alike (a refused workdir) leave together; a lost process or one
                # that carries on is not waited for (JAX's own shutdown would wait minutes for it).
                from fastnst import parallel

                if not isinstance(e, JobError):
                    parallel.leave(timeout_s=15)
                _exit_now(1)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            _exit_now(130)
        except MemoryError:
            print("error: out of memory; use a smaller --max-size or --memory-budget", file=sys.stderr)
            return 1
        except RuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):  # only the device's out-of-memory is a user matter
                raise
            print("error: the device ran out of memory; lower --memory-budget (or "
                  "FASTNST_MEMORY_BUDGET_MB), --max-size or --batch-size (train.batch_size when "
                  "training)", file=sys.stderr)
            return 1

    return wrapper


def _exit_now(code: int) -> None:
    """Exits without interpreter finalization (also after a lost process: JAX's distributed
    shutdown would wait for it, then abort natively). An interrupt can land inside the import of a native
    extension (jaxlib, TensorFlow), and tearing the half-built module down then crashed (SIGSEGV
    after `interrupted`, seen for SIGTERM 4 s into `bin/train`'s start-up). By the time this runs
    the stack has unwound: outputs are closed or their temporary files removed, and checkpoints are
    written atomically, so nothing is lost by skipping the rest."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _in_distributed_job() -> bool:
    """Whether this process joined a multi-process JAX job (jax.distributed.initialize)."""
    return "jax" in sys.modules and sys.modules["jax"].distributed.is_initialized()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def keep_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory for reuse (one arena, no mmap'd chunks, no trimming
    below 2 GiB); returns whether it could (glibc only). For inference processes (`bin/stylize`,
    `bin/upscale`, `bin/app` and the benchmarks of the first two), called before JAX starts its threads.

    By default every large XLA:CPU buffer is a fresh mmap, so each program run page-faults and
    zeroes all its memory again: tiled inference runs hundreds of programs, and at 1536x1024 the
    kernel's page-fault work took 2.4 of 4.2 s (system time; 0.07 s with this), the whole-image
    network 0.27 s; video frames ran 13% faster. The price: memory freed by one window stays with
    the process for the next (peak resident memory measured in docs/tiling.md). Not for
    training: its step took 13.8 instead of 10.5 s and its peak RSS 14.5 instead of 5.1 GB.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): keep the system's malloc as it is
        mallopt = None
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # glibc's <malloc.h>
    return all(mallopt(opt, val) == 1 for opt, val in
               ((m_arena_max, 1), (m_mmap_max, 0), (m_trim_threshold, 2**31 - 1)))


def import_native_code() -> None:
    """Imports jax (jaxlib's native libraries) with SIGINT and SIGTERM held back.

    A signal that lands while jaxlib's extension initialises crashed the process (SIGSEGV, exit
    -11, seen when SIGTERM arrived the moment jaxlib's shared objects were mapped); held back, it is
    delivered as soon as the import returns and ends the program as `interrupted`, exit 130. Threads
    that the import starts inherit the mask, so later signals go to the main thread.
    """
    if "jax" in sys.modules or not hasattr(signal, "pthread_sigmask"):
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        import jax  # noqa: F401
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def check_environment() -> None:
    """Validates fastnst's environment variables before any work (a bad value is a one-line error)."""
    from fastnst import envvars

    envvars.check()


def at_least(n: int):
    """An argparse type: an integer >= n."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < n:
            raise argparse.ArgumentTypeError(f"must be >= {n}, got {v}")
        return v

    parse.__name__ = f"integer >= {n}"
    return parse


positive_int = at_least(1)


def int_list(n: int):
    """An argparse type: comma-separated integers, each >= n."""
    one = at_least(n)

    def parse(text: str) -> tuple[int, ...]:
        parts = [p for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers")
        return tuple(one(p.strip()) for p in parts)

    parse.__name__ = f"list of integers >= {n}"
    return parse


def interrupt_on_sigterm() -> None:
    """SIGTERM behaves like Ctrl-C (KeyboardInterrupt) from start-up on, so it is never silent."""
    try:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        pass


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and every flag's default after its help."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`error: ...`, exit 2) instead of usage + message, defaults
    shown in --help, and flags spelt either way (`--max-size` or `--max_size`, as `fastnst train`
    spells its own)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_args([kebab(a) for a in args], namespace)

    def error(self, message):
        """One line on stderr, exit status 2."""
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def unit_interval(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {v}")
    return v


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return v


def add_image_args(ap: argparse.ArgumentParser) -> None:
    """The arguments bin/stylize and bin/upscale share."""
    ap.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="image or video files (mp4, mov, mkv, webm, avi, animated gif), or folders")
    ap.add_argument("--out", required=True, help="output file (one input) or folder")
    ap.add_argument("--batch-size", type=positive_int, default=4, help="same-size images run together")
    ap.add_argument("--memory-budget", type=positive_int, default=None, metavar="MB",
                    help="working memory for the network; larger images run in tiles "
                         "(default: half the GPU's memory, or a quarter of RAM up to 1.5 GiB on the CPU)")
    ap.add_argument("--allow-missing-frames", action="store_true",
                    help="accept a video with frames that cannot be read (truncated or damaged): "
                         "exit 0; without it the readable frames are still written but the exit "
                         "status is 1")


def report(results) -> int:
    """Prints one line per FileResult; returns the exit status (1 if any input failed)."""
    failed = 0
    for r in results:
        if r.error:
            failed += 1
            print(f"error: {r.error}", file=sys.stderr)
        else:
            print(f"{r.src} -> {r.dst} ({r.note or f'{r.seconds * 1000:.0f} ms'})")
    return 1 if failed else 0


def kebab(arg: str) -> str:
    """`--max_size=3` as `--max-size=3` (only the flag's name; values and non-flags unchanged)."""
    if not arg.startswith("--") or arg == "--":
        return arg
    name, eq, value = arg[2:].partition("=")
    return f"--{name.replace('_', '-')}{eq}{value}"


def snake(arg: str) -> str:
    """`--init-timeout-s=3` as `--init_timeout_s=3` for absl (`--config.*` keys are left alone)."""
    if not arg.startswith("--") or arg.startswith("--config"):
        return arg
    name, eq, value = arg[2:].partition("=")
    return f"--{name.replace('-', '_')}{eq}{value}"


def absl_flags_parser(argv):
    """Parses absl flags; a bad flag or `--config.x` override exits with one line, not a traceback."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        # config_flags embeds the config file's traceback: keep its first and last lines
        msg = lines[0].rstrip(":") + (f": {lines[-1]}" if len(lines) > 1 else "")
        print(f"error: {msg}", file=sys.stderr)
    except (AttributeError, KeyError, ValueError, TypeError) as e:
        text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)  # (a KeyError's str is a repr)
        text = "; ".join(t.strip() for t in text.splitlines() if t.strip())
        print(f"error: bad --config value or key: {text}", file=sys.stderr)
    sys.exit(2)
