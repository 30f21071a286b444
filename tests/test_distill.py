"""Distillation from a teacher's scores (loss.distill_weight): the KL term by hand, exact under shards,
blocks and the gradient cache; the scores read from Tevatron and FlagEmbedding files into the records,
the Arrow cache and the step's batch; files with a missing or bad score refused with file, line, field."""

import json
import math
import re

import pytest
import torch
from equivalence import BY_HAND, FP32_GRADS, FP32_LOSS, SHARDED_LOSS_GRADS, assert_same_grads
from helpers_data import ir_records, with_teacher_scores, write_jsonl
from helpers_grad_cache import cached_step, make_step_and_meta, uncached_step
from transformers import AutoTokenizer

from dist_lacl.config import LossConfig, config_from_dict
from dist_lacl.data.batches import TrainBatches, sample_group
from dist_lacl.data.cache import CacheEntry
from dist_lacl.data.read import features, load_dataset, read_records
from dist_lacl.errors import ConfigError, DataError
from dist_lacl.losses import distill_loss
from dist_lacl.objective import PASSAGE, QUERY, Job, lacl_loss, step_teacher_scores

DISTILL = {"distill_weight": 0.5, "distill_temperature": 2.0}


# ---------------------------------------------------------------- the loss


def test_kl_term_by_hand():
    """Two queries, groups of two: s_ij = q_i . p_ij / tau, teacher softmax(t_ij / T), KL summed per query,
    averaged over the queries."""
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[1.0, 1.0], [0.5, 0.0], [1.0, 0.0], [0.0, 1.0]])  # q0: rows 0, 1; q1: rows 2, 3
    teacher = torch.tensor([[3.0, 1.0], [0.0, 4.0]])
    tau, big_t = 0.5, 2.0

    def kl(student, scores):
        s = [math.exp(x / tau) for x in student]
        t = [math.exp(x / big_t) for x in scores]
        ps, pt = [x / sum(s) for x in s], [x / sum(t) for x in t]
        return sum(a * math.log(a / b) for a, b in zip(pt, ps))

    expected = (kl([1.0, 0.5], [3.0, 1.0]) + kl([0.0, 2.0], [0.0, 4.0])) / 2
    assert distill_loss(q, p, teacher, tau, big_t).item() == pytest.approx(expected, rel=BY_HAND)
    # The teacher agrees with the student: no loss.
    student = torch.tensor([[1.0, 0.5], [0.0, 2.0]]) / tau * big_t
    assert distill_loss(q, p, student, tau, big_t).item() == pytest.approx(0.0, abs=BY_HAND)


def test_shards_and_blocks_add_up_to_the_whole_loss_and_gradients():
    torch.manual_seed(0)
    q = torch.randn(8, 4, requires_grad=True)
    p = torch.randn(24, 4, requires_grad=True)
    teacher = torch.randn(8, 3)
    whole = distill_loss(q, p, teacher, 0.3, 1.5)
    reference = torch.autograd.grad(whole, (q, p))
    for shards, block_rows in ((1, 3), (2, 0), (4, 1)):
        parts = sum(distill_loss(q, p, teacher, 0.3, 1.5, (i, shards), block_rows) for i in range(shards))
        assert parts.item() == pytest.approx(whole.item(), rel=FP32_LOSS)
        for got, want in zip(torch.autograd.grad(parts, (q, p)), reference):
            torch.testing.assert_close(got, want, **SHARDED_LOSS_GRADS)


