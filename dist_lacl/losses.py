"""The paper's three contrastive losses, and distillation from a teacher's scores, as pure functions of
representation tensors.

Hu et al., "Language Agnostic Multilingual Information Retrieval with Contrastive Learning",
Findings of ACL 2023 (arXiv 2210.06633); equations as stated in docs/method.md. Inputs are the
*global* batch (every rank's rows, see `distributed.gather_for_loss`). Scores are computed in
fp32 whatever the representation dtype, so bf16 training keeps a stable softmax.

Sharding: every loss takes `shard=(index, count)`. The anchor rows (queries, English and translated
sentences, monolingual sentences) are cut into `count` equal slices and only slice `index` is scored,
against every candidate; the result is that slice's terms summed and divided by the *global* number of
terms, so the `count` shares add up to the loss exactly. The default (0, 1) is the whole loss.
`block_rows` > 0 scores that many anchor rows at a time and recomputes each block's scores in the
backward pass (checkpointing), so only one block's [block_rows, N] matrices are alive at once; every
row still sees all its candidates, so its log-sum-exp is exact.
False negatives (`keys`, false_negatives.BatchKeys of the global batch): the IR and semantic losses drop
the candidates their masks select from each anchor row's denominator (-inf before the log-sum-exp). The
mask is computed per anchor row from the keys, so shards, row blocks and cached representations see the
same denominators; the language loss has no negatives to mask (docs/method.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .false_negatives import BatchKeys, ir_mask, pair_mask

Shard = tuple[int, int]  # (index, count): score anchor slice `index` of `count` equal slices
WHOLE: Shard = (0, 1)


def similarity(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """sim(a_i, b_j) = a_i . b_j / tau for every pair: [M, D] x [N, D] -> [M, N] (at least fp32)."""
    return _at_least_fp32(a) @ _at_least_fp32(b).T / temperature


def _at_least_fp32(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def ir_loss(q_reps: Tensor, p_reps: Tensor, temperature: float, shard: Shard = WHOLE,
            block_rows: int = 0, keys: BatchKeys | None = None) -> Tensor:
    """Eq. 1, DPR contrastive loss with in-batch and hard negatives.

    q_reps [B, D]; p_reps [B * G, D] laid out query by query: rows i*G .. i*G+G-1 are query i's group,
    positive first. Every passage of the batch is a candidate for every query. With a shard, only that
    slice of the queries is scored (global query i's positive stays at passage row i*G).
    With `keys`, the passages sharing a positive's docid (false_negatives.ir_mask) leave query i's denominator.
    """
    group_size = p_reps.shape[0] // q_reps.shape[0]
    rows, first = _slice(q_reps, shard)

    def block_sum(q: Tensor, start: int) -> Tensor:
        mask = None if keys is None else ir_mask(keys, _rows(first + start, q), group_size)
        return _cross_entropy_sum(q, p_reps, (first + start) * group_size, group_size, temperature, mask)

    return _row_blocks(block_sum, rows, block_rows) / q_reps.shape[0]


def _rows(first: int, block: Tensor) -> Tensor:
    """The global row numbers of an anchor block whose first row is global row `first`."""
    return first + torch.arange(block.shape[0], device=block.device)


def _cross_entropy_sum(a: Tensor, b: Tensor, first_target: int, stride: int, temperature: float,
                       mask: Tensor | None = None) -> Tensor:
    """Sum over rows i of -log softmax_j sim(a_i, b_j)[first_target + i * stride], the candidates j where
    mask[i, j] (never the target) left out of row i's softmax."""
    target = first_target + torch.arange(a.shape[0], device=a.device) * stride
    scores = similarity(a, b, temperature)
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return F.cross_entropy(scores, target, reduction="sum")


def semantic_loss(e_reps: Tensor, f_reps: Tensor, temperature: float, symmetric: bool = True,
                  shard: Shard = WHOLE, block_rows: int = 0, keys: BatchKeys | None = None) -> Tensor:
    """Eq. 2, contrastive alignment of N parallel pairs: e_reps [N, D] English, f_reps [N, D] translations.

    Row i's positive is its own translation; the other N-1 translations are its negatives.
    `symmetric` averages the e->f and f->e directions. With a shard, that slice of the English rows is
    scored against every translation and (symmetric) the same slice of the translations against every
    English row. With `keys`, the pairs sharing row i's English text or translation
    (false_negatives.pair_mask) leave its denominator, in both directions.
    """
    def direction(anchors: Tensor, candidates: Tensor) -> Tensor:
        rows, first = _slice(anchors, shard)

        def block_sum(a: Tensor, start: int) -> Tensor:
            mask = None if keys is None else pair_mask(keys, _rows(first + start, a))
            return _cross_entropy_sum(a, candidates, first + start, 1, temperature, mask)

        return _row_blocks(block_sum, rows, block_rows) / anchors.shape[0]

    e_to_f = direction(e_reps, f_reps)
    if not symmetric:
        return e_to_f
    return 0.5 * (e_to_f + direction(f_reps, e_reps))


def language_loss(z_reps: Tensor, e_reps: Tensor, f_reps: Tensor, temperature: float,
                  variant: str = "balanced", shard: Shard = WHOLE, block_rows: int = 0,
                  mask: Tensor | None = None) -> Tensor:
    """Eq. 3 (our reading), language contrastive loss: each monolingual sentence z_k [K, D] should be
    equally similar to both members of every parallel pair (e_i, f_i) [N, D].

    balanced: p_ki = softmax over {sim(z_k, e_i), sim(z_k, f_i)} of the e side;
              L = -mean_ki [0.5 log p_ki + 0.5 log(1 - p_ki)], minimal (log 2) iff the two sims agree.
    squared:  L = mean_ki (sim(z_k, e_i) - sim(z_k, f_i))^2, minimal (0) at the same point.
    With a shard, that slice of the monolingual rows is scored against every pair.
    mask [K, N] bool (the global rows, same_language_mask): only the (k, i) it selects
    count, and the mean is over the selected entries of the whole mask (0 when none is selected), so
    the shards' shares still add up to the loss.
    """
    if variant not in ("balanced", "squared"):
        raise ValueError(f"unknown language loss variant {variant!r}")
    rows, first = _slice(z_reps, shard)

    def block_sum(z: Tensor, start: int) -> Tensor:
        diff = similarity(z, e_reps, temperature) - similarity(z, f_reps, temperature)
        if variant == "balanced":
            # log p = -softplus(-diff) and log(1-p) = -softplus(diff): exact and finite for any score.
            per_entry = 0.5 * (F.softplus(diff) + F.softplus(-diff))
        else:
            per_entry = diff.pow(2)
        if mask is not None:
            per_entry = per_entry * mask[first + start:first + start + z.shape[0]].to(per_entry)
        return per_entry.sum()

    count = z_reps.shape[0] * e_reps.shape[0] if mask is None else mask.sum().clamp(min=1)
    return _row_blocks(block_sum, rows, block_rows) / count


def distill_loss(q_reps: Tensor, p_reps: Tensor, teacher_scores: Tensor, temperature: float,
                 teacher_temperature: float, shard: Shard = WHOLE, block_rows: int = 0) -> Tensor:
    """KL(teacher || student) over each query's own group, averaged over queries (docs/method.md).

    q_reps [B, D], p_reps [B * G, D] laid out as for `ir_loss` (query i's group at rows i*G .. i*G+G-1);
    teacher_scores [B, G]: a teacher's score of each of those passages. For query i the student's
    distribution is softmax_j(q_i . p_ij / temperature) over its group alone, the teacher's
    softmax_j(t_ij / teacher_temperature). A per-query loss: shards and blocks of queries, as in ir_loss.
    """
    group_size = p_reps.shape[0] // q_reps.shape[0]
    rows, first = _slice(q_reps, shard)

    def block_sum(q: Tensor, start: int) -> Tensor:
        lo = first + start
        group = _at_least_fp32(p_reps[lo * group_size:(lo + q.shape[0]) * group_size])
        student = torch.einsum("nd,ngd->ng", _at_least_fp32(q), group.view(q.shape[0], group_size, -1))
        teacher = teacher_scores[lo:lo + q.shape[0]].to(device=student.device, dtype=student.dtype)
        return F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / teacher_temperature, dim=1),
                        reduction="sum", log_target=True)

    return _row_blocks(block_sum, rows, block_rows) / q_reps.shape[0]


