"""Interpolated Kneser-Ney n-gram language model over integer token ids: the count-based baseline of the
LM task. numpy only: the torch-free reference stage imports it.

The variant is Chen & Goodman (1998), "An empirical study of smoothing techniques for language
modeling", interpolated Kneser-Ney with one absolute discount per order. n = order, V = vocab_size,
h a context of k-1 tokens, hw the k-gram h followed by w, h' = h without its first token.

    counts      c_n(hw) = number of times hw occurs in the stream             (highest order: raw counts)
                c_k(hw) = N1+(. hw) = #{x : the (k+1)-gram x h w occurs}      (k < n: continuation counts)
    per context T_k(h) = sum_w c_k(hw),   N_k(h) = N1+(h .) = #{w : c_k(hw) > 0}
    discount    D_k = n1 / (n1 + 2 n2),   n_r = #{k-grams g : c_k(g) = r}     (D_k = 1/2 when n1 = 0)
    recursion   P_0(w)     = 1 / V
                P_k(w | h) = (max(c_k(hw) - D_k, 0) + D_k N_k(h) P_{k-1}(w | h')) / T_k(h)   if T_k(h) > 0
                P_k(w | h) = P_{k-1}(w | h')                                 if T_k(h) = 0 (h never seen)

The back-off weight is gamma(h) = D_k N_k(h) / T_k(h). Every nonzero count is >= 1 >= D_k > 0, so
sum_w P_k(w | h) = ((T - D N) + D N) / T = 1 for every h; and P_k(w | h) >= gamma(h) P_{k-1}(w | h') with
gamma(h) > 0 and P_0 = 1/V, so every token, seen or not, has probability > 0. D_k = 1/2 when a level has
no singletons (n1 = 0: the estimate would be 0 and unseen tokens would get probability 0) is KenLM's
--discount_fallback value for counts of one.

The training stream is one sequence (documents joined by a separator, an ordinary token): its first
k-gram has no left neighbour and so adds no continuation count. A scored position with m < n-1
predecessors uses P_{m+1}, the recursion from its shorter context.

Implementation: a k-gram is the int64 key sum_t ids[j+t] V^(k-1-t) (mixed radix, so key // V is the key
of its context); counts come from sorting the stream's window keys, look-ups from np.searchsorted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FALLBACK_DISCOUNT = 0.5  # used where a level has no singletons (n1 = 0); KenLM's --discount_fallback for D1


@dataclass(frozen=True)
class _Level:
    """The counts of one level k: its k-grams and, per context h (a (k-1)-gram), T_k(h) and N_k(h)."""

    grams: np.ndarray  # [G] int64, sorted unique keys of the k-grams with c_k > 0
    counts: np.ndarray  # [G] int64, c_k of each
    contexts: np.ndarray  # [H] int64, sorted unique context keys (grams // V)
    totals: np.ndarray  # [H] int64, T_k(h) = sum of the counts of the context's k-grams
    types: np.ndarray  # [H] int64, N_k(h) = how many k-grams the context has
    discount: float  # D_k


def window_keys(ids: np.ndarray, k: int, vocab_size: int) -> np.ndarray:
    """[len(ids) - k + 1] int64: the key of each window ids[j:j+k] (empty when the stream is shorter)."""
    n_windows = len(ids) - k + 1
    if n_windows <= 0:
        return np.zeros(0, dtype=np.int64)
    keys = ids[:n_windows].astype(np.int64)
    for t in range(1, k):
        keys = keys * vocab_size + ids[t : t + n_windows]
    return keys


def absolute_discount(counts: np.ndarray) -> float:
    """D = n1 / (n1 + 2 n2) from the count-of-counts of one level; FALLBACK_DISCOUNT when n1 = 0."""
    n1 = int(np.count_nonzero(counts == 1))
    n2 = int(np.count_nonzero(counts == 2))
    return n1 / (n1 + 2 * n2) if n1 > 0 else FALLBACK_DISCOUNT


def count_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct keys ascending [U], how often each occurs [U], where each run starts in sorted keys [U]).
    One sort and a comparison of neighbours: np.unique's hash path is ~10x slower on int64 keys."""
    keys = np.sort(keys)
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]])) if len(keys) else np.zeros(0, np.int64)
    return keys[starts], np.diff(np.append(starts, len(keys))), starts


