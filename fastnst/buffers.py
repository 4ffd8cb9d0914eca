"""Host buffers of tiled inference: one per buffered layer, in RAM while the budget allows and
otherwise in one unlinked temporary file per run whose freed ranges later buffers reuse (gone when
closed, after Ctrl-C, even after kill -9), with 64-byte-aligned windows that XLA:CPU reads in place."""

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


def layout(buffers: list[tuple[str, int, int, int]]) -> tuple[dict[str, int], int]:
    """Byte offsets in one file for buffers (name, bytes, the stage that writes it, the last stage
    that reads it), and the file's span: two buffers alive at the same stage never overlap, and a
    range freed by one is reused by later ones. Each buffer goes at the lowest offset clear of the
    buffers placed before it that it lives with, in the order (of three: by bytes x stages alive,
    by bytes, by first stage) that spans least; for the paper network's 15 buffers at 6000x4000
    the first reaches the peak of live bytes, 6.2 GB (the others 7.0-7.7 GB). Offsets are
    multiples of the page size."""
    page = 4096
    sized = [(name, -(-n // page) * page, first, last) for name, n, first, last in buffers]

    def place(order):
        placed: dict[str, tuple[int, int, int, int]] = {}  # name -> (offset, end, first, last)
        for name, n, first, last in order:
            off = 0
            for o, e in sorted((o, e) for o, e, f, la in placed.values() if f <= last and first <= la):
                if off + n <= o:
                    break
                off = max(off, e)
            placed[name] = (off, off + n, first, last)
        return {k: v[0] for k, v in placed.items()}, max((v[1] for v in placed.values()), default=0)

    orders = [lambda b: -b[1] * (b[3] - b[2] + 1), lambda b: -b[1], lambda b: b[2]]
    return min((place(sorted(sized, key=key)) for key in orders), key=lambda r: r[1])


class Arena:
    """One unlinked temporary file that holds every file buffer of a run, at offsets from `layout`:
    a range freed by one buffer is written again by a later one, and its pages are still in the
    page cache, so the write overwrites them where a new file makes the kernel allocate new pages.
    On this VM that is the difference between 0.36 s and up to 6.2 s of system time for 2 GB (pages
    the guest freed a while ago are handed back to the host and cost a fault each when used again).
    Closing the arena (the file is unlinked at creation) frees everything."""

    def __init__(self, offsets: dict[str, int], span: int):
        fd, path = tempfile.mkstemp(prefix=BUFFER_PREFIX)  # named first, so /proc/PID/fd shows what it is
        os.unlink(path)
        self.file = os.fdopen(fd, "r+b")
        self.file.truncate(span)
        self.offsets, self.span = offsets, span

    def close(self) -> None:
        self.file.close()


class Buffer:
    """One layer's whole-image float32 activation (rows, cols, channels): an array in RAM, or a byte
    range of an `Arena` file read and written with pread/pwrite (not mmap: mapped pages would count
    towards the process's resident memory; the page cache does not). A RAM buffer may hold another
    `dtype` (the output as uint8, as it will be saved)."""

    def __init__(self, shape: tuple[int, int, int], arena: Arena | None = None, name: str = "",
                 dtype=np.float32):
        if arena is not None and dtype != np.float32:
            raise ValueError("buffers in files hold float32")
        self.shape = shape
        self.row_bytes = shape[1] * shape[2] * np.dtype(dtype).itemsize
        self.array = _empty(shape, dtype) if arena is None else None
        self.arena = arena
        self.base = arena.offsets[name] if arena is not None else 0

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def _at(self, r: int, c: int) -> int:  # the file offset of float32 element (r, c, 0)
        return self.base + r * self.row_bytes + c * self.shape[2] * 4

    def write(self, r0: int, c0: int, block: np.ndarray) -> None:
        if self.array is not None:
            self.array[r0: r0 + block.shape[0], c0: c0 + block.shape[1]] = block
            return
        block = np.ascontiguousarray(block, np.float32)
        fd = self.arena.file.fileno()
        if c0 == 0 and block.shape[1] == self.shape[1]:
            _pwrite(fd, memoryview(block).cast("B"), self._at(r0, 0))
            return
        for i, row in enumerate(block):
            _pwrite(fd, memoryview(row).cast("B"), self._at(r0 + i, c0))

    def read(self, r0: int, r1: int, c0: int, c1: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows r0:r1, columns c0:c1: a view of a RAM buffer, or read from the file into `out`
        (reused from window to window: reading into new memory cost 6x as much, page faults
        included) when it has the shape, else into new memory."""
        if self.array is not None:
            return self.array[r0:r1, c0:c1]
        out = _into(out, (r1 - r0, c1 - c0, self.shape[2]))
        fd = self.arena.file.fileno()
        if c0 == 0 and c1 == self.shape[1]:
            _pread(fd, memoryview(out).cast("B"), self._at(r0, 0))
        else:
            for i in range(r1 - r0):
                _pread(fd, memoryview(out[i]).cast("B"), self._at(r0 + i, c0))
        return out

    def close(self) -> None:
        """Frees the memory (a file buffer's range is left to the later buffers `layout` put there)."""
        self.array = None
        self.arena = None


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
