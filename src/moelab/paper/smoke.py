"""`moelab paper-smoke`: every model of the smoke, each in a process of its own (paper/model.py), then the
metrics and tables (paper/tables.py). What it runs and why: moelab/paper/__init__.py, paper/README.md."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError
from .model import ModelJob
from .preset import (
    PRESET_COMMAND,
    PUBLISHED_EXPERTS,
    ModelSpec,
    PaperSmokeError,
    preset_params,
    published_specs,
    variant_names,
)
from .standins import (
    STAND_IN_BANNER,
    bundled_texts,
    cached_checkpoint,
    stand_in_notes,
    stand_in_tokenizer,
    write_stand_in_samsum,
)
from .tables import smoke_markdown, smoke_metrics


def run_smoke(
    specs: list[ModelSpec],
    *,
    params_path: Path = Path("params.yaml"),
    out: Path = Path("metrics/paper_smoke.json"),
    md: Path | None = Path("metrics/paper_smoke.md"),
    variants: list[tuple[str, str]] | None = None,
    samsum: str | None = None,
    work: Path | None = None,
    threads: int | None = None,
    autocast: bool = True,
    new_tokens: int = 32,
    seed: int = 0,
    log=print,
) -> dict:
    """Every model of `specs` x its variants (default `variants`, else all six), each model in a process of its
    own; writes the metrics (and the markdown) and returns the metrics."""
    import torch

    from ..io import atomic_write_text, write_metrics
    from ..machine import fingerprint

    variants = list(variants or variant_names())
    settings = dict(threads=threads or torch.get_num_threads(), autocast=autocast, seed=seed)
    start, load_before = time.perf_counter(), os.getloadavg()
    with _work_dir(work) as root:
        source = samsum or str(write_stand_in_samsum(root / "samsum", {"train": 8, "validation": 2, "test": 2}))
        checkpoints = {spec.name: spec.checkpoint or cached_checkpoint(spec.name) for spec in specs}
        jobs = _jobs(specs, checkpoints, variants, root, params_path, source, new_tokens, settings, log)
        results = {job.name: _run_child(job) for job in jobs}
    metrics = smoke_metrics(results, time.perf_counter() - start)
    config = {
        "models": {
            s.name: {
                "steps": s.steps,
                "variants": ["-".join(v) for v in s.variants or variants],
                "checkpoint": checkpoints[s.name] or "stand-in",
            }
            for s in specs
        },
        "samsum": source if samsum else "stand-in",
        "threads": settings["threads"],
        "autocast": "bfloat16" if autocast else "off",
        "new_tokens": new_tokens,
        "seed": seed,
        "out": str(out),
        "preset_command": PRESET_COMMAND,
    }
    meta = {
        "stand_ins": stand_in_notes(checkpoints, samsum is None),
        "machine": fingerprint(),
        "loadavg_start": load_before,
        "loadavg_end": os.getloadavg(),
    }
    write_metrics(out, metrics, config, meta)
    if md:
        atomic_write_text(md, smoke_markdown(metrics, config, meta))
    return metrics


def _jobs(specs, checkpoints, variants, root: Path, params_path: Path, source: str, new_tokens, settings, log):
    """One ModelJob per model: its checkpoint directory (a stand-in's gets the stand-in tokenizer now, its
    weights in its own process), its params file (the preset's, pointing at that directory) and the SAMSum
    data, prepared once (the data settings are the same for every model)."""
    from ..data.prepare import prepare
    from ..resolve import load_params

    tokenizer = None
    if any(path is None for path in checkpoints.values()):
        tokenizer = stand_in_tokenizer(bundled_texts(), root / "tokenizer")
    jobs, data_dir = [], root / "prepared"
    for i, spec in enumerate(specs):
        build = checkpoints[spec.name] is None
        checkpoint = root / spec.name if build else Path(checkpoints[spec.name])
        if build:
            tokenizer.save_pretrained(checkpoint)
            log(STAND_IN_BANNER.format(name=spec.name))
        experts = _experts(spec, None if build else checkpoint)
        params = root / f"{spec.name}.params.yaml"
        preset_params(params_path, params, checkpoint, experts, source, new_tokens)
        if i == 0:
            prepare("summarization", load_params(params).summarization.data, data_dir)
        variants_of = tuple(spec.variants or variants)
        result = str(root / f"{spec.name}.result.json")
        config = spec.config.to_dict()
        jobs.append(
            ModelJob(
                spec.name,
                config,
                build,
                str(checkpoint),
                str(params),
                str(data_dir),
                variants_of,
                spec.steps,
                settings["threads"],
                settings["autocast"],
                settings["seed"],
                result,
            )
        )
    return jobs


def _experts(spec: ModelSpec, checkpoint: Path | None) -> int:
    """Experts per MoE layer: the stand-in's config, or the checkpoint's (the preset's n_experts must match it)."""
    if checkpoint is None:
        return spec.config.num_experts
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(checkpoint).num_experts


@contextmanager
def _work_dir(work: Path | None):
    """`work` (kept), or a temporary directory removed afterwards (checkpoints: 2.5 GB and 4.3 GB)."""
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
        yield work
        return
    root = Path(tempfile.mkdtemp(prefix="moelab-paper-smoke-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run_child(job: ModelJob) -> dict:
    """Run one model's job in a fresh interpreter; its result, or a PaperSmokeError saying why not."""
    spec = Path(job.result).with_suffix(".job.json")
    spec.write_text(json.dumps(dataclasses.asdict(job)))
    Path(job.result).unlink(missing_ok=True)  # a kept --work directory may hold an earlier run's
    proc = subprocess.Popen([sys.executable, "-m", "moelab.paper.model", str(spec)])
    try:
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: the child stops with the parent
            proc.terminate()
            proc.wait()
    path = Path(job.result)
    result = json.loads(path.read_text()) if path.is_file() else {}
    if "error" in result:
        raise PaperSmokeError(f"{job.name}: {result['error']}")
    if code != 0:
        why = f"exit status {code} (its traceback is above)"
        if code < 0:
            oom = " (the kernel's out-of-memory killer?)" if code == -9 else ""
            why = f"killed by signal {-code}{oom}"
        done = ", ".join(result.get("variants", {})) or "none"
        raise PaperSmokeError(f"the {job.name} process failed: {why}; variants finished: {done}")
    return result


def add_arguments(p) -> None:
    p.add_argument(
        "--models",
        nargs="+",
        default=["switch-base-8:2", "switch-base-16:1"],
        metavar="NAME[:STEPS][=ROUTER-GATE,...]",
        help=f"models ({', '.join(PUBLISHED_EXPERTS)}), optimiser steps per variant (default 2) and the model's "
        "variants (default: --variants)",
    )
    p.add_argument("--variants", nargs="+", metavar="ROUTER-GATE", help="default: the six SparTMoE variants")
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a local directory holding the real checkpoint (config, safetensors, tokenizer) of model NAME",
    )
    p.add_argument(
        "--samsum",
        help="SAMSum as data.source takes it: a local copy (csv / jsonl files, a save_to_disk directory) or "
        "knkarthick/samsum in the HF cache (default: a stand-in in SAMSum's schema)",
    )
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--out", default="metrics/paper_smoke.json", help="metrics (numbers only; .meta.json beside)")
    p.add_argument("--md", default="metrics/paper_smoke.md", help="the smoke and GPU-cost tables ('' to skip)")
    p.add_argument("--work", help="keep checkpoints and data here (default: a temporary directory, removed)")
    p.add_argument("--threads", type=int, help="torch threads in each model's process (default: torch's)")
    p.add_argument("--no-autocast", action="store_true", help="fp32 steps (default: bf16 autocast, as on CUDA)")
    p.add_argument("--new-tokens", type=int, default=32, help="at most this many tokens per generated summary")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> None:
    from ..resolve import load_params

    params = load_params(args.params)
    models = parse_models(args.models, params)
    checkpoints = parse_checkpoints(args.checkpoint, models)
    variants = parse_variants(args.variants, params) if args.variants else None
    for flag, value in (("--threads", args.threads), ("--new-tokens", args.new_tokens)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value} is not allowed; allowed: an integer >= 1")
    metrics = run_smoke(
        published_specs(models, checkpoints),
        params_path=Path(args.params),
        out=Path(args.out),
        md=Path(args.md) if args.md else None,
        variants=variants,
        samsum=args.samsum,
        work=Path(args.work) if args.work else None,
        threads=args.threads,
        autocast=not args.no_autocast,
        new_tokens=args.new_tokens,
        seed=args.seed,
    )
    print(
        f"paper smoke: {metrics['wall_s'] / 60:.1f} min, peak RSS {metrics['peak_rss_gib']:.1f} GiB; "
        f"wrote {args.out}" + (f" and {args.md}" if args.md else "")
    )


def parse_models(values: list[str], params) -> dict[str, tuple[int, list | None]]:
    """NAME[:STEPS][=ROUTER-GATE,...] -> {NAME: (STEPS (default 2), its variants or None: those of --variants)},
    e.g. "switch-base-16:1=linear-sparsemax" -> {"switch-base-16": (1, [("linear", "sparsemax")])}."""
    models = {}
    for value in values:
        spec, has_variants, variants = value.partition("=")
        name, _, n = spec.partition(":")
        bad_steps = n and not (n.isdigit() and int(n) >= 1)
        if name not in PUBLISHED_EXPERTS or bad_steps or (has_variants and not variants):
            raise ConfigError(
                f"--models {value!r} is not allowed; allowed: NAME[:STEPS][=ROUTER-GATE,...] with NAME one of "
                f"{', '.join(PUBLISHED_EXPERTS)} and STEPS >= 1"
            )
        chosen = parse_variants(variants.split(","), params, "--models") if variants else None
        models[name] = (int(n) if n else 2, chosen)
    return models


def parse_checkpoints(values: list[str], models: dict[str, int]) -> dict[str, str]:
    """["switch-base-16=/data/sb16"] -> {"switch-base-16": "/data/sb16"}; the directory must exist."""
    out = {}
    for value in values:
        name, _, path = value.partition("=")
        if name not in models or not path:
            allowed = ", ".join(models)
            raise ConfigError(f"--checkpoint {value!r} is not allowed; allowed: NAME=DIR with NAME one of {allowed}")
        if not (Path(path) / "config.json").is_file():
            raise ConfigError(f"--checkpoint {value!r}: {path} holds no config.json (save_pretrained's directory)")
        out[name] = path
    return out


def parse_variants(values: list[str], params, flag: str = "--variants") -> list[tuple[str, str]]:
    """["attention-sparsemax"] -> [("attention", "sparsemax")]: a registered router, then a gate preset."""
    from ..moe.routers import ROUTERS as REGISTERED

    out = []
    for value in values:
        router = next((r for r in REGISTERED.names() if value.startswith(f"{r}-")), None)
        gate = value[len(router) + 1 :] if router else None
        if gate not in params.gate_presets:
            raise ConfigError(
                f"{flag}: {value!r} is not allowed; allowed: ROUTER-GATE with ROUTER one of "
                f"{', '.join(REGISTERED.names())} and GATE one of gate_presets ({', '.join(params.gate_presets)})"
            )
        out.append((router, gate))
    return out
