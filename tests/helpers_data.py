"""Small, valid training files in the documented formats, written by tests (deterministic)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from helpers_tiny import TEXTS

LANGS = ["de", "fr", "ru", "ja"]
EN = [t for t in TEXTS[:6]]
BY_LANG = {lang: TEXTS[6 + 5 * i: 11 + 5 * i] for i, lang in enumerate(LANGS)}


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def ir_records(n: int, num_negatives: int = 3, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = " ".join(TEXTS).split()
    out = []
    for i in range(n):
        passage = lambda j: {"docid": f"d{j}", "title": f"title {j % 7}",  # noqa: E731
                             "text": " ".join(rng.choice(words) for _ in range(6 + j % 5))}
        out.append({"query_id": f"q{i}", "query": " ".join(rng.choice(words) for _ in range(3 + i % 4)),
                    "positive_passages": [passage(i)],
                    "negative_passages": [passage(n + i * num_negatives + k) for k in range(num_negatives)]})
    return out


def with_teacher_scores(records: list[dict]) -> list[dict]:
    """Tevatron records whose every passage carries a teacher's `score` (varied, deterministic)."""
    for i, rec in enumerate(records):
        for j, p in enumerate(rec["positive_passages"] + rec["negative_passages"]):
            p["score"] = round(3.0 - 1.7 * j + 0.3 * ((i * 7 + j * 3) % 5), 2)
    return records


def parallel_records(n: int) -> list[dict]:
    out = []
    for i in range(n):
        lang = LANGS[i % len(LANGS)]
        out.append({"en": EN[i % len(EN)] + f" {i}", "text": BY_LANG[lang][i % 5] + f" {i}", "lang": lang})
    return out


def monolingual_records(n: int) -> list[dict]:
    return [{"text": BY_LANG[LANGS[i % 4]][(i // 4) % 5] + f" {i}", "lang": LANGS[i % 4]} for i in range(n)]


def good_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"train_ir": write_jsonl(folder / "ir.jsonl", ir_records(16)),
            "parallel": write_jsonl(folder / "parallel.jsonl", parallel_records(16)),
            "monolingual": write_jsonl(folder / "mono.jsonl", monolingual_records(16))}


def write_training_data(folder: Path, n_ir: int = 32, n_para: int = 32, n_mono: int = 32) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"train_ir": str(write_jsonl(folder / "ir.jsonl", ir_records(n_ir))),
            "parallel": str(write_jsonl(folder / "parallel.jsonl", parallel_records(n_para))),
            "monolingual": str(write_jsonl(folder / "mono.jsonl", monolingual_records(n_mono)))}


def write_dev_set(folder: Path, n: int = 8) -> dict[str, str]:
    """Queries in two languages over the positives of `ir_records(n)`, with TREC qrels."""
    folder.mkdir(parents=True, exist_ok=True)
    records = ir_records(n)
    corpus = [p for r in records for p in r["positive_passages"] + r["negative_passages"]]
    queries = [{"query_id": r["query_id"], "query": r["query"], "lang": "en" if i % 2 else "de"}
               for i, r in enumerate(records)]
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "queries.jsonl", queries)
    (folder / "qrels.txt").write_text("".join(f"{r['query_id']} 0 {r['positive_passages'][0]['docid']} 1\n"
                                              for r in records))
    return {"dev_queries": str(folder / "queries.jsonl"), "dev_corpus": str(folder / "corpus.jsonl"),
            "dev_qrels": str(folder / "qrels.txt")}
