"""The mining work directory (`--work-dir`): claimed for one set of inputs and settings, its embedding
sets encoded where not already complete (so a killed `mine` resumes), and searched.

Layout: `mine.json` (what the embeddings depend on), `corpus/chunk-NNNNN/` and `queries/`, each one
`evaluation.encode` shard directory.
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
from .evaluation.encode import encode_to_shards, iter_shards, load_embeddings, resolve_dtype
from .evaluation.index import IndexSpec, search
from .evaluation.inputs import TextSet

log = logging.getLogger(__name__)


def fingerprint(args, corpus: Path) -> dict:
    """What the embeddings in the work directory depend on; a rerun with other values must not reuse them."""
    def file_key(path):
        if not path:
            return None
        st = Path(path).stat()
        return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]

    return {"model": str(Path(args.model).resolve()), "corpus": file_key(corpus),
            "train_ir": file_key(args.train_ir), "queries": file_key(args.queries), "qrels": file_key(args.qrels),
            "min_relevance": args.min_relevance, "query_max_len": args.query_max_len,
            "passage_max_len": args.passage_max_len, "dtype": args.dtype, "chunk_passages": args.chunk_passages}


def claim_work_dir(work: Path, fingerprint: dict) -> None:
    """*Collective.* Use `work` for this run: refused if it holds the embeddings of other inputs/settings."""
    manifest = work / "mine.json"
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        changed = [key for key in fingerprint if saved.get(key) != fingerprint[key]]
        if changed:
            raise UserError(f"{work}: holds the embeddings of another mining run ({changed[0]}: "
                            f"{saved.get(changed[0])} vs {fingerprint[changed[0]]}); use another --work-dir "
                            "or remove that one")
    dist.barrier()
    if dist.is_main() and not manifest.is_file():
        work.mkdir(parents=True, exist_ok=True)
        write_text(manifest, json.dumps(fingerprint, indent=1) + "\n")
    dist.barrier()


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


def encode_all(args, sets: list[tuple[TextSet, Path, str, int]]) -> int:
    """*Collective.* Encode each (records, directory, tower, max_len) not already complete -> number encoded.

    Rank 0 decides which are complete and tells the others, so no rank sees another's fresh files.
    """
    todo = dist.broadcast_object([i for i, (records, out, _, _) in enumerate(sets)
                                  if not _is_encoded(out, records.ids)] if dist.is_main() else None)
    log.info("%d of %d embedding sets already complete in the work directory", len(sets) - len(todo), len(sets))
    if not todo:
        return 0
    from .loading import load_model

    model, tokenizer = load_model(args.model)
    device = dist.device()
    model.to(device)
    dtype = resolve_dtype(args.dtype, device)
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
