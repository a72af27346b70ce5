"""Checkpoints of our own models: plain tensors and primitives, loaded with weights_only=True."""

from __future__ import annotations

import io
import json
import pickle
import re
import warnings
from pathlib import Path

import torch

from .errors import CheckpointError
from .io import atomic_write_bytes

RESUME_KEYS = ("model", "optimizer", "scheduler", "rng", "step", "best_val", "config")


def save_checkpoint(path: str | Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, required: tuple[str, ...] = ("model",)) -> dict:
    """A checkpoint's state dict; `required` keys must be present (a resume needs the optimiser,
    RNG, ... that only latest.pt holds)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found: train this variant first (dvc repro)")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles arbitrary objects
    except Exception as err:  # truncated, tampered or not a checkpoint at all
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({_why(err)}): restore it from DVC "
            f"(dvc checkout) or delete it and re-run training"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(
            f"checkpoint {path} is unreadable (not a moelab checkpoint: no model weights): "
            "restore it from DVC (dvc checkout) or delete it and re-run training"
        )
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} cannot be resumed from: it has no {', '.join(missing)} (a best.pt "
            "copied over latest.pt?); restore latest.pt (dvc checkout), or re-run with --restart "
            "to train from step 0"
        )
    return state


def _why(err: Exception) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in text:
        found = re.search(r"(Unsupported global: GLOBAL [\w.]+|Unsupported operand \d+)", text)
        return (
            "it holds objects other than tensors and plain values, which are refused because unpickling "
            f"them could run code{': ' + found.group(1) if found else ''}"
        )
    # a cut-off zip: "failed finding central directory", EOFError, or OSError [Errno 22] from the zip reader
    if "zip archive" in text or "central directory" in text or isinstance(err, (EOFError, OSError)):
        return "truncated or not a torch checkpoint"
    return text[:160] or type(err).__name__


def config_fingerprint(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Sections of the run config that do not decide what the weights are, or that evaluation does not
# re-derive: evaluating (or sampling from) a checkpoint with other evaluate params, or after
# `<task>.train` changed, is legitimate; the training code and the inputs' hashes are the train
# stage's to check (train/loop.py fingerprint).
NOT_WEIGHTS = ("evaluate", "train", "code", "inputs")


def config_differences(fingerprint: str | None, config: dict, ignore: tuple[str, ...]) -> list[str]:
    """What differs between a checkpoint's recorded config and `config`, as readable items
    (top-level sections in `ignore`, and names derived from the rest, are not compared)."""
    skip = lambda k: k.split(".")[0] in ignore or k in ("name", "gating")  # noqa: E731
    theirs = _flat(json.loads(fingerprint)) if isinstance(fingerprint, str) else {}
    ours = _flat(json.loads(config_fingerprint(config)))
    return [
        f"{k} {theirs.get(k)!r} in the checkpoint vs {ours.get(k)!r} now"
        for k in sorted(set(theirs) | set(ours))
        if theirs.get(k) != ours.get(k) and not skip(k)
    ]


def load_model_state(
    model: torch.nn.Module,
    state: dict,
    path: str | Path,
    config: dict | None = None,
    ignore: tuple[str, ...] = NOT_WEIGHTS,
) -> None:
    """Load weights, explaining a checkpoint that belongs to another model size or variant.

    `ignore`: top-level config sections that may differ (evaluation ignores evaluate and train)."""
    diff = config_differences(state.get("config"), config, ignore) if config is not None else []
    if diff:
        shown = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
        raise CheckpointError(
            f"checkpoint {path} belongs to another variant ({shown}): point --models-dir at this "
            "variant's directory, or use the flags/params it was trained with"
        )
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise CheckpointError(
            f"checkpoint {path} does not fit this model ({detail[:160]}): it belongs to another model size or variant"
        ) from None
