"""Task adapters: how each task builds its model, batches its data and scores itself."""
from __future__ import annotations

from pathlib import Path

from ..config import RunConfig


def prepare_hint(task: str, data_dir: Path) -> str:
    """What to run when the prepared data of `task` in `data_dir` is missing or broken."""
    return f"run `moelab prepare --task {task} --out {data_dir}` (or `dvc repro prepare@{task}`)"


def build_task(run: RunConfig, data_dir: str | Path):
    """The task of `run` on its prepared data; each task's check_data() validates every split."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        from ..data.corpora import DataError
        raise DataError(f"prepared data directory {data_dir} not found: {prepare_hint(run.task, data_dir)}")
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
