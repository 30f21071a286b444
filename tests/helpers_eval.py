"""An evaluation set over the tiny model's sentences, the tiny dual encoder, and the evaluation commands run
in this process, for tests."""

import argparse
import json

import torch
from helpers_tiny import TEXTS

from dist_lacl.evaluation.cli import add_parsers
from dist_lacl.model import DualEncoder, load_encoder

LANGS = ["en"] * 6 + ["de"] * 5 + ["fr"] * 5 + ["ru"] * 5 + ["ja"] * 5  # the languages of helpers_tiny.TEXTS
NUM_DOCS = 31  # odd, so 2 ranks get unequal shards


def write_eval_set(folder):
    """Queries = the 26 sentences; passages = each sentence (titled or not) + longer distractors; qrels q_i -> d_i.

    With a shared, normalised encoder every query's best passage is its own sentence (cosine 1) when
    queries are not truncated more than passages.
    """
    folder.mkdir(parents=True, exist_ok=True)
    docs = [{"docid": f"d{i}", "title": "", "text": t, "lang": lang} for i, (t, lang) in enumerate(zip(TEXTS, LANGS))]
    docs += [{"docid": f"x{i}", "title": TEXTS[i], "text": " ".join(TEXTS[i:i + 3 + 2 * i])}
             for i in range(NUM_DOCS - len(docs))]
    queries = [{"query_id": f"q{i}", "query": t, "lang": lang} for i, (t, lang) in enumerate(zip(TEXTS, LANGS))]
    paths = {name: folder / f"{name}.jsonl" for name in ("corpus", "queries")}
    for name, records in (("corpus", docs), ("queries", queries)):
        paths[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    paths["qrels"] = folder / "qrels.txt"
    paths["qrels"].write_text("".join(f"q{i} 0 d{i} 1\nq{i} 0 x{i % 5} 0\n" for i in range(len(TEXTS))))
    return paths


def tiny_dual_encoder(model_dir, separate_towers=False) -> DualEncoder:
    passage = None
    if separate_towers:
        passage = load_encoder(str(model_dir))
        with torch.no_grad():
            passage.embeddings.word_embeddings.weight.mul_(-1.5)
    return DualEncoder(load_encoder(str(model_dir)), passage, pooling="mean", normalize=True)


def run_command(*argv):
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    args.func(args)
