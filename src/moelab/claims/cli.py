"""`moelab claims pilot | plan | run | report`.

pilot   runs a claim's cells at the pilot seeds (claims/params.yaml `pilot`) and writes
        <pilot-dir>/<claim>.json (the runs-file format, profile "pilot"): the paired SDs the power
        table reads. At the budget's steps its runs are the main run's first seeds (a memo in
        --models-dir): the main run reuses them. Run it before fixing a claim's seeds and margins.
plan    prints, from the params alone (and the pilots where present): each claim's cells x seeds,
        the distinct runs to train once shared cells and pilots are counted, the expected cost
        (seconds per step: measured by the pilots, else --s-per-step), and the power table
        (pilot paired SD -> seeds needed for the margin, margin resolvable with the seeds set)
run     trains and evaluates every cell x seed of the named claims (claims/dvc.yaml: one stage
        per claim) and writes <runs-dir>/<claim>.json
report  judges every claim (the in-regime bar from --references) and writes the DVC metrics file
        (numbers only), the details file, the tables (md) and one figure per claim
"""

from __future__ import annotations

from pathlib import Path

DEFAULTS = {  # relative to the repo root; claims/dvc.yaml passes paths relative to claims/
    "params": "claims/params.yaml",
    "base_params": "params.yaml",
    "runs_dir": "claims/metrics",
    "pilot_dir": "claims/pilot",
    "references": "metrics/study/lm/references.json",
}


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", required=True, parser_class=type(p))
    pilot = sub.add_parser("pilot", help="run a claim's cells at the pilot seeds: the paired SDs", description=__doc__)
    run = sub.add_parser("run", help="train + evaluate every cell x seed of claims", description=__doc__)
    plan = sub.add_parser("plan", help="runs, expected cost and the power table, from params and pilots")
    for parser in (pilot, run, plan):
        target = parser.add_mutually_exclusive_group(required=parser is not plan)
        target.add_argument("--claim", action="append", help="a claim of the claims params (repeatable)")
        target.add_argument("--all", action="store_true", help="every claim")
        parser.add_argument(
            "--base-params", default=DEFAULTS["base_params"], help="the root params every cell overrides"
        )
    for parser in (pilot, run):
        parser.add_argument(
            "--jobs", type=int, default=0, help="runs at a time, one thread each (0: one per CPU core; with --quick: 1)"
        )
        parser.add_argument(
            "--data-dir", default="data/prepared/lm", help="prepared LM data (dvc repro study/dvc.yaml:prepare@lm)"
        )
        parser.add_argument(
            "--models-dir",
            default="claims/models",
            help="checkpoints, shared by claims: <dir>/<variant>-<hash>/s<seed>",
        )
    run.add_argument("--quick", action="store_true", help="the `quick` profile: a smoke test (2 seeds, 2 steps)")
    run.add_argument("--runs-dir", default=DEFAULTS["runs_dir"], help="writes <dir>/<claim>.json")
    pilot.add_argument("--seeds", type=int, help="the first N of pilot.seeds (default: all of them)")
    pilot.add_argument("--steps", type=int, help="training steps (default: pilot.steps, else the budget's)")
    pilot.add_argument("--quick", action="store_true", help="the `quick` profile's training (a smoke test)")
    for parser in (pilot, plan):
        parser.add_argument("--pilot-dir", default=DEFAULTS["pilot_dir"], help="<dir>/<claim>.json: the pilots")
    plan.add_argument(
        "--s-per-step", type=float, help="training seconds per step of a run without a pilot (one thread)"
    )
    plan.add_argument("--eval-s", type=float, default=10.0, help="seconds to evaluate a run without a pilot")
    plan.add_argument("--jobs", type=int, default=2, help="runs at a time the estimate assumes")
    plan.add_argument("--json", help="also write the plan as JSON here")
    report = sub.add_parser("report", help="judge every claim: the tables, claims.json (+ details), figures")
    report.add_argument("--runs-dir", default=DEFAULTS["runs_dir"], help="reads <dir>/<claim>.json")
    report.add_argument("--json", default="metrics/claims.json", help="DVC metrics: verdict codes and effects only")
    report.add_argument("--details", help="everything else (default: <json stem>.details.json beside --json)")
    report.add_argument("--md", default="metrics/claims.md")
    report.add_argument("--plots", default="claims/plots", help="writes <dir>/claims_<claim>.png")
    report.add_argument(
        "--references", default=DEFAULTS["references"], help="references.json: its role-`bar` row is the regime bar"
    )
    report.add_argument("--pilot-dir", default=DEFAULTS["pilot_dir"], help="<dir>/<claim>.json: the power table")
    for parser in (pilot, run, plan, report):
        parser.add_argument("--params", default=DEFAULTS["params"], help="the claims params")


def run(args) -> None:
    from ..errors import ConfigError
    from .spec import load_claims

    spec = load_claims(args.params)
    if getattr(args, "jobs", 0) < 0:
        raise ConfigError(f"--jobs {args.jobs} is not allowed; allowed: 0 (one per core) or a count >= 1")
    if args.action == "report":
        from .report import write_report

        details = Path(args.details) if args.details else None
        report = write_report(
            spec,
            Path(args.runs_dir),
            Path(args.json),
            Path(args.md),
            Path(args.plots),
            references=Path(args.references),
            details_path=details,
            pilot_dir=Path(args.pilot_dir),
        )
        verdict_list = ", ".join(f"{name}: {c['verdict']}" for name, c in report["claims"].items())
        print(f"claims report ({report['profile']}): {verdict_list} -> {args.md}, {args.json}, {args.plots}/")
        return
    from ..config import read_yaml

    names = list(spec.claims) if (args.all or not args.claim) else args.claim
    base = read_yaml(args.base_params)
    if args.action == "plan":
        from .plan import print_plan

        print_plan(spec, names, base, args)
        return
    from ..parallel import available_cores
    from .spec import plan_claim
    from .study import run_claim

    if args.action == "pilot":
        seeds, steps = pilot_settings(spec, args)
        plans = [plan_claim(spec, n, base, quick=args.quick, seeds=seeds, steps=steps, profile="pilot") for n in names]
        out_dir = Path(args.pilot_dir)
    else:
        plans = [plan_claim(spec, name, base, quick=args.quick) for name in names]  # every claim checked first
        out_dir = Path(args.runs_dir)
    # a 2-step smoke run costs less than starting a process beside this one: --quick runs in this process
    jobs = args.jobs or (1 if args.quick else available_cores())
    for plan in plans:
        run_claim(plan, Path(args.data_dir), Path(args.models_dir), out_dir / f"{plan.name}.json", jobs)


def pilot_settings(spec, args) -> tuple[list[int], int | None]:
    """The pilot's seeds (the first --seeds of pilot.seeds) and steps (--steps, else pilot.steps, else None:
    the budget's, or the quick profile's with --quick)."""
    from ..errors import ConfigError

    if spec.pilot is None:
        raise ConfigError("`moelab claims pilot` needs a `pilot:` section in the claims params (its seeds)")
    seeds = list(spec.pilot.seeds)
    if args.seeds is not None:
        if not 2 <= args.seeds <= len(seeds):
            raise ConfigError(
                f"--seeds {args.seeds} is not allowed; allowed: 2..{len(seeds)} (the first of pilot.seeds)"
            )
        seeds = seeds[: args.seeds]
    steps = args.steps if args.steps is not None else spec.pilot.steps
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps {steps} is not allowed; allowed: >= 1")
    return seeds, None if args.quick else steps
