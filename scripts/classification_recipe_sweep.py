"""Does a change of recipe that params.yaml already offers close the classifier's gap to bag-of-words?

The study's classifiers sat about 3 points below bag-of-words on test at a 2,048-token BPE (README
"Classification"). This script tries the levers params.yaml has without new code - the vocabulary size,
dropout, weight decay, learning rate with longer training, batch size, depth, and a second seed to show
the noise - each as ONE change to the e8 base's recipe. Each trains that base from scratch (`moelab
pretrain --model e8`, one torch thread, --jobs at a time) in a scratch directory, and is scored on the
validation split only: best.pt (picked by validation loss, as every study run is) and the last checkpoint.
A recipe that changes `classification.data` (the vocabulary) first prepares its own data and scores
bag-of-words on it (`moelab prepare`, `moelab references`), so each row's bar is on the same tokens. Test
accuracy of a model is not computed, so nothing here can be tuned on it. A base stands for its variants:
the study's e8 fine-tunes score within a point of their base on validation.

    dvc repro study/dvc.yaml:prepare@classification          # the prepared data it reads
    python scripts/classification_recipe_sweep.py              # the 15 recipes: about 8 minutes on 2 cores
    python scripts/classification_recipe_sweep.py --only baseline vocab-2048 --json sweep.json
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import yaml
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
TASK, SIZE = "classification", "e8"

VOCAB = f"{TASK}.data.vocab_size"
# one change each, as dotted keys of params.yaml (a vocabulary also with the second seed: the rule that
# chose the study's came from these two seeds per size, README "Classification's vocabulary")
RECIPES: dict[str, dict] = {
    "baseline": {},
    "baseline-seed1": {"base.seed": 1},
    **{
        f"vocab-{size}{suffix}": {VOCAB: size, **seed}
        for size in (2048, 4096, 16384)
        for suffix, seed in (("", {}), ("-seed1", {"base.seed": 1}))
    },
    "dropout-0.1": {f"{TASK}.models.{SIZE}.dropout": 0.1},
    "dropout-0.2": {f"{TASK}.models.{SIZE}.dropout": 0.2},
    "weight-decay-0.5": {f"{TASK}.pretrain.weight_decay": 0.5},
    "lr-0.001-2000-steps": {f"{TASK}.pretrain.lr": 0.001, f"{TASK}.pretrain.steps": 2000},
    "lr-0.004": {f"{TASK}.pretrain.lr": 0.004},
    "batch-64": {f"{TASK}.pretrain.batch_size": 64},
    "one-layer": {f"{TASK}.models.{SIZE}.n_layers": 1},
}


def with_changes(params: dict, changes: dict) -> dict:
    """A deep copy of the raw params with each dotted key set (its parents must exist; a leaf may be new, e.g.
    a model preset's default `dropout`: moelab validates the file, so a misspelt leaf fails there)."""
    out = copy.deepcopy(params)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            node = node[key]
        node[leaf] = value
    return out


def short_run(params: dict, steps: int) -> dict:
    """The same recipe cut to `steps` (a smoke run): validated and checkpointed every steps // 2."""
    every = max(steps // 2, 1)
    return with_changes(
        params,
        {
            f"{TASK}.pretrain.steps": steps,
            f"{TASK}.pretrain.warmup_steps": min(params[TASK]["pretrain"]["warmup_steps"], every),
            f"{TASK}.pretrain.eval_every": every,
            f"{TASK}.pretrain.checkpoint_every": every,
        },
    )


def train(workdir: Path, data_dir: Path) -> float:
    """Train the e8 base of workdir/params.yaml into workdir/models (one torch thread); its wall seconds."""
    arguments = f"pretrain --quiet --task {TASK} --model {SIZE} --params params.yaml".split()
    arguments += ["--data-dir", str(data_dir)]  # a path may hold spaces
    start = time.perf_counter()
    moelab(arguments, workdir, workdir.name)
    return time.perf_counter() - start


def validation_scores(workdir: Path, data_dir: Path) -> dict:
    """Validation accuracy and loss of the trained base: best.pt and the last checkpoint."""
    import torch

    from moelab.evaluate import load_trained
    from moelab.resolve import load_params, resolve_base
    from moelab.study import base_paths
    from moelab.tasks import build_task

    run = resolve_base(load_params(workdir / "params.yaml"), TASK, SIZE)
    task = build_task(run, data_dir)
    checkpoints = workdir / base_paths(TASK, SIZE).checkpoints
    scores = {}
    for which, name in (("best.pt", "best"), ("latest.pt", "last")):
        with torch.no_grad():
            split = task.evaluate_split(load_trained(run, task, checkpoints, which), "validation", False)
        scores |= {f"{name}_val_accuracy": split["accuracy"], f"{name}_val_loss": split["loss"]}
    return scores


def moelab(arguments: list[str], cwd: Path, what: str) -> None:
    """Run `python -m moelab ARGUMENTS` on one torch thread; a failure stops the sweep naming `what`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "moelab", *arguments]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{what}: `moelab {' '.join(arguments)}` failed:\n{done.stdout}{done.stderr}")


def own_data(workdir: Path, params_file: Path) -> None:
    """Prepare the data of `params_file` into workdir/data and score its references (bag-of-words among
    them) into workdir/references.json."""
    params = ["--task", TASK, "--params", str(params_file)]
    moelab(["prepare", *params, "--out", "data"], workdir, workdir.name)
    moelab(["references", *params, "--data-dir", "data", "--out", "references.json"], workdir, workdir.name)


def data_of(recipe: Path, changed: dict, params: dict, data_dir: Path, bar: float, scratch: Path) -> tuple[Path, float]:
    """The data the recipe (its params `changed`, written to `recipe`/params.yaml) trains on and bag-of-words'
    validation accuracy there: the given data unless the recipe changes `classification.data`; then data of
    its own, shared by recipes with the same data params (a vocabulary and its second seed prepare once)."""
    from moelab.io import read_json

    data_params = changed[TASK]["data"]
    if data_params == params[TASK]["data"]:
        return data_dir, bar
    workdir = scratch / "data" / hashlib.sha256(json.dumps(data_params, sort_keys=True).encode()).hexdigest()[:12]
    if not (workdir / "references.json").exists():
        workdir.mkdir(parents=True, exist_ok=True)
        own_data(workdir, recipe / "params.yaml")
    return workdir / "data", read_json(workdir / "references.json")["bow-logreg"]["val_accuracy"]


def sweep(recipes: list[str], params: dict, data_dir: Path, bar: float, scratch: Path, jobs: int) -> dict[str, dict]:
    data = {}
    for name in tqdm(recipes, desc="data prepared", unit="recipe"):
        changed = with_changes(params, RECIPES[name])
        (scratch / name).mkdir(parents=True, exist_ok=True)
        (scratch / name / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
        data[name] = data_of(scratch / name, changed, params, data_dir, bar, scratch)
    walls = {}
    with ThreadPoolExecutor(jobs) as pool:  # each a process of its own, one torch thread
        futures = {pool.submit(train, scratch / name, data[name][0]): name for name in recipes}
        for future in tqdm(as_completed(futures), total=len(futures), desc="bases trained", unit="base"):
            walls[futures[future]] = future.result()
    rows = {}
    for name in recipes:
        data_dir, bar = data[name]
        rows[name] = {"wall_s": walls[name], "bow_val_accuracy": bar, **validation_scores(scratch / name, data_dir)}
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "prepared" / TASK))
    parser.add_argument("--only", nargs="+", choices=list(RECIPES), help="these recipes (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="bases trained at a time, one thread each")
    parser.add_argument("--steps", type=int, help="cut every recipe to this many steps (a smoke run)")
    parser.add_argument("--json", help="also write every row here")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir).resolve()
    if not (data_dir / "manifest.json").exists():
        parser.error(f"--data-dir {data_dir}: no prepared data; run `dvc repro study/dvc.yaml:prepare@{TASK}`")
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: at least 1")
    sys.path.insert(0, str(ROOT / "src"))
    params = yaml.safe_load(Path(args.params).read_text())
    if args.steps:
        params = short_run(params, args.steps)
    recipes = args.only or list(RECIPES)
    from moelab.io import read_json
    from moelab.study import references_path

    bar = read_json(ROOT / references_path(TASK), "run `dvc repro` or `dvc pull`")["bow-logreg"]["val_accuracy"]
    with tempfile.TemporaryDirectory(prefix="moelab-sweep-") as scratch:
        rows = sweep(recipes, params, data_dir, bar, Path(scratch), args.jobs)
    print(f"validation accuracy of the {SIZE} base, and of bag-of-words on the same texts and tokens")
    print(f"{'recipe':<22}{'best.pt':>9}{'last':>9}{'best val loss':>15}{'bag-of-words':>14}{'wall s':>8}")
    for name, row in rows.items():
        print(
            f"{name:<22}{row['best_val_accuracy']:>9.4f}{row['last_val_accuracy']:>9.4f}"
            f"{row['best_val_loss']:>15.4f}{row['bow_val_accuracy']:>14.4f}{row['wall_s']:>8.1f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
