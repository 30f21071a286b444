"""Search equals brute-force numpy top-k (ids and scores), block-wise merged search equals one index, and
the GPU paths (single, sharded, fp16) on a machine that has GPUs."""

import numpy as np
import pytest
from equivalence import EXACT_SCORES, FP16_SEARCH_SCORES, GPU_SEARCH_SCORES, MERGED_SCORES, SEARCH_SCORES

from dist_lacl.errors import UserError
from dist_lacl.evaluation import index as index_mod
from dist_lacl.evaluation.index import GPU_MAX_K, IndexSpec, merge_topk, num_gpus, resolve_gpus, search
from dist_lacl.evaluation.shards import NpyRows

requires_gpu = pytest.mark.skipif(num_gpus() == 0, reason="needs faiss-gpu and a GPU (faiss sees none)")
requires_2_gpus = pytest.mark.skipif(num_gpus() < 2, reason="sharded search needs at least 2 GPUs")


def random_data(num_docs=600, num_queries=40, dim=16, seed=0):
    """Gaussian floats: all inner products distinct, so the exact top-k is unique."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((num_queries, dim)).astype(np.float32),
            rng.standard_normal((num_docs, dim)).astype(np.float32))


def numpy_topk(queries, corpus, k):
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, 1), rows


def assert_equal_to_numpy(result, queries, corpus, k, rtol=SEARCH_SCORES):
    scores, rows = result
    expected_scores, expected_rows = numpy_topk(queries, corpus, k)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, rtol=rtol, atol=rtol)


def test_flat_search_equals_numpy():
    queries, corpus = random_data()
    assert_equal_to_numpy(search(queries, [corpus], 10, IndexSpec(gpus="none")), queries, corpus, 10)


def test_blockwise_merged_search_equals_one_index():
    queries, corpus = random_data()
    spec = IndexSpec(gpus="none")
    whole = search(queries, [corpus], 25, spec)
    # uneven shards, then blocks of 64 rows inside each shard: 11 indexes, merged
    blocks = search(queries, [corpus[:123], corpus[123:400], corpus[400:]], 25, spec, block_rows=64)
    np.testing.assert_array_equal(blocks[1], whole[1])
    np.testing.assert_allclose(blocks[0], whole[0], rtol=MERGED_SCORES)
    assert_equal_to_numpy(blocks, queries, corpus, 25)


def test_k_larger_than_corpus_pads_with_minus_one():
    queries, corpus = random_data(num_docs=7)
    scores, rows = search(queries, [corpus[:3], corpus[3:]], 10, IndexSpec(gpus="none"), block_rows=2)
    assert_equal_to_numpy((scores[:, :7], rows[:, :7]), queries, corpus, 7)
    assert (rows[:, 7:] == -1).all() and np.isneginf(scores[:, 7:]).all()


def test_merge_topk_orders_ties_by_row():
    scores_a, rows_a = np.array([[0.9, 0.5, 0.5]], np.float32), np.array([[7, 3, 9]])
    scores_b, rows_b = np.array([[0.5, 0.5, -1.0]], np.float32), np.array([[1, 8, -1]])
    scores, rows = merge_topk(scores_a, rows_a, scores_b, rows_b, 4)
    np.testing.assert_array_equal(rows, [[7, 1, 3, 8]])
    np.testing.assert_array_equal(scores, np.array([[0.9, 0.5, 0.5, 0.5]], np.float32))
    scores, rows = merge_topk(scores_a[:, :1], rows_a[:, :1], scores_b[:, 2:], rows_b[:, 2:], 2)
    np.testing.assert_array_equal(rows, [[7, -1]])
    assert np.isneginf(scores[0, 1])


def test_blocks_read_from_float16_shards_keep_ties_in_row_order(tmp_path):
    """Shards on disk (float16, read block by block into one reused buffer) with tied scores: the result
    is the stable order (score descending, row ascending) of the whole corpus, whatever the blocks."""
    rng = np.random.default_rng(3)
    corpus = rng.integers(-1, 2, (300, 8)).astype(np.float32)  # small integers: exact, many equal scores
    corpus[150:] = corpus[:150]  # every row has a twin, in another shard
    queries = rng.integers(-1, 2, (25, 8)).astype(np.float32)
    paths = []
    for i, part in enumerate((corpus[:100], corpus[100:260], corpus[260:])):
        paths.append(tmp_path / f"emb-{i}.npy")
        np.save(paths[-1], part.astype(np.float16))
    for block_rows in (7, 64, None):
        result = search(queries, [NpyRows(p) for p in paths], 30, IndexSpec(gpus="none"), block_rows=block_rows)
        assert_equal_to_numpy(result, queries, corpus, 30, rtol=EXACT_SCORES)
    six = tmp_path / "six.npy"
    np.save(six, np.array([[2], [3], [3], [1], [3], [2]], np.float16))
    scores, rows = search(np.ones((1, 1), np.float32), [NpyRows(six)] * 2, 5, IndexSpec(gpus="none"),
                          block_rows=4)  # scores 2 3 3 1 3 2 2 3 3 1 3 2 in blocks 0-3, 4-5, 6-9, 10-11
    np.testing.assert_array_equal(rows, [[1, 2, 4, 7, 8]])
    np.testing.assert_array_equal(scores, [[3, 3, 3, 3, 3]])


def test_npy_rows_read_into_converts_through_a_small_staging_buffer(tmp_path):
    rows = np.arange(60, dtype=np.float16).reshape(20, 3)
    np.save(tmp_path / "x.npy", rows)
    out = np.full((9, 3), -1, np.float32)
    NpyRows(tmp_path / "x.npy").read_into(5, out, staging_rows=4)  # 4 + 4 + 1 rows
    np.testing.assert_array_equal(out, rows[5:14])
    with pytest.raises(ValueError, match="not in"):
        NpyRows(tmp_path / "x.npy").read_into(15, out)


def test_ivf_visiting_every_list_is_exact():
    queries, corpus = random_data()
    spec = IndexSpec(kind="ivf", gpus="none", nlist=8, nprobe=8)
    assert_equal_to_numpy(search(queries, [corpus], 10, spec), queries, corpus, 10)


@pytest.mark.parametrize("spec, min_recall", [
    (IndexSpec(kind="ivf", gpus="none", nlist=16, nprobe=4), 0.5),
    (IndexSpec(kind="hnsw", gpus="none", hnsw_m=16, ef_search=64), 0.9),
    (IndexSpec(kind="ivfpq", gpus="none", nlist=4, nprobe=4, pq_m=8, pq_bits=6), 0.3),
])
def test_approximate_indexes_find_most_true_neighbours(spec, min_recall):
    queries, corpus = random_data(num_docs=2000)
    _, rows = search(queries, [corpus], 10, spec)
    _, expected = numpy_topk(queries, corpus, 10)
    recall = np.mean([len(set(r) & set(e)) / 10 for r, e in zip(rows, expected)])
    assert recall >= min_recall  # random rows would give 10 / 2000


def test_index_parameter_errors():
    queries, corpus = random_data(num_docs=50)
    with pytest.raises(UserError, match="--nlist: expected at most the 50 rows"):
        search(queries, [corpus], 5, IndexSpec(kind="ivf", gpus="none", nlist=64))
    with pytest.raises(UserError, match="--pq-m: expected a divisor"):
        search(queries, [corpus], 5, IndexSpec(kind="ivfpq", gpus="none", nlist=2, pq_m=5))
    with pytest.raises(UserError, match="index"):
        search(queries, [corpus], 5, IndexSpec(kind="lsh"))
    with pytest.raises(UserError, match="--k: expected a positive integer, got 0"):
        search(queries, [corpus], 0)
    with pytest.raises(UserError, match="--block-rows: expected a positive integer, got 0"):
        search(queries, [corpus], 5, block_rows=0)


def test_gpu_choice_without_gpu(monkeypatch):
    monkeypatch.setattr(index_mod, "num_gpus", lambda: 0)
    assert resolve_gpus(IndexSpec(gpus="auto"), 10) == "none"
    for gpus in ("one", "all"):
        with pytest.raises(UserError, match="faiss"):
            resolve_gpus(IndexSpec(gpus=gpus), 10)


def test_gpu_choice_and_limits_with_gpus(monkeypatch):
    """The decisions only: which placement for which request (the GPU code itself runs in the gpu tests)."""
    monkeypatch.setattr(index_mod, "num_gpus", lambda: 2)
    assert resolve_gpus(IndexSpec(gpus="auto"), 10) == "all"
    assert resolve_gpus(IndexSpec(gpus="one"), 10) == "one"
    assert resolve_gpus(IndexSpec(gpus="auto"), GPU_MAX_K + 1) == "none"  # CPU path, logged
    assert resolve_gpus(IndexSpec(gpus="auto", kind="hnsw"), 10) == "none"
    with pytest.raises(UserError, match="k=2049 exceeds GPU faiss's limit of 2048"):
        resolve_gpus(IndexSpec(gpus="all"), GPU_MAX_K + 1)
    with pytest.raises(UserError, match="nprobe"):
        resolve_gpus(IndexSpec(gpus="one", kind="ivf", nprobe=4096), 10)
    monkeypatch.setattr(index_mod, "num_gpus", lambda: 1)
    assert resolve_gpus(IndexSpec(gpus="auto"), 10) == "one"


# --- real GPU paths ----------------------------------------------------------------------------


@pytest.mark.gpu
@requires_gpu
def test_single_gpu_equals_numpy():
    queries, corpus = random_data(num_docs=5000, dim=64)
    assert_equal_to_numpy(search(queries, [corpus], 100, IndexSpec(gpus="one")), queries, corpus, 100, rtol=GPU_SEARCH_SCORES)


@pytest.mark.gpu
@requires_2_gpus
def test_sharded_multi_gpu_equals_numpy_and_is_sharded():
    queries, corpus = random_data(num_docs=5001, dim=64)
    faiss = index_mod.faiss
    shards = faiss.downcast_index(index_mod.to_gpus(index_mod.build_index(corpus, IndexSpec()), "all", fp16=False))
    shard_sizes = [shards.at(i).ntotal for i in range(shards.count())]
    assert len(shard_sizes) == num_gpus() and sum(shard_sizes) == 5001  # split, not replicated
    assert_equal_to_numpy(search(queries, [corpus], 100, IndexSpec(gpus="all")), queries, corpus, 100, rtol=GPU_SEARCH_SCORES)


@pytest.mark.gpu
@requires_gpu
def test_gpu_blockwise_merge_equals_numpy():
    queries, corpus = random_data(num_docs=5000, dim=64)
    result = search(queries, [corpus[:2000], corpus[2000:]], 50, IndexSpec(gpus="auto"), block_rows=700)
    assert_equal_to_numpy(result, queries, corpus, 50, rtol=GPU_SEARCH_SCORES)
    assert index_mod.gpu_block_rows(64, fp16=False, placement="one") > 0


@pytest.mark.gpu
@requires_gpu
def test_gpu_fp16_close_to_numpy():
    queries, corpus = random_data(num_docs=5000, dim=64)
    scores, rows = search(queries, [corpus], 10, IndexSpec(gpus="auto", fp16=True))
    expected_scores, expected_rows = numpy_topk(queries, corpus, 10)
    assert (rows[:, 0] == expected_rows[:, 0]).mean() >= 0.9  # rounding may swap near-ties only
    np.testing.assert_allclose(scores, expected_scores, atol=FP16_SEARCH_SCORES)


@pytest.mark.gpu
@requires_gpu
def test_gpu_k_limit():
    queries, corpus = random_data(num_docs=3000, num_queries=4)
    with pytest.raises(UserError, match="2048"):
        search(queries, [corpus], GPU_MAX_K + 1, IndexSpec(gpus="one"))
    # auto takes the CPU path for a k the GPU cannot select
    assert_equal_to_numpy(search(queries, [corpus], GPU_MAX_K + 1, IndexSpec(gpus="auto")),
                          queries, corpus, GPU_MAX_K + 1)


@pytest.mark.gpu
@requires_gpu
def test_gpu_ivf_full_probe_equals_numpy():
    queries, corpus = random_data(num_docs=5000, dim=64)
    spec = IndexSpec(kind="ivf", gpus="auto", nlist=16, nprobe=16)
    assert_equal_to_numpy(search(queries, [corpus], 20, spec), queries, corpus, 20, rtol=GPU_SEARCH_SCORES)
