"""Misuse of `encode`, `search` and `evaluate` through the real CLI (`dist_lacl.cli.main`, and real
subprocesses where a process must die): one line naming what is wrong, exit 2, no traceback, every
file in the test's folder byte-identical afterwards. Also: a killed encode resumes with every id once,
and float16 storage ranks like float32."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from equivalence import FP16_STORAGE_EMBEDDINGS, FP16_STORAGE_SCORES
from helpers_eval import write_eval_set
from helpers_launch import launch_env
from helpers_tiny import TEXTS
from transformers import AutoModel

from dist_lacl.cli import main
from dist_lacl.evaluation import shards
from dist_lacl.evaluation.encode import load_embeddings
from dist_lacl.evaluation.inputs import read_corpus, read_run


def cli(capsys, *argv) -> tuple[int, str]:
    """(exit status, stderr) of `dist-lacl ARGV` run in this process."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def snapshot(folder) -> dict[str, str]:
    """{relative path: sha256} of every file (and directory, as "dir") under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def assert_refused(capsys, root, argv, message):
    before = snapshot(root)
    code, err = cli(capsys, *argv)
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("dist-lacl")]) == 1, err
    assert snapshot(root) == before


def fake_shards(folder, tower, emb, ids, weights="w0", storage="fp32", world_size=1):
    """Shards in `encode`'s format, written directly (what `encode` would record is faked)."""
    folder.mkdir(parents=True, exist_ok=True)
    for rank in range(world_size):
        start, stop = rank * len(ids) // world_size, (rank + 1) * len(ids) // world_size
        meta = {"format": shards.FORMAT, "tower": tower, "dim": emb.shape[1], "storage": storage, "rank": rank,
                "world_size": world_size, "rows": [start, stop], "num_rows": stop - start,
                "provenance": {"model_weights": weights, "tower": tower, "world_size": world_size}}
        shards.write_shard(folder, rank, world_size, [emb[start:stop]], ids[start:stop], meta)
    return folder


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory):
    """root/: set/ (corpus, queries, qrels), model/, other-model/ (other weights), nan-model/,
    emb/{queries,corpus} encoded with model/."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("misuse")
    paths = write_eval_set(root / "set")
    shutil.copytree(tiny_model_dir, root / "model")
    for name, change in (("other-model", lambda w: w.mul_(1.01)), ("nan-model", lambda w: w.fill_(float("nan")))):
        shutil.copytree(tiny_model_dir, root / name)
        model = AutoModel.from_pretrained(root / name)
        with torch.no_grad():
            change(model.encoder.layer[-1].output.dense.weight)
        model.save_pretrained(root / name)
    for kind in ("queries", "corpus"):
        assert main(["encode", "--model", str(root / "model"), "--input", str(paths[kind]), "--kind", kind,
                     "--output", str(root / "emb" / kind), "--max-len", "64", "--batch-size", "8"]) == 0
    return root, paths


def encode_args(root, paths, kind="corpus", output=None, *extra):
    return ["encode", "--model", root / "model", "--input", paths[kind], "--kind", kind,
            "--output", output or root / "emb" / kind, "--max-len", "64", "--batch-size", "8", *extra]


# --- encode --------------------------------------------------------------------------------------

ENCODE_CASES = [
    ("other-model", lambda r, p: ["encode", "--model", r / "other-model", "--input", p["corpus"], "--kind", "corpus",
                                  "--output", r / "emb" / "corpus", "--max-len", "64"],
     "holds embeddings made differently (meta-0-of-1.json: model_weights:"),
    ("other-max-len", lambda r, p: encode_args(r, p)[:-4] + ["--max-len", "32"], "max_len: 64 in the directory, 32 now"),
    ("other-tower", lambda r, p: encode_args(r, p, "queries", r / "emb" / "corpus"),
     "tower: 'passage' in the directory, 'query' now"),
    ("other-storage", lambda r, p: encode_args(r, p, "corpus", None, "--storage", "fp16"),
     "storage: 'fp32' in the directory, 'fp16' now"),
    ("other-dtype", lambda r, p: encode_args(r, p, "corpus", None, "--dtype", "bf16"), "dtype: 'fp32' in the directory"),
    ("beyond-positions", lambda r, p: encode_args(r, p, "corpus", r / "new")[:-4] + ["--max-len", "129"],
     "--max-len: 129 tokens, but the model's position embeddings allow at most 128"),
    ("nan-weights", lambda r, p: ["encode", "--model", r / "nan-model", "--input", p["corpus"], "--kind", "corpus",
                                  "--output", r / "new"],
     "non-finite (NaN or inf) embeddings for 31 ids (d0, d1, d2, d3, d4 and 26 more)"),
    ("batch-size-0", lambda r, p: encode_args(r, p, "corpus", r / "new", "--batch-size", "0"),
     "--batch-size: expected a positive integer, got 0"),
    ("part-rows-0", lambda r, p: encode_args(r, p, "corpus", r / "new", "--part-rows", "0"),
     "--part-rows: expected a positive integer, got 0"),
    ("timeout-negative", lambda r, p: encode_args(r, p, "corpus", r / "new", "--dist-timeout-s", "-5"),
     "--dist-timeout-s: expected a positive integer, got -5"),
    ("max-len-1", lambda r, p: encode_args(r, p, "corpus", r / "new")[:-4] + ["--max-len", "1"],
     "--max-len: expected at least 2 tokens, got 1"),
    ("input-missing", lambda r, p: encode_args(r, {"corpus": r / "nothing.jsonl"}, "corpus", r / "new"),
     "nothing.jsonl: file not found"),
    ("model-missing", lambda r, p: ["encode", "--model", r / "no-model", "--input", p["corpus"], "--kind", "corpus",
                                    "--output", r / "new"], "--model " + "{root}/no-model: directory not found"),
    ("output-is-file", lambda r, p: encode_args(r, p, "corpus", p["qrels"]),
     "expected a directory for the embeddings, got a file"),
]


@pytest.mark.parametrize("case,argv,message", ENCODE_CASES, ids=[c[0] for c in ENCODE_CASES])
def test_encode_misuse(world, capsys, case, argv, message):
    root, paths = world
    assert_refused(capsys, root, argv(root, paths), message.format(root=root))


def test_encode_refuses_a_directory_with_another_world_size(world, capsys, tmp_path):
    root, paths = world
    shutil.copytree(root / "emb" / "corpus", tmp_path / "corpus")
    os.rename(tmp_path / "corpus" / "meta-0-of-1.json", tmp_path / "corpus" / "meta-0-of-2.json")
    assert_refused(capsys, tmp_path, encode_args(root, paths, "corpus", tmp_path / "corpus"),
                   "holds shards of 2 ranks (meta-0-of-2.json), this run has 1")


def test_encode_again_with_the_same_settings_skips(world, capsys):
    root, paths = world
    before = snapshot(root / "emb")
    assert cli(capsys, *encode_args(root, paths))[0] == 0
    assert snapshot(root / "emb") == before


# --- search and evaluate -------------------------------------------------------------------------


def search_args(root, query="queries", corpus="corpus", *extra, output=None):
    return ["search", "--query-emb", root / "emb" / query, "--corpus-emb", root / "emb" / corpus,
            "--output", output or root / "run.trec", "--k", "5", *extra]


def eval_args(root, paths, *extra):
    return ["evaluate", "--qrels", paths["qrels"], "--queries", paths["queries"], "--query-emb",
            root / "emb" / "queries", "--corpus-emb", root / "emb" / "corpus", "--metrics", "mrr@3", *extra]


SEARCH_CASES = [
    ("swapped", lambda r, p: search_args(r, "corpus", "queries"),
     "holds passage-tower embeddings, expected the query tower (--query-emb and --corpus-emb swapped?)"),
    ("other-dim", lambda r, p: search_args(r, "queries", "dim16"), "holds 32-dimensional embeddings, --corpus-emb"),
    ("other-model", lambda r, p: search_args(r, "queries", "other-model"), "were encoded by different models"),
    ("nan-row", lambda r, p: search_args(r, "nan-queries", "nan-corpus"), "2 rows hold NaN or inf (b1, b2)"),
    ("unfinished", lambda r, p: search_args(r, "queries", "unfinished"), "shard 0 of 1 is not finished"),
    ("k-0", lambda r, p: search_args(r)[:-2] + ["--k", "0"], "--k: expected a positive integer, got 0"),
    ("evaluate-k-0", lambda r, p: eval_args(r, p, "--k", "0"), "--k: expected a positive integer, got 0"),
    ("block-rows-0", lambda r, p: search_args(r, "queries", "corpus", "--block-rows", "0"),
     "--block-rows: expected a positive integer, got 0"),
    ("query-batch-0", lambda r, p: search_args(r, "queries", "corpus", "--query-batch", "-1"),
     "--query-batch: expected a positive integer, got -1"),
    ("nlist-0", lambda r, p: eval_args(r, p, "--index", "ivf", "--nlist", "0"),
     "--nlist: expected a positive integer, got 0"),
    ("output-in-emb-dir", lambda r, p: search_args(r, output=r / "emb" / "corpus" / "meta-0-of-1.json"),
     "is inside the embeddings directory of --corpus-emb"),
    ("output-is-dir", lambda r, p: search_args(r, output=r / "set"), "is a folder; expected a file name"),
    ("emb-dir-missing", lambda r, p: search_args(r, "nothing"), "nothing: directory not found"),
    ("emb-dir-is-file", lambda r, p: search_args(r, "../set/qrels.txt"), "expected a directory, got a file"),
    ("output-run-is-qrels", lambda r, p: eval_args(r, p, "--output-run", p["qrels"]),
     "--output-run {qrels}: is also --qrels"),
    ("report-is-queries", lambda r, p: eval_args(r, p, "--report", p["queries"]), "is also --queries"),
    ("report-is-output-run", lambda r, p: eval_args(r, p, "--output-run", r / "x.trec", "--report", r / "x.trec"),
     "--report {root}/x.trec: is also --output-run"),
    ("report-is-run", lambda r, p: ["evaluate", "--qrels", p["qrels"], "--run", r / "set" / "run.trec",
                                    "--report", r / "set" / "./run.trec"], "is also --run"),
    ("output-run-without-search", lambda r, p: ["evaluate", "--qrels", p["qrels"], "--run", r / "set" / "run.trec",
                                                "--output-run", r / "x.trec"], "--output-run: only with --query-emb"),
    ("lang-empty", lambda r, p: eval_args(r, p, "--lang", ""), "--lang: expected a language code such as 'en', got ''"),
    ("qrels-is-dir", lambda r, p: ["evaluate", "--qrels", r / "set", "--run", r / "set" / "run.trec"],
     "--qrels {root}/set: expected a file, got a directory"),
    ("qrels-unknown-doc", lambda r, p: ["evaluate", "--qrels", r / "set" / "qrels-other.txt", "--query-emb",
                                        r / "emb" / "queries", "--corpus-emb", r / "emb" / "corpus", "--output-run",
                                        r / "x.trec"], "field 'docid': expected ids of the corpus"),
]


@pytest.fixture(scope="module")
def search_world(world):
    """`world` plus synthetic embedding dirs: dim16/, other-model/, nan-{queries,corpus}/, unfinished/,
    set/run.trec, set/qrels-other.txt (naming a doc the corpus lacks)."""
    root, paths = world
    meta = json.loads((root / "emb" / "corpus" / "meta-0-of-1.json").read_text())
    weights = meta["provenance"]["model_weights"]
    rng = np.random.default_rng(0)
    fake_shards(root / "emb" / "dim16", "passage", rng.standard_normal((4, 16)), ["a", "b", "c", "d"], weights)
    fake_shards(root / "emb" / "other-model", "passage", rng.standard_normal((4, 32)), ["a", "b", "c", "d"], "w1")
    nan_corpus = rng.standard_normal((6, 8))
    nan_corpus[[1, 2], 2] = [np.nan, np.inf]
    fake_shards(root / "emb" / "nan-corpus", "passage", nan_corpus, [f"b{i}" for i in range(6)], world_size=2)
    fake_shards(root / "emb" / "nan-queries", "query", rng.standard_normal((2, 8)), ["q1", "q2"])
    (root / "emb" / "unfinished" / "parts-0-of-1").mkdir(parents=True)
    (root / "set" / "run.trec").write_text("q0 Q0 d0 1 0.9 t\nq1 Q0 d1 1 0.8 t\n")
    (root / "set" / "qrels-other.txt").write_text("q0 0 d0 1\nq1 0 zz-unknown 1\n")
    return root, paths


@pytest.mark.parametrize("case,argv,message", SEARCH_CASES, ids=[c[0] for c in SEARCH_CASES])
def test_search_and_evaluate_misuse(search_world, capsys, case, argv, message):
    root, paths = search_world
    assert_refused(capsys, root, argv(root, paths), message.format(root=root, qrels=paths["qrels"]))


def test_evaluate_writes_nothing_until_every_input_is_checked(search_world, capsys):
    """A bad qrels line is found before the search: no run file appears (the old order wrote it first)."""
    root, paths = search_world
    bad = root / "bad-qrels.txt"
    bad.write_text("q0 0 d0 1\nq1 0 d1 high\n")
    assert_refused(capsys, root, ["evaluate", "--qrels", bad, "--query-emb", root / "emb" / "queries",
                                  "--corpus-emb", root / "emb" / "corpus", "--output-run", root / "out.trec"],
                   "bad-qrels.txt, line 2: field 'relevance': expected an integer")
    assert not (root / "out.trec").exists()


def test_a_clean_failure_through_the_installed_entry_point(search_world):
    """The same standard from a real process: exit 2 and one line, no traceback."""
    root, _ = search_world
    proc = subprocess.run([sys.executable, "-m", "dist_lacl.cli", *map(str, search_args(root, "corpus", "queries"))],
                          capture_output=True, text=True, env=launch_env(), timeout=120)
    assert proc.returncode == 2 and "swapped?" in proc.stderr and "Traceback" not in proc.stderr


# --- resume and storage --------------------------------------------------------------------------


def test_encode_killed_mid_shard_resumes_with_every_id_once(world, capsys, tmp_path):
    root, _ = world
    corpus = tmp_path / "corpus.jsonl"
    docs = [{"docid": f"p{i}", "text": f"{TEXTS[i % len(TEXTS)]} {i}"} for i in range(400)]
    corpus.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    argv = ["encode", "--model", root / "model", "--input", corpus, "--kind", "corpus", "--max-len", "32",
            "--batch-size", "1", "--part-rows", "4"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "dist_lacl.cli", *map(str, argv), "--output", str(out)],
                            env=launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts_dir = out / "parts-0-of-1"
    deadline = time.monotonic() + 120
    while len(shards.part_ranges(parts_dir)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = shards.part_ranges(parts_dir)
    assert 3 <= len(done) < 100 and not (out / "meta-0-of-1.json").exists(), done  # killed in the middle

    assert cli(capsys, *argv, "--output", out)[0] == 0  # resumes
    assert cli(capsys, *argv, "--output", tmp_path / "whole")[0] == 0  # uninterrupted, for comparison
    resumed_ids, resumed = load_embeddings(out)
    whole_ids, whole = load_embeddings(tmp_path / "whole")
    assert resumed_ids == whole_ids == read_corpus(corpus).ids  # every id once, in input order
    np.testing.assert_array_equal(resumed, whole)
    assert sorted(p.name for p in out.iterdir()) == ["emb-0-of-1.npy", "ids-0-of-1.npy", "meta-0-of-1.json"]


def test_fp16_storage_ranks_like_fp32(world, capsys, tmp_path):
    """Well-separated scores (each query near one document, the others far): the same run in fp16 and
    fp32 storage; scores equal to fp16 rounding. Also `encode --storage fp16` writes float16 shards."""
    root, paths = world
    rng = np.random.default_rng(1)
    corpus = rng.standard_normal((300, 256)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    queries = corpus[:40] + 0.6 * corpus[40:80]  # doc i scores ~1, doc 40+i ~0.6, the rest < 0.3
    ids = [f"d{i}" for i in range(300)]
    for storage in ("fp32", "fp16"):
        fake_shards(tmp_path / f"corpus-{storage}", "passage", corpus, ids, storage=storage, world_size=2)
    fake_shards(tmp_path / "queries", "query", queries, [f"q{i}" for i in range(40)])
    runs = {}
    for storage in ("fp32", "fp16"):
        assert cli(capsys, "search", "--query-emb", tmp_path / "queries", "--corpus-emb", tmp_path / f"corpus-{storage}",
                   "--output", tmp_path / f"{storage}.trec", "--k", "2", "--block-rows", "64")[0] == 0
        runs[storage] = read_run(tmp_path / f"{storage}.trec")
    assert np.load(tmp_path / "corpus-fp16" / "emb-1-of-2.npy").dtype == np.float16
    for qid, docs in runs["fp32"].items():
        i = int(qid[1:])
        assert list(docs) == list(runs["fp16"][qid]) == [f"d{i}", f"d{40 + i}"]
        assert np.allclose(list(docs.values()), list(runs["fp16"][qid].values()), atol=FP16_STORAGE_SCORES)

    assert cli(capsys, *encode_args(root, paths, "corpus", tmp_path / "enc16", "--storage", "fp16"))[0] == 0
    ids16, emb16 = load_embeddings(tmp_path / "enc16")
    ids32, emb32 = load_embeddings(root / "emb" / "corpus")
    assert ids16 == ids32 and np.load(tmp_path / "enc16" / "emb-0-of-1.npy").dtype == np.float16
    np.testing.assert_allclose(emb16, emb32, atol=FP16_STORAGE_EMBEDDINGS)


def test_an_existing_run_or_report_is_replaced_only_with_overwrite(search_world, capsys):
    """search and evaluate follow the output rule of every command: an existing file is the user's."""
    root, paths = search_world
    existing = root / "kept.trec"
    existing.write_text("mine\n")
    for argv in (search_args(root, output=existing), eval_args(root, paths, "--output-run", existing),
                 eval_args(root, paths, "--report", existing)):
        assert_refused(capsys, root, argv, f"{existing}: already exists; pass --overwrite")
        assert existing.read_text() == "mine\n"
    assert cli(capsys, *search_args(root, "queries", "corpus", "--overwrite", output=existing))[0] == 0
    assert existing.read_text().startswith("q")
