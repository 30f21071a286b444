"""Table inputs: a parquet file or a folder written by `datasets`' `save_to_disk`, read row by row as the
objects a jsonl reader parses, so the jsonl formats' checks and messages apply to them unchanged.

A row's number (1-based) stands where a jsonl file's line number would (`file, line 7: field ...`). A
null value is an absent field: a table has a column for every key any row has, where jsonl lines just
leave the key out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError

PARQUET = ".parquet"
SAVE_TO_DISK = ("dataset_info.json", "state.json")
"""The files `Dataset.save_to_disk` writes beside its Arrow files: what marks such a folder."""
DATASET_DICT = "dataset_dict.json"
BATCH_ROWS = 1024


def is_table(path: str | Path) -> bool:
    """A parquet file or a `save_to_disk` folder; DataError for a DatasetDict folder (one split is read)."""
    path = Path(path)
    if path.is_file():
        return path.name.lower().endswith(PARQUET)
    if not path.is_dir():
        return False
    if (path / DATASET_DICT).is_file():
        try:
            splits = list(json.loads((path / DATASET_DICT).read_text())["splits"])
        except (ValueError, KeyError, TypeError):
            splits = ["train"]
        raise DataError(path, None, None, f"is a DatasetDict folder (splits: {', '.join(splits)}); expected the "
                        f"folder of one split, e.g. {path / splits[0]}")
    return all((path / name).is_file() for name in SAVE_TO_DISK)


def files(path: str | Path) -> list[Path]:
    """Every file a table input is read from (what a cache key must cover): the parquet file, or the
    folder's files (its Arrow files and the two descriptions)."""
    path = Path(path)
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


def rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(1-based row number, row as a dict without its null values), in the table's order, a batch at a
    time (memory: one batch)."""
    path = Path(path)
    row_no = 0
    for batch in _batches(path):
        for row in batch.to_pylist():
            row_no += 1
            yield row_no, _without_nulls(row)


def _batches(path: Path):
    if path.is_dir():
        import datasets  # only here: a heavy import that the jsonl paths never need

        try:
            dataset = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 (any failure of a foreign reader is the input's fault here)
            raise DataError(path, None, None, f"cannot be read as a datasets save_to_disk folder ({e})") from None
        yield from dataset.with_format("arrow").iter(batch_size=BATCH_ROWS)
        return
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001
        raise DataError(path, None, None, f"cannot be read as parquet ({e})") from None
    yield from reader.iter_batches(batch_size=BATCH_ROWS)


def _without_nulls(value):
    """Nulls dropped from every object, nested ones included (a passage without a title)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value
