"""Gradient cache == no cache: the loss and every parameter's gradient, with dropout on, in one process,
for a step that uses all three losses (the real data pipeline, the real loss function)."""

import contextlib

import pytest
import torch
from equivalence import FLOAT64_GRADS, FLOAT64_LOSS, FP32_GRADS, FP32_LOSS, assert_same_grads
from helpers_grad_cache import cached_step, grad_cache_for, make_step, uncached_step
from transformers import AutoTokenizer

from dist_lacl.config import config_from_dict
from dist_lacl.errors import ConfigError
from dist_lacl.grad_cache import GradCache, RandomState
from dist_lacl.objective import PASSAGE, QUERY, Objective


@pytest.mark.parametrize("keep_last_graph", [True, False], ids=["last-graph-kept", "all-re-forwarded"])
@pytest.mark.parametrize("towers", [{}, {"shared_encoder": False, "aux_towers": "both"}],
                         ids=["shared", "separate-towers"])
def test_cached_equals_uncached_with_dropout(tiny_model_dir, training_data, tmp_path, towers, keep_last_graph):
    cfg, model, jobs = make_step(tiny_model_dir, training_data, tmp_path, **towers)
    assert {QUERY, PASSAGE} < set(jobs) and any(j.role == "mono" for j in jobs)
    loss_c, terms_c, grads_c = cached_step(cfg, model, jobs, keep_last_graph=keep_last_graph)
    loss_u, terms_u, grads_u = uncached_step(cfg, model, jobs)
    assert loss_c == pytest.approx(loss_u, rel=FP32_LOSS)
    assert terms_c.terms.semantic is not None and terms_c.terms.language is not None
    assert terms_c.scalars() == pytest.approx(terms_u.scalars(), rel=FP32_LOSS)
    assert_same_grads(grads_c, grads_u, **FP32_GRADS)
    # Dropout really was on: two cached steps from different seeds differ.
    model.zero_grad()
    torch.manual_seed(7)
    assert grad_cache_for(cfg, model, 2).compute_loss(jobs).loss.item() != pytest.approx(loss_c, rel=FP32_LOSS)


def test_the_kept_last_chunk_is_not_re_forwarded_and_the_rng_stream_is_unchanged(tiny_model_dir, training_data,
                                                                                 tmp_path):
    """One forward fewer per step, and the generator ends where it ends without the kept graph (a
    resumed run draws the same masks afterwards)."""
    cfg, model, jobs = make_step(tiny_model_dir, training_data, tmp_path)
    calls, states = {}, {}
    for keep in (True, False):
        calls[keep] = 0

        def encode(job, x, keep=keep):
            calls[keep] += 1
            return model(**x, tower=job.tower)

        torch.manual_seed(123)
        gc = GradCache(encode, Objective(cfg.loss), lambda loss: loss.backward(), chunk_size=2,
                       keep_last_graph=keep)
        gc.backward(gc.compute_loss(jobs))
        states[keep] = torch.get_rng_state()
    chunks = sum(len(gc.split(x)[0]) for x in jobs.values())
    assert calls == {True: 2 * chunks - 1, False: 2 * chunks}
    assert torch.equal(states[True], states[False])


def test_without_rng_replay_the_gradients_differ(tiny_model_dir, training_data, tmp_path, monkeypatch):
    """The control: if the re-forward draws fresh dropout masks, the cache no longer matches."""
    cfg, model, jobs = make_step(tiny_model_dir, training_data, tmp_path)
    _, _, reference = uncached_step(cfg, model, jobs)
    monkeypatch.setattr(RandomState, "replay", lambda self: contextlib.nullcontext())
    _, _, no_replay = cached_step(cfg, model, jobs)
    with pytest.raises(AssertionError):
        assert_same_grads(no_replay, reference, **FP32_GRADS)


