"""What the pipeline costs beyond its own compute: builds a throwaway lab (git + DVC) from the working
tree or from any git revision, then times, with a `moelab` on PATH that records each command's
start-up, imports and work (tests/labrepo.py install_shim):

  1. a full `dvc repro` (the study), split into process start-up, imports, train, evaluate,
     benchmark, the other commands, and DVC's own time (wall minus every command's process time);
  2. a no-op `dvc repro` right after it (repeated);
  3. `dvc exp run -S router=attention` after the study, against its train + evaluate time.

    python scripts/bench_pipeline.py --json bench.json    # this tree, the default study (the real numbers)
    python scripts/bench_pipeline.py --shape study        # every cell of the study, each tiny (minutes)
    python scripts/bench_pipeline.py --rev 6c99329 --rev HEAD --shape tasks   # before / after
    python scripts/bench_pipeline.py --in-repo study     # this repository's own `dvc repro` + no-op repros
    python scripts/bench_pipeline.py --in-repo exp       # after committing the study: the experiment, then
                                                         # the workspace is restored (git checkout, dvc checkout)
    python scripts/bench_pipeline.py --set lm.train.steps=100 --set summarization.train.steps=100
                                                         # another recipe, priced before anyone adopts it

Shapes: default (params.yaml as it is), study (every cell, tiny), tasks (one tiny cell per task),
tiny (one LM cell). Timings are only comparable on a quiet machine: the script prints the load
average before and after, and the CPU time (user + sys of every process), which load moves less.
Targets (the issue's): no-op repro <= 3 s; the experiment <= 1.3 x its train + evaluate + 5 s;
the study <= 1.3 x the sum of its cells' train + evaluate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from labrepo import install_shim, lab_env, make_lab, tiny, tiny_study, tiny_tasks  # noqa: E402

SHAPES = {"default": lambda params: params, "study": tiny_study, "tasks": tiny_tasks, "tiny": tiny}


def parse_setting(text: str) -> tuple[list[str], object]:
    """`a.b.c=value` -> (["a", "b", "c"], the value as YAML reads it), as `dvc exp run -S` takes it."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected KEY=VALUE, e.g. lm.train.steps=100")
    return key.split("."), yaml.safe_load(value)


def with_settings(shape, settings: list[tuple[list[str], object]]):
    """The shape, then each setting on an existing key (a typo fails here, not an hour into the run)."""

    def shaped(params: dict) -> dict:
        params = shape(params)
        for path, value in settings:
            node, key = params, ".".join(path)
            for i, part in enumerate(path[:-1]):
                if not isinstance(node, dict) or part not in node:
                    sys.exit(f"--set {key}: params.yaml has no key {'.'.join(path[: i + 1])}")
                node = node[part]
            if not isinstance(node, dict):
                sys.exit(f"--set {key}: {'.'.join(path[:-1])} is a value, not a mapping")
            if path[-1] not in node:
                sys.exit(f"--set {key}: params.yaml has no such key (--set changes existing keys only)")
            node[path[-1]] = value
        return params

    return shaped


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Lab:
    """A lab whose commands run through the recording shim; `timed` returns (wall s, CPU s, records)."""

    def __init__(self, repo: Path, bin_dir: Path, log: Path):
        self.repo, self.log = repo, log
        install_shim(bin_dir)
        self.env = lab_env(repo, PATH=f"{bin_dir}:{os.environ['PATH']}", MOELAB_SHIM_LOG=str(log))

    def sh(self, cmd: str) -> str:
        proc = subprocess.run(cmd, shell=True, cwd=self.repo, env=self.env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{cmd} failed in {self.repo}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc.stdout + proc.stderr

    def timed(self, cmd: str) -> tuple[float, float, list[dict]]:
        self.log.write_text("")
        cpu, start = children_cpu(), time.perf_counter()
        self.sh(cmd)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in self.log.read_text().splitlines()]
        return wall, children_cpu() - cpu, records

    def measured(self, cmd: str) -> dict:
        """`cmd` timed: wall and CPU s, where they went, the training loops' own seconds, and the whole
        process time of the commands that trained or evaluated."""
        wall, cpu, records = self.timed(cmd)
        return {
            "wall": wall,
            "cpu": cpu,
            "parts": breakdown(wall, cpu, records),
            "commands": by_command(records),
            "runs": run_seconds(self.repo),
            "processes": sum(r["total_s"] for r in records if r["phases"]),
        }

    def noop_repros(self, repeats: int) -> list[tuple[float, float]]:
        return [self.timed("dvc repro")[:2] for _ in range(repeats)]


