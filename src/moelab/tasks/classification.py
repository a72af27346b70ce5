"""Text classification with an MoE encoder (data from data/prepare.py `prepare_classification`)."""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import torch

from ..config import RunConfig
from ..data.prepare import load_ragged_npz
from ..data.tokenizer import load_tokenizer, special_id
from ..models.classifier import EncoderClassifier
from .summarization import SplitsChecked, pad_batch, row_batches


def accuracy_macro_f1(pred: list[int], true: list[int], n_classes: int) -> tuple[float, float]:
    """Accuracy and macro-F1 (mean over classes of 2TP / (2TP + FP + FN); 0 for a class never seen or predicted)."""
    correct = sum(p == t for p, t in zip(pred, true))
    f1s = []
    for c in range(n_classes):
        tp = sum(p == c and t == c for p, t in zip(pred, true))
        fp = sum(p == c and t != c for p, t in zip(pred, true))
        fn = sum(p != c and t == c for p, t in zip(pred, true))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return correct / max(len(true), 1), sum(f1s) / max(n_classes, 1)


def classifier_flops_per_token(run: RunConfig, n_classes: int, context: int,
                               experts_per_token: list[float] | None = None) -> dict:
    """decoder_flops_per_token with the vocab head (2*d*V per token) replaced by the classifier head:
    2*d*C once per sequence, i.e. 2*d*C / context per token (mean pooling is not a matmul)."""
    from ..flops import decoder_flops_per_token
    out = decoder_flops_per_token(run, 0, context, experts_per_token)   # vocab 0: no LM head
    out["head"] = 2 * run.preset.d_model * n_classes / context
    out["total"] += out["head"]
    return out


class ClassificationTask(SplitsChecked):
    name = "classification"
    quality_metric = "accuracy"

    def __init__(self, run: RunConfig, data_dir: Path):
        self.run, self.data_dir = run, data_dir
        self.tokenizer = load_tokenizer(data_dir / "tokenizer.json")
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.pad = special_id(self.tokenizer, "<pad>")
        labels = data_dir / "labels.json"
        if not labels.exists():
            raise FileNotFoundError(f"{labels} not found: run the prepare stage first")
        self.label_names = json.loads(labels.read_text())
        self.seq_len = run.data.seq_len
        self._splits: dict[str, dict] = {}

    def split(self, split: str) -> dict:
        """{"text": [ids], "labels": int64 array [N]}."""
        if split not in self._splits:
            self._splits[split] = load_ragged_npz(self.data_dir / f"{split}.npz")
        return self._splits[split]

    def collate(self, split: str, rows: list[int]) -> dict:
        data = self.split(split)
        ids, mask = pad_batch([data["text"][i] for i in rows], self.pad)        # [B, T_max]
        return {"input_ids": ids, "attention_mask": mask.long(),
                "labels": torch.as_tensor(data["labels"][rows], dtype=torch.long)}

    def build_model(self) -> EncoderClassifier:
        return EncoderClassifier(self.vocab_size, self.seq_len, len(self.label_names), self.run)

    def train_batch(self, generator: torch.Generator, batch_size: int) -> dict:
        """batch_size random examples; the draw advances `generator` only (resumable)."""
        n = len(self.split("train")["labels"])
        return self.collate("train", torch.randint(0, n, (batch_size,), generator=generator).tolist())

    def eval_batches(self, split: str, batch_size: int, max_batches: int | None = None) -> Iterator[dict]:
        for rows in row_batches(len(self.split(split)["labels"]), batch_size, max_batches):
            yield self.collate(split, rows)

    def evaluate(self, model, collector, progress: bool = True) -> tuple[dict, str]:
        """Loss, accuracy and macro-F1 on validation and test; routing stats on test; samples."""
        from tqdm.auto import tqdm
        ev = self.run.evaluate
        metrics, test_pred = {}, []
        for split, prefix in (("validation", "val_"), ("test", "")):
            preds, trues, nll = [], [], 0.0
            ctx = collector.collecting() if split == "test" else nullcontext()
            with ctx:
                for batch in tqdm(self.eval_batches(split, ev.batch_size, ev.max_batches), desc=f"eval {split}",
                                  disable=not progress, mininterval=1.0):
                    logits = model(batch["input_ids"], batch["attention_mask"].bool())      # [B, C]
                    nll += torch.nn.functional.cross_entropy(logits.float(), batch["labels"], reduction="sum").item()
                    preds += logits.argmax(-1).tolist()
                    trues += batch["labels"].tolist()
            acc, f1 = accuracy_macro_f1(preds, trues, len(self.label_names))
            metrics.update({f"{prefix}accuracy": acc, f"{prefix}macro_f1": f1,
                            f"{prefix or 'test_'}loss": nll / max(len(trues), 1),
                            f"{prefix or 'test_'}examples": len(trues)})
            test_pred = list(zip(preds, trues))
        routing = collector.summary()
        realised = [layer["experts_per_token"] for layer in routing["layers"]] or None
        metrics["flops_per_token"] = self.flops_per_token(realised)["total"]
        metrics.update(routing)
        return metrics, self.samples_markdown(test_pred[:ev.samples])

    def flops_per_token(self, experts_per_token: list[float] | None = None, context: int | None = None) -> dict:
        return classifier_flops_per_token(self.run, len(self.label_names), context or self.seq_len, experts_per_token)

    def bench_batch(self, generator: torch.Generator, batch_size: int) -> tuple[dict, int]:
        """A training batch whose every position counts as a token (the padding of short reviews
        included), so that each position is routed and the FLOPs per position are exact."""
        batch = self.train_batch(generator, batch_size)
        batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
        return batch, batch["input_ids"].numel()

    def batch_flops_per_token(self, batch: dict, experts_per_token: list[float] | None) -> dict:
        return self.flops_per_token(experts_per_token, batch["input_ids"].shape[1])

    def samples_markdown(self, pairs: list[tuple[int, int]]) -> str:
        texts = json.loads((self.data_dir / "test.json").read_text())["texts"]
        lines = [f"# Samples: {self.run.task}/{self.run.name}/seed {self.run.seed}\n",
                 "| text | predicted | true |", "|---|---|---|"]
        for text, (p, t) in zip(texts, pairs):
            cell = text.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {cell[:300]} | {self.label_names[p]} | {self.label_names[t]} |")
        return "\n".join(lines) + "\n"
