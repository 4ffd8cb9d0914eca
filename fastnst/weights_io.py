"""Reading untrusted weight files safely: hashes, an allow-list unpickler, npz and torch state dicts.

Nothing here knows about VGG-16; `vgg.py` maps names and decides where its weights come from.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np

from fastnst.errors import WeightsError
from fastnst.images import atomic_write_bytes


def cache_dir() -> Path:
    """Where converted weights live: `$FASTNST_CACHE_DIR` or `~/.cache/fastnst`."""
    if "FASTNST_CACHE_DIR" in os.environ:
        return Path(os.environ["FASTNST_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fastnst"


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ArrayOnlyUnpickler(pickle.Unpickler):
    """Admits only the globals NumPy needs to rebuild arrays; anything else is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        """Only the allow-listed NumPy globals."""
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None

    def persistent_load(self, pid):
        """Persistent ids are never allowed."""
        raise pickle.UnpicklingError("refusing persistent ids")


def read_array_pickle(path: str | os.PathLike, *, expected_sha256: str) -> dict:
    """Reads a pickle of nested dicts of NumPy arrays after checking its SHA-256.

    Raises:
      WeightsError: missing file, wrong hash, or a pickle that asks for anything but arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    digest = sha256(path)
    if digest != expected_sha256:
        raise WeightsError(f"{path}: SHA-256 {digest[:16]}... does not match the expected "
                           f"{expected_sha256[:16]}... (truncated or wrong file)")
    try:
        obj = ArrayOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as e:  # any failure of an untrusted pickle is a weights problem
        raise WeightsError(f"{path}: unsafe or unreadable pickle ({e})") from None
    _check_arrays_only(obj, path)
    return obj


def _check_arrays_only(obj, path: Path) -> None:
    if isinstance(obj, dict):
        for v in obj.values():
            _check_arrays_only(v, path)
    elif not isinstance(obj, np.ndarray):
        raise WeightsError(f"{path}: pickle holds a {type(obj).__name__}, expected only arrays")


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an `.npz` file (pickled objects refused)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise WeightsError(f"{path}: unreadable weights file ({e})") from None


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Writes arrays to an `.npz` file atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def read_torch_state(path: str | os.PathLike, *, sha256_prefix: str) -> dict[str, np.ndarray]:
    """A PyTorch state dict as NumPy arrays, read with `weights_only=True` after a hash check."""
    path = Path(path)
    if not sha256(path).startswith(sha256_prefix):
        raise WeightsError(f"{path}: SHA-256 does not start with {sha256_prefix} (wrong file)")
    try:
        import torch
    except ImportError:
        raise WeightsError("reading a .pth file needs PyTorch (pip install torch)") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # no code execution
    except Exception as e:  # an untrusted file: any failure is a weights problem
        raise WeightsError(f"{path}: unreadable PyTorch file ({e})") from None
    return {k: v.numpy() for k, v in state.items()}


def distribution_file(dist: str, relpath: str) -> Path:
    """A file inside an installed distribution, found without importing the package."""
    try:
        path = Path(importlib.metadata.distribution(dist).locate_file(relpath))
    except importlib.metadata.PackageNotFoundError:
        raise WeightsError(f"the package {dist} is not installed") from None
    if not path.is_file():
        raise WeightsError(f"{dist} is installed but {path} is missing")
    return path
