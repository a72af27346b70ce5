"""Re-run one cell per task of the committed study and check its metrics against the committed ones.

For each task: one variant's seed-0 run, fine-tuned from the committed base (models/base/<task>/<size>,
from `dvc pull` or `dvc repro study/dvc.yaml:pretrain@<task>`) into a temporary directory with the
study's own commands, then evaluated; its test metrics are compared with metrics/study/<task>/<variant>/
eval/s0.json. On the machine that made them the numbers are bit-identical (every run has one thread,
its data order and initialisation come from its seed); on another machine a CPU with other vector units
picks other matmul kernels, whose sums round differently, and training amplifies the difference: the
tolerance is the relative difference README states, measured by emulating such a machine here
(`--isa avx2`: PyTorch's and oneDNN's kernels capped at AVX2, as on a CPU without AVX-512).

    python scripts/reproduce_check.py                    # this machine: expect identical numbers
    python scripts/reproduce_check.py --isa avx2         # another CPU generation: within the tolerance
    python scripts/reproduce_check.py --tolerance 0.05   # the relative tolerance to check against
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CELLS = {  # task: the variant re-run (a top-2 cell: its routing, like its quality, must come out the same)
    "lm": ("linear", "softmax-top2", "e8"),
    "summarization": ("linear", "softmax-top2", "e8"),
    "classification": ("linear", "softmax-top2", "e8"),
}
ISA = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def rerun(task: str, cell: tuple[str, str, str], work: Path, env: dict) -> dict:
    """Train and evaluate seed 0 of the cell in `work` (a copy of the project's params, data and base)."""
    router, gate, size = cell
    flags = ["--task", task, "--router", router, "--gate", gate, "--model", size, "--seed", "0", "--quiet"]
    for command in ("train", "evaluate"):
        subprocess.run([sys.executable, "-m", "moelab", command, *flags], cwd=work, env=env, check=True)
    return json.loads((work / "metrics" / "study" / task / "-".join(cell) / "eval" / "s0.json").read_text())


def project_copy(task: str, size: str, into: Path) -> Path:
    """params.yaml, the task's prepared data and its base, linked into a fresh project directory."""
    base = ROOT / "models" / "base" / task / size
    if not (base / "best.pt").is_file():
        sys.exit(f"{base}/best.pt not found: `dvc pull` or `dvc repro study/dvc.yaml:pretrain@{task}` first")
    shutil.copy(ROOT / "params.yaml", into / "params.yaml")
    for link, target in (
        (f"data/prepared/{task}", ROOT / "data" / "prepared" / task),
        (f"models/base/{task}", base.parent),
    ):
        (into / link).parent.mkdir(parents=True, exist_ok=True)
        (into / link).symlink_to(target)
    return into


def compare(committed: dict, again: dict) -> dict[str, float]:
    """Relative difference of every test_* number (0 where both are 0)."""
    out = {}
    for key, value in committed.items():
        if key.startswith("test_") and isinstance(value, (int, float)) and isinstance(again.get(key), (int, float)):
            out[key] = abs(again[key] - value) / max(abs(value), 1e-12) if value or again[key] else 0.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--isa", choices=sorted(ISA), help="cap the CPU kernels' instruction set (emulate another CPU)")
    ap.add_argument("--tolerance", type=float, default=0.0, help="relative difference allowed (default 0: identical)")
    ap.add_argument("--tasks", nargs="*", default=list(CELLS))
    args = ap.parse_args()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        **ISA.get(args.isa, {}),
    }
    worst, failed = 0.0, []
    for task in args.tasks:
        cell = CELLS[task]
        committed = json.loads((ROOT / "metrics" / "study" / task / "-".join(cell) / "eval" / "s0.json").read_text())
        with tempfile.TemporaryDirectory(prefix=f"moelab-reproduce-{task}-") as tmp:
            again = rerun(task, cell, project_copy(task, cell[2], Path(tmp)), env)
        diffs = compare(committed, again)
        key, largest = max(diffs.items(), key=lambda kv: kv[1])
        worst = max(worst, largest)
        ok = largest <= args.tolerance
        failed += [] if ok else [task]
        shown = ", ".join(
            f"{k} {committed[k]:.4g} -> {again[k]:.4g}" for k in diffs if k.startswith("test_") and diffs[k]
        )
        print(
            f"{task} {'-'.join(cell)} s0: largest relative difference {largest:.2e} ({key}) "
            f"{'within' if ok else 'OUTSIDE'} {args.tolerance:g}" + (f"; {shown}" if shown else "; identical")
        )
    print(f"worst relative difference {worst:.2e}: {'PASS' if not failed else 'FAIL ' + ', '.join(failed)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
