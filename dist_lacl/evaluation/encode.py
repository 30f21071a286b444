"""Encoding texts into embeddings: length-sorted batches, one contiguous shard per rank, written in parts so
that a killed job resumes with every id exactly once; the on-disk layout is `shards`'.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed as dist
from ..errors import UserError
from . import shards
from .inputs import TextSet

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_TOKENIZE_CHUNK = 10_000


def resolve_dtype(name: str, device: torch.device) -> str:
    """`auto` -> bf16 on a GPU that has it, else fp16 on GPU, fp32 on CPU. fp16 on CPU is refused."""
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name not in DTYPES:
        raise UserError(f"dtype: expected one of auto, {', '.join(DTYPES)}, got {name!r}")
    if name == "fp16" and device.type != "cuda":
        raise UserError("dtype: fp16 needs a GPU; use bf16 or fp32 on CPU")
    return name


def encode_texts(model, tokenizer, texts: Sequence[str], tower: str, max_len: int, batch_size: int,
                 dtype: str = "fp32", device: torch.device | None = None, sort_by_length: bool = True,
                 show_progress: bool = True, progress=None) -> np.ndarray:
    """N texts -> [N, D] float32 embeddings, row i for texts[i] (after the model's prefix for `tower`).
    Not collective: only this rank's texts.

    With `sort_by_length`, each batch holds texts of similar token length (longest first, so running
    out of memory happens at once rather than at the end), which keeps padding small; rows are put
    back in input order. Runs under `torch.inference_mode` and, for bf16/fp16, autocast; the model's
    train/eval mode is restored afterwards. `progress`: a tqdm bar to advance by each batch's rows
    instead of a bar of its own.
    """
    device = device or next(model.parameters()).device
    prefix = model.prefixes[tower]
    token_ids = _tokenize(tokenizer, [prefix + text for text in texts] if prefix else texts, max_len)
    lengths = np.array([len(t) for t in token_ids], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable") if sort_by_length else np.arange(len(texts))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    out = None
    bar = progress if progress is not None else tqdm(
        total=len(batches), desc=f"encode {tower}", unit="batch", disable=not (show_progress and dist.is_main()))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _autocast(device, dtype):
            for rows in batches:
                input_ids, attention_mask = _pad([token_ids[i] for i in rows], tokenizer.pad_token_id, device)
                reps = model(input_ids=input_ids, attention_mask=attention_mask, tower=tower)
                if out is None:
                    out = np.empty((len(texts), reps.shape[-1]), dtype=np.float32)
                out[rows] = reps.float().cpu().numpy()
                bar.update(len(rows) if progress is not None else 1)
    finally:
        model.train(was_training)
        if progress is None:
            bar.close()
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def _tokenize(tokenizer, texts: Sequence[str], max_len: int) -> list[np.ndarray]:
    """Token ids with special tokens, truncated to max_len; int32 arrays, as lists of ints would take ~9x the memory."""
    out = []
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        chunk = list(texts[start:start + _TOKENIZE_CHUNK])
        ids = tokenizer(chunk, truncation=True, max_length=max_len, padding=False)["input_ids"]
        out.extend(np.asarray(x, dtype=np.int32) for x in ids)
    return out


def _pad(token_ids: list[np.ndarray], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence -> input_ids, attention_mask [B, L] int64 on `device`."""
    width = max(len(t) for t in token_ids)
    input_ids = np.full((len(token_ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), width), dtype=np.int64)
    for i, t in enumerate(token_ids):
        input_ids[i, :len(t)] = t
        mask[i, :len(t)] = 1
    return torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device)


def _autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


# --- what produced a shard -----------------------------------------------------------------------


def weights_fingerprint(model: torch.nn.Module, samples_per_tensor: int = 256) -> str:
    """sha256 (16 hex digits) over every state-dict entry's name, dtype and shape and `samples_per_tensor`
    evenly spaced values of it. Cheap at any model size; any training step changes it (every weight
    moves), an edit of single weights between the samples would not."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if flat.numel():
            index = torch.linspace(0, flat.numel() - 1, min(flat.numel(), samples_per_tensor)).long()
            digest.update(flat[index.to(flat.device)].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 (16 hex digits) of the tokenizer's class, size and its ids for a fixed multilingual text."""
    probe = "Where is the station? Wo ist der Bahnhof? Où est la gare ? 駅はどこですか？ 0123456789"
    ids = tokenizer(probe)["input_ids"]
    return hashlib.sha256(f"{type(tokenizer).__name__}|{len(tokenizer)}|{ids}".encode()).hexdigest()[:16]


