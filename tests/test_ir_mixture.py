"""Several IR datasets (data.train_ir as a list): a one-entry list is today's single path bit for bit;
each global batch comes from one dataset (or each query from its own: data.ir_batches=mixed) in the
weights' or the sizes' proportions; a resume on another world size continues every dataset's stream."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers_data import ir_records, write_jsonl
from helpers_launch import run
from helpers_train import scalars, train_args
from transformers import AutoTokenizer

from dist_lacl.config import config_from_dict, load_config
from dist_lacl.config_ir import IRSource
from dist_lacl.data.batches import BatchStream, TrainBatches
from dist_lacl.data.mixture import IRMixture, dataset_probabilities
from dist_lacl.errors import ConfigError, UserError
from dist_lacl.false_negatives import stable_key

SIZES = {"small": 8, "mid": 12, "large": 16}  # the three datasets' queries


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("three")
    return {name: str(write_jsonl(folder / f"{name}.jsonl", ir_records(n, seed=i)))
            for i, (name, n) in enumerate(SIZES.items())}


def config(model_dir, train_ir, prefetch=0, **data):
    return config_from_dict({"model": {"name_or_path": str(model_dir)},
                             "data": {"train_ir": train_ir, "train_group_size": 2, "prefetch": prefetch, **data},
                             "loss": {"semantic_weight": 0, "language_weight": 0},
                             "train": {"ir_batch_size": 4, "seed": 5}})


def weighted(paths, weights=(1, 2, 1)):
    return [{"path": p, "weight": w} for p, w in zip(paths.values(), weights)]


def rows(batch, role):
    """A role's token ids row by row, without padding (ranks pad to their own longest row)."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch[role]["input_ids"], batch[role]["attention_mask"])]


def within_sampling_error(counts, probabilities, draws):
    """Every observed share within 4 standard errors of its probability."""
    for n, p in zip(counts, probabilities):
        assert abs(n / draws - p) < 4 * math.sqrt(p * (1 - p) / draws), (counts, probabilities)


# ------------------------------------------------------------------ a one-entry list is a single path


def test_a_one_entry_list_is_the_single_path_bit_for_bit(tiny_model_dir, training_data):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    path = training_data["train_ir"]
    single = config(tiny_model_dir, path, prefetch=1)
    listed = config(tiny_model_dir, [{"path": path, "name": "only"}], prefetch=1)
    assert listed.data.train_ir == [IRSource(path, "auto", "only")] and single.data.ir_sources()[0].name == "ir"
    a, b = TrainBatches(single, tokenizer, 1, 2), TrainBatches(listed, tokenizer, 1, 2)
    by_hand = BatchStream(32, 4, 5, 1, 2)  # train.seed 5, rank 1 of 2: today's stream, built by hand
    for _ in range(10):  # 8 steps an epoch: crosses one
        (batch_a, meta_a), (batch_b, meta_b) = a.next(), b.next()
        assert batch_a.keys() == batch_b.keys() and all(
            torch.equal(batch_a[r][k], batch_b[r][k]) for r in batch_a for k in batch_a[r])
        assert {**meta_a, "ir_source": ["only", "only"]} == meta_b and meta_a["ir_source"] == ["ir", "ir"]
        assert meta_a["epoch"] == by_hand.next_indices()[1]
    assert a.state_dict() == b.state_dict() and a.state_dict()["ir"] == by_hand.state_dict()
    assert a.ir_counts() == {"data/ir/ir": 40} and b.ir_counts() == {"data/ir/only": 40}
    # Either spelling resumes the other's checkpoint.
    b.load_state_dict(a.state_dict())


# ------------------------------------------------------------------ the draws (no model, no data)


def mixture(sizes, weights=None, alpha=1.0, mode="one", rank=0, world_size=1, batch=4):
    sources = [IRSource(f"{name}.jsonl", weight=None if weights is None else w)
               for name, w in zip(sizes, weights or [None] * len(sizes))]
    return IRMixture(sources, [range(n) for n in sizes.values()], batch, 5, alpha, mode, rank, world_size)


