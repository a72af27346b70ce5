"""Checkpoints of our own models: plain tensors and primitives, loaded with weights_only=True."""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from .io import atomic_write_bytes


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(path: str | Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found: train this variant first (dvc repro)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:   # truncated, tampered or not a checkpoint at all
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable ({first}): delete it and re-run training") from None


def config_fingerprint(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def load_model_state(model: torch.nn.Module, state: dict, path: str | Path, config: dict | None = None) -> None:
    """Load weights, explaining a checkpoint that belongs to another model size or variant."""
    if config is not None and state.get("config") != config_fingerprint(config):
        theirs = json.loads(state["config"]) if state.get("config") else {}
        diff = sorted(k for k in set(theirs) | set(config) if theirs.get(k) != json.loads(config_fingerprint(config)).get(k))
        raise CheckpointError(f"checkpoint {path} was trained with a different config (differs in: {', '.join(diff) or 'unknown'}): "
                              "delete it or point to the matching variant")
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise CheckpointError(f"checkpoint {path} does not fit this model ({detail[:160]}): "
                              "it belongs to another model size or variant") from None
