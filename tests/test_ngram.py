"""moelab.ngram (interpolated Kneser-Ney) against hand computations, the sum-to-one property, and an
independent dictionary-and-loop implementation of the textbook recursion.

Not compared with nltk.lm.KneserNeyInterpolated (nltk 3.10.4, read from its source), whose definition
differs from Chen & Goodman's in ways that change every probability: (1) its lowest order is the
undiscounted continuation unigram N1+(. w) / N1+(. .), not interpolated with 1/V, so a token never seen
in training gets probability 0; (2) one discount for every order (a parameter, default 0.1), not
n1 / (n1 + 2 n2) per order; (3) below the highest order its back-off weight counts the context's
distinct followers in the raw counts while the rest of the level uses continuation counts. Matching
it would mean patching all three, which would leave only its recursion skeleton under test.
"""

import math
import os
import subprocess
import sys
from collections import Counter, defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from moelab.ngram import FALLBACK_DISCOUNT, KneserNey

SRC = Path(__file__).resolve().parents[1] / "src"

# The hand-worked corpus: V = 5, token 4 never occurs.
#   position  0 1 2 3 4 5 6 7 8 9
#   token     0 1 2 0 1 3 0 1 2 1
TINY = np.array([0, 1, 2, 0, 1, 3, 0, 1, 2, 1])
TINY_V = 5


def approx(fraction: Fraction):
    return pytest.approx(float(fraction), rel=1e-12)


def unigram_by_hand() -> dict[int, Fraction]:
    """P_1 of the bigram and trigram models on TINY (both use the same level 1).

    Distinct bigrams: 01 12 20 13 30 21, so the continuation counts N1+(. w) are
    c(0) = |{2,3}| = 2, c(1) = |{0,2}| = 2, c(2) = |{1}| = 1, c(3) = |{1}| = 1, c(4) = 0.
    T_1 = 6, N_1 = 4; n1 = 2, n2 = 2, so D_1 = 2 / (2 + 2*2) = 1/3; gamma = D_1 N_1 / T_1 = (1/3) 4 / 6.
    P_1(w) = (max(c - 1/3, 0) + (1/3) 4 (1/5)) / 6 = (c - 1/15) / 6 if c > 0, (4/15) / 6 if c = 0:
    P_1 = 29/90, 29/90, 14/90, 14/90, 4/90 (sum 90/90).
    """
    return {0: Fraction(29, 90), 1: Fraction(29, 90), 2: Fraction(14, 90), 3: Fraction(14, 90), 4: Fraction(4, 90)}


def test_bigram_by_hand():
    # Raw bigram counts: 01:3, 12:2, 20:1, 13:1, 30:1, 21:1 (9 bigrams). n1 = 4, n2 = 1: D_2 = 4 / (4 + 2) = 2/3.
    model = KneserNey(2, TINY_V).fit(TINY)
    p1 = unigram_by_hand()
    assert model.discounts == [approx(Fraction(1, 3)), approx(Fraction(2, 3))]
    # context 0: T = 3, N = 1. P(1|0) = (3 - 2/3 + (2/3) 1 (29/90)) / 3 = (7/3 + 58/270) / 3 = 688/810 = 344/405
    assert model.distribution([0])[1] == approx(Fraction(344, 405))
    # context 1: T = 3 (12:2, 13:1), N = 2. P(2|1) = (2 - 2/3 + (2/3) 2 (14/90)) / 3 = (4/3)(104/90) / 3 = 208/405
    assert model.distribution([1])[2] == approx(Fraction(208, 405))
    # P(4|1) = (0 + (4/3)(4/90)) / 3 = 8/405: an unseen token still gets mass through the uniform
    assert model.distribution([1])[4] == approx(Fraction(8, 405))
    # context 2: T = 2, N = 2. P(0|2) = (1 - 2/3 + (4/3)(29/90)) / 2 = (90/270 + 116/270) / 2 = 103/270
    assert model.distribution([2])[0] == approx(Fraction(103, 270))
    # context 4 was never seen: P(w|4) = P_1(w)
    assert model.distribution([4]) == pytest.approx([float(p1[w]) for w in range(TINY_V)], rel=1e-12)
    # a stream: position 0 has no context (P_1), then P(1|0), P(2|1)
    assert np.exp(model.log_probs(np.array([0, 1, 2]))) == pytest.approx(
        [float(p1[0]), 344 / 405, 208 / 405], rel=1e-12
    )


