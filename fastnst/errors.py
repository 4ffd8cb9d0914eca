"""The project's exception types.

Every user mistake (a missing file, a bad image, wrong weights, a bad config value) raises a
`FastnstError`; the `bin/` scripts print its message on one line and exit non-zero.
"""


class FastnstError(Exception):
    """Base class for errors caused by inputs rather than by bugs."""


class ImageError(FastnstError):
    """An image file is missing, empty, truncated, too large, or not an image."""


class WeightsError(FastnstError):
    """VGG-16 or model weights are missing, truncated, or fail their integrity check."""


class ConfigError(FastnstError, ValueError):
    """A config value, loss term, network option or command-line value is invalid.

    Also a `ValueError`, so callers that validated arguments with `ValueError` keep working.
    """


class OutputError(ImageError, OSError):
    """An output file or folder cannot be created or written (also an `OSError`)."""


class JobError(FastnstError):
    """Another process of a multi-process job stopped or cannot be reached.

    The `bin/` scripts print the message and exit at once, without the interpreter's shutdown:
    JAX's shutdown would wait (and then abort with a native stack trace) for the lost process.
    """


def install_hint(extra: str) -> str:
    """The command that installs fastnst's optional `extra`, for how this fastnst was installed:
    from a clone (editable, or on sys.path) the clone's path, else the package from the index."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file():
        return f"pip install -e '{root}[{extra}]'"
    return f"pip install 'fastnst[{extra}]'"


def need(module: str, extra: str, what: str):
    """`import module`, or a FastnstError naming the extra that provides it and its install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise FastnstError(f"{what} needs the {extra!r} extra: {install_hint(extra)}") from None