def test_every_global_batch_is_from_one_dataset_in_the_weights_proportions():
    sizes = {"small": 40, "mid": 60, "large": 100}
    data = mixture(sizes, weights=[1, 2, 5])
    # The dataset of step s is a pure function of (seed, s): 10^4 global batches without reading any.
    chosen = data.choose(np.arange(10_000))
    within_sampling_error(np.bincount(chosen), [1 / 8, 2 / 8, 5 / 8], 10_000)
    # The streams follow it: each batch from the drawn dataset alone, every example once an epoch.
    steps = 1_000
    draws = [data.next_indices() for _ in range(steps)]
    assert [set(d.sources) for d in draws] == [{d} for d in chosen[:steps].tolist()]
    small = [i for d in draws if d.sources[0] == 0 for i in d.indices]  # 40 queries: 10 batches an epoch
    assert sorted(small[:40]) == list(range(40)) and sorted(small[40:80]) == list(range(40))
    assert data.examples_drawn(data.state_dict()) == {name: 4 * int(n) for name, n in
                                                      zip(sizes, np.bincount(chosen[:steps]))}
    # The other ranks draw the same datasets, their own rows.
    ranks = [mixture(sizes, weights=[1, 2, 5], rank=r, world_size=2) for r in (0, 1)]
    for step in range(200):
        halves = [r.next_indices() for r in ranks]
        assert halves[0].sources + halves[1].sources == draws[step].sources
        assert halves[0].indices + halves[1].indices == draws[step].indices


def test_without_weights_datasets_are_drawn_by_size_to_the_alpha():
    sizes = {"a": 100, "b": 400, "c": 1600}
    sources = [IRSource(f"{n}.jsonl") for n in sizes]
    assert dataset_probabilities(sources, list(sizes.values()), 0.5) == pytest.approx([1 / 7, 2 / 7, 4 / 7])
    assert dataset_probabilities(sources, list(sizes.values()), 1.0) == pytest.approx([1 / 21, 4 / 21, 16 / 21])
    assert dataset_probabilities(sources, list(sizes.values()), 0.0) == pytest.approx([1 / 3] * 3)
    data = mixture(sizes, alpha=0.5)
    within_sampling_error(np.bincount(data.choose(np.arange(10_000))), [1 / 7, 2 / 7, 4 / 7], 10_000)


def test_mixed_batches_draw_each_query_and_read_every_example_once_an_epoch():
    sizes = {"small": 12, "mid": 20, "large": 32}
    data = mixture(sizes, weights=[1, 1, 2], mode="mixed")
    chosen = data.choose(np.arange(4 * 10_000)).reshape(10_000, 4)  # row j of step s: position 4 s + j
    within_sampling_error(np.bincount(chosen.ravel()), [0.25, 0.25, 0.5], chosen.size)
    assert sum(len(set(row)) > 1 for row in chosen.tolist()) > 10_000 / 2  # most batches mix datasets
    steps = 1_000
    draws = [data.next_indices() for _ in range(steps)]
    assert [d.sources for d in draws] == chosen[:steps].tolist()
    for d, n in enumerate(sizes.values()):  # each dataset's queries: epoch after epoch, none twice in one
        read = [(e, i) for draw in draws for s, e, i in zip(draw.sources, draw.epochs, draw.indices) if s == d]
        epochs = [e for e, _ in read]
        assert epochs == sorted(epochs) and epochs[-1] > 10 and all(
            sorted(i for e, i in read if e == k) == list(range(n)) for k in range(epochs[-1]))
    assert list(data.examples_drawn(data.state_dict()).values()) == np.bincount(chosen[:steps].ravel()).tolist()


# ------------------------------------------------------------------ resume 2 -> 1 -> 2 ranks


