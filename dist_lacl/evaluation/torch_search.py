"""Exact inner-product top-k in plain torch, on one device or split across several: GPU search where
faiss-gpu is not installed (its wheels exist for few CUDA versions).

The same results as faiss flat search (`index.search_flat_cpu`): scores computed in float32 (TF32 off),
ordered by score descending and, among equal scores, by row ascending (the order `index.merge_topk`
gives the merged lists). Where several rows tie at the k-th score this keeps the lowest-numbered ones
(numpy's stable order); faiss's heap keeps some of them of its own choosing. `torch.topk` leaves both
orders unspecified, so ties are settled here: the result does not depend on kernel, tiling or devices.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

SCORE_TILE_BYTES = 2**30
"""Largest float32 score tile [queries, rows] per device at once: memory stays bounded by it, not by the corpus."""


def num_cuda_devices() -> int:
    """CUDA devices torch can use here (0 with a CPU build or no visible GPU)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextlib.contextmanager
def full_fp32_matmul() -> Iterator[None]:
    """float32 matmuls in full precision (no TF32) for the duration: faiss's scores are plain float32."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def ordered(scores: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each line of (scores, rows) [Q, n] sorted by score descending, equal scores by row ascending."""
    by_row = rows.argsort(dim=1, stable=True)
    scores, rows = scores.gather(1, by_row), rows.gather(1, by_row)
    by_score = scores.argsort(dim=1, descending=True, stable=True)
    return scores.gather(1, by_score), rows.gather(1, by_score)


def tile_topk(scores: torch.Tensor, k: int, first_row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of a score tile [Q, n] -> (scores, global rows) [Q, k], ordered, ties at the k-th place
    resolved to the lowest rows (the rare queries where topk picked others are redone one by one)."""
    values, index = scores.topk(k, dim=1)
    kth = values[:, -1:]
    tied_in_tile = (scores == kth).sum(1)
    tied_taken = (values == kth).sum(1)
    for q in (tied_in_tile != tied_taken).nonzero().flatten().tolist():
        above = values[q] != kth[q]
        lowest_tied = (scores[q] == kth[q]).nonzero().flatten()[:int(tied_taken[q])]
        index[q] = torch.cat([index[q][above], lowest_tied])
    return ordered(values, index + first_row)


def merge(best: tuple[torch.Tensor, torch.Tensor] | None, new: tuple[torch.Tensor, torch.Tensor],
          k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of two ordered result lists over disjoint rows."""
    if best is None:
        return new
    scores, rows = ordered(torch.cat([best[0], new[0]], 1), torch.cat([best[1], new[1]], 1))
    return scores[:, :k], rows[:, :k]


def search_rows(queries: torch.Tensor, corpus: torch.Tensor, k: int, first_row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of `corpus` [n, D] (already on the queries' device) for `queries` [Q, D], tile by tile."""
    tile_rows = max(1, SCORE_TILE_BYTES // (4 * max(len(queries), 1)))
    best = None
    for start in range(0, len(corpus), tile_rows):
        tile = corpus[start:start + tile_rows]
        scores = (queries @ tile.T).float()
        best = merge(best, tile_topk(scores, min(k, len(tile)), first_row + start), k)
    return best


def search_flat(queries: np.ndarray, block: np.ndarray, k: int, devices: Sequence[torch.device | str],
                fp16: bool = False, query_batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k rows of `block` [n, D] float32 for `queries` [Q, D] -> (scores, rows) [Q, k] numpy,
    k <= n. The block's rows are split into contiguous shards, one per device (like faiss's sharded
    index); each device searches its shard and the per-device lists are merged exactly. fp16: vectors
    stored and multiplied in float16 (half the memory, scores rounded, as faiss's useFloat16)."""
    dtype = torch.float16 if fp16 else torch.float32
    bounds = np.linspace(0, len(block), len(devices) + 1).astype(int)
    shards = [(int(lo), torch.from_numpy(block[lo:hi]).to(device, dtype))
              for device, lo, hi in zip(devices, bounds, bounds[1:]) if hi > lo]
    scores = np.empty((len(queries), k), dtype=np.float32)
    rows = np.empty((len(queries), k), dtype=np.int64)
    with full_fp32_matmul(), torch.no_grad():
        for start in range(0, len(queries), query_batch):
            batch = torch.from_numpy(queries[start:start + query_batch])
            # Every device is given its work before any result is read back: the devices run together.
            parts = [search_rows(batch.to(shard.device, dtype), shard, k, lo) for lo, shard in shards]
            best = None
            for part in parts:
                best = merge(best, (part[0].cpu(), part[1].cpu()), k)
            scores[start:start + len(batch)] = best[0].numpy()
            rows[start:start + len(batch)] = best[1].numpy()
    return scores, rows
