"""Evaluation sets in their distributed layouts (MIRACL, Mr.TyDi, BEIR, pyserini, DPR, mMARCO, XOR-TyDi)
read into the same corpus, queries and qrels as the documented jsonl / TREC files."""

import gzip
import json

import pytest

from dist_lacl.errors import DataError
from dist_lacl.evaluation.inputs import read_answers, read_corpus, read_qrels, read_queries

DOCS = [("39#0", "Berlin", "Berlin ist die Hauptstadt."), ("39#1", "Berlin", "Es liegt an der Spree."),
        ("40#0", "", "Hamburg liegt im Norden.")]
QUERIES = [("q1", "Was ist die Hauptstadt?"), ("q2", "Wo liegt Hamburg?")]
QRELS = {"q1": {"39#0": 1, "39#1": 0}, "q2": {"40#0": 1}}


def write(path, text, opener=open):
    path.parent.mkdir(parents=True, exist_ok=True)
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return path


def lines(records):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def reference(tmp_path, lang="und"):
    """What the documented formats give: corpus jsonl, queries jsonl, TREC qrels."""
    corpus = write(tmp_path / "ref" / "corpus.jsonl", lines({"docid": d, "title": t, "text": x} for d, t, x in DOCS))
    queries = write(tmp_path / "ref" / "queries.jsonl", lines({"query_id": q, "query": x} for q, x in QUERIES))
    qrels = write(tmp_path / "ref" / "qrels.txt", "".join(f"{q} 0 {d} {r}\n" for q, ds in QRELS.items()
                                                        for d, r in ds.items()))
    return read_corpus(corpus, lang), read_queries(queries, lang), read_qrels(qrels)


def trec(qrels, sep=" ", q0="Q0"):
    return "".join(f"{q}{sep}{q0}{sep}{d}{sep}{r}\n" for q, ds in qrels.items() for d, r in ds.items())


def test_miracl(tmp_path):
    root = tmp_path / "miracl"
    corpus_dir = root / "miracl-corpus-v1.0-de"
    for i, docs in enumerate((DOCS[:2], DOCS[2:])):
        write(corpus_dir / f"docs-{i}.jsonl.gz", lines({"docid": d, "title": t, "text": x} for d, t, x in docs),
              gzip.open)
    topics = write(root / "topics.miracl-v1.0-de-dev.tsv", "".join(f"{q}\t{x}\n" for q, x in QUERIES))
    qrels = write(root / "qrels.miracl-v1.0-de-dev.tsv", trec(QRELS, "\t"))
    corpus, queries, expected_qrels = reference(tmp_path, "de")
    assert read_corpus(corpus_dir) == corpus  # language from the directory name
    assert read_queries(topics) == queries
    assert read_qrels(qrels) == expected_qrels  # rel 0 judgements kept


def test_mrtydi_archive(tmp_path):
    root = tmp_path / "mrtydi-v1.1-japanese"
    write(root / "collection" / "docs.jsonl.gz",
          lines({"id": d, "title": t, "contents": x} for d, t, x in DOCS), gzip.open)
    topics = write(root / "topic.tsv", "".join(f"{q}\t{x}\n" for q, x in QUERIES))
    qrels = write(root / "qrels.test.txt", trec(QRELS, "\t", "0"))
    corpus, queries, expected_qrels = reference(tmp_path, "ja")
    assert read_corpus(root) == corpus
    assert read_queries(topics) == queries
    assert read_qrels(qrels) == expected_qrels


def test_beir(tmp_path):
    root = tmp_path / "scifact"
    write(root / "corpus.jsonl", lines({"_id": d, "title": t, "text": x, "metadata": {}} for d, t, x in DOCS))
    queries = write(root / "queries.jsonl", lines({"_id": q, "text": x, "metadata": {}} for q, x in QUERIES))
    qrels = write(root / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\n" +
                  "".join(f"{q}\t{d}\t{r}\n" for q, ds in QRELS.items() for d, r in ds.items()))
    corpus, expected_queries, expected_qrels = reference(tmp_path)
    assert read_corpus(root / "corpus.jsonl") == corpus == read_corpus(root)
    assert read_queries(queries) == expected_queries
    assert read_qrels(qrels) == expected_qrels


@pytest.mark.parametrize("content, line, fragment", [
    ("q1\t39#0\t1\n", 1, "expected BEIR's header line query-id<TAB>corpus-id<TAB>score"),
    ("query-id\tcorpus-id\tscore\nq1\t39#0\n", 2, "expected 3 tab-separated columns"),
    ("query-id\tcorpus-id\tscore\nq1\t39#0\t1 \n", 2, "relevance"),
    ("query-id\tcorpus-id\tscore\nq1\t39#0\t1.5\n", 2, "expected an integer"),
])
def test_beir_qrels_errors(tmp_path, content, line, fragment):
    path = write(tmp_path / "qrels" / "test.tsv", content)
    with pytest.raises(DataError, match=fragment) as e:
        read_qrels(path)
    assert e.value.line == line and e.value.path == path


def test_pyserini_dpr_and_mmarco_corpora(tmp_path):
    corpus, queries, _ = reference(tmp_path)
    pyserini = write(tmp_path / "pyserini.jsonl", lines({"id": d, "contents": f"{t} {x}".strip()} for d, t, x in DOCS))
    assert read_corpus(pyserini).texts == corpus.texts
    dpr = write(tmp_path / "psgs_w100.tsv", "id\ttext\ttitle\n" + "".join(f"{d}\t{x}\t{t}\n" for d, t, x in DOCS))
    assert read_corpus(dpr) == corpus
    mmarco = tmp_path / "mmarco"
    collection = write(mmarco / "collections" / "portuguese_collection.tsv",
                       "".join(f"{d}\t{x}\n" for d, _, x in DOCS))
    q = write(mmarco / "queries" / "dev" / "portuguese_queries.dev.tsv", "".join(f"{i}\t{x}\n" for i, x in QUERIES))
    got = read_corpus(collection)
    assert got.texts == [x for _, _, x in DOCS] and set(got.langs) == {"pt"}
    assert read_queries(q).langs == ["pt", "pt"]


def test_queries_tsv_header_and_suffix_case(tmp_path):
    _, queries, _ = reference(tmp_path)
    for header in ("query_id\tquery\n", "qid\tquery\n", ""):
        path = write(tmp_path / "queries.TSV", header + "".join(f"{q}\t{x}\n" for q, x in QUERIES))
        assert read_queries(path) == queries


def test_xor_tydi_questions_and_answers(tmp_path):
    rows = [{"id": "-801", "question": "東京はどこ？", "answers": ["Japan"], "lang": "ja"},
            {"id": "-802", "question": "Onko?", "answers": ["yes"], "lang": "fi"}]
    path = write(tmp_path / "xor_dev_retrieve_eng_span.jsonl", lines(rows))
    queries = read_queries(path)
    assert (queries.ids, queries.langs) == (["-801", "-802"], ["ja", "fi"])
    assert read_answers(path) == {"-801": ["Japan"], "-802": ["yes"]}
    rows[1]["answers"] = []
    write(path, lines(rows))
    for reader in (read_queries, read_answers):
        with pytest.raises(DataError, match="'answers': expected a non-empty list of answer strings") as e:
            reader(path)
        assert e.value.line == 2
