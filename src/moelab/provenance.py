"""What produced a result: a hash of the code a stage runs.

TRAIN_CODE lists the files of the package that training imports (tests/test_pipeline.py checks the
list against the modules a real `moelab train` imports). A checkpoint records the hash of that code
(train/loop.py `fingerprint`), so a run resumes only on the code that started it; the train and
pretrain stages depend on the same hash (fingerprints/code/train.json, written by `moelab code`: see
stages.py for every stage's list).

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
# params.yaml: loading validates every run of the study, which reads the registries of moe/ and tasks/
# (and checks each data source without reading it: data/corpora.py)
PARAMS = ("config", "resolve.py", "moe", "models", "tasks", "data/__init__.py", "data/corpora.py")
PREPARED = ("data/prepare.py", "data/tokenizer.py")  # reading prepared data
SELECT = ("select.py", "study.py", "parallel.py")  # which runs a command's flags name, their paths, side by side

TRAIN_CODE = (*COMMAND, *PARAMS, *PREPARED, *SELECT, "checkpoint.py", "locking.py", "provenance.py", "train")


@cache
def code_hash(parts: tuple[str, ...] = TRAIN_CODE) -> str:
    """sha256 over the (path, content) of every .py file under `parts` (bytecode and caches excluded)."""
    digest = hashlib.sha256()
    for f in code_files(parts):
        digest.update(str(f.relative_to(PACKAGE)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def code_files(parts: tuple[str, ...], package: Path = PACKAGE) -> list[Path]:
    """The .py files `parts` name (under `package`: this one, or a copy of it), each once, in a fixed order."""
    files: dict[Path, None] = {}
    for part in parts:
        root = package / part
        if not root.exists():  # a renamed module left in a list: fail loudly, never hash less code
            raise FileNotFoundError(f"{root}: listed as code a stage runs (moelab/provenance.py, stages.py)")
        files.update(dict.fromkeys([root] if root.is_file() else sorted(root.rglob("*.py"))))
    return list(files)
