"""Metrics equal trec_eval's (through pytrec_eval) on random runs with ties and on queries without relevant docs."""

import random

import pytest
import pytrec_eval
from equivalence import METRIC_ROUNDING

from dist_lacl.errors import UserError
from dist_lacl.evaluation.metrics import aggregate, evaluate_run, parse_metrics, rank_docs

CUTOFFS = (1, 3, 5, 10)
METRICS = [f"{m}@{k}" for m in ("mrr", "recall", "ndcg") for k in CUTOFFS]


def random_run_and_qrels(seed: int):
    """Scores from 5 values (many ties), graded relevance 0-3, and every kind of query coverage."""
    rng = random.Random(seed)
    docs = [f"d{i:02d}" for i in range(40)]
    run, qrels = {}, {}
    for q in range(60):
        qid = f"q{q}"
        kind = q % 6
        if kind != 0:  # kind 0: judged but never retrieved
            run[qid] = {d: rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]) for d in rng.sample(docs, rng.randint(1, 15))}
        if kind == 1:  # retrieved but not in the qrels
            continue
        judged = rng.sample(docs, rng.randint(1, 12))
        if kind == 2:  # judged, nothing relevant
            qrels[qid] = {d: 0 for d in judged}
        else:
            qrels[qid] = {d: rng.choice([0, 0, 1, 2, 3]) for d in judged}
    return run, qrels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_pytrec_eval(seed):
    run, qrels = random_run_and_qrels(seed)
    ours = evaluate_run(run, qrels, METRICS)
    cut = ",".join(map(str, CUTOFFS))
    theirs = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank", f"recall.{cut}", f"ndcg_cut.{cut}"}).evaluate(run)
    assert set(ours) == set(theirs)  # the same queries count
    assert any(not any(qrels[q].values()) for q in ours)  # including some judged with nothing relevant
    for qid, values in theirs.items():
        for k in CUTOFFS:
            assert ours[qid][f"recall@{k}"] == pytest.approx(values[f"recall_{k}"], abs=METRIC_ROUNDING)
            assert ours[qid][f"ndcg@{k}"] == pytest.approx(values[f"ndcg_cut_{k}"], abs=METRIC_ROUNDING)
            # MRR@k: the first relevant rank r is within k exactly when 1/r >= 1/k
            rr = values["recip_rank"]
            assert ours[qid][f"mrr@{k}"] == pytest.approx(rr if rr >= 1 / k - METRIC_ROUNDING else 0.0, abs=METRIC_ROUNDING)


def test_ties_rank_by_docid_descending_as_trec_eval():
    run = {"q": {"a": 0.5, "b": 0.5, "c": 0.5, "z": 0.5, "top": 0.9}}
    assert rank_docs(run["q"]) == ["top", "z", "c", "b", "a"]
    qrels = {"q": {"a": 1, "c": 2}}
    ours = evaluate_run(run, qrels, ["mrr@10", "recall@3", "ndcg@3"])["q"]
    theirs = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank", "recall.3", "ndcg_cut.3"}).evaluate(run)["q"]
    # c is third: rr 1/3; recall@3 1/2; nDCG@3 = (2/log2 4) / (2/log2 2 + 1/log2 3)
    assert ours["mrr@10"] == pytest.approx(1 / 3) == pytest.approx(theirs["recip_rank"])
    assert ours["recall@3"] == 0.5 == theirs["recall_3"]
    expected_ndcg = (2 / 2) / (2 + 1 / 1.584962500721156)
    assert ours["ndcg@3"] == pytest.approx(expected_ndcg) == pytest.approx(theirs["ndcg_cut_3"])


def test_queries_without_relevant_docs():
    run = {"judged_none_relevant": {"a": 1.0}, "unjudged": {"a": 1.0}, "ok": {"a": 1.0, "b": 0.5}}
    qrels = {"judged_none_relevant": {"a": 0}, "ok": {"b": 1}, "judged_not_retrieved": {"a": 1}}
    per_query = evaluate_run(run, qrels, ["mrr@10", "recall@10", "ndcg@10"])
    assert set(per_query) == {"judged_none_relevant", "ok"}  # left out: unjudged, and judged but not retrieved
    assert per_query["judged_none_relevant"] == {"mrr@10": 0.0, "recall@10": 0.0, "ndcg@10": 0.0}
    assert per_query["ok"]["mrr@10"] == 0.5


def test_aggregate_per_language_macro_and_all():
    per_query = {"q1": {"mrr@10": 1.0}, "q2": {"mrr@10": 0.0}, "q3": {"mrr@10": 0.5}, "q4": {"mrr@10": 0.25}}
    summary = aggregate(per_query, {"q1": "de", "q2": "de", "q3": "ja"}, default_lang="und")
    assert list(summary) == ["de", "ja", "und", "macro", "all"]
    assert summary["de"] == {"mrr@10": 0.5, "num_queries": 2}
    assert summary["und"] == {"mrr@10": 0.25, "num_queries": 1}
    assert summary["macro"] == {"mrr@10": (0.5 + 0.5 + 0.25) / 3, "num_queries": 3}
    assert summary["all"] == {"mrr@10": 1.75 / 4, "num_queries": 4}
    assert aggregate({}, {}, "und") == {}
    with pytest.raises(UserError, match="macro"):
        aggregate(per_query, {"q1": "all"}, "und")


def test_parse_metrics():
    assert parse_metrics("MRR@10, recall@100") == ["mrr@10", "recall@100"]
    for bad in ("map@10", "mrr", "mrr@0", "ndcg@x"):
        with pytest.raises(UserError, match="metrics"):
            parse_metrics(bad)
