"""`moelab <stage>`: each stage reads params.yaml; flags pick one cell of the study."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import ConfigError, load_params, resolve_run


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line `moelab <stage>: error: ...` (exit 2), like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _cell_args(p: argparse.ArgumentParser) -> None:
    """Flags naming one run; any left out fall back to the scalar keys of params.yaml."""
    p.add_argument("--task")
    p.add_argument("--router")
    p.add_argument("--gate", help="a name under gate_presets (sets norm and top_k)")
    p.add_argument("--model", help="a model-size preset of the task")
    p.add_argument("--seed", type=int)
    p.add_argument("--dense", action="store_true", help="the dense baseline instead of an MoE")
    p.add_argument("--params", default="params.yaml")


def _run(args):
    params = load_params(args.params)
    return params, resolve_run(params, task=args.task, router=args.router, gate=args.gate,
                               model=args.model, seed=args.seed, dense=args.dense)


def cmd_prepare(args) -> None:
    from .data.prepare import prepare
    params = load_params(args.params)
    _quiet_hf()
    task = args.task or params.task
    stats = prepare(task, params.task_params(task).data, args.out or f"data/prepared/{task}")
    print(f"prepared {task}: {stats}")


def _quiet_hf() -> None:
    """No progress bars or info logs from `datasets` on stderr: an error is then its one `moelab` line."""
    try:
        import datasets
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass


def cmd_train(args) -> None:
    from .train import train
    _, run = _run(args)
    out = Path(args.metrics_dir)
    metrics = train(run, args.data_dir or f"data/prepared/{run.task}", args.models_dir, out / "train.json",
                    live_dir=out / "live", progress=not args.quiet, stop_after=args.stop_after)
    if int(os.environ.get("RANK", "0")) == 0:      # under torchrun: one line, not one per rank
        print(f"trained {run.task}/{run.name}/s{run.seed}: best val loss {metrics['best_val_loss']:.4f} "
              f"in {metrics['wall_s']:.1f}s (world size {metrics['world_size']})")


def cmd_evaluate(args) -> None:
    from .evaluate import evaluate
    _, run = _run(args)
    out = Path(args.metrics_dir)
    m = evaluate(run, args.data_dir or f"data/prepared/{run.task}", args.models_dir, out / "eval.json",
                 out / "samples.md", progress=not args.quiet)
    headline = {k: round(v, 4) for k, v in m.items() if isinstance(v, float) and not k.startswith("_")}
    print(f"evaluated {run.task}/{run.name}/s{run.seed}: {headline}")


def cmd_benchmark(args) -> None:
    from .benchmark import benchmark
    params, run = _run(args)
    m = benchmark(run, args.data_dir or f"data/prepared/{run.task}", args.out, params.benchmark)
    print(f"benchmark {run.task}/{run.name}: {m['params_total']} params ({m['params_active']} active), "
          f"{m['flops_per_token']:.3g} FLOPs/token, forward {m['forward_ms']:.2f} ms")


def cmd_bench(args) -> None:
    """Every study variant (model table) and the layer micro-benchmark; prints both, writes JSON + markdown."""
    from .benchmark import bench_study, model_table
    from .io import atomic_write_text, write_metrics
    from .layerbench import layer_summary_metrics, layer_table, run_layer_bench
    params = load_params(args.params)
    tasks = args.tasks.split(",") if args.tasks else None
    if tasks:
        for t in tasks:
            if t not in params.tasks:
                raise ConfigError(f"--tasks: {t!r} is not a task of the study; allowed: {', '.join(params.tasks)}")
    sections = [f"# moelab bench\n\n{torch_threads_line()}"]
    if not args.layer_only:
        rows = bench_study(params, args.data_root, args.out_dir, tasks, progress=not args.quiet)
        sections.append("## Variants (one unpadded training batch each; FLOPs are forward, per token)\n\n"
                        + model_table(rows))
    if not args.models_only:
        result = run_layer_bench(params.benchmark.layer, progress=not args.quiet)
        write_metrics(args.layer_out, {**layer_summary_metrics(result), "targets_met": all(t["met"] for t in result["targets"]),
                                       "layer": result}, {"benchmark": {"layer": result["config"]}})
        sections.append(f"## Layer micro-benchmark (device {result['device']}, {result['dtype']}, "
                        f"{result['threads']} threads)\n\n" + layer_table(result))
    text = "\n\n".join(sections) + "\n"
    if args.md:
        atomic_write_text(args.md, text)
    print(text)


def torch_threads_line() -> str:
    import torch
    from .cpu import malloc_tuned
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}, "
            f"malloc keeps freed memory: {malloc_tuned()}")


def cmd_report(args) -> None:
    from .report import report
    load_params(args.params)
    summary = report(args.study, args.out, args.plots, args.bench)
    n = sum(len(sizes) for gatings in summary.values() for sizes in gatings.values())
    print(f"report: {n} cells of {len(summary)} task(s) in {args.out}/summary.md, figures in {args.plots}/")


def cmd_check(args) -> None:
    params = load_params(args.params)
    print(f"params OK: study {params.tasks} x {params.routers} x {params.gates} x {params.models} x seeds {params.seeds}")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="moelab", description=__doc__)
    sub = ap.add_subparsers(dest="stage", required=True, parser_class=_Parser)
    p = sub.add_parser("prepare", help="split a corpus, train a tokenizer, write token ids")
    p.add_argument("--task")
    p.add_argument("--out")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(fn=cmd_prepare)
    for name, fn, help_ in (("train", cmd_train, "train one run (resumes from its latest checkpoint)"),
                            ("evaluate", cmd_evaluate, "evaluate one trained run")):
        p = sub.add_parser(name, help=help_)
        _cell_args(p)
        p.add_argument("--models-dir", required=True)
        p.add_argument("--metrics-dir", required=True)
        p.add_argument("--data-dir")
        p.add_argument("--quiet", action="store_true")
        if name == "train":
            p.add_argument("--stop-after", type=int, help="stop after this many steps (checkpointed; for tests)")
        p.set_defaults(fn=fn)
    p = sub.add_parser("benchmark", help="parameters, FLOPs, latency and memory of one variant")
    _cell_args(p)
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir")
    p.set_defaults(fn=cmd_benchmark)
    p = sub.add_parser("bench", help="benchmark every study variant and the MoE layer; print the tables")
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
    p.set_defaults(fn=cmd_bench)
    p = sub.add_parser("report", help="aggregate metrics into metrics/summary.{json,md} and plots/")
    p.add_argument("--study", default="metrics/study", help="the study's metrics tree (read)")
    p.add_argument("--bench", default="metrics/bench", help="the benchmark's per-variant JSONs (read)")
    p.add_argument("--out", default="metrics", help="where summary.json / summary.md are written")
    p.add_argument("--plots", default="plots")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("check", help="validate params.yaml")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(fn=cmd_check)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args, extra = ap.parse_known_args(argv)
    from .cpu import keep_freed_memory
    keep_freed_memory()       # before any tensor exists; see cpu.py (MOELAB_MALLOC=default opts out)
    if extra:   # reported by the stage's name, like every other error of that stage
        ap.exit(2, f"moelab {args.stage}: error: unrecognized arguments: {' '.join(extra)} "
                   f"(see moelab {args.stage} --help)\n")
    try:
        args.fn(args)
    except Exception as err:   # noqa: BLE001 - one clear line for the errors we know how to explain
        if not _known(err):
            raise
        print(f"moelab {args.stage}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    return 0


def _known(err: Exception) -> bool:
    from .checkpoint import CheckpointError
    from .train import NonFiniteLoss
    known = (ConfigError, CheckpointError, NonFiniteLoss, OSError)   # OSError: not found, permission, disk full
    try:
        from .data.corpora import DataError
        known += (DataError,)
    except ImportError:
        pass
    return isinstance(err, known)


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.filename:
        text += ": check the path, its permissions and free disk space"
    return text


if __name__ == "__main__":
    sys.exit(main())
