"""Offline tokenizers: a byte-level BPE trained on the training split with HF `tokenizers`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import DataError

SPECIALS = ["<pad>", "<eos>", "<unk>", "<bos>", "<sep>"]
MANIFEST = "manifest.json"  # written last by prepare: the tokenizer's hash the token ids were made with


def train_bpe(texts: list[str], vocab_size: int, path: str | Path):
    """Train a byte-level BPE on `texts` and save it as tokenizer.json at `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return tok


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_checked_tokenizer(data_dir: Path, redo: str):
    """tokenizer.json of a prepared directory, after checking it is the one its token ids were made
    with (the hash prepare recorded in manifest.json): a mismatch is one DataError line."""
    from tokenizers import Tokenizer

    path, manifest = data_dir / "tokenizer.json", data_dir / MANIFEST
    for needed in (path, manifest):
        if not needed.is_file():
            raise DataError(f"{needed} not found (data not prepared, or prepared by an older moelab): {redo}")
    try:
        recorded = json.loads(manifest.read_text())["tokenizer_sha256"]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{manifest} is not a readable prepare manifest: {redo}") from None
    if file_sha256(path) != recorded:
        raise DataError(
            f"{path} is not the tokenizer the token ids in {data_dir} were made with (its hash differs "
            f"from {manifest}): {redo}"
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # noqa: BLE001 - any parse failure means the same thing
        raise DataError(f"{path} is not a readable tokenizer ({' '.join(str(err).split())[:120]}): {redo}") from None


def special_id(tok, name: str) -> int:
    idx = tok.token_to_id(name)
    if idx is None:
        raise DataError(f"the tokenizer has no special token {name}: re-run prepare")
    return idx
