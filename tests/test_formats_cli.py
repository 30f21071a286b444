"""The distributed layouts through the real CLI: a training run on MS MARCO + OPUS Moses + CC-100 text,
`evaluate` on a BEIR folder and on XOR-TyDi answers, and bad input as one line with exit status 2."""

import gzip
import json
import lzma
import sys

import pytest
from helpers_cli import assert_clean_failure
from helpers_data import ir_records
from helpers_launch import run
from helpers_tiny import TEXTS
from helpers_train import train_args


def write(path, text, opener=open):
    path.parent.mkdir(parents=True, exist_ok=True)
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return path


def msmarco_folder(folder, n=16):
    """ir_records(n) in MS MARCO's layout (integer ids, no titles); triples gzipped as shipped."""
    records = ir_records(n)
    pid = {p["docid"]: str(i) for i, p in enumerate(p for r in records
                                                    for p in r["positive_passages"] + r["negative_passages"])}
    write(folder / "collection.tsv", "".join(f"{pid[p['docid']]}\t{p['text']}\n" for r in records
                                             for p in r["positive_passages"] + r["negative_passages"]))
    write(folder / "queries.train.tsv", "".join(f"{i}\t{r['query']}\n" for i, r in enumerate(records)))
    write(folder / "qrels.train.tsv", "".join(f"{i}\t0\t{pid[r['positive_passages'][0]['docid']]}\t1\n"
                                              for i, r in enumerate(records)))
    write(folder / "qidpidtriples.train.full.2.tsv.gz",
          "".join(f"{i}\t{pid[r['positive_passages'][0]['docid']]}\t{pid[n['docid']]}\n"
                  for i, r in enumerate(records) for n in r["negative_passages"]), gzip.open)
    return folder


def moses_pair(folder, n=16, english_lines=None):
    en = [f"{TEXTS[i % 6]} {i}" for i in range(n)]
    de = [f"{TEXTS[6 + i % 5]} {i}" for i in range(n)]
    write(folder / "WikiMatrix.de-en.en.gz", "".join(x + "\n" for x in en[:english_lines]), gzip.open)
    return write(folder / "WikiMatrix.de-en.de.gz", "".join(x + "\n" for x in de), gzip.open)


def cc100(folder, n=16):
    return write(folder / "de.txt.xz", "".join(f"{TEXTS[6 + i % 5]} {i}\n" + ("\n" if i % 4 == 3 else "")
                                               for i in range(n)), lzma.open)


def test_training_runs_on_msmarco_moses_and_plain_text(tmp_path, tiny_model_dir):
    data = {"train_ir": msmarco_folder(tmp_path / "msmarco"), "parallel": moses_pair(tmp_path / "opus"),
            "monolingual": cc100(tmp_path / "cc100")}
    out = tmp_path / "run"
    proc = run([sys.executable, *train_args(tiny_model_dir, data, out, "train.max_steps=2", "train.backend=ddp")],
               timeout=300)
    for kind, fmt in (("ir", "msmarco"), ("parallel", "moses"), ("monolingual", "text")):
        assert f"{kind} data in the {fmt} format" in proc.stderr
    assert (out / "checkpoints" / "step-0000002" / "MANIFEST.json").is_file()


def beir_folder(folder):
    docs = [(f"d{i}", f"title {i}", t) for i, t in enumerate(TEXTS[:8])]
    write(folder / "corpus.jsonl", "".join(json.dumps({"_id": d, "title": t, "text": x}) + "\n" for d, t, x in docs))
    write(folder / "queries.jsonl", "".join(json.dumps({"_id": f"q{i}", "text": TEXTS[i]}) + "\n" for i in range(4)))
    write(folder / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(4)))
    return folder


def cli(*argv, expect_rc=0):
    return run([sys.executable, "-m", "dist_lacl.cli", *map(str, argv)], expect_rc=expect_rc, timeout=300)


@pytest.fixture(scope="module")
def beir_run(tmp_path_factory, tiny_model_dir):
    """A BEIR folder, its embeddings (encoded in process: the commands' own code) and a run."""
    from helpers_eval import run_command

    tmp = tmp_path_factory.mktemp("beir")
    folder = beir_folder(tmp / "scifact")
    for kind, source in (("queries", folder / "queries.jsonl"), ("corpus", folder)):
        run_command("encode", "--model", tiny_model_dir, "--input", source, "--kind", kind,
                    "--output", tmp / f"emb-{kind}", "--batch-size", 4)
    return tmp, folder


