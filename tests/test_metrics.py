"""ROUGE as `rouge-score` defines it: moelab's rouge_scores against RougeScorer called directly.

rougeLsum is the summary-level LCS over sentences, and rouge-score finds the sentences by splitting on
newlines; the HF summarisation examples put one sentence per line with nltk first, moelab with
tasks/summarization.py's split_sentences. Without that split rougeLsum silently equals rougeL.
"""

from __future__ import annotations

import pytest
from rouge_score.rouge_scorer import RougeScorer

from moelab.tasks.summarization import ROUGE_KEYS, rouge_scores, split_sentences


def direct(reference: str, prediction: str) -> dict[str, float]:
    """F-measures from rouge-score itself (target first), Porter stemming as moelab uses."""
    scores = RougeScorer(list(ROUGE_KEYS), use_stemmer=True).score(reference, prediction)
    return {k: s.fmeasure for k, s in scores.items()}


def test_rouge_lsum_is_summary_level_on_multi_sentence_texts():
    prediction = "The cat sat on the mat. It was very happy!"
    reference = "It was happy. The black cat sat on the mat."
    ours = rouge_scores([prediction], [reference])
    # the reference implementation on newline-joined sentences (one sentence per line, as with nltk)
    lines = direct("It was happy.\nThe black cat sat on the mat.", "The cat sat on the mat.\nIt was very happy!")
    flat = direct(reference, prediction)
    assert ours["rougeLsum"] == pytest.approx(lines["rougeLsum"], abs=1e-12)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert ours[key] == pytest.approx(flat[key], abs=1e-12)
    # swapped sentence order: one LCS over the whole text loses a sentence, the union LCS keeps both
    assert ours["rougeLsum"] > ours["rougeL"] + 0.2
    assert flat["rougeLsum"] == pytest.approx(flat["rougeL"])  # what rouge-score gives without the split


def test_rouge_lsum_equals_rouge_l_on_single_sentences():
    prediction, reference = "a small tool to convert images", "tool that converts small images"
    ours = rouge_scores([prediction], [reference])
    assert ours["rougeLsum"] == pytest.approx(ours["rougeL"], abs=1e-12)
    assert ours["rougeL"] == pytest.approx(direct(reference, prediction)["rougeL"], abs=1e-12)


def test_rouge_is_the_mean_over_pairs():
    pairs = [("It runs. It stops.", "It stops. It runs."), ("a b c", "a c d"), ("", "something")]
    ours = rouge_scores([p for p, _ in pairs], [r for _, r in pairs])
    for key in ROUGE_KEYS:
        split = key == "rougeLsum"  # sentence-split texts for Lsum only (tested by hand above)
        each = [direct(split_sentences(r), split_sentences(p))[key] if split else direct(r, p)[key] for p, r in pairs]
        assert ours[key] == pytest.approx(sum(each) / len(each), abs=1e-12)


def test_split_sentences_one_per_line():
    assert split_sentences("  First one. Second one?  Third!  ") == "First one.\nSecond one?\nThird!"
    assert split_sentences("Version 1.2 is out.") == "Version 1.2 is out."  # no space after the dot: no split


@pytest.mark.xfail(
    strict=True,
    reason="split_sentences splits after every '. ' (regex), so abbreviations such as 'e.g. ' / 'Dr. ' end "
    "a sentence; nltk's punkt (what the HF summarisation examples use) keeps them inside one, and the "
    "rougeLsum value differs (here 0.636 instead of 0.545)",
)
def test_abbreviations_do_not_end_a_sentence():
    reference = "It reads many formats, e.g. PNG and JPEG. It is fast."
    prediction = "It is fast and reads PNG, JPEG and other formats."
    as_nltk = "It reads many formats, e.g. PNG and JPEG.\nIt is fast."  # punkt: 'e.g.' is an abbreviation
    assert rouge_scores([prediction], [reference])["rougeLsum"] == pytest.approx(
        direct(as_nltk, prediction)["rougeLsum"], abs=1e-12
    )


def test_lead_n_is_chosen_on_validation_and_scored_on_test(tmp_path, params_file):
    """The summariser's bar: lead-N with the N of 1..30 that maximises validation ROUGE-L (the shortest of
    equals), scored on the test split like a model; beside it the trivial lead at the median length."""
    from moelab.data.prepare import prepare
    from moelab.resolve import load_params, resolve_run
    from moelab.tasks import build_task
    from moelab.tasks.summarization import LEAD_MAX_WORDS, lead_words

    def small(d):  # 64 evaluated pairs per split: 30 candidate Ns x the split's ROUGE is the test's cost
        d["summarization"]["data"].update(max_records=300, vocab_size=300)
        d["summarization"]["evaluate"].update(batch_size=64, max_batches=1)

    params = load_params(params_file(small))
    prepare("summarization", params.summarization.data, tmp_path / "data")
    task = build_task(resolve_run(params, task="summarization", dense=True), tmp_path / "data")
    refs = task.references()
    (median,) = [n for n, r in refs.items() if r["role"] == "trivial"]
    (tuned,) = [n for n, r in refs.items() if r["role"] == "bar"]
    n = refs[tuned]["words"]
    docs, summaries = task._evaluated_texts("validation")
    by_n = {
        k: rouge_scores([lead_words(d, k) for d in docs], summaries)["rougeL"] for k in range(1, LEAD_MAX_WORDS + 1)
    }
    assert by_n[n] == max(by_n.values()) and tuned == f"lead-{n}-val"
    docs, summaries = task._evaluated_texts("test")
    assert refs[tuned]["test_rougeL"] == pytest.approx(
        rouge_scores([lead_words(d, n) for d in docs], summaries)["rougeL"]
    )
    assert refs[median]["val_rougeL"] <= refs[tuned]["val_rougeL"]
    assert refs[tuned]["val_examples"] == refs[tuned]["test_examples"] == len(docs) == 64
