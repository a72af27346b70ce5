"""Summarisation with a Switch Transformer whose sparse MLPs are moelab MoE layers.

Data comes from the prepare stage (data/prepare.py `prepare_summarization`): raw texts in
{split}.json and BPE ids in {split}.npz. With `pretrained` set, the raw texts are tokenised with
that checkpoint's own tokenizer (T5 SentencePiece) instead.
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..config import RunConfig
from ..data.prepare import SPLITS, SUMMARIZE_PREFIX, load_ragged_npz
from ..data.tokenizer import load_tokenizer, special_id
from ..models.lm import IGNORE
from ..models.switch import SwitchSeq2Seq, scratch_config

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def pad_batch(seqs: list, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D id sequences: ids [B, T_max] and mask [B, T_max] (True = real token)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        mask[r, :len(s)] = True
    return ids, mask


def row_batches(n: int, batch_size: int, max_batches: int | None = None) -> Iterator[list[int]]:
    """Consecutive row indices [0, n) in batches of batch_size; at most max_batches of them (None: all)."""
    for b, first in enumerate(range(0, n, batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        yield list(range(first, min(first + batch_size, n)))


class SplitsChecked:
    """For tasks whose splits load through self.split(name): check_data loads every one of them,
    so a missing or broken file fails before anything is written."""

    def check_data(self) -> None:
        for split in SPLITS:
            self.split(split)


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measure (0..1), Porter stemming; Lsum splits sentences on newlines."""
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)
        for key in ROUGE_KEYS:
            totals[key] += scores[key].fmeasure
    return {k: v / max(len(predictions), 1) for k, v in totals.items()}


def seq2seq_flops_per_token(cfg, n_source: int, n_target: int, router: str | None,
                            experts_per_token: list[float] | None) -> dict:
    """Forward matmul FLOPs (multiply-add = 2) of one (source, target) pair, divided by S + L tokens.

    With d = d_model, a = num_heads * d_kv, f = d_ff, S = n_source, L = n_target, V = vocab:
      encoder layer, per source token: q,k,v,o 4*2*d*a; scores + weighted values 2*2*S*a; FFN
      decoder layer, per target token: self q,k,v,o 4*2*d*a; self scores/values 2*2*L*a (full L x L);
                                       cross q,o 2*2*d*a; cross scores/values 2*2*S*a; FFN
                 and per source token: cross k,v 2*2*d*a
      FFN: dense 2*2*d*f; MoE: router 2*d*E (+ 2*d*d attention router) + k_realised * 2*2*d*f
      lm head per target token: 2*d*V
    Sparse layers follow HF's rule (layer i is sparse when step == 1 or i % step == 1; step <= 0: none).
    experts_per_token: one value per MoE layer, encoder layers first (default: all 1.0 = top-1).
    """
    d, a, f, e, v = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff, cfg.num_experts, cfg.vocab_size
    sparse = lambda i, step: step > 0 and (step == 1 or i % step == 1)  # noqa: E731
    enc_sparse = [sparse(i, cfg.encoder_sparse_step) for i in range(cfg.num_layers)]
    dec_sparse = [sparse(i, cfg.decoder_sparse_step) for i in range(cfg.num_decoder_layers)]
    ks = iter(experts_per_token or [1.0] * (sum(enc_sparse) + sum(dec_sparse)))
    router_flops = 2 * d * e + (2 * d * d if router == "attention" else 0)

    def ffn(is_sparse: bool) -> tuple[float, float, float]:   # (dense FFN, experts, router) FLOPs per token
        return (0, next(ks) * 4 * d * f, router_flops) if is_sparse else (4 * d * f, 0, 0)

    enc = [ffn(s) for s in enc_sparse]
    dec = [ffn(s) for s in dec_sparse]
    s_, l_ = n_source, n_target
    attention = (s_ * len(enc) * (8 * d * a + 4 * s_ * a)
                 + l_ * len(dec) * (8 * d * a + 4 * l_ * a + 4 * d * a + 4 * s_ * a) + s_ * len(dec) * 4 * d * a)
    dense_ffn, experts, router_total = (s_ * sum(x[i] for x in enc) + l_ * sum(x[i] for x in dec) for i in range(3))
    head = l_ * 2 * d * v
    n = s_ + l_
    out = {"attention": attention / n, "dense_ffn": dense_ffn / n, "experts": experts / n,
           "router": router_total / n, "head": head / n}
    out["total"] = sum(out.values())
    return out