@pytest.mark.parametrize("mode", ["one", "mixed"])
def test_resume_from_two_ranks_to_one_and_back_continues_every_stream(tiny_model_dir, three, mode):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    train_ir = weighted(three)

    def batches(world_size, prefetch, state=None):
        ranks = [TrainBatches(config(tiny_model_dir, train_ir, prefetch, ir_batches=mode), tokenizer, r, world_size)
                 for r in range(world_size)]
        for data in ranks:
            if state:
                data.load_state_dict(state)
        return ranks

    def steps(ranks, n):
        """n steps of every rank, as one global batch each: (datasets, query rows, passage rows)."""
        out = []
        for _ in range(n):
            got = [data.next() for data in ranks]
            out.append(tuple(sum((f(batch, meta) for batch, meta in got), []) for f in (
                lambda b, m: m["ir_source"], lambda b, m: rows(b, "query"), lambda b, m: rows(b, "passage"))))
        return out

    (whole,) = batches(1, 0)
    expected = steps([whole], 9)
    assert len({tuple(s[0]) for s in expected}) > 1  # several datasets within 9 steps
    assert mode == "mixed" or all(len(set(s[0])) == 1 for s in expected)
    two = batches(2, 2)
    assert steps(two, 3) == expected[:3]
    state = two[0].state_dict()  # the prefetched steps are not counted
    assert state == two[1].state_dict() and state["ir"]["step"] == 3
    one = batches(1, 1, state)
    assert steps(one, 3) == expected[3:6]
    again = batches(2, 0, one[0].state_dict())
    assert steps(again, 3) == expected[6:]
    assert again[1].state_dict() == whole.state_dict() and again[0].ir_counts() == whole.ir_counts()
    counts = whole.ir_counts()
    assert sum(counts.values()) == 9 * 4 and set(counts) == {f"data/ir/{name}" for name in SIZES}


