"""Two options of the language loss (Eq. 3), as pure functions beside `losses.language_loss`.

(a) Its own temperature. With the balanced reading, dL/d(diff) = 0.5 tanh(diff / 2) where
    diff = (z.e - z.f) / tau: at the IR temperature (0.05) a cosine gap of 0.1 is already diff = 2,
    where the gradient is near its cap, so the loss acts like |gap| (a sign gradient) and cannot tell
    a nearly balanced sentence from a badly unbalanced one. A larger temperature for this term alone
    keeps it in the quadratic region (gradient proportional to the gap) without touching the IR and
    semantic softmaxes. `language_temperature(cfg)` picks it.
(b) Monolingual sentences compared only with the pairs of their own language: the loss asks z (in L)
    to sit as near English e as its own language's f, which is the component of z that says "L";
    pairs of other languages carry no information about L's offset. Where the batch holds no pair of
    z's language (the low-resource setting: monolingual-only languages), that row falls back to every
    pair, so the loss never goes silent on exactly the languages it is meant to help.
    `loss.language_pairs=own` selects it: the trainer builds the mask once per step from the gathered
    languages (`trainer.step_language_mask`) and `losses.lacl_loss` applies it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .losses import WHOLE, Shard, _language_tau, language_loss


def language_temperature(cfg) -> float:
    """The language loss's temperature: `cfg.language_temperature` if set, else `cfg.temperature`
    (what `losses.lacl_loss` uses)."""
    return _language_tau(cfg)


def same_language_mask(mono_langs: Tensor, pair_langs: Tensor, fallback: bool = True) -> Tensor:
    """mask[k, i] = mono_langs[k] == pair_langs[i]: [K] x [N] integer language ids -> [K, N] bool.
    With `fallback`, a row with no pair of its language is all True (compared with every pair)."""
    mask = mono_langs[:, None] == pair_langs[None, :]
    if fallback:
        mask = mask | ~mask.any(dim=1, keepdim=True)
    return mask


def masked_language_loss(z_reps: Tensor, e_reps: Tensor, f_reps: Tensor, temperature: float, mask: Tensor,
                         variant: str = "balanced", shard: Shard = WHOLE, block_rows: int = 0) -> Tensor:
    """`losses.language_loss` over the (k, i) with mask[k, i] only: z_reps [K, D], e_reps and f_reps
    [N, D], mask [K, N] bool; the mean is over the selected entries. No entry selected: 0, still
    attached to the graph (so every rank runs the same backward). With a shard, that slice of the
    rows against every pair, divided by the whole mask's count (the shares add up to the loss)."""
    return language_loss(z_reps, e_reps, f_reps, temperature, variant, shard, block_rows, mask)


def language_ids(langs: list[str], vocabulary: list[str]) -> Tensor:
    """Language codes -> int64 ids by position in `vocabulary` (the same list on every rank, e.g.
    the sorted union of the parallel and monolingual files' languages), for gathering across ranks."""
    index = {lang: i for i, lang in enumerate(vocabulary)}
    return torch.tensor([index[lang] for lang in langs], dtype=torch.long)
