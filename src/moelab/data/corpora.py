"""Text corpora as train/validation/test splits for the three study tasks.

A ``source`` is one of

* a bundled corpus name: ``shakespeare``, ``debian-descriptions``, ``rotten-tomatoes``
  (xz snapshots in ``data/corpora``; see ``data/README.md``);
* a local file (``.json``, ``.jsonl``, ``.csv``, ``.parquet``, ``.txt``, optionally
  ``.gz``/``.xz``/``.bz2``/``.zst`` compressed) or a directory of such files, where files
  whose names start with ``train``/``validation``/``test`` (also ``valid``, ``val``,
  ``dev``) become those splits; ``.txt`` files give one record per blank-line-separated
  paragraph in a column ``text``;
* a directory written by ``DatasetDict.save_to_disk`` (or ``Dataset.save_to_disk``: one train
  split), read with ``datasets.load_from_disk``; its splits are taken as a hub dataset's are;
* a Hugging Face hub dataset name such as ``roneneldan/TinyStories`` or ``stanfordnlp/imdb``.

Splits the source provides are used as they are; missing validation/test splits are carved
out of train deterministically from ``seed``.  Every failure raises :class:`DataError`.
"""

from __future__ import annotations

import json
import lzma
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError

REPO_DATA = Path(__file__).resolve().parents[3] / "data" / "corpora"
SPLITS = ("train", "validation", "test")
Splits = dict[str, list]

BUNDLED_FILES = {
    "shakespeare": "shakespeare.txt.xz",
    "debian-descriptions": "debian_descriptions.jsonl.xz",
    "rotten-tomatoes": "rotten_tomatoes.jsonl.xz",
}
WORK_MARKER = "<|endofwork|>"
SHAKESPEARE_BLOCK_CHARS = 2000

_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
_COMPRESSION_SUFFIXES = (".gz", ".xz", ".bz2", ".zst")
_SPLIT_PREFIX = re.compile(r"^(train|training|validation|valid|val|dev|test)(?![a-z])")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass
class _Loaded:
    """Records of one source: ``tables`` maps split names to lists of dicts or Datasets."""

    origin: str
    tables: dict[str, Any]


# --------------------------------------------------------------------------- public API


def corpora_dir() -> Path:
    """Directory of the bundled snapshots (``$MOELAB_CORPORA`` overrides the repo copy)."""
    return Path(os.environ.get("MOELAB_CORPORA") or REPO_DATA)


def lm_splits(
    source: str,
    *,
    text_column: str = "text",
    max_records: int | None = None,
    seed: int = 0,
    val_frac: float = 0.05,
    test_frac: float = 0.05,
) -> dict[str, list[str]]:
    """Documents (strings) for language modelling, per split."""
    loaded = _load(source)
    _require_columns(loaded, {"text_column": text_column})
    plan = _plan_splits(loaded, seed, val_frac, test_frac, max_records)
    splits = {
        name: [t.strip() for t in _column(table, idx, text_column) if _is_text(t)]
        for name, (table, idx) in plan.items()
    }
    return _check_filled(splits, loaded.origin)


def summarization_splits(
    source: str,
    *,
    document_column: str = "document",
    summary_column: str = "summary",
    max_records: int | None = None,
    seed: int = 0,
    val_frac: float = 0.05,
    test_frac: float = 0.05,
) -> dict[str, list[tuple[str, str]]]:
    """(document, summary) pairs per split."""
    loaded = _load(source)
    _require_columns(loaded, {"document_column": document_column, "summary_column": summary_column})
    plan = _plan_splits(loaded, seed, val_frac, test_frac, max_records)
    splits = {}
    for name, (table, idx) in plan.items():
        pairs = zip(_column(table, idx, document_column), _column(table, idx, summary_column))
        splits[name] = [(d.strip(), s.strip()) for d, s in pairs if _is_text(d) and _is_text(s)]
    return _check_filled(splits, loaded.origin)


