"""Readers of corpus, queries, qrels and runs: the valid formats, and a DataError naming file, line and field
for every kind of bad input."""

import json

import pytest

from dist_lacl.errors import DataError
from dist_lacl.evaluation.inputs import read_corpus, read_qrels, read_queries, read_run


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def jsonl(*records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def test_read_corpus(tmp_path):
    path = write(tmp_path / "corpus.jsonl", jsonl(
        {"docid": "d1", "title": "Berlin", "text": "Hauptstadt.", "lang": "de"},
        {"docid": 7, "title": "", "text": "No title."}) + "\n")  # int id, empty title, trailing blank line
    corpus = read_corpus(path, default_lang="en")
    assert corpus.ids == ["d1", "7"]
    assert corpus.texts == ["Berlin Hauptstadt.", "No title."]
    assert corpus.langs == ["de", "en"]


def test_read_queries_jsonl_and_tsv(tmp_path):
    expected = (["q1", "q2"], ["Wo ist Berlin?", "東京はどこ？"], ["de", "und"])
    as_jsonl = write(tmp_path / "q.jsonl", jsonl({"query_id": "q1", "query": "Wo ist Berlin?", "lang": "de"},
                                                {"query_id": "q2", "query": "東京はどこ？"}))
    as_tsv = write(tmp_path / "q.tsv", "q1\tWo ist Berlin?\tde\nq2\t東京はどこ？\n")
    for path in (as_jsonl, as_tsv):
        queries = read_queries(path)
        assert (queries.ids, queries.texts, queries.langs) == expected


def test_read_qrels_and_run(tmp_path):
    qrels = write(tmp_path / "qrels", "q1 0 d1 1\nq1 Q0 d2 0\n\nq2 0 d1 2\n")
    assert read_qrels(qrels, ["q1", "q2"], ["d1", "d2"]) == {"q1": {"d1": 1, "d2": 0}, "q2": {"d1": 2}}
    run = write(tmp_path / "run", "q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 2 -1.25e-3 tag\n")
    assert read_run(run) == {"q1": {"d1": 0.5, "d2": -0.00125}}


CORPUS_ERRORS = [
    # (file content, line, field, message fragment)
    ('{"docid": "d1", "text": "x"\n', 1, None, "not valid JSON"),
    ('["d1", "x"]\n', 1, None, "JSON object, got list"),
    ('{"docid": "d1", "text": "x"}\n{"text": "y"}\n', 2, "docid", "missing"),
    ('{"docid": ["d1"], "text": "x"}\n', 1, "docid", "string or integer"),
    ('{"docid": true, "text": "x"}\n', 1, "docid", "string or integer"),
    ('{"docid": "d 1", "text": "x"}\n', 1, "docid", "without whitespace"),
    ('{"docid": "d1", "text": "   "}\n', 1, "text", "non-empty string"),
    ('{"docid": "d1", "text": 3}\n', 1, "text", "non-empty string"),
    ('{"docid": "d1"}\n', 1, "text", "missing"),
    ('{"docid": "d1", "text": "x", "title": 5}\n', 1, "title", "a string"),
    ('{"docid": "d1", "text": "x", "lang": ""}\n', 1, "lang", "language code"),
    ('{"docid": "d1", "text": "x"}\n\n{"docid": "d1", "text": "y"}\n', 3, "docid", "unique"),
    (b'{"docid": "d1", "text": "x"}\n{"docid": "d2", "text": "caf\xe9"}\n', 2, None, "UTF-8"),
    ("", None, None, "empty"),
    ("\n  \n", None, None, "empty"),
]


@pytest.mark.parametrize("content, line, field, fragment", CORPUS_ERRORS)
def test_corpus_errors(tmp_path, content, line, field, fragment):
    path = write(tmp_path / "corpus.jsonl", content)
    with pytest.raises(DataError, match=fragment) as e:
        read_corpus(path)
    assert (e.value.path, e.value.line, e.value.field) == (path, line, field)
    assert str(path) in str(e.value)


QUERY_ERRORS = [
    ("q.jsonl", '{"query_id": "q1"}\n', 1, "query", "missing"),
    ("q.jsonl", '{"query_id": "q1", "query": "a"}\n{"query_id": "q1", "query": "b"}\n', 2, "query_id", "unique"),
    ("q.jsonl", '{"query": "a"}\n', 1, "query_id", "missing"),
    ("q.tsv", "q1\tone\nq2\n", 2, None, "2 or 3 tab-separated columns"),
    ("q.tsv", "q1\tone\tde\textra\n", 1, None, "2 or 3 tab-separated columns"),
    ("q.tsv", "q1\t \n", 1, "query", "non-empty string"),
    ("q.tsv", "q1\tone\t\n", 1, "lang", "language code"),
]


@pytest.mark.parametrize("name, content, line, field, fragment", QUERY_ERRORS)
def test_query_errors(tmp_path, name, content, line, field, fragment):
    path = write(tmp_path / name, content)
    with pytest.raises(DataError, match=fragment) as e:
        read_queries(path)
    assert (e.value.line, e.value.field) == (line, field)


QRELS_ERRORS = [
    ("q1 0 d1 1\nq1 0 d2\n", 2, None, "4 whitespace-separated fields"),
    ("q1 0 d1 yes\n", 1, "relevance", "an integer"),
    ("q1 0 d1 -1\n", 1, "relevance", ">= 0"),
    ("q1 0 d1 1\nq9 0 d1 1\n", 2, "query_id", "queries file, got 'q9'"),
    ("q1 0 d1 1\n\nq1 0 d404 1\n", 3, "docid", "corpus, got 'd404'"),
    ("q1 0 d1 1\nq1 0 d1 0\n", 2, "docid", "one judgement"),
]


@pytest.mark.parametrize("content, line, field, fragment", QRELS_ERRORS)
def test_qrels_errors(tmp_path, content, line, field, fragment):
    path = write(tmp_path / "qrels.txt", content)
    with pytest.raises(DataError, match=fragment) as e:
        read_qrels(path, query_ids=["q1"], doc_ids=["d1", "d2"])
    assert (e.value.line, e.value.field) == (line, field)


@pytest.mark.parametrize("content, line, field, fragment", [
    ("q1 Q0 d1 1 0.5\n", 1, None, "6 whitespace-separated fields"),
    ("q1 Q0 d1 1 high tag\n", 1, "score", "finite number"),
    ("q1 Q0 d1 1 nan tag\n", 1, "score", "finite number"),
    ("q1 Q0 d1 1 0.5 tag\nq1 Q0 d1 2 0.4 tag\n", 2, "docid", "once per query"),
])
def test_run_errors(tmp_path, content, line, field, fragment):
    path = write(tmp_path / "run.trec", content)
    with pytest.raises(DataError, match=fragment) as e:
        read_run(path)
    assert (e.value.line, e.value.field) == (line, field)


def test_missing_files(tmp_path):
    for reader in (read_corpus, read_queries, read_qrels, read_run):
        with pytest.raises(DataError, match="file not found") as e:
            reader(tmp_path / "nope.jsonl")
        assert e.value.path == tmp_path / "nope.jsonl"
