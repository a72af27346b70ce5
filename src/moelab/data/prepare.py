"""The prepare stage: split a corpus, train a tokenizer on its training split, write token ids.

Each task's `prepare` (tasks/<task>.py) writes its files; this module makes the result atomic: the
files go to a temporary directory beside the target, a manifest with the tokenizer's hash is
written last, and the directory is renamed into place. A killed prepare leaves the old data intact
(and a stale temp dir that the next run removes), never a new tokenizer next to old token ids.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import atomic_write_bytes, default_mode, write_json
from .tokenizer import MANIFEST, file_sha256


def save_array(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_array(path: Path, redo: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path} not found (data not prepared): {redo}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - truncated, not .npy, or an object array
        raise DataError(f"{path} is not a readable array ({' '.join(str(err).split())[:120]}): {redo}") from None


def ragged_arrays(name: str, seqs: list[list[int]]) -> dict[str, np.ndarray]:
    """{name}_ids: all tokens (int32), {name}_offsets: [len(seqs) + 1] start of each sequence."""
    offsets = np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64)
    return {f"{name}_ids": np.asarray([t for s in seqs for t in s], dtype=np.int32), f"{name}_offsets": offsets}


def load_ragged_npz(path: Path, redo: str) -> dict[str, list | np.ndarray]:
    """Inverse of ragged_arrays for every `X_ids`/`X_offsets` pair of an .npz; other arrays as they are."""
    if not path.is_file():
        raise DataError(f"{path} not found (data not prepared): {redo}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        out = {}
        for key, value in arrays.items():
            if key.endswith("_ids"):
                name, offsets = key[:-4], arrays[key[:-4] + "_offsets"]
                if offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != len(value) or (np.diff(offsets) < 0).any():
                    raise ValueError(f"offsets of {name} do not cover its ids")
                out[name] = [value[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
            elif not key.endswith("_offsets"):
                out[key] = value
        return out
    except Exception as err:  # noqa: BLE001 - truncated zip, missing member, bad offsets
        raise DataError(
            f"{path} is not a readable prepared split ({' '.join(str(err).split())[:120]}): {redo}"
        ) from None


def check_ids(path: Path, seqs, vocab_size: int, redo: str) -> None:
    """Every token id of a ragged split lies in [0, vocab_size)."""
    for s in seqs:
        if len(s) and (int(s.max()) >= vocab_size or int(s.min()) < 0):
            raise DataError(
                f"{path} has token ids outside the tokenizer's vocabulary of {vocab_size}: "
                f"the data and tokenizer.json are from different prepare runs; {redo}"
            )


def prepare(task: str, data, out: str | Path) -> dict:
    """Prepare `task`'s data into `out` atomically; returns the task's statistics."""
    from ..tasks import TASKS

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.parent / f".{out.name}.prepare-old"
    if old.exists() and not out.exists():  # killed between the two renames of _swap_into_place
        old.rename(out)
    for stale in out.parent.glob(f".{out.name}.prepare-tmp-*"):  # left by a killed prepare
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.prepare-tmp-"))
    try:
        stats = TASKS.get(task, "task").prepare(data, tmp)
        write_json(tmp / "data_params.json", asdict(data))
        write_json(
            tmp / MANIFEST, {"task": task, "tokenizer_sha256": file_sha256(tmp / "tokenizer.json"), "stats": stats}
        )
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


def _swap_into_place(new: Path, out: Path) -> None:
    """Rename `new` to `out`; an existing `out` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.prepare-old"
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    new.rename(out)
    out.chmod(default_mode(directory=True))  # mkdtemp made it 0700
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def manifest(data_dir: Path) -> dict:
    path = data_dir / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


# ---------------------------------------------------------------- `moelab prepare`
def add_arguments(p) -> None:
    p.add_argument("--task")
    p.add_argument("--out", help="default data/prepared/<task>")
    p.add_argument("--params", default="params.yaml")


def run(args) -> None:
    from ..locking import directory_lock
    from ..resolve import load_params, task_params
    from ..study import prepared_dir

    params = load_params(args.params)
    task = args.task or params.task
    out = Path(args.out) if args.out else prepared_dir(task)
    with directory_lock(out.parent / f".{out.name}.lockdir", f"prepared data {out}"):
        stats = prepare(task, task_params(params, task).data, out)
    print(f"prepared {task}: {stats}")
