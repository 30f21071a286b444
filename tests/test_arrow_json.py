"""The cache build's fast path (Arrow's JSON reader, formats/arrow_json.py) against the Python reader:
the same table, the same warnings and the same errors on every input; the fast path really taken on
ordinary files and refused on the unusual ones."""

import json
import logging
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pytest

from dist_lacl.data import cache_parts
from dist_lacl.data.read import cache_entry, features, read_records
from dist_lacl.errors import DataError
from dist_lacl.formats import arrow_json


def build(path, kind, tmp_path, fast, bad_records="error", num_proc=1):
    """The cache's table (or the DataError's text) and whether every part took the fast path."""
    entry = cache_entry(path, kind, tmp_path / f"cache-{uuid.uuid4().hex}", bad_records)[0]
    assert entry.flat_jsonl  # a plain .jsonl of a flat kind: the fast path applies
    entry.flat_jsonl = fast
    try:
        entry.build(features(kind), read_records, num_proc, uuid.uuid4().hex, stale_s=60)
    except DataError as e:
        return str(e), None
    return entry.load().data.table, entry.manifest()


@pytest.fixture
def slow_parts(monkeypatch):
    """The number of parts the Python reader built."""
    calls = []
    real = cache_parts._build_slow
    monkeypatch.setattr(cache_parts, "_build_slow", lambda *a: (calls.append(1), real(*a))[1])
    return calls


def pair(en="hello world", text="hallo Welt", lang="de", **extra):
    return json.dumps({"en": en, "text": text, "lang": lang, **extra}, ensure_ascii=False)


VALID = [pair(), pair(lang="pt_BR"), pair(lang="zh-cn"), pair("a", "b", "ja", extra={"x": [1, {"y": None}]}),
         pair("\u00e9\U0001f600", " tab\\t inside ", "fr"), json.dumps({"lang": "ru", "text": "п", "en": "p"}),
         pair("  same  ", "same", "it"), pair("same", "same\u3000", "it"), pair("x", "y", "en"),
         '{"en": "a",\t"text": "b", "lang": "de"}', '  {"en": "a", "text": "b", "lang": "de"}  ',
         pair(text="\u00a0x\u2003")]


def test_ordinary_valid_files_take_the_fast_path_and_equal_the_python_reader(tmp_path, slow_parts, caplog):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(VALID * 40) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        slow, _ = build(path, "parallel", tmp_path, fast=False)
    slow_warnings, calls_slow = [r.getMessage() for r in caplog.records], len(slow_parts)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        fast, manifest = build(path, "parallel", tmp_path, fast=True)
    assert calls_slow == 1 and len(slow_parts) == 1  # the fast build did not fall back
    assert fast.equals(slow) and fast.num_rows == 40 * len(VALID) == manifest["num_rows"]
    assert fast.column("lang")[1].as_py() == "pt-br"
    # Suspicious, not wrong: English as the language (line 9), text equal after strip() (lines 7, 8).
    fast_warnings = [r.getMessage() for r in caplog.records]
    assert sorted(fast_warnings) == sorted(slow_warnings)
    assert any("40 parallel pairs whose lang is English (first on line 9)" in w for w in fast_warnings)
    assert any("80 parallel pairs whose text equals the English (first on line 7)" in w for w in fast_warnings)


UNUSUAL = {  # each line the fast path must leave to the Python reader
    "blank line": "",
    "two objects": pair() + " " + pair(),
    "missing field": json.dumps({"en": "a", "text": "b"}),
    "null": json.dumps({"en": "a", "text": None, "lang": "de"}),
    "number": json.dumps({"en": 5, "text": "b", "lang": "de"}),
    "empty after strip": pair(text=" \u3000 "),
    "bad language": pair(lang="xx-toolongcode"),
    "not json": "{en: a}",
    "array": "[1, 2]",
    "lone surrogate": '{"en": "a\\ud800", "text": "b", "lang": "de"}',
    "raw tab in a string": '{"en": "a\tb", "text": "b", "lang": "de"}',
    "duplicate key": '{"en": "a", "text": "b", "lang": "de", "en": "c"}',
}


@pytest.mark.parametrize("case", sorted(UNUSUAL))
@pytest.mark.parametrize("policy", ["error", "skip"])
def test_unusual_lines_fall_back_to_the_python_reader(tmp_path, slow_parts, case, policy):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join([pair()] * 3 + [UNUSUAL[case]] + [pair(lang="fr")] * 2) + "\n", encoding="utf-8")
    slow = build(path, "parallel", tmp_path, fast=False, bad_records=policy)[0]
    fast = build(path, "parallel", tmp_path, fast=True, bad_records=policy)[0]
    assert fast == slow if isinstance(slow, str) else fast.equals(slow)
    assert len(slow_parts) == 2  # the fast build gave up on the part
    if case == "lone surrogate" and policy == "error":  # a clear error, not UnicodeEncodeError from Arrow
        assert "pairs.jsonl, line 4: field 'en': expected Unicode text, got a lone surrogate '\\ud800'" in fast


