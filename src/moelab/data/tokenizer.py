"""Offline tokenizers: a byte-level BPE trained on the training split with HF `tokenizers`."""
from __future__ import annotations

from pathlib import Path

SPECIALS = ["<pad>", "<eos>", "<unk>", "<bos>", "<sep>"]


def train_bpe(texts: list[str], vocab_size: int, path: str | Path):
    """Train a byte-level BPE on `texts` and save it as tokenizer.json at `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return tok


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer {path} not found: run the prepare stage first (dvc repro prepare)")
    return Tokenizer.from_file(str(path))


def special_id(tok, name: str) -> int:
    idx = tok.token_to_id(name)
    if idx is None:
        raise ValueError(f"tokenizer has no special token {name}")
    return idx
