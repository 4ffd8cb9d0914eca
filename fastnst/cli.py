"""What every bin/ script shares: the repo on sys.path, one-line errors, exit codes."""

from __future__ import annotations

import functools
import sys


def one_line_errors(main):
    """Runs `main`; a FastnstError (a user mistake) becomes `error: ...` on stderr and exit 1."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        from fastnst.errors import FastnstError

        try:
            return main(*args, **kwargs)
        except FastnstError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper


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
        print(f"error: bad --config value or key: {e}", file=sys.stderr)
    sys.exit(2)
