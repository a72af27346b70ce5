"""Tests for moelab.data.corpora: bundled snapshots, local files, error messages."""

from __future__ import annotations

import csv
import json
import os

# Never touch the network from tests, whichever module imports `datasets` first.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from moelab.data.corpora import (  # noqa: E402
    DataError,
    classification_splits,
    lm_splits,
    summarization_splits,
)

ARTICLES = [
    (
        "The city council approved a plan on Tuesday to convert the disused railway line into "
        "a walking and cycling path, with construction expected to start next spring.",
        "Council backs railway path plan",
    ),
    (
        "Researchers at the university found that bees exposed to low doses of the pesticide "
        "foraged less often and brought back smaller loads of pollen to the hive.",
        "Pesticide makes bees forage less",
    ),
    (
        "Heavy rain overnight flooded several roads in the valley, and the local school stayed "
        "closed while crews pumped water out of its basement.",
        "Floods close valley school",
    ),
    (
        "The museum will return the bronze statue to the village it was taken from a century "
        "ago, after a long campaign by residents and historians.",
        "Museum to return bronze statue",
    ),
    (
        "A new bus timetable adds late evening services on weekdays, answering complaints from "
        "shift workers who had no way to get home after ten o'clock.",
        "Late buses added for shift workers",
    ),
    (
        "The bakery on the high street, open since 1952, will close at the end of the month "
        "because the owners are retiring and no buyer has come forward.",
        "Historic bakery to close",
    ),
    (
        "Volunteers planted four hundred trees along the river bank on Saturday to reduce "
        "erosion and give shade to the footpath in summer.",
        "Volunteers plant trees by river",
    ),
    (
        "The regional orchestra announced a free outdoor concert in the park to celebrate its "
        "fiftieth season, with a programme of film music.",
        "Orchestra plans free park concert",
    ),
    (
        "After two years of repairs the lighthouse reopened to visitors, who can again climb "
        "the spiral stairs to the lamp room.",
        "Lighthouse reopens after repairs",
    ),
    (
        "Farmers say the dry spring has cut the hay harvest by a third, and some are already "
        "buying feed for the winter at higher prices.",
        "Dry spring cuts hay harvest",
    ),
]

REVIEWS = [
    ("A warm, funny film that never talks down to its young audience.", "positive"),
    ("The plot collapses under its own twists long before the final act.", "negative"),
    ("Beautifully shot, and the lead performance is quietly devastating.", "positive"),
    ("Two hours of noise with nothing to say and no one to care about.", "negative"),
    ("Smart, brisk and full of small surprises.", "positive"),
    ("The jokes land with a thud and the pacing drags.", "negative"),
    ("An honest, moving portrait of a family under strain.", "positive"),
    ("Lifeless direction turns a promising idea into a chore.", "negative"),
    ("The score and the editing make every chase scene sing.", "positive"),
    ("A sequel that forgets everything that made the original work.", "negative"),
]


