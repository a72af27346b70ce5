"""The code each pipeline stage runs, and `moelab code`, which writes one hash per stage kind.

The stages of dvc.yaml depend on fingerprints/code/<kind>.json instead of listing source files, so
editing report or benchmark code re-runs no training, and DVC's lock file holds one code entry per
stage instead of one per source path (DVC re-reads and rewrites the whole lock after every stage it
runs, so its size is paid once per stage).
tests/test_pipeline.py checks every list against the modules the real commands import. A file listed
twice (a kind's parts overlap) is hashed once.
"""

from __future__ import annotations

from pathlib import Path

from .provenance import COMMAND, PARAMS, PREPARED, SELECT, TRAIN_CODE, code_files, code_hash

BENCH = ("bench/__init__.py", "bench/cli.py", "bench/models.py", "bench/layer.py")  # not single.py (one variant)
EVALUATE = (*COMMAND, *PARAMS, *PREPARED, *SELECT, "checkpoint.py", "evaluate.py", "flops.py")

# stage kind: package-relative paths of the code its command imports
STAGE_CODE = {
    "check": (*COMMAND, *PARAMS, "check.py"),
    "prepare": (*COMMAND, *PARAMS, *PREPARED, "study.py", "locking.py"),
    "references": (*COMMAND, *PARAMS, *PREPARED, "study.py", "reference.py", "ngram.py"),
    "train": TRAIN_CODE,  # train and pretrain: a checkpoint records this hash
    "evaluate": EVALUATE,
    "exp": (*TRAIN_CODE, *EVALUATE, "exp.py"),
    "bench": (*COMMAND, *PARAMS, *PREPARED, "study.py", "checkpoint.py", "evaluate.py", "flops.py", *BENCH),
    "report": (*COMMAND, *PARAMS, "study.py", "report", "stats.py"),
    "scale": (*TRAIN_CODE, *EVALUATE, "scale.py", "scale_report.py"),
}


def add_arguments(p) -> None:
    p.add_argument("--out", default="fingerprints/code", help="directory: one <kind>.json per stage kind")


def run(args) -> None:
    import json

    from .io import atomic_write_text
    from .provenance import PACKAGE

    out = Path(args.out)
    for stale in out.glob("*.json"):  # a kind no stage has any more (none when out does not exist yet)
        if stale.stem not in STAGE_CODE:
            stale.unlink()
    for kind, parts in STAGE_CODE.items():
        files = [str(f.relative_to(PACKAGE)) for f in code_files(parts)]
        text = json.dumps({"code": code_hash(parts), "files": files}, indent=2) + "\n"
        path = out / f"{kind}.json"
        if not path.exists() or path.read_text() != text:  # unchanged code: the file is not touched
            atomic_write_text(path, text)
        print(f"code of {kind}: {code_hash(parts)} ({len(files)} files)")
