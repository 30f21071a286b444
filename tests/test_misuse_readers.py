"""Misuse by hand, tried again in other spellings: readers (3-letter codes, the Moses prefix, BEIR without
its corpus, .txt topics, file-level errors), evaluate's answers and coverage, two encodes into one
directory, config overrides, one-process DDP with separate towers, and a damaged `latest` pointer. Each
through the real CLI: exit status 2 with one line, or the right result."""

import fcntl
import json
import sys

import datasets
import pytest
from helpers_cli import assert_clean_failure
from helpers_data import ir_records, monolingual_records, write_jsonl
from helpers_launch import run
from helpers_tiny import TEXTS
from helpers_train import train_args

from dist_lacl.formats import ReadOptions, read
from dist_lacl.formats.languages import is_language_code, normal_lang

GERMAN = [f"{TEXTS[6 + i % 5]} {i}" for i in range(16)]
ENGLISH = [f"{TEXTS[i % 6]} {i}" for i in range(16)]


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def cli(*argv, expect_rc=None, timeout=300):
    return run([sys.executable, "-m", "dist_lacl.cli", *map(str, argv)], expect_rc=expect_rc, timeout=timeout)


def train(model_dir, folder, parallel, *extra, expect_rc=None, monolingual=None):
    data = {"train_ir": write_jsonl(folder / "ir.jsonl", ir_records(16)), "parallel": parallel,
            "monolingual": monolingual or write_jsonl(folder / "mono.jsonl", monolingual_records(16))}
    return run([sys.executable, *train_args(model_dir, data, folder / "run", "train.max_steps=1",
                                            "train.backend=ddp", f"data.cache_dir={folder / 'cache'}", *extra)],
               expect_rc=expect_rc, timeout=300)


def cached_parallel(cache_dir):
    """Every parallel row the run's cache holds."""
    rows = []
    for part in sorted(cache_dir.glob("parallel-*/part-*.arrow")):
        rows += datasets.Dataset.from_file(str(part)).to_list()
    return rows


# ------------------------------------------------------------------ language codes (in process: fast)

@pytest.mark.parametrize("code,normal", [("deu", "de"), ("ger", "de"), ("DEU", "de"), ("eng", "en"),
                                         ("zho_Hans", "zh-hans"), ("por-br", "pt-br"), ("srp@latin", "sr@latin"),
                                         ("fil", "fil"), ("cmn", "cmn"), ("de", "de"), ("pt_BR", "pt-br")])
def test_language_codes_have_one_stored_form(code, normal):
    assert is_language_code(code) and normal_lang(code) == normal


def test_three_letter_names_read_like_two_letter_ones(tmp_path):
    tsv = write(tmp_path / "x.deu-eng.tsv", "".join(f"{g}\t{e}\n" for g, e in zip(GERMAN, ENGLISH)))
    two = write(tmp_path / "x.de-en.tsv", tsv.read_text())
    for path, opts in ((tsv, ReadOptions()), (tsv, ReadOptions(lang="de")), (two, ReadOptions())):
        fmt, rows = read(path, "parallel", opts)
        assert fmt == "tsv" and [r for _, r in rows][0] == {"en": ENGLISH[0], "text": GERMAN[0], "lang": "de"}
    write(tmp_path / "t.eng-fra.eng", "Hello\n")
    fmt, rows = read(write(tmp_path / "t.eng-fra.fra", "Bonjour\n"), "parallel", ReadOptions())
    assert fmt == "moses" and list(rows) == [(1, {"en": "Hello", "text": "Bonjour", "lang": "fr"})]


# ------------------------------------------------------------------ training readers through the CLI