def test_trigram_by_hand():
    # Raw trigram counts: 012:2, 120:1, 201:1, 013:1, 130:1, 301:1, 121:1 (8). n1 = 6, n2 = 1: D_3 = 6/8 = 3/4.
    # Level 2, continuation counts N1+(. h w) from the distinct trigrams:
    #   01: {2, 3} -> 2 (its first occurrence, at position 0, has no left neighbour); 12, 13, 20, 21, 30: 1 each.
    #   n1 = 5, n2 = 1: D_2 = 5/7.
    model = KneserNey(3, TINY_V).fit(TINY)
    p1 = unigram_by_hand()
    assert model.discounts == [approx(Fraction(1, 3)), approx(Fraction(5, 7)), approx(Fraction(3, 4))]
    # P_2(1|0): T = 2, N = 1. (2 - 5/7 + (5/7)(29/90)) / 2 = (810/630 + 145/630) / 2 = 191/252
    p2_1_0 = Fraction(191, 252)
    # P_2(w|1): T = 2 (12, 13), N = 2, gamma = (5/7) 2 / 2.
    #   P_2(2|1) = P_2(3|1) = (1 - 5/7 + (10/7)(14/90)) / 2 = (180/630 + 140/630) / 2 = 16/63
    #   P_2(0|1) = P_2(1|1) = (10/7)(29/90) / 2 = 29/126;  P_2(4|1) = (10/7)(4/90) / 2 = 2/63
    p2_1 = [Fraction(29, 126), Fraction(29, 126), Fraction(16, 63), Fraction(16, 63), Fraction(2, 63)]
    assert sum(p2_1) == 1
    # context (0, 1): T = 3 (012:2, 013:1), N = 2, gamma = (3/4) 2 / 3.
    #   P(2|0 1) = (2 - 3/4 + (3/2)(16/63)) / 3 = (105/84 + 32/84) / 3 = 137/252
    #   P(3|0 1) = (1 - 3/4 + (3/2)(16/63)) / 3 = (21/84 + 32/84) / 3 = 53/252
    #   P(0|0 1) = P(1|0 1) = (3/2)(29/126) / 3 = 29/252;  P(4|0 1) = (3/2)(2/63) / 3 = 1/63
    expected = [Fraction(29, 252), Fraction(29, 252), Fraction(137, 252), Fraction(53, 252), Fraction(1, 63)]
    assert model.distribution([0, 1]) == pytest.approx([float(p) for p in expected], rel=1e-12)
    # context (2, 0): T = 1, N = 1. P(1|2 0) = 1 - 3/4 + (3/4)(191/252) = 252/1008 + 573/1008 = 275/336
    assert model.distribution([2, 0])[1] == approx(Fraction(275, 336))
    # (4, 1) never seen: falls through to P_2(.|1); (1, 4): neither (1, 4) nor 4 seen, so P_1
    assert model.distribution([4, 1]) == pytest.approx([float(p) for p in p2_1], rel=1e-12)
    assert model.distribution([1, 4]) == pytest.approx([float(p1[w]) for w in range(TINY_V)], rel=1e-12)
    # a stream scores its first positions with the shorter context: P_1(0), P_2(1|0), P_3(2|0 1)
    log_probs = model.log_probs(np.array([0, 1, 2]))
    assert np.exp(log_probs) == pytest.approx([float(p1[0]), float(p2_1_0), 137 / 252], rel=1e-12)
    # start = 2 still conditions on the two tokens before it
    assert model.log_probs(np.array([0, 1, 2]), start=2) == pytest.approx([math.log(137 / 252)], rel=1e-12)


