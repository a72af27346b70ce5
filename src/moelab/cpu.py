"""CPU process settings that every moelab command applies once, at start-up."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
_KEEP_BYTES = 1 << 30
_state = {"malloc_tuned": False}


def keep_freed_memory() -> bool:
    """Serve large tensors from the malloc heap and keep freed memory for reuse (glibc only).

    By default glibc gives every allocation above its mmap threshold (adaptive, at most 32 MiB) its
    own mmap and returns it to the OS on free, so each training step zero-fills (page-faults) every
    big activation and gradient afresh: 6 ms per 32 MiB on this machine, which was a quarter of the
    MoE layer's backward at 512 tokens (its E expert gradients are E times a dense layer's).
    Raising both thresholds to 1 GiB makes freed blocks reusable, as jemalloc or tcmalloc would.
    The cost: the process keeps its peak heap until it exits. MOELAB_MALLOC=default opts out.
    Returns whether the setting took effect.
    """
    if _state["malloc_tuned"] or os.environ.get("MOELAB_MALLOC") == "default" or not sys.platform.startswith("linux"):
        return _state["malloc_tuned"]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES) == 1
    except (OSError, AttributeError):  # not glibc (musl, ...): keep the platform's allocator
        ok = False
    _state["malloc_tuned"] = ok
    return ok


def malloc_tuned() -> bool:
    return _state["malloc_tuned"]
