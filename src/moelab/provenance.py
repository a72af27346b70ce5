"""What produced a result: a hash of the code a stage runs.

TRAIN_CODE lists the files of the package that training imports (tests/test_pipeline.py checks the
list against the modules a real `moelab train` imports). A checkpoint records the hash of that code,
so a run resumes only on the code that started it; the train stages of dvc.yaml depend on the same
hash (fingerprints/code/train.json, written by `moelab code`: see stages.py for every stage's list).

The building blocks below are shared with stages.py; they live here because TRAIN_CODE is made of
them, so editing one changes the training code's hash, as it must.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent

# package-relative paths (a directory: every .py file under it)
COMMAND = ("__init__.py", "cli.py", "cpu.py", "errors.py", "io.py")  # the dispatcher every command runs through
# params.yaml: loading validates every cell of the study, which reads the registries of moe/ and tasks/
PARAMS = ("config/__init__.py", "config/load.py", "config/resolve.py", "config/schema.py", "moe", "models", "tasks")
PREPARED = ("data/__init__.py", "data/prepare.py", "data/tokenizer.py")  # reading prepared data (not corpora.py)
CELL = ("config/cli.py", "checkpoint.py")  # flags naming a study cell; checkpoints

TRAIN_CODE = (*COMMAND, *PARAMS, *PREPARED, *CELL, "locking.py", "provenance.py", "train")


@cache
def code_hash(parts: tuple[str, ...] = TRAIN_CODE) -> str:
    """sha256 over the (path, content) of every .py file under `parts` (bytecode and caches excluded)."""
    digest = hashlib.sha256()
    for f in code_files(parts):
        digest.update(str(f.relative_to(PACKAGE)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def code_files(parts: tuple[str, ...], package: Path = PACKAGE) -> list[Path]:
    """The .py files `parts` name (under `package`: this one, or a copy of it), in a fixed order."""
    files = []
    for part in parts:
        root = package / part
        if not root.exists():  # a renamed module left in a list: fail loudly, never hash less code
            raise FileNotFoundError(f"{root}: listed as code a stage runs (moelab/provenance.py, stages.py)")
        files += [root] if root.is_file() else sorted(root.rglob("*.py"))
    return files
