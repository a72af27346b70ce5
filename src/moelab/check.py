"""`moelab check`: validate params.yaml (every run of the study is resolved, every data source checked);
--list shows every registered component and MoE option, read from the registries.

--out writes a marker file once params.yaml is valid. Its content never changes: the pipeline's first
stage writes it and every other stage depends on it, so DVC runs the check before it removes any
stage's outputs or pastes a params value into a shell command, and no stage re-runs because of it."""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--params", default="params.yaml")
    p.add_argument(
        "--list",
        action="store_true",
        help="list tasks, routers, normalisers, selection rules, "
        "balancing rules, capacity policies, expert types, MoE options",
    )
    p.add_argument("--out", help="write this marker file (always the same content) once params.yaml is valid")


def run(args) -> None:
    from .errors import ConfigError
    from .resolve import load_params

    try:
        params = load_params(args.params)
    except ConfigError:
        if args.out:  # the pipeline's check: undo what DVC did with the refused value before this stage ran
            remove_stray_directories()
            restore_recorded_outputs()
        raise
    print(
        f"params OK: study {params.tasks} x {params.routers} x {params.gates} x {params.models} x seeds {params.seeds}"
    )
    if args.out:
        from .io import write_json

        write_json(args.out, {"params.yaml": "valid"})
    if args.list:
        print(registry_listing())


OUTPUT_ROOTS = ("data/prepared", "models", "models/base", "metrics/study", "metrics/base")


def remove_stray_directories(roots: tuple[str, ...] = OUTPUT_ROOTS) -> list[Path]:
    """Remove the empty directories named like no study name can be, at the two levels below the roots the
    study's outputs live in (<root>/<task> and <root>/<task>/<variant>). `dvc exp run` checks the new
    pipeline's outputs out before it runs any stage, creating the parent directories of outputs whose path
    holds a refused study list value (`-S 'tasks=[\"$(touch x)/y\"]'` -> data/prepared/$(touch x)/);
    moelab never makes such a name (config.schema SAFE_NAME), and only empty directory trees are removed,
    so nothing else is touched."""
    import re

    from .config.schema import SAFE_NAME

    removed = []
    for root in map(Path, roots):
        levels = [root, *(d for d in sorted(root.iterdir()) if d.is_dir())] if root.is_dir() else []
        for parent in levels:
            for entry in sorted(parent.iterdir()) if parent.is_dir() else []:
                named_by_dvc = entry.is_dir() and not entry.is_symlink() and not re.match(SAFE_NAME, entry.name)
                if named_by_dvc and _empty_tree(entry):
                    for directory in sorted((d for d in entry.rglob("*") if d.is_dir()), reverse=True):
                        directory.rmdir()
                    entry.rmdir()
                    removed.append(entry)
    return removed


LOCK_FILES = ("dvc.lock", "study/dvc.lock", "fingerprints/dvc.lock", "scale/dvc.lock", "claims/dvc.lock")


def restore_recorded_outputs(locks: tuple[str, ...] = LOCK_FILES, cache: Path = Path(".dvc/cache/files/md5")) -> list:
    """Put back, from DVC's cache, every output the lock files record that is missing from the workspace.

    `dvc exp run -S <list>=<value>` checks the experiment's pipeline out before it runs any stage: the
    stages a changed study list no longer generates lose their outputs from the workspace ("unused
    links"; they stay in the cache). When the value is then refused here, the experiment never runs,
    so the workspace goes back to what the lock files (still the baseline's) record. A no-op after a
    plain `dvc repro`, which removes nothing before a stage runs."""
    import json
    import shutil

    import yaml

    restored = []
    for lock in map(Path, locks):
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else {}
        base = lock.parent.parent if lock.parent.name in ("study", "fingerprints", "scale", "claims") else lock.parent
        for out in (o for stage in stages.values() for o in stage.get("outs", [])):
            path, md5 = base / out["path"], out.get("md5", "")
            if path.exists() or not md5:
                continue
            cached = cache / md5[:2] / md5[2:]
            if not cached.is_file():  # an output DVC does not cache (cache: false): nothing to put back
                continue
            files = [(e["relpath"], e["md5"]) for e in json.loads(cached.read_text())] if md5.endswith(".dir") else []
            for relpath, file_md5 in files or [("", md5)]:
                target = path / relpath if relpath else path
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(cache / file_md5[:2] / file_md5[2:], target)
            restored.append(path)
    return restored


def _empty_tree(directory: Path) -> bool:
    """Only directories below, no file, no link."""
    return all(p.is_dir() and not p.is_symlink() for p in directory.rglob("*"))


def registry_listing() -> str:
    from .moe.config import REGISTRIES, all_params
    from .tasks import TASKS

    lines = [f"tasks: {', '.join(TASKS.names())}"]
    lines += [f"{registry.kind}: {', '.join(registry.names())}" for registry in REGISTRIES]
    lines.append("moe options:")
    lines += [f"  {key} (default {param.default!r}): {param.help}" for key, param in all_params().items()]
    return "\n".join(lines)
