"""The prepare stage: split a corpus, train a tokenizer on its training split, write token ids."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import DataParams
from ..io import atomic_write_bytes, atomic_write_text, write_metrics
from .corpora import SPLITS
from .tokenizer import special_id, train_bpe


def save_array(path: Path, array: np.ndarray) -> None:
    import io
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    import io
    buf = io.BytesIO()
    np.savez(buf, **arrays)
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


SUMMARIZE_PREFIX = "summarize: "


def encode_truncated(tok, texts: list[str], max_len: int, eos: int) -> list[list[int]]:
    """BPE ids of each text, cut to max_len - 1 tokens, then <eos>."""
    return [enc.ids[:max_len - 1] + [eos] for enc in tok.encode_batch(texts)]


def prepare_summarization(data: DataParams, out: Path, seed: int = 0) -> dict:
    """Per split: raw (document, summary) texts in {split}.json, BPE ids in {split}.npz.

    The BPE (<pad>=0 is decoder start and padding, <eos>=1) is trained on train documents and
    summaries. Sources are "summarize: " + document, cut to max_source_len; targets to max_target_len.
    A pretrained Switch run re-tokenises the raw texts with its own tokenizer.
    """
    from .corpora import summarization_splits
    splits = summarization_splits(data.source, document_column=data.document_column,
                                  summary_column=data.summary_column, max_records=data.max_records,
                                  seed=seed, val_frac=data.val_frac, test_frac=data.test_frac)
    train_texts = [t for pair in splits["train"] for t in pair]
    tok = train_bpe(train_texts, data.vocab_size, out / "tokenizer.json")
    if special_id(tok, "<pad>") != 0:
        raise ValueError("the summarization BPE must have <pad> = 0 (decoder start)")
    eos = special_id(tok, "<eos>")
    stats = {"vocab_size": tok.get_vocab_size()}
    for split in SPLITS:
        docs = [d for d, _ in splits[split]]
        sums = [s for _, s in splits[split]]
        atomic_write_bytes(out / f"{split}.json", json.dumps({"documents": docs, "summaries": sums}).encode())
        src = encode_truncated(tok, [SUMMARIZE_PREFIX + d for d in docs], data.max_source_len, eos)
        tgt = encode_truncated(tok, sums, data.max_target_len, eos)
        save_npz(out / f"{split}.npz", **_ragged_arrays("source", src), **_ragged_arrays("target", tgt))
        stats[f"{split}_pairs"] = len(docs)
        stats[f"{split}_source_tokens"] = sum(map(len, src))
        stats[f"{split}_target_tokens"] = sum(map(len, tgt))
    return stats


def prepare_classification(data: DataParams, out: Path, seed: int = 0) -> dict:
    """Per split: {split}.npz with ragged BPE ids (cut to seq_len) and labels; labels.json; texts."""
    from .corpora import classification_splits
    splits, names = classification_splits(data.source, text_column=data.text_column,
                                          label_column=data.label_column, max_records=data.max_records,
                                          seed=seed, val_frac=data.val_frac, test_frac=data.test_frac)
    tok = train_bpe([t for t, _ in splits["train"]], data.vocab_size, out / "tokenizer.json")
    atomic_write_text(out / "labels.json", json.dumps(names))
    stats = {"vocab_size": tok.get_vocab_size(), "labels": names}
    for split in SPLITS:
        texts = [t for t, _ in splits[split]]
        ids = [enc.ids[:data.seq_len] or [special_id(tok, "<unk>")] for enc in tok.encode_batch(texts)]
        labels = np.asarray([y for _, y in splits[split]], dtype=np.int64)
        save_npz(out / f"{split}.npz", **_ragged_arrays("text", ids), labels=labels)
        atomic_write_bytes(out / f"{split}.json", json.dumps({"texts": texts}).encode())
        stats[f"{split}_examples"] = len(texts)
        stats[f"{split}_tokens"] = sum(map(len, ids))
    return stats


def _ragged_arrays(name: str, seqs: list[list[int]]) -> dict[str, np.ndarray]:
    """{name}_ids: all tokens (int32), {name}_offsets: [len(seqs) + 1] start of each sequence."""
    offsets = np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64)
    return {f"{name}_ids": np.asarray([t for s in seqs for t in s], dtype=np.int32), f"{name}_offsets": offsets}


def load_ragged_npz(path: Path) -> dict[str, list | np.ndarray]:
    """Inverse of _ragged_arrays for every `X_ids`/`X_offsets` pair of an .npz; other arrays as they are."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the prepare stage first")
    out = {}
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for key, value in arrays.items():
        if key.endswith("_ids"):
            name, offsets = key[:-4], arrays[key[:-4] + "_offsets"]
            out[name] = [value[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
        elif not key.endswith("_offsets"):
            out[key] = value
    return out


PREPARERS = {"lm": prepare_lm, "summarization": prepare_summarization, "classification": prepare_classification}


def prepare(task: str, data: DataParams, out: str | Path, metrics_path: str | Path | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stats = PREPARERS[task](data, out)
    (out / "data_params.json").write_text(json.dumps(data.__dict__, indent=2))
    if metrics_path:
        write_metrics(metrics_path, stats, {"task": task, "data": data.__dict__})
    return stats
