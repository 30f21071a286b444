"""The plain-torch exact search (GPU search without faiss-gpu) equals faiss flat search on CPU: the same
rows and scores, equal scores in numpy's stable order (faiss's heap picks its own rows among those
tied at the k-th score), whatever the tiling and the number of devices; and `search` routes to it where
faiss-gpu is missing and torch sees a GPU."""

import numpy as np
import pytest
import torch
from equivalence import FP16_SEARCH_SCORES, GPU_SEARCH_SCORES, SEARCH_SCORES

from dist_lacl.errors import UserError
from dist_lacl.evaluation import index as index_mod
from dist_lacl.evaluation import torch_search
from dist_lacl.evaluation.index import IndexSpec, resolve_gpus, search, search_flat_cpu


def gaussian(num_docs=700, num_queries=37, dim=24, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((num_queries, dim)).astype(np.float32),
            rng.standard_normal((num_docs, dim)).astype(np.float32))


def tied(num_docs=300, num_queries=25, dim=8, seed=3):
    """Small integers (exact in float32, many equal scores), every row with a twin far from it."""
    rng = np.random.default_rng(seed)
    corpus = rng.integers(-1, 2, (num_docs, dim)).astype(np.float32)
    corpus[num_docs // 2:] = corpus[:num_docs // 2]
    return rng.integers(-1, 2, (num_queries, dim)).astype(np.float32), corpus


@pytest.mark.parametrize("devices", [["cpu"], ["cpu"] * 3])
def test_equals_faiss_flat_on_random_data(devices):
    queries, corpus = gaussian()
    expected_scores, expected_rows = search_flat_cpu(queries, corpus, 50)
    scores, rows = torch_search.search_flat(queries, corpus, 50, devices, query_batch=16)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, rtol=SEARCH_SCORES, atol=SEARCH_SCORES)


def assert_faiss_ties(scores, rows, expected_scores, expected_rows):
    """Equal to faiss flat search up to the order of equal scores and the choice among rows tied at the
    k-th score: faiss's heap keeps some of them, torch the lowest (checked against numpy's stable sort)."""
    np.testing.assert_array_equal(scores, expected_scores)
    kth = scores[:, -1:]
    for q in range(len(rows)):
        above = scores[q] > kth[q]
        assert set(rows[q][above]) == set(expected_rows[q][above])


@pytest.mark.parametrize("devices, tile_bytes", [(["cpu"], 2**30), (["cpu"] * 4, 2**30), (["cpu"] * 2, 4 * 25 * 7)])
def test_ties_in_stable_order(monkeypatch, devices, tile_bytes):
    """Equal scores: score descending, then row ascending, and at the k-th place the lowest rows of the
    tie (numpy's stable order), whatever the tiles (of 7 rows: topk's own choice differs) and devices."""
    monkeypatch.setattr(torch_search, "SCORE_TILE_BYTES", tile_bytes)
    queries, corpus = tied()
    scores, rows = torch_search.search_flat(queries, corpus, 30, devices)
    stable = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :30]
    np.testing.assert_array_equal(rows, stable)
    assert_faiss_ties(scores, rows, *search_flat_cpu(queries, corpus, 30))


def test_tile_topk_settles_the_kth_tie_by_row():
    scores = torch.tensor([[1.0, 3.0, 2.0, 3.0, 2.0, 2.0]])
    values, rows = torch_search.tile_topk(scores, 4, first_row=10)
    assert rows.tolist() == [[11, 13, 12, 14]] and values.tolist() == [[3.0, 3.0, 2.0, 2.0]]


def test_fp16_is_close():
    queries, corpus = gaussian(dim=16)
    expected_scores, expected_rows = search_flat_cpu(queries, corpus, 10)
    scores, rows = torch_search.search_flat(queries, corpus, 10, ["cpu"], fp16=True)
    assert (rows[:, 0] == expected_rows[:, 0]).mean() >= 0.9
    np.testing.assert_allclose(scores, expected_scores, atol=FP16_SEARCH_SCORES)


@pytest.fixture
def torch_gpus(monkeypatch):
    """`search` as on a machine with 2 CUDA GPUs and faiss-cpu, the GPUs played by the CPU."""
    monkeypatch.setattr(index_mod, "num_gpus", lambda: 0)
    monkeypatch.setattr(torch_search, "num_cuda_devices", lambda: 2)
    original = torch_search.search_flat
    calls = []

    def on_cpu(queries, block, k, devices, *args):
        calls.append(list(devices))
        return original(queries, block, k, ["cpu"] * len(devices), *args)

    monkeypatch.setattr(torch_search, "search_flat", on_cpu)
    return calls


def test_search_without_faiss_gpu_routes_to_torch(torch_gpus):
    queries, corpus = tied(num_docs=400)
    expected = search(queries, [corpus], 40, IndexSpec(gpus="none"))
    result = search(queries, [corpus[:150], corpus[150:]], 40, IndexSpec(gpus="auto"), block_rows=64)
    assert torch_gpus and all(devices == ["cuda:0", "cuda:1"] for devices in torch_gpus)
    stable = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :40]
    np.testing.assert_array_equal(result[1], stable)
    assert_faiss_ties(*result, *expected)
    search(queries, [corpus], 5, IndexSpec(gpus="one"))
    assert torch_gpus[-1] == ["cuda:0"]


def test_placement_with_torch_backend(torch_gpus):
    assert index_mod.gpu_backend() == "torch"
    assert resolve_gpus(IndexSpec(gpus="auto"), 10) == "all"
    assert resolve_gpus(IndexSpec(gpus="auto"), index_mod.GPU_MAX_K + 1) == "all"  # no faiss k limit
    assert resolve_gpus(IndexSpec(gpus="auto", kind="hnsw"), 10) == "none"
    with pytest.raises(UserError, match="index ivf on GPU needs faiss-gpu"):
        resolve_gpus(IndexSpec(gpus="one", kind="ivf"), 10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU visible to torch")
def test_cuda_equals_faiss_flat():
    queries, corpus = gaussian(num_docs=20000, num_queries=300, dim=64)
    expected_scores, expected_rows = search_flat_cpu(queries, corpus, 100)
    devices = [f"cuda:{d}" for d in range(torch.cuda.device_count())]
    scores, rows = torch_search.search_flat(queries, corpus, 100, devices)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, rtol=GPU_SEARCH_SCORES, atol=GPU_SEARCH_SCORES)
    queries, corpus = tied(num_docs=5000)
    scores, rows = torch_search.search_flat(queries, corpus, 60, devices)
    np.testing.assert_array_equal(rows, np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :60])
    assert_faiss_ties(scores, rows, *search_flat_cpu(queries, corpus, 60))
