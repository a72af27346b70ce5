"""Stand-ins for what the hub would give: a checkpoint at the published sizes with random weights, a T5-shaped
tokenizer, SAMSum's schema filled with bundled text. Each is said to be one, loudly."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

from .preset import T5_TOKENIZER_SIZE, PaperSmokeError

STAND_IN_BANNER = (
    "*** {name}: STAND-IN. No checkpoint is reachable (hub offline, none in the HF cache, no --checkpoint): "
    "RANDOM weights at the published sizes and a byte-level BPE trained on moelab's bundled corpora in place of "
    "T5's SentencePiece. Time, memory and FLOPs are the real model's; ROUGE measures nothing. ***"
)


def write_stand_in_samsum(out: Path, rows: dict[str, int], pairs_per_dialogue: int = 24) -> Path:
    """A SAMSum-schema dataset (id, dialogue, summary; train / validation / test JSON lines) made of the bundled
    Debian descriptions: each "dialogue" is `pairs_per_dialogue` package descriptions, one per line, and its
    summary their one-line synopses, so every source and target fills the preset's 512 / 128 tokens (the
    longest batch the preset's shapes allow). Its text is no dialogue; its schema and lengths are SAMSum's."""
    from ..data.corpora import summarization_splits
    from ..io import atomic_write_text

    pairs = summarization_splits("debian-descriptions", val_frac=0.05, test_frac=0.05)["train"]
    need = sum(rows.values()) * pairs_per_dialogue
    if len(pairs) < need:
        raise PaperSmokeError(f"the bundled Debian corpus has {len(pairs)} training pairs, the stand-in needs {need}")
    start = 0
    for split, n in rows.items():
        lines = []
        for i in range(n):
            chunk = pairs[start : start + pairs_per_dialogue]
            start += pairs_per_dialogue
            dialogue = "\r\n".join(doc for doc, _ in chunk)  # SAMSum separates turns with \r\n
            summary = " ".join(s.rstrip(".") + "." for _, s in chunk)
            lines.append(json.dumps({"id": f"{split}-{i}", "dialogue": dialogue, "summary": summary}))
        atomic_write_text(out / f"{split}.jsonl", "\n".join(lines) + "\n")
    return out


def bundled_texts() -> list[str]:
    """Every text of the three bundled corpora (what the stand-in tokenizer is trained on)."""
    from ..data.corpora import classification_splits, lm_splits, summarization_splits

    lm = lm_splits("shakespeare")
    summ = summarization_splits("debian-descriptions")
    cls, _ = classification_splits("rotten-tomatoes")
    return (
        [t for split in lm.values() for t in split]
        + [t for split in summ.values() for pair in split for t in pair]
        + [t for split in cls.values() for t, _ in split]
    )


def stand_in_tokenizer(texts: list[str], out: Path, vocab_size: int = T5_TOKENIZER_SIZE):
    """A T5-shaped fast tokenizer (<pad> = 0 = decoder start, <eos> = 1 appended to every text, <unk> = 2, ids
    below the model's 32,128) in place of T5's SentencePiece, which is not available offline: moelab's byte-level
    BPE trained on `texts`, wrapped and written with save_pretrained so AutoTokenizer loads it from `out`."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    from ..data.tokenizer import train_bpe

    tok = train_bpe(texts, vocab_size, out / "bpe.json")
    tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    if (fast.pad_token_id, fast.eos_token_id, fast.unk_token_id) != (0, 1, 2):
        raise PaperSmokeError("the stand-in tokenizer must have <pad> = 0, <eos> = 1, <unk> = 2, as T5's has")
    fast.save_pretrained(out)
    (out / "bpe.json").unlink()
    return fast


def cached_checkpoint(name: str) -> str | None:
    """google/<name> from the local HF cache (never the network), if it is there with safetensors weights."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(f"google/{name}", local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or no huggingface_hub): a stand-in is built instead
        return None
    return str(path) if any(path.glob("*.safetensors")) else None


def build_stand_in(config: dict, checkpoint: Path, seed: int) -> float:
    """Random weights at the config's sizes (HF's own init), written with save_pretrained (safetensors) into
    `checkpoint`, which already holds the stand-in tokenizer. Returns the seconds it took."""
    import torch
    from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = SwitchTransformersForConditionalGeneration(SwitchTransformersConfig.from_dict(config))
    model.save_pretrained(checkpoint, safe_serialization=True)
    del model
    gc.collect()
    return time.perf_counter() - start


def stand_in_notes(checkpoints: dict, stand_in_data: bool) -> dict:
    notes = {
        name: (
            f"checkpoint {path}"
            if path
            else "random weights (HF init) at the published sizes + byte-level BPE of 32,100 tokens trained on "
            "the bundled corpora (T5's SentencePiece is not available offline)"
        )
        for name, path in checkpoints.items()
    }
    if stand_in_data:
        notes["samsum"] = (
            "SAMSum's schema (id, dialogue, summary) filled with bundled Debian descriptions: 24 per dialogue, "
            "their synopses as the summary (8 train, 2 validation, 2 test records)"
        )
    return notes
