"""The training objective: which representations a step computes (its jobs) and the loss over them.

A job is one input batch encoded by one tower. The IR loss needs the queries (query tower) and the
passages (passage tower); the semantic and language losses need the parallel and monolingual
sentences, encoded by every tower in `model.aux_towers` when the towers are separate (the aux terms are
then averaged over those towers), or once when the encoder is shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import distributed as dist
from .config import LossConfig, ModelConfig
from .diagnostics import language_centroid_accuracy, parallel_similarity
from .false_negatives import BatchKeys, mask_counts
from .losses import (
    WHOLE,
    LossTerms,
    Shard,
    distill_loss,
    ir_loss,
    language_ids,
    language_loss,
    language_temperature,
    same_language_mask,
    semantic_loss,
)

ROLES = ("query", "passage", "para_en", "para_xx", "mono")
AUX_ROLES = ("para_en", "para_xx", "mono")
TOWERS = ("query", "passage")


@dataclass(frozen=True, order=True)
class Job:
    """One representation batch of a step: the inputs of `role` encoded by `tower`."""

    role: str
    tower: str

    def __post_init__(self):
        if self.role not in ROLES or self.tower not in TOWERS:
            raise ValueError(f"no job {self.role!r} on tower {self.tower!r}")

    def __str__(self) -> str:
        return f"{self.role}@{self.tower}"


QUERY, PASSAGE = Job("query", "query"), Job("passage", "passage")


def aux_towers(model: ModelConfig) -> tuple[str, ...]:
    """The towers that encode the parallel and monolingual sentences (a shared encoder: one pass)."""
    if model.shared_encoder:
        return ("query",)
    return {"both": ("query", "passage"), "query": ("query",), "passage": ("passage",)}[model.aux_towers]


def step_jobs(batch: dict[str, dict[str, Tensor]], model: ModelConfig) -> dict[Job, dict[str, Tensor]]:
    """Every job of a step, in the order they are encoded (the order dropout draws its masks in):
    queries, passages, then each aux role on each of its towers."""
    jobs = {QUERY: batch["query"], PASSAGE: batch["passage"]}
    for role in AUX_ROLES:
        if role in batch:
            for tower in aux_towers(model):
                jobs[Job(role, tower)] = batch[role]
    return jobs


def lacl_loss(reps: dict[Job, Tensor], cfg: LossConfig, shard: Shard = WHOLE,
              language_mask: Tensor | None = None, teacher_scores: Tensor | None = None,
              keys: BatchKeys | None = None) -> LossTerms:
    """L = L_IR + alpha L_sem + beta L_lang (Hu et al. 2023, Eq. 4) over global representations, or with
    `shard`, that shard's share of every term (the shares of all shards add up to L and its terms).

    reps holds QUERY, PASSAGE and, when their weights are > 0, the aux jobs of one or more towers; the
    aux terms are averaged over the towers present. With cfg.language_pairs = "own", `language_mask`
    [K, N] (the global monolingual rows against the global pairs, losses.same_language_mask) selects
    the pairs each monolingual sentence is compared with, the same for every tower. With
    cfg.distill_weight > 0, `teacher_scores` [B, G] (the global queries' groups, step_teacher_scores) adds
    the distillation term. With cfg.mask_false_negatives, `keys` (the global batch's,
    false_negatives.BatchKeys) masks the IR and semantic false negatives; without keys nothing is masked.
    """
    own_pairs = cfg.language_pairs == "own"
    if own_pairs and cfg.language_weight > 0 and language_mask is None:
        raise ValueError("loss.language_pairs=own needs the step's language mask (language_mask)")
    mask = language_mask.to(reps[QUERY].device) if own_pairs and language_mask is not None else None
    blocks = cfg.block_rows
    keys = keys.to(reps[QUERY].device) if cfg.mask_false_negatives and keys is not None else None
    ir = ir_loss(reps[QUERY], reps[PASSAGE], cfg.temperature, shard, blocks, keys)
    total, sem, lang = ir, None, None
    towers = sorted(job.tower for job in reps if job.role == "para_en")
    if cfg.semantic_weight > 0:
        sem = torch.stack([semantic_loss(reps[Job("para_en", t)], reps[Job("para_xx", t)], cfg.temperature,
                                         cfg.semantic_symmetric, shard, blocks, keys) for t in towers]).mean()
        total = total + cfg.semantic_weight * sem
    if cfg.language_weight > 0:
        lang = torch.stack([language_loss(reps[Job("mono", t)], reps[Job("para_en", t)], reps[Job("para_xx", t)],
                                          language_temperature(cfg), cfg.language_variant, shard, blocks, mask)
                            for t in towers]).mean()
        total = total + cfg.language_weight * lang
    terms = LossTerms(total, ir, sem, lang)
    if cfg.distill_weight > 0:
        if teacher_scores is None:
            raise ValueError("loss.distill_weight > 0 needs the step's teacher scores (teacher_scores)")
        terms.distill = distill_loss(reps[QUERY], reps[PASSAGE], teacher_scores, cfg.temperature,
                                     cfg.distill_temperature, shard, blocks)
        terms.total = terms.total + cfg.distill_weight * terms.distill
    return terms


@dataclass
class StepLoss:
    """What the objective hands back besides the loss: the terms, the false negatives masked
    ({mask/ir, mask/semantic} over the global batch; empty with masking off or no keys), and (when asked) a
    detached copy of the global representations, for diagnostics."""

    terms: LossTerms
    reps: dict[Job, Tensor] | None = None
    masked: dict[str, float] = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        return {**self.terms.scalars(), **self.masked}


class Objective:
    """loss(reps) over the global batch: gathers every job's representations across ranks first.

    With loss.sharding=sharded each rank computes only its share l_r of every term (its own anchor
    rows against all gathered candidates; L = sum_r l_r). The returned loss has the value of the global
    L on every rank (all-reduced, for logging and the finite check) but backpropagates as this rank's
    l_r only: the other shares' gradient with respect to this rank's rows arrives through the
    gather's backward (summed over ranks), so every rank's cached gradient is dL/d(its rows), times
    world_size, and the engine's average over ranks of the parameter gradients is exactly dL/dtheta.
    """

    def __init__(self, cfg: LossConfig):
        self.cfg = cfg

    def __call__(self, reps: dict[Job, Tensor], language_mask: Tensor | None = None,
                 keep_reps: bool = False, teacher_scores: Tensor | None = None,
                 keys: BatchKeys | None = None) -> tuple[Tensor, StepLoss]:
        """*Collective.* reps: this rank's rows of every job; language_mask: the step's
        (step_language_mask); keep_reps: also return the detached global representations;
        teacher_scores: the step's (step_teacher_scores); keys: this rank's false-negative keys (the
        batch's meta["keys"]), gathered here like the rows they name."""
        sharded = self.cfg.sharding == "sharded"
        global_reps = {job: dist.gather_for_loss(r, sharded) for job, r in reps.items()}
        masking = self.cfg.mask_false_negatives and keys is not None
        keys = BatchKeys.concat(dist.all_gather_objects(keys)) if masking else None
        shard = (dist.rank(), dist.world_size()) if sharded else WHOLE
        terms = lacl_loss(global_reps, self.cfg, shard, language_mask, teacher_scores, keys)
        if sharded:
            terms = global_terms(terms)
        kept = {job: r.detach() for job, r in global_reps.items()} if keep_reps else None
        return terms.total, StepLoss(terms, kept, self.masked(keys))

    def masked(self, keys: BatchKeys | None) -> dict[str, float]:
        """The false negatives the step's losses masked (mask/semantic only when that loss is on)."""
        counts = mask_counts(keys) if keys is not None else {}
        if self.cfg.semantic_weight == 0:
            counts.pop("mask/semantic", None)
        return counts


def global_terms(shares: LossTerms) -> LossTerms:
    """*Collective.* Every term summed over ranks (one all-reduce), gradients to this rank's shares."""
    names = [n for n in ("total", "ir", "semantic", "language", "distill") if getattr(shares, n) is not None]
    summed = dist.sum_shares(torch.stack([getattr(shares, n) for n in names]))
    return LossTerms(**dict(zip(names, summed.unbind())))


def step_language_mask(meta: dict, cfg: LossConfig) -> Tensor | None:
    """*Collective* (gathers languages) with loss.language_pairs=own, else None at once.

    mask[k, i]: global monolingual row k is compared with global pair i ([K, N] bool, the rows in the
    order gather_for_loss concatenates them: rank by rank). Built once per step, before the loss and
    outside the gradient cache's chunks; every rank builds the same one from the same gathered lists.
    """
    if cfg.language_pairs != "own" or cfg.language_weight == 0:
        return None
    para, mono = (_gathered(meta[key]) for key in ("para_lang", "mono_lang"))
    vocabulary = sorted(set(para) | set(mono))
    return same_language_mask(language_ids(mono, vocabulary), language_ids(para, vocabulary))


def step_teacher_scores(meta: dict, cfg: LossConfig) -> Tensor | None:
    """*Collective* (gathers scores) with loss.distill_weight > 0, else None at once: the teacher's scores
    of the global batch's groups [B, G], rows in the order gather_for_loss concatenates the queries."""
    if cfg.distill_weight == 0:
        return None
    return torch.cat(dist.all_gather_objects(meta["teacher_scores"]))


def diagnostics(global_reps: dict[Job, Tensor], meta: dict) -> dict[str, float]:
    """*Collective* (gathers languages). Alignment and language-probe scalars on this step's batch, from
    the query tower's aux representations where it encodes them, else the passage tower's."""
    towers = [job.tower for job in global_reps if job.role == "para_en"]
    if not towers:
        return {}
    tower = "query" if "query" in towers else towers[0]
    en, xx = global_reps[Job("para_en", tower)], global_reps[Job("para_xx", tower)]
    out = parallel_similarity(en, xx)
    langs = _gathered(meta["para_lang"])
    reps, labels = [en, xx], ["en"] * len(langs) + langs
    mono = global_reps.get(Job("mono", tower))
    if mono is not None:
        reps.append(mono)
        labels += _gathered(meta["mono_lang"])
    out["align/lang_id_acc"] = language_centroid_accuracy(torch.cat(reps), labels)
    return out


def _gathered(local: list) -> list:
    """*Collective.* Every rank's list, concatenated rank by rank."""
    return [item for part in dist.all_gather_objects(local) for item in part]