def test_cache_equals_one_full_batch_pass_without_dropout(tiny_model_dir, training_data, tmp_path):
    """chunk_size=0 (no cache: each batch in one forward) == chunk size 2, with dropout off.

    In float64: a random tiny encoder maps all inputs to nearly the same vector, so each parameter
    gradient is a near-cancelling sum of large per-example terms, and in fp32 the different batching of
    the two paths shows up at 1e-5..1e-2 of the (tiny) result. In float64 they agree to 1e-9.
    """
    cfg, model, jobs = make_step(tiny_model_dir, training_data, tmp_path)
    model.eval().double()
    loss_full, _, grads_full = cached_step(cfg, model, jobs, chunk_size=0)
    loss_chunked, _, grads_chunked = cached_step(cfg, model, jobs, chunk_size=2)
    assert loss_chunked == pytest.approx(loss_full, rel=FLOAT64_LOSS)
    assert_same_grads(grads_chunked, grads_full, **FLOAT64_GRADS)


def test_split_trims_each_chunk_to_its_longest_row():
    gc = GradCache(encode=None, loss_fn=None, backward_fn=None, chunk_size=2, sort_by_length=False)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    chunks, order = gc.split({"input_ids": mask * 7, "attention_mask": mask})
    assert [c["attention_mask"].tolist() for c in chunks] == [[[1, 1, 1], [1, 0, 0]], [[1, 1]]]
    assert order.tolist() == [0, 1, 2]


def test_split_sorts_rows_by_length_so_chunks_hold_less_padding():
    gc = GradCache(encode=None, loss_fn=None, backward_fn=None, chunk_size=2)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
    ids = torch.arange(5)[:, None] * mask  # row i holds token id i
    chunks, order = gc.split({"input_ids": ids, "attention_mask": mask})
    assert order.tolist() == [0, 2, 3, 1, 4]  # longest first; rows 1 and 4 tie and keep their order
    assert [tuple(c["input_ids"].shape) for c in chunks] == [(2, 4), (2, 2), (1, 1)]  # 14 positions, not 20
    assert torch.cat([c["input_ids"][:, 0] for c in chunks]).tolist() == order.tolist()