def classification_splits(
    source: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    max_records: int | None = None,
    seed: int = 0,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """(text, label_id) pairs per split, and the sorted label names the ids index."""
    loaded = _load(source)
    _require_columns(loaded, {"text_column": text_column, "label_column": label_column})
    plan = _plan_splits(loaded, seed, val_frac, test_frac, max_records)
    raw = {}
    for name, (table, idx) in plan.items():
        pairs = zip(_column(table, idx, text_column), _label_values(table, idx, label_column))
        raw[name] = [(t.strip(), y) for t, y in pairs if _is_text(t) and y is not None]
    values = sorted({y for pairs in raw.values() for _, y in pairs}, key=_label_sort_key)
    ids = {value: i for i, value in enumerate(values)}
    splits = {name: [(t, ids[y]) for t, y in pairs] for name, pairs in raw.items()}
    return _check_filled(splits, loaded.origin), [str(v) for v in values]


# --------------------------------------------------------------------------- loading


HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")  # owner/name on the HF hub


def check_source(key: str, source) -> None:
    """Refuse, in one ConfigError line naming `key`, a data source the loader could not even start on:
    not a bundled corpus, not an existing data file (of a supported type) or directory, and not
    shaped like a hub dataset name. Cheap and without reading the data: the params check runs it
    before any stage (and so before DVC removes any prepared data)."""
    from ..errors import ConfigError, did_you_mean

    if not isinstance(source, str) or not source.strip():
        raise ConfigError(
            f"params.yaml: {key} = {source!r} is not allowed; allowed: a corpus name, path or hub dataset"
        )
    if source.strip().lower().replace("_", "-") in BUNDLED_FILES:
        return
    path = Path(source).expanduser()
    supported = ", ".join(sorted({*_BUILDERS, *(b + c for b in _BUILDERS for c in _COMPRESSION_SUFFIXES)}))
    if path.is_dir() or (path.is_file() and _builder_for(path) is not None):
        return
    if path.exists():
        problem = f"{path} is not a data file of a supported type ({supported}) or a directory of them"
    elif _looks_like_path(source):
        problem = f"{path} does not exist"
    elif HUB_NAME.match(source):
        return  # a hub dataset: reachable or cached is known only when prepare loads it
    else:
        problem = "neither a bundled corpus, an existing file or directory, nor a hub dataset name (owner/name)"
    raise ConfigError(
        f"params.yaml: {key} = {source!r} is not allowed{did_you_mean(source, BUNDLED_FILES)}: {problem}; "
        f"allowed: a bundled corpus ({', '.join(BUNDLED_FILES)}), a local file or directory ({supported}), "
        "or a Hugging Face dataset name such as roneneldan/TinyStories"
    )


def _load(source: str) -> _Loaded:
    """Dispatch a source string to the bundled, local or hub loader."""
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"data.source must be a corpus name, path or hub dataset, got {source!r}")
    bundled = source.strip().lower().replace("_", "-")
    if bundled in BUNDLED_FILES:
        return _load_bundled(bundled)
    path = Path(source).expanduser()
    if _is_saved_dataset(path):
        return _load_saved(path)
    if path.exists():
        return _load_local(path)
    if _looks_like_path(source):
        raise DataError(
            f"data file {source} not found; check data.source (bundled corpora: {', '.join(BUNDLED_FILES)})"
        )
    return _load_hub(source)


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or "\\" in source or _builder_for(Path(source)) is not None


