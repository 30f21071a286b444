"""Encoding texts into embeddings: length-sorted batches, one contiguous shard per rank, resumable shard files.

A directory of embeddings holds, for a world of W ranks, `emb-<r>-of-<W>.npy` ([n_r, D] float32) and
`ids-<r>-of-<W>.json` ({"tower", "max_len", "ids"}) for r = 0 .. W-1; rank r holds rows
[r*N//W, (r+1)*N//W) of the input, so concatenating the shards in rank order gives the input order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed as dist
from ..errors import UserError, write_failure
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
                 show_progress: bool = True) -> np.ndarray:
    """N texts -> [N, D] float32 embeddings, row i for texts[i] (after the model's prefix for `tower`).
    Not collective: only this rank's texts.

    With `sort_by_length`, each batch holds texts of similar token length (longest first, so running
    out of memory happens at once rather than at the end), which keeps padding small; rows are put
    back in input order. Runs under `torch.inference_mode` and, for bf16/fp16, autocast; the model's
    train/eval mode is restored afterwards.
    """
    device = device or next(model.parameters()).device
    prefix = model.prefixes[tower]
    token_ids = _tokenize(tokenizer, [prefix + text for text in texts] if prefix else texts, max_len)
    lengths = np.array([len(t) for t in token_ids], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable") if sort_by_length else np.arange(len(texts))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    out = None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _autocast(device, dtype):
            for rows in tqdm(batches, desc=f"encode {tower}", unit="batch",
                             disable=not (show_progress and dist.is_main())):
                input_ids, attention_mask = _pad([token_ids[i] for i in rows], tokenizer.pad_token_id, device)
                reps = model(input_ids=input_ids, attention_mask=attention_mask, tower=tower)
                if out is None:
                    out = np.empty((len(texts), reps.shape[-1]), dtype=np.float32)
                out[rows] = reps.float().cpu().numpy()
    finally:
        model.train(was_training)
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


# --- shards on disk ----------------------------------------------------------------------------


def shard_bounds(num_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [start, stop) of rank `rank`: a contiguous block, sizes differing by at most one."""
    return rank * num_items // world_size, (rank + 1) * num_items // world_size


def shard_paths(out_dir: str | Path, rank: int, world_size: int) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    return (out_dir / f"emb-{rank}-of-{world_size}.npy", out_dir / f"ids-{rank}-of-{world_size}.json")


def encode_to_shards(model, tokenizer, records: TextSet, out_dir: str | Path, tower: str, max_len: int,
                     batch_size: int, dtype: str = "fp32", device: torch.device | None = None,
                     sort_by_length: bool = True) -> bool:
    """*Collective* (ends with a barrier). This rank encodes its contiguous shard of `records` to `out_dir`.

    A shard whose files already hold the same ids, tower and max_len is skipped, so an interrupted job
    resumes where it stopped. Files are written under a temporary name and renamed, embeddings first,
    so the ids file marks a complete shard. Returns True if this rank encoded, False if it skipped.
    """
    rank, world_size = dist.rank(), dist.world_size()
    start, stop = shard_bounds(len(records), rank, world_size)
    emb_path, ids_path = shard_paths(out_dir, rank, world_size)
    meta = {"tower": tower, "max_len": max_len, "ids": records.ids[start:stop]}
    done = _shard_is_complete(emb_path, ids_path, meta)
    if done:
        log.info("rank %d: %s is complete, skipping", rank, emb_path)
    else:
        emb = encode_texts(model, tokenizer, records.texts[start:stop], tower, max_len, batch_size,
                           dtype=dtype, device=device, sort_by_length=sort_by_length)
        emb_path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(emb_path, lambda f: np.save(f, emb))
        _write_atomic(ids_path, lambda f: f.write(json.dumps(meta, ensure_ascii=False).encode()))
    dist.barrier()
    return not done


def _shard_is_complete(emb_path: Path, ids_path: Path, meta: dict) -> bool:
    if not (emb_path.is_file() and ids_path.is_file()):
        return False
    try:
        saved = json.loads(ids_path.read_text())
        num_rows = np.load(emb_path, mmap_mode="r").shape[0]
    except (OSError, ValueError):
        return False
    if saved != meta or num_rows != len(meta["ids"]):
        log.warning("%s holds other inputs than this run's shard; encoding it again", ids_path)
        return False
    return True


def _write_atomic(path: Path, write) -> None:
    """Write through `write(file)` to a temporary name, then rename: readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        failure = write_failure(e, path.parent, str(path))
        tmp.unlink(missing_ok=True)  # e.g. a full disk: leave nothing half-written behind
        if failure is None:
            raise
        raise failure from None
    os.replace(tmp, path)


def iter_shards(emb_dir: str | Path, mmap: bool = True) -> Iterator[tuple[list[str], np.ndarray]]:
    """(ids, embeddings [n_r, D]) of each shard of `emb_dir` in rank order, memory-mapped by default.

    Raises UserError unless the directory holds exactly one complete set of shards (one world size).
    """
    emb_dir = Path(emb_dir)
    world_sizes = {p.name.split("-of-")[1].removesuffix(".json") for p in emb_dir.glob("ids-*-of-*.json")}
    if len(world_sizes) != 1:
        found = f"shards of world sizes {sorted(world_sizes)}" if world_sizes else "no ids-*-of-*.json shards"
        raise UserError(f"{emb_dir}: expected the embeddings of one `encode` run, found {found}")
    world_size = int(world_sizes.pop())
    for rank in range(world_size):
        emb_path, ids_path = shard_paths(emb_dir, rank, world_size)
        if not (emb_path.is_file() and ids_path.is_file()):
            raise UserError(f"{emb_dir}: shard {rank} of {world_size} is missing; run `encode` again to finish it")
        ids = json.loads(ids_path.read_text())["ids"]
        emb = np.load(emb_path, mmap_mode="r" if mmap else None)
        if emb.shape[0] != len(ids):
            raise UserError(f"{emb_path}: {emb.shape[0]} rows but {len(ids)} ids in {ids_path.name}")
        yield ids, emb


def load_embeddings(emb_dir: str | Path) -> tuple[list[str], np.ndarray]:
    """All shards of `emb_dir` concatenated in rank order -> (ids, [N, D] float32), i.e. input order."""
    ids, parts = [], []
    for shard_ids, emb in iter_shards(emb_dir, mmap=False):
        ids.extend(shard_ids)
        if len(shard_ids):
            parts.append(emb)
    if not parts:
        raise UserError(f"{emb_dir}: the embedding shards hold no rows")
    return ids, np.concatenate(parts).astype(np.float32, copy=False)
