"""Parquet files and `datasets` save_to_disk folders, for every stream: detected like the jsonl formats,
read into the same records as their jsonl twin (cache included), a bad row named by file and row, a
DatasetDict folder refused, a changed table never served stale from the cache."""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dist_lacl.data.read import load_dataset, read_records
from dist_lacl.errors import DataError
from dist_lacl.evaluation.inputs import read_corpus, read_queries
from dist_lacl.formats import ReadOptions, resolve

PASSAGES = [{"docid": f"d{i}", "title": f"title {i}" if i % 2 else "", "text": f"passage number {i}"}
            for i in range(6)]
# Records as users write them: optional keys present in some rows only (a table stores them as nulls).
STREAMS = {
    "tevatron": ("ir", [{"query_id": f"q{i}", "query": f"query {i}", "positive_passages": PASSAGES[i:i + 1],
                         "negative_passages": PASSAGES[i + 1:i + 3]} for i in range(2)] + [
                        {"query_id": "q2", "query": "scored", "positive_passages": [dict(PASSAGES[2], score=2.5)],
                         "negative_passages": [dict(PASSAGES[3], score=-1.0)]}]),  # teacher scores too
    "flagembedding": ("ir", [{"query": "what is one", "pos": ["one"], "neg": ["two", "three"]},
                             {"query": "what is two", "pos": ["two"], "neg": ["one"], "prompt": "Find: ",
                              "pos_scores": [0.9], "neg_scores": [0.1]}]),
    "tevatron-v2": ("ir", [{"query_id": f"q{i}", "query_text": f"query {i}", "positive_document_ids": [f"d{i}"],
                            "negative_document_ids": [f"d{i + 1}", f"d{i + 2}"]} for i in range(3)]),
    "parallel": ("parallel", [{"en": "Hello", "text": "Hallo", "lang": "de"},
                              {"en": "File not found", "text": "Fichier introuvable", "lang": "fr"}]),
    "monolingual": ("monolingual", [{"text": "Ein Satz.", "lang": "de"}, {"text": "Une phrase.", "lang": "fr"}]),
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def table(rows) -> pa.Table:
    """A column for every key of any row (from_pylist would take the first row's keys only)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return pa.Table.from_pydict({k: [r.get(k) for r in rows] for k in keys})


def write_parquet(path, rows):
    pq.write_table(table(rows), path)
    return path


def write_disk(path, rows):
    datasets.Dataset(table(rows)).save_to_disk(str(path))
    return path


WRITERS = {"jsonl": write_jsonl, "parquet": write_parquet, "disk": write_disk}


def twins(folder, name, rows) -> dict:
    """{jsonl, parquet, disk}: the same rows written three ways."""
    return {kind: writer(folder / (f"{name}.{kind}" if kind != "disk" else name), rows)
            for kind, writer in WRITERS.items()}


@pytest.mark.parametrize("stream", list(STREAMS))
def test_parquet_and_save_to_disk_give_the_records_of_their_jsonl_twin(stream, tmp_path):
    kind, rows = STREAMS[stream]
    inputs = twins(tmp_path, "data", rows)
    corpora = twins(tmp_path, "corpus", PASSAGES) if stream == "tevatron-v2" else {}
    expected = None
    for how, path in inputs.items():
        # tevatron-v2: the queries and their corpus, each in the same form
        options = ReadOptions(corpus=str(corpora[how])) if corpora else ReadOptions()
        assert resolve(path, kind, options) == (stream if kind == "ir" else "jsonl")
        records = list(read_records(path, kind, options=options))
        cached = load_dataset(path, kind, cache_dir=tmp_path / "cache", options=options, num_proc=1).to_list()
        if expected is None:
            expected = records
            assert len(records) == len(rows)
            if stream in ("tevatron", "flagembedding"):
                assert records[-1]["positives"][0]["score"] in (2.5, 0.9)
        assert records == expected, how
        assert cached == load_dataset(inputs["jsonl"], kind, cache_dir=tmp_path / "cache", options=ReadOptions(
            corpus=str(corpora["jsonl"])) if corpora else None, num_proc=1).to_list(), how


@pytest.mark.parametrize("how", ["parquet", "disk"])
def test_a_bad_row_names_the_file_and_row(how, tmp_path):
    rows = [{"text": "Ein Satz.", "lang": "de"}, {"text": "", "lang": "de"}, {"text": "x", "lang": "fr"}]
    path = WRITERS[how](tmp_path / ("mono.parquet" if how == "parquet" else "mono"), rows)
    with pytest.raises(DataError) as e:
        list(read_records(path, "monolingual"))
    assert str(e.value).startswith(f"{path}, line 2: field 'text'")
    skipped = []
    assert len(list(read_records(path, "monolingual", bad_records="skip", skipped=skipped))) == 2
    assert [line for line, _ in skipped] == [2]


def test_a_dataset_dict_folder_is_refused_with_the_split_to_give(tmp_path):
    rows = STREAMS["monolingual"][1]
    datasets.DatasetDict({"train": datasets.Dataset(table(rows)),
                          "test": datasets.Dataset(table(rows))}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError) as e:
        list(read_records(tmp_path / "dd", "monolingual"))
    assert str(e.value) == (f"{tmp_path / 'dd'}: is a DatasetDict folder (splits: train, test); expected the "
                            f"folder of one split, e.g. {tmp_path / 'dd' / 'train'}")
    assert list(read_records(tmp_path / "dd" / "train", "monolingual")) == list(
        read_records(write_jsonl(tmp_path / "m.jsonl", rows), "monolingual"))


@pytest.mark.parametrize("how", ["parquet", "disk"])
def test_a_changed_table_is_read_again_not_served_from_the_cache(how, tmp_path):
    path = tmp_path / ("p.parquet" if how == "parquet" else "p")
    first = [{"en": "Hello", "text": "Hallo", "lang": "de"}]
    second = [{"en": "Hello", "text": "Servus", "lang": "de"}, {"en": "Yes", "text": "Ja", "lang": "de"}]
    WRITERS[how](path, first)
    assert [r["text"] for r in load_dataset(path, "parallel", cache_dir=tmp_path / "c", num_proc=1)] == ["Hallo"]
    WRITERS[how](path, second)
    assert [r["text"] for r in load_dataset(path, "parallel", cache_dir=tmp_path / "c", num_proc=1)] == [
        "Servus", "Ja"]


@pytest.mark.parametrize("how", ["parquet", "disk"])
def test_evaluation_corpus_and_queries_read_from_tables(how, tmp_path):
    corpus = [dict(p, lang="de") for p in PASSAGES]
    queries = [{"query_id": "q1", "query": "eins", "lang": "de"}, {"query_id": "q2", "query": "zwei"}]
    for name, rows, read in (("corpus", corpus, read_corpus), ("queries", queries, read_queries)):
        table = WRITERS[how](tmp_path / (f"{name}.parquet" if how == "parquet" else name), rows)
        assert read(table) == read(write_jsonl(tmp_path / f"{name}.jsonl", rows)), name