def test_sharded_objective_equals_the_replicated_one_with_every_term():
    """lacl_loss's shards (each rank's share, as loss.sharding=sharded scores them) add up to the whole
    objective, the KL term among the others, in every logged term and every representation's gradient."""
    gen = torch.Generator().manual_seed(1)
    reps = {job: torch.randn(rows, 8, generator=gen) for job, rows in
            ((QUERY, 8), (PASSAGE, 24), (Job("para_en", "query"), 8), (Job("para_xx", "query"), 8),
             (Job("mono", "query"), 4))}
    teacher = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    cfg = LossConfig(temperature=0.5, semantic_weight=0.7, language_weight=0.4, block_rows=1, **DISTILL)

    def shares(count):
        leaves = {k: v.clone().requires_grad_() for k, v in reps.items()}
        terms = [lacl_loss(leaves, cfg, (i, count), teacher_scores=teacher) for i in range(count)]
        sum(t.total for t in terms).backward()
        return {k: sum(t.scalars()[k] for t in terms) for k in terms[0].scalars()}, {k: v.grad for k, v in leaves.items()}

    (whole, whole_grads), (parts, grads) = shares(1), shares(4)
    assert "loss/distill" in whole and parts == pytest.approx(whole, rel=FP32_LOSS)
    for job in reps:
        torch.testing.assert_close(grads[job], whole_grads[job], **SHARDED_LOSS_GRADS)


def test_the_objective_adds_the_weighted_term_and_logs_it():
    torch.manual_seed(0)
    reps = {QUERY: torch.randn(4, 8), PASSAGE: torch.randn(12, 8)}
    teacher = torch.randn(4, 3, dtype=torch.float64)
    cfg = config_from_dict({"data": {"train_ir": "x.jsonl"},
                            "loss": {"semantic_weight": 0, "language_weight": 0, **DISTILL}}).loss
    terms = lacl_loss(reps, cfg, teacher_scores=teacher)
    assert terms.distill.item() == pytest.approx(distill_loss(reps[QUERY], reps[PASSAGE], teacher, cfg.temperature,
                                                              2.0).item(), rel=FP32_LOSS)
    assert terms.total.item() == pytest.approx((terms.ir + 0.5 * terms.distill).item(), rel=FP32_LOSS)
    assert set(terms.scalars()) == {"loss/total", "loss/ir", "loss/distill"}
    with pytest.raises(ValueError, match="teacher scores"):
        lacl_loss(reps, cfg)
    off = config_from_dict({"data": {"train_ir": "x.jsonl"}, "loss": {"semantic_weight": 0, "language_weight": 0}})
    assert lacl_loss(reps, off.loss, teacher_scores=teacher).distill is None  # weight 0: scores ignored


def test_cached_equals_uncached_with_the_kl_term(tiny_model_dir, training_data_with_scores, tmp_path):
    cfg, model, jobs, meta = make_step_and_meta(tiny_model_dir, training_data_with_scores, tmp_path, loss=DISTILL)
    teacher = step_teacher_scores(meta, cfg.loss)
    assert teacher.shape == (6, 3)
    loss_c, terms_c, grads_c = cached_step(cfg, model, jobs, teacher_scores=teacher)
    loss_u, terms_u, grads_u = uncached_step(cfg, model, jobs, teacher_scores=teacher)
    assert terms_c.terms.distill is not None and terms_c.terms.distill.item() > 0
    assert loss_c == pytest.approx(loss_u, rel=FP32_LOSS)
    assert terms_c.scalars() == pytest.approx(terms_u.scalars(), rel=FP32_LOSS)
    assert_same_grads(grads_c, grads_u, **FP32_GRADS)


def test_config_checks():
    ir_only = {"semantic_weight": 0, "language_weight": 0}
    base = {"data": {"train_ir": "x.jsonl", "train_group_size": 2}}
    assert config_from_dict({**base, "loss": {**ir_only, **DISTILL}}).loss.distill_temperature == 2.0
    for loss, message in (({"distill_weight": -1}, "loss.distill_weight: expected a number >= 0"),
                          ({"distill_temperature": 0}, "loss.distill_temperature: expected a positive number"),
                          ({"distill_weight": float("nan")}, "loss.distill_weight: expected a finite number")):
        with pytest.raises(ConfigError, match=message):
            config_from_dict({**base, "loss": {**ir_only, **loss}})
    with pytest.raises(ConfigError, match="data.train_group_size: expected at least 2 with loss.distill_weight"):
        config_from_dict({"data": {"train_ir": "x.jsonl", "train_group_size": 1}, "loss": {**ir_only, **DISTILL}})


# ---------------------------------------------------------------- reading


