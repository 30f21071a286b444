"""Alignment diagnostics on a batch of representations: how language-agnostic they are."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

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
    found = held_out_language_id(reps, langs, held_out, seed, steps=steps, weight_decay=weight_decay)
    return float("nan") if found is None else found.accuracy(found.linear)


@dataclass
class LanguageId:
    """Held-out language identification: the languages, and per held-out row its true label and the label
    each rule predicted (indices into `names`)."""

    names: list[str]
    truth: Tensor
    centroid: Tensor
    """Nearest centroid of the training rows (cosine)."""
    linear: Tensor
    """Multinomial logistic regression fitted on the training rows (`linear_probe_predictions`)."""

    def accuracy(self, predicted: Tensor) -> float:
        return float((predicted == self.truth).float().mean())

    def chance(self) -> float:
        """The accuracy of always answering the most frequent held-out language."""
        return float(torch.bincount(self.truth, minlength=len(self.names)).max()) / len(self.truth)


@torch.no_grad()
def held_out_language_id(reps: Tensor, langs: list[str], held_out: float = 0.3, seed: int = 0,
                         groups: list | None = None, steps: int = 100,
                         weight_decay: float = 1e-3) -> LanguageId | None:
    """Both language-ID rules on one held-out split of reps [N, D] (unit-normalised first); None when
    fewer than two languages have rows on both sides of the split.

    Without `groups`, each language is split on its own (`language_linear_probe_accuracy`). With
    `groups` (one per row: e.g. the English sentence that a row translates), whole groups go to one
    side: a held-out sentence's translations are then never among the training rows, which would pull
    it towards their language's centroid and reward a language-agnostic encoder with misclassification.
    """
    train, test = (_split_by_group(groups, held_out, seed) if groups is not None
                   else _split_by_language(langs, held_out, seed))
    names = sorted({langs[i] for i in train} & {langs[i] for i in test})
    if len(names) < 2:
        return None
    train = [i for i in train if langs[i] in names]
    test = [i for i in test if langs[i] in names]
    x = F.normalize(reps.detach().float(), dim=-1)
    y = torch.tensor([names.index(lang) if lang in names else -1 for lang in langs], device=x.device)
    train_rows, test_rows = torch.tensor(train, device=x.device), torch.tensor(test, device=x.device)
    x_train, y_train, x_test = x[train_rows], y[train_rows], x[test_rows]
    linear = linear_probe_predictions(x_train, y_train, x_test, len(names), steps, weight_decay)
    return LanguageId(names, y[test_rows], nearest_centroid_predictions(x_train, y_train, x_test, len(names)),
                      linear)


def _split_by_language(langs: list[str], held_out: float, seed: int) -> tuple[list[int], list[int]]:
    """Each language with at least 2 rows puts round(held_out * n) of them (at least 1, at most n - 1) in
    the test split, drawn by a CPU generator seeded with `seed`, languages in sorted order."""
    counts_by_lang = Counter(langs)
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for lang in sorted(lang for lang, n in counts_by_lang.items() if n >= 2):
        rows = torch.tensor([i for i, label in enumerate(langs) if label == lang])
        rows = rows[torch.randperm(len(rows), generator=generator)]
        n_test = min(max(round(held_out * len(rows)), 1), len(rows) - 1)
        test += rows[:n_test].tolist()
        train += rows[n_test:].tolist()
    return train, test


def _split_by_group(groups: list, held_out: float, seed: int) -> tuple[list[int], list[int]]:
    """round(held_out * G) of the G distinct groups (at least 1, at most G - 1), drawn by a CPU generator
    seeded with `seed` from the groups in sorted order, put all their rows in the test split."""
    names = sorted(set(groups), key=str)
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = min(max(round(held_out * len(names)), 1), len(names) - 1)
    test_groups = {names[i] for i in order[:n_test]}
    test = [i for i, g in enumerate(groups) if g in test_groups]
    return [i for i, g in enumerate(groups) if g not in test_groups], test


def nearest_centroid_predictions(x_train: Tensor, y_train: Tensor, x_test: Tensor, num_classes: int) -> Tensor:
    """The class [K] whose training centroid (mean of x_train [M, D] with labels y_train [M]) has the highest
    cosine with each row of x_test [K, D]."""
    sums = torch.zeros(num_classes, x_train.shape[1], device=x_train.device,
                       dtype=x_train.dtype).index_add_(0, y_train, x_train)
    return (F.normalize(x_test, dim=-1) @ F.normalize(sums, dim=-1).T).argmax(1)


@torch.no_grad()
def translation_retrieval(e_reps: Tensor, f_reps: Tensor) -> dict[str, float]:
    """P@1 of finding each sentence's translation among all the other side's sentences, both ways:
    `en_to_xx` (row i of e_reps [N, D] against all of f_reps [N, D]) and `xx_to_en`. Cosine; a tie counts
    as a miss unless the translation comes first."""
    sims = F.normalize(e_reps.float(), dim=-1) @ F.normalize(f_reps.float(), dim=-1).T
    right = torch.arange(sims.shape[0], device=sims.device)
    return {"en_to_xx": float((sims.argmax(1) == right).float().mean()),
            "xx_to_en": float((sims.argmax(0) == right).float().mean())}


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
