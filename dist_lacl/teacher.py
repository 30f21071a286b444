"""`mine --score-with`: a cross-encoder's score on every mined passage, for distillation; optionally the
negatives it scores too close to their query's positives dropped (likely false negatives).

`mine` writes its Tevatron records to `<work>/mined.jsonl`; every rank scores its share of them (chunks of
`--score-chunk-queries` queries, chunk c on rank c % world size, so the batches and scores do not depend on the
world size) into `<work>/scores/chunk-NNNNN.json`, each recording the scorer and a hash of the records it
scored, so a rerun reuses exactly the chunks made by this scorer from these records (resumable like the
embeddings; a chunk of another scorer or of other records is scored again); rank 0 then writes the output
with a `score` on every passage.

The score is the model's logit for (query, `passage_text(title, text)`) as a pair: the single logit of a
one-label model (the usual cross-encoder), the last label's of a model with several (the "relevant" class
of a two-class one).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed as dist
from .atomic import write_text
from .errors import UserError
from .evaluation.encode import _autocast, resolve_dtype, tokenizer_fingerprint, weights_fingerprint
from .evaluation.shards import write_file
from .formats.records import passage_text
from .model import max_tokens

log = logging.getLogger(__name__)

MAX_LEN_CAP = 512
MINED, SCORES = "mined.jsonl", "scores"
"""What scoring adds to mine's work directory: the unscored records, and the scores by chunk."""


@dataclass
class Teacher:
    """The cross-encoder of `--score-with`, loaded (on the CPU until it scores), and how it scores."""

    path: Path
    model: torch.nn.Module
    tokenizer: object
    max_len: int
    batch_size: int
    chunk_queries: int
    margin: float | None

    def identity(self) -> dict:
        """What makes its scores: a score made otherwise is never reused."""
        return {"model": str(self.path.resolve()), "weights": weights_fingerprint(self.model),
                "tokenizer": tokenizer_fingerprint(self.tokenizer), "max_len": self.max_len,
                "label": self.model.config.num_labels - 1}


def load_teacher(args) -> Teacher | None:
    """The teacher of `--score-with` (None without it), its options checked; a folder that is no
    sequence-classification model is a UserError naming it."""
    if not args.score_with:
        if args.drop_negatives_above_margin is not None:
            raise UserError("--drop-negatives-above-margin: needs --score-with MODEL (the scores it compares)")
        return None
    for name, value in {"--score-batch-size": args.score_batch_size,
                        "--score-chunk-queries": args.score_chunk_queries}.items():
        if value < 1:
            raise UserError(f"{name}: expected a positive integer, got {value}")
    if args.score_max_len is not None and args.score_max_len < 2:
        raise UserError(f"--score-max-len: expected at least 2 tokens, got {args.score_max_len}")
    path = Path(args.score_with).expanduser()
    config = _sequence_classification_config(path)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path, config=config).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    limits = [MAX_LEN_CAP, max_tokens(model.base_model) or MAX_LEN_CAP, tokenizer.model_max_length]
    max_len = args.score_max_len or int(min(limits))
    if max_len > min(limits[1:]):
        raise UserError(f"--score-max-len {max_len}: {path} takes at most {int(min(limits[1:]))} tokens")
    return Teacher(path, model, tokenizer, max_len, args.score_batch_size, args.score_chunk_queries,
                   args.drop_negatives_above_margin)


def _sequence_classification_config(path: Path):
    """The model's config if `path` holds a model saved as `...ForSequenceClassification`; UserError else."""
    from transformers import AutoConfig

    expected = "expected a cross-encoder folder saved by transformers' AutoModelForSequenceClassification"
    if not (path / "config.json").is_file():
        raise UserError(f"--score-with {path}: {'no such folder' if not path.is_dir() else 'no config.json'}; "
                        f"{expected}")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"--score-with {path}: unreadable config.json ({e}); {expected}") from None
    found = config.architectures or []
    if not any(name.endswith("ForSequenceClassification") for name in found):
        raise UserError(f"--score-with {path}: is a {', '.join(found) or 'model of no stated architecture'}, "
                        f"not a sequence-classification model; {expected}")
    return config


# --- scoring ------------------------------------------------------------------------------------------


def score_mined(teacher: Teacher, work: Path, out: Path, dtype_name: str) -> None:
    """*Collective.* Score `<work>/mined.jsonl` (every rank its chunks, reusing those already made by this
    teacher), then rank 0 writes `out` with the scores (and the margin filter)."""
    device = dist.device()
    dtype = resolve_dtype(dtype_name, device)
    wanted = {**teacher.identity(), "dtype": dtype}
    teacher.model.to(device)
    (work / SCORES).mkdir(exist_ok=True)
    done = scored = 0
    for number, lines in _chunks(work / MINED, teacher.chunk_queries):
        if number % dist.world_size() != dist.rank():
            continue
        path, digest = _chunk_path(work, number), _digest(lines)
        if _reusable(path, wanted, digest):
            done += 1
            continue
        scores = score_records([json.loads(line) for line in lines], teacher, device, dtype)
        write_text(path, json.dumps({"scorer": wanted, "records": digest, "scores": scores}) + "\n")
        scored += 1
    log.info("rank %d: %d chunks scored, %d reused from the work directory", dist.rank(), scored, done)
    dist.barrier()
    if dist.is_main():
        write_scored(work, out, wanted, teacher)


