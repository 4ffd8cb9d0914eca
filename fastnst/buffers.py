"""Host buffers of tiled inference: one per buffered layer, in RAM while the budget allows and
otherwise in an unlinked temporary file (gone when closed, after Ctrl-C, even after kill -9), with
64-byte-aligned windows that XLA:CPU reads in place."""

from __future__ import annotations

import math
import os
import tempfile

import jax
import numpy as np

BUFFER_PREFIX = "fastnst-tiles-"


def open_buffer_files() -> list[str]:
    """The tiling buffer files this process holds open (unlinked at creation, so an open descriptor
    is the only way one can still take disk space): empty after every `apply_tiled`."""
    fd = "/proc/self/fd"
    links = (os.readlink(os.path.join(fd, f)) for f in os.listdir(fd) if os.path.islink(os.path.join(fd, f)))
    return [t for t in links if BUFFER_PREFIX in t]


_ALIGN = 64  # XLA:CPU uses host memory aligned like this in place instead of copying it


def _empty(shape) -> np.ndarray:
    """An uninitialised float32 array whose data is `_ALIGN`-byte aligned."""
    n = math.prod(shape) * 4
    raw = np.empty(n + _ALIGN, np.uint8)
    off = -raw.ctypes.data % _ALIGN
    return raw[off: off + n].view(np.float32).reshape(shape)


def to_device(a: np.ndarray) -> jax.Array:
    """A window for the device. On the CPU an aligned, contiguous float32 window is used in place
    (copying and page-faulting hundreds of MB per window took a third of the run); anything else is
    first copied into aligned memory. The caller keeps `a` unchanged until the result is read."""
    if not (a.dtype == np.float32 and a.flags.c_contiguous and a.ctypes.data % _ALIGN == 0):
        b = _empty(a.shape)
        b[...] = a
        a = b
    return jax.device_put(a, may_alias=True)


class Buffer:
    """One layer's whole-image float32 activation (rows, cols, channels): an array in RAM, or an
    unlinked temporary file read and written with pread/pwrite (not mmap: mapped pages would count
    towards the process's resident memory; the page cache does not)."""

    def __init__(self, shape: tuple[int, int, int], in_ram: bool):
        self.shape = shape
        self.row_bytes = shape[1] * shape[2] * 4
        self.array = _empty(shape) if in_ram else None
        self.file = None
        if not in_ram:  # unlinked at once (named first, so that /proc/PID/fd shows what it is)
            fd, path = tempfile.mkstemp(prefix=BUFFER_PREFIX)
            os.unlink(path)
            self.file = os.fdopen(fd, "r+b")
            self.file.truncate(shape[0] * self.row_bytes)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def write(self, r0: int, c0: int, block: np.ndarray) -> None:
        if self.array is not None:
            self.array[r0: r0 + block.shape[0], c0: c0 + block.shape[1]] = block
            return
        block = np.ascontiguousarray(block, np.float32)
        if c0 == 0 and block.shape[1] == self.shape[1]:
            _pwrite(self.file.fileno(), memoryview(block).cast("B"), r0 * self.row_bytes)
            return
        for i, row in enumerate(block):
            _pwrite(self.file.fileno(), memoryview(row).cast("B"),
                    (r0 + i) * self.row_bytes + c0 * self.shape[2] * 4)

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        if self.array is not None:
            return self.array[r0:r1, c0:c1]
        out = _empty((r1 - r0, c1 - c0, self.shape[2]))
        if c0 == 0 and c1 == self.shape[1]:
            _pread(self.file.fileno(), memoryview(out).cast("B"), r0 * self.row_bytes)
        else:
            for i in range(r1 - r0):
                _pread(self.file.fileno(), memoryview(out[i]).cast("B"),
                       (r0 + i) * self.row_bytes + c0 * self.shape[2] * 4)
        return out

    def close(self) -> None:
        self.array = None
        if self.file is not None:
            self.file.close()


def _pwrite(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _pread(fd: int, into: memoryview, offset: int) -> None:
    while into:
        n = os.preadv(fd, [into], offset)
        if n == 0:
            raise OSError("short read from a tiling buffer")
        into, offset = into[n:], offset + n