def flag_rows():
    return [{"query": "what is a dog", "pos": ["A dog is a mammal."], "neg": ["A cat.", "A cow."],
             "pos_scores": [4.5], "neg_scores": [1, -2.25]},
            {"query": "capital of france", "pos": ["Paris."], "neg": ["Lyon."], "pos_scores": [3.0],
             "neg_scores": [0.5]}]


def test_flagembedding_scores_become_the_passages_scores(tmp_path):
    path = write_jsonl(tmp_path / "flag.jsonl", flag_rows())
    records = list(read_records(path, "ir"))
    assert [p["score"] for p in records[0]["positives"] + records[0]["negatives"]] == [4.5, 1.0, -2.25]
    assert [p["score"] for p in records[1]["positives"] + records[1]["negatives"]] == [3.0, 0.5]
    rows = flag_rows()
    del rows[1]["neg_scores"]  # absent: no scores, read as before
    assert "score" not in list(read_records(write_jsonl(tmp_path / "some.jsonl", rows), "ir"))[1]["negatives"][0]


def test_tevatron_scores_become_the_passages_scores(tmp_path):
    recs = with_teacher_scores(ir_records(3))
    records = list(read_records(write_jsonl(tmp_path / "ir.jsonl", recs), "ir"))
    for rec, read in zip(recs, records):
        assert [p["score"] for p in read["positives"] + read["negatives"]] == \
            [p["score"] for p in rec["positive_passages"] + rec["negative_passages"]]


def bad_flag(tmp_path, key, value):
    rows = flag_rows()
    rows[1][key] = value
    path = tmp_path / "flag.jsonl"
    # json.dumps writes NaN and Infinity as JavaScript literals, which Python's json (and so the reader) takes
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("key, value, field", [
    ("neg_scores", [float("nan")], "neg_scores[0]"), ("pos_scores", [float("inf")], "pos_scores[0]"),
    ("neg_scores", ["0.5"], "neg_scores[0]"), ("neg_scores", [True], "neg_scores[0]"),
    ("neg_scores", [None], "neg_scores[0]"), ("pos_scores", [10**400], "pos_scores[0]")])
def test_a_non_finite_or_non_numeric_flagembedding_score_is_refused(tmp_path, key, value, field):
    path = bad_flag(tmp_path, key, value)
    with pytest.raises(DataError, match=rf"flag.jsonl, line 2: field '{re.escape(field)}': expected a finite number"):
        list(read_records(path, "ir"))


def test_a_wrong_length_score_list_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"line 2: field 'neg_scores': expected a list of 1 numbers, one per passage"):
        list(read_records(bad_flag(tmp_path, "neg_scores", [0.5, 0.1]), "ir"))
    with pytest.raises(DataError, match=r"line 2: field 'pos_scores': expected a list of 1 numbers"):
        list(read_records(bad_flag(tmp_path, "pos_scores", 3.0), "ir"))


@pytest.mark.parametrize("value", [float("nan"), float("-inf"), "high", None])
def test_a_bad_tevatron_score_is_refused(tmp_path, value):
    recs = with_teacher_scores(ir_records(3))
    recs[2]["negative_passages"][1]["score"] = value
    path = tmp_path / "ir.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(DataError, match=r"ir.jsonl, line 3: field 'negative_passages\[1\].score': expected a finite"):
        list(read_records(path, "ir"))


def test_the_arrow_cache_holds_the_scores_as_the_reader_reads_them(tmp_path):
    """Passages with and without a score: the cache gives the reader's records, null where none."""
    recs = with_teacher_scores(ir_records(5))
    del recs[1]["negative_passages"][2]["score"], recs[4]["positive_passages"][0]["score"]
    path = write_jsonl(tmp_path / "ir.jsonl", recs)
    dataset = load_dataset(path, "ir", cache_dir=tmp_path / "cache", num_proc=2)
    for rec, row in zip(read_records(path, "ir"), dataset, strict=True):
        for key in ("positives", "negatives"):
            rec[key] = [{**p, "score": p.get("score")} for p in rec[key]]
        assert row == rec
    assert dataset[1]["negatives"][2]["score"] is None and dataset[1]["negatives"][1]["score"] is not None


