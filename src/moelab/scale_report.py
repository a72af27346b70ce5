"""The budget study's report (`moelab scale report`): per task, a table of every from-scratch run
(variant x width x budget: training FLOPs, seconds, test quality) and of the fine-tunes from the study's
base, and one figure — quality against training FLOPs and against seconds, a line per variant and
width, the study's reference rows (metrics/study/<task>/references.json) as horizontal lines, and the
fine-tune curve (quality against fine-tune steps)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .io import atomic_write_text, read_json
from .study import references_path


def headline(task: str) -> tuple[str, str, bool]:
    """(key, label, higher is better) of the task's headline metric (the task class's first metric)."""
    from .tasks import TASKS

    metric = TASKS.get(task, "task").metrics[0]
    return f"test_{metric.key}", f"test {metric.label}", metric.higher_is_better


def runs_frame(out_dir: Path) -> pd.DataFrame:
    """One row per run of every scale/metrics/<task>-<width>.json and <task>-finetune.json."""
    rows = []
    for path in sorted(out_dir.glob("*.json")):
        data = read_json(path)
        kind = "finetune" if path.stem.endswith("-finetune") else "scratch"
        for run in data["runs"]:
            if kind == "scratch":  # <variant>-<width>-<steps>
                variant, width, _ = run["name"].rsplit("-", 2)
            else:  # finetune-<variant>-<steps>, from the study's base
                variant, width = run["name"].removeprefix("finetune-").rsplit("-", 1)[0], "base"
            rows.append({"task": data["task"], "kind": kind, "variant": variant, "width": width, **run})
    return pd.DataFrame(rows)


def reference_lines(task: str) -> dict[str, float]:
    """{reference name: its test headline value} from the study's references (none when not yet scored)."""
    path = references_path(task)
    if not path.exists():
        return {}
    key = headline(task)[0]
    return {name: ref[key] for name, ref in read_json(path).items() if isinstance(ref, dict) and key in ref}


def table(frame: pd.DataFrame, task: str) -> str:
    key, label, _ = headline(task)
    rows = frame[frame["task"] == task].sort_values(["kind", "variant", "width", "steps"])
    extra = ["test_bpc"] if "test_bpc" in rows else []
    lines = [
        f"| kind | variant | width | steps | training FLOPs | train s | {label} |" + "".join(f" {c} |" for c in extra),
        "|---|---|---|---|---|---|---|" + "---|" * len(extra),
    ]
    for _, r in rows.iterrows():
        cells = [
            r["kind"],
            r["variant"],
            r["width"],
            str(int(r["steps"])),
            f"{r['train_flops']:.3g}",
            f"{r['train_s']:.0f}",
            f"{r[key]:.4g}",
        ] + [f"{r[c]:.4g}" for c in extra]
        lines.append("| " + " | ".join(cells) + " |")
    refs = reference_lines(task)
    if refs:
        lines += ["", "References (same test split): " + ", ".join(f"{n} {v:.4g}" for n, v in refs.items())]
    return "\n".join(lines)


def figure(frame: pd.DataFrame, task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, label, _ = headline(task)
    rows = frame[frame["task"] == task]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    scratch, tuned = rows[rows["kind"] == "scratch"], rows[rows["kind"] == "finetune"]
    for ax, x, xlabel in (
        (axes[0], "train_flops", "training FLOPs"),
        (axes[1], "train_s", "training seconds (1 thread)"),
    ):
        for (variant, width), group in scratch.groupby(["variant", "width"], sort=True):
            group = group.sort_values("steps")
            ax.plot(group[x], group[key], marker="o", label=f"{variant} {width}")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.set_title(f"{task}: from scratch")
    for variant, group in tuned.groupby("variant", sort=True):
        group = group.sort_values("steps")
        axes[2].plot(group["steps"], group[key], marker="o", label=variant)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("fine-tune steps from the study's base")
    axes[2].set_title(f"{task}: fine-tune from the base")
    for ax in axes:
        for name, value in reference_lines(task).items():
            ax.axhline(value, linestyle="--", linewidth=1, color="gray")
            ax.annotate(name, (1.0, value), xycoords=("axes fraction", "data"), fontsize=7, ha="right", va="bottom")
        if ax.has_data():
            ax.legend(fontsize=7)
        if task == "lm":
            ax.set_yscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(spec, out_dir: Path, md: Path, plots: Path) -> None:
    frame = runs_frame(out_dir)
    if frame.empty:
        from .errors import DataError

        raise DataError(f"no budget-study results in {out_dir}: run `dvc repro scale/dvc.yaml`")
    sections = ["# The budget study (scale/params.yaml)", ""]
    for task in sorted(frame["task"].unique()):
        figure(frame, task, plots / f"{task}.png")
        sections += [f"## {task}", "", f"![{task}](plots/{task}.png)", "", table(frame, task), ""]
    atomic_write_text(md, "\n".join(sections))
    print(f"scale report: {len(frame)} runs -> {md}, {plots}/")
