"""Is the classifiers' gap to bag-of-words real? A paired, per-example comparison on validation and test.

The study's regime rule compares a cell's mean test accuracy (interval over seeds) with the bag-of-words
bar as a fixed number; the bar's own sampling error (which 1,275 texts the test split holds) is not in it.
This script puts it in: for every variant of the study, the accuracy averaged over its seeds minus the
bar's, example by example on the same texts, with a percentile bootstrap interval over examples (the
seeds' predictions stay paired with the bar's on each resampled text). It reads the committed checkpoints
(models/classification/<variant>/s<seed>/best.pt: `dvc pull` or `dvc repro`) and re-fits the bar exactly
with the L2 strength the references stage picked (and checks its accuracies are that stage's).

    python scripts/classification_vs_bow.py                 # every variant, validation and test
    python scripts/classification_vs_bow.py --json gap.json --resamples 10000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("validation", "test")


def paired_gap(model_correct: np.ndarray, bar_correct: np.ndarray, resamples: int, seed: int = 0) -> dict:
    """model_correct [S, N] (seed x example, 0/1), bar_correct [N] -> the mean accuracy over seeds minus the
    bar's, and its 95 % percentile bootstrap interval over the N examples (each resample keeps every seed's
    prediction and the bar's on the same example together)."""
    per_example = model_correct.mean(axis=0) - bar_correct  # [N]: in [-1, 1]
    rng = np.random.default_rng(seed)
    n = per_example.shape[0]
    means = per_example[rng.integers(0, n, size=(resamples, n))].mean(axis=1)  # [resamples]
    low, high = np.percentile(means, [2.5, 97.5])
    return {
        "model": float(model_correct.mean()),
        "bar": float(bar_correct.mean()),
        "gap": float(per_example.mean()),
        "low": float(low),
        "high": float(high),
        "examples": int(n),
    }


def bar_correct(task) -> dict[str, np.ndarray]:
    """The bag-of-words bar's per-example correctness on each split: refitted with the L2 strength the
    references stage picked (metrics/study/classification/references.json; the fit is deterministic), and
    checked against the accuracies that stage wrote."""
    import torch

    from moelab.io import read_json
    from moelab.study import references_path
    from moelab.tasks.classification import bag_of_words, fit_logistic_regression

    committed = read_json(ROOT / references_path("classification"), "run `dvc repro` or `dvc pull`")["bow-logreg"]
    train = task.split("train")
    x_train = bag_of_words(train["text"], task.vocab_size)
    y_train = torch.as_tensor(train["labels"], dtype=torch.long)
    fit = fit_logistic_regression(x_train, y_train, len(task.label_names), committed["l2"])
    out = {}
    for split, prefix in zip(SPLITS, ("val_", "test_")):
        data = task.split(split)
        with torch.no_grad():
            predicted = fit(bag_of_words(data["text"], task.vocab_size)).argmax(-1).numpy()
        out[split] = (predicted == np.asarray(data["labels"])).astype(float)
        if abs(out[split].mean() - committed[f"{prefix}accuracy"]) > 1e-9:
            raise SystemExit(
                f"bag-of-words {split} accuracy {out[split].mean():.4f} is not the references stage's "
                f"{committed[f'{prefix}accuracy']:.4f}: the data or code changed since; re-run `dvc repro`"
            )
    return out


def model_correct(params, variant) -> dict[str, np.ndarray]:
    """Per split, [S, N]: each seed's best.pt right (1) or wrong (0) on every example (each loaded once)."""
    import torch

    from moelab.evaluate import load_trained
    from moelab.study import prepared_dir, run_paths, runs
    from moelab.tasks import build_task

    rows = {split: [] for split in SPLITS}
    for run in runs(params, variant):
        task = build_task(run, prepared_dir(run.task))
        model = load_trained(run, task, run_paths(variant, run.seed).checkpoints)
        for split in SPLITS:
            preds = []
            with torch.no_grad():
                for batch in task.eval_batches(split, run.evaluate.batch_size):
                    preds += model(batch["input_ids"], batch["attention_mask"].bool()).argmax(-1).tolist()
            rows[split].append(np.asarray(preds) == np.asarray(task.split(split)["labels"]))
    return {split: np.asarray(seeds, dtype=float) for split, seeds in rows.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the examples")
    parser.add_argument("--json", help="also write every row here")
    args = parser.parse_args(argv)
    if args.resamples < 100:
        parser.error(f"--resamples {args.resamples}: at least 100 for a 95 % percentile interval")

    sys.path.insert(0, str(ROOT / "src"))
    from moelab.resolve import load_params
    from moelab.study import prepared_dir, runs, variants
    from moelab.tasks import build_task

    params = load_params(args.params)
    if "classification" not in params.tasks:
        parser.error(f"{args.params}: tasks {list(params.tasks)} has no classification")
    study = variants(params, "classification")
    bar = bar_correct(build_task(runs(params, study[-1])[0], prepared_dir("classification")))
    print("model - bag-of-words accuracy, mean over seeds; [95 % bootstrap interval over examples]")
    print(f"{'variant':<28}" + "".join(f"{split:>42}" for split in SPLITS))
    rows = {}
    for variant in study:
        correct = model_correct(params, variant)
        rows[variant.name] = {split: paired_gap(correct[split], bar[split], args.resamples) for split in SPLITS}
        cells = [
            f"{r['model']:.3f} - {r['bar']:.3f} = {r['gap']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]"
            for r in rows[variant.name].values()
        ]
        print(f"{variant.name:<28}" + "".join(f"{c:>42}" for c in cells), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
