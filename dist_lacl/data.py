"""Training data: formats and validation, deterministic per-rank batches with a resumable position.

Formats (one JSON object per line, UTF-8):
  IR (Tevatron): {"query_id": str, "query": str, "positive_passages": [{"docid", "title", "text"}],
                  "negative_passages": [...]}
  parallel:      {"en": str, "text": str, "lang": str}   (text = the translation of en into lang)
  monolingual:   {"text": str, "lang": str}
Records are validated once while the Arrow cache is built (data_cache: once per file, in parallel,
memory-mapped, so corpora larger than RAM are fine); a bad record stops with file, line and field, or
is skipped and counted. The epoch order is a keyed permutation computed per index (shuffle), and the
next steps' batches are tokenised by a background thread (Prefetcher).
"""

from __future__ import annotations

import collections
import copy
import functools
import json
import logging
import os
import queue
import re
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from . import distributed as dist
from .data_cache import CacheEntry, default_cache_root
from .errors import DataError, UserError
from .shuffle import KeyedPermutation

log = logging.getLogger(__name__)

# ISO 639-1 codes; a 3-letter ISO 639-2/3 code or a region/script suffix (pt-br, zh_CN, sr@latin) is also accepted.
_ISO639_1 = set(
    "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz "
    "ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik "
    "io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml "
    "mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd "
    "se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi "
    "vo wa wo xh yi yo za zh zu".split())
_LANG = re.compile(r"^([a-z]{2,3})([-_][a-z0-9]{2,8})*(@[a-z]+)?$", re.IGNORECASE)


def is_language_code(code: str) -> bool:
    m = _LANG.match(code)
    return bool(m) and (len(m.group(1)) == 3 or m.group(1).lower() in _ISO639_1)


# ---------------------------------------------------------------- validation, one record at a time

