"""Task adapters: how each task builds its model, batches its data and scores itself."""
from __future__ import annotations

from pathlib import Path

from ..config import RunConfig


def build_task(run: RunConfig, data_dir: str | Path):
    if run.task == "lm":
        from .lm import LMTask
        return LMTask(run, Path(data_dir))
    if run.task == "summarization":
        from .summarization import SummarizationTask
        return SummarizationTask(run, Path(data_dir))
    if run.task == "classification":
        from .classification import ClassificationTask
        return ClassificationTask(run, Path(data_dir))
    raise ValueError(f"unknown task {run.task!r}")
