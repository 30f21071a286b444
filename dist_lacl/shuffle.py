"""A keyed pseudo-random permutation of [0, n) evaluated per index, in O(1) memory whatever n is.

`KeyedPermutation(n, seed, epoch)[positions]` is the value at those positions of a permutation of
[0, n) chosen by (seed, epoch): a balanced Feistel network on 2k-bit integers (2^2k >= n, so at
most 4n), made a bijection of [0, n) by cycle walking (re-encrypt a value until it falls below n).
A Feistel network is a bijection whatever its round function, so the permutation is exact; the
round function (splitmix64's finaliser) only decides how well it mixes. Nothing of size n is ever
stored: every rank computes the few positions of its batch, identically.
"""

from __future__ import annotations

import numpy as np

_ROUNDS = 6
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


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
            state = _mix(state + np.array([0x9E3779B97F4A7C15], dtype=np.uint64) * np.uint64(i + 1))
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
