"""Shared helpers of the readers: opening (transparent .gz/.bz2/.xz), numbered lines, JSON and TSV rows.

One rule for every reader, training and evaluation alike: files are UTF-8; a UTF-8 byte-order mark on
line 1 is accepted and stripped; suffixes are matched case-insensitively (`.TSV`, `.JSONL.GZ`); blank
lines are skipped (except where a format gives them a meaning, see `lines(keep_blank=True)`).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import DataError
from . import tables

COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def suffixes(path: str | Path) -> list[str]:
    """Lower-case suffixes without the compression one: `A.de-en.DE.gz` -> ['.de-en', '.de']."""
    parts = [s.lower() for s in Path(path).suffixes]
    return parts[:-1] if parts and parts[-1] in COMPRESSIONS else parts


def stem(path: str | Path) -> str:
    """The file name without its compression suffix, lower-cased: `Docs-0.JSONL.gz` -> 'docs-0.jsonl'."""
    name = Path(path).name
    for ext in COMPRESSIONS:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    return name.lower()


def is_ext(path: str | Path, *exts: str) -> bool:
    """Whether the name (compression suffix aside) ends with one of `exts`, case-insensitively."""
    return stem(path).endswith(tuple(exts))


def find(directory: Path, *names: str) -> Path | None:
    """The first file of `directory` named one of `names` (case-insensitive, optionally compressed)."""
    if not directory.is_dir():
        return None
    wanted = {n.lower() for n in names}
    for p in sorted(directory.iterdir()):
        if p.is_file() and stem(p) in wanted and (p.suffix.lower() in COMPRESSIONS or stem(p) == p.name.lower()):
            return p
    return None


def open_binary(path: str | Path):
    """The file's bytes, decompressed by suffix; DataError if it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found" if not path.is_dir() else "expected a file, got a directory")
    opener = COMPRESSIONS.get(path.suffix.lower(), open)
    return opener(path, "rb")


def lines(path: str | Path, keep_blank: bool = False) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its line end); a BOM on line 1 stripped; DataError if not UTF-8.

    Blank lines are skipped unless `keep_blank` (plain-text formats where they separate documents).
    """
    with open_binary(path) as f:
        try:
            for line_no, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(path, line_no, None, f"not valid UTF-8 (byte {raw[e.start]:#04x} "
                                    f"at column {e.start + 1}); expected UTF-8 text") from None
                if line_no == 1:
                    text = text.removeprefix("\ufeff")
                text = text.rstrip("\r\n")
                if keep_blank or text.strip():
                    yield line_no, text
        except (OSError, EOFError, lzma.LZMAError) as e:  # a truncated or corrupt archive
            raise DataError(path, None, None, f"cannot decompress ({e})") from None


def records(path: str | Path) -> Iterator[tuple[int, str | dict]]:
    """(line, the text of a jsonl line) of a jsonl file, or (row, the row as a dict) of a table input
    (parquet, `save_to_disk`: `tables`); `json_object` makes either one object."""
    return tables.rows(path) if tables.is_table(path) else lines(path)


def json_object(text: str | dict, path, line_no: int) -> dict:
    """One JSON object of a jsonl line (a table's row is one already); DataError otherwise."""
    if isinstance(text, dict):
        return text
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, line_no, None, f"not valid JSON ({e.msg}, column {e.colno}); "
                        "expected a JSON object") from None
    if not isinstance(record, dict):
        raise DataError(path, line_no, None, f"expected a JSON object, got {type(record).__name__}")
    return record


def first_record(path: str | Path) -> dict | None:
    """The first line of a jsonl file (or row of a table) as an object (None if it is not one): what
    detection looks at."""
    for line_no, text in records(path):
        try:
            return json_object(text, path, line_no)
        except DataError:
            return None
    return None


def tsv(text: str, path, line_no: int, columns: tuple[int, ...], layout: str) -> list[str]:
    """The tab-separated columns of a line; DataError unless there are as many as one of `columns`."""
    cols = text.split("\t")
    if len(cols) not in columns:
        want = " or ".join(map(str, columns))
        raise DataError(path, line_no, None, f"expected {want} tab-separated columns ({layout}), got {len(cols)}")
    return cols


_HEADER_WORDS = re.compile(r"^(q(uery)?[-_ ]?id|id|pid|docid|doc[-_ ]?id|query|question|text|title|passage|"
                           r"lang|corpus[-_ ]id|score|label|relevance)$", re.IGNORECASE)


def is_header(cols: list[str]) -> bool:
    """A header row names its columns (`qid\\tquery`, `id\\ttext\\ttitle`, `query-id\\tcorpus-id\\tscore`)."""
    return all(_HEADER_WORDS.match(c.strip()) for c in cols)


READ_SIZE = 1 << 20
MAX_ELEMENT = 64 << 20
"""Characters one array element may take: a bound on the memory a malformed element can cost."""


def json_array(path: str | Path) -> Iterator[tuple[int, object]]:
    """(line where it starts, element) of a file holding one JSON array, streamed: memory is one element.

    A DPR training file is several GB; it is decoded element by element from 1 MiB reads.
    """
    decoder, buf, pos, line_no, eof = json.JSONDecoder(), "", 0, 1, False
    with open_binary(path) as raw:
        import codecs

        reader = codecs.getincrementaldecoder("utf-8")()

        def more() -> bool:
            nonlocal buf, pos, eof
            chunk = raw.read(READ_SIZE)
            eof = not chunk
            try:
                text = reader.decode(chunk, final=eof)
            except UnicodeDecodeError:
                raise DataError(path, line_no, None, "expected UTF-8 text") from None
            buf = buf[pos:] + text
            pos = 0
            return not eof

        def skip_space() -> None:
            nonlocal pos, line_no
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                    line_no += buf[pos] == "\n"
                    pos += 1
                if pos < len(buf) or not more():
                    return

        skip_space()
        if buf[pos:pos + 1] != "[":
            raise DataError(path, line_no, None, "expected one JSON array of objects ('[' first)")
        pos += 1
        skip_space()
        if buf[pos:pos + 1] == "]":
            return
        while True:
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as e:
                    # An element cut by the read boundary decodes once more text is in; at the end of
                    # the file the error is real.
                    if eof or len(buf) - pos > MAX_ELEMENT or not more():
                        where = line_no + buf.count("\n", pos, e.pos)
                        raise DataError(path, where, None, "expected a JSON array of objects, got invalid JSON "
                                        f"({e.msg}) or an element over {MAX_ELEMENT >> 20} MiB") from None
            start_line = line_no
            line_no += buf.count("\n", pos, end)
            pos = end
            yield start_line, value
            skip_space()
            sep = buf[pos:pos + 1]
            pos += 1
            if sep == "]":
                return
            if sep != ",":
                raise DataError(path, line_no, None, "expected ',' or ']' between the array's objects")
            skip_space()


def parsed(rows: Iterator[tuple[int, object]], parse: Callable, on_error: Callable | None) -> Iterator[tuple[int, dict]]:
    """(line, parse(row, line)) for each row; a record's DataError goes to `on_error` (skip) or is raised.

    Errors of the file itself (missing, not decompressible, unequal pair lengths) come from `rows` and
    are always raised.
    """
    for line_no, row in rows:
        try:
            record = parse(row, line_no)
        except DataError as e:
            if on_error is None:
                raise
            on_error(e)
            continue
        if record is not None:
            yield line_no, record
