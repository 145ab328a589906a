"""Handing freed heap memory back to the OS (glibc `malloc_trim`), for the gateway's CPU lane and the build step.

glibc keeps the memory of freed buffers that were not mmapped on their own (its mmap threshold grows after the
first large free, so later buffers of that size come from the heap), so RSS stays at the peak of the largest
batch, model or export step ever run; `malloc_trim(0)` hands the free pages back. A no-op on other C libraries.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _malloc_trim() -> Callable[[], None]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return lambda: None

    def release() -> None:
        trim(0)

    return release


release_heap = _malloc_trim()
