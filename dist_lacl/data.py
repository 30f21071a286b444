"""Training data: formats and validation, deterministic per-rank batches with a resumable position.

Formats (one JSON object per line, UTF-8):
  IR (Tevatron): {"query_id": str, "query": str, "positive_passages": [{"docid", "title", "text"}],
                  "negative_passages": [...]}
  parallel:      {"en": str, "text": str, "lang": str}   (text = the translation of en into lang)
  monolingual:   {"text": str, "lang": str}
Records are validated once while `datasets` builds its Arrow cache (memory-mapped, so corpora larger
than RAM are fine); a bad record stops with file, line and field, or is skipped and counted.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from . import distributed as dist
from .errors import DataError, UserError

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


def _generate(path: str, kind: str, bad_records: str, stamp: str):
    skipped: list = []
    yield from read_records(path, kind, bad_records, skipped)
    if skipped:
        log.warning("%s: skipped %d malformed records (first: %s)", path, len(skipped), skipped[0][1])
    del stamp  # part of the cache key only


def load_dataset(path: str | Path, kind: str, cache_dir: str | Path, bad_records: str = "error") -> datasets.Dataset:
    """*Collective.* The validated Arrow dataset of a jsonl file; rank 0 builds the cache, the others reuse it.

    The file's size and mtime are part of the cache key, so an edited file is read again.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found (expected {kind} jsonl)")
    st = path.stat()
    stamp = f"{st.st_size}-{st.st_mtime_ns}"
    with dist.main_process_first():
        try:
            return datasets.Dataset.from_generator(
                _generate, features=_features(kind), cache_dir=str(cache_dir),
                gen_kwargs={"path": str(path.resolve()), "kind": kind, "bad_records": bad_records, "stamp": stamp})
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
        self.ir = load_dataset(d.train_ir, "ir", cache_dir, d.bad_records)
        if d.train_group_size > 1:
            check_has_negatives(self.ir, d.train_ir, d.train_group_size)
        self.streams = {"ir": BatchStream(len(self.ir), t.ir_batch_size, t.seed, rank, world_size)}
        self.parallel = self.monolingual = None
        if cfg.loss.semantic_weight > 0 or cfg.loss.language_weight > 0:
            self.parallel = load_dataset(d.parallel, "parallel", cache_dir, d.bad_records)
            self.streams["parallel"] = BatchStream(len(self.parallel), t.parallel_batch_size, t.seed + 1,
                                                   rank, world_size)
        if cfg.loss.language_weight > 0:
            self.monolingual = load_dataset(d.monolingual, "monolingual", cache_dir, d.bad_records)
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

