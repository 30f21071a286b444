"""FAISS inner-product search on CPU, one GPU or all GPUs (index sharded), exact over corpora of any size.
Without faiss-gpu, exact (flat) search on the GPUs runs in plain torch (`torch_search`), the same results.

The corpus is searched block by block, each block read into one reused float32 buffer: exact search on
CPU runs on the buffer in place (`faiss.knn`); otherwise each block gets its own index (on the GPUs when
there are any). The per-block top-k lists are merged exactly (`merge_topk`), so a corpus larger than
GPU memory gives the same result as one index over all of it. Not collective: the search runs in one process.

Platform traps guarded here (docs/platform.md): faiss-cpu has no `StandardGpuResources`; faiss-gpu on a
machine without a GPU silently returns an *empty* index from `index_cpu_to_all_gpus`; GPU faiss
selects at most k = 2048 (and nprobe <= 2048).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator

import faiss
import numpy as np

from ..errors import UserError
from . import torch_search
from .index_spec import IndexSpec, check_positive

log = logging.getLogger(__name__)

GPU_MAX_K = 2048
"""Largest k (and nprobe) that GPU faiss can select."""
CPU_BLOCK_BYTES = 2**29
"""Default corpus block on CPU: 512 MiB of float32, so search memory does not grow with the corpus."""


# --- GPUs --------------------------------------------------------------------------------------


def num_gpus() -> int:
    """GPUs faiss can use: 0 with faiss-cpu, and 0 with faiss-gpu on a machine without a visible GPU."""
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def gpu_backend() -> str | None:
    """Who searches on the GPUs: `faiss` (faiss-gpu sees a GPU), `torch` (no faiss-gpu installed, torch
    sees a CUDA GPU: exact flat search only), or None (no GPU search here)."""
    if num_gpus():
        return "faiss"
    if not hasattr(faiss, "StandardGpuResources") and torch_search.num_cuda_devices():
        return "torch"
    return None


def gpu_count() -> int:
    """GPUs the GPU backend uses (0 without one)."""
    return {"faiss": num_gpus, "torch": torch_search.num_cuda_devices}.get(gpu_backend(), lambda: 0)()


def resolve_gpus(spec: IndexSpec, k: int) -> str:
    """The placement to use, `none`, `one` or `all`; `auto` falls back to CPU where a GPU cannot serve."""
    cpu_only = _cpu_only_reason(spec, k)
    if spec.gpus == "none":
        return "none"
    if spec.gpus == "auto":
        if cpu_only:
            if num_gpus():
                log.info("searching on CPU: %s", cpu_only)
            return "none"
        return "all" if gpu_count() > 1 else "one"
    if cpu_only:
        raise UserError(f"gpus={spec.gpus}: {cpu_only}; use --gpus none (CPU) or auto")
    return spec.gpus


def _cpu_only_reason(spec: IndexSpec, k: int) -> str | None:
    backend = gpu_backend()
    if backend is None:
        has_gpu_faiss = hasattr(faiss, "StandardGpuResources")
        return ("faiss-gpu is installed but sees no GPU" if has_gpu_faiss
                else "the installed faiss is faiss-cpu and torch sees no CUDA GPU (GPU search needs either)")
    if backend == "torch":
        return None if spec.kind == "flat" else (
            f"index {spec.kind} on GPU needs faiss-gpu (without it GPU search is exact flat search in torch)")
    if k > GPU_MAX_K:
        return f"k={k} exceeds GPU faiss's limit of {GPU_MAX_K}"
    if spec.kind in ("ivf", "ivfpq") and spec.nprobe > GPU_MAX_K:
        return f"nprobe={spec.nprobe} exceeds GPU faiss's limit of {GPU_MAX_K}"
    if spec.kind == "hnsw":
        return "faiss has no GPU HNSW index"
    return None


@functools.cache
def _gpu_resources(device: int):
    """One resource object per GPU for the whole process: each reserves scratch memory when created."""
    return faiss.StandardGpuResources()


def to_gpus(index: faiss.Index, placement: str, fp16: bool) -> faiss.Index:
    """A copy of CPU `index` on GPU 0 (`one`) or split across all GPUs (`all`); `none` returns `index`."""
    if placement == "none":
        return index
    try:
        if placement == "one" or num_gpus() == 1:
            options = faiss.GpuClonerOptions()
            options.useFloat16 = fp16
            gpu_index = faiss.index_cpu_to_gpu(_gpu_resources(0), 0, index, options)
        else:
            options = faiss.GpuMultipleClonerOptions()
            options.shard = True  # split the rows across GPUs instead of copying them to each
            options.useFloat16 = fp16
            devices = list(range(num_gpus()))
            gpu_index = faiss.index_cpu_to_gpu_multiple_py([_gpu_resources(d) for d in devices], index,
                                                           options, devices)
    except RuntimeError as e:
        raise UserError(f"faiss could not place the index on GPU ({e}); try --gpus none") from None
    if gpu_index.ntotal != index.ntotal:
        raise RuntimeError(f"GPU index holds {gpu_index.ntotal} of {index.ntotal} vectors")
    return gpu_index


def gpu_block_rows(dim: int, fp16: bool, placement: str) -> int | None:
    """Corpus rows per block that fit in half the free memory of the GPUs used; None (no limit) on CPU.

    Half, because faiss reserves scratch memory per GPU and the query batch and results need room too.
    """
    import torch  # torch, not faiss, reports free GPU memory

    if placement == "none" or not torch.cuda.is_available():
        return None

    devices = [0] if placement == "one" else range(gpu_count())
    free = min(torch.cuda.mem_get_info(d)[0] for d in devices) * len(devices)
    return max(1, free // 2 // (dim * (2 if fp16 else 4)))


# --- building and searching --------------------------------------------------------------------


def build_index(emb: np.ndarray, spec: IndexSpec, seed: int = 0) -> faiss.Index:
    """A CPU inner-product index over `emb` [n, D] float32 (trained if approximate), search parameters set."""
    n, dim = emb.shape
    if spec.kind in ("ivf", "ivfpq") and spec.nlist > n:
        raise UserError(f"--nlist: expected at most the {n} rows of a corpus block, got {spec.nlist}")
    if spec.kind == "ivfpq" and dim % spec.pq_m:
        raise UserError(f"--pq-m: expected a divisor of the embedding dimension {dim}, got {spec.pq_m}")
    description = {"flat": "Flat", "ivf": f"IVF{spec.nlist},Flat", "hnsw": f"HNSW{spec.hnsw_m},Flat",
                   "ivfpq": f"IVF{spec.nlist},PQ{spec.pq_m}x{spec.pq_bits}"}[spec.kind]
    index = faiss.index_factory(dim, description, faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "ivfpq":
        index.do_polysemous_training = False  # on by default, slow, and only serves Hamming filtering we never use
    if not index.is_trained:
        sample = np.random.default_rng(seed).permutation(n)[:spec.train_rows]
        index.train(np.ascontiguousarray(emb[np.sort(sample)], dtype=np.float32))
    index.add(np.ascontiguousarray(emb, dtype=np.float32))
    params = {"ivf": ("nprobe", spec.nprobe), "ivfpq": ("nprobe", spec.nprobe),
              "hnsw": ("efSearch", spec.ef_search)}
    if spec.kind in params:
        faiss.ParameterSpace().set_index_parameter(index, *params[spec.kind])
    return index


def search_index(index: faiss.Index, queries: np.ndarray, k: int,
                 query_batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Queries [Q, D] -> (scores [Q, k] float32, rows [Q, k] int64), best first; rows -1 past the index's end."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    scores = np.empty((len(queries), k), dtype=np.float32)
    rows = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), query_batch):
        stop = start + query_batch
        scores[start:stop], rows[start:stop] = index.search(queries[start:stop], k)
    return scores, rows


def merge_topk(scores_a: np.ndarray, rows_a: np.ndarray, scores_b: np.ndarray, rows_b: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of two result lists [Q, ka] and [Q, kb] over disjoint rows -> [Q, k] each.

    Ordered by score descending, equal scores by row ascending, so the result does not depend on how
    the corpus was split; rows -1 (no result) sort last with score -inf.
    """
    scores = np.concatenate([scores_a, scores_b], axis=1)
    rows = np.concatenate([rows_a, rows_b], axis=1)
    missing = rows < 0
    scores = np.where(missing, -np.inf, scores).astype(np.float32)
    row_key = np.where(missing, np.iinfo(np.int64).max, rows)
    order = np.lexsort((row_key, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(np.where(missing, -1, rows), order, 1)


def iter_float32_blocks(parts: Iterable, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first global row, C-contiguous float32 block [n_b, D]) over the concatenation of `parts`.

    Blocks of at most `block_rows` rows never span parts, so shards on disk (`shards.NpyRows`) are read
    one block at a time. Float32 C-contiguous arrays are yielded as views; anything else (float16
    storage, shards on disk) is read into one buffer, reused for every block: a block is valid until
    the next one is asked for. Fresh memory for each block would cost a page fault per 4 KiB page (for
    a 1M x 384 block, as long as searching it with 32 queries).
    """
    parts = list(parts)
    buffer = None
    offset = 0
    for part in parts:
        for start in range(0, len(part), block_rows):
            stop = min(start + block_rows, len(part))
            block = None if hasattr(part, "read_into") else part[start:stop]
            if block is not None and block.dtype == np.float32 and block.flags.c_contiguous:
                yield offset + start, block
                continue
            if buffer is None:
                rows = max(min(block_rows, len(p)) for p in parts)
                buffer = np.empty((rows, *part.shape[1:]), dtype=np.float32)
            out = buffer[:stop - start]
            if block is None:
                part.read_into(start, out)
            else:
                out[...] = block
            yield offset + start, out
        offset += len(part)


def check_finite_rows(block: np.ndarray, first_row: int, row_names: Callable[[np.ndarray], list[str]] | None) -> None:
    """UserError naming (through `row_names(global rows)`) the rows of `block` that hold NaN or inf."""
    # A row's sum is NaN or inf if any entry is (both propagate); a finite row whose sum overflows is
    # only a suspect, cleared entry by entry. One pass, no [n, D] temporary.
    suspects = np.flatnonzero(~np.isfinite(block.sum(axis=1)))
    bad = suspects[~np.isfinite(block[suspects]).all(axis=1)]
    if len(bad):
        rows = bad[:5] + first_row
        names = row_names(rows) if row_names else [f"row {r}" for r in rows]
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise UserError(f"corpus embeddings: {len(bad)} rows hold NaN or inf ({', '.join(names)}{more}); "
                        "encode the corpus again with --dtype fp32 (or bf16) into a new directory")


def search_flat_cpu(queries: np.ndarray, block: np.ndarray, k: int,
                    query_batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of `block` [n, D] float32 where it lies -> (scores, rows) [Q, k].

    The same computation as IndexFlatIP.search (faiss's `knn_inner_product`, ties and all), without the
    index's copy of the block.
    """
    scores = np.empty((len(queries), k), dtype=np.float32)
    rows = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), query_batch):
        stop = start + query_batch
        scores[start:stop], rows[start:stop] = faiss.knn(queries[start:stop], block, k,
                                                         metric=faiss.METRIC_INNER_PRODUCT)
    return scores, rows