def test_the_cache_key_includes_the_records_schema(tmp_path):
    """A cache built before passages had scores (another schema) is never reused for the new records."""
    path = write_jsonl(tmp_path / "ir.jsonl", ir_records(2))
    old = features("ir").to_dict()
    for key in ("positives", "negatives"):
        del old[key]["feature"]["score"]
    names = {CacheEntry(tmp_path, path, "ir", "error", schema=schema).name for schema in (old, features("ir").to_dict())}
    assert len(names) == 2


# ---------------------------------------------------------------- missing scores, and the batch


def batches(tiny_model_dir, tmp_path, train_ir, distill=True, **data):
    cfg = config_from_dict({"model": {"name_or_path": str(tiny_model_dir)},
                            "data": {"train_ir": str(train_ir), "train_group_size": 3, **data},
                            "loss": {"semantic_weight": 0, "language_weight": 0, **(DISTILL if distill else {})},
                            "train": {"ir_batch_size": 4, "output_dir": str(tmp_path / "run")}})
    return cfg, TrainBatches(cfg, AutoTokenizer.from_pretrained(tiny_model_dir), 0, 1, tmp_path / "cache")


def test_missing_scores_are_refused_at_load_with_file_line_and_field(tiny_model_dir, tmp_path):
    recs = with_teacher_scores(ir_records(6))
    del recs[3]["negative_passages"][2]["score"]
    lines = [json.dumps(r) for r in recs]
    lines.insert(1, '{"query_id": "bad"}')  # skipped (data.bad_records=skip): no row, still a line
    path = tmp_path / "ir.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"ir.jsonl, line 5: field 'negative_passages\[2\].score': missing; expected "
                                        r"a teacher score for every passage with loss.distill_weight > 0"):
        batches(tiny_model_dir, tmp_path, path, bad_records="skip")
    batches(tiny_model_dir, tmp_path, path, distill=False, bad_records="skip")  # weight 0: scores ignored

    rows = flag_rows() * 3
    rows[4] = {k: v for k, v in rows[4].items() if k != "neg_scores"}
    with pytest.raises(DataError, match=r"flag.jsonl, line 5: field 'neg_scores': missing"):
        batches(tiny_model_dir, tmp_path, write_jsonl(tmp_path / "flag.jsonl", rows))


def test_a_format_without_scores_is_refused_at_load(tiny_model_dir, tmp_path):
    folder = tmp_path / "msmarco"
    folder.mkdir()
    (folder / "collection.tsv").write_text("".join(f"{i}\tpassage number {i}\n" for i in range(20)))
    (folder / "queries.train.tsv").write_text("".join(f"q{i}\tquery {i}\n" for i in range(4)))
    (folder / "qrels.train.tsv").write_text("".join(f"q{i}\t0\t{i}\t1\n" for i in range(4)))
    (folder / "qidpidtriples.train.full.2.tsv").write_text(
        "".join(f"q{i}\t{i}\t{j}\n" for i in range(4) for j in range(10, 14)))
    with pytest.raises(DataError, match=r"msmarco: expected a teacher score for every passage with "
                                        r"loss.distill_weight > 0; the msmarco format carries none"):
        batches(tiny_model_dir, tmp_path, folder)


def test_the_step_carries_the_sampled_passages_scores(tiny_model_dir, training_data_with_scores, tmp_path):
    cfg, data = batches(tiny_model_dir, tmp_path, training_data_with_scores["train_ir"])
    plan = data.plan()
    draw, (_, meta) = plan.indices["ir"], data.make(plan, data.tokenize)
    groups = [sample_group(data.ir.datasets[0][i], 3, cfg.train.seed, epoch, i)
              for i, epoch in zip(draw.indices, draw.epochs)]
    assert meta["teacher_scores"].tolist() == [[p["score"] for p in g] for g in groups]
    assert meta["teacher_scores"].shape == (4, 3) and meta["teacher_scores"].dtype == torch.float64
    _, off = batches(tiny_model_dir, tmp_path / "off", training_data_with_scores["train_ir"], distill=False)
    assert "teacher_scores" not in off.next()[1]