def _slice(anchors: Tensor, shard: Shard) -> tuple[Tensor, int]:
    """Shard `index` of `count` equal row slices of anchors [M, D], and the global index of its first row."""
    index, count = shard
    n = anchors.shape[0] // count
    return anchors[index * n:(index + 1) * n], index * n


def _row_blocks(block_sum, rows: Tensor, block_rows: int) -> Tensor:
    """sum over blocks of block_sum(rows[start:start + block_rows], start); 0 or >= len(rows): one block.

    Each block runs under (non-reentrant) checkpointing: autograd keeps only its inputs and recomputes
    its score matrices during backward, so the blocks' matrices never coexist.
    """
    if block_rows <= 0 or rows.shape[0] <= block_rows:
        return block_sum(rows, 0)
    return sum(checkpoint(block_sum, rows[start:start + block_rows], start, use_reentrant=False,
                          preserve_rng_state=False)
               for start in range(0, rows.shape[0], block_rows))


@dataclass
class LossTerms:
    """The weighted total and each term (unweighted), for logging."""

    total: Tensor
    ir: Tensor
    semantic: Tensor | None = None
    language: Tensor | None = None
    distill: Tensor | None = None

    def scalars(self) -> dict[str, float]:
        out = {"loss/total": self.total, "loss/ir": self.ir, "loss/semantic": self.semantic,
               "loss/language": self.language}
        out["loss/distill"] = self.distill
        return {k: float(v.detach()) for k, v in out.items() if v is not None}


