"""Atomic file writes, and metrics records with their provenance in a file beside them.

A metrics file (what `dvc metrics` / `dvc exp show` read) holds numbers only; the resolved config and
the package versions that produced it go to `<name>.meta.json` next to it, which DVC does not treat
as metrics.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path

PACKAGES = ("moelab", "torch", "transformers", "datasets", "tokenizers", "entmax", "dvc", "dvclive", "rouge-score")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_mode())  # mkstemp makes 0600; a written file respects the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def default_mode(directory: bool = False) -> int:
    """The mode a new file (0666) or directory (0777) gets under the process umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def current_umask() -> int:
    """The process umask: read from /proc where it is there (Linux), since the portable way (set it
    and set it back) leaves a moment in which another thread would create files with umask 0."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o077)  # the strictest value for that moment
    os.umask(umask)
    return umask


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete temp files a killed writer left behind (`.NAME.XXXX.tmp` from atomic_write_bytes)."""
    directory = Path(directory)
    stale = sorted(directory.glob(".*.tmp")) if directory.is_dir() else []
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def meta_path(metrics_path: str | Path) -> Path:
    """Where the provenance of a metrics file lives: eval.json -> eval.meta.json."""
    path = Path(metrics_path)
    return path.with_name(f"{path.stem}.meta.json")


def write_metrics(path: str | Path, metrics: dict, config: dict | None = None, extra_meta: dict | None = None) -> None:
    """Metrics JSON (numbers only: what `dvc metrics` shows) and its provenance beside it."""
    write_json(meta_path(path), {"config": config or {}, "versions": versions(), **(extra_meta or {})})
    write_json(path, metrics)


def read_json(path: str | Path, redo: str = "re-run the stage that writes it") -> dict:
    """A JSON object; a truncated or non-JSON file is a DataError naming it and saying `redo`."""
    from .errors import DataError

    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}): {redo}") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} holds a JSON {type(value).__name__}, not an object: {redo}")
    return value