def test_order_one_is_the_discounted_unigram_interpolated_with_uniform():
    # By hand on TINY: raw counts 0:3, 1:4, 2:2, 3:1, 4:0 (T = 10, N = 4); n1 = 1, n2 = 1: D_1 = 1/3.
    # P(w) = (max(c - 1/3, 0) + (1/3) 4 / 5) / 10: 44/150, 59/150, 29/150, 14/150, 4/150.
    model = KneserNey(1, TINY_V).fit(TINY)
    assert model.discounts == [approx(Fraction(1, 3))]
    assert model.distribution([]) == pytest.approx([44 / 150, 59 / 150, 29 / 150, 14 / 150, 4 / 150], rel=1e-12)
    # and the same formula on a random corpus, the context being ignored
    vocab = 40
    ids = random_corpus(3, vocab, size=150)
    counts = np.bincount(ids, minlength=vocab)
    n1, n2 = np.sum(counts == 1), np.sum(counts == 2)
    assert n1 > 0 and n2 > 0
    discount = n1 / (n1 + 2 * n2)
    expected = (np.maximum(counts - discount, 0) + discount * np.count_nonzero(counts) / vocab) / len(ids)
    model = KneserNey(1, vocab).fit(ids)
    assert model.discounts == [pytest.approx(discount, rel=1e-12)]
    stream = np.array([3, 0, 39, 10, 1])  # 39 never seen
    assert np.exp(model.log_probs(stream)) == pytest.approx(expected[stream], rel=1e-12)


def zipf(vocab: int) -> np.ndarray:
    """Skewed token frequencies, so that every level has singletons and doubletons (no fallback discount)."""
    weights = 1.0 / np.arange(1, vocab + 1)
    return weights / weights.sum()


def random_corpus(seed: int, vocab: int, size: int) -> np.ndarray:
    """Tokens 0..vocab-2 only: the last token of the vocabulary is never seen in training."""
    return np.random.default_rng(seed).choice(vocab - 1, size=size, p=zipf(vocab - 1))


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_context_sums_to_one(order, seed):
    vocab = 7
    ids = random_corpus(seed, vocab, size=150)
    model = KneserNey(order, vocab).fit(ids)
    seen = {tuple(ids[j : j + m]) for m in range(order) for j in range(len(ids) - m + 1)}
    never_seen = (vocab - 1,) * (order - 1)
    assert never_seen not in seen or order == 1
    for context in sorted(seen) + [never_seen]:
        # P(w | context) for every w, through the public scorer: the stream context + [w], scored at its end
        probs = [np.exp(model.log_probs(np.array([*context, w]), start=len(context))[0]) for w in range(vocab)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-10), context
        assert min(probs) > 0
        assert model.distribution(context) == pytest.approx(probs, rel=1e-12)


def test_a_stream_shorter_than_the_order_still_gives_distributions():
    model = KneserNey(4, 5).fit(np.array([2, 3]))  # no 3- or 4-grams, one bigram
    for context in ([], [2], [2, 3], [1, 2, 3]):
        assert model.distribution(context).sum() == pytest.approx(1.0, abs=1e-12)


