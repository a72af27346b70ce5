"""`moelab benchmark`: parameters, FLOPs, latency and memory of one variant."""

from __future__ import annotations


def add_arguments(p) -> None:
    from ..config.cli import add_cell_arguments

    add_cell_arguments(p, seeds=False)
    p.add_argument("--out", required=True, help="the variant's JSON")
    p.add_argument("--data-dir", help="prepared data (default data/prepared/<task>)")


def run(args) -> None:
    from ..config.cli import runs_from_args
    from .models import benchmark

    params, (run_cfg,) = runs_from_args(args)
    m = benchmark(run_cfg, args.data_dir or f"data/prepared/{run_cfg.task}", args.out, params.benchmark)
    print(
        f"benchmark {run_cfg.task}/{run_cfg.name}: {m['params_total']} params ({m['params_active']} active), "
        f"{m['flops_per_token']:.3g} FLOPs/token, forward {m['forward_ms']:.2f} ms"
    )
