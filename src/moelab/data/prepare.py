"""The prepare stage: split a corpus, train a tokenizer on its training split, write token ids."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import DataParams
from ..io import atomic_write_bytes, write_metrics
from .tokenizer import special_id, train_bpe

SPLITS = ("train", "validation", "test")


def save_array(path: Path, array: np.ndarray) -> None:
    import io
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def prepare_lm(data: DataParams, out: Path, seed: int = 0) -> dict:
    """Each split becomes one stream of token ids: documents joined by <eos>."""
    from .corpora import lm_splits
    splits = lm_splits(data.source, text_column=data.text_column, max_records=data.max_records,
                       seed=seed, val_frac=data.val_frac, test_frac=data.test_frac)
    tok = train_bpe(splits["train"], data.vocab_size, out / "tokenizer.json")
    eos = special_id(tok, "<eos>")
    stats = {"vocab_size": tok.get_vocab_size()}
    for split in SPLITS:
        ids = []
        for enc in tok.encode_batch(splits[split]):
            ids.extend(enc.ids)
            ids.append(eos)
        save_array(out / f"{split}.npy", np.asarray(ids, dtype=np.int32))
        stats[f"{split}_documents"] = len(splits[split])
        stats[f"{split}_tokens"] = len(ids)
    return stats


PREPARERS = {"lm": prepare_lm}


def prepare(task: str, data: DataParams, out: str | Path, metrics_path: str | Path | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stats = PREPARERS[task](data, out)
    (out / "data_params.json").write_text(json.dumps(data.__dict__, indent=2))
    if metrics_path:
        write_metrics(metrics_path, stats, {"task": task, "data": data.__dict__})
    return stats