def test_sorted_chunks_give_the_representations_and_grads_in_input_order():
    """Representations come back in the batch's row order, and each row's cached gradient reaches the
    chunk that holds that row: a loss that weights row i by i gives row i's parameter gradient x i."""
    weight = torch.nn.Parameter(torch.tensor(1.0))
    encode = lambda name, x: weight * x["input_ids"][:, :1].float()  # noqa: E731
    seen = {}

    def loss_fn(reps):
        seen["reps"] = reps["x"].detach().flatten().tolist()
        return (reps["x"].flatten() * torch.arange(5.0)).sum(), None

    mask = torch.tensor([[1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    ids = torch.tensor([[10], [20], [30], [40], [50]]) * mask
    gc = GradCache(encode, loss_fn, backward_fn=lambda loss: loss.backward(), chunk_size=2)
    cache = gc.compute_loss({"x": {"input_ids": ids, "attention_mask": mask}})
    gc.backward(cache)
    assert seen["reps"] == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert cache.loss.item() == weight.grad.item() == 0 * 10 + 1 * 20 + 2 * 30 + 3 * 40 + 4 * 50


def test_prefixes_start_every_query_passage_and_auxiliary_sentence(tiny_model_dir, training_data, tmp_path):
    """model.query_prefix before queries and parallel/monolingual sentences, model.passage_prefix
    before passages: each row is the unprefixed row with the prefix's tokens after the first token."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    _, _, plain = make_step(tiny_model_dir, training_data, tmp_path / "plain")
    _, _, prefixed = make_step(tiny_model_dir, training_data, tmp_path / "prefixed",
                               query_prefix="query: ", passage_prefix="passage: ")
    assert plain.keys() == prefixed.keys() and len(plain) >= 4
    for job in plain:
        prefix = "passage: " if job == PASSAGE else "query: "
        prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        for row, (ids, mask) in enumerate(zip(prefixed[job]["input_ids"], prefixed[job]["attention_mask"])):
            got = ids[mask.bool()].tolist()
            expected = plain[job]["input_ids"][row][plain[job]["attention_mask"][row].bool()].tolist()
            assert got[1:1 + len(prefix_ids)] == prefix_ids, job
            body = got[1 + len(prefix_ids):-1]
            assert body == expected[1:-1][:len(body)], job  # the same text (cut earlier by the max length)


def test_token_budget_chunks_equal_uncached_with_dropout(tiny_model_dir, training_data, tmp_path):
    """train.chunk_tokens: chunks of varying row counts, same equivalence as row chunks."""
    cfg, model, jobs = make_step(tiny_model_dir, training_data, tmp_path)
    gc = grad_cache_for(cfg, model, 0, chunk_tokens=96)
    chunks = [c["input_ids"] for x in jobs.values() for c in gc.split(x)[0]]
    assert len({len(c) for c in chunks}) >= 3  # the budget really gives chunks of different sizes
    assert all(c.numel() <= 96 for c in chunks)
    loss_c, terms_c, grads_c = cached_step(cfg, model, jobs, chunk_size=0, chunk_tokens=96)
    loss_u, terms_u, grads_u = uncached_step(cfg, model, jobs, chunk_size=0, chunk_tokens=96)
    assert loss_c == pytest.approx(loss_u, rel=FP32_LOSS)
    assert terms_c.scalars() == pytest.approx(terms_u.scalars(), rel=FP32_LOSS)
    assert_same_grads(grads_c, grads_u, **FP32_GRADS)


def test_packed_token_budget_chunks_equal_uncached_with_dropout(tiny_model_dir, training_data, tmp_path):
    """model.padding_free on CPU (rows under SDPA's block-diagonal mask) with train.chunk_tokens: the budget
    counts packed positions, so short rows share a row and a chunk holds more rows; the cache stays exact."""
    cfg, model, jobs = make_step(tiny_model_dir, training_data, tmp_path, padding_free=True)
    assert model.padding_free and model.query_encoder.config._attn_implementation == "sdpa"
    packed = grad_cache_for(cfg, model, 0, chunk_tokens=128)
    padded = GradCache(encode=None, loss_fn=None, backward_fn=None, chunk_tokens=128)
    lengths = sorted(jobs[QUERY]["attention_mask"].sum(1).tolist(), reverse=True)
    assert len(packed.chunk_sizes(lengths)) < len(padded.chunk_sizes(lengths))
    loss_c, terms_c, grads_c = cached_step(cfg, model, jobs, chunk_size=0, chunk_tokens=128)
    loss_u, terms_u, grads_u = uncached_step(cfg, model, jobs, chunk_size=0, chunk_tokens=128)
    assert loss_c == pytest.approx(loss_u, rel=FP32_LOSS)
    assert terms_c.scalars() == pytest.approx(terms_u.scalars(), rel=FP32_LOSS)
    assert_same_grads(grads_c, grads_u, **FP32_GRADS)


def test_split_by_packed_token_budget():
    """Budget 16, packed: 8 8 | 5 3 3 2 (rows of 5: [5] [3 2] [3], 15 positions); padded: 8 8 | 5 3 3 | 2."""
    lengths = [8, 8, 5, 3, 3, 2]
    packed = GradCache(encode=None, loss_fn=None, backward_fn=None, chunk_tokens=16, packed=True)
    padded = GradCache(encode=None, loss_fn=None, backward_fn=None, chunk_tokens=16)
    assert packed.chunk_sizes(lengths) == [2, 4]
    assert padded.chunk_sizes(lengths) == [2, 3, 1]
    # Unsorted (a longer row after shorter ones widens the rows): 3 3 fill one row of 3 each (6), an 8 makes
    # rows of 8: [8] [3 3] = 16 fits; the next 8 would need a third row.
    assert packed.chunk_sizes([3, 3, 8, 8]) == [3, 1]


def test_split_by_packed_token_budget_in_rows_of_a_fixed_length():
    """Budget 24, six sequences of 8: rows of 16 (model.packed_row_length) hold two each, so a chunk is one
    row (16; a second row would make 32): 2 | 2 | 2. Rows as long as the longest (8) hold one: 3 | 3."""
    fixed = GradCache(encode=None, loss_fn=None, backward_fn=None, chunk_tokens=24, packed=True, row_length=16)
    longest = GradCache(encode=None, loss_fn=None, backward_fn=None, chunk_tokens=24, packed=True)
    assert fixed.chunk_sizes([8] * 6) == [2, 2, 2]
    assert longest.chunk_sizes([8] * 6) == [3, 3]
    assert fixed.chunk_sizes([16, 5, 5, 5, 1]) == [1, 4]  # [16] | [5 5 5 1] fill one row of 16


def test_split_by_token_budget():
    """Budget 8, rows sorted by length 4 4 3 2 2 1 1 1: chunks 4 4 (2 x 4) | 3 2 (a third row: 3 x 3 > 8)
    | 2 1 1 1 (4 x 2)."""
    gc = GradCache(encode=None, loss_fn=None, backward_fn=None, chunk_tokens=8)
    lengths = [2, 4, 1, 3, 4, 1, 2, 1]
    mask = (torch.arange(4)[None] < torch.tensor(lengths)[:, None]).long()
    chunks, order = gc.split({"input_ids": mask, "attention_mask": mask})
    assert [tuple(c["input_ids"].shape) for c in chunks] == [(2, 4), (2, 3), (4, 2)]
    assert [lengths[i] for i in order.tolist()] == [4, 4, 3, 2, 2, 1, 1, 1]
    assert gc.chunk_sizes([9, 3]) == [1, 1]  # a row longer than the budget gets a chunk of its own


def test_token_budget_config_is_validated(training_data):
    base = {"data": {"train_ir": training_data["train_ir"], "passage_max_len": 64},
            "loss": {"semantic_weight": 0.0, "language_weight": 0.0}}
    assert config_from_dict({**base, "train": {"chunk_size": 0, "chunk_tokens": 512}}).train.chunk_tokens == 512
    with pytest.raises(ConfigError, match=r"train.chunk_tokens: expected train.chunk_size 0 with it"):
        config_from_dict({**base, "train": {"chunk_tokens": 512}})  # chunk_size left at its default 8
    with pytest.raises(ConfigError, match=r"train.chunk_tokens: expected at least the longest max length"):
        config_from_dict({**base, "train": {"chunk_size": 0, "chunk_tokens": 32}})
    with pytest.raises(ConfigError, match=r"train.chunk_tokens: expected an integer >= 0"):
        config_from_dict({**base, "train": {"chunk_size": 0, "chunk_tokens": -1}})


def test_packed_row_length_config_is_validated(training_data):
    base = {"data": {"train_ir": training_data["train_ir"], "passage_max_len": 64},
            "loss": {"semantic_weight": 0.0, "language_weight": 0.0}}
    packed = {"padding_free": True, "packed_row_length": 128}
    cfg = config_from_dict({**base, "model": packed, "train": {"chunk_size": 0, "chunk_tokens": 512}})
    assert cfg.model.packed_row_length == 128
    with pytest.raises(ConfigError, match=r"model.packed_row_length: expected model.padding_free true with it"):
        config_from_dict({**base, "model": {"packed_row_length": 128}})
    with pytest.raises(ConfigError, match=r"model.packed_row_length: expected at least the longest max length"):
        config_from_dict({**base, "model": {**packed, "packed_row_length": 32}})
    with pytest.raises(ConfigError, match=r"model.packed_row_length: expected an integer >= 0"):
        config_from_dict({**base, "model": {**packed, "packed_row_length": -1}})
    with pytest.raises(ConfigError, match=r"train.chunk_tokens: expected at least model.packed_row_length"):
        config_from_dict({**base, "model": packed, "train": {"chunk_size": 0, "chunk_tokens": 96}})
