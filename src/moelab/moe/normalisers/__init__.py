"""Normalisers: scores [N, E] -> routing weights [N, E]. One file per normaliser.

A normaliser on the probability simplex (`on_simplex`) gives weights that sum to 1 per token; its
routing entropy is reported. `sparse` ones put exactly zero weight on some experts, so the number
of experts a token uses varies per token.
"""

from ..registry import Registry, import_all

NORMALISERS = Registry("norm")


def build_normaliser(cfg):
    return NORMALISERS.get(cfg.norm, "norm")(cfg)


import_all(__name__, __path__)
