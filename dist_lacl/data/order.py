"""The order of training examples: a keyed permutation of each epoch, or draws by language.

KeyedPermutation: a keyed pseudo-random permutation of [0, n) evaluated per index, in O(1) memory
whatever n is. `KeyedPermutation(n, seed, epoch)[positions]` is the value at those positions of a permutation of
[0, n) chosen by (seed, epoch): a balanced Feistel network on 2k-bit integers (2^2k >= n, so at
most 4n), made a bijection of [0, n) by cycle walking (re-encrypt a value until it falls below n).
A Feistel network is a bijection whatever its round function, so the permutation is exact; the
round function (splitmix64's finaliser) only decides how well it mixes. Nothing of size n is ever
stored: every rank computes the few positions of its batch, identically.

LanguageSampler: language sampling for the parallel and monolingual streams, p(lang) proportional to
n_lang^alpha.

XLM-R (Conneau et al. 2020) samples a language with probability q_l = p_l^alpha / sum_j p_j^alpha,
p_l = n_l / N, so that a few large languages do not crowd out the rest: alpha = 1 is uniform over
examples (today's behaviour, in expectation), alpha = 0 uniform over languages, alpha = 0.3 XLM-R's
choice. Within the drawn language an example is drawn uniformly.

Draw k (a global position in the stream: `step * global_batch + row`) is a pure function of
(seed, k): two uniforms from a counter-based hash (splitmix64) pick the language and the example.
Draws are with replacement, so a resumed run, or one on another number of ranks, draws exactly the
same examples from any position without replaying the ones before it. Memory is O(#languages) when
the examples of each language are contiguous (as `dist-lacl data` writes them), otherwise one int64
index per example (a stable sort of the labels).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

# ---------------------------------------------------------------- the epoch permutation

_ROUNDS = 6
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, on uint64 arrays (multiplication wraps modulo 2^64, as intended)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _round_keys(seed: int, epoch: int) -> np.ndarray:
    base = np.array([(seed * 1_000_003 + epoch) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
    keys, state = [], base
    with np.errstate(over="ignore"):
        for i in range(_ROUNDS):
            state = _mix(state + np.array([_GOLDEN], dtype=np.uint64) * np.uint64(i + 1))
            keys.append(state[0])
    return np.array(keys, dtype=np.uint64)


class KeyedPermutation:
    """The permutation of [0, n) for (seed, epoch); index it with an int array of positions."""

    def __init__(self, n: int, seed: int, epoch: int):
        if n < 1:
            raise ValueError(f"a permutation of {n} elements")
        self.n, self.seed, self.epoch = n, seed, epoch
        self.half_bits = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
        self.half_mask = np.uint64((1 << self.half_bits) - 1)
        self.keys = _round_keys(seed, epoch)

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        shift = np.uint64(self.half_bits)
        left, right = x >> shift, x & self.half_mask
        with np.errstate(over="ignore"):
            for key in self.keys:
                left, right = right, left ^ (_mix(right ^ key) & self.half_mask)
        return (left << shift) | right

    def __getitem__(self, positions) -> np.ndarray:
        """Values at `positions` (ints in [0, n)) -> int64 array of the same shape."""
        x = np.asarray(positions, dtype=np.int64)
        if x.size and (x.min() < 0 or x.max() >= self.n):
            raise IndexError(f"positions outside [0, {self.n})")
        out = self._encrypt(x.astype(np.uint64))
        # Cycle walking: the domain is at most 4n, so a value needs fewer than 4 more rounds on average.
        outside = out >= np.uint64(self.n)
        while outside.any():
            out[outside] = self._encrypt(out[outside])
            outside = out >= np.uint64(self.n)
        return out.astype(np.int64)

    def slice(self, start: int, stop: int) -> list[int]:
        """The values at positions start..stop-1, as Python ints."""
        return self[np.arange(start, stop, dtype=np.int64)].tolist()


# ---------------------------------------------------------------- language sampling

def language_probabilities(counts: Mapping[str, int], alpha: float) -> dict[str, float]:
    """q_l = n_l^alpha / sum_j n_j^alpha over the languages with n_l > 0 (sorted by code)."""
    if alpha < 0:
        raise ValueError(f"alpha {alpha}: expected a number >= 0")
    present = {lang: n for lang, n in sorted(counts.items()) if n > 0}
    if not present:
        raise ValueError("no examples to sample from")
    weights = np.array([float(n) ** alpha for n in present.values()])
    return dict(zip(present, (weights / weights.sum()).tolist()))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 (a golden-ratio step, then the finaliser) on uint64 arrays (wrapping arithmetic)."""
    return _mix(x + _GOLDEN)


