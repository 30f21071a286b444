"""Training data: reading and validation, deterministic per-rank batches with a resumable position.

Formats: the documented jsonl of each kind and the field's distributed ones (`formats`, docs/formats.md):
  IR (Tevatron): {"query_id": str, "query": str, "positive_passages": [{"docid", "title", "text"}],
                  "negative_passages": [...]}
  parallel:      {"en": str, "text": str, "lang": str}   (text = the translation of en into lang)
  monolingual:   {"text": str, "lang": str}
Records are validated once while `datasets` builds its Arrow cache (memory-mapped, so corpora larger
than RAM are fine); a bad record stops with file, line and field, or is skipped and counted.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from . import distributed as dist
from . import formats
from .errors import DataError, UserError
from .formats import ReadOptions
from .formats.records import Suspicious

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- reading, any format

def read_records(path: str | Path, kind: str, bad_records: str = "error", skipped: list | None = None,
                 options: ReadOptions | None = None):
    """Yield validated internal records of `kind` (ir, parallel, monolingual) from `path` in any format
    of `formats.READERS` (named in `options.format`, or detected); DataError names file, line and field.

    With bad_records="skip", malformed records are dropped and (line, reason) appended to `skipped`.
    Suspicious records (a hard negative that is its query's positive: dropped; a parallel pair in
    English, or whose text equals the English) are counted and warned about once per file.
    """
    options = options or ReadOptions()
    on_error = None
    if bad_records == "skip":
        def on_error(e: DataError) -> None:
            if skipped is not None:
                skipped.append((e.line, str(e)))
    fmt, rows = formats.read(path, kind, options, on_error)
    log.info("%s: reading %s data as %s", path, kind, fmt)
    suspicious, n = Suspicious(path), 0
    for line_no, rec in rows:
        n += 1
        yield suspicious.check(kind, rec, line_no)
    suspicious.report()
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


def _generate(path: str, kind: str, bad_records: str, stamp: str, options: dict | None = None):
    skipped: list = []
    yield from read_records(path, kind, bad_records, skipped, ReadOptions(**(options or {})))
    if skipped:
        log.warning("%s: skipped %d malformed records (first: %s)", path, len(skipped), skipped[0][1])
    del stamp  # part of the cache key only


def load_dataset(path: str | Path, kind: str, cache_dir: str | Path, bad_records: str = "error",
                 options: ReadOptions | None = None) -> datasets.Dataset:
    """*Collective.* The validated Arrow dataset of training data in any format (`read_records`); rank 0
    builds the cache, the others reuse it.

    The sizes and mtimes of every file the format reads are part of the cache key, so an edited file is
    read again.
    """
    path, options = Path(path), options or ReadOptions()
    fmt = formats.resolve(path, kind, options)
    stamp = "/".join(f"{st.st_size}-{st.st_mtime_ns}"
                     for st in (f.stat() for f in formats.files(path, kind, fmt, options)))
    log.info("%s: %s data in the %s format", path, kind, fmt)
    with dist.main_process_first():
        try:
            return datasets.Dataset.from_generator(
                _generate, features=_features(kind), cache_dir=str(cache_dir),
                gen_kwargs={"path": str(path.resolve()), "kind": kind, "bad_records": bad_records, "stamp": stamp,
                            "options": dataclasses.asdict(options)})
        except datasets.exceptions.DatasetGenerationError as e:
            # `datasets` wraps whatever the generator raised; a bad record is the user's to fix.
            if isinstance(e.__cause__, UserError):
                raise e.__cause__ from None
            raise


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
    stream then moves to the next epoch's permutation.
    """

    def __init__(self, num_examples: int, global_batch_size: int, seed: int, rank: int, world_size: int):
        if num_examples < global_batch_size:
            raise UserError(f"only {num_examples} examples for a global batch of {global_batch_size}")
        self.num_examples, self.global_batch_size = num_examples, global_batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.position = StreamPosition()
        self._perm, self._perm_epoch = None, -1

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.num_examples, generator=g), epoch
        return self._perm

    def next_indices(self) -> tuple[list[int], int]:
        """This rank's example indices for the next global batch, and the epoch they belong to."""
        pos = self.position
        if pos.offset + self.global_batch_size > self.num_examples:
            pos.epoch, pos.offset = pos.epoch + 1, 0
        per_rank = self.global_batch_size // self.world_size
        start = pos.offset + self.rank * per_rank
        indices = self.permutation(pos.epoch)[start:start + per_rank].tolist()
        epoch = pos.epoch
        pos.offset += self.global_batch_size
        return indices, epoch

    def state_dict(self) -> dict:
        return {"epoch": self.position.epoch, "offset": self.position.offset,
                "num_examples": self.num_examples, "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state["num_examples"] != self.num_examples:
            raise UserError(f"the checkpoint's data stream had {state['num_examples']} examples, "
                            f"the data now has {self.num_examples}: resume with the same training files")
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


class TrainBatches:
    """The per-step inputs of every enabled stream for this rank, with one resumable state.

    Each step yields {role: {input_ids, attention_mask}} for roles query, passage, para_en, para_xx,
    mono (the auxiliary roles only when their losses are on), plus languages for diagnostics.
    """

    def __init__(self, cfg, tokenizer, rank: int, world_size: int, cache_dir: str | Path):
        d, t = cfg.data, cfg.train
        self.cfg, self.tokenize = cfg, Tokenize(tokenizer)
        self.ir = load_dataset(d.train_ir, "ir", cache_dir, d.bad_records, formats.options_for(d, "ir"))
        if d.train_group_size > 1:
            check_has_negatives(self.ir, d.train_ir, d.train_group_size)
        self.streams = {"ir": BatchStream(len(self.ir), t.ir_batch_size, t.seed, rank, world_size)}
        self.parallel = self.monolingual = None
        if cfg.loss.semantic_weight > 0 or cfg.loss.language_weight > 0:
            self.parallel = load_dataset(d.parallel, "parallel", cache_dir, d.bad_records,
                                         formats.options_for(d, "parallel"))
            self.streams["parallel"] = BatchStream(len(self.parallel), t.parallel_batch_size, t.seed + 1,
                                                   rank, world_size)
        if cfg.loss.language_weight > 0:
            self.monolingual = load_dataset(d.monolingual, "monolingual", cache_dir, d.bad_records,
                                            formats.options_for(d, "monolingual"))
            self.streams["monolingual"] = BatchStream(len(self.monolingual), t.monolingual_batch_size,
                                                      t.seed + 2, rank, world_size)

    def next(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        d, seed = self.cfg.data, self.cfg.train.seed
        query, passage = self.cfg.model.query_prefix, self.cfg.model.passage_prefix  # auxiliary text: as queries
        idx, epoch = self.streams["ir"].next_indices()
        recs = self.ir[idx]
        rows = [dict(zip(recs, vals)) for vals in zip(*recs.values())]
        groups = [sample_group(r, d.train_group_size, seed, epoch, i) for r, i in zip(rows, idx)]
        batch = {"query": self.tokenize([r["query"] for r in rows], d.query_max_len, query),
                 "passage": self.tokenize([passage_text(p) for g in groups for p in g], d.passage_max_len, passage)}
        meta = {"epoch": epoch}
        if self.parallel is not None:
            pidx, _ = self.streams["parallel"].next_indices()
            para = self.parallel[pidx]
            batch["para_en"] = self.tokenize(para["en"], d.sentence_max_len, query)
            batch["para_xx"] = self.tokenize(para["text"], d.sentence_max_len, query)
            meta["para_lang"] = para["lang"]
        if self.monolingual is not None:
            midx, _ = self.streams["monolingual"].next_indices()
            mono = self.monolingual[midx]
            batch["mono"] = self.tokenize(mono["text"], d.sentence_max_len, query)
            meta["mono_lang"] = mono["lang"]
        return batch, meta

    def state_dict(self) -> dict:
        return {name: s.state_dict() for name, s in self.streams.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, s in self.streams.items():
            if name in state:
                s.load_state_dict(state[name])

