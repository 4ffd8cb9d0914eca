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


def _empty(shape, dtype=np.float32) -> np.ndarray:
    """An uninitialised array whose data is `_ALIGN`-byte aligned."""
    n = math.prod(shape) * np.dtype(dtype).itemsize
    raw = np.empty(n + _ALIGN, np.uint8)
    off = -raw.ctypes.data % _ALIGN
    return raw[off: off + n].view(dtype).reshape(shape)


def _aligned(a: np.ndarray) -> bool:
    return a.dtype == np.float32 and a.flags.c_contiguous and a.ctypes.data % _ALIGN == 0


def _into(out: np.ndarray | None, shape) -> np.ndarray:
    """`out` when it is an aligned float32 array of `shape`, else new aligned memory."""
    return out if out is not None and out.shape == tuple(shape) and _aligned(out) else _empty(shape)


def to_device(a: np.ndarray, scratch: dict | None = None, key: str = "") -> jax.Array:
    """A window for the device. On the CPU an aligned, contiguous float32 window is used in place
    (copying and page-faulting hundreds of MB per window took a third of the run); anything else is
    first copied into aligned memory, `scratch[key]` when given (kept there and reused by the next
    window of that shape, so its pages are faulted in once). The caller keeps the memory unchanged
    until the result is read."""
    if not _aligned(a):
        b = _into(None if scratch is None else scratch.get(key), a.shape)
        if scratch is not None:
            scratch[key] = b
        b[...] = a
        a = b
    return jax.device_put(a, may_alias=True)


class Buffer:
    """One layer's whole-image float32 activation (rows, cols, channels): an array in RAM, or an
    unlinked temporary file read and written with pread/pwrite (not mmap: mapped pages would count
    towards the process's resident memory; the page cache does not). A RAM buffer may hold another
    `dtype` (the output as uint8, as it will be saved)."""

    def __init__(self, shape: tuple[int, int, int], in_ram: bool, dtype=np.float32):
        if not in_ram and dtype != np.float32:
            raise ValueError("buffers in files hold float32")
        self.shape = shape
        self.row_bytes = shape[1] * shape[2] * np.dtype(dtype).itemsize
        self.array = _empty(shape, dtype) if in_ram else None
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

    def read(self, r0: int, r1: int, c0: int, c1: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows r0:r1, columns c0:c1: a view of a RAM buffer, or read from the file into `out`
        (reused from window to window: reading into new memory cost 6x as much, page faults
        included) when it has the shape, else into new memory."""
        if self.array is not None:
            return self.array[r0:r1, c0:c1]
        out = _into(out, (r1 - r0, c1 - c0, self.shape[2]))
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
