"""A teacher's scores in training (loss.distill_weight): the check, before training, that every passage
of the IR data has one, and each step's scores of its sampled groups."""

from __future__ import annotations

from pathlib import Path

import datasets
import torch

from .. import formats
from ..errors import DataError
from ..formats import ReadOptions
from ..formats.ir import SCORE_FIELDS


def check_scores(ir: datasets.Dataset, path: str | Path, options: ReadOptions) -> None:
    """Refuse IR data with a passage that has no teacher score, naming the file, line and field of the
    first one. Checked over the Arrow columns (no Python loop); only a failure reads the file again, up
    to that record, for its line (rows are the file's valid records in order)."""
    unscored = [_first_unscored_row(ir.data.column(key)) for key in ("positives", "negatives")]
    first = min((row for row in unscored if row is not None), default=None)
    if first is None:
        return
    need = "a teacher score for every passage with loss.distill_weight > 0"
    fmt = formats.resolve(path, "ir", options)
    fields = SCORE_FIELDS.get(fmt)
    if fields is None:
        raise DataError(path, None, None, f"expected {need}; the {fmt} format "
                        "carries none (Tevatron jsonl passages carry `score`, FlagEmbedding jsonl pos_scores and "
                        "neg_scores)")
    _, rows = formats.read(path, "ir", options, on_error=lambda e: None)  # skipped records have no row
    line, rec = next(row for i, row in enumerate(rows) if i == first)
    for template, passages in zip(fields, (rec["positives"], rec["negatives"])):
        missing = next((i for i, p in enumerate(passages) if "score" not in p), None)
        if missing is not None:
            raise DataError(path, line, template.format(i=missing), f"missing; expected {need}")
    raise AssertionError(f"{path}: record {first} has a passage without a score in the cache, not in the file")


def _first_unscored_row(column) -> int | None:
    """The first row of a list<struct{..., score}> column with a null score, or None. Chunk by chunk,
    reading the score buffers only (the texts stay on disk)."""
    import pyarrow.compute as pc

    rows_before = 0
    for chunk in column.chunks:
        missing = pc.index(pc.is_null(pc.struct_field(pc.list_flatten(chunk), "score")), True).as_py()
        if missing >= 0:
            return rows_before + pc.list_parent_indices(chunk)[missing].as_py()
        rows_before += len(chunk)
    return None


def group_scores(groups: list[list[dict]]) -> torch.Tensor:
    """[queries, group_size] float64: the teacher's score of each sampled passage (`batches.sample_group`)."""
    return torch.tensor([[p["score"] for p in group] for group in groups], dtype=torch.float64)
