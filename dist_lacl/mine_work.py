"""The mining work directory (`--work-dir`): checked and claimed, its embedding sets encoded where not
already complete with this model and settings (so a killed `mine` resumes, and a model trained on is
encoded again), and searched.

Layout: `mine.json` (the marker: what the embeddings were made from), `corpus/chunk-NNNNN/` and
`queries/`, each one `evaluation.encode` shard directory whose shards record their provenance.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from . import distributed as dist
from .atomic import write_text
from .errors import UserError
from .evaluation.encode import (
    encode_to_shards,
    iter_shards,
    load_embeddings,
    resolve_dtype,
    shard_provenance,
    tokenizer_fingerprint,
    weights_fingerprint,
)
from .evaluation.index import IndexSpec, search
from .evaluation.inputs import TextSet
from .evaluation.shards import existing_provenance
from .outputs import FolderLock, check_not_an_input, check_output_file
from .teacher import MINED, SCORES

log = logging.getLogger(__name__)


MARKER = "mine.json"
"""The work directory's marker: `mine` created the folder, and what its embeddings were made from."""

_OURS = {MARKER, "corpus", "queries", FolderLock.NAME, MINED, SCORES}
"""Everything `mine` writes into a work directory."""


def mine_inputs(args) -> list[tuple[str, str | None]]:
    """The input files and folders of `mine`, by option, for the output rule (`outputs`)."""
    return [("--model", args.model), ("--corpus", args.corpus), ("--train-ir", args.train_ir),
            ("--queries", args.queries), ("--qrels", args.qrels), ("--score-with", args.score_with)]


def check_paths(args) -> tuple[Path, Path]:
    """(--output, --work-dir) if `mine` may write there: the output rule of every command (never an input,
    an existing file only with --overwrite); the work directory new, empty or a previous one of `mine`."""
    inputs = mine_inputs(args)
    out = check_output_file(args.output, "--output", inputs, args.overwrite)
    if (out.resolve().parent / MARKER).is_file():  # the next run there would find a file that is not its own
        raise UserError(f"--output {out}: is inside a work directory of mine; choose another folder")
    work = Path(args.work_dir or f"{out}.work").expanduser()
    check_not_an_input(work, "--work-dir", [*inputs, ("--output", out)])
    if work.exists() and not work.is_dir():
        raise UserError(f"--work-dir {work}: is a file; expected a folder for the embeddings")
    if work.is_dir() and any(p.name != FolderLock.NAME for p in work.iterdir()) and not (work / MARKER).is_file():
        raise UserError(f"--work-dir {work}: the folder is not empty and is not a work directory of mine "
                        f"(no {MARKER}); choose a new or empty folder (nothing was changed)")
    return out, work


def fingerprint(args, corpus: Path, model, tokenizer, teacher=None) -> dict:
    """What the embeddings in the work directory were made from: the model's weights (as `encode`'s shards
    record them), its settings and the inputs; and the scorer of `--score-with` (a `teacher.Teacher`).
    Written for the reader; every embedding set and every chunk of scores is also checked on its own
    (`encode_all`, `teacher.score_mined`)."""
    def file_key(path):
        if not path:
            return None
        st = Path(path).stat()
        return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]

    return {"command": "mine", "model": str(Path(args.model).resolve()), "model_weights": weights_fingerprint(model),
            "tokenizer": tokenizer_fingerprint(tokenizer), "pooling": model.pooling, "normalize": model.normalize,
            "prefixes": model.prefixes, "corpus": file_key(corpus), "train_ir": file_key(args.train_ir),
            "queries": file_key(args.queries), "qrels": file_key(args.qrels), "min_relevance": args.min_relevance,
            "query_max_len": args.query_max_len, "passage_max_len": args.passage_max_len, "dtype": args.dtype,
            "chunk_passages": args.chunk_passages, "scorer": teacher.identity() if teacher else None}


def claim_work_dir(work: Path, fingerprint: dict) -> FolderLock | None:
    """*Collective.* Use `work` (checked by `check_paths`) for this run; rank 0 locks it for the whole run
    (returned, None on other ranks), so a second `mine` into it is refused. A work directory of an earlier
    run with other inputs or another model is our own cache: its marker is rewritten, and the embedding
    sets that no longer fit are replaced by `encode_all`. Anything in it that `mine` did not write is refused."""
    held = []

    def take() -> None:
        work.mkdir(parents=True, exist_ok=True)
        held.append(FolderLock(work, "--work-dir", "mine"))
        manifest = work / MARKER
        if manifest.is_file():
            saved = json.loads(manifest.read_text())
            changed = [key for key in fingerprint if saved.get(key) != fingerprint[key]]
            foreign = sorted(p.name for p in work.iterdir() if p.name not in _OURS)
            if changed and foreign:
                raise UserError(f"--work-dir {work}: holds {foreign[0]}, which mine did not write; choose another "
                                "--work-dir (nothing was changed)")
            if changed:
                log.warning("%s: made by an earlier run with another %s; embeddings that no longer fit are "
                            "encoded again", work, ", ".join(changed))
        write_text(manifest, json.dumps(fingerprint, indent=1) + "\n")

    dist.main_decides(take)
    return held[0] if held else None


