"""Routers: token hidden states [N, d] -> expert scores (logits) [N, E]. One file per router."""

from ..registry import Registry, import_all

ROUTERS = Registry("router")


def build_router(cfg):
    return ROUTERS.get(cfg.router, "router")(cfg)


import_all(__name__, __path__)
