"""`moelab bench`: every study variant (model table) and the layer micro-benchmark; prints both,
writes one JSON per variant, the layer JSON and a markdown file."""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--tasks", help="comma-separated subset of the study's tasks (default: all)")
    p.add_argument("--data-root", default="data/prepared", help="prepared data, one directory per task")
    p.add_argument("--out-dir", default="metrics/bench", help="one JSON per variant: <out-dir>/<task>/<variant>.json")
    p.add_argument("--layer-out", default="metrics/bench_layer.json", help="the layer micro-benchmark's JSON")
    p.add_argument("--md", default="metrics/bench.md", help="both tables as markdown ('' to skip)")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--models-only", action="store_true", help="skip the layer micro-benchmark")
    only.add_argument("--layer-only", action="store_true", help="only the layer micro-benchmark")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> None:
    from ..config import ConfigError
    from ..io import atomic_write_text, write_json, write_metrics
    from ..resolve import load_params
    from .layer import layer_summary_metrics, layer_table, run_layer_bench
    from .models import bench_study, model_table

    params = load_params(args.params)
    tasks = args.tasks.split(",") if args.tasks else None
    for t in tasks or []:
        if t not in params.tasks:
            raise ConfigError(f"--tasks: {t!r} is not a task of the study; allowed: {', '.join(params.tasks)}")
    sections = [f"# moelab bench\n\n{torch_threads_line()}"]
    if not args.layer_only:
        rows = bench_study(params, args.data_root, args.out_dir, tasks, progress=not args.quiet)
        sections.append(
            "## Variants (one unpadded training batch each; FLOPs are forward, per token)\n\n" + model_table(rows)
        )
    if not args.models_only:
        result = run_layer_bench(params.benchmark.layer, progress=not args.quiet)
        write_metrics(
            args.layer_out,
            {**layer_summary_metrics(result), "targets_met": all(t["met"] for t in result["targets"])},
            {"benchmark": {"layer": result["config"]}},
        )
        layer_out = Path(args.layer_out)
        write_json(layer_out.with_name(f"{layer_out.stem}.rows.json"), result)  # every row, not metrics
        sections.append(
            f"## Layer micro-benchmark (device {result['device']}, {result['dtype']}, "
            f"{result['threads']} threads)\n\n" + layer_table(result)
        )
    text = "\n\n".join(sections) + "\n"
    if args.md:
        atomic_write_text(args.md, text)
    print(text)


def torch_threads_line() -> str:
    import torch

    from ..cpu import malloc_tuned

    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}, "
        f"malloc keeps freed memory: {malloc_tuned()}"
    )
