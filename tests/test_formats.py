"""Every training format, written by the test in its distributed layout (names, headers, compression), is
read into the same internal records as the equivalent documented jsonl; suspicious data is warned about
once; the shared rules (BOM, case of suffixes, compression) hold for every reader."""

import bz2
import gzip
import json
import logging
import lzma

import pytest

from dist_lacl.data.read import read_records
from dist_lacl.errors import DataError
from dist_lacl.formats import ReadOptions, resolve
from dist_lacl.formats.records import text_id


def jsonl(path, records, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return path


def write(path, text, opener=open):
    path.parent.mkdir(parents=True, exist_ok=True)
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return path


def read(path, kind, **options):
    return list(read_records(path, kind, options=ReadOptions(**options)))


# Three English queries; q2 has no negative. Ids are MS MARCO-like integers.
QUERIES = {"1": "what is a dog", "2": "capital of france", "3": "how tall is everest"}
PASSAGES = {"10": ("Dogs", "A dog is a mammal."), "11": ("Cats", "A cat is a mammal."),
            "20": ("Paris", "Paris is the capital of France."), "21": ("Lyon", "Lyon is a French city."),
            "30": ("Everest", "Everest is 8,849 m tall."), "31": ("K2", "K2 is 8,611 m tall."),
            "32": ("Alps", "The Alps are in Europe.")}
POSITIVES = {"1": ["10"], "2": ["20"], "3": ["30"]}
NEGATIVES = {"1": ["11"], "2": [], "3": ["31", "32"]}


def tevatron(titles=True):
    """The expected records, as the documented jsonl (Tevatron legacy) holds them."""
    def p(pid):
        title, body = PASSAGES[pid]
        return {"docid": pid, "title": title if titles else "", "text": body}
    return [{"query_id": q, "query": QUERIES[q], "positive_passages": [p(d) for d in POSITIVES[q]],
             "negative_passages": [p(d) for d in NEGATIVES[q]]} for q in QUERIES]


def expected_ir(tmp_path, records):
    return read(jsonl(tmp_path / "reference.jsonl", records), "ir")


def test_tevatron_legacy_gz_is_the_jsonl(tmp_path):
    path = jsonl(tmp_path / "train.jsonl.gz", tevatron(), gzip.open)
    assert resolve(path, "ir", ReadOptions()) == "tevatron"
    assert read(path, "ir") == expected_ir(tmp_path, tevatron())
    misnamed = jsonl(tmp_path / "train.json", tevatron())  # jsonl named .json is not DPR's array
    assert resolve(misnamed, "ir", ReadOptions()) == "tevatron"


def test_tevatron_v2_queries_and_corpus(tmp_path):
    queries = [{"query_id": q, "query_text": QUERIES[q], "positive_document_ids": POSITIVES[q],
                "negative_document_ids": NEGATIVES[q]} for q in QUERIES]
    corpus = [{"docid": d, "title": t, "text": x} for d, (t, x) in PASSAGES.items()]
    path = jsonl(tmp_path / "train.jsonl", queries)
    jsonl(tmp_path / "corpus.jsonl", corpus)  # found beside the queries
    assert resolve(path, "ir", ReadOptions()) == "tevatron-v2"
    assert read(path, "ir") == expected_ir(tmp_path, tevatron())
    elsewhere = jsonl(tmp_path / "my-corpus.jsonl.bz2", corpus, bz2.open)
    (tmp_path / "corpus.jsonl").unlink()
    assert read(path, "ir", corpus=str(elsewhere)) == expected_ir(tmp_path, tevatron())
    with pytest.raises(DataError, match="set data.train_corpus"):
        read(path, "ir")


def test_flagembedding_ids_made_from_text(tmp_path):
    rows = [{"query": QUERIES[q], "pos": [PASSAGES[d][1] for d in POSITIVES[q]],
             "neg": [PASSAGES[d][1] for d in NEGATIVES[q]], "pos_scores": [1.0] * len(POSITIVES[q]),
             "neg_scores": [0.0] * len(NEGATIVES[q])} for q in QUERIES]
    rows[0]["prompt"] = "Represent this question: "
    path = jsonl(tmp_path / "toy_finetune_data.jsonl", rows)
    reference = tevatron(titles=False)
    reference[0]["query"] = "Represent this question: " + reference[0]["query"]
    for rec in reference:
        rec["query_id"] = text_id(rec["query"])
        for key, teacher in (("positive_passages", 1.0), ("negative_passages", 0.0)):
            for p in rec[key]:  # pos_scores / neg_scores are Tevatron's passage scores
                p["docid"], p["score"] = text_id(p["text"]), teacher
    assert resolve(path, "ir", ReadOptions()) == "flagembedding"
    assert read(path, "ir") == expected_ir(tmp_path, reference)


def write_msmarco(folder, triples=True):
    write(folder / "collection.tsv", "".join(f"{d}\t{x}\n" for d, (_, x) in PASSAGES.items()))
    write(folder / "queries.train.tsv", "".join(f"{q}\t{t}\n" for q, t in QUERIES.items()) + "4\tunjudged query\n")
    write(folder / "qrels.train.tsv", "".join(f"{q}\t0\t{d}\t1\n" for q, ds in POSITIVES.items() for d in ds))
    if triples:  # shipped gzipped; a repeated negative is kept once
        rows = [f"{q}\t{POSITIVES[q][0]}\t{d}\n" for q, ds in NEGATIVES.items() for d in ds] + ["3\t30\t31\n"]
        write(folder / "qidpidtriples.train.full.2.tsv.gz", "".join(rows), gzip.open)
    return folder


def test_msmarco_directory_or_file(tmp_path):
    folder = write_msmarco(tmp_path / "msmarco")
    expected = expected_ir(tmp_path, tevatron(titles=False))
    assert resolve(folder, "ir", ReadOptions()) == "msmarco"
    assert read(folder, "ir") == expected
    assert read(folder / "qrels.train.tsv", "ir") == expected
    assert read(folder / "qidpidtriples.train.full.2.tsv.gz", "ir") == expected
    (folder / "qidpidtriples.train.full.2.tsv.gz").unlink()
    no_negatives = tevatron(titles=False)
    for rec in no_negatives:
        rec["negative_passages"] = []
    assert read(folder, "ir") == expected_ir(tmp_path, no_negatives)


def test_msmarco_missing_file_and_pid(tmp_path):
    folder = write_msmarco(tmp_path / "msmarco", triples=False)
    (folder / "collection.tsv").write_text("10\tA dog is a mammal.\n")
    with pytest.raises(DataError, match="expected ids of collection.tsv, got '20'") as e:
        read(folder, "ir")
    assert e.value.line == 2 and e.value.path == folder / "queries.train.tsv"
    (folder / "collection.tsv").unlink()
    with pytest.raises(DataError, match=r"missing: collection"):
        read(folder, "ir")


def test_dpr_nq_json_array_streamed(tmp_path, monkeypatch):
    def ctx(pid):
        return {"title": PASSAGES[pid][0], "text": PASSAGES[pid][1], "score": 1.0, "title_score": 0,
                "passage_id": pid}
    items = [{"dataset": "nq_train_psgs_w100", "question": QUERIES[q], "answers": ["x"],
              "positive_ctxs": [ctx(d) for d in POSITIVES[q]], "negative_ctxs": [ctx("32")],
              "hard_negative_ctxs": [ctx(d) for d in NEGATIVES[q]]} for q in QUERIES]
    path = tmp_path / "biencoder-nq-train.json"
    path.write_text(json.dumps(items, indent=4), encoding="utf-8")  # DPR's files are indented
    reference = tevatron()
    for rec in reference:
        rec["query_id"] = text_id(rec["query"])
    # a tiny read size and element bound prove the array is decoded piece by piece
    monkeypatch.setattr("dist_lacl.formats.io.READ_SIZE", 64)
    assert resolve(path, "ir", ReadOptions()) == "dpr"
    assert read(path, "ir") == expected_ir(tmp_path, reference)
    path.write_text(json.dumps(items, indent=4)[:-40], encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON array of objects") as e:
        read(path, "ir")
    assert e.value.line is not None and e.value.line > 40


PAIRS = [("File not found", "Datei nicht gefunden"), ("Open the door", "Öffne die Tür"),
         ("Good morning", "Guten Morgen")]


def parallel_reference(tmp_path):
    return read(jsonl(tmp_path / "reference.jsonl", [{"en": e, "text": d, "lang": "de"} for e, d in PAIRS]),
                "parallel")


def test_parallel_tsv_plain_and_wikimatrix_scored(tmp_path):
    plain = write(tmp_path / "pairs.TSV", "".join(f"{e}\t{d}\n" for e, d in PAIRS))
    assert read(plain, "parallel", lang="de") == parallel_reference(tmp_path)
    with pytest.raises(DataError, match="data.parallel_lang"):
        read(plain, "parallel")
    # WikiMatrix: score, then the two languages in the name's order (de before en); a low score dropped
    scored = write(tmp_path / "WikiMatrix.de-en.tsv.gz",
                   "".join(f"1.{i}\t{d}\t{e}\n" for i, (e, d) in enumerate(PAIRS)) + "0.9\tschlecht\tbad\n",
                   gzip.open)
    assert resolve(scored, "parallel", ReadOptions()) == "tsv"
    assert read(scored, "parallel", min_score=1.0) == parallel_reference(tmp_path)
    assert len(read(scored, "parallel")) == 4


def test_parallel_moses_pair_by_either_file_or_prefix(tmp_path):
    en = write(tmp_path / "WikiMatrix.de-en.en.gz", "".join(e + "\n" for e, _ in PAIRS), gzip.open)
    de = write(tmp_path / "WikiMatrix.de-en.de.gz", "".join(d + "\n" for _, d in PAIRS), gzip.open)
    for path in (en, de):
        assert resolve(path, "parallel", ReadOptions()) == "moses"
        assert read(path, "parallel") == parallel_reference(tmp_path)
    plain_en = write(tmp_path / "plain" / "OpenSubtitles.de-en.en", "".join(e + "\n" for e, _ in PAIRS))
    write(tmp_path / "plain" / "OpenSubtitles.de-en.de", "".join(d + "\n" for _, d in PAIRS))
    assert read(plain_en.with_name("OpenSubtitles.de-en"), "parallel") == parallel_reference(tmp_path)


def test_moses_pair_of_unequal_lengths_names_both_files(tmp_path):
    en = write(tmp_path / "X.de-en.en", "a\nb\nc\n")
    de = write(tmp_path / "X.de-en.de", "a\nb\n")
    with pytest.raises(DataError) as e:
        read(de, "parallel")
    assert str(en) in str(e.value) and str(de) in str(e.value)
    assert "got 3 lines here and 2 there" in str(e.value)


def test_monolingual_plain_text_cc100(tmp_path):
    sentences = ["Die Katze schläft.", "Sie ist müde.", "Ein neues Dokument beginnt."]
    path = write(tmp_path / "de.txt.xz", f"{sentences[0]}\n{sentences[1]}\n\n{sentences[2]}\n", lzma.open)
    reference = read(jsonl(tmp_path / "ref.jsonl", [{"text": s, "lang": "de"} for s in sentences]), "monolingual")
    assert resolve(path, "monolingual", ReadOptions()) == "text"
    assert read(path, "monolingual") == reference
    other = write(tmp_path / "corpus.txt", "\n".join(sentences) + "\n")
    assert read(other, "monolingual", lang="de") == reference
    with pytest.raises(DataError, match="data.monolingual_lang"):
        read(other, "monolingual")


def test_undetectable_format_names_the_choices(tmp_path):
    path = jsonl(tmp_path / "train.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match="expected one of tevatron, tevatron-v2, flagembedding, msmarco, dpr"):
        read(path, "ir")
    with pytest.raises(DataError, match="data.train_ir_format"):
        read(path, "ir", format="tevatron3")


def test_utf8_bom_on_line_1_is_accepted_everywhere(tmp_path):
    from dist_lacl.evaluation.inputs import read_queries

    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(tevatron()[0]) + "\n").encode())
    assert read(path, "ir") == expected_ir(tmp_path, tevatron()[:1])
    tsv = tmp_path / "q.tsv"
    tsv.write_bytes(b"\xef\xbb\xbfq1\tone\n")
    assert read_queries(tsv).ids == ["q1"]


def test_suspicious_data_is_counted_and_warned_once(tmp_path, caplog):
    records = tevatron()
    for rec in records:  # the positive again among the negatives
        rec["negative_passages"].append(dict(rec["positive_passages"][0]))
    with caplog.at_level(logging.WARNING):
        got = read(jsonl(tmp_path / "ir.jsonl", records), "ir")
    assert got == expected_ir(tmp_path, tevatron())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{tmp_path / 'ir.jsonl'}: 3 hard negatives with the docid of their query's positive "
                        "(dropped) (first on line 1)"]
    caplog.clear()
    pairs = [{"en": "a b", "text": "c d", "lang": "en"}, {"en": "x y", "text": "x y", "lang": "de"},
             {"en": "p q", "text": "p q", "lang": "de"}]
    with caplog.at_level(logging.WARNING):
        assert len(read(jsonl(tmp_path / "para.jsonl", pairs), "parallel")) == 3
    warnings = sorted(r.getMessage().split(": ", 1)[1] for r in caplog.records if r.levelno == logging.WARNING)
    assert warnings == ["1 parallel pairs whose lang is English (first on line 1)",
                        "2 parallel pairs whose text equals the English (first on line 2)"]


def test_bad_records_skip_keeps_reading_other_formats(tmp_path):
    lines = [f"{e}\t{d}" for e, d in PAIRS]
    path = write(tmp_path / "p.en-de.tsv", lines[0] + "\n" + "only one column\n" + "\n".join(lines[1:]) + "\n")
    skipped = []
    got = list(read_records(path, "parallel", "skip", skipped, ReadOptions()))
    assert [r["en"] for r in got] == [e for e, _ in PAIRS]
    assert [line for line, _ in skipped] == [2]
