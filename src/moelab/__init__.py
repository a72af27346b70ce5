"""moelab: a reproducible laboratory for sparse Mixture-of-Experts gating research."""

__version__ = "0.1.0"
