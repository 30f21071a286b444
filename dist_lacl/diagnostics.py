"""Alignment diagnostics on a batch of representations: how language-agnostic they are."""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def parallel_similarity(e_reps: Tensor, f_reps: Tensor) -> dict[str, float]:
    """Mean cosine of translation pairs (e_i, f_i) and of non-pairs (e_i, f_j), i != j. [N, D] each."""
    sims = F.normalize(e_reps.float(), dim=-1) @ F.normalize(f_reps.float(), dim=-1).T
    n = sims.shape[0]
    pair = sims.diagonal().mean()
    other = (sims.sum() - sims.diagonal().sum()) / max(n * n - n, 1)
    return {"align/pair_cos": float(pair), "align/nonpair_cos": float(other), "align/gap": float(pair - other)}


@torch.no_grad()
def language_centroid_accuracy(reps: Tensor, langs: list[str]) -> float:
    """Leave-one-out nearest-centroid language identification accuracy of reps [N, D].

    1.0 means the language is fully recoverable from a representation; chance (1 / #languages) means
    the representations carry no language information this simple rule can find.
    """
    counts_by_lang = Counter(langs)
    keep = [i for i, lang in enumerate(langs) if counts_by_lang[lang] >= 2]  # leave-one-out needs 2
    names = sorted({langs[i] for i in keep})
    if len(names) < 2:
        return float("nan")
    x = F.normalize(reps[keep].float(), dim=-1)
    # Built on the representations' device: CUDA reps index-added into CPU sums would fail.
    label = torch.tensor([names.index(langs[i]) for i in keep], device=x.device)
    return float((centroid_predictions(x, label, len(names)) == label).float().mean())


def centroid_predictions(x: Tensor, label: Tensor, num_langs: int) -> Tensor:
    """Leave-one-out nearest-centroid predictions [N] for unit vectors x [N, D] with labels [N] (each
    language at least twice). Pure tensor code on x's device (testable on the `meta` device)."""
    sums = torch.zeros(num_langs, x.shape[1], device=x.device, dtype=x.dtype).index_add_(0, label, x)
    counts = torch.zeros(num_langs, 1, device=x.device, dtype=x.dtype).index_add_(0, label, torch.ones_like(x[:, :1]))
    scores = x @ (sums / counts).T
    # Each point is scored against its own language's centroid computed without it.
    own = (sums[label] - x) / (counts[label] - 1)
    scores[torch.arange(len(label), device=x.device), label] = (x * own).sum(1)
    return scores.argmax(1)
