"""Per-rank training batches: hard-negative groups, tokenisation, the step plan.

Each step takes this rank's slice of consecutive global batches from every enabled stream (`streams`:
in epochs of a keyed permutation or drawn by language). TrainBatches reads and tokenises every
enabled stream's step, the next ones by a background thread (`prefetch.Prefetcher`).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from .. import formats
from ..errors import UserError
from ..false_negatives import text_keys
from ..formats.records import passage_text
from .mixture import IRDraw, IRMixture
from .prefetch import Prefetcher
from .read import input_content, load_dataset
from .streams import BatchStream, LanguageStream, language_sampler
from .teacher_scores import check_scores, group_scores

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- tokenised batches

def sample_group(rec: dict, group_size: int, seed: int, epoch: int, index: int) -> list[dict]:
    """One positive and group_size-1 hard negatives, drawn from (seed, epoch, index) so a resumed run
    draws the same. Negatives repeat when there are too few; with none, other queries' passages in the
    batch still serve as negatives."""
    # torch seeds are 64-bit: keep the low 64 bits (every seed below about 1.8e7 is unchanged)
    g = torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + index) & 0xFFFFFFFFFFFFFFFF)
    pos = rec["positives"][int(torch.randint(len(rec["positives"]), (1,), generator=g))]
    negs = rec["negatives"]
    if group_size == 1:
        return [pos]
    if not negs:
        raise UserError(f"query {rec['query_id']}: no negative_passages (see check_has_negatives)")
    if len(negs) >= group_size - 1:
        chosen = torch.randperm(len(negs), generator=g)[:group_size - 1].tolist()
    else:
        chosen = torch.randint(len(negs), (group_size - 1,), generator=g).tolist()
    return [pos] + [negs[i] for i in chosen]


def check_has_negatives(ir: datasets.Dataset, path, group_size: int) -> None:
    """Hard negatives are needed for groups > 1; checked once over the Arrow column, before training."""
    import pyarrow.compute as pc

    first_empty = pc.index(pc.list_value_length(ir.data.column("negatives")), 0).as_py()
    if first_empty >= 0:
        raise UserError(f"{path}: query {ir[first_empty]['query_id']} has no negative_passages, but "
                        f"data.train_group_size={group_size} needs {group_size - 1}; add hard negatives "
                        "or set data.train_group_size=1")


class Tokenize:
    """Texts -> {input_ids, attention_mask} padded to the longest in the batch (capped at max_len)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, texts: list[str], max_len: int, prefix: str = "") -> dict[str, torch.Tensor]:
        if prefix:
            texts = [prefix + text for text in texts]
        enc = self.tokenizer(texts, max_length=max_len, truncation=True, padding=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@dataclass
class StepPlan:
    """What one step reads: this rank's indices (and their epoch) per stream, the IR queries' as an
    IRDraw (each query's dataset, index and epoch), and the streams' positions once the step is consumed."""

    indices: dict[str, IRDraw | tuple[list[int], int]]
    state_after: dict
    draw_steps: dict[str, int] = dataclasses.field(default_factory=dict)
    """The step each stream drawn by language drew at (its global draws are a function of it)."""


class TrainBatches:
    """The per-step inputs of every enabled stream for this rank, with one resumable state.

    Each step yields {role: {input_ids, attention_mask}} for roles query, passage, para_en, para_xx,
    mono (the auxiliary roles only when their losses are on), plus languages for diagnostics and, with
    loss.distill_weight > 0, the groups' teacher scores [queries, group size] (meta "teacher_scores").
    With data.prefetch = k > 0, the next k steps are planned ahead (the streams advance) and built by
    a Prefetcher; state_dict() is the position after the last step *returned*, so a checkpoint
    never counts a prefetched step as consumed. The batches are the same with or without it.
    """

    def __init__(self, cfg, tokenizer, rank: int, world_size: int, cache_dir: str | Path | None = None):
        d, t = cfg.data, cfg.train
        self.cfg, self.tokenize = cfg, Tokenize(tokenizer)
        load = functools.partial(load_dataset, cache_dir=cache_dir or d.cache_dir, bad_records=d.bad_records,
                                 num_proc=d.cache_build_procs)
        sources = d.ir_sources()
        options = [formats.ReadOptions(s.format, corpus=s.corpus) for s in sources]
        ir = [load(s.path, "ir", options=o) for s, o in zip(sources, options)]
        if d.train_group_size > 1:
            for s, data in zip(sources, ir):
                check_has_negatives(data, s.path, d.train_group_size)
        if cfg.loss.distill_weight > 0:
            for s, data, o in zip(sources, ir, options):
                check_scores(data, s.path, o)
        self.ir = IRMixture(sources, ir, t.ir_batch_size, t.seed, d.ir_alpha, d.ir_batches, rank, world_size)
        self.streams = {"ir": self.ir}
        self.parallel = self.monolingual = None
        if cfg.loss.semantic_weight > 0 or cfg.loss.language_weight > 0:
            self.parallel = load(d.parallel, "parallel", options=formats.options_for(d, "parallel"))
            self.streams["parallel"] = self._aux_stream(self.parallel, t.parallel_batch_size, t.seed + 1, rank,
                                                        world_size, f"data.parallel ({d.parallel})",
                                                        "train.parallel_batch_size")
        if cfg.loss.language_weight > 0:
            self.monolingual = load(d.monolingual, "monolingual", options=formats.options_for(d, "monolingual"))
            self.streams["monolingual"] = self._aux_stream(self.monolingual, t.monolingual_batch_size,
                                                           t.seed + 2, rank, world_size,
                                                           f"data.monolingual ({d.monolingual})",
                                                           "train.monolingual_batch_size")
        paths = {"parallel": d.parallel, "monolingual": d.monolingual}
        self.content = {"ir": [f for s, o in zip(sources, options) for f in input_content(s.path, "ir", o)],
                        **{kind: input_content(paths[kind], kind, formats.options_for(d, kind))
                           for kind in self.streams if kind != "ir"}}
        self.depth = d.prefetch
        # Its own tokenizer: a fast tokenizer's padding/truncation settings are mutable state, which the
        # training loop's own use (evaluation) must not share with the thread.
        self.prefetcher = Prefetcher(functools.partial(self.make, tokenize=Tokenize(copy.deepcopy(tokenizer)))) \
            if self.depth else None
        self.pending: collections.deque[tuple[StepPlan, Future]] = collections.deque()
        self.consumed = self._positions()
        self.last_wait_s = 0.0  # how long the last next() waited for its inputs

    def _aux_stream(self, dataset: datasets.Dataset, batch_size: int, seed: int, rank: int, world_size: int,
                    source: str, batch_key: str) -> BatchStream | LanguageStream:
        """A parallel or monolingual stream: drawn by language with data.language_alpha, else by epoch."""
        alpha = self.cfg.data.language_alpha
        if alpha is None:
            return BatchStream(len(dataset), batch_size, seed, rank, world_size, source, batch_key)
        return LanguageStream(language_sampler(dataset, seed, alpha), len(dataset), batch_size, rank, world_size)

    def language_mix(self, meta: dict) -> dict[str, float]:
        """{mix/<stream>/<lang>: share} of the languages among the global draws of the step `meta`
        describes, for every stream drawn by language (empty without data.language_alpha)."""
        return {f"mix/{name}/{lang}": share for name, step in meta.get("draw_step", {}).items()
                for lang, share in self.streams[name].sampler.mix(self.streams[name].global_draws(step)).items()}

    def expected_language_mix(self) -> dict[str, float]:
        """{mix/<stream>/<lang>: p(lang)} for every stream drawn by language (logged once, at step 0)."""
        return {f"mix/{name}/{lang}": p for name, s in self.streams.items() if isinstance(s, LanguageStream)
                for lang, p in s.sampler.expected_mix().items()}

    def ir_counts(self) -> dict[str, int]:
        """{data/ir/<name>: queries drawn from each IR dataset by all ranks}, after the last step returned."""
        return {f"data/ir/{name}": n for name, n in self.ir.examples_drawn(self.consumed["ir"]).items()}

    def _positions(self) -> dict:
        return {name: s.state_dict() for name, s in self.streams.items()}

    def plan(self) -> StepPlan:
        """Advance every stream by one global batch."""
        steps = {name: s.step for name, s in self.streams.items() if isinstance(s, LanguageStream)}
        indices = {name: s.next_indices() for name, s in self.streams.items()}
        return StepPlan(indices, self._positions(), steps)

    def next(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        start = time.perf_counter()
        if self.prefetcher is None:
            plan = self.plan()
            out = self.make(plan, self.tokenize)
        else:
            while len(self.pending) < self.depth + 1:
                plan = self.plan()
                self.pending.append((plan, self.prefetcher.submit(plan)))
            plan, future = self.pending.popleft()
            out = future.result()
        self.consumed = plan.state_after
        self.last_wait_s = time.perf_counter() - start
        return out

    def make(self, plan: StepPlan, tokenize: Tokenize) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """Read and tokenise one planned step's records."""
        d = self.cfg.data
        query, passage = self.cfg.model.query_prefix, self.cfg.model.passage_prefix  # auxiliary text: as queries
        draw = plan.indices["ir"]
        rows = self.ir.records(draw)
        groups = [sample_group(r, d.train_group_size, self.ir.seeds[s], epoch, i)
                  for r, s, epoch, i in zip(rows, draw.sources, draw.epochs, draw.indices)]
        batch = {"query": tokenize([r["query"] for r in rows], d.query_max_len, query),
                 "passage": tokenize([passage_text(p["title"], p["text"]) for g in groups for p in g],
                                     d.passage_max_len, passage)}
        # ir_source: each query's dataset (docids are unique within a dataset only).
        keys = self.ir.keys(rows, groups, draw)
        meta = {"epoch": max(draw.epochs), "draw_step": plan.draw_steps,
                "ir_source": [self.ir.names[s] for s in draw.sources], "keys": keys}
        if self.cfg.loss.distill_weight > 0:
            meta["teacher_scores"] = group_scores(groups)
        if self.parallel is not None:
            para = self.parallel[plan.indices["parallel"][0]]
            batch["para_en"] = tokenize(para["en"], d.sentence_max_len, query)
            batch["para_xx"] = tokenize(para["text"], d.sentence_max_len, query)
            meta["para_lang"] = para["lang"]
            keys.para_en, keys.para_xx = text_keys(para["en"]), text_keys(para["text"])
        if self.monolingual is not None:
            mono = self.monolingual[plan.indices["monolingual"][0]]
            batch["mono"] = tokenize(mono["text"], d.sentence_max_len, query)
            meta["mono_lang"] = mono["lang"]
        return batch, meta

    def state_dict(self) -> dict:
        """The streams' positions after the last step next() returned (prefetched steps not counted), and
        what the files held."""
        return {**copy.deepcopy(self.consumed), "content": self.content}

    def load_state_dict(self, state: dict) -> None:
        for kind, files in self.content.items():
            saved = state.get("content", {}).get(kind)
            if saved is not None and [f[1:] for f in saved] != [f[1:] for f in files]:
                log.warning("%s: %s changed since the checkpoint was saved; the run goes on from the same "
                            "position in the new content", formats.path_key(kind), ", ".join(f[0] for f in files))
        for future in (f for _, f in self.pending):
            future.cancel()  # planned from the old position; a running one finishes and is dropped
        self.pending.clear()
        for name, s in self.streams.items():
            if name in state:
                s.load_state_dict(state[name])
        self.consumed = self._positions()