class SummarizationTask(SplitsChecked):
    name = "summarization"
    quality_metric = "rougeL"

    def __init__(self, run: RunConfig, data_dir: Path):
        self.run, self.data_dir, self.data = run, data_dir, run.data
        self.pretrained = run.preset.pretrained
        if self.pretrained:
            from transformers import AutoConfig, AutoTokenizer
            self.hf_tokenizer = AutoTokenizer.from_pretrained(self.pretrained)
            self.pad, self.eos = self.hf_tokenizer.pad_token_id, self.hf_tokenizer.eos_token_id
            self.hf_config = AutoConfig.from_pretrained(self.pretrained)
            self.vocab_size = self.hf_config.vocab_size
        else:
            self.tokenizer = load_tokenizer(data_dir / "tokenizer.json")
            self.pad, self.eos = special_id(self.tokenizer, "<pad>"), special_id(self.tokenizer, "<eos>")
            self.vocab_size = self.tokenizer.get_vocab_size()
            self.hf_config = scratch_config(run, self.vocab_size, self.pad, self.eos)
        self._splits: dict[str, dict] = {}

    # ------------------------------------------------------------------ data
    def texts(self, split: str) -> dict[str, list[str]]:
        path = self.data_dir / f"{split}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run the prepare stage first")
        return json.loads(path.read_text())

    def split(self, split: str) -> dict:
        """{"source": [ids], "target": [ids]} of a split (ids: 1-D int arrays ending in eos)."""
        if split not in self._splits:
            if self.pretrained:
                raw = self.texts(split)
                enc = lambda xs, n: self.hf_tokenizer(xs, truncation=True, max_length=n)["input_ids"]  # noqa: E731
                self._splits[split] = {
                    "source": enc([SUMMARIZE_PREFIX + d for d in raw["documents"]], self.data.max_source_len),
                    "target": enc(raw["summaries"], self.data.max_target_len)}
            else:
                self._splits[split] = load_ragged_npz(self.data_dir / f"{split}.npz")
        return self._splits[split]

    def collate(self, split: str, rows: list[int]) -> dict:
        """input_ids/attention_mask [B, S_max], labels [B, L_max] (padding = IGNORE)."""
        data = self.split(split)
        src, src_mask = pad_batch([data["source"][i] for i in rows], self.pad)
        tgt, tgt_mask = pad_batch([data["target"][i] for i in rows], self.pad)
        return {"input_ids": src, "attention_mask": src_mask.long(), "labels": tgt.masked_fill(~tgt_mask, IGNORE)}

    def build_model(self) -> SwitchSeq2Seq:
        return SwitchSeq2Seq(self.run, self.vocab_size, self.pad, self.eos)

    def train_batch(self, generator: torch.Generator, batch_size: int) -> dict:
        """batch_size random pairs; the draw advances `generator` only (resumable)."""
        n = len(self.split("train")["source"])
        rows = torch.randint(0, n, (batch_size,), generator=generator).tolist()
        return self.collate("train", rows)

    def eval_batches(self, split: str, batch_size: int, max_batches: int | None = None) -> Iterator[dict]:
        for rows in row_batches(len(self.split(split)["source"]), batch_size, max_batches):
            yield self.collate(split, rows)

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.pretrained:
            return self.hf_tokenizer.decode(ids, skip_special_tokens=True).strip()
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model, collector, progress: bool = True) -> tuple[dict, str]:
        """Teacher-forced loss + generated-summary ROUGE on validation and test; routing stats on test."""
        metrics, examples = {}, []
        for split, prefix in (("validation", "val_"), ("test", "")):
            ctx = collector.collecting() if split == "test" else nullcontext()
            with ctx:
                metrics[f"{prefix or 'test_'}loss"] = self._loss(model, split, progress)
            preds, refs, docs = self._generate(model, split, progress)
            metrics.update({prefix + k: v for k, v in rouge_scores(preds, refs).items()})
            metrics[f"{prefix or 'test_'}examples"] = len(preds)
            if split == "test":
                examples = list(zip(docs, refs, preds))
        routing = collector.summary()
        realised = [layer["experts_per_token"] for layer in routing["layers"]] or None
        metrics["flops_per_token"] = self.flops_per_token(realised)["total"]
        metrics.update(routing)
        return metrics, self.samples_markdown(examples[:self.run.evaluate.samples])

    def _loss(self, model, split: str, progress: bool) -> float:
        from tqdm.auto import tqdm
        ev = self.run.evaluate
        nll, tokens = 0.0, 0
        for batch in tqdm(self.eval_batches(split, ev.batch_size, ev.max_batches), desc=f"loss {split}",
                          disable=not progress, mininterval=1.0):
            loss, info = model.loss(batch)
            nll += loss.item() * info["tokens"]
            tokens += info["tokens"]
        return nll / max(tokens, 1)

    def _generate(self, model, split: str, progress: bool) -> tuple[list[str], list[str], list[str]]:
        """(predicted, reference, document) texts of the evaluated examples of a split."""
        from tqdm.auto import tqdm
        ev = self.run.evaluate
        raw = self.texts(split)
        preds, n = [], 0
        for batch in tqdm(self.eval_batches(split, ev.batch_size, ev.max_batches), desc=f"generate {split}",
                          disable=not progress, mininterval=1.0):
            out = model.generate(batch["input_ids"], batch["attention_mask"], ev.max_new_tokens, ev.num_beams,
                                 ev.no_repeat_ngram_size)
            preds.extend(self.decode(row) for row in out.tolist())
            n += batch["input_ids"].shape[0]
        return preds, raw["summaries"][:n], raw["documents"][:n]

    def flops_per_token(self, experts_per_token: list[float] | None = None, context: int | None = None,
                        n_target: int | None = None) -> dict:
        """Forward matmul FLOPs per (source + target) token at source length `context` (default
        max_source_len) and target length `n_target` (default max_target_len); experts_per_token:
        realised per MoE layer (default k, or E for soft routing); see seq2seq_flops_per_token."""
        moe, cfg = self.run.moe, self.hf_config
        if experts_per_token is None and moe is not None:
            k = float(moe.top_k or moe.n_experts)
            experts_per_token = [k] * (cfg.num_layers + cfg.num_decoder_layers)  # iterator stops at the real count
        return seq2seq_flops_per_token(cfg, context or self.data.max_source_len, n_target or self.data.max_target_len,
                                       moe.router if moe else None, experts_per_token)

    def bench_batch(self, generator: torch.Generator, batch_size: int) -> tuple[dict, int]:
        """A training batch whose every source and target position counts as a token (padding
        included: attention mask all ones, padded labels set to the pad id) and its token count."""
        batch = self.train_batch(generator, batch_size)
        batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
        batch["labels"] = batch["labels"].masked_fill(batch["labels"] == IGNORE, self.pad)
        return batch, batch["input_ids"].numel() + batch["labels"].numel()

    def batch_flops_per_token(self, batch: dict, experts_per_token: list[float] | None) -> dict:
        return self.flops_per_token(experts_per_token, batch["input_ids"].shape[1], batch["labels"].shape[1])

    def samples_markdown(self, examples: list[tuple[str, str, str]]) -> str:
        ev = self.run.evaluate
        lines = [f"# Samples: {self.run.task}/{self.run.name}/seed {self.run.seed}",
                 f"{'greedy' if ev.num_beams == 1 else f'beam search ({ev.num_beams} beams)'}, "
                 f"at most {ev.max_new_tokens} new tokens"
                 + (f", no repeated {ev.no_repeat_ngram_size}-grams" if ev.no_repeat_ngram_size else "") + "\n"]
        for i, (doc, ref, pred) in enumerate(examples):
            short = doc if len(doc) <= 400 else doc[:400] + " ..."
            lines.append(f"## Example {i + 1}\n**document:** {short}\n\n**reference:** {ref}\n\n**generated:** {pred}\n")
        return "\n".join(lines)