def source_tree(rev: str | None, into: Path) -> Path:
    """The working tree itself, or a checkout of `rev` (git archive) under `into`."""
    if rev is None:
        return ROOT
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_quietly(cmd: str, cwd: Path) -> str:
    return subprocess.run(cmd, shell=True, cwd=cwd, env=lab_env(cwd), check=True, capture_output=True, text=True).stdout


def breakdown(wall: float, cpu: float, records: list[dict]) -> dict[str, tuple[float, float]]:
    """(wall s, CPU s) of a repro by where they went (the commands run one after another). DVC's
    share is what is left of the wall (CPU) time once every command's own is taken away."""
    parts: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in records:
        kind = "benchmark" if r["argv"][0] == "bench" else "other commands"
        for name, key in (("process start", "startup"), ("imports", "import"), (kind, "run")):
            parts[name][0] += r[f"{key}_s"]
            parts[name][1] += r[f"{key}_cpu_s"]
        for phase, (seconds, cpu_s) in r["phases"].items():  # train / evaluate, out of the command's run time
            parts[phase][0] += seconds
            parts[phase][1] += cpu_s
            parts[kind][0] -= seconds
            parts[kind][1] -= cpu_s
    own_cpu = sum(r["startup_cpu_s"] + r["import_cpu_s"] + r["run_cpu_s"] for r in records)
    parts["DVC"] = [wall - sum(r["total_s"] for r in records), cpu - own_cpu]
    return {name: (seconds, cpu_s) for name, (seconds, cpu_s) in parts.items()}


def run_seconds(repo: Path) -> dict[str, float]:
    """The runs' own seconds, from the files each run writes (also those of the processes that ran seeds
    side by side, which the shim does not see): every training loop's wall_s (train/<run>.json of the
    study, the bases, the experiment) and every evaluation's (eval/<run>.meta.json)."""
    train = [*repo.glob("metrics/study/*/*/train/*.json"), *repo.glob("metrics/base/*/train/*.json")]
    train += list(repo.glob("metrics/exp/train/*.json"))
    evaluate = [*repo.glob("metrics/study/*/*/eval/*.meta.json"), *repo.glob("metrics/exp/eval/*.meta.json")]
    seconds = lambda files: sum(json.loads(f.read_text()).get("wall_s", 0.0) for f in files)  # noqa: E731
    return {"train": seconds(f for f in train if ".meta." not in f.name), "evaluate": seconds(evaluate)}


def by_command(records: list[dict]) -> dict[str, tuple[int, float]]:
    """{command: (how many ran, their total wall s)}: where a repro's processes went, stage kind by kind."""
    out: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for r in records:
        out[r["argv"][0]][0] += 1
        out[r["argv"][0]][1] += r["total_s"]
    return {name: (count, seconds) for name, (count, seconds) in out.items()}


EXPERIMENT = "dvc exp run -S router=attention"
WORK_COMMANDS = ("pretrain", "train", "evaluate")


def measure(rev: str | None, shape: str, work: Path, noop_repeats: int, settings: list | None = None) -> dict:
    label = (rev or "working tree") + "".join(f" {'.'.join(path)}={value}" for path, value in settings or [])
    shaped = with_settings(SHAPES[shape], settings or [])
    repo = make_lab(work / "lab", run_quietly, shaped, source_tree(rev, work / "source"))
    lab = Lab(repo, work / "bin", work / "commands.jsonl")
    print(f"\n== {label} ({shape}): lab {repo}", flush=True)
    study = lab.measured("dvc repro")
    lab.sh("git add -A && git commit -qm study")
    return {"label": label, "study": study, "noop": lab.noop_repros(noop_repeats), "exp": lab.measured(EXPERIMENT)}


def measure_in_repo(what: str, work: Path, noop_repeats: int) -> dict:
    """The same figures for this repository's own pipeline (the study a README number comes from):
    `study` runs `dvc repro` and the no-op repros here; `exp` runs the experiment, then puts the
    workspace back as committed."""
    lab = Lab(ROOT, work / "bin", work / "commands.jsonl")
    if what == "study":
        return {"label": "this repository", "study": lab.measured("dvc repro"), "noop": lab.noop_repros(noop_repeats)}
    exp = lab.measured(EXPERIMENT)
    lab.sh("git checkout -- . && dvc checkout -q")
    return {"label": "this repository", "exp": exp}


