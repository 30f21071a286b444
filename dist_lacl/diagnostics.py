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


@torch.no_grad()
def language_linear_probe_accuracy(reps: Tensor, langs: list[str], held_out: float = 0.3, seed: int = 0,
                                   steps: int = 100, weight_decay: float = 1e-3) -> float:
    """Held-out accuracy of a linear language-ID probe (multinomial logistic regression) on reps [N, D].

    Each language with at least 2 examples puts round(held_out * n) of them (at least 1, at most n - 1),
    drawn by a generator seeded with `seed`, in the test split. Where the nearest-centroid rule asks
    whether the language is the *mean* direction, this asks whether any direction separates the
    languages: a representation can hide language from the first and not from the second.
    """
    counts_by_lang = Counter(langs)
    names = sorted(lang for lang, n in counts_by_lang.items() if n >= 2)
    if len(names) < 2:
        return float("nan")
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for lang in names:  # languages in sorted order and a CPU generator: the same split everywhere
        rows = torch.tensor([i for i, label in enumerate(langs) if label == lang])
        rows = rows[torch.randperm(len(rows), generator=generator)]
        n_test = min(max(round(held_out * len(rows)), 1), len(rows) - 1)
        test += rows[:n_test].tolist()
        train += rows[n_test:].tolist()
    x = F.normalize(reps.detach().float(), dim=-1)
    y = torch.tensor([names.index(lang) if lang in names else -1 for lang in langs], device=x.device)
    train_rows, test_rows = torch.tensor(train, device=x.device), torch.tensor(test, device=x.device)
    predicted = linear_probe_predictions(x[train_rows], y[train_rows], x[test_rows], len(names), steps, weight_decay)
    return float((predicted == y[test_rows]).float().mean())


def linear_probe_predictions(x_train: Tensor, y_train: Tensor, x_test: Tensor, num_classes: int,
                             steps: int = 100, weight_decay: float = 1e-3) -> Tensor:
    """Fit softmax regression (weights [D, C] and bias [C], from zeros, full-batch L-BFGS for `steps`
    iterations, L2 penalty `weight_decay`) to x_train [M, D] with labels y_train [M]; return the
    predicted classes [K] of x_test [K, D]. Deterministic: no random start, no mini-batches."""
    w = torch.zeros(x_train.shape[1], num_classes, device=x_train.device, requires_grad=True)
    b = torch.zeros(num_classes, device=x_train.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x_train @ w + b, y_train) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return (x_test @ w.detach() + b.detach()).argmax(1)