def _uniforms(seed: int, positions: np.ndarray, stream: int) -> np.ndarray:
    """Uniforms in [0, 1), one per position, a pure function of (seed, position, stream)."""
    key = _splitmix64(np.full(positions.shape, (seed << 1) | stream, dtype=np.uint64))
    return (_splitmix64(key ^ positions.astype(np.uint64)) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


class Categorical:
    """Draw k's category (0 .. len(probabilities) - 1), a pure function of (seed, k, stream): the language
    of a language sampler's draw, the dataset of a step of several IR datasets (`mixture`)."""

    def __init__(self, probabilities: Sequence[float], seed: int, stream: int = 0):
        self.seed, self.stream = seed, stream
        self._cumulative = np.cumsum(probabilities)
        self._cumulative[-1] = 1.0  # rounding must never leave a uniform above the last bin

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """The category of each draw position (an int64 array of the positions' shape)."""
        u = _uniforms(self.seed, np.asarray(positions, dtype=np.uint64), self.stream)
        return np.searchsorted(self._cumulative, u, side="right")


class LanguageSampler:
    """Deterministic, resumable draws of example indices with language probabilities n_l^alpha / sum."""

    def __init__(self, langs: Sequence[str], seed: int, alpha: float):
        """langs: the language code of every example (index i -> langs[i])."""
        labels = np.asarray(langs)
        codes, label = np.unique(labels, return_inverse=True)
        self.languages = [str(c) for c in codes]
        self._label = label.reshape(-1).astype(np.int32)
        counts = np.bincount(self._label, minlength=len(self.languages))
        order = np.argsort(self._label, kind="stable")
        # Contiguous languages (the builders' layout) need no index table: example j of language l is start + j.
        self._order = None if np.array_equal(order, np.arange(len(order))) else order
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self._setup(dict(zip(self.languages, counts.tolist())), starts, seed, alpha)

    @classmethod
    def from_ranges(cls, ranges: Mapping[str, tuple[int, int]], seed: int, alpha: float) -> LanguageSampler:
        """ranges: lang -> (start, stop), the half-open index range of its examples (disjoint)."""
        self = cls.__new__(cls)
        items = sorted((lang, (int(a), int(b))) for lang, (a, b) in ranges.items() if b > a)
        self.languages = [lang for lang, _ in items]
        self._order, self._label = None, None
        self._setup({lang: b - a for lang, (a, b) in items}, np.array([a for _, (a, _) in items], np.int64),
                    seed, alpha)
        return self

    def _setup(self, counts: dict[str, int], starts: np.ndarray, seed: int, alpha: float) -> None:
        if not 0 <= seed < 2**62:
            raise ValueError(f"seed {seed}: expected an integer from 0 to 2^62")
        self.seed, self.alpha, self.counts = seed, alpha, counts
        probs = language_probabilities(counts, alpha)
        self._sizes = np.array([counts[lang] for lang in self.languages], np.int64)
        self._starts = starts
        self._language = Categorical([probs[lang] for lang in self.languages], seed, stream=0)

    def expected_mix(self) -> dict[str, float]:
        """The probability of each language per draw (for logging beside the observed mix)."""
        return language_probabilities(self.counts, self.alpha)

    def indices(self, position: int, count: int) -> list[int]:
        """Example indices of draws position .. position + count - 1 (each a function of (seed, k) only)."""
        if position < 0 or count < 0:
            raise ValueError(f"position {position}, count {count}: expected numbers >= 0")
        k = np.arange(position, position + count, dtype=np.uint64)
        lang = self._language(k)
        within = np.minimum((_uniforms(self.seed, k, 1) * self._sizes[lang]).astype(np.int64), self._sizes[lang] - 1)
        flat = self._starts[lang] + within
        return (flat if self._order is None else self._order[flat]).tolist()

    def languages_of(self, indices: Sequence[int]) -> list[str]:
        """The language code of each example index."""
        idx = np.asarray(indices, dtype=np.int64)
        if self._label is not None:
            return [self.languages[i] for i in self._label[idx]]
        pos = np.searchsorted(self._starts, idx, side="right") - 1
        if len(idx) and (np.any(pos < 0) or np.any(idx >= self._starts[pos] + self._sizes[pos])):
            raise IndexError("an index outside every language's range")
        return [self.languages[i] for i in pos]

    def mix(self, indices: Sequence[int]) -> dict[str, float]:
        """The observed share of each language among `indices` (a step's draws), for logging."""
        counts = Counter(self.languages_of(indices))
        return {lang: counts[lang] / max(len(indices), 1) for lang in self.languages}