def search(queries: np.ndarray, corpus_parts: Iterable[np.ndarray], k: int, spec: IndexSpec | None = None,
           block_rows: int | None = None, query_batch: int = 4096,
           row_names: Callable[[np.ndarray], list[str]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k corpus rows by inner product for each query -> (scores [Q, k] float32, rows [Q, k] int64).

    `corpus_parts` are consecutive row blocks of the corpus (e.g. `shards.Shard.emb` of each shard, or
    `[matrix]`); rows are numbered over their concatenation, -1 where the corpus has fewer than k rows.
    Each block of at most `block_rows` rows (by default, on GPU as many as fit in memory, on CPU
    `CPU_BLOCK_BYTES` of float32) is read as float32 into one reused buffer (parts may be float16),
    checked for NaN/inf rows (UserError naming them through `row_names(global rows)`), searched on its
    own (exact flat search on CPU: in place, no index; otherwise an index of the block), and the
    results merged exactly. Memory: one float32 block (plus the index's copy, if any) and the results.
    """
    spec = spec or IndexSpec()
    spec.validate(k)
    check_positive("block_rows", block_rows)
    check_positive("query_batch", query_batch)
    placement = resolve_gpus(spec, k)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if block_rows is None:
        block_rows = gpu_block_rows(queries.shape[1], spec.fp16, placement) or \
            max(1, CPU_BLOCK_BYTES // (4 * max(queries.shape[1], 1)))
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), k), -1, dtype=np.int64)
    for first_row, block in iter_float32_blocks(corpus_parts, block_rows):
        check_finite_rows(block, first_row, row_names)
        block_k = min(k, len(block))
        if spec.kind == "flat" and placement == "none":
            scores, rows = search_flat_cpu(queries, block, block_k, query_batch)
        elif gpu_backend() == "torch":
            devices = [f"cuda:{d}" for d in range(1 if placement == "one" else gpu_count())]
            scores, rows = torch_search.search_flat(queries, block, block_k, devices, spec.fp16, query_batch)
        else:
            index = to_gpus(build_index(block, spec), placement, spec.fp16)
            scores, rows = search_index(index, queries, block_k, query_batch)
            del index  # free GPU memory before the next block is placed
        rows = np.where(rows < 0, -1, rows + first_row)
        best_scores, best_rows = merge_topk(best_scores, best_rows, scores, rows, k)
    return best_scores, best_rows
