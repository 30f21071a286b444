"""The cache build's fast path for flat jsonl records (parallel {en, text, lang}, monolingual {text, lang}):
Arrow's C++ JSON reader and column-wise checks instead of a Python loop per record.

Exact by construction: a block of lines is accepted only when every line is certainly a record that
the Python reader (`io.lines` + `records.parse_parallel` / `parse_monolingual`) reads the same way.
Anything unusual makes it give up (`NotFast`): a blank line, a byte-order mark, bytes that are not
UTF-8, a surrogate escape, two objects on a line, a line that does not parse (a raw control character
inside a string included, as in Python), a missing, mistyped or empty field, a bad language code. The
caller then reads the part with the Python reader, which skips the bad records or reports the first
with its file, line and field, as it always did. Ordinary valid files, the large ones, take this path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from .io import COMPRESSIONS
from .languages import is_language_code, normal_lang
from .records import Suspicious

FIELDS = {"parallel": ("en", "text", "lang"), "monolingual": ("text", "lang")}
BLOCK_BYTES = 32 * 2**20
BOM = b"\xef\xbb\xbf"
# \uD800-\uDFFF escapes: a lone one is a str that Python cannot encode; Arrow's reader differs there.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Arrow's reader refuses raw control characters inside strings, as Python's json does, and both take
# them as whitespace between tokens (the tests hold both readers to that). Arrow's utf8_trim_whitespace
# removes every character str.strip() removes (the tests check all of them), perhaps more; so a string
# non-empty after it is non-empty after strip(), and strings that differ after it differ after strip().


class NotFast(Exception):
    """This part needs the Python reader."""


def applies(path: Path, kind: str, fmt: str) -> bool:
    return kind in FIELDS and fmt == "jsonl" and Path(path).suffix.lower() not in COMPRESSIONS


def tables(path: Path, start: int, stop: int, kind: str, suspicious: Suspicious) -> Iterator[pa.Table]:
    """Bytes [start, stop) of `path` (whole lines) as validated tables of the kind's fields, in order;
    suspicious records are noted with their line within the range. Raises NotFast (see the module)."""
    schema = pa.schema([(name, pa.string()) for name in FIELDS[kind]])
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    lines_before = 0
    for block in _blocks(path, start, stop):
        if start == 0 and lines_before == 0 and block.startswith(BOM):
            raise NotFast
        table = _parse(block, options)
        yield _checked(table, kind, suspicious, lines_before)
        lines_before += table.num_rows


def _blocks(path: Path, start: int, stop: int) -> Iterator[bytes]:
    """[start, stop) in blocks of whole lines (the last one may lack its newline)."""
    rest, remaining = b"", stop - start
    with open(path, "rb") as f:
        f.seek(start)
        while remaining > 0:
            data = f.read(min(BLOCK_BYTES, remaining))
            if not data:
                break
            remaining -= len(data)
            data = rest + data
            cut = data.rfind(b"\n") + 1 if remaining > 0 else len(data)
            rest = data[cut:]
            if cut:
                yield data[:cut]
    if rest:
        yield rest


def _parse(block: bytes, options: pj.ParseOptions) -> pa.Table:
    if _SURROGATE_ESCAPE.search(block):
        raise NotFast
    try:
        if not block.isascii():
            block.decode("utf-8")  # Arrow's reader passes invalid UTF-8 through
        table = pj.read_json(pa.py_buffer(block), parse_options=options)
    except (UnicodeDecodeError, pa.ArrowInvalid):
        raise NotFast from None
    if table.num_rows != block.count(b"\n") + (not block.endswith(b"\n")):
        raise NotFast  # a blank line (Arrow skips it), or two objects on one line (Arrow reads both)
    return table


def _checked(table: pa.Table, kind: str, suspicious: Suspicious, lines_before: int) -> pa.Table:
    columns = {name: table.column(name).combine_chunks() for name in table.column_names}
    trimmed = {name: pc.utf8_trim_whitespace(column) for name, column in columns.items() if name != "lang"}
    if any(column.null_count for column in columns.values()) or \
            not all(pc.all(pc.greater(pc.utf8_length(t), 0)).as_py() for t in trimmed.values()):
        raise NotFast  # a missing field, a null, or a string that may be empty after strip()
    columns["lang"] = _languages(columns["lang"])
    if kind == "parallel":
        _note_suspicious_pairs(columns, trimmed, suspicious, lines_before)
    return pa.table(columns)


def _languages(column: pa.Array) -> pa.Array:
    """The codes, normalised as `records.lang` does; NotFast if one is not a language code."""
    codes = pc.unique(column).to_pylist()
    if not all(is_language_code(code) for code in codes):
        raise NotFast
    if all(normal_lang(code) == code for code in codes):
        return column
    encoded = column.dictionary_encode()
    return pc.take(pa.array([normal_lang(code) for code in encoded.dictionary.to_pylist()], pa.string()),
                   encoded.indices)


def _note_suspicious_pairs(columns: dict, trimmed: dict, suspicious: Suspicious, lines_before: int) -> None:
    """`Suspicious.check`'s parallel rules, column-wise: English as the language; text equal to the
    English after strip() (rows equal only after Arrow's trim are compared in Python)."""
    lang, en, text = columns["lang"], columns["en"], columns["text"]
    same = pc.equal(en, text)
    maybe = pc.and_(pc.equal(trimmed["en"], trimmed["text"]), pc.invert(same))
    stripped_same = [row for row in pc.indices_nonzero(maybe).to_pylist()
                     if en[row].as_py().strip() == text[row].as_py().strip()]
    for what, mask, extra in (("parallel pairs whose lang is English",
                               pc.or_(pc.equal(lang, "en"), pc.starts_with(lang, "en-")), []),
                              ("parallel pairs whose text equals the English", same, stripped_same)):
        hits = pc.indices_nonzero(mask)
        rows = ([hits[0].as_py()] if len(hits) else []) + extra
        if rows:
            suspicious.note_many(what, len(hits) + len(extra), lines_before + min(rows) + 1)