def _build_level(grams: np.ndarray, counts: np.ndarray, vocab_size: int) -> _Level:
    """The level's context table from its sorted k-grams: a context's k-grams are contiguous."""
    contexts, types, first = count_keys(grams // vocab_size)
    totals = np.add.reduceat(counts, first) if len(grams) else np.zeros(0, dtype=np.int64)
    return _Level(grams, counts, contexts, totals, types, absolute_discount(counts))


def _find(sorted_keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, found) of each query in sorted_keys; position is only meaningful where found."""
    if len(sorted_keys) == 0:
        return np.zeros(len(queries), dtype=np.int64), np.zeros(len(queries), dtype=bool)
    position = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    return position, sorted_keys[position] == queries


class KneserNey:
    """Interpolated Kneser-Ney n-gram LM over integer token ids 0..vocab_size-1 (formulas: module docstring)."""

    def __init__(self, order: int, vocab_size: int):
        if int(order) != order or order < 1:
            raise ValueError(f"KneserNey: order must be an integer >= 1, got {order!r}")
        if int(vocab_size) != vocab_size or vocab_size < 1:
            raise ValueError(f"KneserNey: vocab_size must be an integer >= 1, got {vocab_size!r}")
        if int(vocab_size) ** int(order) > np.iinfo(np.int64).max:
            raise ValueError(f"KneserNey: vocab_size**order = {vocab_size}**{order} does not fit the int64 n-gram keys")
        self.order = int(order)
        self.vocab_size = int(vocab_size)
        self.levels: list[_Level] = []  # levels[k-1] holds level k
        self.discounts: list[float] = []  # D_1 .. D_order, once fitted

    def _check_ids(self, ids, what: str) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"KneserNey.{what}: ids must be a non-empty 1-D array, got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"KneserNey.{what}: ids must be integers, got dtype {ids.dtype}")
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.vocab_size:
            raise ValueError(f"KneserNey.{what}: ids must lie in 0..{self.vocab_size - 1}, found {low}..{high}")
        return ids.astype(np.int64)

    def fit(self, ids: np.ndarray) -> KneserNey:
        """Count one stream of ids: raw counts at the highest order, continuation counts below."""
        ids = self._check_ids(ids, "fit")
        vocab, order = self.vocab_size, self.order
        grams, counts, _ = count_keys(window_keys(ids, order, vocab))
        highest = _build_level(grams, counts, vocab)  # raw counts
        levels = [highest]
        for k in range(order - 1, 0, -1):
            # each distinct (k+1)-gram x g of the stream adds one to c_k(g); dropping x is key % V^k
            distinct = highest.grams if k == order - 1 else count_keys(window_keys(ids, k + 1, vocab))[0]
            grams, counts, _ = count_keys(distinct % vocab**k)
            levels.insert(0, _build_level(grams, counts, vocab))
        self.levels = levels
        self.discounts = [level.discount for level in levels]
        return self

    def _interpolate(self, level_keys: list[np.ndarray]) -> np.ndarray:
        """[Q] P(w | h) of Q queries given, per level k = 1..n, the key of each query's k-gram hw, or -1
        where the query's context is shorter than k-1 (it keeps the probability of its last level)."""
        prob = np.full(len(level_keys[0]), 1.0 / self.vocab_size)  # P_0
        for level, keys in zip(self.levels, level_keys):
            usable = np.flatnonzero(keys >= 0)
            grams = keys[usable]
            at_context, seen = _find(level.contexts, grams // self.vocab_size)
            usable, grams, at_context = usable[seen], grams[seen], at_context[seen]  # unseen h: P_k = P_{k-1}
            at_gram, found = _find(level.grams, grams)
            count = np.where(found, level.counts[at_gram], 0)
            discount, total, types = level.discount, level.totals[at_context], level.types[at_context]
            prob[usable] = (np.maximum(count - discount, 0.0) + discount * types * prob[usable]) / total
        return prob

    def _require_fitted(self, what: str) -> None:
        if not self.levels:
            raise RuntimeError(f"KneserNey.{what}: call fit() first")

    def log_probs(self, ids: np.ndarray, start: int = 0) -> np.ndarray:
        """[len(ids) - start] float64: ln P(ids[i] | ids[i-order+1:i]) for i >= start; the context may
        reach into ids[:start], and the first order-1 positions of ids use their shorter context."""
        self._require_fitted("log_probs")
        ids = self._check_ids(ids, "log_probs")
        if int(start) != start or not 0 <= start <= len(ids):
            raise ValueError(f"KneserNey.log_probs: start must be an integer in 0..{len(ids)}, got {start!r}")
        first = max(0, start - (self.order - 1))  # the earliest token any scored position looks at
        stream = ids[first:]
        scored = np.arange(start - first, len(stream))  # positions in stream
        level_keys = []
        for k in range(1, self.order + 1):
            windows = window_keys(stream, k, self.vocab_size)  # windows[j] ends at stream[j + k - 1]
            begin = scored - (k - 1)
            keys = np.full(len(scored), -1, dtype=np.int64)  # -1: fewer than k-1 predecessors
            keys[begin >= 0] = windows[begin[begin >= 0]]
            level_keys.append(keys)
        return np.log(self._interpolate(level_keys))

    def nll(self, ids: np.ndarray, start: int = 0) -> float:
        """-sum(log_probs(ids, start)) in nats, float64."""
        return float(-np.sum(self.log_probs(ids, start), dtype=np.float64))

    def distribution(self, context) -> np.ndarray:
        """[V] P(w | context) for every token w, from the last order-1 tokens of context (may be empty)."""
        self._require_fitted("distribution")
        context = self._check_ids(context, "distribution") if len(context) else np.zeros(0, dtype=np.int64)
        context = context[max(0, len(context) - (self.order - 1)) :]
        tokens = np.arange(self.vocab_size, dtype=np.int64)
        level_keys = []
        for k in range(1, self.order + 1):
            if k - 1 > len(context):
                level_keys.append(np.full(self.vocab_size, -1, dtype=np.int64))  # context too short for level k
                continue
            context_key = 0
            for token in context[len(context) - (k - 1) :]:  # the key of the last k-1 tokens (at most order-1)
                context_key = context_key * self.vocab_size + int(token)
            level_keys.append(context_key * self.vocab_size + tokens)
        return self._interpolate(level_keys)

    def describe(self) -> str:
        """One line: the variant, the order, the fitted discounts."""
        if self.discounts:
            shown = " ".join(f"D{k}={d:.4g}" for k, d in enumerate(self.discounts, start=1))
        else:
            shown = "not fitted"
        return (
            f"interpolated Kneser-Ney (Chen & Goodman 1998), order {self.order}, discounts {shown}, "
            f"lowest order interpolated with uniform 1/V (V={self.vocab_size})"
        )
