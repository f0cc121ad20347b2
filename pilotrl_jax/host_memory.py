"""Host memory: keep freed memory in the process, so XLA's per-call buffers on CPU do not page-fault.

XLA on CPU allocates an executable's temporaries afresh on every call (the demo-shape PPO step's are
1.9 GB at 16 x 512 tokens, 5.6 GB at 16 x 1024). glibc's malloc serves any block above its mmap
threshold (at most 32 MB) with new pages from the kernel and unmaps them on free, so every call
faults every page in again: ~0.5 M page faults per PPO step, which in this project's VMs cost more than
the step's matmuls (measured: the step ran 1.9x faster without them; torch's update 1.3x faster).

`keep_freed_memory()` (run once at `import pilotrl_jax`) tells glibc to serve large blocks from its
heap and keep what is freed there for reuse (`mallopt`: one arena, no mmap'd chunks, no trimming). Trimming
is turned off with -1 (glibc's documented value: never trim), not with the largest int: a freed block
above 2 GiB at the top of the heap (the SmolLM2 PPO step's 3.3 GB of temporaries) was otherwise handed
back after every call and faulted in again (0.81 M faults per step, 23% of its time). The cost: the
process keeps its peak heap until it exits (RSS does not shrink after a large step). Set
PILOTRL_KEEP_FREED_MEMORY=0 to leave malloc as it is; off glibc (macOS, musl) nothing changes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "PILOTRL_KEEP_FREED_MEMORY"
# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -3, -4, -8
_STATE: dict = {"applied": None}


def _glibc():
    """The C library when it is glibc (it has gnu_get_libc_version), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (an AttributeError off glibc)
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module doc); True when applied. Idempotent."""
    if _STATE["applied"] is not None:
        return _STATE["applied"]
    value = os.environ.get(ENV, "1").strip().lower()
    if value not in ("0", "1", "false", "true", "no", "yes", "off", "on"):
        raise ValueError(f"{ENV}={os.environ[ENV]!r}; expected 1 (keep freed memory, the default) or 0 "
                         "(leave malloc as it is)")
    libc = _glibc() if value in ("1", "true", "yes", "on") else None
    # one arena: a thread's own arena (XLA's workers allocate there) maps any block above its 64 MB heap
    # size whatever the mmap settings; the main arena grows its heap instead
    ok = bool(libc is not None and libc.mallopt(_M_ARENA_MAX, ctypes.c_int(1))
              and libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(2**31 - 1))
              and libc.mallopt(_M_MMAP_MAX, ctypes.c_int(0))
              and libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(-1)))  # -1: never trim (any size)
    _STATE["applied"] = ok
    return ok


def applied() -> bool:
    """Whether `keep_freed_memory` changed malloc's settings in this process."""
    return bool(_STATE["applied"])
