"""Composable sparse Mixture-of-Experts layer."""
from .config import MoEConfig
from .layer import MoELayer
from .stats import RoutingStats

__all__ = ["MoEConfig", "MoELayer", "RoutingStats"]
