"""`moelab <command>`: a thin dispatcher. Each command lives in its own module, which defines
`add_arguments(parser)` and `run(args)`; only the chosen module is imported, so a command pays for no
import it does not use. A pipeline stage runs one command (study/dvc.yaml: prepare, references,
pretrain, train, evaluate; dvc.yaml: exp, bench, report; fingerprints/dvc.yaml: machine, code, check).

Every error moelab can explain is one line `moelab <command>: error: ...` and exit status 2
(Ctrl-C during training: 130); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {  # name: (module, help)
    "check": ("moelab.check", "validate params.yaml (and list the registered components)"),
    "prepare": ("moelab.data.prepare", "split a corpus, train a tokenizer, write token ids"),
    "references": ("moelab.reference", "score a task's reference rows (majority, lead-N, n-grams, bag-of-words ...)"),
    "pretrain": ("moelab.train.pretrain", "train a task's base of one model size (what its variants fine-tune from)"),
    "train": ("moelab.train.cli", "train a study variant's runs (every seed), or the experiment (resumes)"),
    "evaluate": ("moelab.evaluate", "evaluate a study variant's runs (every seed), or the experiment"),
    "exp": ("moelab.exp", "train, then evaluate, the one experiment in one process (the exp stage)"),
    "benchmark": ("moelab.bench.single", "parameters, FLOPs, latency and memory of one variant"),
    "bench": ("moelab.bench.cli", "benchmark every study variant and the MoE layer; print the tables"),
    "report": (
        "moelab.report.cli",
        "aggregate the study: metrics/summary.{json,md}, headline metrics, plots/",
    ),
    "scale": ("moelab.scale", "the budget study: quality vs training compute per task, width and budget"),
    "claims": ("moelab.claims.cli", "re-test published gating claims: pilot, plan, run a claim's cells, report"),
    "machine": ("moelab.machine", "write the machine fingerprint the benchmark's timings depend on"),
    "code": ("moelab.stages", "write the hash of the code each pipeline stage runs (what dvc.yaml depends on)"),
    "paper-smoke": ("moelab.paper.smoke", "the paper preset (Switch-Base-8/16) at full size: time, memory, FLOPs"),
}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line `moelab <command>: error: ...` (exit 2), like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser_for(command: str | None) -> tuple[Parser, object | None]:
    ap = Parser(
        prog="moelab",
        description=__doc__.splitlines()[0],
        epilog="commands: " + "; ".join(f"{n}: {h}" for n, (_, h) in COMMANDS.items()),
    )
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser)
    module = None
    for name, (module_name, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
    return ap, module


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    ap, module = parser_for(command if command in COMMANDS else None)
    args, extra = ap.parse_known_args(argv)
    if extra:  # reported by the command's name, like every other error of that command
        ap.exit(
            2,
            f"moelab {args.command}: error: unrecognized arguments: {' '.join(extra)} "
            f"(see moelab {args.command} --help)\n",
        )
    from .cpu import keep_freed_memory

    keep_freed_memory()  # before any tensor exists; see cpu.py (MOELAB_MALLOC=default opts out)
    from .errors import MoelabError

    try:
        module.run(args)
    except MoelabError as err:
        print(f"moelab {args.command}: error: {one_line(err)}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except OSError as err:  # not found, permission, disk full: the path and what to check
        print(f"moelab {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside training's own step-boundary handler (or a second Ctrl-C)
        print(
            f"moelab {args.command}: interrupted; moelab writes each file atomically, so none is "
            "half-written: re-run the same command to finish",
            file=sys.stderr,
        )
        return 130
    return 0


def one_line(err: Exception) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.filename:
        text += ": check the path, its permissions and free disk space"
    return text


def is_rank_zero() -> bool:
    """Under torchrun only rank 0 prints the one-line summaries."""
    return int(os.environ.get("RANK", "0")) == 0


if __name__ == "__main__":
    sys.exit(main())