def test_false_negative_keys_name_each_querys_dataset_where_batches_mix(tiny_model_dir, three):
    """The three files share docids (d0, d1, ...): in mixed batches a docid is keyed in its dataset's name."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for mode in ("one", "mixed"):
        data = TrainBatches(config(tiny_model_dir, weighted(three), ir_batches=mode), tokenizer, 0, 1)
        sources = []
        for _ in range(3):
            plan = data.plan()
            _, meta = data.make(plan, data.tokenize)
            spaces = meta["ir_source"] if mode == "mixed" else [""] * 4
            expected = [stable_key(r["positives"][0]["docid"], ns) for r, ns in
                        zip(data.ir.records(plan.indices["ir"]), spaces)]
            assert meta["keys"].positives[:, 0].tolist() == expected
            sources.append(len(set(meta["ir_source"])))
        assert max(sources) == 1 if mode == "one" else max(sources) > 1


def test_a_checkpoint_of_other_datasets_or_mode_is_refused(tiny_model_dir, three, training_data):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    make = lambda train_ir, **data: TrainBatches(config(tiny_model_dir, train_ir, **data), tokenizer, 0, 1)  # noqa: E731
    several, single = make(weighted(three)), make(training_data["train_ir"])
    mixed = make(weighted(three), ir_batches="mixed")
    for data, state, message in ((single, several, "was 3 datasets"), (several, single, "was 1 dataset"),
                                 (mixed, several, "one per batch; this run has 3 .* mixed per batch")):
        with pytest.raises(UserError, match=f"{message}.*resume with the same data.train_ir"):
            data.load_state_dict(state.state_dict())


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("override,message", [
    ("data.train_ir=[a.jsonl, {path: b/a.jsonl.gz}]",
     r"data.train_ir\[1\].name: expected a name of its own: 'a' is also data.train_ir\[0\]'s \(set name\)"),
    ("data.train_ir=[a.jsonl, {path: b, wieght: 2}]", r"data.train_ir\[1\]: unknown key 'wieght'; did you mean 'weight'"),
    ("data.train_ir=[{path: a, weight: 1}, b]",
     r"data.train_ir\[1\].weight: expected a weight on every entry or on none \(data.train_ir\[0\] has one\)"),
    ("data.train_ir=[{path: a, weight: 0}]", r"data.train_ir\[0\].weight: expected a positive number"),
    ("data.train_ir=[{path: a, weight: many}]", r"data.train_ir\[0\].weight: expected float"),
    ("data.train_ir=[{name: a}]", r"data.train_ir\[0\].path: expected a path"),
    ("data.train_ir=[{path: a, format: tsv}]", r"data.train_ir\[0\].format: expected one of auto, tevatron"),
    ("data.train_ir=[{path: a, name: x/y}]", r"data.train_ir\[0\].name: expected letters, digits"),
    ("data.train_ir=[7]", r"data.train_ir\[0\]: expected a path or a mapping \(path, format, name, weight, corpus\)"),
    ("data.train_ir=[]", "data.train_ir: expected a path"),
    ("data.ir_batches=some", "data.ir_batches: expected one of one, mixed, got 'some'"),
    ("data.ir_alpha=-1", "data.ir_alpha: expected a number >= 0"),
])
def test_misuse_is_one_line_naming_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["data.train_ir=x", "loss.semantic_weight=0", "loss.language_weight=0", override])


def test_a_list_resolves_each_entrys_files_and_keeps_the_reading_options_its_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["loss.semantic_weight=0", "loss.language_weight=0"]
    cfg = load_config(None, [*base, "data.train_ir=[nq/train.jsonl.gz, {path: ms, format: msmarco, corpus: c.tsv}]"])
    assert cfg.data.ir_sources() == [IRSource(str(tmp_path / "nq/train.jsonl.gz"), name="train"),
                                     IRSource(str(tmp_path / "ms"), "msmarco", "ms", corpus=str(tmp_path / "c.tsv"))]
    assert config_from_dict(cfg.to_dict()) == cfg  # the saved config reads back the same
    for option in ("data.train_ir_format=dpr", "data.train_corpus=c.tsv"):
        with pytest.raises(ConfigError, match=f"{option.split('=')[0]}: expected .* with a list of data.train_ir"):
            load_config(None, [*base, "data.train_ir=[a]", option])


def test_the_documented_mixture_is_a_valid_config():
    text = (Path(__file__).parents[1] / "docs" / "formats.md").read_text()
    example = text.split("#### Several IR datasets")[1].split("```yaml")[1].split("```")[0]
    data = yaml.safe_load(example)["data"]
    cfg = config_from_dict({"data": data, "loss": {"semantic_weight": 0, "language_weight": 0}})
    assert [(s.name, s.weight) for s in cfg.data.ir_sources()] == [("msmarco", 3), ("nq", 1), ("hotpotqa", 1)]


# ------------------------------------------------------------------ through the trainer


@pytest.mark.slow
def test_training_logs_each_datasets_queries(tmp_path, tiny_model_no_dropout, training_data, three):
    listed = "[" + ", ".join(f"{{path: {p}, weight: {w}}}" for p, w in zip(three.values(), (1, 2, 1))) + "]"
    run([sys.executable, *train_args(tiny_model_no_dropout, training_data, tmp_path / "run", f"data.train_ir={listed}",
                                     "train.max_steps=4", "train.log_every=2", "train.ir_batch_size=4",
                                     "train.chunk_size=0")], timeout=300)
    logged = scalars(tmp_path / "run")
    counts = {name: logged[f"data/ir/{name}"] for name in SIZES}
    assert all(len(c) == 2 for c in counts.values())  # steps 2 and 4
    assert [sum(c[i] for c in counts.values()) for i in range(2)] == [8, 16]
    facts = json.loads((tmp_path / "run" / "data.json").read_text())["ir"]  # the model card's data facts
    assert facts == {"files": [f"{name}.jsonl" for name in SIZES], "records": sum(SIZES.values())}


def test_hard_negative_groups_draw_for_every_seed_the_config_allows():
    """sample_group's generator seed is (seed, epoch, index) folded to 64 bits: the largest train.seed
    draws (it overflowed torch.manual_seed above about 1.8e7), the same way every time, and a small seed
    draws as it always did."""
    import torch

    from dist_lacl.data.batches import sample_group

    rec = {"query_id": "q", "positives": [{"docid": f"p{i}"} for i in range(3)],
           "negatives": [{"docid": f"n{i}"} for i in range(20)]}
    big = [p["docid"] for p in sample_group(rec, 4, 2**31 - 1, 7, 123_456)]
    assert big == [p["docid"] for p in sample_group(rec, 4, 2**31 - 1, 7, 123_456)] and len(big) == 4
    g = torch.Generator().manual_seed((42 * 1_000_003 + 1) * 1_000_003 + 5)  # the unfolded seed, as before
    assert sample_group(rec, 4, 42, 1, 5)[0] == rec["positives"][int(torch.randint(3, (1,), generator=g))]
