"""`dist-lacl mine`: negatives from the asked rank range, never a positive, deterministic across reruns and
world sizes, resumable; bad input is one line and exit 2."""

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from equivalence import MINED_SCORES
from helpers_cli import assert_clean_failure
from helpers_launch import run, torchrun
from helpers_mine import NUM_NEG, NUM_PASSAGES, RANGE, mine_args, read_jsonl
from transformers import AutoModel

from dist_lacl.cli import main
from dist_lacl.errors import UserError
from dist_lacl.evaluation.encode import load_embeddings, weights_fingerprint
from dist_lacl.loading import load_model
from dist_lacl.mine import MineSettings, choose_negatives, parse_rank_range
from dist_lacl.outputs import FolderLock


@pytest.fixture(scope="module")
def first_run(mining_data, spread_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mine-run")
    out, work = folder / "mined.jsonl", folder / "work"
    assert main(mine_args(mining_data, spread_model, out, work)) == 0
    return out, work


def test_negatives_come_from_the_rank_range_and_are_never_positives(first_run, mining_data):
    out, work = first_run
    records = read_jsonl(out)
    assert [r["query_id"] for r in records] == [f"q{i}" for i in range(12)] + [f"x{i}" for i in range(4)]
    # The same embeddings ranked by brute force; scores within MINED_SCORES of each other may stand in
    # either order.
    doc_ids, corpus_emb = [], []
    for c in range(3):
        ids, emb = load_embeddings(work / "corpus" / f"chunk-{c:05d}")
        doc_ids += ids
        corpus_emb.append(emb)
    assert doc_ids == [f"p{i}" for i in range(NUM_PASSAGES)]
    query_ids, query_emb = load_embeddings(work / "queries")
    scores = query_emb @ np.concatenate(corpus_emb).T
    corpus = {p["docid"]: p for p in read_jsonl(mining_data / "corpus.jsonl")}
    for record, row_scores in zip(records, scores):
        positives = {p["docid"] for p in record["positive_passages"]}
        negatives = [p["docid"] for p in record["negative_passages"]]
        assert not positives & set(negatives)
        assert len(set(negatives)) == len(negatives) == NUM_NEG
        for docid in negatives:
            score = row_scores[doc_ids.index(docid)]
            best_rank = 1 + (row_scores > score + MINED_SCORES).sum()
            worst_rank = (row_scores >= score - MINED_SCORES).sum()
            assert best_rank <= RANGE[1] and worst_rank >= RANGE[0], (record["query_id"], docid)
        assert negatives == sorted(negatives, key=lambda d: int(d[1:]))  # listed in corpus order
        assert all(p == corpus[p["docid"]] for p in record["negative_passages"] + record["positive_passages"])
    by_id = {r["query_id"]: r for r in records}
    assert [p["docid"] for p in by_id["q1"]["positive_passages"]] == ["p7", "p8"]
    assert [p["docid"] for p in by_id["x2"]["positive_passages"]] == ["p102"]  # relevance 0 is no positive


def test_rerun_resumes_finished_chunks_and_gives_the_same_file(first_run, mining_data, spread_model,
                                                               tmp_path):
    out, work = first_run
    # An interrupted run: chunks 0 and 1 finished, chunk 2 and the queries not.
    resumed_work = tmp_path / "work"
    shutil.copytree(work, resumed_work)
    # Chunk 2 holds one shard of an interrupted run on 2 ranks, which cannot mix with this run's.
    chunk2 = resumed_work / "corpus" / "chunk-00002"
    for path in chunk2.iterdir():
        path.rename(chunk2 / path.name.replace("0-of-1", "1-of-2"))
    shutil.rmtree(resumed_work / "queries")
    finished = sorted((resumed_work / "corpus").glob("chunk-0000[01]/*"))
    assert len(finished) == 6  # emb, ids, meta of two chunks
    mtimes = [p.stat().st_mtime_ns for p in finished]
    resumed_out = tmp_path / "mined.jsonl"
    assert main(mine_args(mining_data, spread_model, resumed_out, resumed_work)) == 0
    assert [p.stat().st_mtime_ns for p in finished] == mtimes
    assert sorted(p.name for p in chunk2.iterdir()) == ["emb-0-of-1.npy", "ids-0-of-1.npy", "meta-0-of-1.json"]
    assert resumed_out.read_bytes() == out.read_bytes()
    # Another seed draws other negatives from the same embeddings, reusing every chunk.
    other = tmp_path / "seed8.jsonl"
    assert main(mine_args(mining_data, spread_model, other, resumed_work, "--seed", "8")) == 0
    assert other.read_bytes() != out.read_bytes()


def test_choose_negatives_by_hand():
    settings = MineSettings(rank_lo=2, rank_hi=5, k=6, num_negatives=5, seed=0)
    doc_ids = [f"d{i}" for i in range(10)]
    rows = np.array([5, 3, 9, 1, 7, 2])  # ranks 2..5 hold rows 3, 9, 1, 7; d9 is a positive
    assert choose_negatives("q", rows, doc_ids, {"d9", "d5"}, settings) == [1, 3, 7]
    settings.num_negatives = 2
    picked = choose_negatives("q", rows, doc_ids, {"d9"}, settings)
    assert len(picked) == 2 and set(picked) <= {1, 3, 7}
    assert choose_negatives("q", rows, doc_ids, {"d9"}, settings) == picked  # (seed, query_id) only
    assert choose_negatives("q", rows[:3], doc_ids, {"d9"}, settings) == [3]  # k past the corpus: rows -1 gone
    assert parse_rank_range("10-100") == (10, 100) and parse_rank_range("1-1") == (1, 1)
    for bad in ("100-10", "0-5", "10", "a-b"):
        with pytest.raises(UserError):
            parse_rank_range(bad)


@pytest.mark.parametrize("extra, expected", [
    (("--rank-range", "100-10"), "--rank-range: expected 1 <= FIRST <= LAST (ranks start at 1), got '100-10'"),
    (("--k", "10"), "--k: expected at least 20, the last rank of --rank-range 3-20, got 10"),
    (("--num-negatives", "0"), "--num-negatives: expected a positive integer, got 0"),
    (("--min-relevance", "2"), "4 queries have no positive passage in"),
])
def test_bad_input_is_an_error_and_exit_2(extra, expected, mining_data, spread_model, tmp_path, capsys):
    out = tmp_path / "mined.jsonl"
    assert main(mine_args(mining_data, spread_model, out, tmp_path / "w", *extra)) == 2
    assert expected in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists() and not (tmp_path / "w").exists()


def test_bad_input_in_a_real_process_is_one_line(mining_data, spread_model, tmp_path):
    proc = run([sys.executable, "-m", "dist_lacl.cli", *mine_args(mining_data, spread_model, tmp_path / "o.jsonl",
                                                                  tmp_path / "w", "--rank-range", "100-10")],
               expect_rc=2)
    assert proc.stderr.strip().splitlines() == [
        "dist-lacl mine: error: --rank-range: expected 1 <= FIRST <= LAST (ranks start at 1), got '100-10'"]


def test_existing_output_and_foreign_work_dir_are_refused(first_run, mining_data, tiny_model_dir, tmp_path, capsys):
    out, work = first_run
    before = out.read_bytes()
    assert main(mine_args(mining_data, tiny_model_dir, out, work)) == 2
    assert f"--output {out}: already exists; pass --overwrite" in capsys.readouterr().err
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("mine")
    other = out.with_name("other.jsonl")
    assert main(mine_args(mining_data, tiny_model_dir, other, foreign)) == 2
    assert "is not empty and is not a work directory of mine (no mine.json)" in capsys.readouterr().err
    assert out.read_bytes() == before and not other.exists() and sorted(foreign.iterdir()) == [foreign / "mine.txt"]
    inside = work / "inside.jsonl"  # a later run in that work directory would find a file not its own
    assert main(mine_args(mining_data, tiny_model_dir, inside, tmp_path / "w2")) == 2
    assert f"--output {inside}: is inside a work directory of mine" in capsys.readouterr().err
    assert not inside.exists()


def _spellings(data, tmp_path, option):
    """The file of `option`, spelled four ways: relative to the working directory, `a/../x`, a symlink, a
    hard link."""
    name = {"--corpus": "corpus.jsonl", "--train-ir": "train.jsonl", "--queries": "queries.tsv",
            "--qrels": "qrels.txt"}[option]
    target = data / name
    (tmp_path / "link").symlink_to(target)
    hard = tmp_path / "hard"
    os.link(target, hard)
    return [os.path.relpath(target), str(data / ".." / data.name / name), str(tmp_path / "link"), str(hard)]


@pytest.mark.parametrize("option", ["--corpus", "--train-ir", "--queries", "--qrels"])
def test_output_that_is_an_input_is_refused_in_any_spelling(option, mining_data, spread_model, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in mining_data.iterdir()}
    for spelling in _spellings(mining_data, tmp_path, option):
        args = mine_args(mining_data, spread_model, spelling, tmp_path / "w", "--overwrite")
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert f"--output {spelling}: is also {option}" in err[-1] and len(err) == 1, (spelling, err)
    assert {p.name: p.read_bytes() for p in mining_data.iterdir()} == before
    assert not (tmp_path / "w").exists()


def test_output_that_is_an_input_in_a_real_process_is_one_line(mining_data, spread_model, tmp_path):
    hard = tmp_path / "corpus-again.jsonl"
    os.link(mining_data / "corpus.jsonl", hard)
    before = hard.read_bytes()
    proc = run([sys.executable, "-m", "dist_lacl.cli", *mine_args(mining_data, spread_model, hard, tmp_path / "w",
                                                                  "--overwrite")], expect_rc=None)
    assert_clean_failure(proc, f"--output {hard}: is also --corpus")
    assert hard.read_bytes() == before


def test_a_model_trained_on_at_the_same_path_is_encoded_again(first_run, mining_data, spread_model, tmp_path):
    """The work directory is keyed by the weights (as `encode`'s shards are), not by the model's path: a
    model saved again at the same path after more training is encoded again; the same weights are reused."""
    out, _ = first_run
    model = tmp_path / "model"
    shutil.copytree(spread_model, model)
    mined, work = tmp_path / "mined.jsonl", tmp_path / "work"
    assert main(mine_args(mining_data, model, mined, work)) == 0
    assert mined.read_bytes() == out.read_bytes()
    first_emb = load_embeddings(work / "queries")[1]
    trained_on = AutoModel.from_pretrained(model)
    with torch.no_grad():
        trained_on.get_input_embeddings().weight.add_(torch.randn_like(trained_on.get_input_embeddings().weight))
    trained_on.save_pretrained(model)  # same path, new weights: "train on to step 4"
    assert main(mine_args(mining_data, model, mined, work, "--overwrite")) == 0
    assert not np.allclose(load_embeddings(work / "queries")[1], first_emb)
    assert mined.read_bytes() != out.read_bytes()
    assert json.loads((work / "mine.json").read_text())["model_weights"] == weights_fingerprint(
        load_model(model)[0])
    # The same model and inputs again: every set reused, the same file.
    second = mined.read_bytes()
    files = sorted(work.glob("*/*/*.npy")) + sorted(work.glob("queries/*.npy"))
    mtimes = [p.stat().st_mtime_ns for p in files]
    assert main(mine_args(mining_data, model, mined, work, "--overwrite")) == 0
    assert [p.stat().st_mtime_ns for p in files] == mtimes and mined.read_bytes() == second


def test_positive_missing_from_the_corpus_is_found_before_encoding_and_the_fixed_rerun_runs(
        first_run, mining_data, spread_model, tmp_path, capsys):
    out, first_work = first_run
    data = tmp_path / "data"
    shutil.copytree(mining_data, data)
    work = tmp_path / "work"
    shutil.copytree(first_work, work)  # the work directory of an earlier run with other training files
    qrels = data / "qrels.txt"
    qrels.write_text(qrels.read_text() + "x3 0 p999 1\n")
    mtimes = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    assert main(mine_args(data, spread_model, tmp_path / "o.jsonl", work)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{qrels}: query 'x3' has the positive 'p999', which " \
        f"{data / 'corpus.jsonl'} does not hold (1 such positives)" in err.strip().splitlines()[-1]
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()} == mtimes  # nothing encoded
    # The corrected rerun: other training files than the work directory was made for, not refused; every
    # embedding set still fits and is reused.
    qrels.write_text(qrels.read_text().replace("x3 0 p999 1\n", "x3 0 p999 0\n"))
    assert main(mine_args(data, spread_model, tmp_path / "o.jsonl", work)) == 0
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*.npy")} == {p: t for p, t in mtimes.items()
                                                                       if p.suffix == ".npy"}
    assert (tmp_path / "o.jsonl").read_bytes() == out.read_bytes()


