"""DVCLive loss curves (train/loss, train/balancing_loss, train/lr, val/loss per step)."""

from __future__ import annotations

from pathlib import Path


def open_live(live_dir: Path, resumed_from: int):
    """A DVCLive logger; on resume, rows logged after the checkpoint (by the killed run) are dropped
    first, so the replayed steps are not logged twice."""
    from dvclive import Live

    if resumed_from > 0:
        truncate_live(live_dir, resumed_from)
    return Live(str(live_dir), resume=resumed_from > 0, save_dvc_exp=False, dvcyaml=None, report=None)


def truncate_live(live_dir: Path, last_step: int) -> None:
    from ..io import atomic_write_text

    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        head, keep = lines[0].split("\t"), [lines[0]]
        col = head.index("step") if "step" in head else None
        for line in lines[1:]:
            cells = line.split("\t")
            try:
                ok = col is not None and len(cells) == len(head) and int(cells[col]) <= last_step
                if ok:
                    float(cells[-1])
            except ValueError:
                ok = False  # a half-written row of the killed run
            if ok:
                keep.append(line)
        atomic_write_text(tsv, "\n".join(keep) + "\n")


def log_live(live, record: dict) -> None:
    live.step = record["step"]
    live.log_metric("train/loss", record["train_loss"])
    live.log_metric("train/balancing_loss", record["balancing_loss"])
    live.log_metric("train/lr", record["lr"])
    if "val_loss" in record:
        live.log_metric("val/loss", record["val_loss"])