def test_evaluate_a_beir_folder_end_to_end(beir_run):
    tmp, folder = beir_run
    proc = cli("evaluate", "--qrels", folder / "qrels" / "test.tsv", "--queries", folder / "queries.jsonl",
               "--query-emb", tmp / "emb-queries", "--corpus-emb", tmp / "emb-corpus", "--metrics", "recall@8",
               "--report", tmp / "report.json", "--output-run", tmp / "run.trec")
    assert "reading the qrels as beir" in proc.stderr and "reading the queries as beir" in proc.stderr
    report = json.loads((tmp / "report.json").read_text())
    assert report["metrics"]["all"] == {"num_queries": 4, "recall@8": 1.0}  # 8 docs: every positive found
    assert "recall@8" in proc.stdout.splitlines()[0]


def test_evaluate_xor_answers_against_dpr_passages(beir_run, tmp_path):
    tmp, _ = beir_run
    run_file = write(tmp_path / "run.trec", "x1 Q0 1 1 2.0 t\nx1 Q0 2 2 1.0 t\nx2 Q0 2 1 1.0 t\n")
    passages = write(tmp_path / "psgs_w100.tsv", "id\ttext\ttitle\n1\tParis is the capital\tParis\n"
                                                 "2\tTokyo is large\tTokyo\n")
    questions = write(tmp_path / "xor_dev_retrieve_eng_span.jsonl", "".join(json.dumps(r) + "\n" for r in [
        {"id": "x1", "question": "首都は？", "answers": ["Tokyo"], "lang": "ja"},
        {"id": "x2", "question": "Mikä?", "answers": ["Paris"], "lang": "fi"}]))
    proc = cli("evaluate", "--run", run_file, "--answers", questions, "--passages", passages,
               "--report", tmp_path / "report.json")
    table = json.loads((tmp_path / "report.json").read_text())["answer_metrics"]
    # x1: Tokyo in the 2nd passage (within 2,000 tokens; not in the top 1); x2: Paris never retrieved
    assert table["ja"] == {"num_queries": 1, "r@2kt": 1.0, "r@5kt": 1.0, "acc@20": 1.0, "acc@100": 1.0}
    assert table["fi"]["r@2kt"] == 0.0 and table["macro"]["r@5kt"] == 0.5
    assert [row.split()[0] for row in proc.stdout.splitlines() if row and not row.startswith("-")] == [
        "lang", "fi", "ja", "macro", "all"]


def test_bad_layouts_are_one_line_and_exit_2(tmp_path, tiny_model_dir, beir_run):
    tmp, folder = beir_run
    # two Moses files of different lengths (training)
    data = {"train_ir": msmarco_folder(tmp_path / "msmarco"), "parallel": moses_pair(tmp_path / "opus", english_lines=15),
            "monolingual": cc100(tmp_path / "cc100")}
    out = tmp_path / "run"
    proc = run([sys.executable, *train_args(tiny_model_dir, data, out, "train.max_steps=2", "train.backend=ddp")],
               expect_rc=None, timeout=300)
    assert_clean_failure(proc, "WikiMatrix.de-en.en.gz: expected as many lines as")
    assert "got 15 lines here and 16 there" in proc.stderr
    assert not (out / "checkpoints").exists() and not (out / "config.yaml").exists()
    # a format that cannot be detected
    unknown = write(tmp_path / "train.jsonl", json.dumps({"question": "q", "answer": "a"}) + "\n")
    data["train_ir"], data["parallel"] = unknown, moses_pair(tmp_path / "opus2")
    proc = run([sys.executable, *train_args(tiny_model_dir, data, out, "train.max_steps=2", "train.backend=ddp")],
               expect_rc=None, timeout=300)
    assert_clean_failure(proc, "train.jsonl: cannot tell the ir format from the name or first record: expected one of")
    # BEIR qrels without the header, and an XOR question without answers: nothing written
    bad_qrels = write(tmp_path / "qrels" / "test.tsv", "q0\td0\t1\n")
    report, out_run = tmp_path / "report.json", tmp_path / "out.trec"
    proc = cli("evaluate", "--qrels", bad_qrels, "--query-emb", tmp / "emb-queries", "--corpus-emb",
               tmp / "emb-corpus", "--report", report, "--output-run", out_run, expect_rc=None)
    assert_clean_failure(proc, "test.tsv, line 1: expected BEIR's header line query-id<TAB>corpus-id<TAB>score")
    questions = write(tmp_path / "xor.jsonl", json.dumps({"id": "x1", "question": "q", "answers": ["a"], "lang": "ja"})
                      + "\n" + json.dumps({"id": "x2", "question": "q", "lang": "fi"}) + "\n")
    proc = cli("evaluate", "--run", write(tmp_path / "r.trec", "x1 Q0 1 1 1.0 t\n"), "--answers", questions,
               "--passages", folder / "corpus.jsonl", "--report", report, expect_rc=None)
    assert_clean_failure(proc, "xor.jsonl, line 2: field 'answers': expected a non-empty list of answer strings")
    assert not report.exists() and not out_run.exists()
    assert not list(tmp_path.glob(".*tmp*"))