def _load_bundled(name: str) -> _Loaded:
    path = corpora_dir() / BUNDLED_FILES[name]
    if not path.is_file():
        raise DataError(
            f"bundled corpus file {path} not found; set MOELAB_CORPORA to the "
            "directory holding it or run `python scripts/snapshot_corpora.py`"
        )
    fix = "restore it with `git checkout -- data/corpora` or re-run `python scripts/snapshot_corpora.py`"
    try:
        with lzma.open(path, "rt", encoding="utf-8") as handle:
            text = handle.read()
    except (lzma.LZMAError, EOFError) as err:
        raise DataError(f"bundled corpus file {path} is truncated or not xz-compressed ({err}): {fix}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"bundled corpus file {path} is not valid UTF-8 (byte {err.start}): {fix}") from None
    if name == "shakespeare":
        records = _shakespeare_blocks(text)
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                raise DataError(f"bundled corpus file {path} line {number} is not valid JSON ({err}): {fix}") from None
            if not isinstance(record, dict):
                raise DataError(f"bundled corpus file {path} line {number} is not a JSON object: {fix}")
            records.append(record)
    return _Loaded(f"bundled corpus '{name}'", {"train": records})


def _shakespeare_blocks(text: str) -> list[dict[str, str]]:
    """Cut each work into runs of whole paragraphs of about SHAKESPEARE_BLOCK_CHARS.

    Blocks, not lines, are what gets assigned to splits, so held-out text is contiguous.
    """
    records = []
    for work in text.split(f"\n{WORK_MARKER}\n"):
        title = work.strip().split("\n", 1)[0]
        blocks: list[str] = []
        current: list[str] = []
        for paragraph in work.strip().split("\n\n"):
            current.append(paragraph)
            if sum(len(p) for p in current) >= SHAKESPEARE_BLOCK_CHARS:
                blocks.append("\n\n".join(current))
                current = []
        if current:
            tail = "\n\n".join(current)
            if blocks and len(tail) < SHAKESPEARE_BLOCK_CHARS // 2:
                blocks[-1] += "\n\n" + tail
            else:
                blocks.append(tail)
        records.extend({"text": block, "work": title} for block in blocks)
    return records


def _builder_for(path: Path) -> str | None:
    """The `datasets` builder for a data file name, or None if it is not a data file."""
    name = path.name.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    return _BUILDERS.get(Path(name).suffix)


def _load_local(path: Path) -> _Loaded:
    if path.is_dir():
        files = _directory_files(path)
    elif _builder_for(path) is None:
        raise DataError(f"data file {path} has an unsupported type; use one of {', '.join(sorted(_BUILDERS))}")
    else:
        files = {"train": [path]}
    for split_files in files.values():
        for file in split_files:
            if _is_blank(file):
                raise DataError(f"data file {file} is empty; point data.source at a file with records")
            _check_json_lines(file)
    builders = {_builder_for(f) for split_files in files.values() for f in split_files}
    if len(builders) > 1:
        raise DataError(
            f"data directory {path} mixes file types ({', '.join(sorted(builders))}); keep one format per directory"
        )
    origin = f"data {'directory' if path.is_dir() else 'file'} {path}"
    return _Loaded(origin, _read_with_datasets(builders.pop(), files, origin))


def _is_blank(file: Path) -> bool:
    """True for a zero-byte file or a small uncompressed one holding only whitespace."""
    size = file.stat().st_size
    small_plain = size < 4096 and not file.name.lower().endswith(_COMPRESSION_SUFFIXES)
    return size == 0 or (small_plain and not file.read_bytes().strip())


def _check_json_lines(file: Path) -> None:
    """A .jsonl file holds one JSON object per non-blank line: a bad line is named by its number
    (`datasets` would only say that the file failed to parse). Zstandard files are left to `datasets`."""
    import bz2
    import gzip

    name = file.name.lower()
    compression = next((s for s in _COMPRESSION_SUFFIXES if name.endswith(s)), "")
    if not name.removesuffix(compression).endswith(".jsonl") or compression == ".zst":
        return
    open_ = {"": open, ".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}[compression]
    broken = (OSError, EOFError, lzma.LZMAError) if compression else ()
    try:
        with open_(file, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                _check_json_line(file, number, raw)
    except broken as err:
        raise DataError(
            f"data file {file} is truncated or not {compression[1:]}-compressed ({err}): "
            "re-create or re-download it, or point data.source at another file"
        ) from None


def _check_json_line(file: Path, number: int, raw: bytes) -> None:
    fix = "fix or remove that line, or point data.source at another file"
    if not raw.strip():
        return
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"data file {file} line {number} is not valid UTF-8 (byte {err.start}): {fix}") from None
    except ValueError as err:
        raise DataError(f"data file {file} line {number} is not valid JSON ({err}): {fix}") from None
    if not isinstance(record, dict):
        raise DataError(f"data file {file} line {number} is not a JSON object: {fix}")


def _directory_files(directory: Path) -> dict[str, list[Path]]:
    """Split name -> files; without split-named files every data file is 'train'."""
    data_files = sorted(f for f in directory.iterdir() if f.is_file() and _builder_for(f) is not None)
    if not data_files:
        raise DataError(
            f"data directory {directory} holds no .json/.jsonl/.csv/.parquet/.txt "
            "files; point data.source at a directory or file with records"
        )
    named: dict[str, list[Path]] = {}
    for file in data_files:
        match = _SPLIT_PREFIX.match(file.name.lower())
        if match:
            named.setdefault(_SPLIT_ALIASES[match.group(1)], []).append(file)
    return named or {"train": data_files}


def _read_with_datasets(builder: str, files: dict[str, list[Path]], origin: str) -> dict:
    datasets = _quiet_datasets()

    options = {"sample_by": "paragraph"} if builder == "text" else {}
    data_files = {split: [str(f) for f in paths] for split, paths in files.items()}
    try:
        loaded = datasets.load_dataset(builder, data_files=data_files, **options)
    except Exception as exc:
        raise DataError(
            f"could not read {origin} as {builder}: {_first_line(_root_cause(exc))}; check the file format"
        ) from exc
    return dict(loaded)


def _quiet_datasets():
    """No progress bars or info logs from `datasets` on stderr: an error is then its one `moelab` line."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors are raised too: they become ours
    return datasets


def _load_hub(name: str) -> _Loaded:
    datasets = _quiet_datasets()

    try:
        loaded = datasets.load_dataset(name)
    except Exception as exc:
        if _is_offline_error(exc):
            raise DataError(
                f"cannot reach Hugging Face hub for '{name}' (offline?): download it once with "
                f"network (`python -c \"import datasets; datasets.load_dataset('{name}')\"`) so "
                "it is in the HF cache, set HF_DATASETS_OFFLINE=1, or point data.source at a "
                "local copy (json/jsonl/csv/parquet, or a save_to_disk directory)"
            ) from exc
        raise DataError(
            f"could not load Hugging Face dataset '{name}' ({_first_line(exc)}); "
            "check the name or point data.source at a local copy "
            "(json/jsonl/csv/parquet, or a save_to_disk directory)"
        ) from exc
    return _dataset_splits(loaded, f"Hugging Face dataset '{name}'", "point data.source at a local copy instead")


def _is_saved_dataset(path: Path) -> bool:
    """A directory `save_to_disk` wrote: dataset_dict.json (a DatasetDict) or state.json (one Dataset)."""
    return path.is_dir() and any((path / marker).is_file() for marker in ("dataset_dict.json", "state.json"))


def _load_saved(path: Path) -> _Loaded:
    """A save_to_disk directory (e.g. a hub dataset saved once with network, or a test's stand-in), read with
    `datasets.load_from_disk` (load_dataset refuses these); its splits are then taken as a hub dataset's."""
    datasets = _quiet_datasets()
    origin = f"saved dataset {path}"
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(
            f"could not read {origin} with datasets.load_from_disk ({_first_line(_root_cause(exc))}); "
            "re-save it with DatasetDict.save_to_disk or point data.source at json/jsonl/csv/parquet files"
        ) from exc
    if isinstance(loaded, datasets.Dataset):  # Dataset.save_to_disk: one table, validation/test carved from it
        loaded = {"train": loaded}
    return _dataset_splits(loaded, origin, "save the DatasetDict with a train split")


def _dataset_splits(loaded, origin: str, fix: str) -> _Loaded:
    """The train/validation/test tables of a `datasets` DatasetDict (split aliases such as `valid` mapped)."""
    tables = {_SPLIT_ALIASES[split]: table for split, table in loaded.items() if split in _SPLIT_ALIASES}
    if "train" not in tables:
        raise DataError(f"{origin} has no train split (found: {', '.join(loaded)}); {fix}")
    return _Loaded(origin, tables)


def _is_offline_error(exc: BaseException) -> bool:
    if any(os.environ.get(var, "").lower() in ("1", "true", "yes", "on") for var in _OFFLINE_ENV):
        return True
    while exc is not None:
        names = {cls.__name__ for cls in type(exc).__mro__}
        if names & {"ConnectionError", "TimeoutError", "OfflineModeIsEnabled", "LocalEntryNotFoundError"}:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain: `datasets` wraps a parse error (which says the line and
    what is wrong) in a DatasetGenerationError that says neither."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------- columns & splits


def _column_names(table: Any) -> list[str]:
    if hasattr(table, "column_names"):
        return list(table.column_names)
    return list(table[0]) if table else []


def _require_columns(loaded: _Loaded, params: dict[str, str]) -> None:
    """Raise DataError naming missing columns, the columns found and the params to set."""
    for split, table in loaded.tables.items():
        if len(table) == 0:
            raise DataError(
                f"{loaded.origin} has no records in its {split} split; point data.source at a non-empty dataset"
            )
        found = _column_names(table)
        missing = {key: col for key, col in params.items() if col not in found}
        if missing:
            raise DataError(
                f"{loaded.origin} has no column {' / '.join(map(repr, missing.values()))} "
                f"(found: {', '.join(found)}); set "
                f"{' / '.join('data.' + key for key in missing)} to one of the found columns"
            )


def _plan_splits(
    loaded: _Loaded, seed: int, val_frac: float, test_frac: float, max_records: int | None
) -> dict[str, tuple[Any, list[int]]]:
    """Split name -> (table, row indices): given splits shuffled, missing ones carved from train."""
    if max_records is not None and (not isinstance(max_records, int) or max_records < 1):
        raise DataError(f"data.max_records must be a positive integer or null, got {max_records!r}")
    tables = loaded.tables
    train = tables["train"]
    order = _permutation(len(train), seed)
    fractions = {"test": test_frac, "validation": val_frac}
    plan, start = {}, 0
    for split in ("test", "validation"):
        if split in tables:
            plan[split] = (tables[split], _permutation(len(tables[split]), seed))
        else:
            size = _carve_size(len(train), fractions[split], split, loaded.origin)
            plan[split] = (train, order[start : start + size])
            start += size
    if start >= len(train):
        raise DataError(
            f"{loaded.origin} has only {len(train)} record(s), too few to carve "
            "validation and test splits; add records or provide split files"
        )
    plan["train"] = (train, order[start:])
    return {split: (plan[split][0], plan[split][1][:max_records]) for split in SPLITS}


def _carve_size(n: int, frac: float, split: str, origin: str) -> int:
    key = "val_frac" if split == "validation" else "test_frac"
    if not 0 < frac < 1:
        raise DataError(f"{origin} has no {split} split, so data.{key} must be between 0 and 1 (got {frac!r})")
    return max(1, round(n * frac))


def _permutation(n: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def _column(table: Any, indices: list[int], column: str) -> list:
    if hasattr(table, "select"):
        return list(table.select(indices)[column])
    return [table[i][column] for i in indices]


def _label_values(table: Any, indices: list[int], column: str) -> list:
    """Raw labels; class-label ids are turned into their names, negative ids into None."""
    values = _column(table, indices, column)
    features = getattr(table, "features", None) or {}
    names = getattr(features.get(column), "names", None)
    if names:
        return [names[v] if isinstance(v, int) and 0 <= v < len(names) else None for v in values]
    return values


def _label_sort_key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _check_filled(splits: dict[str, list], origin: str) -> dict[str, list]:
    for split, records in splits.items():
        if not records:
            raise DataError(
                f"{origin} gives no usable records for the {split} split "
                "(empty or missing values); check the data and column settings"
            )
    return splits
