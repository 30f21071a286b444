"""R@2kt / R@5kt (XOR-TyDi) and answer accuracy@k (NQ), against values worked out by hand."""

import pytest

from dist_lacl.evaluation.answers import (
    aggregate_answers,
    answer_metrics,
    first_tokens,
    has_answer,
    normalize_answer,
    recall_at_tokens,
)


def test_tokenisation_is_nltk_treebank_on_the_whole_passage():
    # word_tokenize's tokenizer: quotes, contractions and the passage's final period split off; a period
    # inside the passage stays on its word (no punkt sentence splitting, see the module docstring)
    assert first_tokens(['He said "it\'s 5 km." Then left.'], 100) == "He said `` it 's 5 km. '' Then left ."
    assert first_tokens(["Then left. OK?"], 100) == "Then left. OK ?"


def test_window_counts_tokens_across_passages_and_cuts_there():
    texts = ["a b c", "d e", "f g h"]  # 3 + 2 + 3 tokens
    assert first_tokens(texts, 4) == "a b c d"
    assert first_tokens(texts, 5) == "a b c d e"
    assert first_tokens(texts, 100) == "a b c d e f g h"


def test_recall_at_tokens_by_hand():
    texts = ["Paris is in France", "the Eiffel Tower is tall"]  # 4 + 5 tokens
    assert recall_at_tokens(texts, ["Eiffel Tower"], 7) == 1.0  # "Paris is in France the Eiffel Tower"
    assert recall_at_tokens(texts, ["Eiffel Tower"], 6) == 0.0  # "Paris is in France the Eiffel"
    assert recall_at_tokens(texts, ["eiffel tower"], 9) == 0.0  # case-sensitive
    assert recall_at_tokens(texts, ["in Fr"], 4) == 1.0  # a plain substring, not whole tokens
    assert recall_at_tokens(texts, ["yes", "no"], 9) is None  # not counted
    assert recall_at_tokens(texts, ["yes", "tall"], 9) == 1.0  # yes/no dropped, the span kept


def test_answer_normalisation_and_match():
    assert normalize_answer("The  U.S. Army's (1st) an") == "us armys 1st"
    assert has_answer("It was the 1st Army, in the U.S.", ["US"])
    assert has_answer("Ran by The Beatles!", ["beatles"])
    assert not has_answer("the beatlemania", ["beatles"])  # whole words only
    assert not has_answer("anything", ["the"])  # an answer that normalises to nothing never matches


def test_per_language_tables_by_hand():
    run = {"q1": {"p1": 3.0, "p2": 2.0, "p3": 1.0}, "q2": {"p3": 2.0, "p1": 1.0}, "q3": {"p2": 1.0}}
    passages = {"p1": "Berlin is big", "p2": "Paris is old", "p3": "Tokyo is large"}
    answers = {"q1": ["Tokyo"], "q2": ["Tokyo"], "q3": ["no"]}
    langs = {"q1": "ja", "q2": "ja", "q3": "fi"}
    per_q = answer_metrics(run, answers, passages, token_cutoffs=(3, 6), accuracy_cutoffs=(1, 2))
    # q1: windows "Berlin is big" / "Berlin is big Paris is old" miss Tokyo (3rd passage); acc@1 0, acc@2 0
    assert per_q["q1"] == {"r@3t": 0.0, "r@6t": 0.0, "acc@1": 0.0, "acc@2": 0.0}
    # q2: Tokyo first
    assert per_q["q2"] == {"r@3t": 1.0, "r@6t": 1.0, "acc@1": 1.0, "acc@2": 1.0}
    # q3: yes/no only: no R@kt; accuracy compares "no" with "paris is old": 0
    assert per_q["q3"] == {"acc@1": 0.0, "acc@2": 0.0}
    table = aggregate_answers(per_q, langs, "und")
    assert table["ja"] == {"num_queries": 2, "r@3t": 0.5, "r@6t": 0.5, "acc@1": 0.5, "acc@2": 0.5}
    assert table["all"]["r@6t"] == 0.5 and table["all"]["acc@1"] == pytest.approx(1 / 3)
    assert table["macro"]["acc@1"] == pytest.approx(0.25)  # (0.5 + 0) / 2


def test_kilo_token_names():
    per_q = answer_metrics({"q": {"p": 1.0}}, {"q": ["x"]}, {"p": "x"})
    assert set(per_q["q"]) == {"r@2kt", "r@5kt", "acc@20", "acc@100"}