class ReferenceKneserNey:
    """Interpolated Kneser-Ney written straight from the recursion, with tuples, dictionaries and loops."""

    def __init__(self, order: int, vocab: int, tokens: list[int]):
        self.order, self.vocab = order, vocab
        self.counts = {}  # k -> {k-gram tuple: c_k}
        for k in range(1, order + 1):
            if k == order:
                self.counts[k] = Counter(tuple(tokens[i : i + k]) for i in range(len(tokens) - k + 1))
            else:
                left_neighbours = defaultdict(set)
                for i in range(len(tokens) - k):
                    left_neighbours[tuple(tokens[i + 1 : i + 1 + k])].add(tokens[i])
                self.counts[k] = {gram: len(xs) for gram, xs in left_neighbours.items()}
        self.discounts = {k: self.discount(list(self.counts[k].values())) for k in self.counts}

    @staticmethod
    def discount(counts: list[int]) -> float:
        n1, n2 = counts.count(1), counts.count(2)
        return n1 / (n1 + 2 * n2) if n1 > 0 else FALLBACK_DISCOUNT

    def prob(self, word: int, context: tuple) -> float:
        k = len(context) + 1
        lower = 1 / self.vocab if k == 1 else self.prob(word, context[1:])
        followers = {gram[-1]: c for gram, c in self.counts[k].items() if gram[:-1] == context}
        total = sum(followers.values())
        if total == 0:
            return lower
        d = self.discounts[k]
        return (max(followers.get(word, 0) - d, 0) + d * len(followers) * lower) / total

    def log_probs(self, tokens: list[int]) -> list[float]:
        return [
            math.log(self.prob(tokens[i], tuple(tokens[max(0, i - self.order + 1) : i]))) for i in range(len(tokens))
        ]


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_matches_the_reference_recursion(order):
    vocab = 30
    train = random_corpus(10, vocab, size=400)
    test = np.concatenate([random_corpus(11, vocab, size=60), [vocab - 1, vocab - 1, 0, 1, vocab - 1]])
    model = KneserNey(order, vocab).fit(train)
    reference = ReferenceKneserNey(order, vocab, train.tolist())
    assert model.discounts == pytest.approx([reference.discounts[k] for k in range(1, order + 1)], rel=1e-12)
    assert FALLBACK_DISCOUNT not in model.discounts  # n1 / (n1 + 2 n2) itself is exercised at every level
    np.testing.assert_allclose(model.log_probs(test), reference.log_probs(test.tolist()), rtol=0, atol=1e-10)
    np.testing.assert_allclose(model.log_probs(train[:80]), reference.log_probs(train[:80].tolist()), atol=1e-10)


def test_nll_and_start():
    ids = random_corpus(5, 8, size=300)
    model = KneserNey(3, 8).fit(ids[:250])
    held_out = ids[250:]
    assert model.nll(held_out) == -model.log_probs(held_out).sum()
    assert isinstance(model.nll(held_out), float)
    # start > 0 conditions on the tokens before start: the tail of the full scoring, not a fresh stream
    assert np.array_equal(model.log_probs(held_out, start=10), model.log_probs(held_out)[10:])
    assert model.log_probs(held_out, start=10)[:2] != pytest.approx(model.log_probs(held_out[10:])[:2])
    assert model.nll(held_out, start=10) == -model.log_probs(held_out)[10:].sum()
    assert model.log_probs(held_out, start=len(held_out)).shape == (0,)


def test_describe_names_the_variant_and_discounts():
    model = KneserNey(3, TINY_V).fit(TINY)
    line = model.describe()
    assert "\n" not in line
    assert line.startswith(
        "interpolated Kneser-Ney (Chen & Goodman 1998), order 3, discounts D1=0.3333 D2=0.7143 D3=0.75,"
    )


def test_bad_input_is_one_line_value_error():
    with pytest.raises(ValueError, match="order must be an integer >= 1"):
        KneserNey(0, 5)
    with pytest.raises(ValueError, match="does not fit"):
        KneserNey(7, 2**10)
    model = KneserNey(2, 5)
    with pytest.raises(RuntimeError, match="call fit"):
        model.log_probs(np.array([1]))
    for bad, message in [
        (np.array([], dtype=np.int64), "non-empty"),
        (np.array([[1, 2]]), "1-D"),
        (np.array([0.0, 1.0]), "integers"),
        (np.array([0, 5]), r"0\.\.4, found 0\.\.5"),
        (np.array([-1, 2]), r"found -1\.\.2"),
    ]:
        with pytest.raises(ValueError, match=message):
            model.fit(bad)
    model.fit(TINY)
    with pytest.raises(ValueError, match="0..4"):
        model.log_probs(np.array([1, 9]))
    with pytest.raises(ValueError, match="start must be"):
        model.log_probs(np.array([1, 2]), start=3)


def test_does_not_import_torch():
    # the torch-free reference stage imports this module
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    code = "import moelab.ngram, sys; assert 'torch' not in sys.modules, 'torch imported'; print(moelab.ngram.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip()).resolve() == (SRC / "moelab" / "ngram.py").resolve()