def test_rank_range_past_the_corpus_is_an_error_and_partly_past_it_a_warning(mining_data, spread_model, tmp_path,
                                                                              capsys, caplog):
    out = tmp_path / "o.jsonl"
    assert main(mine_args(mining_data, spread_model, out, tmp_path / "w", "--rank-range", "300-400",
                          "--k", "400")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"--rank-range 300-400: starts past the end of {mining_data / 'corpus.jsonl'}, which holds 240 passages; "
        "expected FIRST <= 240")
    assert not out.exists() and not (tmp_path / "w").exists()
    assert main(mine_args(mining_data, spread_model, out, tmp_path / "w", "--rank-range", "236-300",
                          "--k", "300")) == 0
    assert "holds 240 passages, so ranks past 240 do not exist; each query draws its 6 negatives from at most 5 " \
        "candidates (ranks 236-240, less its positives there)" in caplog.text
    assert all(len(r["negative_passages"]) <= 5 for r in read_jsonl(out))


@pytest.mark.slow
def test_two_ranks_give_the_same_file_as_one(first_run, mining_data, spread_model, tmp_path):
    out, _ = first_run
    two = tmp_path / "mined-2.jsonl"
    torchrun("-m", "dist_lacl.cli", *mine_args(mining_data, spread_model, two, tmp_path / "w"), nproc=2)
    assert (tmp_path / "w" / "corpus" / "chunk-00002" / "emb-1-of-2.npy").is_file()
    assert two.read_bytes() == out.read_bytes()


def test_a_work_directory_in_use_by_another_mine_is_refused(first_run, mining_data, spread_model, tmp_path, capsys):
    out, work = first_run
    before = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.name != ".lock"}
    held = FolderLock(work, "--work-dir", "mine")  # another mine, still encoding into it
    try:
        assert main(mine_args(mining_data, spread_model, tmp_path / "o.jsonl", work)) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and f"--work-dir: {work} is in use by another mine ({held.token})" in err
    finally:
        held.file.close()
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.name != ".lock"} == before
    assert not (tmp_path / "o.jsonl").exists()