def _text(rec: dict, key: str, where) -> str:
    value = rec.get(key)
    if key not in rec:
        raise DataError(*where, key, "missing; expected a non-empty string")
    if not isinstance(value, str):
        raise DataError(*where, key, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(*where, key, "expected a non-empty string, got an empty one")
    return value


def _lang(rec: dict, where) -> str:
    code = _text(rec, "lang", where)
    if not is_language_code(code):
        raise DataError(*where, "lang", f"expected a language code such as 'de' or 'pt-br', got {code!r}")
    return code.lower().replace("_", "-")


def _passages(rec: dict, key: str, where, required: bool) -> list[dict]:
    value = rec.get(key, [] if not required else None)
    if not isinstance(value, list):
        raise DataError(*where, key, "expected a list of {docid, title, text} objects")
    if required and not value:
        raise DataError(*where, key, "expected at least one positive passage")
    out = []
    for i, p in enumerate(value):
        if not isinstance(p, dict):
            raise DataError(*where, f"{key}[{i}]", "expected an object {docid, title, text}")
        title = p.get("title", "")
        if not isinstance(title, str):
            raise DataError(*where, f"{key}[{i}].title", "expected a string")
        docid = p.get("docid")
        if not isinstance(docid, (str, int)) or isinstance(docid, bool):
            raise DataError(*where, f"{key}[{i}].docid", "expected a string")
        out.append({"docid": str(docid), "title": title, "text": _text(p, "text", (where[0], where[1]))})
    return out


def parse_ir(rec: dict, where) -> dict:
    qid = rec.get("query_id")
    if not isinstance(qid, (str, int)) or isinstance(qid, bool):
        raise DataError(*where, "query_id", "expected a string")
    return {"query_id": str(qid), "query": _text(rec, "query", where),
            "positives": _passages(rec, "positive_passages", where, required=True),
            "negatives": _passages(rec, "negative_passages", where, required=False)}


def parse_parallel(rec: dict, where) -> dict:
    return {"en": _text(rec, "en", where), "text": _text(rec, "text", where), "lang": _lang(rec, where)}


def parse_monolingual(rec: dict, where) -> dict:
    return {"text": _text(rec, "text", where), "lang": _lang(rec, where)}


PARSERS = {"ir": parse_ir, "parallel": parse_parallel, "monolingual": parse_monolingual}


def read_records(path: str | Path, kind: str, bad_records: str = "error", skipped: list | None = None):
    """Yield validated records of `kind` from a jsonl file; DataError names file, line and field.

    With bad_records="skip", malformed lines are dropped and (line, reason) appended to `skipped`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found (expected {kind} jsonl)")
    parse, n = PARSERS[kind], 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            where = (path, line_no)
            try:
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(path, line_no, None, f"not valid UTF-8 (byte {e.start})") from None
                try:
                    rec = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(path, line_no, None, f"not valid JSON ({e.msg}, column {e.colno})") from None
                if not isinstance(rec, dict):
                    raise DataError(path, line_no, None, "expected a JSON object")
                out = parse(rec, where)
            except DataError as e:
                if bad_records != "skip":
                    raise
                if skipped is not None:
                    skipped.append((line_no, str(e)))
                continue
            n += 1
            yield out
    if n == 0:
        raise DataError(path, None, None, f"no valid {kind} records (empty file?)")


def _features(kind: str) -> datasets.Features:
    passage = [{"docid": datasets.Value("string"), "title": datasets.Value("string"),
                "text": datasets.Value("string")}]
    return datasets.Features({
        "ir": {"query_id": datasets.Value("string"), "query": datasets.Value("string"),
               "positives": passage, "negatives": passage},
        "parallel": {"en": datasets.Value("string"), "text": datasets.Value("string"),
                     "lang": datasets.Value("string")},
        "monolingual": {"text": datasets.Value("string"), "lang": datasets.Value("string")},
    }[kind])


def load_dataset(path: str | Path, kind: str, cache_dir: str | Path | None = None, bad_records: str = "error",
                 num_proc: int = 0, stale_s: float = 120.0) -> datasets.Dataset:
    """*Collective.* The validated, memory-mapped Arrow dataset of a jsonl file.

    Rank 0 builds the cache once per file (see data_cache: keyed by the file, shared by runs, built by
    num_proc processes; 0 = one per CPU, at most 16) while the other ranks poll the file system for it, which no
    collective timeout limits; all meet in a barrier once it is complete. If rank 0's build fails,
    every rank raises its message; if rank 0 stops beating for stale_s, the others raise too.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found (expected {kind} jsonl)")
    entry = CacheEntry(cache_dir or default_cache_root(), path, kind, bad_records)
    nonce = dist.broadcast_object(uuid.uuid4().hex if dist.is_main() else None)
    if dist.is_main():
        # Auto: one process per CPU, at most 16 (each imports torch and datasets: ~0.3 GB apiece).
        entry.build(_features(kind), read_records, num_proc or min(os.cpu_count() or 1, 16), nonce, stale_s)
    else:
        entry.wait(nonce, stale_s)
    dist.barrier()
    return entry.load()


# ---------------------------------------------------------------- deterministic, resumable order

@dataclass
class StreamPosition:
    """Where a stream is: the epoch (which permutation) and how many examples of it were consumed."""

    epoch: int = 0
    offset: int = 0


class BatchStream:
    """Yields this rank's slice of consecutive global batches from a (seed, epoch) permutation.

    The position counts *examples* of the epoch's permutation consumed by all ranks together, so a run
    resumed on another world size (with the same global batch size) continues at the same example:
    none is repeated or skipped within the epoch. An incomplete last global batch is dropped; the
    stream then moves to the next epoch's permutation. The permutation is computed per index
    (shuffle.KeyedPermutation), so its memory does not grow with the number of examples.
    """

    ORDER = "keyed-feistel-1"  # the permutation's name, kept in checkpoints

    def __init__(self, num_examples: int, global_batch_size: int, seed: int, rank: int, world_size: int):
        if num_examples < global_batch_size:
            raise UserError(f"only {num_examples} examples for a global batch of {global_batch_size}")
        self.num_examples, self.global_batch_size = num_examples, global_batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.position = StreamPosition()
        self._perm = None

    def permutation(self, epoch: int) -> KeyedPermutation:
        if self._perm is None or self._perm.epoch != epoch:
            self._perm = KeyedPermutation(self.num_examples, self.seed * 100_003, epoch)
        return self._perm

    def next_indices(self) -> tuple[list[int], int]:
        """This rank's example indices for the next global batch, and the epoch they belong to."""
        pos = self.position
        if pos.offset + self.global_batch_size > self.num_examples:
            pos.epoch, pos.offset = pos.epoch + 1, 0
        per_rank = self.global_batch_size // self.world_size
        start = pos.offset + self.rank * per_rank
        indices = self.permutation(pos.epoch).slice(start, start + per_rank)
        epoch = pos.epoch
        pos.offset += self.global_batch_size
        return indices, epoch

    def state_dict(self) -> dict:
        return {"epoch": self.position.epoch, "offset": self.position.offset, "order": self.ORDER,
                "num_examples": self.num_examples, "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state["num_examples"] != self.num_examples:
            raise UserError(f"the checkpoint's data stream had {state['num_examples']} examples, "
                            f"the data now has {self.num_examples}: resume with the same training files")
        if state.get("order") != self.ORDER:
            log.warning("the checkpoint's data order predates %s: the rest of epoch %d follows the new order, "
                        "so some examples of it may repeat or be skipped", self.ORDER, state["epoch"])
        self.position = StreamPosition(state["epoch"], state["offset"])


# ---------------------------------------------------------------- tokenised batches

def passage_text(p: dict) -> str:
    """Title and text joined as Tevatron and DPR do; an empty title adds nothing."""
    return f"{p['title']} {p['text']}".strip() if p["title"] else p["text"]


def sample_group(rec: dict, group_size: int, seed: int, epoch: int, index: int) -> list[dict]:
    """One positive and group_size-1 hard negatives, drawn from (seed, epoch, index) so a resumed run
    draws the same. Negatives repeat when there are too few; with none, other queries' passages in the
    batch still serve as negatives."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + index)
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
    """What one step reads: this rank's indices (and their epoch) per stream, and the streams'
    positions once the step is consumed."""

    indices: dict[str, tuple[list[int], int]]
    state_after: dict


class Prefetcher:
    """Runs make(plan) for planned steps in one daemon thread, in order, so the next step's records are
    read and tokenised while the current step trains (tokenizers and torch release the GIL)."""

    def __init__(self, make):
        self.make, self.todo = make, queue.Queue()
        threading.Thread(target=self._work, daemon=True, name="dist-lacl-prefetch").start()

    def submit(self, plan: StepPlan) -> Future:
        future = Future()
        self.todo.put((plan, future))
        return future

    def _work(self):
        while True:
            plan, future = self.todo.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self.make(plan))
            except BaseException as e:  # re-raised in the training loop by future.result()
                future.set_exception(e)


class TrainBatches:
    """The per-step inputs of every enabled stream for this rank, with one resumable state.

    Each step yields {role: {input_ids, attention_mask}} for roles query, passage, para_en, para_xx,
    mono (the auxiliary roles only when their losses are on), plus languages for diagnostics.
    With data.prefetch = k > 0, the next k steps are planned ahead (the streams advance) and built by
    a Prefetcher; state_dict() is the position after the last step *returned*, so a checkpoint
    never counts a prefetched step as consumed. The batches are the same with or without it.
    """

    def __init__(self, cfg, tokenizer, rank: int, world_size: int, cache_dir: str | Path | None = None):
        d, t = cfg.data, cfg.train
        self.cfg, self.tokenize = cfg, Tokenize(tokenizer)
        load = functools.partial(load_dataset, cache_dir=cache_dir or d.cache_dir, bad_records=d.bad_records,
                                 num_proc=d.cache_build_procs)
        self.ir = load(d.train_ir, "ir")
        if d.train_group_size > 1:
            check_has_negatives(self.ir, d.train_ir, d.train_group_size)
        self.streams = {"ir": BatchStream(len(self.ir), t.ir_batch_size, t.seed, rank, world_size)}
        self.parallel = self.monolingual = None
        if cfg.loss.semantic_weight > 0 or cfg.loss.language_weight > 0:
            self.parallel = load(d.parallel, "parallel")
            self.streams["parallel"] = BatchStream(len(self.parallel), t.parallel_batch_size, t.seed + 1,
                                                   rank, world_size)
        if cfg.loss.language_weight > 0:
            self.monolingual = load(d.monolingual, "monolingual")
            self.streams["monolingual"] = BatchStream(len(self.monolingual), t.monolingual_batch_size,
                                                      t.seed + 2, rank, world_size)
        self.depth = d.prefetch
        # Its own tokenizer: a fast tokenizer's padding/truncation settings are mutable state, which the
        # training loop's own use (evaluation) must not share with the thread.
        self.prefetcher = Prefetcher(functools.partial(self.make, tokenize=Tokenize(copy.deepcopy(tokenizer)))) \
            if self.depth else None
        self.pending: collections.deque[tuple[StepPlan, Future]] = collections.deque()
        self.consumed = self._positions()
        self.last_wait_s = 0.0  # how long the last next() waited for its inputs

    def _positions(self) -> dict:
        return {name: s.state_dict() for name, s in self.streams.items()}

    def plan(self) -> StepPlan:
        """Advance every stream by one global batch."""
        indices = {name: s.next_indices() for name, s in self.streams.items()}
        return StepPlan(indices, self._positions())

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
        d, seed = self.cfg.data, self.cfg.train.seed
        query, passage = self.cfg.model.query_prefix, self.cfg.model.passage_prefix  # auxiliary text: as queries
        idx, epoch = plan.indices["ir"]
        recs = self.ir[idx]
        rows = [dict(zip(recs, vals)) for vals in zip(*recs.values())]
        groups = [sample_group(r, d.train_group_size, seed, epoch, i) for r, i in zip(rows, idx)]
        batch = {"query": tokenize([r["query"] for r in rows], d.query_max_len, query),
                 "passage": tokenize([passage_text(p) for g in groups for p in g], d.passage_max_len, passage)}
        meta = {"epoch": epoch}
        if self.parallel is not None:
            para = self.parallel[plan.indices["parallel"][0]]
            batch["para_en"] = tokenize(para["en"], d.sentence_max_len, query)
            batch["para_xx"] = tokenize(para["text"], d.sentence_max_len, query)
            meta["para_lang"] = para["lang"]
        if self.monolingual is not None:
            mono = self.monolingual[plan.indices["monolingual"][0]]
            batch["mono"] = tokenize(mono["text"], d.sentence_max_len, query)
            meta["mono_lang"] = mono["lang"]
        return batch, meta

    def state_dict(self) -> dict:
        """The streams' positions after the last step next() returned (prefetched steps not counted)."""
        return copy.deepcopy(self.consumed)

    def load_state_dict(self, state: dict) -> None:
        for future in (f for _, f in self.pending):
            future.cancel()  # planned from the old position; a running one finishes and is dropped
        self.pending.clear()
        for name, s in self.streams.items():
            if name in state:
                s.load_state_dict(state[name])
        self.consumed = self._positions()
