"""`moelab claims run --claim NAME | --all [--quick]` and `moelab claims report`.

run     trains and evaluates every cell x seed of the named claims (claims/dvc.yaml: one stage
        per claim) and writes <runs-dir>/<claim>.json
report  judges every claim and writes the claims table (json + md) and one figure per claim
"""

from __future__ import annotations

from pathlib import Path

DEFAULTS = {  # relative to the repo root; claims/dvc.yaml passes paths relative to claims/
    "params": "claims/params.yaml",
    "base_params": "params.yaml",
    "runs_dir": "claims/metrics",
}


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", required=True, parser_class=type(p))
    run = sub.add_parser("run", help="train + evaluate every cell x seed of claims", description=__doc__)
    target = run.add_mutually_exclusive_group(required=True)
    target.add_argument("--claim", action="append", help="a claim of the claims params (repeatable)")
    target.add_argument("--all", action="store_true", help="every claim")
    run.add_argument("--quick", action="store_true", help="the `quick` profile: a smoke test (2 seeds, 2 steps)")
    run.add_argument("--jobs", type=int, default=0, help="runs at a time, one thread each (0: one per CPU core)")
    run.add_argument("--base-params", default=DEFAULTS["base_params"], help="the root params every cell overrides")
    run.add_argument(
        "--data-dir", default="data/prepared/lm", help="prepared LM data (dvc repro study/dvc.yaml:prepare@lm)"
    )
    run.add_argument(
        "--models-dir", default="claims/models", help="checkpoints, shared by claims: <dir>/<variant>-<hash>/s<seed>"
    )
    run.add_argument("--runs-dir", default=DEFAULTS["runs_dir"], help="writes <dir>/<claim>.json")
    report = sub.add_parser("report", help="judge every claim: the table, claims.json, figures")
    report.add_argument("--runs-dir", default=DEFAULTS["runs_dir"], help="reads <dir>/<claim>.json")
    report.add_argument("--json", default="metrics/claims.json")
    report.add_argument("--md", default="metrics/claims.md")
    report.add_argument("--plots", default="claims/plots", help="writes <dir>/claims_<claim>.png")
    for parser in (run, report):
        parser.add_argument("--params", default=DEFAULTS["params"], help="the claims params")


def run(args) -> None:
    from ..errors import ConfigError
    from .spec import load_claims

    spec = load_claims(args.params)
    if args.action == "run" and args.jobs < 0:
        raise ConfigError(f"--jobs {args.jobs} is not allowed; allowed: 0 (one per core) or a count >= 1")
    if args.action == "report":
        from .report import write_report

        report = write_report(spec, Path(args.runs_dir), Path(args.json), Path(args.md), Path(args.plots))
        verdict_list = ", ".join(f"{name}: {c['verdict']}" for name, c in report["claims"].items())
        print(f"claims report ({report['profile']}): {verdict_list} -> {args.md}, {args.json}, {args.plots}/")
        return
    from ..config import read_yaml
    from .spec import plan_claim
    from .study import run_claim

    names = list(spec.claims) if args.all else args.claim
    base = read_yaml(args.base_params)
    plans = [plan_claim(spec, name, base, quick=args.quick) for name in names]  # every claim checked first
    from ..parallel import available_cores

    jobs = args.jobs or available_cores()
    for plan in plans:
        out = Path(args.runs_dir) / f"{plan.name}.json"
        run_claim(plan, Path(args.data_dir), Path(args.models_dir), out, jobs)
