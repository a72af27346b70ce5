"""`moelab check`: validate params.yaml (every cell of the study is resolved); --list shows every
registered component and MoE option, read from the registries.

--out writes a marker file once params.yaml is valid. Its content never changes: the pipeline's first
stage writes it and every other stage depends on it, so DVC runs the check before it removes any
stage's outputs or pastes a params value into a shell command, and no stage re-runs because of it."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--params", default="params.yaml")
    p.add_argument(
        "--list",
        action="store_true",
        help="list tasks, routers, normalisers, selection rules, "
        "balancing rules, capacity policies, expert types, MoE options",
    )
    p.add_argument("--out", help="write this marker file (always the same content) once params.yaml is valid")


def run(args) -> None:
    from .load import load_params

    params = load_params(args.params)
    print(
        f"params OK: study {params.tasks} x {params.routers} x {params.gates} x {params.models} x seeds {params.seeds}"
    )
    if args.out:
        from ..io import write_json

        write_json(args.out, {"params.yaml": "valid"})
    if args.list:
        print(registry_listing())


def registry_listing() -> str:
    from ..moe.config import REGISTRIES, all_params
    from ..tasks import TASKS

    lines = [f"tasks: {', '.join(TASKS.names())}"]
    lines += [f"{registry.kind}: {', '.join(registry.names())}" for registry in REGISTRIES]
    lines.append("moe options:")
    lines += [f"  {key} (default {param.default!r}): {param.help}" for key, param in all_params().items()]
    return "\n".join(lines)
