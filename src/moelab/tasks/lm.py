"""Language modelling: random windows of the token stream for training, every window for evaluation."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..config import RunConfig
from ..data.corpora import SPLITS, DataError
from ..data.tokenizer import load_tokenizer, special_id
from ..models.lm import IGNORE, DecoderLM
from . import prepare_hint


class LMTask:
    name = "lm"
    quality_metric = "test_ppl"

    def __init__(self, run: RunConfig, data_dir: Path):
        self.run, self.data_dir = run, data_dir
        self.redo = prepare_hint(self.name, data_dir)
        self.tokenizer = self._load_tokenizer(data_dir / "tokenizer.json")
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.eos = special_id(self.tokenizer, "<eos>")
        self.pad = special_id(self.tokenizer, "<pad>")
        self.seq_len = run.data.seq_len
        self._streams: dict[str, torch.Tensor] = {}

    def _load_tokenizer(self, path: Path):
        if not path.is_file():
            raise DataError(f"{path} not found (data not prepared): {self.redo}")
        try:
            return load_tokenizer(path)
        except Exception as err:   # noqa: BLE001 - any parse failure means the same thing
            raise DataError(f"{path} is not a readable tokenizer ({' '.join(str(err).split())[:120]}): {self.redo}") from None

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
        path = self.data_dir / f"{split}.npy"
        if not path.is_file():
            raise DataError(f"{path} not found (data not prepared): {self.redo}")
        try:
            ids = np.load(path, allow_pickle=False)
        except Exception as err:   # noqa: BLE001 - truncated, not .npy, or an object array
            raise DataError(f"{path} is not a readable token array ({' '.join(str(err).split())[:120]}): {self.redo}") from None
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise DataError(f"{path} holds a {ids.dtype} array of shape {ids.shape}, not a 1-D stream of token ids: {self.redo}")
        if ids.size < 2:
            raise DataError(f"{path} holds {ids.size} tokens: the {split} split is empty; use a larger corpus "
                            f"({self.name}.data.source / max_records / val_frac / test_frac) and {self.redo}")
        if int(ids.max()) >= self.vocab_size or int(ids.min()) < 0:
            raise DataError(f"{path} has token ids outside the tokenizer's vocabulary of {self.vocab_size}: "
                            f"the data and tokenizer.json are from different prepare runs; {self.redo}")
        return ids

    def build_model(self) -> DecoderLM:
        return DecoderLM(self.vocab_size, self.seq_len, self.run)

    def train_batch(self, generator: torch.Generator, batch_size: int) -> dict:
        """batch_size random windows of seq_len + 1 tokens; the draw advances `generator` (resumable)."""
        ids = self.stream("train")
        span = min(self.seq_len + 1, ids.numel())
        starts = torch.randint(0, ids.numel() - span + 1, (batch_size,), generator=generator)
        windows = torch.stack([ids[s:s + span] for s in starts.tolist()])
        return {"input_ids": windows[:, :-1], "targets": windows[:, 1:]}

    def eval_batches(self, split: str, batch_size: int, max_batches: int | None = None) -> Iterator[dict]:
        """Non-overlapping windows covering the split once; the last is right-padded (padding targets = IGNORE)."""
        ids = self.stream(split)
        n_windows = (ids.numel() - 1 + self.seq_len - 1) // self.seq_len
        for b, first in enumerate(range(0, n_windows, batch_size)):
            if max_batches is not None and b >= max_batches:
                return
            rows = range(first, min(first + batch_size, n_windows))
            inputs = torch.full((len(rows), self.seq_len), self.pad, dtype=torch.long)
            targets = torch.full((len(rows), self.seq_len), IGNORE, dtype=torch.long)
            for r, w in enumerate(rows):
                chunk = ids[w * self.seq_len: w * self.seq_len + self.seq_len + 1]
                inputs[r, :chunk.numel() - 1] = chunk[:-1]
                targets[r, :chunk.numel() - 1] = chunk[1:]
            yield {"input_ids": inputs, "targets": targets}

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model, collector, progress: bool = True) -> tuple[dict, str]:
        """Token-weighted perplexity on validation and test; routing stats on test; samples."""
        from tqdm.auto import tqdm
        ev = self.run.evaluate
        metrics = {}
        moe_layers = model.moe_layers() if hasattr(model, "moe_layers") else []
        last = moe_layers[-1] if moe_layers else None
        routed = None      # test split, last MoE layer: ([E, V] token id -> expert counts, [V] occurrences)
        for split, short in (("validation", "val"), ("test", "test")):
            batches = self.eval_batches(split, ev.batch_size, ev.max_batches)
            nll, tokens = 0.0, 0
            ctx = collector.collecting() if split == "test" else nullcontext()
            with ctx:
                for batch in tqdm(batches, desc=f"eval {split}", disable=not progress, mininterval=1.0):
                    loss, info = model.loss(batch)
                    nll += loss.item() * info["tokens"]
                    tokens += info["tokens"]
                    if split == "test" and last is not None and last.last_assignment is not None:
                        routed = self._count_routed(routed, batch, last.last_assignment, last.cfg.n_experts)
            metrics[f"{short}_loss"] = nll / max(tokens, 1)
            metrics[f"{short}_ppl"] = float(torch.tensor(metrics[f"{short}_loss"]).exp())
            metrics[f"{short}_tokens"] = tokens
        routing = collector.summary()
        realised = [l["experts_per_token"] for l in routing["layers"]] or None
        metrics["flops_per_token"] = self.flops_per_token(realised)["total"]
        metrics.update(routing)
        if routed is not None:
            metrics["specialisation"] = self.specialisation(routed, layer=len(moe_layers) - 1)
        return metrics, self.samples(model)

    def _count_routed(self, routed, batch: dict, assignment, n_experts: int):
        ids = batch["input_ids"].reshape(-1).cpu()
        position, expert = (a.cpu() for a in assignment)
        by_expert = torch.bincount(expert * self.vocab_size + ids[position],
                                   minlength=n_experts * self.vocab_size).reshape(n_experts, self.vocab_size)
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
            experts.append({"expert": e, "tokens": int(counts.sum()), "top": [
                {"token": self.tokenizer.decode([t], skip_special_tokens=False), "count": int(counts[t]),
                 "share": round(float(counts[t]) / max(float(occurrences[t]), 1.0), 4)} for t in best]})
        return {"layer": layer, "split": "test", "experts": experts}

    def flops_per_token(self, experts_per_token: list[float] | None = None, context: int | None = None) -> dict:
        """Analytic forward FLOPs per token; experts_per_token: realised per MoE block (default k or E)."""
        from ..flops import decoder_flops_per_token
        return decoder_flops_per_token(self.run, self.vocab_size, context or self.seq_len, experts_per_token)

    def bench_batch(self, generator: torch.Generator, batch_size: int) -> tuple[dict, int]:
        """A training batch with no padding (LM windows have none) and its token count."""
        batch = self.train_batch(generator, batch_size)
        return batch, batch["input_ids"].numel()

    def batch_flops_per_token(self, batch: dict, experts_per_token: list[float] | None) -> dict:
        return self.flops_per_token(experts_per_token, batch["input_ids"].shape[1])

    def samples(self, model) -> str:
        ev = self.run.evaluate
        gen = torch.Generator().manual_seed(self.run.seed)
        ids = self.stream("test")
        lines = [f"# Samples: {self.run.task}/{self.run.name}/seed {self.run.seed}",
                 f"temperature {ev.temperature}, top-k {ev.top_k}, top-p {ev.top_p}\n"]
        prompt_len = 8
        for i in range(ev.samples):
            start = (i * 997) % max(1, ids.numel() - prompt_len)
            prompt = ids[start:start + prompt_len].unsqueeze(0)
            out = model.generate(prompt, ev.sample_tokens, ev.temperature, ev.top_k, ev.top_p, gen)[0].tolist()
            lines.append(f"## Sample {i + 1}\n**prompt:** {self.decode(prompt[0].tolist())!r}\n\n"
                         f"```\n{self.decode(out)}\n```\n")
        return "\n".join(lines)