def report(m: dict) -> None:
    print(f"\n{m['label']}")
    if "study" in m:
        study = m["study"]
        runs = study["runs"]
        work = runs["train"] + runs["evaluate"]
        print(f"  study: {study['wall']:.1f} s wall, {study['cpu']:.1f} s CPU")
        print(
            f"  its runs (their own files): train {runs['train']:.1f} s + evaluate {runs['evaluate']:.1f} s "
            f"= {work:.1f} s; "
            f"wall / that = {study['wall'] / max(work, 1e-9):.2f}, CPU / that = {study['cpu'] / max(work, 1e-9):.2f} "
            "(target <= 1.3; runs of one stage go side by side, so their sum can exceed the wall)"
        )
        for name, (count, seconds) in sorted(study["commands"].items(), key=lambda kv: -kv[1][1]):
            print(f"    moelab {name:<12} x{count:<4} {seconds:8.1f} s")
        dvc = study["wall"] - sum(seconds for _, seconds in study["commands"].values())
        print(f"    {'DVC itself':<19} {dvc:8.1f} s")
        # the commands that train or evaluate (their seeds side by side, in child processes the shim does
        # not see): what the study would cost with no pipeline around it, bar their own start-up and imports
        work_commands = sum(seconds for name, (_, seconds) in study["commands"].items() if name in WORK_COMMANDS)
        print(
            f"  wall / the {', '.join(WORK_COMMANDS)} commands' wall ({work_commands:.1f} s, their start-up and "
            f"imports included) = {study['wall'] / max(work_commands, 1e-9):.3f}  (target <= 1.3)"
        )
        pretrain = study["commands"].get("pretrain", (0, 0.0))[1]
        print(
            f"  from a fresh clone {study['wall'] / 60:.1f} min; without the pretrain commands (the bases pulled, "
            f"`dvc pull` not counted) {(study['wall'] - pretrain) / 60:.1f} min"
        )
    for wall, cpu in m.get("noop", []):
        print(f"  no-op repro: {wall:.2f} s wall, {cpu:.2f} s CPU  (target <= 3 s)")
    if "exp" not in m:
        return
    exp = m["exp"]
    work = sum(exp["parts"].get(kind, (0.0, 0.0))[0] for kind in ("train", "evaluate"))
    print(
        f"  exp run -S router=attention: {exp['wall']:.1f} s wall, {exp['cpu']:.1f} s CPU; target <= "
        f"{1.3 * work + 5:.1f} s (1.3 x its train + evaluate work + 5 s), <= {1.3 * exp['processes'] + 5:.1f} s "
        f"(counting their processes' start-up and imports as theirs)"
    )
    print_parts(exp)


def print_parts(run: dict) -> None:
    print(f"    {'':<15} {'wall s':>8} {'share':>7} {'CPU s':>8}")
    for name, (seconds, cpu) in sorted(run["parts"].items(), key=lambda kv: -kv[1][0]):
        print(f"    {name:<15} {seconds:8.1f} {seconds / run['wall']:7.1%} {cpu:8.1f}")
    for clock, index in (("wall", 0), ("CPU", 1)):
        work = sum(run["parts"].get(kind, (0.0, 0.0))[index] for kind in ("train", "evaluate"))
        total = run["wall"] if index == 0 else run["cpu"]
        print(f"    {clock}: total / (train + evaluate work) = {total / max(work, 1e-9):.2f}  (study target <= 1.3)")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--rev", action="append", help="git revision(s) to measure (default: the working tree)")
    ap.add_argument("--shape", choices=SHAPES, default="default")
    ap.add_argument("--noop-repeats", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the labs (printed) instead of deleting them")
    ap.add_argument("--in-repo", choices=("study", "exp"), help="time this repository's own pipeline, not a lab")
    ap.add_argument("--json", type=Path, help="also write every figure measured to this file (a long run's record)")
    ap.add_argument(
        "--set",
        dest="settings",
        type=parse_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change an existing params.yaml key in the lab (dotted, as `dvc exp run -S`); repeatable",
    )
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}")
    results = []
    if args.in_repo:
        with tempfile.TemporaryDirectory(prefix="moelab-bench-pipeline-") as work:
            results.append(measure_in_repo(args.in_repo, Path(work), args.noop_repeats))
    for rev in [] if args.in_repo else args.rev or [None]:
        work = Path(tempfile.mkdtemp(prefix="moelab-bench-pipeline-"))
        try:
            results.append(measure(rev, args.shape, work, args.noop_repeats, args.settings))
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    for m in results:
        report(m)


if __name__ == "__main__":
    main()
