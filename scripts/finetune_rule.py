"""The fine-tune rule of scale/params.yaml, applied to the committed fine-tune curves: how many steps
each task's variants fine-tune from their base (`<task>.train.steps` of params.yaml).

The rule (fixed before the summarisation curve existed; scale/params.yaml says when): the smallest budget
B >= 100 of the task's `finetune` list at which doubling B improves no fine-tune variant's validation loss
by 0.02 nats or more, else the largest budget. Only validation loss is read; test scores play no part.

    dvc repro scale/dvc.yaml            # or `dvc pull`: scale/metrics/<task>-finetune.json
    python scripts/finetune_rule.py     # each task's pick, its gains, and whether params.yaml follows it

Exits 1 when params.yaml's steps differ from the rule's pick for a task.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FLOOR = 100  # below 100 steps a fresh router is still untrained (scale/params.yaml)
MIN_GAIN_NATS = 0.02  # 2 % perplexity


def losses_by_variant(frame, task: str) -> dict[str, dict[int, float]]:
    """{variant: {steps: validation loss}} of a task's fine-tune runs, from moelab.scale_report.runs_frame
    (which names each run back into its variant)."""
    tuned = frame[(frame["task"] == task) & (frame["kind"] == "finetune")]
    return {
        variant: dict(zip(group["steps"].astype(int), group["val_loss"].astype(float), strict=True))
        for variant, group in tuned.groupby("variant", sort=False)
    }


def gains_from_doubling(losses: dict[str, dict[int, float]], budget: int) -> dict[str, float]:
    """Validation loss at `budget` minus at 2 x `budget`, per variant (positive: doubling helped)."""
    return {variant: curve[budget] - curve[2 * budget] for variant, curve in losses.items()}


def pick(losses: dict[str, dict[int, float]], budgets: list[int]) -> tuple[int, dict[int, dict[str, float]]]:
    """The rule's budget, and the gains it looked at ({B: {variant: gain}} for each B it tried)."""
    tried = {}
    for budget in sorted(b for b in budgets if b >= FLOOR and 2 * b in budgets):
        tried[budget] = gains_from_doubling(losses, budget)
        if all(gain < MIN_GAIN_NATS for gain in tried[budget].values()):
            return budget, tried
    return max(budgets), tried


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale-params", default=str(ROOT / "scale" / "params.yaml"))
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--metrics-dir", default=str(ROOT / "scale" / "metrics"))
    args = parser.parse_args(argv)
    spec = yaml.safe_load(Path(args.scale_params).read_text())
    params = yaml.safe_load(Path(args.params).read_text())
    for task in spec["task_names"]:
        path = Path(args.metrics_dir) / f"{task}-finetune.json"
        if not path.exists():
            parser.error(f"{path}: no fine-tune curve; run `dvc repro scale/dvc.yaml` or `dvc pull`")
    sys.path.insert(0, str(ROOT / "src"))
    from moelab.scale_report import runs_frame

    frame = runs_frame(Path(args.metrics_dir))
    disagree = []
    for task in spec["task_names"]:
        budgets = [int(b) for b in spec["tasks"][task]["finetune"]]
        chosen, tried = pick(losses_by_variant(frame, task), budgets)
        used = params[task]["train"]["steps"]
        print(f"{task}: the rule picks {chosen} steps; params.yaml {task}.train.steps = {used}")
        for budget, gains in tried.items():
            shown = ", ".join(f"{variant} {gain:+.4f}" for variant, gain in gains.items())
            print(f"  {budget} -> {2 * budget}: validation loss gained {shown}")
        if used != chosen:
            disagree.append(task)
    if disagree:
        print(f"params.yaml does not follow the rule for: {', '.join(disagree)}")
    return 1 if disagree else 0


if __name__ == "__main__":
    sys.exit(main())
