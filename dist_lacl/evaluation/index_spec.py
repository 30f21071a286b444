"""What to index and search with: the index kinds, GPU placements and their settings, checked without
importing faiss (so the command line stays light)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

INDEX_KINDS = ("flat", "ivf", "hnsw", "ivfpq")
GPU_MODES = ("auto", "none", "one", "all")


@dataclass
class IndexSpec:
    """How to index and search the corpus; the defaults give exact search wherever it runs."""

    kind: str = "flat"
    """flat: exact (IndexFlatIP); ivf: IVF-Flat; hnsw: HNSW-Flat (CPU only); ivfpq: IVF with product quantisation."""
    gpus: str = "auto"
    """auto: all GPUs if faiss sees any, else CPU; none: CPU; one: GPU 0; all: every GPU, the index sharded."""
    fp16: bool = False
    """Store GPU flat/IVF vectors in float16: half the memory, scores rounded (no longer exact)."""
    nlist: int = 1024
    """ivf/ivfpq: number of inverted lists (k-means centroids), at most the number of corpus rows."""
    nprobe: int = 32
    """ivf/ivfpq: lists visited per query (more: slower, closer to exact)."""
    hnsw_m: int = 32
    """hnsw: neighbours per graph node."""
    ef_search: int = 128
    """hnsw: candidate list size during search (more: slower, closer to exact)."""
    pq_m: int = 64
    """ivfpq: sub-quantizers per vector (must divide the dimension); bytes per code with 8 bits."""
    pq_bits: int = 8
    """ivfpq: bits per sub-quantizer code."""
    train_rows: int = 262_144
    """ivf/ivfpq: rows sampled (with a fixed seed) to train the quantizers."""

    def validate(self, k: int) -> None:
        """Raise UserError naming the first bad setting."""
        if self.kind not in INDEX_KINDS:
            raise UserError(f"index: expected one of {', '.join(INDEX_KINDS)}, got {self.kind!r}")
        if self.gpus not in GPU_MODES:
            raise UserError(f"gpus: expected one of {', '.join(GPU_MODES)}, got {self.gpus!r}")
        for name, value in [("k", k), *((n, getattr(self, n)) for n in POSITIVE_SETTINGS)]:
            check_positive(name, value)


POSITIVE_SETTINGS = ("nlist", "nprobe", "hnsw_m", "ef_search", "pq_m", "pq_bits", "train_rows")


def check_positive(name: str, value: int | None, maximum: int | None = None) -> None:
    """UserError `--name: expected an integer in [1, maximum], got value` (None passes: unset)."""
    if value is None:
        return
    if value < 1 or (maximum is not None and value > maximum):
        bound = f"an integer from 1 to {maximum}" if maximum is not None else "a positive integer"
        raise UserError(f"--{name.replace('_', '-')}: expected {bound}, got {value}")
