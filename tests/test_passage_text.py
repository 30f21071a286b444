"""One "title + text": training, evaluation's corpus reader, mining's corpus reader and the builders
encode a passage as the same string, awkward titles and whitespace included."""

import json

import pytest

from dist_lacl.builders import python_docs
from dist_lacl.evaluation.inputs import read_corpus
from dist_lacl.formats.records import passage_text
from dist_lacl.mine import CorpusFile

# (title, text, the string every reader must encode), written out by hand.
AWKWARD = [
    ("", "plain text", "plain text"),
    (None, "no title field", "no title field"),
    ("   ", "whitespace-only title", "whitespace-only title"),
    (" \t\n", " text with spaces around ", "text with spaces around"),
    ("  Padded title  ", "  padded text\n", "Padded title padded text"),
    ("Tab\tinside", "line one\nline two", "Tab\tinside line one\nline two"),
    ("New\nline title", "\ttext\tand tabs\t", "New\nline title text\tand tabs"),
    ("Title", "text", "Title text"),
]
EXPECTED = [expected for _, _, expected in AWKWARD]


def test_passage_text_by_hand():
    assert [passage_text(title or "", text) for title, text, _ in AWKWARD] == EXPECTED


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i, (title, text, _) in enumerate(AWKWARD):
            record = {"docid": f"d{i}", "text": text} | ({} if title is None else {"title": title})
            f.write(json.dumps(record) + "\n")
    return path


def test_evaluation_reads_the_corpus_as_passage_text(corpus):
    assert read_corpus(corpus).texts == EXPECTED


def test_mining_reads_the_corpus_as_passage_text(corpus):
    mined = CorpusFile(corpus)
    assert mined.texts(0, len(mined)) == EXPECTED
    assert list(mined.chunk(2, 5).texts[:]) == EXPECTED[2:5]


def test_training_tokenises_passage_text():
    # Training's batches (the data/ package) join a passage's title and text with this one function.
    batches = pytest.importorskip("dist_lacl.data.batches", reason="the data/ package is not on this branch yet")
    assert batches.passage_text is passage_text


def test_builders_search_passages_as_passage_text(tmp_path, monkeypatch):
    # Each page: a first section whose heading is the page title, then one that carries it as its title.
    pages = [[python_docs.Section(f"page{i}", 1, title or "", "introduction"),
              python_docs.Section(f"page{i}", 2, f"Question {i}", text)] for i, (title, text, _) in enumerate(AWKWARD)]
    searched = []

    def mine_negatives(queries, passages, positives, num_negatives):
        searched.extend(passages)
        return [[] for _ in queries]

    monkeypatch.setattr(python_docs, "read_sources", lambda root: pages)
    monkeypatch.setattr(python_docs, "mine_negatives", mine_negatives)
    python_docs.build_python_docs(tmp_path / "ir.jsonl", tmp_path, num_negatives=1, min_chars=1, max_chars=10**6)
    written = [json.loads(line)["positive_passages"][0] for line in (tmp_path / "ir.jsonl").open()]
    assert searched == [passage_text(p["title"], p["text"]) for p in written]
    assert [text for text, p in zip(searched, written) if p["docid"].endswith("#2")] == EXPECTED
