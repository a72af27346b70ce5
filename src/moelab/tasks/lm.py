"""Language modelling: random windows of the token stream for training, every window for evaluation."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config.schema import DataParams, EvalParams, allowed, at_least
from ..errors import DataError
from ..models.lm import IGNORE, DecoderLM, causal_moe
from .base import SPLITS, TASKS, Metric, Task, no_progress, on_device

EOS_CHAR = "\n"  # a document break, in the text bits per character are counted over


def lm_numbers(prefix: str, nll: float, tokens: int, characters: int) -> dict:
    """loss (nats/token), perplexity and bits per character of a total NLL (nats) over `tokens` targets."""
    loss = nll / max(tokens, 1)
    return {
        f"{prefix}loss": loss,
        f"{prefix}ppl": math.exp(loss),
        f"{prefix}bpc": nll / math.log(2) / max(characters, 1),
        f"{prefix}tokens": int(tokens),
    }


@dataclass(frozen=True)
class LMData(DataParams):
    text_column: str = "text"
    seq_len: int = at_least(2, default=64, note="tokens per training sequence (the model's context)")


@dataclass(frozen=True)
class LMEval(EvalParams):
    sample_tokens: int = at_least(0, default=48)
    temperature: float = at_least(0, default=0.8, note="0: greedy")
    sampling_top_k: int = at_least(0, default=40, note="sample among the k most likely tokens; 0: all")
    top_p: float = allowed(0, 1, lo_open=True, default=0.95, note="nucleus sampling")


@TASKS.register("lm")
class LMTask(Task):
    data_params, eval_params = LMData, LMEval
    metrics = (
        Metric("ppl", "perplexity", False),
        Metric("bpc", "bits per character", False),
        Metric("loss", "loss (nats/token)", False),
    )
    count_key = "tokens"

    def __init__(self, run, data_dir: Path):
        super().__init__(run, data_dir)
        from ..data.tokenizer import load_checked_tokenizer, special_id

        self.tokenizer = load_checked_tokenizer(self.data_dir, self.redo)
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.eos = special_id(self.tokenizer, "<eos>")
        self.seq_len = run.data.seq_len
        self._streams: dict[str, torch.Tensor] = {}
        self._characters: dict[str, int] = {}
        self._routed = None

    @classmethod
    def moe_configs(cls, run):
        return [causal_moe(run.model, run.data.seq_len)] if run.model.moe is not None else []

    @staticmethod
    def prepare(data: LMData, out: Path, seed: int = 0) -> dict:
        """Each split becomes one stream of token ids: documents joined by <eos>."""
        from ..data.corpora import lm_splits
        from ..data.prepare import save_array
        from ..data.tokenizer import special_id, train_bpe

        splits = lm_splits(
            data.source,
            text_column=data.text_column,
            max_records=data.max_records,
            seed=seed,
            val_frac=data.val_frac,
            test_frac=data.test_frac,
        )
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

    # ---------------------------------------------------------------- data
    def check_data(self) -> None:
        """Load and validate every split, so a broken file fails before anything is written."""
        for split in SPLITS:
            self.stream(split)

    def stream(self, split: str) -> torch.Tensor:
        """The split's token ids [n] (int64), validated against the tokenizer on first use."""
        if split not in self._streams:
            self._streams[split] = torch.from_numpy(self._load_ids(split).astype(np.int64))
        return self._streams[split]

    def _load_ids(self, split: str) -> np.ndarray:
        from ..data.prepare import load_array

        path = self.data_dir / f"{split}.npy"
        ids = load_array(path, self.redo)
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise DataError(
                f"{path} holds a {ids.dtype} array of shape {ids.shape}, not a 1-D stream of token ids: {self.redo}"
            )
        if ids.size < 2:
            raise DataError(
                f"{path} holds {ids.size} tokens: the {split} split is empty; use a larger corpus "
                f"({self.name}.data.source / max_records / val_frac / test_frac) and {self.redo}"
            )
        if int(ids.max()) >= self.vocab_size or int(ids.min()) < 0:
            raise DataError(
                f"{path} has token ids outside the tokenizer's vocabulary of {self.vocab_size}: "
                f"the data and tokenizer.json are from different prepare runs; {self.redo}"
            )
        return ids

    def build_model(self) -> DecoderLM:
        return DecoderLM(self.vocab_size, self.seq_len, self.run.model)

    def train_batch(self, generator: torch.Generator, batch_size: int) -> dict:
        """batch_size random windows of seq_len + 1 tokens; the draw advances `generator` (resumable)."""
        ids = self.stream("train")
        span = min(self.seq_len + 1, ids.numel())
        starts = torch.randint(0, ids.numel() - span + 1, (batch_size,), generator=generator)
        windows = torch.stack([ids[s : s + span] for s in starts.tolist()])
        return {"input_ids": windows[:, :-1], "targets": windows[:, 1:]}

    def eval_batches(self, split: str, batch_size: int, max_batches: int | None = None) -> Iterator[dict]:
        """Non-overlapping windows covering the split once; the last is right-padded (padding targets = IGNORE)."""
        ids = self.stream(split)
        n_windows = (ids.numel() - 1 + self.seq_len - 1) // self.seq_len
        for b, first in enumerate(range(0, n_windows, batch_size)):
            if max_batches is not None and b >= max_batches:
                return
            rows = range(first, min(first + batch_size, n_windows))
            inputs = torch.full((len(rows), self.seq_len), self.eos, dtype=torch.long)
            targets = torch.full((len(rows), self.seq_len), IGNORE, dtype=torch.long)
            for r, w in enumerate(rows):
                chunk = ids[w * self.seq_len : w * self.seq_len + self.seq_len + 1]
                inputs[r, : chunk.numel() - 1] = chunk[:-1]
                targets[r, : chunk.numel() - 1] = chunk[1:]
            yield {"input_ids": inputs, "targets": targets}

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    # ---------------------------------------------------------------- evaluation
    def evaluate_split(self, model, split: str, progress: bool) -> dict:
        """Perplexity = exp(total NLL / total target tokens) over every window of the split, and bits per
        character = total NLL / ln 2 / characters of those targets' text."""
        from tqdm.auto import tqdm

        ev = self.run.evaluate
        layers = model.moe_layers() if hasattr(model, "moe_layers") else []
        last = layers[-1] if layers else None
        nll, tokens = 0.0, 0
        for batch in tqdm(
            self.eval_batches(split, ev.batch_size, ev.max_batches), desc=f"eval {split}", **no_progress(progress)
        ):
            batch = on_device(batch, model)
            logits = model(batch["input_ids"], batch["targets"] != IGNORE).float()
            nll += (
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    batch["targets"].reshape(-1),
                    ignore_index=IGNORE,
                    reduction="sum",
                )
                .double()
                .item()
            )
            tokens += int((batch["targets"] != IGNORE).sum())
            if split == "test" and last is not None and last.last_assignment is not None:
                self._routed = self._count_routed(self._routed, batch, last.last_assignment, last.cfg.n_routed)
        return {k.removeprefix("_"): v for k, v in lm_numbers("_", nll, tokens, self.characters(split)).items()}

    def extra_metrics(self, model) -> dict:
        layers = model.moe_layers() if hasattr(model, "moe_layers") else []
        if self._routed is None or not layers:
            return {}
        return {"specialisation": self.specialisation(self._routed, layer=len(layers) - 1)}

    def _count_routed(self, routed, batch: dict, assignment, n_experts: int):
        ids = batch["input_ids"].reshape(-1).cpu()
        position, expert = (a.cpu() for a in assignment)
        by_expert = torch.bincount(
            expert * self.vocab_size + ids[position], minlength=n_experts * self.vocab_size
        ).reshape(n_experts, self.vocab_size)
        real = (batch["targets"] != IGNORE).reshape(-1).cpu()
        occurrences = torch.bincount(ids[real], minlength=self.vocab_size)
        return (by_expert, occurrences) if routed is None else (routed[0] + by_expert, routed[1] + occurrences)

    def specialisation(self, routed, layer: int, top: int = 8) -> dict:
        """Per expert of MoE layer `layer`: the `top` input tokens it computed most often on the test
        split, each with its count and the share of that token's occurrences this expert computed
        (1.0 for every expert under soft softmax routing; a specialised expert has shares near 1)."""
        by_expert, occurrences = routed
        experts = []
        for e, counts in enumerate(by_expert):
            k = min(top, int((counts > 0).sum()))
            best = counts.topk(k).indices.tolist() if k else []
            experts.append(
                {
                    "expert": e,
                    "tokens": int(counts.sum()),
                    "top": [
                        {
                            "token": self.tokenizer.decode([t], skip_special_tokens=False),
                            "count": int(counts[t]),
                            "share": round(float(counts[t]) / max(float(occurrences[t]), 1.0), 4),
                        }
                        for t in best
                    ],
                }
            )
        return {"layer": layer, "split": "test", "experts": experts}

    def samples_markdown(self, model) -> str:
        ev = self.run.evaluate
        device = next(model.parameters()).device
        gen = torch.Generator(device=device).manual_seed(self.run.seed)
        ids = self.stream("test")
        lines = [
            f"# Samples: {self.run.task}/{self.run.name}/seed {self.run.seed}",
            f"temperature {ev.temperature}, sampling top-k {ev.sampling_top_k}, top-p {ev.top_p}\n",
        ]
        prompt_len = 8
        for i in range(ev.samples):
            start = (i * 997) % max(1, ids.numel() - prompt_len)
            prompt = ids[start : start + prompt_len].unsqueeze(0).to(device)
            out = model.generate(prompt, ev.sample_tokens, ev.temperature, ev.sampling_top_k, ev.top_p, gen)
            lines.append(
                f"## Sample {i + 1}\n**prompt:** {self.decode(prompt[0].tolist())!r}\n\n"
                f"```\n{self.decode(out[0].tolist())}\n```\n"
            )
        return "\n".join(lines)

    # ---------------------------------------------------------------- references
    def scored_targets(self, split: str) -> torch.Tensor:
        """The ids the models are scored on (every window's targets, in order): ids[1 : windows * T + 1]."""
        ev, ids = self.run.evaluate, self.stream(split)
        windows = (ids.numel() - 1 + self.seq_len - 1) // self.seq_len
        if ev.max_batches is not None:  # the same windows the models are scored on
            windows = min(windows, ev.max_batches * ev.batch_size)
        return ids[1 : windows * self.seq_len + 1]

    def text(self, ids) -> str:
        """The text of a stream of ids, each <eos> (a document break) as one character, EOS_CHAR."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        pieces, start = [], 0
        for end in [i for i, t in enumerate(ids) if t == self.eos] + [len(ids)]:
            pieces.append(self.tokenizer.decode(ids[start:end]))
            start = end + 1
        return EOS_CHAR.join(pieces)

    def characters(self, split: str) -> int:
        """Characters of the scored targets' text: the denominator of bits per character."""
        if split not in self._characters:
            self._characters[split] = len(self.text(self.scored_targets(split)))
        return self._characters[split]

    def references(self, progress: bool = False) -> dict[str, dict]:
        """On the same test and validation targets as the models: a unigram model (trivial: no context),
        interpolated Kneser-Ney token bigram and trigram (ngram.py, fitted on the training split's ids), and a
        Kneser-Ney character 5-gram on the training text (bits per character only: it has no tokens).
        Bits per character (bpc) = total NLL / ln 2 / characters of the targets' text, for every row and
        every model: independent of the tokenizer, so comparable across vocabularies."""
        from ..ngram import KneserNey

        train = self.stream("train").numpy()
        counts = torch.bincount(self.stream("train"), minlength=self.vocab_size).double() + 1.0
        unigram = (counts / counts.sum()).log().numpy()
        out = {
            "unigram": {
                "description": "unigram: add-one smoothed token frequencies of the training split, no context",
                "trivial": True,
                "role": "trivial",
            }
        }
        kn = {order: KneserNey(order, self.vocab_size).fit(train) for order in (2, 3)}
        for order, model in kn.items():
            out[f"kn-{'bigram' if order == 2 else 'trigram'}"] = {
                "description": f"token n-gram: {model.describe()}",
                "trivial": False,
                "role": "bar" if order == 2 else "context",  # the bigram: the bar an LM must beat to be in regime
            }
        chars = self._character_model()
        out["kn-char-5gram"] = {
            "description": f"character n-gram: {chars[0].describe()} over the training text",
            "trivial": False,
            "role": "context",
        }
        for split, prefix in (("validation", "val_"), ("test", "test_")):
            targets = self.scored_targets(split)
            n_chars = self.characters(split)
            first = int(self.stream(split).numel() - targets.numel())  # the position of the first target
            stream = self.stream(split).numpy()[: first + targets.numel()]
            nlls = {"unigram": -float(unigram[targets.numpy()].sum())}
            nlls.update(
                {name: model.nll(stream, start=first) for name, model in zip(("kn-bigram", "kn-trigram"), kn.values())}
            )
            for name, nll in nlls.items():
                out[name].update(lm_numbers(prefix, nll, targets.numel(), n_chars))
            out["kn-char-5gram"].update(self._character_bits(chars, split, prefix))
        return out

    def _character_model(self):
        """(KneserNey 5-gram over characters, {char: id}) of the training split's text; id 0: unseen characters."""
        from ..ngram import KneserNey

        text = self.text(self.stream("train"))
        alphabet = {c: i + 1 for i, c in enumerate(sorted(set(text)))}
        ids = np.fromiter((alphabet[c] for c in text), dtype=np.int64, count=len(text))
        return KneserNey(5, len(alphabet) + 1).fit(ids), alphabet

    def _character_bits(self, chars, split: str, prefix: str) -> dict:
        model, alphabet = chars
        ids = self.stream(split)
        context = self.text(ids[:1])  # the first id is context only, as for the models
        text = self.text(ids[: 1 + self.scored_targets(split).numel()])
        coded = np.fromiter((alphabet.get(c, 0) for c in text), dtype=np.int64, count=len(text))
        nll = model.nll(coded, start=len(context))  # the characters of the targets, after the first id's
        return {f"{prefix}bpc": nll / math.log(2) / max(len(text) - len(context), 1)}

    # ---------------------------------------------------------------- cost
    def flops_per_token(self, experts_per_token: list[float] | None = None, context: int | None = None) -> dict:
        """Analytic forward FLOPs per token; experts_per_token: realised per MoE block (default k or E)."""
        from ..flops import decoder_flops_per_token

        return decoder_flops_per_token(self.run.model, self.vocab_size, context or self.seq_len, experts_per_token)

    def bench_batch(self, generator: torch.Generator, batch_size: int) -> tuple[dict, int]:
        batch = self.train_batch(generator, batch_size)  # LM windows have no padding
        return batch, batch["input_ids"].numel()

    def batch_flops_per_token(self, batch: dict, experts_per_token: list[float] | None) -> dict:
        return self.flops_per_token(experts_per_token, batch["input_ids"].shape[1])
