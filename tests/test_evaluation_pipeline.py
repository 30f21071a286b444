"""Encoding (length-sorted, sharded, resumable; 2 real gloo processes == 1), dev evaluation, and the
encode -> search -> evaluate commands end to end, with the tiny model."""

import json
import os
import socket

import numpy as np
import pytest
import pytrec_eval
import torch
import torch.multiprocessing as mp
from equivalence import (
    DEV_METRICS_ACROSS_RANKS,
    ENCODED_ALIKE,
    ENCODED_IN_OTHER_BATCHES,
    ENCODINGS_DIFFER,
    HALF_PRECISION_EMBEDDINGS,
)
from helpers_eval import NUM_DOCS, run_command, tiny_dual_encoder, write_eval_set
from helpers_tiny import TEXTS
from transformers import AutoTokenizer

from dist_lacl import distributed as dist
from dist_lacl.errors import UserError
from dist_lacl.evaluation import encode as encode_mod
from dist_lacl.evaluation.encode import (
    encode_texts,
    encode_to_shards,
    load_embeddings,
    resolve_dtype,
    shard_bounds,
)
from dist_lacl.evaluation.evaluate import evaluate_dev, load_dev_set
from dist_lacl.evaluation.inputs import read_corpus, read_run
from dist_lacl.evaluation.shards import open_shards


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    torch.set_num_threads(1)
    return (tiny_dual_encoder(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir),
            write_eval_set(tmp_path_factory.mktemp("eval-set")))


# --- encoding in one process -------------------------------------------------------------------


def test_encode_restores_input_order_and_matches_unbatched(setup):
    model, tok, paths = setup
    texts = read_corpus(paths["corpus"]).texts
    sorted_ = encode_texts(model, tok, texts, "passage", 64, 4, show_progress=False)
    unsorted = encode_texts(model, tok, texts, "passage", 64, 4, sort_by_length=False, show_progress=False)
    one_by_one = np.concatenate([encode_texts(model, tok, [t], "passage", 64, 1, show_progress=False)
                                 for t in texts])
    assert sorted_.shape == (NUM_DOCS, 32) and sorted_.dtype == np.float32
    np.testing.assert_allclose(sorted_, one_by_one, atol=ENCODED_IN_OTHER_BATCHES)
    np.testing.assert_allclose(unsorted, one_by_one, atol=ENCODED_IN_OTHER_BATCHES)
    # Distinct rows, so order errors would show.
    assert not np.allclose(sorted_[0], sorted_[1], atol=ENCODINGS_DIFFER)


def test_encode_uses_the_requested_tower_and_restores_train_mode(tiny_model_dir, setup):
    _, tok, _ = setup
    model = tiny_dual_encoder(tiny_model_dir, separate_towers=True).train()
    batch = tok(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.eval()(**batch, tower="passage").numpy()
    model.train()
    got = encode_texts(model, tok, TEXTS[:3], "passage", 64, 2, show_progress=False)
    np.testing.assert_allclose(got, expected, atol=ENCODED_IN_OTHER_BATCHES)
    assert not np.allclose(got, encode_texts(model, tok, TEXTS[:3], "query", 64, 2, show_progress=False),
                           atol=ENCODINGS_DIFFER)
    assert model.training


def test_encode_puts_each_towers_prefix_before_its_texts(tiny_model_dir, setup, tmp_path):
    """e5-style prefixes: encoding "x" with the query prefix "query: " is encoding "query: x"; the
    prefixes survive an export (and become sentence-transformers prompts `query` and `document`)."""
    from dist_lacl.export import save_dual_encoder
    from dist_lacl.loading import load_dual_encoder

    _, tok, _ = setup
    plain = tiny_dual_encoder(tiny_model_dir)
    prefixed = tiny_dual_encoder(tiny_model_dir)
    prefixed.prefixes = {"query": "query: ", "passage": "passage: "}
    for tower in ("query", "passage"):
        got = encode_texts(prefixed, tok, TEXTS[:3], tower, 64, 2, show_progress=False)
        expected = encode_texts(plain, tok, [f"{tower}: {t}" for t in TEXTS[:3]], tower, 64, 2, show_progress=False)
        np.testing.assert_allclose(got, expected, atol=ENCODED_ALIKE)
        assert not np.allclose(got, encode_texts(plain, tok, TEXTS[:3], tower, 64, 2, show_progress=False),
                               atol=ENCODINGS_DIFFER)
    folder = save_dual_encoder(prefixed, tok, tmp_path / "exported")
    assert load_dual_encoder(folder)[0].prefixes == prefixed.prefixes
    # keyed as sentence-transformers' encode_document and MTEB ask for the passage prompt
    assert json.loads((folder / "config_sentence_transformers.json").read_text())["prompts"] == \
        {"query": "query: ", "document": "passage: "}


def test_encode_bf16_on_cpu_is_close_and_fp16_is_refused(setup):
    model, tok, _ = setup
    fp32 = encode_texts(model, tok, TEXTS, "query", 32, 8, show_progress=False)
    bf16 = encode_texts(model, tok, TEXTS, "query", 32, 8, dtype="bf16", show_progress=False)
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, fp32, atol=HALF_PRECISION_EMBEDDINGS)
    assert resolve_dtype("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        resolve_dtype("fp16", torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_encode_half_precision_on_gpu_is_close_to_fp32(setup, tiny_model_dir, dtype):
    model, tok, paths = setup
    texts = read_corpus(paths["corpus"]).texts
    expected = encode_texts(model, tok, texts, "passage", 64, 4, show_progress=False)
    on_gpu = tiny_dual_encoder(tiny_model_dir).cuda()
    assert resolve_dtype("auto", torch.device("cuda")) in ("bf16", "fp16")
    got = encode_texts(on_gpu, tok, texts, "passage", 64, 4, dtype=dtype, show_progress=False)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=HALF_PRECISION_EMBEDDINGS)


