"""Training data at scale, unit level: the per-index epoch permutation, resume across world sizes, the
per-file Arrow cache (parallel build, atomic, shared, failure reporting) and the prefetching worker."""

import json
import logging
import time

import datasets
import numpy as np
import pytest
import torch
from helpers_data import ir_records, write_jsonl
from helpers_reference_step import write_config
from transformers import AutoTokenizer

from dist_lacl.data import cache_parts
from dist_lacl.data.batches import BatchStream, TrainBatches
from dist_lacl.data.order import KeyedPermutation
from dist_lacl.data.read import cache_entry, features, load_dataset, read_records
from dist_lacl.errors import DataError, UserError

# ------------------------------------------------------------------ the permutation


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 17, 64, 1000, 4097])
def test_permutation_is_a_bijection_of_0_to_n(n):
    values = KeyedPermutation(n, seed=7, epoch=3)[np.arange(n)]
    assert sorted(values.tolist()) == list(range(n))


def test_permutation_is_deterministic_and_differs_per_epoch_and_seed():
    n = 1000
    a = KeyedPermutation(n, 1, 0).slice(0, n)
    assert a == KeyedPermutation(n, 1, 0).slice(0, n)
    assert a != list(range(n))
    others = [KeyedPermutation(n, 1, 1).slice(0, n), KeyedPermutation(n, 2, 0).slice(0, n)]
    for b in others:  # two random permutations of 1000 share ~1 fixed position
        assert sum(x == y for x, y in zip(a, b)) < 20
    # Any window is computed alone, as the full permutation has it.
    assert KeyedPermutation(n, 1, 0).slice(500, 532) == a[500:532]


