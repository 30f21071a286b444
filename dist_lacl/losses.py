"""The paper's three contrastive losses, as pure functions of representation tensors.

Hu et al., "Language Agnostic Multilingual Information Retrieval with Contrastive Learning",
Findings of ACL 2023 (arXiv 2210.06633); equations as stated in docs/method.md. Inputs are the
*global* batch (every rank's rows, see `distributed.gather_keep_local_grad`). Scores are computed in
fp32 whatever the representation dtype, so bf16 training keeps a stable softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def similarity(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """sim(a_i, b_j) = a_i . b_j / tau for every pair: [M, D] x [N, D] -> [M, N] (at least fp32)."""
    return _at_least_fp32(a) @ _at_least_fp32(b).T / temperature


def _at_least_fp32(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def ir_loss(q_reps: Tensor, p_reps: Tensor, temperature: float) -> Tensor:
    """Eq. 1, DPR contrastive loss with in-batch and hard negatives.

    q_reps [B, D]; p_reps [B * G, D] laid out query by query: rows i*G .. i*G+G-1 are query i's group,
    positive first. Every passage of the batch is a candidate for every query.
    """
    scores = similarity(q_reps, p_reps, temperature)
    group_size = p_reps.shape[0] // q_reps.shape[0]
    target = torch.arange(q_reps.shape[0], device=scores.device) * group_size
    return F.cross_entropy(scores, target)


def semantic_loss(e_reps: Tensor, f_reps: Tensor, temperature: float, symmetric: bool = True) -> Tensor:
    """Eq. 2, contrastive alignment of N parallel pairs: e_reps [N, D] English, f_reps [N, D] translations.

    Row i's positive is its own translation; the other N-1 translations are its negatives.
    `symmetric` averages the e->f and f->e directions.
    """
    scores = similarity(e_reps, f_reps, temperature)
    target = torch.arange(scores.shape[0], device=scores.device)
    e_to_f = F.cross_entropy(scores, target)
    if not symmetric:
        return e_to_f
    return 0.5 * (e_to_f + F.cross_entropy(scores.T, target))


def language_loss(z_reps: Tensor, e_reps: Tensor, f_reps: Tensor, temperature: float,
                  variant: str = "balanced") -> Tensor:
    """Eq. 3 (our reading), language contrastive loss: each monolingual sentence z_k [K, D] should be
    equally similar to both members of every parallel pair (e_i, f_i) [N, D].

    balanced: p_ki = softmax over {sim(z_k, e_i), sim(z_k, f_i)} of the e side;
              L = -mean_ki [0.5 log p_ki + 0.5 log(1 - p_ki)], minimal (log 2) iff the two sims agree.
    squared:  L = mean_ki (sim(z_k, e_i) - sim(z_k, f_i))^2, minimal (0) at the same point.
    """
    diff = similarity(z_reps, e_reps, temperature) - similarity(z_reps, f_reps, temperature)
    if variant == "balanced":
        # log p = -softplus(-diff) and log(1-p) = -softplus(diff): exact and finite for any score.
        return 0.5 * (F.softplus(diff) + F.softplus(-diff)).mean()
    if variant == "squared":
        return diff.pow(2).mean()
    raise ValueError(f"unknown language loss variant {variant!r}")


@dataclass
class LossTerms:
    """The weighted total and each term (unweighted), for logging."""

    total: Tensor
    ir: Tensor
    semantic: Tensor | None = None
    language: Tensor | None = None

    def scalars(self) -> dict[str, float]:
        out = {"loss/total": self.total, "loss/ir": self.ir, "loss/semantic": self.semantic,
               "loss/language": self.language}
        return {k: float(v.detach()) for k, v in out.items() if v is not None}


def lacl_loss(reps: dict[str, Tensor], cfg) -> LossTerms:
    """L = L_IR + alpha L_sem + beta L_lang over global representations (`cfg`: config.LossConfig).

    reps holds `query`, `passage` and, when their weights are > 0, `para_en`, `para_xx`, `mono`;
    with several aux towers, the keys carry a tower suffix (`para_en@query`) and the aux terms are
    averaged over towers.
    """
    ir = ir_loss(reps["query"], reps["passage"], cfg.temperature)
    total, sem, lang = ir, None, None
    towers = sorted({k.partition("@")[2] for k in reps if k.startswith("para_en")})
    if cfg.semantic_weight > 0:
        sem = torch.stack([semantic_loss(reps[_k("para_en", t)], reps[_k("para_xx", t)], cfg.temperature,
                                         cfg.semantic_symmetric) for t in towers]).mean()
        total = total + cfg.semantic_weight * sem
    if cfg.language_weight > 0:
        lang = torch.stack([language_loss(reps[_k("mono", t)], reps[_k("para_en", t)], reps[_k("para_xx", t)],
                                          cfg.temperature, cfg.language_variant) for t in towers]).mean()
        total = total + cfg.language_weight * lang
    return LossTerms(total, ir, sem, lang)


def _k(name: str, tower: str) -> str:
    return f"{name}@{tower}" if tower else name
