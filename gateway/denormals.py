"""Flush-to-zero on the threads that run ONNX Runtime on the CPU.

A masked attention gives every masked key a softmax weight near FLT_MIN divided by the row's sum: a denormal
number, and the CPU computes with denormals on a slow path. ModernBERT's local layers mask three keys in four at
512 tokens, so that path took most of their attention time. Flushed to zero, one such layer (one 512-token pair,
one thread) ran 2.0x-2.4x faster, a whole ModernBERT-base pair 1.3x-1.5x (int8) and 1.1x-1.2x (fp32), with the
same outputs to the last bit (`python -m bench.denormals`, an Intel Xeon, three runs). Padded batches (the
prefilter's, an fp32 batch's) mask keys the same way.

The CPU's flush-to-zero and denormals-are-zero modes (x86 MXCSR bits FTZ and DAZ) are per thread. ONNX Runtime
sets them (`session.set_denormal_as_zero`) on its own pool threads, and on the thread that initialises the
process's first session. But a session with one intra-op thread computes on its caller, here a `FairLane` worker,
which sets them on itself with `flush_denormals` (and clears them when the setting is off, whatever the thread
inherited). That goes through the C library's fegetenv/fesetenv: glibc and musl lay out x86-64's fenv_t alike
(the x87 environment, then MXCSR at byte 28). On other CPUs it is a no-op that says so, and ONNX Runtime's own
setting still covers its pool threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
import struct
import sys
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

_FTZ_DAZ = 0x8000 | 0x0040  # MXCSR: flush-to-zero (bit 15), denormals-are-zero (bit 6)
_FENV_BYTES = 32  # x86-64 fenv_t: 28 bytes of x87 environment, then MXCSR
_MXCSR_AT = 28


@cache
def _fenv() -> Any:
    """The C library's fegetenv/fesetenv on x86-64 Linux, else None."""
    if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    for name in (ctypes.util.find_library("m"), None):  # libm (glibc), else the process's own symbols (musl)
        try:
            lib = ctypes.CDLL(name)
            lib.fegetenv, lib.fesetenv  # noqa: B018 - both must be there
        except (OSError, AttributeError):
            continue
        return lib
    return None


def _mxcsr(lib: Any) -> tuple[Any, int] | None:
    env = ctypes.create_string_buffer(_FENV_BYTES)
    if lib.fegetenv(env) != 0:
        return None
    return env, int(struct.unpack_from("<I", env.raw, _MXCSR_AT)[0])


def denormals_flushed() -> bool:
    """Whether this thread flushes denormals to zero (FTZ and DAZ both set)."""
    lib = _fenv()
    state = _mxcsr(lib) if lib is not None else None
    return state is not None and state[1] & _FTZ_DAZ == _FTZ_DAZ


def flush_denormals(on: bool = True) -> bool:
    """Set FTZ and DAZ on the calling thread (`on` False: clear them; threads it starts later inherit either);
    whether the thread flushes denormals now."""
    lib = _fenv()
    state = _mxcsr(lib) if lib is not None else None
    if state is None:
        if on:
            _say_unavailable()
        return False
    env, mxcsr = state
    wanted = mxcsr | _FTZ_DAZ if on else mxcsr & ~_FTZ_DAZ
    if wanted != mxcsr:
        struct.pack_into("<I", env, _MXCSR_AT, wanted)
        lib.fesetenv(env)
    flushed = denormals_flushed()
    if on and not flushed:
        _say_unavailable()
    return flushed


@cache
def _say_unavailable() -> None:
    log.info(
        "denormals: this thread cannot flush them to zero here (%s %s); ONNX Runtime's own threads still do",
        sys.platform,
        platform.machine(),
    )