def test_permutation_is_well_mixed():
    """Where position 0's value lands over 2000 keys is roughly uniform over 8 bins of [0, 40)."""
    firsts = np.array([KeyedPermutation(40, seed, 0)[np.array([0])][0] for seed in range(2000)])
    counts = np.bincount(firsts // 5, minlength=8)
    assert counts.min() > 175 and counts.max() < 325, counts  # 250 expected; 5 sigma is about 74


def test_permutation_memory_is_independent_of_n():
    perm = KeyedPermutation(10**12, 0, 0)  # nothing of size n is allocated
    batch = perm.slice(10**11, 10**11 + 64)
    assert len(set(batch)) == 64 and all(0 <= v < 10**12 for v in batch)


def global_batches(stream_factory, world_size, steps, state=None):
    """The global batches (rank order concatenated) of `steps` steps on world_size ranks, and the state."""
    streams = [stream_factory(rank, world_size) for rank in range(world_size)]
    if state:
        for s in streams:
            s.load_state_dict(state)
    out = []
    for _ in range(steps):
        parts = [s.next_indices() for s in streams]
        assert len({epoch for _, epoch in parts}) == 1
        out.append(([i for idx, _ in parts for i in idx], parts[0][1]))
    assert len({json.dumps(s.state_dict()) for s in streams}) == 1  # every rank agrees on the position
    return out, streams[0].state_dict()


def test_stream_resumes_exactly_across_world_sizes_1_2_4():
    """13 examples, global batch 4: 3 steps an epoch (one example dropped). A run that changes world
    size 1 -> 2 -> 4 -> 2 -> 1 every 2 steps reads exactly the global batches of an uninterrupted one,
    across epoch boundaries."""
    def factory(rank, world_size):
        return BatchStream(13, 4, seed=5, rank=rank, world_size=world_size)

    straight, _ = global_batches(factory, 1, 10)
    chained, state = [], None
    for world_size in (1, 2, 4, 2, 1):
        part, state = global_batches(factory, world_size, 2, state)
        chained += part
    assert chained == straight
    epochs = [e for _, e in straight]
    assert epochs == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    for epoch in (0, 1, 2):  # within an epoch no example repeats
        seen = [i for idx, e in straight if e == epoch for i in idx]
        assert len(seen) == 12 == len(set(seen))
    assert state == {"epoch": 3, "offset": 4, "order": BatchStream.ORDER, "num_examples": 13,
                     "global_batch_size": 4}


# ------------------------------------------------------------------ the cache


def small_parts(monkeypatch, part_bytes=2000):
    """Parts of ~2 kB instead of 32-256 MB, so a small file is built in several parts."""
    monkeypatch.setattr(cache_parts, "MIN_PART_BYTES", part_bytes)
    monkeypatch.setattr(cache_parts, "MAX_PART_BYTES", part_bytes)


@pytest.mark.parametrize("num_proc", [1, 2])
def test_cache_built_in_parts_keeps_file_order(tmp_path, monkeypatch, num_proc):
    small_parts(monkeypatch)
    path = write_jsonl(tmp_path / "ir.jsonl", ir_records(60))
    ds = load_dataset(path, "ir", tmp_path / "cache", num_proc=num_proc)
    entry = cache_entry(path, "ir", tmp_path / "cache", "error")[0]
    assert len(entry.manifest()["parts"]) > 3
    # the reader's records as the cache's features hold them (a passage without a teacher score: None)
    expected = datasets.Dataset.from_list(list(read_records(path, "ir")), features=features("ir")).to_list()
    assert ds.to_list() == expected
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [entry.name]  # no temporary left


def test_cache_parts_hold_few_large_record_batches(tmp_path, monkeypatch):
    """Opening a cache reads every record batch's header (a page of the mapped file each, per rank), so
    the batches are RECORD_BATCH_ROWS rows, not datasets' default 1,000."""
    import pyarrow as pa

    monkeypatch.setattr(cache_parts, "RECORD_BATCH_ROWS", 1000)
    path = write_jsonl(tmp_path / "ir.jsonl", ir_records(2500))
    ds = load_dataset(path, "ir", tmp_path / "cache")
    entry = cache_entry(path, "ir", tmp_path / "cache", "error")[0]
    [part] = entry.manifest()["parts"]
    with pa.memory_map(str(entry.dir / part)) as source:
        sizes = [b.num_rows for b in pa.ipc.open_stream(source)]
    assert sizes == [1000, 1000, 500] and len(ds) == 2500


def test_cache_is_reused_and_keyed_by_the_file(tmp_path):
    path = write_jsonl(tmp_path / "ir.jsonl", ir_records(8))
    root = tmp_path / "cache"
    load_dataset(path, "ir", root)
    entry = cache_entry(path, "ir", root, "error")[0]
    built = (entry.dir / "MANIFEST.json").stat().st_mtime_ns
    load_dataset(path, "ir", root)
    assert (entry.dir / "MANIFEST.json").stat().st_mtime_ns == built  # reused, not rebuilt
    assert cache_entry(path, "ir", root, "skip")[0].name != entry.name  # another policy, another cache
    time.sleep(0.01)
    write_jsonl(path, ir_records(9))
    assert len(load_dataset(path, "ir", root)) == 9  # an edited file is read again
    assert len(list(root.iterdir())) == 2


def test_bad_record_is_reported_with_its_line_in_the_whole_file(tmp_path, monkeypatch):
    small_parts(monkeypatch)
    records = ir_records(60)
    lines = [json.dumps(r) for r in records]
    lines[47] = json.dumps({**records[47], "query": ""})
    path = tmp_path / "ir.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"^{path}, line 48: field 'query': expected a non-empty string"):
        load_dataset(path, "ir", tmp_path / "cache", num_proc=1)  # one process, still several parts
    entry = cache_entry(path, "ir", tmp_path / "cache", "error")[0]
    assert not entry.dir.exists() and not entry.lock.exists()
    assert not list((tmp_path / "cache").glob(".*.tmp-*"))


def test_skipped_records_are_counted_over_all_parts(tmp_path, monkeypatch, caplog):
    small_parts(monkeypatch)
    lines = [json.dumps(r) for r in ir_records(60)]
    for i in (5, 30, 58):
        lines[i] = "{not json"
    path = tmp_path / "ir.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(path, "ir", tmp_path / "cache", bad_records="skip", num_proc=1)
    assert len(ds) == 57
    assert f"skipped 3 malformed records (first: {path}, line 6: not valid JSON" in caplog.text


def test_a_crashed_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    small_parts(monkeypatch)
    path = write_jsonl(tmp_path / "ir.jsonl", ir_records(60))
    root = tmp_path / "cache"
    real = cache_parts.build_part

    def crash_on_part_3(job):
        if job[1].index == 3:
            raise OSError(28, "No space left on device")
        return real(job)

    monkeypatch.setattr(cache_parts, "build_part", crash_on_part_3)
    with pytest.raises(OSError):
        load_dataset(path, "ir", root, num_proc=1)
    entry = cache_entry(path, "ir", root, "error")[0]
    assert not entry.ready() and not list(root.glob(".*.tmp-*")) and not entry.lock.exists()
    # A waiting rank of that run is told what failed.
    (marker,) = root.glob(f".{entry.name}.failed-*")
    with pytest.raises(UserError, match="rank 0 failed to build the data cache: OSError"):
        entry.wait(marker.name.rsplit("-", 1)[1], stale_s=5)
    monkeypatch.setattr(cache_parts, "build_part", real)
    assert len(load_dataset(path, "ir", root)) == 60


def test_waiting_rank_gives_up_when_the_builder_stops_beating(tmp_path):
    path = write_jsonl(tmp_path / "ir.jsonl", ir_records(4))
    entry = cache_entry(path, "ir", tmp_path, "error")[0]
    entry.lock.mkdir()
    (entry.lock / "heartbeat").touch()
    start = time.time()
    with pytest.raises(UserError, match="no process has been building it for"):
        entry.wait("nonce", stale_s=1.0)
    assert time.time() - start < 5
    # ... and a new build takes the stale lock over.
    entry.build(features("ir"), read_records, 1, "n2", stale_s=0.5)
    assert entry.ready() and not entry.lock.exists()


# ------------------------------------------------------------------ the prefetching worker


def batches_of(cfg, tokenizer, steps, state=None):
    data = TrainBatches(cfg, tokenizer, 0, 1)
    if state:
        data.load_state_dict(state)
    return [data.next() for _ in range(steps)], data


def same(a, b):
    batch_a, meta_a = a
    batch_b, meta_b = b
    return meta_a == meta_b and batch_a.keys() == batch_b.keys() and all(
        torch.equal(batch_a[r][k], batch_b[r][k]) for r in batch_a for k in batch_a[r])


@pytest.mark.parametrize("depth", [1, 2])
def test_prefetch_gives_the_same_batches_and_an_exact_position(tmp_path, tiny_model_dir, training_data, depth):
    _, off = write_config(tmp_path, tiny_model_dir, training_data)
    off.data.prefetch = 0
    _, on = write_config(tmp_path, tiny_model_dir, training_data)
    on.data.prefetch = depth
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected, plain = batches_of(off, tokenizer, 12)  # 32 IR examples, 4 a step: crosses an epoch
    got, prefetched = batches_of(on, tokenizer, 5)
    assert all(same(a, b) for a, b in zip(got, expected))
    # The streams have advanced past step 5 for the prefetched steps, the saved position has not.
    assert prefetched.ir.streams[0].position.offset > prefetched.state_dict()["ir"]["offset"] == 20
    state = prefetched.state_dict()
    _, replain = batches_of(off, tokenizer, 5)
    assert state == replain.state_dict()
    rest, _ = batches_of(on, tokenizer, 7, state)  # resume through the prefetcher
    assert all(same(a, b) for a, b in zip(rest, expected[5:]))
    assert plain.state_dict() == batches_of(on, tokenizer, 12)[1].state_dict()


def test_prefetch_error_reaches_the_training_loop(tmp_path, tiny_model_dir, training_data):
    _, cfg = write_config(tmp_path, tiny_model_dir, training_data)
    data = TrainBatches(cfg, AutoTokenizer.from_pretrained(tiny_model_dir), 0, 1)

    def broken(*args, **kwargs):
        raise RuntimeError("tokenizer failed")

    data.prefetcher.make = broken
    with pytest.raises(RuntimeError, match="tokenizer failed"):
        data.next()


def test_prefetcher_close_cancels_the_waiting_steps_and_joins_the_thread():
    """What runs at exit (atexit): no prefetch thread is left inside tokenizer or torch code while the
    interpreter finalises."""
    import threading

    from dist_lacl.data.prefetch import Prefetcher

    started, release = threading.Event(), threading.Event()

    def make(plan):
        started.set()
        release.wait(10)
        return plan

    prefetcher = Prefetcher(make)
    first, second = prefetcher.submit(1), prefetcher.submit(2)
    assert started.wait(10)
    threading.Timer(0.2, release.set).start()
    prefetcher.close()
    assert first.result(timeout=0) == 1 and second.cancelled() and not prefetcher.thread.is_alive()
