"""False negatives: the integer keys that name a batch's passages and parallel texts, the masks the IR
and semantic losses apply with them, and how many candidates those masks remove.

A false negative is a candidate in an anchor's denominator that is really a positive: in the IR loss a
passage with the docid of one of the query's positives (another query's positive or hard negative); in
the semantic loss a pair whose English text, or whose translation, equals the anchor pair's (gettext
data repeats "Open", "File" across languages). docs/method.md states the rules.

Keys are int64 from a stable hash (blake2b), so every rank and every run derives the same key from the
same text; they travel across ranks as tensors, beside the representations.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor


def stable_key(value: str, namespace: str = "") -> int:
    """The int64 key of a docid (or a text) within `namespace`: the dataset's name when batches mix
    datasets whose docids may collide, "" for a single dataset. blake2b, never Python's hash() (salted
    per process, so ranks would disagree)."""
    # Dataset names hold no NUL, so the first NUL ends the namespace: no two (namespace, value) share a string.
    digest = hashlib.blake2b(f"{namespace}\0{value}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little", signed=True)


@dataclass(eq=False)
class BatchKeys:
    """The keys of one batch (a rank's rows, or the global batch once gathered).

    passages [B*G]: each passage's docid key, in the batch's passage order (query by query, positive first).
    positives [B, P]: the keys of every positive of each query's record (its sampled positive first;
        short rows repeat it, which matches nothing new).
    para_en, para_xx [N]: the keys of each parallel pair's English text and translation (None without
        the parallel batch).
    """

    passages: Tensor
    positives: Tensor
    para_en: Tensor | None = None
    para_xx: Tensor | None = None

    def __eq__(self, other) -> bool:  # tensors compared whole (a batch's meta is compared in tests)
        if not isinstance(other, BatchKeys):
            return NotImplemented
        return all(a is b or (a is not None and b is not None and torch.equal(a, b))
                   for a, b in zip(self._fields(), other._fields()))

    def _fields(self) -> tuple:
        return self.passages, self.positives, self.para_en, self.para_xx

    def to(self, device) -> BatchKeys:
        return BatchKeys(*(None if t is None else t.to(device) for t in self._fields()))

    @staticmethod
    def concat(parts: list[BatchKeys]) -> BatchKeys:
        """Every rank's keys, concatenated rank by rank (the order gather_for_loss concatenates rows in)."""
        width = max(p.positives.shape[1] for p in parts)
        positives = torch.cat([_pad_columns(p.positives, width) for p in parts])
        pairs = [torch.cat([getattr(p, name) for p in parts]) if parts[0].para_en is not None else None
                 for name in ("para_en", "para_xx")]
        return BatchKeys(torch.cat([p.passages for p in parts]), positives, *pairs)


def _pad_columns(keys: Tensor, width: int) -> Tensor:
    """keys [B, P] -> [B, width], each row padded with its first key (which adds no new match)."""
    return torch.cat([keys, keys[:, :1].expand(-1, width - keys.shape[1])], dim=1)


def ir_keys(positive_docids: list[list[str]], passage_docids: list[str], namespace: str = "") -> BatchKeys:
    """The IR part of a batch's keys: per query the docids of all its record's positives (the sampled
    one first), and every passage's docid, in `namespace` (see stable_key)."""
    width = max(len(ids) for ids in positive_docids)
    rows = [[stable_key(d, namespace) for d in ids] + [stable_key(ids[0], namespace)] * (width - len(ids))
            for ids in positive_docids]
    return BatchKeys(torch.tensor([stable_key(d, namespace) for d in passage_docids], dtype=torch.long),
                     torch.tensor(rows, dtype=torch.long))


def group_keys(records: list[dict], groups: list[list[dict]], namespace: str = "") -> BatchKeys:
    """ir_keys of a step's IR records and their sampled groups (positive first): each query's sampled
    positive, then its record's other positives."""
    positives = [[g[0]["docid"]] + [p["docid"] for p in r["positives"] if p["docid"] != g[0]["docid"]]
                 for r, g in zip(records, groups)]
    return ir_keys(positives, [p["docid"] for g in groups for p in g], namespace)


def text_keys(texts: list[str]) -> Tensor:
    """[N] int64 keys of texts, equal exactly when the strings are equal."""
    return torch.tensor([stable_key(t, "text") for t in texts], dtype=torch.long)


# ---------------------------------------------------------------- masks (per anchor row: exact under sharding)

def ir_mask(keys: BatchKeys, rows: Tensor, group_size: int) -> Tensor:
    """[len(rows), B*G] bool: True where passage j is a false negative of global query rows[i], i.e. has
    the key of one of its positives and is not its own positive column rows[i] * group_size."""
    mask = torch.zeros(len(rows), keys.passages.shape[0], dtype=torch.bool, device=keys.passages.device)
    for column in keys.positives[rows].T:  # P compares of [rows, B*G]: never a [rows, B*G, P] tensor
        mask |= keys.passages[None, :] == column[:, None]
    mask[torch.arange(len(rows), device=mask.device), rows * group_size] = False
    return mask


def pair_mask(keys: BatchKeys, rows: Tensor) -> Tensor:
    """[len(rows), N] bool: True where pair j (j != rows[i]) shares its English text or its translation
    with pair rows[i]: the same in both directions of the semantic loss."""
    en, xx = keys.para_en, keys.para_xx
    mask = (en[rows, None] == en[None, :]) | (xx[rows, None] == xx[None, :])
    mask[torch.arange(len(rows), device=mask.device), rows] = False
    return mask


# ---------------------------------------------------------------- counts, for logging and bench/

def ir_count(keys: BatchKeys) -> int:
    """How many (query, passage) candidates ir_mask removes over the whole batch (= ir_mask(all).sum()),
    counted in O(B * P) from the passages' key counts instead of a [B, B*G] matrix."""
    counts = Counter(keys.passages.tolist())
    return sum(sum(counts[k] for k in set(row)) - 1 for row in keys.positives.tolist())


def pair_count(keys: BatchKeys) -> int:
    """How many (anchor, candidate) entries pair_mask removes in one direction (= pair_mask(all).sum()):
    pairs sharing the English text, plus those sharing the translation, less those sharing both."""
    def same(values) -> int:
        return sum(n * (n - 1) for n in Counter(values).values())

    en, xx = keys.para_en.tolist(), keys.para_xx.tolist()
    return same(en) + same(xx) - same(zip(en, xx))


def mask_counts(keys: BatchKeys) -> dict[str, float]:
    """{mask/ir, mask/semantic}: the candidates masked this step over the global batch."""
    out = {"mask/ir": float(ir_count(keys))}
    if keys.para_en is not None:
        out["mask/semantic"] = float(pair_count(keys))
    return out
