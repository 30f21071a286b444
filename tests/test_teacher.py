"""`mine --score-with`: every passage gets the cross-encoder's logit as `score` (the same on 1 and 2 ranks),
the scores resume from the work directory only for the same scorer, the margin filter drops exactly the
negatives it should, a folder that is no cross-encoder is one line and exit 2, and the scored file trains
with distillation."""

import argparse
import json
import logging
import math
import shutil
import sys

import pytest
import torch
from helpers_launch import run, torchrun
from helpers_mine import mine_args, read_jsonl
from helpers_tiny import MAX_LEN, TEXTS, make_tiny_tokenizer
from helpers_train import scalars, train_args
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

from dist_lacl.cli import main
from dist_lacl.formats.records import passage_text
from dist_lacl.teacher import load_teacher, score_records

CHUNK = ["--score-chunk-queries", "5"]  # 16 queries: chunks of 5, 5, 5, 1


def make_cross_encoder(path, model_type: str, num_labels: int, seed: int = 0):
    """A tiny 2-layer cross-encoder saved with the tiny tokenizer; its logits spread by a scaled head."""
    tokenizer = make_tiny_tokenizer(path)
    shape = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=MAX_LEN + 2, pad_token_id=tokenizer.pad_token_id,
                 num_labels=num_labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    if model_type == "bert":
        model = BertForSequenceClassification(BertConfig(**shape))
    else:
        model = XLMRobertaForSequenceClassification(XLMRobertaConfig(
            **shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20.0)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory):
    """XLM-R-style, two labels: the score is the last label's logit."""
    return make_cross_encoder(tmp_path_factory.mktemp("cross-xlmr"), "xlm-roberta", num_labels=2)


