"""Composable sparse Mixture-of-Experts layer. Components live in registries (see registry.py):
routers/, normalisers/, selection/, balancing/, experts/ (one file each) and capacity.py."""

from .config import MoEConfig, all_params
from .init import InitConfig
from .layer import MoELayer, moe_flops_per_token
from .registry import OptionError
from .stats import RoutingStats

__all__ = ["InitConfig", "MoEConfig", "MoELayer", "OptionError", "RoutingStats", "all_params", "moe_flops_per_token"]