def test_shards_are_resumable_and_load_in_order(setup, tmp_path, monkeypatch):
    model, tok, paths = setup
    corpus = read_corpus(paths["corpus"])
    assert encode_to_shards(model, tok, corpus, tmp_path, "passage", 64, 4, part_rows=10) is True
    ids, emb = load_embeddings(tmp_path)
    assert ids == corpus.ids
    np.testing.assert_allclose(emb, encode_texts(model, tok, corpus.texts, "passage", 64, 4), atol=ENCODED_ALIKE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb-0-of-1.npy", "ids-0-of-1.npy", "meta-0-of-1.json"]

    def fail(*args, **kwargs):
        raise AssertionError("a complete shard was encoded again")

    monkeypatch.setattr(encode_mod, "encode_texts", fail)
    assert encode_to_shards(model, tok, corpus, tmp_path, "passage", 64, 4) is False
    with pytest.raises(UserError, match=r"max_len: 64 in the directory, 32 now"):  # other settings: refused
        encode_to_shards(model, tok, corpus, tmp_path, "passage", 32, 4)


def test_incomplete_or_mixed_shard_directories_are_refused(tmp_path):
    (tmp_path / "meta-0-of-2.json").write_text("{}")
    (tmp_path / "parts-1-of-2").mkdir()
    with pytest.raises(UserError, match="shard 1 of 2 is not finished"):
        load_embeddings(tmp_path)
    (tmp_path / "meta-0-of-1.json").write_text("{}")
    with pytest.raises(UserError, match=r"world sizes \[1, 2\]"):
        open_shards(tmp_path)
    with pytest.raises(UserError, match="directory not found"):
        load_embeddings(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no meta"):
        load_embeddings(tmp_path / "empty")


def test_shard_bounds_cover_every_row_once():
    for n in (0, 1, 5, 31):
        for w in (1, 2, 3, 8):
            bounds = [shard_bounds(n, r, w) for r in range(w)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_evaluate_dev_finds_each_query_in_its_own_passage(setup):
    model, tok, paths = setup
    dev = load_dev_set(paths["queries"], paths["corpus"], paths["qrels"])
    # queries as long as passages, so each query's own passage has cosine 1
    result = evaluate_dev(model, tok, dev, metrics=["mrr@10", "recall@5"], query_max_len=64, batch_size=8)
    assert set(result) == {f"eval/{m}/{g}" for m in ("mrr@10", "recall@5")
                           for g in ("de", "en", "fr", "ja", "ru", "macro", "all")}
    assert all(v == pytest.approx(1.0) for v in result.values())


# --- two real gloo processes -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_rank_worker(rank, world_size, port, model_dir, paths, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group(timeout_s=60, backend="gloo")
    try:
        model, tok = tiny_dual_encoder(model_dir), AutoTokenizer.from_pretrained(model_dir)
        encode_to_shards(model, tok, read_corpus(paths["corpus"]), out_dir / "corpus", "passage", 64, 4)
        dev = load_dev_set(paths["queries"], paths["corpus"], paths["qrels"])
        result = evaluate_dev(model, tok, dev, metrics=["mrr@3", "ndcg@3"], batch_size=4)
        (out_dir / f"dev-{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_processes_encode_like_one(setup, tiny_model_dir, tmp_path):
    model, tok, paths = setup
    mp.spawn(_two_rank_worker, args=(2, _free_port(), tiny_model_dir, paths, tmp_path), nprocs=2, join=True)
    assert sorted(p.name for p in (tmp_path / "corpus").glob("*-of-2.*")) == [
        "emb-0-of-2.npy", "emb-1-of-2.npy", "ids-0-of-2.npy", "ids-1-of-2.npy", "meta-0-of-2.json",
        "meta-1-of-2.json"]
    assert np.load(tmp_path / "corpus" / "emb-0-of-2.npy").shape == (NUM_DOCS // 2, 32)

    corpus = read_corpus(paths["corpus"])
    encode_to_shards(model, tok, corpus, tmp_path / "one", "passage", 64, 4)
    ids_1, emb_1 = load_embeddings(tmp_path / "one")
    ids_2, emb_2 = load_embeddings(tmp_path / "corpus")
    assert ids_2 == ids_1 == corpus.ids
    np.testing.assert_allclose(emb_2, emb_1, atol=ENCODED_IN_OTHER_BATCHES)

    dev = load_dev_set(paths["queries"], paths["corpus"], paths["qrels"])
    expected = evaluate_dev(model, tok, dev, metrics=["mrr@3", "ndcg@3"], batch_size=4)
    for rank in range(2):  # the same result on both ranks, equal to one process's
        got = json.loads((tmp_path / f"dev-{rank}.json").read_text())
        assert got == pytest.approx(expected, abs=DEV_METRICS_ACROSS_RANKS)


# --- the commands ------------------------------------------------------------------------------


def test_encode_search_evaluate_commands(setup, tiny_model_dir, tmp_path, capsys):
    from dist_lacl.export import save_dual_encoder

    model, tok, paths = setup
    exported = save_dual_encoder(model, tok, tmp_path / "exported")
    for kind, source in (("queries", paths["queries"]), ("corpus", paths["corpus"])):
        run_command("encode", "--model", exported, "--input", source, "--kind", kind, "--output",
                    tmp_path / f"emb-{kind}", "--batch-size", 8)
    search_args = ["--query-emb", tmp_path / "emb-queries", "--corpus-emb", tmp_path / "emb-corpus"]
    run_command("search", *search_args, "--output", tmp_path / "run.trec", "--k", 5, "--block-rows", 7)

    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert len(lines) == len(TEXTS) * 5
    assert lines[0].split()[:4] == ["q0", "Q0", "d0", "1"] and lines[0].endswith(" dist-lacl")
    run = read_run(tmp_path / "run.trec")

    capsys.readouterr()
    run_command("evaluate", "--qrels", paths["qrels"], "--queries", paths["queries"], *search_args,
                "--metrics", "mrr@3,ndcg@5", "--report", tmp_path / "report.json", "--output-run",
                tmp_path / "run2.trec")
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["lang", "queries", "mrr@3", "ndcg@5"]
    assert [row.split()[0] for row in table.splitlines()[2:] if not row.startswith("-")] == [
        "de", "en", "fr", "ja", "ru", "macro", "all"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["metrics"]["all"]["num_queries"] == len(TEXTS)
    assert report["metrics"]["en"]["num_queries"] == 6
    qrels = {f"q{i}": {f"d{i}": 1, f"x{i % 5}": 0} for i in range(len(TEXTS))}
    theirs = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.5"}).evaluate(run)
    assert report["metrics"]["all"]["ndcg@5"] == pytest.approx(np.mean([v["ndcg_cut_5"] for v in theirs.values()]))

    capsys.readouterr()
    run_command("evaluate", "--qrels", paths["qrels"], "--queries", paths["queries"], "--run",
                tmp_path / "run2.trec", "--metrics", "mrr@3,ndcg@5", "--report", tmp_path / "report2.json")
    assert capsys.readouterr().out == table  # scoring the written run gives the same numbers
    assert json.loads((tmp_path / "report2.json").read_text())["metrics"] == report["metrics"]


def test_command_errors(setup, tmp_path):
    _, _, paths = setup
    with pytest.raises(UserError, match="expected --run FILE"):
        run_command("evaluate", "--qrels", paths["qrels"])
    with pytest.raises(UserError, match="--k: expected at least 10"):
        run_command("evaluate", "--qrels", paths["qrels"], "--query-emb", tmp_path, "--corpus-emb", tmp_path,
                    "--k", 5)
    with pytest.raises(UserError, match="--max-len"):
        run_command("encode", "--model", tmp_path, "--input", paths["queries"], "--kind", "queries", "--output",
                    tmp_path / "emb", "--max-len", 0)
    (tmp_path / "run.trec").write_text("nobody Q0 d1 1 0.5 tag\n")
    with pytest.raises(UserError, match="nothing to score"):
        run_command("evaluate", "--qrels", paths["qrels"], "--run", tmp_path / "run.trec")
