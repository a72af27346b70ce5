"""`moelab check`: validate params.yaml (every cell of the study is resolved); --list shows every
registered component and MoE option, read from the registries."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--params", default="params.yaml")
    p.add_argument(
        "--list",
        action="store_true",
        help="list tasks, routers, normalisers, selection rules, "
        "balancing rules, capacity policies, expert types, MoE options",
    )


def run(args) -> None:
    from .load import load_params

    params = load_params(args.params)
    print(
        f"params OK: study {params.tasks} x {params.routers} x {params.gates} x {params.models} x seeds {params.seeds}"
    )
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