@pytest.fixture(scope="module")
def scored_run(mining_data, spread_model, cross_encoder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scored")
    out, work = folder / "scored.jsonl", folder / "work"
    assert main(mine_args(mining_data, spread_model, out, work, "--score-with", str(cross_encoder), *CHUNK)) == 0
    return out, work


def direct_scores(model_dir, records) -> list[float]:
    """The model's logit (the last label's) of each (query, passage), one pair at a time: no padding."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    found = []
    with torch.no_grad():
        for r in records:
            for p in r["positive_passages"] + r["negative_passages"]:
                enc = tokenizer(r["query"], passage_text(p["title"], p["text"]), truncation=True,
                                max_length=MAX_LEN, return_tensors="pt")
                found.append(model(**enc).logits[0, -1].item())
    return found


def written_scores(records) -> list[float]:
    return [p["score"] for r in records for p in r["positive_passages"] + r["negative_passages"]]


def without_scores(records):
    return [{**r, **{k: [{f: v for f, v in p.items() if f != "score"} for p in r[k]]
                     for k in ("positive_passages", "negative_passages")}} for r in records]


def test_every_passage_gets_the_models_logit_and_the_mined_records_are_unchanged(
        scored_run, mining_data, spread_model, cross_encoder, tmp_path):
    out, work = scored_run
    records = read_jsonl(out)
    scores = written_scores(records)
    assert all(isinstance(s, float) and abs(s) < 1e6 for s in scores)
    assert scores == pytest.approx(direct_scores(cross_encoder, records), abs=1e-4)
    assert len(set(scores)) > len(scores) // 2  # the scores tell passages apart
    marker = json.loads((work / "mine.json").read_text())
    assert marker["scorer"]["model"] == str(cross_encoder.resolve()) and marker["scorer"]["max_len"] == MAX_LEN
    assert sorted(p.name for p in (work / "scores").iterdir()) == [f"chunk-0000{i}.json" for i in range(4)]
    plain = tmp_path / "plain.jsonl"
    shutil.copytree(work, tmp_path / "work")
    assert main(mine_args(mining_data, spread_model, plain, tmp_path / "work")) == 0  # the same embeddings
    assert without_scores(records) == read_jsonl(plain)


def test_a_rerun_reuses_the_scores_and_another_scorer_does_not(scored_run, mining_data, spread_model,
                                                               cross_encoder, tmp_path):
    out, first_work = scored_run
    work, model = tmp_path / "work", tmp_path / "cross"
    shutil.copytree(first_work, work)
    (work / "scores" / "chunk-00002.json").unlink()  # killed before its third chunk was written
    chunks = sorted((work / "scores").iterdir())
    mtimes = {p: p.stat().st_mtime_ns for p in chunks}
    again = tmp_path / "again.jsonl"
    assert main(mine_args(mining_data, spread_model, again, work, "--score-with", str(cross_encoder), *CHUNK)) == 0
    assert {p: p.stat().st_mtime_ns for p in chunks} == mtimes and again.read_bytes() == out.read_bytes()
    chunks = sorted((work / "scores").iterdir())
    assert len(chunks) == 4
    # Another --score-max-len; the model copied elsewhere; other weights saved at that same path: every
    # chunk is scored again each time.
    shutil.copytree(cross_encoder, model)
    for change, scorer, extra in (("max_len", cross_encoder, ["--score-max-len", "8"]), ("path", model, []),
                                  ("weights", model, [])):
        mtimes = {p: p.stat().st_mtime_ns for p in chunks}
        if change == "weights":
            make_cross_encoder(model, "xlm-roberta", num_labels=2, seed=1)
        other = tmp_path / f"{change}.jsonl"
        assert main(mine_args(mining_data, spread_model, other, work, "--score-with", str(scorer), *CHUNK,
                              *extra)) == 0
        assert all(p.stat().st_mtime_ns != mtimes[p] for p in chunks), change
        assert without_scores(read_jsonl(other)) == without_scores(read_jsonl(out))
        if change != "path":
            assert written_scores(read_jsonl(other)) != written_scores(read_jsonl(out)), change


def test_the_margin_filter_drops_exactly_the_negatives_near_the_lowest_positive(
        scored_run, mining_data, spread_model, cross_encoder, tmp_path, caplog):
    out, first_work = scored_run
    records = read_jsonl(out)
    gaps = sorted(min(p["score"] for p in r["positive_passages"]) - n["score"]
                  for r in records for n in r["negative_passages"])
    margin = (gaps[len(gaps) // 2] + gaps[len(gaps) // 2 + 1]) / 2  # about half the negatives go
    expected = [{**r, "negative_passages": [n for n in r["negative_passages"]
                                            if n["score"] <= min(p["score"] for p in r["positive_passages"])
                                            - margin]} for r in records]
    dropped = sum(len(r["negative_passages"]) for r in records) - sum(len(r["negative_passages"]) for r in expected)
    assert 0 < dropped < len(gaps)
    assert any(len(r["positive_passages"]) > 1 for r in records)  # the lowest positive counts
    work = tmp_path / "work"
    shutil.copytree(first_work, work)
    filtered = tmp_path / "filtered.jsonl"
    caplog.set_level(logging.INFO, logger="dist_lacl.teacher")
    assert main(mine_args(mining_data, spread_model, filtered, work, "--score-with", str(cross_encoder), *CHUNK,
                          f"--drop-negatives-above-margin={margin!r}")) == 0
    assert read_jsonl(filtered) == expected
    assert f"dropped {dropped} negatives" in caplog.text


def test_a_one_label_bert_cross_encoder_scores_its_single_logit(tmp_path):
    """The usual cross-encoder (one label): its logit, batched and sorted by length, as scored one by one."""
    path = make_cross_encoder(tmp_path / "bert", "bert", num_labels=1)
    args = argparse.Namespace(score_with=str(path), score_batch_size=3, score_chunk_queries=4, score_max_len=None,
                              drop_negatives_above_margin=None)
    teacher = load_teacher(args)
    assert teacher.max_len == MAX_LEN and teacher.identity()["label"] == 0
    records = [{"query": q, "positive_passages": [{"title": "", "text": t}],
                "negative_passages": [{"title": "A title", "text": u} for u in TEXTS[i + 1:i + 3]]}
               for i, (q, t) in enumerate(zip(TEXTS[::2], TEXTS[1::2]))]
    scores = score_records(records, teacher, torch.device("cpu"), "fp32")
    assert [s for pos, neg in scores for s in pos + neg] == pytest.approx(direct_scores(path, records), abs=1e-4)


@pytest.mark.parametrize("what, expected", [
    ("bi-encoder", "is a XLMRobertaModel, not a sequence-classification model; expected a cross-encoder folder "
                   "saved by transformers' AutoModelForSequenceClassification"),
    ("missing", "no such folder"),
    ("margin-alone", "--drop-negatives-above-margin: needs --score-with MODEL"),
])
def test_a_folder_that_is_no_cross_encoder_is_one_line_and_exit_2(what, expected, mining_data, spread_model,
                                                                  tiny_model_dir, tmp_path):
    extra = {"bi-encoder": ["--score-with", str(tiny_model_dir)],
             "missing": ["--score-with", str(tmp_path / "nothing")],
             "margin-alone": ["--drop-negatives-above-margin", "1"]}[what]
    out = tmp_path / "o.jsonl"
    proc = run([sys.executable, "-m", "dist_lacl.cli", *mine_args(mining_data, spread_model, out, tmp_path / "w",
                                                                  *extra)], expect_rc=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dist-lacl mine: error: ") and expected in lines[0], lines
    assert not out.exists() and not (tmp_path / "w").exists()


@pytest.mark.slow
def test_two_ranks_score_the_same_file_as_one(scored_run, mining_data, spread_model, cross_encoder,
                                              tmp_path):
    out, _ = scored_run
    two = tmp_path / "two.jsonl"
    torchrun("-m", "dist_lacl.cli", *mine_args(mining_data, spread_model, two, tmp_path / "w", "--score-with",
                                               str(cross_encoder), *CHUNK), nproc=2)
    assert (tmp_path / "w" / "scores" / "chunk-00003.json").is_file()  # rank 1's share
    # The same records; the same scores up to the float rounding of another thread count (the launched
    # ranks run one thread each, pytest several).
    ones, twos = read_jsonl(out), read_jsonl(two)
    assert without_scores(twos) == without_scores(ones)
    assert written_scores(twos) == pytest.approx(written_scores(ones), abs=1e-5)


def test_the_scored_file_trains_with_distillation(scored_run, tiny_model_dir, training_data, tmp_path):
    """End to end: mine --score-with -> train with loss.distill_weight > 0, the KL term logged and finite."""
    out, _ = scored_run
    data = dict(training_data, train_ir=str(out))
    run_dir = tmp_path / "run"
    run([sys.executable, *train_args(tiny_model_dir, data, run_dir, "train.max_steps=3", "train.backend=ddp",
                                     "loss.distill_weight=0.5", "loss.distill_temperature=2.0")], timeout=600)
    distill = scalars(run_dir)["loss/distill"]
    assert len(distill) >= 1 and all(math.isfinite(v) and v >= 0 for v in distill)
