"""`moelab benchmark`: parameters, FLOPs, latency and memory of one variant (its first seed's config)."""

from __future__ import annotations


def add_arguments(p) -> None:
    from ..select import add_run_arguments

    add_run_arguments(p)
    p.add_argument("--out", required=True, help="the variant's JSON")


def run(args) -> None:
    from ..select import select_runs
    from .models import benchmark

    selection = select_runs(args)
    run_cfg, _ = selection.runs[0]
    m = benchmark(run_cfg, selection.data_dir, args.out, selection.params.benchmark)
    print(
        f"benchmark {run_cfg.task}/{run_cfg.name}: {m['params_total']} params ({m['params_active']} active), "
        f"{m['flops_per_token']:.3g} FLOPs/token, forward {m['forward_ms']:.2f} ms"
    )
