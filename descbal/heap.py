"""The process heap: keep the memory large tensors free for the next ones (glibc).

glibc's malloc serves a request above its mmap threshold (128 KiB at first, raised to the
size of each mapped block freed, at most 32 MiB) with a fresh ``mmap`` and unmaps it on free,
and it hands the free top of the heap back to the system once that exceeds a trim threshold.
A training step or an inference batch allocates and frees the same large buffers every time
(activations, their gradients, the batch), so every step faults all of them in again, one
4 KiB page at a time, with the kernel zeroing each page. On the 2-core test machine an eager
HyNet step at 256 x 3 patches took 1.0 million faults and 5.0 to 5.6 s, against 3.3 to 3.6 s
without them; at 64 x 3 the faults were few and cost little
(``benchmarks/train_step.py`` prints both heaps side by side).

:func:`keep_freed_memory` turns both off for the process: no block of the main thread's heap
is mapped apart and its free top is kept (up to 2 GiB), so freed buffers are reused without a
fault. (Other threads' heaps still map blocks above 64 MiB apart: the step runs on the main
thread. Under a preloaded allocator, tcmalloc or jemalloc, mallopt answers yes and changes
nothing; those keep freed memory already.) The
process's resident memory then stays near its peak instead of falling between steps, and can
exceed it by a few of the largest blocks while the heap settles: torch allocates with
``posix_memalign``, which glibc cannot always serve from the block just freed (a HyNet trainer
run at 256, 64, 128, 256 and 64 x 3 patches in turn: 2.0 GiB resident, against a 1.9 GiB peak
with the default heap). The numbers computed do not change: only where buffers live.

A training run does it with ``loop.keep_memory = true`` (each rank of a distributed run, as
it builds its trainer); library users may call it themselves, as a process owner would set
torch's thread count. It is off by default: the gain is at large CPU batches only (at 64 x 3
the faults are few), and resident memory no longer falls between steps. It does nothing off
Linux or with another C library.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

# mallopt's parameter codes (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: The largest trim threshold mallopt takes (an int): free heap top kept before returning it.
TRIM_KEEP = 2**31 - 1

_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Make the process's malloc keep freed memory for reuse (see the module docstring).

    Idempotent. Returns whether it applies: True under glibc on Linux once both settings
    took; False off Linux or with another C library (nothing changed), or if glibc refused a
    setting.
    """
    global _kept
    if _kept is None:
        _kept = _apply()
    return _kept


def kept() -> bool:
    """Whether :func:`keep_freed_memory` has taken effect in this process."""
    return _kept is True


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt`` in this process, or None (not Linux, or another C library)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded: the process's own C library
    except OSError:  # pragma: no cover - a static interpreter without dlopen
        return None
    if not hasattr(libc, "gnu_get_libc_version"):  # musl has a mallopt that does nothing
        return None
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def _apply() -> bool:
    """Set both (the mapping limit first); True when glibc took them."""
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    # mallopt returns 1 on success; M_MMAP_MAX 0: never mmap a block apart (large ones too)
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_KEEP) == 1
