"""`moelab report`: read exactly the runs params.yaml asks for (moelab/study.py) and write the study's
headline metrics (metrics/study.json, what `dvc metrics diff` compares), metrics/summary.{json,md}
and plots/."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--params", default="params.yaml", help="which tasks, variants and seeds to read")
    p.add_argument("--study", default="metrics/study", help="the study's metrics tree (read)")
    p.add_argument("--bench", default="metrics/bench", help="the benchmark's per-variant JSONs (read)")
    p.add_argument("--base", default="metrics/base", help="the bases' pretraining metrics (read where there)")
    p.add_argument("--out", default="metrics", help="where summary.json / summary.md are written")
    p.add_argument("--headline", help="the headline metrics file (default <out>/study.json: metrics/study.json)")
    p.add_argument("--plots", default="plots")


def run(args) -> None:
    from pathlib import Path

    from ..resolve import load_params
    from .data import Roots
    from .tables import report

    params = load_params(args.params)
    roots = Roots(Path(args.study), Path(args.bench), Path(args.base))
    summary = report(params, roots, args.out, args.headline, args.plots)
    n = sum(len(task["variants"]) for task in summary.values())
    headline = args.headline or f"{args.out}/study.json"
    print(
        f"report: {n} variants of {len(summary)} task(s): {headline}, {args.out}/summary.md, figures in {args.plots}/"
    )
