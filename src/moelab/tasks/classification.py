"""Text classification with an MoE encoder: mean pooling over real tokens, a linear head."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config.schema import DataParams, at_least
from ..errors import DataError
from ..models.classifier import EncoderClassifier
from .base import SPLITS, TASKS, Metric, Task, no_progress, on_device, pad_batch, row_batches


@dataclass(frozen=True)
class ClassificationData(DataParams):
    text_column: str = "text"
    label_column: str = "label"
    seq_len: int = at_least(1, default=64, note="tokens kept per text")


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


def bag_of_words(seqs: list, vocab_size: int) -> torch.Tensor:
    """[N, V] binary bag of token ids, rows scaled to unit L2 norm."""
    x = torch.zeros(len(seqs), vocab_size)
    for i, s in enumerate(seqs):
        x[i, torch.as_tensor(np.asarray(s, dtype=np.int64))] = 1.0
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-9)


def fit_logistic_regression(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, steps: int = 100
) -> torch.nn.Linear:
    """Multinomial logistic regression, full batch, L-BFGS on mean cross-entropy + l2 * |W|^2."""
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], n_classes)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y) + l2 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


def classifier_flops_per_token(
    model, n_classes: int, context: int, experts_per_token: list[float] | None = None
) -> dict:
    """decoder_flops_per_token with the vocab head (2*d*V per token) replaced by the classifier head:
    2*d*C once per sequence, i.e. 2*d*C / context per token (mean pooling is not a matmul)."""
    from ..flops import decoder_flops_per_token

    out = decoder_flops_per_token(model, 0, context, experts_per_token)  # vocab 0: no LM head
    out["head"] = 2 * model.d_model * n_classes / context
    out["total"] += out["head"]
    return out


@TASKS.register("classification")
class ClassificationTask(Task):
    data_params = ClassificationData
    metrics = (
        Metric("accuracy", "accuracy", True),
        Metric("macro_f1", "macro-F1", True),
        Metric("loss", "loss (nats/example)", False),
    )

    def __init__(self, run, data_dir: Path):
        super().__init__(run, data_dir)
        from ..data.tokenizer import load_checked_tokenizer, special_id

        self.tokenizer = load_checked_tokenizer(self.data_dir, self.redo)
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.pad = special_id(self.tokenizer, "<pad>")
        labels = self.data_dir / "labels.json"
        if not labels.is_file():
            raise DataError(f"{labels} not found (data not prepared): {self.redo}")
        names = read_label_names(labels, self.redo)
        if len(names) < 2 or not all(isinstance(n, str) for n in names):
            raise DataError(f"{labels} must list at least two label names: {self.redo}")
        self.label_names = names
        self.seq_len = run.data.seq_len
        self._splits: dict[str, dict] = {}
        self._test_pairs: list[tuple[int, int]] = []

    @staticmethod
    def prepare(data: ClassificationData, out: Path, seed: int = 0) -> dict:
        """Per split: {split}.npz with ragged BPE ids (cut to seq_len) and labels; labels.json; texts."""
        import json

        from ..data.corpora import classification_splits
        from ..data.prepare import ragged_arrays, save_npz
        from ..data.tokenizer import special_id, train_bpe
        from ..io import atomic_write_text, write_json

        splits, names = classification_splits(
            data.source,
            text_column=data.text_column,
            label_column=data.label_column,
            max_records=data.max_records,
            seed=seed,
            val_frac=data.val_frac,
            test_frac=data.test_frac,
        )
        tok = train_bpe([t for t, _ in splits["train"]], data.vocab_size, out / "tokenizer.json")
        atomic_write_text(out / "labels.json", json.dumps(names))
        stats = {"vocab_size": tok.get_vocab_size(), "labels": names}
        for split in SPLITS:
            texts = [t for t, _ in splits[split]]
            ids = [enc.ids[: data.seq_len] or [special_id(tok, "<unk>")] for enc in tok.encode_batch(texts)]
            labels = np.asarray([y for _, y in splits[split]], dtype=np.int64)
            save_npz(out / f"{split}.npz", **ragged_arrays("text", ids), labels=labels)
            write_json(out / f"{split}.json", {"texts": texts})
            stats[f"{split}_examples"] = len(texts)
            stats[f"{split}_tokens"] = sum(map(len, ids))
        return stats

    # ---------------------------------------------------------------- data
    def split(self, split: str) -> dict:
        """{"text": [ids], "labels": int64 array [N]}, checked when first opened."""
        if split not in self._splits:
            from ..data.prepare import check_ids, load_ragged_npz

            path = self.data_dir / f"{split}.npz"
            data = load_ragged_npz(path, self.redo)
            if set(data) != {"text", "labels"} or len(data["text"]) != len(data["labels"]) or not len(data["labels"]):
                raise DataError(f"{path} does not hold a non-empty set of texts with one label each: {self.redo}")
            labels = data["labels"]
            if labels.dtype.kind not in "iu" or int(labels.min()) < 0 or int(labels.max()) >= len(self.label_names):
                raise DataError(f"{path} has labels outside 0..{len(self.label_names) - 1} (labels.json): {self.redo}")
            check_ids(path, data["text"], self.vocab_size, self.redo)
            self._splits[split] = data
        return self._splits[split]

    def check_data(self) -> None:
        for split in SPLITS:
            self.split(split)
        self.test_texts()

    def test_texts(self) -> list[str]:
        """The raw test texts the samples show (test.json), one per test example."""
        from ..io import read_json

        path = self.data_dir / "test.json"
        if not path.is_file():
            raise DataError(f"{path} not found (data not prepared): {self.redo}")
        texts = read_json(path, self.redo).get("texts")
        if not isinstance(texts, list) or len(texts) != len(self.split("test")["labels"]):
            raise DataError(f"{path} does not hold one text per example of test.npz: {self.redo}")
        return texts

    def collate(self, split: str, rows: list[int]) -> dict:
        data = self.split(split)
        ids, mask = pad_batch([data["text"][i] for i in rows], self.pad)  # [B, T_max]
        return {
            "input_ids": ids,
            "attention_mask": mask.long(),
            "labels": torch.as_tensor(data["labels"][rows], dtype=torch.long),
        }

    def build_model(self) -> EncoderClassifier:
        return EncoderClassifier(self.vocab_size, self.seq_len, len(self.label_names), self.run.model)

    def train_batch(self, generator: torch.Generator, batch_size: int) -> dict:
        """batch_size random examples; the draw advances `generator` only (resumable)."""
        n = len(self.split("train")["labels"])
        return self.collate("train", torch.randint(0, n, (batch_size,), generator=generator).tolist())

    def eval_batches(self, split: str, batch_size: int, max_batches: int | None = None) -> Iterator[dict]:
        for rows in row_batches(len(self.split(split)["labels"]), batch_size, max_batches):
            yield self.collate(split, rows)

    # ---------------------------------------------------------------- evaluation
    def evaluate_split(self, model, split: str, progress: bool) -> dict:
        from tqdm.auto import tqdm

        ev = self.run.evaluate
        preds, trues, nll = [], [], 0.0
        for batch in tqdm(
            self.eval_batches(split, ev.batch_size, ev.max_batches), desc=f"eval {split}", **no_progress(progress)
        ):
            batch = on_device(batch, model)
            logits = model(batch["input_ids"], batch["attention_mask"].bool())  # [B, C]
            nll += torch.nn.functional.cross_entropy(logits.float(), batch["labels"], reduction="sum").item()
            preds += logits.argmax(-1).tolist()
            trues += batch["labels"].tolist()
        if split == "test":
            self._test_pairs = list(zip(preds, trues))
        acc, f1 = accuracy_macro_f1(preds, trues, len(self.label_names))
        top_share = max(map(preds.count, set(preds))) / max(len(preds), 1)  # 1.0: one class for every example
        return {
            "accuracy": acc,
            "macro_f1": f1,
            "loss": nll / max(len(trues), 1),
            "top_class_share": top_share,
            "examples": len(trues),
        }

    def samples_markdown(self, model) -> str:
        texts = self.test_texts()
        lines = [
            f"# Samples: {self.run.task}/{self.run.name}/seed {self.run.seed}\n",
            "| text | predicted | true |",
            "|---|---|---|",
        ]
        for text, (p, t) in zip(texts, self._test_pairs[: self.run.evaluate.samples]):
            cell = str(text).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {cell[:300]} | {self.label_names[p]} | {self.label_names[t]} |")
        return "\n".join(lines) + "\n"

    # ---------------------------------------------------------------- references
    def _evaluated(self, split: str) -> tuple[list, list[int]]:
        ev = self.run.evaluate
        data = self.split(split)
        n = len(data["labels"]) if ev.max_batches is None else min(len(data["labels"]), ev.max_batches * ev.batch_size)
        return data["text"][:n], data["labels"][:n].tolist()

    def references(self, progress: bool = False) -> dict[str, dict]:
        """On the same examples as the models: the majority class of the training split, and a
        bag-of-words logistic regression (binary token features of the same BPE; its L2 strength
        picked on validation accuracy from 1e-4, 1e-3, 1e-2)."""
        train = self.split("train")
        y_train = torch.as_tensor(train["labels"], dtype=torch.long)
        n_classes = len(self.label_names)
        majority = int(torch.bincount(y_train, minlength=n_classes).argmax())
        refs = {
            "majority": {
                "description": f"always the training split's most frequent label ({self.label_names[majority]})",
                "trivial": True,  # a model below it has learned nothing: flagged, not ranked
                "role": "trivial",
            },
            "bow-logreg": {
                "description": "logistic regression on a binary bag of BPE tokens",
                "trivial": False,
                "role": "bar",  # the classical bar a classifier must reach to be in regime
            },
        }
        x_train = bag_of_words(train["text"], self.vocab_size)
        val_text, val_true = self._evaluated("validation")
        x_val = bag_of_words(val_text, self.vocab_size)
        fits = {l2: fit_logistic_regression(x_train, y_train, n_classes, l2) for l2 in (1e-4, 1e-3, 1e-2)}
        val_acc = {
            l2: accuracy_macro_f1(m(x_val).argmax(-1).tolist(), val_true, n_classes)[0] for l2, m in fits.items()
        }
        best = max(val_acc, key=val_acc.get)
        refs["bow-logreg"]["l2"] = best
        for split, prefix in (("validation", "val_"), ("test", "test_")):
            text, true = self._evaluated(split)
            with torch.no_grad():
                logits = fits[best](bag_of_words(text, self.vocab_size))
            for name, pred in (("majority", [majority] * len(true)), ("bow-logreg", logits.argmax(-1).tolist())):
                acc, f1 = accuracy_macro_f1(pred, true, n_classes)
                refs[name].update({f"{prefix}accuracy": acc, f"{prefix}macro_f1": f1, f"{prefix}examples": len(true)})
        return refs

    # ---------------------------------------------------------------- cost
    def flops_per_token(self, experts_per_token: list[float] | None = None, context: int | None = None) -> dict:
        return classifier_flops_per_token(
            self.run.model, len(self.label_names), context or self.seq_len, experts_per_token
        )

    def bench_batch(self, generator: torch.Generator, batch_size: int) -> tuple[dict, int]:
        """A training batch whose every position counts as a token (the padding of short reviews
        included), so that each position is routed and the FLOPs per position are exact."""
        batch = self.train_batch(generator, batch_size)
        batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
        return batch, batch["input_ids"].numel()

    def batch_flops_per_token(self, batch: dict, experts_per_token: list[float] | None) -> dict:
        return self.flops_per_token(experts_per_token, batch["input_ids"].shape[1])


def read_label_names(path: Path, redo: str) -> list:
    """labels.json: a JSON list of label names; anything else is one DataError line ending in `redo`."""
    import json

    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}): {redo}") from None
    if not isinstance(value, list):
        raise DataError(f"{path} must be a JSON list of label names: {redo}")
    return value