def language_temperature(cfg) -> float:
    """The language loss's temperature (`cfg`: config.LossConfig): loss.language_temperature if set,
    else the shared loss.temperature.

    Why a separate one: with the balanced reading, dL/d(diff) = 0.5 tanh(diff / 2) where
    diff = (z.e - z.f) / tau; at the IR temperature (0.05) a cosine gap of 0.1 is already diff = 2, where
    the gradient is near its cap, so the loss acts like |gap| and cannot tell a nearly balanced sentence
    from a badly unbalanced one. A larger temperature for this term alone keeps it in the quadratic
    region without touching the IR and semantic softmaxes.
    """
    return cfg.temperature if cfg.language_temperature is None else cfg.language_temperature


def same_language_mask(mono_langs: Tensor, pair_langs: Tensor, fallback: bool = True) -> Tensor:
    """mask[k, i] = mono_langs[k] == pair_langs[i]: [K] x [N] integer language ids -> [K, N] bool, for
    loss.language_pairs=own (a monolingual sentence compared only with the pairs of its own language:
    pairs of other languages say nothing about its language's offset). With `fallback`, a row with no
    pair of its language is all True (compared with every pair), so the loss never goes silent on the
    monolingual-only languages it is meant to help."""
    mask = mono_langs[:, None] == pair_langs[None, :]
    if fallback:
        mask = mask | ~mask.any(dim=1, keepdim=True)
    return mask


def language_ids(langs: list[str], vocabulary: list[str]) -> Tensor:
    """Language codes -> int64 ids by position in `vocabulary` (the same list on every rank, e.g.
    the sorted union of the parallel and monolingual files' languages), for gathering across ranks."""
    index = {lang: i for i, lang in enumerate(vocabulary)}
    return torch.tensor([index[lang] for lang in langs], dtype=torch.long)