def _set_state(emb_dir: Path, ids: list[str], wanted: dict) -> str:
    """"complete", "partial" (resumable) or "stale" (made from another model, input or setting)."""
    try:
        found = existing_provenance(emb_dir)
    except UserError:  # shards of an older dist-lacl that did not record their origin
        return "stale"
    if any(_differs(provenance, wanted) for _, _, provenance in found):
        return "stale"
    return "complete" if _is_encoded(emb_dir, ids) else "partial"


def _differs(found: dict, wanted: dict) -> bool:
    """Made otherwise than `wanted`; the world size aside (a complete set of any world size is reused)."""
    return any(found.get(key) != wanted[key] for key in wanted if key != "world_size")


def _is_encoded(emb_dir: Path, ids: list[str]) -> bool:
    """Does `emb_dir` hold one complete set of shards (of any world size) of exactly these ids?"""
    if not emb_dir.is_dir():
        return False
    try:
        found = [docid for shard_ids, _ in iter_shards(emb_dir) for docid in shard_ids]
    except UserError:
        return False
    return found == ids


def _drop_partial_shards(emb_dir: Path, world_size: int) -> None:
    """A chunk left half-encoded by a run on another number of ranks: its shards cannot be mixed with
    this run's (one world size per directory), so they go. They are this tool's intermediate files."""
    for path in [p for pattern in ("emb-*-of-*.npy", "ids-*-of-*.npy", "meta-*-of-*.json", "parts-*-of-*")
                 for p in emb_dir.glob(pattern)]:
        if not path.stem.endswith(f"-of-{world_size}"):
            log.warning("removing %s, part of an interrupted encoding on other ranks", path)
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def corpus_chunks(corpus, work: Path, args) -> list[tuple[TextSet, Path, str, int]]:
    """The corpus (a `mine.CorpusFile`) as chunks of `--chunk-passages` rows, each with its embedding
    directory, for `encode_all`."""
    step = args.chunk_passages
    return [(corpus.chunk(lo, min(lo + step, len(corpus))), work / "corpus" / f"chunk-{lo // step:05d}",
             "passage", args.passage_max_len) for lo in range(0, len(corpus), step)]


def encode_all(args, model, tokenizer, sets: list[tuple[TextSet, Path, str, int]]) -> int:
    """*Collective.* Encode each (records, directory, tower, max_len) not already complete with this model
    and these settings (`encode.shard_provenance`) -> number encoded. A set made otherwise (the weights
    moved on, another input or length) is removed first: it is this tool's cache inside its work directory.

    Rank 0 decides which are complete and tells the others, so no rank sees another's fresh files.
    """
    device = dist.device()
    model.to(device)
    dtype = resolve_dtype(args.dtype, device)
    todo = None
    if dist.is_main():
        todo = []
        for i, (records, out, tower, max_len) in enumerate(sets):
            wanted = shard_provenance(model, tokenizer, records, tower, max_len, dtype, "fp32", dist.world_size())
            state = _set_state(out, records.ids, wanted)
            if state == "stale":
                log.warning("%s: embeddings of another model, input or setting; encoding again", out)
                shutil.rmtree(out)
            if state != "complete":
                todo.append(i)
        used = {out for _, out, _, _ in sets}
        for unused in {d for out in used for d in out.parent.glob("chunk-*")} - used:  # --chunk-passages changed
            shutil.rmtree(unused)
    todo = dist.broadcast_object(todo)
    log.info("%d of %d embedding sets already complete in the work directory", len(sets) - len(todo), len(sets))
    for i in todo:
        records, out, tower, max_len = sets[i]
        if dist.is_main():
            _drop_partial_shards(out, dist.world_size())
        dist.barrier()
        encode_to_shards(model, tokenizer, records, out, tower, max_len, args.batch_size, dtype=dtype,
                         device=device, sort_by_length=True)
    return len(todo)


def search_top_k(work: Path, chunks: list, query_ids: list[str], k: int, args) -> np.ndarray:
    """Corpus rows [Q, k] of each query's top k, best first (-1 past the corpus's end). One process: the
    chunks' shards are memory-mapped and indexed block by block (`index.search`)."""
    found_ids, q_emb = load_embeddings(work / "queries")
    if found_ids != query_ids:
        raise UserError(f"{work / 'queries'}: holds embeddings of other queries; remove it to encode them again")
    parts = (emb for _, chunk_dir, _, _ in chunks for _, emb in iter_shards(chunk_dir))
    return search(q_emb, parts, k, IndexSpec(gpus=args.gpus), args.block_rows, args.query_batch)[1]
