"""`moelab report`: aggregate the study into metrics/summary.{json,md} and plots/."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--study", default="metrics/study", help="the study's metrics tree (read)")
    p.add_argument("--bench", default="metrics/bench", help="the benchmark's per-variant JSONs (read)")
    p.add_argument("--out", default="metrics", help="where summary.json / summary.md are written")
    p.add_argument("--plots", default="plots")
    p.add_argument("--params", default="params.yaml")


def run(args) -> None:
    from ..config import load_params
    from .tables import REFERENCES, report

    load_params(args.params)
    summary = report(args.study, args.out, args.plots, args.bench)
    n = sum(len(sizes) for gatings in summary.values() for gating, sizes in gatings.items() if gating != REFERENCES)
    print(f"report: {n} cells of {len(summary)} task(s) in {args.out}/summary.md, figures in {args.plots}/")
