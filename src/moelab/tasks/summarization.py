"""Summarisation with a Switch Transformer whose sparse MLPs are moelab MoE layers.

prepare writes raw texts ({split}.json) and BPE ids ({split}.npz). With `pretrained` set, the raw
texts are tokenised with that checkpoint's own tokenizer (T5 SentencePiece) instead.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config.schema import DataParams, EvalParams, allowed, at_least
from ..errors import DataError
from ..models.lm import IGNORE
from ..models.switch import SwitchSeq2Seq, moe_config_for, scratch_config, stack_moe_configs
from .base import SPLITS, TASKS, Metric, Task, no_progress, on_device, pad_batch, row_batches

SUMMARIZE_PREFIX = "summarize: "
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
LEAD_MAX_WORDS = 30  # lead-N is tuned over N = 1..30 words on the validation split


@dataclass(frozen=True)
class SummarizationData(DataParams):
    document_column: str = "document"
    summary_column: str = "summary"
    max_source_len: int = at_least(2, default=256, note="tokens, 'summarize: ' prefix and <eos> included")
    max_target_len: int = at_least(2, default=32)


@dataclass(frozen=True)
class SummarizationEval(EvalParams):
    num_beams: int = at_least(1, default=1, note="1: greedy")
    max_new_tokens: int = at_least(1, default=32)
    no_repeat_ngram_size: int = at_least(0, default=0, note="0: off")
    length_penalty: float = allowed(-10, 10, default=1.0, note="beam search: > 1 favours longer summaries")


# ---------------------------------------------------------------- text helpers
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def split_sentences(text: str) -> str:
    """One sentence per line, as `rouge-score`'s rougeLsum expects (it splits summaries on newlines;
    the HF summarisation examples do the same with nltk). Splits after . ! ? followed by space."""
    return "\n".join(s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip())


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measure (0..1), Porter stemming, as `rouge-score` defines them:
    rougeLsum is the summary-level LCS over sentences, so texts are split into lines first."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)
        lsum = scorer.score(split_sentences(ref), split_sentences(pred))["rougeLsum"]
        for key in ROUGE_KEYS:
            totals[key] += (lsum if key == "rougeLsum" else scores[key]).fmeasure
    return {k: v / max(len(predictions), 1) for k, v in totals.items()}


def is_degenerate(text: str) -> bool:
    """An output that is empty or mostly one repeated word (its most frequent word is over half its words):
    a generator stuck on one token, flagged by the report rather than averaged in silently."""
    words = text.lower().split()
    return not words or (len(words) >= 3 and max(map(words.count, set(words))) > len(words) / 2)


def lead_words(document: str, n: int) -> str:
    """The first n words of a document (the lead-N baseline)."""
    return " ".join(document.split()[:n])


# ---------------------------------------------------------------- FLOPs
def seq2seq_flops_per_token(
    cfg, n_source: int, n_target: int, moe, experts_per_token: list[float] | None, dense_width: int | None = None
) -> dict:
    """Forward matmul FLOPs (multiply-add = 2) of one (source, target) pair, divided by S + L tokens.

    With d = d_model, a = num_heads * d_kv, f = d_ff, S = n_source, L = n_target, V = vocab:
      encoder layer, per source token: q,k,v,o 4*2*d*a; scores + weighted values 2*2*S*a; FFN
      decoder layer, per target token: self q,k,v,o 4*2*d*a; self scores/values 2*2*L*a (full L x L);
                                       cross q,o 2*2*d*a; cross scores/values 2*2*S*a; FFN
                 and per source token: cross k,v 2*2*d*a
      FFN: dense 2*2*d*f; MoE: the registry's router FLOPs + k_realised * the expert type's FLOPs
      lm head per target token: 2*d*V
    Sparse layers follow HF's rule (layer i is sparse when step == 1 or i % step == 1; step <= 0: none).
    moe: the MoEConfig (None: dense); experts_per_token: one value per MoE layer, encoder layers first
    (default: all 1.0); dense_width: with moe None, the width of the dense FFN that replaced each sparse
    layer of a checkpoint (DenseFromExperts: k * d_ff).
    """
    from ..moe import moe_flops_per_token

    d, a, f, v = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff, cfg.vocab_size
    sparse = lambda i, step: step > 0 and (step == 1 or i % step == 1)  # noqa: E731
    enc_sparse = [sparse(i, cfg.encoder_sparse_step) for i in range(cfg.num_layers)]
    dec_sparse = [sparse(i, cfg.decoder_sparse_step) for i in range(cfg.num_decoder_layers)]
    ks = iter(experts_per_token or [1.0] * (sum(enc_sparse) + sum(dec_sparse)))

    def ffn(is_sparse: bool) -> tuple[float, float, float]:  # (dense FFN, experts, router) FLOPs per token
        if not is_sparse:
            return 4 * d * f, 0, 0
        if moe is None:
            if dense_width is None:
                raise ValueError("a dense model with sparse layers needs the width of the FFN that replaced them")
            return 4 * d * dense_width, 0, 0
        per = moe_flops_per_token(moe, next(ks))  # realised routed experts (+ shared experts) and the router
        return 0, per["experts"], per["router"]

    enc = [ffn(s) for s in enc_sparse]
    dec = [ffn(s) for s in dec_sparse]
    s_, l_ = n_source, n_target
    attention = (
        s_ * len(enc) * (8 * d * a + 4 * s_ * a)
        + l_ * len(dec) * (8 * d * a + 4 * l_ * a + 4 * d * a + 4 * s_ * a)
        + s_ * len(dec) * 4 * d * a
    )
    dense_ffn, experts, router_total = (s_ * sum(x[i] for x in enc) + l_ * sum(x[i] for x in dec) for i in range(3))
    head = l_ * 2 * d * v
    n = s_ + l_
    out = {
        "attention": attention / n,
        "dense_ffn": dense_ffn / n,
        "experts": experts / n,
        "router": router_total / n,
        "head": head / n,
    }
    out["total"] = sum(out.values())
    return out


@TASKS.register("summarization")
class SummarizationTask(Task):
    data_params, eval_params = SummarizationData, SummarizationEval
    metrics = (
        Metric("rougeL", "ROUGE-L", True),
        Metric("rouge1", "ROUGE-1", True),
        Metric("rouge2", "ROUGE-2", True),
        Metric("rougeLsum", "ROUGE-Lsum", True),
        Metric("loss", "loss (nats/token)", False),
    )

    def __init__(self, run, data_dir: Path):
        super().__init__(run, data_dir)
        self.data = run.data
        self.pretrained = run.model.pretrained
        if self.pretrained:
            from transformers import AutoConfig, AutoTokenizer

            self.hf_tokenizer = AutoTokenizer.from_pretrained(self.pretrained)
            self.pad, self.eos = self.hf_tokenizer.pad_token_id, self.hf_tokenizer.eos_token_id
            self.hf_config = AutoConfig.from_pretrained(self.pretrained)
            self.vocab_size = self.hf_config.vocab_size
        else:
            from ..data.tokenizer import load_checked_tokenizer, special_id

            self.tokenizer = load_checked_tokenizer(self.data_dir, self.redo)
            self.pad, self.eos = special_id(self.tokenizer, "<pad>"), special_id(self.tokenizer, "<eos>")
            self.vocab_size = self.tokenizer.get_vocab_size()
            self.hf_config = scratch_config(run.model, self.vocab_size, self.pad, self.eos)
        self._splits: dict[str, dict] = {}
        self._test_examples: list[tuple[str, str, str]] = []

    @classmethod
    def moe_configs(cls, run):
        if run.model.moe is None:
            return []
        return list(stack_moe_configs(run.model, run.data.max_target_len))

    @staticmethod
    def prepare(data: SummarizationData, out: Path, seed: int = 0) -> dict:
        """Per split: raw (document, summary) texts in {split}.json, BPE ids in {split}.npz.

        The BPE (<pad>=0 is decoder start and padding, <eos>=1) is trained on train documents and
        summaries. Sources are "summarize: " + document, cut to max_source_len; targets to max_target_len.
        """
        from ..data.corpora import summarization_splits
        from ..data.prepare import ragged_arrays, save_npz
        from ..data.tokenizer import special_id, train_bpe
        from ..io import write_json

        splits = summarization_splits(
            data.source,
            document_column=data.document_column,
            summary_column=data.summary_column,
            max_records=data.max_records,
            seed=seed,
            val_frac=data.val_frac,
            test_frac=data.test_frac,
        )
        tok = train_bpe([t for pair in splits["train"] for t in pair], data.vocab_size, out / "tokenizer.json")
        if special_id(tok, "<pad>") != 0:
            raise DataError("the summarization BPE must have <pad> = 0 (decoder start)")
        eos = special_id(tok, "<eos>")
        stats = {"vocab_size": tok.get_vocab_size()}
        for split in SPLITS:
            docs, sums = [d for d, _ in splits[split]], [s for _, s in splits[split]]
            write_json(out / f"{split}.json", {"documents": docs, "summaries": sums})
            cut = lambda texts, n: [e.ids[: n - 1] + [eos] for e in tok.encode_batch(texts)]  # noqa: E731
            src, tgt = cut([SUMMARIZE_PREFIX + d for d in docs], data.max_source_len), cut(sums, data.max_target_len)
            save_npz(out / f"{split}.npz", **ragged_arrays("source", src), **ragged_arrays("target", tgt))
            stats.update(
                {
                    f"{split}_pairs": len(docs),
                    f"{split}_source_tokens": sum(map(len, src)),
                    f"{split}_target_tokens": sum(map(len, tgt)),
                }
            )
        return stats

    # ---------------------------------------------------------------- data
    def texts(self, split: str) -> dict[str, list[str]]:
        from ..io import read_json

        path = self.data_dir / f"{split}.json"
        if not path.is_file():
            raise DataError(f"{path} not found (data not prepared): {self.redo}")
        raw = read_json(path)
        if not (
            isinstance(raw.get("documents"), list)
            and isinstance(raw.get("summaries"), list)
            and len(raw["documents"]) == len(raw["summaries"])
        ):
            raise DataError(f"{path} does not hold equal lists of documents and summaries: {self.redo}")
        return raw

    def split(self, split: str) -> dict:
        """{"source": [ids], "target": [ids]} of a split (ids: 1-D int arrays ending in eos)."""
        if split not in self._splits:
            if self.pretrained:
                raw = self.texts(split)
                enc = lambda xs, n: self.hf_tokenizer(xs, truncation=True, max_length=n)["input_ids"]  # noqa: E731
                self._splits[split] = {
                    "source": enc([SUMMARIZE_PREFIX + d for d in raw["documents"]], self.data.max_source_len),
                    "target": enc(raw["summaries"], self.data.max_target_len),
                }
            else:
                from ..data.prepare import check_ids, load_ragged_npz

                path = self.data_dir / f"{split}.npz"
                data = load_ragged_npz(path, self.redo)
                if set(data) != {"source", "target"} or len(data["source"]) != len(data["target"]):
                    raise DataError(f"{path} does not hold equal source and target sequences: {self.redo}")
                for key in ("source", "target"):
                    check_ids(path, data[key], self.vocab_size, self.redo)
                self._splits[split] = data
            if not self._splits[split]["source"]:
                raise DataError(f"the {split} split of {self.data_dir} is empty: {self.redo}")
        return self._splits[split]

    def check_data(self) -> None:
        for split in SPLITS:
            self.split(split)
            self.texts(split)

    def collate(self, split: str, rows: list[int]) -> dict:
        """input_ids/attention_mask [B, S_max], labels [B, L_max] (padding = IGNORE)."""
        data = self.split(split)
        src, src_mask = pad_batch([data["source"][i] for i in rows], self.pad)
        tgt, tgt_mask = pad_batch([data["target"][i] for i in rows], self.pad)
        return {"input_ids": src, "attention_mask": src_mask.long(), "labels": tgt.masked_fill(~tgt_mask, IGNORE)}

    def build_model(self) -> SwitchSeq2Seq:
        return SwitchSeq2Seq(self.run.model, self.vocab_size, self.pad, self.eos, self.data.max_target_len)

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

    # ---------------------------------------------------------------- evaluation
    def evaluate_split(self, model, split: str, progress: bool) -> dict:
        """Teacher-forced loss (exp of total NLL over target tokens is its perplexity) and ROUGE of
        the generated summaries against the references."""
        loss, tokens = self._loss(model, split, progress)
        preds, refs, docs = self._generate(model, split, progress)
        if split == "test":
            self._test_examples = list(zip(docs, refs, preds))
        degenerate = sum(map(is_degenerate, preds)) / max(len(preds), 1)
        return {
            "loss": loss,
            "tokens": tokens,
            **rouge_scores(preds, refs),
            "degenerate_fraction": degenerate,
            "examples": len(preds),
        }

    def _loss(self, model, split: str, progress: bool) -> tuple[float, int]:
        from tqdm.auto import tqdm

        ev = self.run.evaluate
        nll, tokens = 0.0, 0
        for batch in tqdm(
            self.eval_batches(split, ev.batch_size, ev.max_batches), desc=f"loss {split}", **no_progress(progress)
        ):
            batch = on_device(batch, model)
            logits = model(batch["input_ids"], batch["attention_mask"], batch["labels"]).float()
            nll += (
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    batch["labels"].reshape(-1),
                    ignore_index=IGNORE,
                    reduction="sum",
                )
                .double()
                .item()
            )
            tokens += int((batch["labels"] != IGNORE).sum())
        return nll / max(tokens, 1), tokens

    def _generate(self, model, split: str, progress: bool) -> tuple[list[str], list[str], list[str]]:
        """(predicted, reference, document) texts of the evaluated examples of a split."""
        from tqdm.auto import tqdm

        ev = self.run.evaluate
        raw = self.texts(split)
        preds, n = [], 0
        for batch in tqdm(
            self.eval_batches(split, ev.batch_size, ev.max_batches), desc=f"generate {split}", **no_progress(progress)
        ):
            batch = on_device(batch, model)
            out = model.generate(
                batch["input_ids"],
                batch["attention_mask"],
                ev.max_new_tokens,
                ev.num_beams,
                ev.no_repeat_ngram_size,
                ev.length_penalty,
            )
            preds.extend(self.decode(row) for row in out.tolist())
            n += batch["input_ids"].shape[0]
        return preds, raw["summaries"][:n], raw["documents"][:n]

    def samples_markdown(self, model) -> str:
        ev = self.run.evaluate
        search = (
            "greedy" if ev.num_beams == 1 else f"beam search ({ev.num_beams} beams, length penalty {ev.length_penalty})"
        )
        lines = [
            f"# Samples: {self.run.task}/{self.run.name}/seed {self.run.seed}",
            f"{search}, at most {ev.max_new_tokens} new tokens"
            + (f", no repeated {ev.no_repeat_ngram_size}-grams" if ev.no_repeat_ngram_size else "")
            + "\n",
        ]
        for i, (doc, ref, pred) in enumerate(self._test_examples[: ev.samples]):
            short = doc if len(doc) <= 400 else doc[:400] + " ..."
            lines.append(
                f"## Example {i + 1}\n**document:** {short}\n\n**reference:** {ref}\n\n**generated:** {pred}\n"
            )
        return "\n".join(lines)

    # ---------------------------------------------------------------- references
    def references(self, progress: bool = False) -> dict[str, dict]:
        """lead-N, the first N words of the document, scored like a model on the same examples, twice:
        N = the median reference length of the training split (trivial), and N chosen on the validation
        split (the N of 1..LEAD_MAX_WORDS with the highest validation ROUGE-L; its test score is the
        classical bar a summariser must beat). Copying the reference is no row: with one reference per
        document it scores 1 by definition."""
        median = max(1, round(statistics.median(len(s.split()) for s in self.texts("train")["summaries"])))
        docs, refs = self._evaluated_texts("validation")
        by_n = {n: rouge_scores([lead_words(d, n) for d in docs], refs)["rougeL"] for n in range(1, LEAD_MAX_WORDS + 1)}
        tuned = max(by_n, key=lambda n: (by_n[n], -n))  # the shortest of equals
        out = {
            f"lead-{median}": {
                "description": f"lead-{median}: the first {median} words of the document (the median training "
                "reference length)",
                "words": median,
                "trivial": True,  # a model below it is flagged and not ranked
                "role": "trivial",
            },
            f"lead-{tuned}-val": {
                "description": f"lead-{tuned}: the first {tuned} words, N of 1..{LEAD_MAX_WORDS} chosen for the best "
                "validation ROUGE-L",
                "words": tuned,
                "trivial": False,
                "role": "bar",  # what a summariser must beat (ROUGE-L and ROUGE-2) to be in regime
            },
        }
        for entry in out.values():
            for split, prefix in (("validation", "val_"), ("test", "test_")):
                docs, refs = self._evaluated_texts(split)
                scores = rouge_scores([lead_words(d, entry["words"]) for d in docs], refs)
                entry.update({prefix + k: v for k, v in scores.items()})
                entry[f"{prefix}examples"] = len(docs)
        return out

    def _evaluated_texts(self, split: str) -> tuple[list[str], list[str]]:
        """(documents, reference summaries) of the examples a model is evaluated on."""
        ev, raw = self.run.evaluate, self.texts(split)
        count = (
            len(raw["documents"])
            if ev.max_batches is None
            else min(len(raw["documents"]), ev.max_batches * ev.batch_size)
        )
        return raw["documents"][:count], raw["summaries"][:count]

    # ---------------------------------------------------------------- cost
    def flops_per_token(
        self, experts_per_token: list[float] | None = None, context: int | None = None, n_target: int | None = None
    ) -> dict:
        """Forward matmul FLOPs per (source + target) token at source length `context` (default
        max_source_len) and target length `n_target` (default max_target_len); experts_per_token:
        realised per MoE layer (default k, or E for soft routing); see seq2seq_flops_per_token."""
        moe, cfg = self.run.model.moe, self.hf_config
        if moe is not None and self.pretrained:  # the layers are sized by the checkpoint, not the preset
            moe = moe_config_for(cfg, moe)
        if moe is not None and experts_per_token is None:
            k = float(moe.k_routed or moe.n_routed)
            experts_per_token = [k] * (cfg.num_layers + cfg.num_decoder_layers)  # iterator stops at the real count
        return seq2seq_flops_per_token(
            cfg,
            context or self.data.max_source_len,
            n_target or self.data.max_target_len,
            moe,
            experts_per_token,
            dense_width=self.run.model.dense_d_ff if moe is None else None,
        )

    def bench_batch(self, generator: torch.Generator, batch_size: int) -> tuple[dict, int]:
        """A training batch whose every source and target position counts as a token (padding
        included: attention mask all ones, padded labels set to the pad id) and its token count."""
        batch = self.train_batch(generator, batch_size)
        batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
        batch["labels"] = batch["labels"].masked_fill(batch["labels"] == IGNORE, self.pad)
        return batch, batch["input_ids"].numel() + batch["labels"].numel()

    def batch_flops_per_token(self, batch: dict, experts_per_token: list[float] | None) -> dict:
        return self.flops_per_token(experts_per_token, batch["input_ids"].shape[1], batch["labels"].shape[1])
