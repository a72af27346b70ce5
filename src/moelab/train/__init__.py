"""The train stage, split by job: distributed setup, optimiser schedule, live logging, the loop."""

from .loop import Interrupted, check_finite, seed_everything, train, validation_loss
from .schedule import lr_factor, param_groups

__all__ = ["Interrupted", "check_finite", "lr_factor", "param_groups", "seed_everything", "train", "validation_loss"]