def records_digest(records: TextSet) -> str:
    """sha256 (16 hex digits) over the ids and texts, in order: the identity of what is encoded."""
    digest = hashlib.sha256()
    for start in range(0, len(records), _TOKENIZE_CHUNK):
        stop = start + _TOKENIZE_CHUNK
        digest.update("\0".join(records.ids[start:stop]).encode() + b"\1")
        digest.update("\0".join(records.texts[start:stop]).encode() + b"\1")
    return digest.hexdigest()[:16]


def shard_provenance(model, tokenizer, records: TextSet, tower: str, max_len: int, dtype: str,
                     storage: str, world_size: int) -> dict:
    """The settings that decide a shard's vectors; shards of one directory must agree on all of them."""
    return {"model_weights": weights_fingerprint(model), "pooling": model.pooling, "normalize": model.normalize,
            "tokenizer": tokenizer_fingerprint(tokenizer), "tower": tower, "prefix": model.prefixes[tower],
            "max_len": max_len, "dtype": dtype, "storage": storage, "world_size": world_size,
            "input": records_digest(records), "num_records": len(records)}


# --- encoding into shards ------------------------------------------------------------------------


def shard_bounds(num_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [start, stop) of rank `rank`: a contiguous block, sizes differing by at most one."""
    return rank * num_items // world_size, (rank + 1) * num_items // world_size


def encode_to_shards(model, tokenizer, records: TextSet, out_dir: str | Path, tower: str, max_len: int,
                     batch_size: int, dtype: str = "fp32", device: torch.device | None = None,
                     sort_by_length: bool = True, storage: str = "fp32", part_rows: int = 65_536,
                     about: dict | None = None) -> bool:
    """*Collective* (barriers). This rank encodes its contiguous shard of `records` into `out_dir`.

    Rows are encoded `part_rows` at a time, each part written atomically, so a killed job resumes at the
    first missing part; a complete shard made with the same settings is skipped. A directory holding
    shards of other settings (`shard_provenance`) or another world size is refused (UserError) before
    anything is written. Non-finite embeddings are an error naming their ids; this rank's parts are then
    removed. `about` (e.g. the model and input paths) is recorded in the meta file, not compared.
    Returns True if this rank encoded, False if its shard was complete.
    """
    if storage not in shards.STORAGE:
        raise UserError(f"storage: expected one of {', '.join(shards.STORAGE)}, got {storage!r}")
    rank, world_size = dist.rank(), dist.world_size()
    out_dir = Path(out_dir)
    provenance = shard_provenance(model, tokenizer, records, tower, max_len, dtype, storage, world_size)
    created_dir = not out_dir.exists()
    lock = shards.lock_shard(out_dir, rank)
    try:
        return _encode_locked(model, tokenizer, records, out_dir, tower, max_len, batch_size, dtype, device,
                              sort_by_length, storage, part_rows, about, provenance, lock, created_dir)
    finally:
        shards.unlock_shard(lock)


def _encode_locked(model, tokenizer, records, out_dir, tower, max_len, batch_size, dtype, device, sort_by_length,
                   storage, part_rows, about, provenance, lock, created_dir) -> bool:
    """`encode_to_shards` once this rank tried its lock (`lock`: None if another encode holds it)."""
    rank, world_size = dist.rank(), dist.world_size()
    if not all(dist.all_gather_objects(lock is not None)):  # every rank refuses together: none waits
        raise UserError(f"--output {out_dir}: another encode is writing into it; wait for it to finish (a rerun "
                        "then finds its shards complete) or choose another --output (nothing was changed)")
    shards.check_directory_fits(out_dir, provenance)
    dist.barrier()  # every rank has looked before any rank writes
    meta_path = out_dir / shards.shard_name("meta", rank, world_size)
    parts_dir = out_dir / shards.shard_name("parts", rank, world_size)
    done = meta_path.is_file()
    if done:
        log.info("rank %d: %s is complete (same model and settings), skipping", rank, meta_path)
        shutil.rmtree(parts_dir, ignore_errors=True)  # ours: left by a job killed after its last step
    else:
        try:
            _encode_parts(model, tokenizer, records, parts_dir, tower, max_len, batch_size, dtype, device,
                          sort_by_length, storage, part_rows, provenance)
        except NonFiniteEmbeddings:
            shutil.rmtree(parts_dir, ignore_errors=True)  # ours; a rerun with another dtype starts clean
            shards.unlock_shard(lock)
            if created_dir and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()
            raise
        _assemble(out_dir, parts_dir, rank, world_size, records, tower, storage, provenance, about,
                  model.tower(tower).config.hidden_size)
    dist.barrier()
    return not done


class NonFiniteEmbeddings(UserError):
    """Embedding rows with NaN or inf (typically fp16 overflow)."""


def check_finite(emb: np.ndarray, ids: Sequence[str], what: str, advice: str = "") -> None:
    """Raise NonFiniteEmbeddings naming the ids of the rows of `emb` [n, D] that hold NaN or inf."""
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if len(bad):
        names = ", ".join(ids[i] for i in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteEmbeddings(f"{what}: non-finite (NaN or inf) embeddings for {len(bad)} ids ({names})"
                                  + (f"; {advice}" if advice else ""))


def _encode_parts(model, tokenizer, records, parts_dir, tower, max_len, batch_size, dtype, device,
                  sort_by_length, storage, part_rows, provenance) -> None:
    start, stop = shard_bounds(len(records), dist.rank(), dist.world_size())
    parts_dir.mkdir(parents=True, exist_ok=True)
    for stale in parts_dir.glob(".*.tmp-*"):
        stale.unlink()  # our own temporary files, left by a killed job
    if not (parts_dir / "provenance.json").is_file():
        shards.write_json(parts_dir / "provenance.json", provenance)
    done = shards.part_ranges(parts_dir)
    todo = shards.missing_ranges(done, stop - start, part_rows)
    with tqdm(total=stop - start, initial=stop - start - sum(b - a for a, b in todo), unit="text",
              desc=f"encode {tower} (rank {dist.rank()})", disable=not dist.is_main()) as bar:
        for a, b in todo:
            emb = encode_texts(model, tokenizer, records.texts[start + a:start + b], tower, max_len, batch_size,
                               dtype=dtype, device=device, sort_by_length=sort_by_length, progress=bar)
            ids = records.ids[start + a:start + b]
            remedy = ("the model itself gives them: check its weights" if dtype == "fp32" else
                      f"{dtype} overflowed: encode with --dtype fp32 (or bf16 if it was fp16)")
            check_finite(emb, ids, f"encoding in {dtype}", f"{remedy}; nothing was written")
            stored = emb.astype(shards.STORAGE[storage])
            check_finite(stored, ids, f"storing as {storage}",
                         "values beyond its range: encode with --storage fp32; nothing was written")
            shards.write_file(shards.part_path(parts_dir, a, b), lambda f, x=stored: np.save(f, x))


def _assemble(out_dir, parts_dir, rank, world_size, records, tower, storage, provenance, about,
              dim_if_empty: int) -> None:
    """Concatenate the parts into the shard (streamed, one part in memory), write ids and meta, drop the parts."""
    start, stop = shard_bounds(len(records), rank, world_size)
    ranges = shards.part_ranges(parts_dir)
    if shards.missing_ranges(ranges, stop - start, stop - start + 1) or \
            sum(b - a for a, b in ranges) != stop - start:  # no gap, no overlap
        raise RuntimeError(f"{parts_dir}: parts {ranges} do not cover rows 0..{stop - start} once")
    part_files = [shards.part_path(parts_dir, a, b) for a, b in ranges]
    dim = np.load(part_files[0], mmap_mode="r").shape[1] if part_files else dim_if_empty
    meta = {"format": shards.FORMAT, "tower": tower, "dim": int(dim), "storage": storage, "rank": rank,
            "world_size": world_size, "rows": [start, stop], "num_rows": stop - start,
            "provenance": provenance, "about": about or {}}
    shards.write_shard(out_dir, rank, world_size, (np.load(p) for p in part_files), records.ids[start:stop], meta)
    shutil.rmtree(parts_dir)  # ours, now copied into the shard


# --- reading them back ---------------------------------------------------------------------------


def iter_shards(emb_dir: str | Path):
    """(ids, embeddings [n_r, D] read block by block on slicing) of each shard of `emb_dir`, in rank order."""
    for shard in shards.open_shards(emb_dir):
        yield [b.decode("utf-8") for b in shard.ids[:]], shard.emb


def load_embeddings(emb_dir: str | Path, option: str = "embeddings") -> tuple[list[str], np.ndarray]:
    """All rows of `emb_dir` in input order -> (ids, [N, D] float32), for query sets (they are small).

    Raises UserError for NaN/inf rows, naming their ids.
    """
    ids, parts = [], []
    for shard in shards.open_shards(emb_dir, option):
        ids.extend(b.decode("utf-8") for b in shard.ids[:])
        parts.append(shard.emb[:].astype(np.float32, copy=False))
    emb = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    if not len(ids):
        raise UserError(f"{option} {emb_dir}: the embedding shards hold no rows")
    check_finite(emb, ids, f"{option} {emb_dir}")
    return ids, emb