@pytest.mark.slow  # a training run through the CLI, as in test_bad_input
def test_three_letter_tsv_trains_with_german_as_de(tmp_path, tiny_model_dir):
    tsv = write(tmp_path / "WikiMatrix.deu-eng.tsv", "".join(f"0.9\t{g}\t{e}\n" for g, e in zip(GERMAN, ENGLISH)))
    train(tiny_model_dir, tmp_path, tsv, expect_rc=0)
    rows = cached_parallel(tmp_path / "cache")
    assert len(rows) == 16 and all(r["lang"] == "de" for r in rows)
    assert rows[0]["en"] == ENGLISH[0] and rows[0]["text"] == GERMAN[0]


@pytest.mark.slow  # a training run through the CLI, as in test_bad_input
def test_three_letter_moses_prefix_trains_with_parallel_lang(tmp_path, tiny_model_dir):
    """LASER's Tatoeba layout named by its prefix, with data.parallel_lang: no AttributeError, no stat()
    of the prefix in the cache; the input files are unchanged."""
    deu = write(tmp_path / "tatoeba" / "tatoeba.deu-eng.deu", "".join(g + "\n" for g in GERMAN))
    eng = write(tmp_path / "tatoeba" / "tatoeba.deu-eng.eng", "".join(e + "\n" for e in ENGLISH))
    before = deu.read_bytes(), eng.read_bytes()
    proc = train(tiny_model_dir, tmp_path, tmp_path / "tatoeba" / "tatoeba.deu-eng", "data.parallel_lang=de",
                 expect_rc=0)
    assert "parallel data in the moses format" in proc.stderr
    rows = cached_parallel(tmp_path / "cache")
    assert {r["lang"] for r in rows} == {"de"} and rows[0]["en"] == ENGLISH[0] and rows[0]["text"] == GERMAN[0]
    assert (deu.read_bytes(), eng.read_bytes()) == before


@pytest.mark.slow  # a training run through the CLI, as in test_bad_input
@pytest.mark.parametrize("case,make,message", [
    ("pair-without-english", lambda d: (write(d / "x.deu-fra.tsv", "a\tb\n"), None),
     "x.deu-fra.tsv: expected English and another language in the name's pair (X.de-en.tsv), got deu-fra"),
    ("moses-partner-missing", lambda d: (write(d / "t.deu-eng.deu", "a\n"), None),
     "t.deu-eng.eng: file not found: the Moses pair of t.deu-eng.deu needs it"),
    ("text-without-language", lambda d: (None, write(d / "corpus.txt", "Hallo Welt\n")),
     "corpus.txt: expected the language in the file name (de.txt.xz) or data.monolingual_lang"),
])
def test_file_level_reader_errors_are_shown_as_they_are(tmp_path, tiny_model_dir, case, make, message):
    parallel, mono = make(tmp_path / "data")
    parallel = parallel or write(tmp_path / "data" / "x.de-en.tsv", "".join(f"{g}\t{e}\n" for g, e in zip(GERMAN, ENGLISH)))
    proc = train(tiny_model_dir, tmp_path, parallel, monolingual=mono)
    assert_clean_failure(proc, message)
    assert "empty file" not in proc.stderr and not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------ evaluation inputs and reports

