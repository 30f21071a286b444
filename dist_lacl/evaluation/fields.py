"""Line- and field-level reading shared by the evaluation readers (`inputs`): non-blank numbered lines,
JSON objects, and the checked fields of a record, each failure a DataError naming file, line and field."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError
from ..formats import io
from ..formats.languages import is_language_code, normal_lang


def nonblank_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of the non-blank lines; raises on a missing, non-UTF-8 or empty file."""
    return _not_empty(io.lines(path), path)


def _not_empty(rows: Iterator, path) -> Iterator:
    """`rows`, or a DataError at their end if there were none."""
    found = False
    for row in rows:
        found = True
        yield row
    if not found:
        raise DataError(path, None, None, "expected at least one record, the file is empty")


def json_records(path) -> Iterator[tuple[int, dict]]:
    """(line, object) of every non-blank line, each a JSON object; or (row, object) of a parquet file or
    `save_to_disk` folder (`formats.tables`)."""
    for line_no, text in _not_empty(io.records(path), path):
        yield line_no, io.json_object(text, path, line_no)


def split_lines(path, num_fields: int, layout: str) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) of every non-blank line, each exactly `num_fields` whitespace-separated fields."""
    for line_no, text in nonblank_lines(path):
        fields = text.split()
        if len(fields) != num_fields:
            raise DataError(path, line_no, None, f"expected {num_fields} whitespace-separated fields "
                            f"({layout}), got {len(fields)}")
        yield line_no, fields


# --- fields ------------------------------------------------------------------------------------


def id_field(record: dict, name: str, path, line_no: int) -> str:
    """An id: a string or integer (read as a string), non-empty, without whitespace (TREC files split on it)."""
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        got = "nothing (missing)" if name not in record else repr(value)
        raise DataError(path, line_no, name, f"expected a string or integer id, got {got}")
    value = str(value)
    if not value or any(c.isspace() for c in value):
        raise DataError(path, line_no, name, f"expected a non-empty id without whitespace, got {value!r}")
    return value


def text_field(record: dict, name: str, path, line_no: int) -> str:
    """A required text: a string that is not only whitespace."""
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        got = "nothing (missing)" if name not in record else repr(value)
        raise DataError(path, line_no, name, f"expected a non-empty string, got {got}")
    return value


def optional_str(record: dict, name: str, path, line_no: int) -> str | None:
    """A string, or None when the field is absent or null."""
    value = record.get(name)
    if value is not None and not isinstance(value, str):
        raise DataError(path, line_no, name, f"expected a string or no field, got {value!r}")
    return value


def lang_field(record: dict, path, line_no: int) -> str | None:
    """The optional `lang`: a code without whitespace (`language_label`), or None."""
    lang = optional_str(record, "lang", path, line_no)
    if lang is not None and (not lang or any(c.isspace() for c in lang)):
        raise DataError(path, line_no, "lang", f"expected a language code such as 'de', got {lang!r}")
    return None if lang is None else language_label(lang)


def language_label(lang: str) -> str:
    """A language code in the training readers' stored form (`deu` -> 'de'); other labels as given."""
    return normal_lang(lang) if is_language_code(lang) else lang


def parse_number(text: str, kind: type, path, line_no: int, name: str):
    """`text` as a finite `kind` (int: digits only, an optional minus)."""
    try:
        # int() would also take " 1", "+1" and "1_0": a label is digits only
        value = kind(text) if kind is not int or re.fullmatch(r"-?[0-9]+", text) else None
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        what = "an integer" if kind is int else "a finite number"
        raise DataError(path, line_no, name, f"expected {what}, got {text!r}")
    return value


def unique(value: str, seen: set, name: str, path, line_no: int) -> str:
    """Duplicate ids would make runs and qrels ambiguous."""
    if value in seen:
        raise DataError(path, line_no, name, f"expected unique ids, got {value!r} again")
    seen.add(value)
    return value
