"""An exclusive lock on a directory a command writes to (models, prepared data): a second process
gets one line naming the holder instead of silently interleaving checkpoints. The lock is an
fcntl lock on `<dir>/.lock`, so the kernel releases it when the holder exits, crash included."""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

from .errors import LockError


@contextmanager
def directory_lock(directory: str | Path, what: str = "this directory"):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise LockError(
                f"{directory} is locked by {holder}, which is writing {what}: wait for it to "
                f"finish, or point this run at another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv[:4])})".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