def test_beir_folder_without_corpus_is_refused(tmp_path, tiny_model_dir):
    folder = tmp_path / "scifact"
    write(folder / "queries.jsonl", json.dumps({"_id": "q1", "text": "a question"}) + "\n")
    write(folder / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    proc = cli("encode", "--model", tiny_model_dir, "--input", folder, "--kind", "corpus", "--output", tmp_path / "emb")
    assert_clean_failure(proc, "scifact: expected a corpus file, or a directory holding corpus.jsonl")
    assert "(got only queries.jsonl, not a corpus)" in proc.stderr and not (tmp_path / "emb").exists()


def test_txt_topics_are_tsv_and_partial_runs_are_warned(tmp_path):
    """anserini's topics.*.txt (qid<TAB>query) with a 3-letter lang column; a run covering 1 of 8 judged queries."""
    topics = write(tmp_path / "topics.msmarco-passage.dev-subset.txt",
                   "".join(f"{i}\tquestion {i}\tdeu\n" for i in range(8)))
    qrels = write(tmp_path / "qrels.txt", "".join(f"{i} 0 d{i} 1\n" for i in range(8)))
    run_file = write(tmp_path / "run.trec", "0 Q0 d0 1 1.0 t\n")
    report = tmp_path / "report.json"
    proc = cli("evaluate", "--run", run_file, "--qrels", qrels, "--queries", topics, "--report", report, expect_rc=0)
    assert "reading the queries as tsv" in proc.stderr
    assert "the run covers 1 of the 8 judged queries (12%); the 7 others are left out of every average" in proc.stderr
    scores = json.loads(report.read_text())["metrics"]
    assert list(scores) == ["de", "macro", "all"] and scores["de"]["mrr@10"] == 1.0


def test_yes_no_only_language_reports_null_not_nan(tmp_path):
    passages = write(tmp_path / "psgs_w100.tsv", "id\ttext\ttitle\n1\tParis is the capital\tParis\n"
                                                 "2\tYes it is\tYes\n")
    questions = write(tmp_path / "xor_dev.jsonl", "".join(json.dumps(r) + "\n" for r in [
        {"id": "x1", "question": "Q?", "answers": ["Paris"], "lang": "fi"},
        {"id": "x2", "question": "Q?", "answers": ["yes"], "lang": "ja"},
        {"id": "x3", "question": "Q?", "answers": ["no"], "lang": "ja"}]))
    run_file = write(tmp_path / "run.trec", "x1 Q0 1 1 1.0 t\nx2 Q0 2 1 1.0 t\nx3 Q0 2 1 1.0 t\n")
    report = tmp_path / "report.json"
    proc = cli("evaluate", "--run", run_file, "--answers", questions, "--passages", passages, "--report", report,
               expect_rc=0)
    text = report.read_text()
    assert "NaN" not in text
    table = json.loads(text)["answer_metrics"]
    assert table["ja"]["r@2kt"] is None and table["ja"]["acc@20"] == 0.5  # "yes" found, "no" not
    assert table["macro"]["r@2kt"] == 1.0 and table["all"]["r@2kt"] == 1.0  # fi alone has R@kt
    assert "ja: r@2kt, r@5kt undefined (null): its 2 questions all have yes/no answers" in proc.stderr
    assert "n/a" in proc.stdout


def test_second_encode_into_a_busy_directory_is_refused(tmp_path, tiny_model_dir):
    corpus = write(tmp_path / "corpus.jsonl", "".join(json.dumps({"docid": f"d{i}", "text": t}) + "\n"
                                                      for i, t in enumerate(TEXTS[:4])))
    out = tmp_path / "emb"
    out.mkdir()
    with open(out / ".lock-0", "a") as held:  # what a first `encode` holds while it runs
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = cli("encode", "--model", tiny_model_dir, "--input", corpus, "--kind", "corpus", "--output", out)
    assert_clean_failure(proc, f"--output {out}: another encode is writing into it")
    assert [p.name for p in out.iterdir()] == [".lock-0"]
    cli("encode", "--model", tiny_model_dir, "--input", corpus, "--kind", "corpus", "--output", out, expect_rc=0)
    assert (out / "meta-0-of-1.json").is_file()


# ------------------------------------------------------------------ config overrides

@pytest.mark.parametrize("override,message", [
    ("model.query_prefix=query: ", "YAML reads 'query: ' as {'query': None}; to pass the text as it is, quote it "
                                   "inside the argument: 'model.query_prefix=\"query: \"'"),
    ("model.passage_prefix=passage #2", "YAML reads 'passage #2' as 'passage'"),
    ("model.query_prefix=a: b: c", "not valid YAML (mapping values are not allowed here)"),
    ("train.compile=true", "unknown key 'train.compile'; did you mean 'model.compile'?"),
    ("data.lr=1e-5", "unknown key 'data.lr'; did you mean 'train.lr'?"),
])
def test_override_misspellings_say_what_to_type(tmp_path, override, message):
    proc = cli("train", override, f"train.output_dir={tmp_path / 'run'}")
    assert_clean_failure(proc, message)


# ------------------------------------------------------------------ one-process DDP, separate towers; `latest`

@pytest.fixture(scope="module")
def separate_towers_run(tmp_path_factory, tiny_model_dir):
    """`dist-lacl train` without a launcher (one process, DDP), separate towers, 2 steps."""
    folder = tmp_path_factory.mktemp("ddp-one")
    parallel = write(folder / "x.de-en.tsv", "".join(f"{g}\t{e}\n" for g, e in zip(GERMAN, ENGLISH)))
    train(tiny_model_dir, folder, parallel, "model.shared_encoder=false", "train.max_steps=2", expect_rc=0)
    return folder, parallel


@pytest.mark.slow  # a training run through the CLI, as in test_bad_input
def test_one_process_ddp_trains_separate_towers(separate_towers_run):
    folder, _ = separate_towers_run
    assert (folder / "run" / "checkpoints" / "step-0000002" / "MANIFEST.json").is_file()


@pytest.mark.slow  # a training run through the CLI, as in test_bad_input
@pytest.mark.parametrize("damage,expected", [
    (lambda p: p.write_bytes(b"\x00\xff\xfe garbage \x80"), "unreadable or not a name"),
    (lambda p: (p.unlink(), p.mkdir(), (p / "notes.txt").write_text("mine")), "a directory"),
])
def test_damaged_latest_pointer_falls_back_to_scanning(separate_towers_run, tiny_model_dir, damage, expected):
    folder, parallel = separate_towers_run
    pointer = folder / "run" / "checkpoints" / "latest"
    if pointer.is_dir():
        import shutil

        shutil.rmtree(pointer)
        pointer.write_text("step-0000002")
    damage(pointer)
    steps = 1 + max(int(p.name.split("-")[1]) for p in pointer.parent.glob("step-*"))
    proc = train(tiny_model_dir, folder, parallel, "model.shared_encoder=false", f"train.max_steps={steps}",
                 expect_rc=0)
    assert f"latest does not hold a checkpoint name ({expected}); scanning" in proc.stderr
    assert f"resumed from {pointer.parent / f'step-{steps - 1:07d}'}" in proc.stderr
    assert "Traceback" not in proc.stderr
    if pointer.is_dir():
        assert (pointer / "notes.txt").read_text() == "mine"  # the user's folder is left alone
    else:
        assert pointer.read_text() == f"step-{steps:07d}"


# ------------------------------------------------------------------ found by the hand hunt

def test_moses_names_in_upper_case_and_a_contradicting_parallel_lang(tmp_path):
    write(tmp_path / "X.DEU-ENG.ENG", "Hello\n")
    fmt, rows = read(write(tmp_path / "X.DEU-ENG.DEU", "Hallo\n"), "parallel", ReadOptions())
    assert list(rows) == [(1, {"en": "Hello", "text": "Hallo", "lang": "de"})]
    with pytest.raises(Exception, match="the file name says de, this says fr"):
        read(tmp_path / "X.DEU-ENG.ENG", "parallel", ReadOptions(lang="fr"))
    _, rows = read(tmp_path / "X.DEU-ENG", "parallel", ReadOptions(lang="de-ch"))  # a region refines the name
    assert [r["lang"] for _, r in rows] == ["de-ch"]


def test_evaluate_lang_option_is_stored_like_file_codes(tmp_path):
    qrels = write(tmp_path / "qrels.txt", "1 0 d1 1\n")
    report = tmp_path / "report.json"
    cli("evaluate", "--run", write(tmp_path / "run.trec", "1 Q0 d1 1 1.0 t\n"), "--qrels", qrels, "--lang", "ger",
        "--report", report, expect_rc=0)
    assert list(json.loads(report.read_text())["metrics"]) == ["de", "macro", "all"]
