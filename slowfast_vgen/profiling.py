"""Per-chunk cost measurement: wall seconds and peak memory (GPU allocator or process RSS)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA allocator stats, or Linux's VmHWM via clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        _CLEAR_REFS.write_text("5")  # resets the RSS high-water mark of this process
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak memory since the last reset: CUDA max allocated, else the process RSS high-water mark."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kib = _status_kib("VmHWM")
    return None if kib is None else kib / 1024


@functools.lru_cache(maxsize=1)
def _glibc_malloc_trim():
    """glibc's ``malloc_trim``, or None on another C library / platform."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory(device: torch.device) -> None:
    """Give the pages freed by a backward pass back to the OS (glibc ``malloc_trim(0)``; CPU only).

    glibc keeps freed small allocations in its heap; after every Temp-LoRA update the heap is
    fragmented a little more, and the resident set crept up: embedded model, 125 chunks, peak
    of the last chunk over the second ×1.056 without this call and ×1.013 with it after every
    chunk. The call takes 10-25 ms, and the next backward pass faults the pages back in (0.08 s
    per chunk when called after every chunk), so the session calls it every
    :data:`~slowfast_vgen.session.RELEASE_EVERY` chunks. Nothing happens on other devices or C
    libraries.
    """
    if device.type != "cpu":
        return
    trim = _glibc_malloc_trim()
    if trim is not None:
        trim(0)


@dataclass
class Stopwatch:
    """``with Stopwatch() as watch: ...`` then ``watch.seconds`` (synchronises CUDA)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seconds: float = 0.0

    def __enter__(self) -> "Stopwatch":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self._start
