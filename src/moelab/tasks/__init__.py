"""Tasks, one file each, behind the Task protocol of base.py; each registers itself in TASKS."""

from ..moe.registry import import_all
from .base import TASKS, Metric, Task, build_task, prepare_hint

__all__ = ["TASKS", "Metric", "Task", "build_task", "prepare_hint"]

import_all(__name__, __path__)