def write_jsonl(path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def assert_disjoint(splits: dict[str, list]) -> None:
    seen: dict = {}
    for name, records in splits.items():
        for record in records:
            assert seen.setdefault(record, name) == name, f"{record!r} in two splits"


# --------------------------------------------------------------------------- bundled


@pytest.mark.parametrize(
    "loader, source",
    [
        (lm_splits, "shakespeare"),
        (summarization_splits, "debian-descriptions"),
        (lambda s, **kw: classification_splits(s, **kw)[0], "rotten-tomatoes"),
    ],
)
def test_bundled_corpora_split_cleanly(loader, source):
    splits = loader(source, seed=3)
    assert set(splits) == {"train", "validation", "test"}
    assert all(splits.values())
    assert len(splits["train"]) > 5 * len(splits["validation"])
    assert_disjoint(splits)
    assert loader(source, seed=3) == splits
    assert loader(source, seed=4)["validation"] != splits["validation"]


def test_shakespeare_documents_are_contiguous_blocks():
    splits = lm_splits("shakespeare")
    document = splits["validation"][0]
    assert len(document) > 1000 and document.count("\n") > 10
    assert not any("<|endofwork|>" in d for docs in splits.values() for d in docs)


def test_bundled_summarization_and_labels():
    pairs = summarization_splits("debian-descriptions")["test"]
    document, summary = pairs[0]
    assert 20 <= len(document.split()) <= 250 and 0 < len(summary.split()) < 25
    splits, labels = classification_splits("rotten-tomatoes")
    assert labels == ["fresh", "rotten"]
    assert {label for _, label in splits["train"]} == {0, 1}


def test_max_records_caps_every_split_deterministically():
    splits = lm_splits("shakespeare", max_records=7, seed=1)
    assert [len(v) for v in splits.values()] == [7, 7, 7]
    assert splits == lm_splits("shakespeare", max_records=7, seed=1)
    assert lm_splits("shakespeare", max_records=20, seed=1)["train"][:7] == splits["train"]


# --------------------------------------------------------------------------- local files


def test_local_jsonl_with_custom_columns(tmp_path):
    path = tmp_path / "news.jsonl"
    write_jsonl(path, [{"article": a, "headline": h} for a, h in ARTICLES])
    splits = summarization_splits(
        str(path), document_column="article", summary_column="headline", val_frac=0.2, test_frac=0.2
    )
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [6, 2, 2]
    assert sorted(p for v in splits.values() for p in v) == sorted(ARTICLES)


def test_local_csv_with_custom_columns(tmp_path):
    path = tmp_path / "reviews.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        writer.writerows(REVIEWS)
    splits, labels = classification_splits(str(path), text_column="review", label_column="sentiment")
    assert labels == ["negative", "positive"]
    restored = {(t, labels[y]) for v in splits.values() for t, y in v}
    assert restored == set(REVIEWS)


def test_local_parquet_for_language_modelling(tmp_path):
    path = tmp_path / "stories.parquet"
    pd.DataFrame({"story": [a for a, _ in ARTICLES]}).to_parquet(path)
    splits = lm_splits(str(path), text_column="story", val_frac=0.1, test_frac=0.1)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [8, 1, 1]
    assert_disjoint(splits)


def test_local_text_file_gives_paragraphs(tmp_path):
    path = tmp_path / "essay.txt"
    path.write_text("\n\n".join(a for a, _ in ARTICLES) + "\n", encoding="utf-8")
    splits = lm_splits(str(path), val_frac=0.2, test_frac=0.2)
    assert sorted(d for v in splits.values() for d in v) == sorted(a for a, _ in ARTICLES)


def test_directory_split_files_are_respected(tmp_path):
    rows = [{"text": t, "label": y} for t, y in REVIEWS]
    write_jsonl(tmp_path / "train.jsonl", rows[:6])
    write_jsonl(tmp_path / "validation.jsonl", rows[6:8])
    write_jsonl(tmp_path / "test.jsonl", rows[8:])
    splits, labels = classification_splits(str(tmp_path))
    named = {s: {(t, labels[y]) for t, y in v} for s, v in splits.items()}
    assert named["train"] == set(REVIEWS[:6])
    assert named["validation"] == set(REVIEWS[6:8])
    assert named["test"] == set(REVIEWS[8:])


# --------------------------------------------------------------------------- errors


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "dialogues.jsonl"
    write_jsonl(path, [{"dialogue": a, "summary": h} for a, h in ARTICLES])
    with pytest.raises(DataError) as info:
        summarization_splits(str(path))
    message = str(info.value)
    assert "'document'" in message and "dialogue, summary" in message
    assert "data.document_column" in message and "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file .*missing.jsonl not found"):
        lm_splits(str(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize("name, content", [("empty.csv", ""), ("blank.jsonl", "\n\n")])
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        classification_splits(str(path))


def test_unreachable_hub_dataset(monkeypatch):
    import datasets
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    name = "moelab-tests/no-such-corpus"
    with pytest.raises(DataError) as info:
        lm_splits(name)
    message = str(info.value)
    assert f"cannot reach Hugging Face hub for '{name}'" in message
    assert "HF_DATASETS_OFFLINE=1" in message and "data.source" in message
