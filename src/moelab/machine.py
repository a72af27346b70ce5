"""The machine fingerprint: what benchmark timings depend on besides code and params (CPU model,
cores and threads, torch version, accelerator). Cheap (no torch import), so the always-run
`machine` stage (fingerprints/dvc.yaml) costs a fraction of a second, and its output only changes
when the machine does; the benchmark stage depends on it instead of being always_changed."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def accelerators() -> list[str]:
    """GPU names from nvidia-smi, when there is one (torch is not imported to ask)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def fingerprint() -> dict:
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch_version,
        "accelerators": accelerators(),
        "python": platform.python_version(),
    }


def add_arguments(p) -> None:
    p.add_argument("--out", default="fingerprints/machine.json")


def run(args) -> None:
    import json

    from .io import atomic_write_text

    machine = fingerprint()
    text = json.dumps(machine, indent=2) + "\n"
    path = Path(args.out)
    if not path.exists() or path.read_text() != text:  # unchanged machine: the file is not touched
        atomic_write_text(path, text)
    print(f"machine: {machine['cpu']}, {machine['usable_cpus']} CPUs, torch {machine['torch']}")