def _chunks(mined: Path, size: int) -> Iterator[tuple[int, list[bytes]]]:
    """(chunk number, its lines) of the mined records, `size` at a time (every rank reads them all,
    holding one chunk)."""
    lines: list[bytes] = []
    number = 0
    with mined.open("rb") as f:
        for line in f:
            lines.append(line)
            if len(lines) == size:
                yield number, lines
                number, lines = number + 1, []
    if lines:
        yield number, lines


def _chunk_path(work: Path, number: int) -> Path:
    return work / SCORES / f"chunk-{number:05d}.json"


def _digest(lines: list[bytes]) -> str:
    return hashlib.sha256(b"".join(lines)).hexdigest()[:16]


def _reusable(path: Path, wanted: dict, digest: str) -> bool:
    """A chunk's scores made by this scorer from these records."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return saved.get("scorer") == wanted and saved.get("records") == digest


def score_records(records: list[dict], teacher: Teacher, device: torch.device, dtype: str) -> list[list[list[float]]]:
    """Per record, [positive scores, negative scores]: the teacher's logit of each (query, passage)."""
    pairs = [(r["query"], passage_text(p.get("title", ""), p["text"]))
             for r in records for key in ("positive_passages", "negative_passages") for p in r[key]]
    flat = pair_scores(pairs, teacher, device, dtype)
    out, at = [], 0
    for r in records:
        per_key = []
        for key in ("positive_passages", "negative_passages"):
            per_key.append(flat[at:at + len(r[key])])
            at += len(r[key])
        out.append(per_key)
    return out


def pair_scores(pairs: list[tuple[str, str]], teacher: Teacher, device: torch.device, dtype: str) -> list[float]:
    """The teacher's logit (the last label's) of each (query, passage), in order; batches of similar
    lengths (by characters) so little of each is padding."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    scores = [0.0] * len(pairs)
    with torch.inference_mode(), _autocast(device, dtype):
        for start in tqdm(range(0, len(order), teacher.batch_size), desc="score", unit="batch",
                          disable=not dist.is_main()):
            batch = order[start:start + teacher.batch_size]
            enc = teacher.tokenizer([pairs[i][0] for i in batch], [pairs[i][1] for i in batch], padding=True,
                                    truncation=True, max_length=teacher.max_len, return_tensors="pt")
            logits = teacher.model(**enc.to(device)).logits[:, -1].float().cpu().tolist()
            for i, value in zip(batch, logits):
                scores[i] = value
    return scores


# --- the output -----------------------------------------------------------------------------------


def with_scores(record: dict, scores: list[list[float]], margin: float | None) -> tuple[dict, int]:
    """`record` with a `score` on every passage -> (it, negatives dropped). With a margin, a negative
    scoring above (the lowest positive's score - margin) is dropped: likely a false negative."""
    positives = [dict(p, score=s) for p, s in zip(record["positive_passages"], scores[0])]
    negatives = [dict(p, score=s) for p, s in zip(record["negative_passages"], scores[1])]
    kept = negatives
    if margin is not None and positives:
        bar = min(p["score"] for p in positives) - margin
        kept = [n for n in negatives if not n["score"] > bar]
    return {**record, "positive_passages": positives, "negative_passages": kept}, len(negatives) - len(kept)


def write_scored(work: Path, out: Path, wanted: dict, teacher: Teacher) -> None:
    """Rank 0: the mined records with their chunks' scores -> `out`, atomically; the counts logged; the
    chunks of an earlier run past this run's last removed."""
    stats = {"queries": 0, "passages": 0, "dropped": 0, "emptied": 0}
    margin, used = teacher.margin, set()

    def write(f):
        text = io.TextIOWrapper(f, encoding="utf-8")
        for number, lines in _chunks(work / MINED, teacher.chunk_queries):
            path = _chunk_path(work, number)
            used.add(path)
            if not _reusable(path, wanted, _digest(lines)):  # a rank's file changed under it: not ours to mend
                raise UserError(f"{path}: not the scores of {work / MINED} by this teacher; run mine again")
            for line, scores in zip(lines, json.loads(path.read_text())["scores"]):
                record, dropped = with_scores(json.loads(line), scores, margin)
                stats["queries"] += 1
                stats["passages"] += sum(len(s) for s in scores)
                stats["dropped"] += dropped
                stats["emptied"] += dropped > 0 and not record["negative_passages"]
                text.write(json.dumps(record, ensure_ascii=False) + "\n")
        text.flush()
        text.detach()  # leave `f` open for the fsync

    write_file(out, write)
    for unused in set((work / SCORES).glob("chunk-*.json")) - used:
        unused.unlink()
    log.info("wrote %s: %d queries, %d passages scored by %s", out, stats["queries"], stats["passages"],
             wanted["model"])
    if margin is not None:
        log.info("--drop-negatives-above-margin %g: dropped %d negatives scoring above their query's lowest "
                 "positive score - %g (%d queries left without a negative)", margin, stats["dropped"], margin,
                 stats["emptied"])