def test_invalid_utf8_and_a_bom_fall_back(tmp_path, slow_parts):
    for name, raw in (("bad.jsonl", pair().encode() + b"\n" + b'{"en": "\xff", "text": "b", "lang": "de"}\n'),
                      ("bom.jsonl", b"\xef\xbb\xbf" + pair().encode() + b"\n")):
        path = tmp_path / name
        path.write_bytes(raw)
        slow, fast = build(path, "parallel", tmp_path, fast=False)[0], build(path, "parallel", tmp_path, fast=True)[0]
        assert fast == slow if isinstance(slow, str) else fast.equals(slow)
    assert len(slow_parts) == 4
    assert "bad.jsonl, line 2: not valid UTF-8" in build(tmp_path / "bad.jsonl", "parallel", tmp_path, fast=True)[0]


def test_parts_built_in_parallel_give_file_lines_in_warnings_and_errors(tmp_path, monkeypatch, caplog):
    """Several parts in two processes: the fast parts and a fallen-back part make one table in file
    order; a warning and an error name lines of the whole file."""
    monkeypatch.setattr(cache_parts, "MIN_PART_BYTES", 4096)
    monkeypatch.setattr(cache_parts, "MAX_PART_BYTES", 8192)  # several parts even in one process
    lines = [pair(en=f"sentence {i}", text=f"Satz {i}", lang=("de", "fr", "sw")[i % 3]) for i in range(3000)]
    lines[2500] = pair(en="same", text="same", lang="de")
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert len(cache_parts.plan_parts(path, path.stat().st_size, 1)) > 2
    with caplog.at_level(logging.WARNING):
        fast, _ = build(path, "parallel", tmp_path, fast=True, num_proc=1)
    assert fast.equals(build(path, "parallel", tmp_path, fast=False)[0])
    assert any("1 parallel pairs whose text equals the English (first on line 2501)" in r.getMessage()
               for r in caplog.records)
    lines[2700] = pair(text="")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    error = build(path, "parallel", tmp_path, fast=True, num_proc=2)[0]
    assert error == build(path, "parallel", tmp_path, fast=False, num_proc=2)[0]
    assert "line 2701: field 'text': expected a non-empty string" in error


def test_monolingual_records(tmp_path, slow_parts):
    path = tmp_path / "mono.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"Text {i}", "lang": "DE", "id": i}) for i in range(50)) + "\n")
    fast, slow = build(path, "monolingual", tmp_path, fast=True)[0], build(path, "monolingual", tmp_path, fast=False)[0]
    assert fast.equals(slow) and set(fast.column("lang").to_pylist()) == {"de"} and len(slow_parts) == 1


def test_what_the_fast_path_assumes_of_arrow():
    """The two facts the module rests on, checked on the installed pyarrow."""
    python_space = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    trimmed = pc.utf8_trim_whitespace(pa.array([f"{c}a{c}" for c in python_space])).to_pylist()
    assert trimmed == ["a"] * len(python_space)  # Arrow's trim removes all that str.strip() removes
    options = pj.ParseOptions(explicit_schema=pa.schema([("en", pa.string())]), unexpected_field_behavior="ignore")
    for code in range(0x20):
        for line in (b'{"en": "a' + bytes([code]) + b'b"}', b'{"en": "ab",' + bytes([code]) + b'"x": 1}'):
            try:
                python = [json.loads(line.decode())["en"]]
            except json.JSONDecodeError:
                python = None
            try:
                table = pj.read_json(pa.py_buffer(line + b"\n"), parse_options=options)
                arrow = table.column("en").to_pylist() if table.num_rows == 1 else "rows"
            except pa.ArrowInvalid:
                arrow = None
            # Arrow refuses (the Python reader then decides), reads a row count other than one (the fast
            # path gives up), or reads what Python reads.
            assert arrow is None or arrow == "rows" or arrow == python, (code, line, python, arrow)


def test_only_plain_flat_jsonl_takes_the_fast_path(tmp_path):
    assert arrow_json.applies(tmp_path / "p.jsonl", "parallel", "jsonl")
    assert arrow_json.applies(tmp_path / "m.ndjson", "monolingual", "jsonl")
    assert not arrow_json.applies(tmp_path / "p.jsonl.gz", "parallel", "jsonl")  # read through gzip
    assert not arrow_json.applies(tmp_path / "p.tsv", "parallel", "tsv")
    assert not arrow_json.applies(tmp_path / "train.jsonl", "ir", "tevatron")  # nested records
