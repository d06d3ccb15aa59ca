"""Image sources read one image at a time: the streamed alternative to a whole uint8 array.

A stage that would hold a dataset as one ``(N, S, S, 3)`` uint8 array in memory (the training
mix of an evaluation, 98 GB for 650,000 images at 224 px) can instead hand its loop a
map-style ``torch.utils.data.Dataset`` whose item ``i`` is image ``i`` as uint8 ``(S, S, 3)``,
read and decoded when asked for (in DataLoader worker processes), so memory does not grow
with N:

- ``CacheRows``: rows of a uint8 ``.npy`` file (a dataset's pixel cache), read with ``pread``
  (no memory map: the pages read stay in the kernel's page cache, out of the process's RSS);
- ``ImageFiles``: image files decoded and resized with ``engine.data.file_pixels`` (the rule
  of ``load_pixels``), so a streamed image equals the in-memory one bit for bit.

Item ``i`` depends on ``i`` alone (no randomness here; augmentation stays in the loop, drawn
from its seeded generator), so a streamed run sees the batches of the in-memory run.

``choose_path`` is the rule that picks between the two paths: in memory while the array's
bytes stay under a fraction of the available memory, streamed beyond.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from engine.config import DATA_PATHS
from engine.data import file_pixels
from engine.errors import DatasetError, InvalidConfigError

log = logging.getLogger(__name__)


class CacheRows(Dataset):
    """Rows ``rows`` of a uint8 ``(N, H, W, 3)`` ``.npy`` file (a pixel cache), read when
    indexed: ``r[i]`` is one (H, W, 3) image, ``r[a:b]`` a (k, H, W, 3) block (one read when
    its rows are consecutive), so it stands in for the array in a chunked loop.

    The file is opened lazily in each process (workers included) and read with ``os.pread``.
    """

    def __init__(self, path: Path | str, rows: np.ndarray | list[int] | None = None) -> None:
        self.path = str(path)
        with open(self.path, "rb") as f:
            major, _minor = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if major == 1
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or fortran:
            raise DatasetError(f"{self.path} is not a C-ordered uint8 (N, H, W, 3) array: "
                               f"{dtype} {shape}")
        self.file_rows = int(shape[0])
        self.rows = (np.arange(self.file_rows, dtype=np.int64) if rows is None
                     else np.asarray(rows, dtype=np.int64))
        if self.rows.size and (self.rows.min() < 0 or self.rows.max() >= self.file_rows):
            raise DatasetError(f"rows outside [0, {self.file_rows}) asked of {self.path}")
        self.shape = (int(self.rows.size),) + tuple(int(v) for v in shape[1:])
        self.dtype, self.ndim = np.dtype(np.uint8), 4
        self.row_bytes = int(np.prod(self.shape[1:]))
        self._fd: int | None = None

    def __len__(self) -> int:
        return int(self.rows.size)

    def _pread(self, first: int, count: int) -> np.ndarray:
        """``count`` consecutive file rows from ``first``: (count, H, W, 3)."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        size = count * self.row_bytes
        raw = os.pread(self._fd, size, self.offset + first * self.row_bytes)
        if len(raw) != size:
            raise DatasetError(f"{self.path} is cut short before row {first + count}")
        return np.frombuffer(raw, dtype=np.uint8).reshape((count,) + self.shape[1:])

    def __getitem__(self, key: int | slice) -> np.ndarray:
        if not isinstance(key, slice):
            return self._pread(int(self.rows[key]), 1)[0]
        rows = self.rows[key]
        if rows.size and np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size)):
            return self._pread(int(rows[0]), int(rows.size))
        out = np.empty((rows.size,) + self.shape[1:], dtype=np.uint8)
        for i, row in enumerate(rows):
            out[i] = self._pread(int(row), 1)[0]
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None}  # a file descriptor does not cross processes

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


class ImageFiles(Dataset):
    """Image files decoded at ``size``; item i: (size, size, 3) uint8, as ``load_pixels``.

    The paths are kept as one fixed-width bytes array, not a list of strings: a copy in
    every loader worker, about 3x smaller than Python strings at 650,000 paths.
    """

    def __init__(self, paths: list[str] | list[Path], size: int) -> None:
        if size < 1:
            raise DatasetError(f"size must be >= 1, got {size}")
        self.paths = np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)
        self.size = int(size)
        self.shape = (len(self.paths), self.size, self.size, 3)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return file_pixels(os.fsdecode(self.paths[i]), self.size)


def stack_images(items: list[np.ndarray]) -> np.ndarray:
    """A DataLoader ``collate_fn``: (S, S, 3) uint8 items -> one (k, S, S, 3) array."""
    return np.stack(items)


def available_memory() -> int:
    """Bytes of memory available to new allocations on this machine (psutil's estimate)."""
    import psutil

    return int(psutil.virtual_memory().available)


def choose_path(data_path: str, nbytes: int, memory_fraction: float,
                available: int | None = None) -> str:
    """``"memory"`` or ``"stream"``: the path a stage reads ``nbytes`` of uint8 images by.

    ``data_path`` "memory" / "stream" is obeyed; "auto" keeps the images in memory while
    ``nbytes <= memory_fraction * available`` (``available`` defaults to this machine's
    available memory), and streams them beyond.
    """
    if data_path not in DATA_PATHS:
        raise InvalidConfigError(f"data_path must be one of {DATA_PATHS}, got {data_path!r}")
    if data_path != "auto":
        return data_path
    available = available_memory() if available is None else int(available)
    return "memory" if nbytes <= memory_fraction * available else "stream"
