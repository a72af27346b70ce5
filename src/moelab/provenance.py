"""What produced a result: a hash of the code a stage runs, and the machine it ran on.

TRAIN_CODE lists the parts of the package that training and evaluation import (a test checks the
list against the real import graph and against dvc.yaml's deps). A checkpoint records the hash of
that code, so a run resumes only on the code that started it.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent

# package-relative paths whose code the train and evaluate stages run
TRAIN_CODE = (
    "__init__.py",
    "__main__.py",
    "cli.py",
    "errors.py",
    "io.py",
    "cpu.py",
    "checkpoint.py",
    "flops.py",
    "provenance.py",
    "locking.py",
    "config",
    "moe",
    "models",
    "tasks",
    "data",
    "train",
    "evaluate.py",
)


@cache
def code_hash(parts: tuple[str, ...] = TRAIN_CODE) -> str:
    """sha256 over the (path, content) of every .py file under `parts` (bytecode and caches excluded)."""
    digest = hashlib.sha256()
    for part in parts:
        root = PACKAGE / part
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for f in files:
            digest.update(str(f.relative_to(PACKAGE)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
