"""Mining as the tests run it: a spread-out tiny encoder, a small corpus and training set, the command line."""

import json
import random

import pytest
import torch
from helpers_tiny import TEXTS, copy_without_dropout

NUM_PASSAGES, CHUNK = 240, 100  # three chunks: 100, 100, 40
RANGE, NUM_NEG = (3, 20), 6


@pytest.fixture(scope="module")
def spread_model(tiny_model_dir, tmp_path_factory):
    """The tiny encoder with its attention and feed-forward outputs and position embeddings zeroed, mean
    pooling, normalised: a bag of random token vectors, so different passages score clearly apart (the
    random encoder as built maps every text to nearly one vector, and rankings would be fp32 noise)."""
    path = tmp_path_factory.mktemp("spread-model")
    model = copy_without_dropout(tiny_model_dir, path)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "output.dense" in name or "position_embeddings" in name or "token_type" in name:
                weight.zero_()
    model.save_pretrained(path)
    (path / "dist_lacl.json").write_text(json.dumps({"pooling": "mean", "normalize": True, "shared_encoder": True}))
    return path


@pytest.fixture(scope="module")
def mining_data(tmp_path_factory):
    """A corpus, a Tevatron training file (some queries with two positives) and queries + qrels."""
    folder = tmp_path_factory.mktemp("mine-data")
    rng = random.Random(0)
    words = " ".join(TEXTS).split()
    corpus = [{"docid": f"p{i}", "title": f"t{i % 5}" if i % 3 else "",
               "text": " ".join(rng.choice(words) for _ in range(4 + i % 9))} for i in range(NUM_PASSAGES)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in corpus))
    train = [{"query_id": f"q{i}", "query": " ".join(rng.choice(words) for _ in range(3 + i % 3)),
              "positive_passages": corpus[7 * i:7 * i + 1 + i % 2],
              "negative_passages": []} for i in range(12)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train))
    (folder / "queries.tsv").write_text("".join(f"x{i}\t{' '.join(rng.choice(words) for _ in range(4))}\n"
                                                for i in range(4)))
    (folder / "qrels.txt").write_text("".join(f"x{i} 0 p{100 + i} 1\nx{i} 0 p{200 + i} 0\n" for i in range(4)))
    return folder


def mine_args(data, model, out, work, *extra):
    return ["mine", "--model", str(model), "--corpus", str(data / "corpus.jsonl"),
            "--train-ir", str(data / "train.jsonl"), "--queries", str(data / "queries.tsv"),
            "--qrels", str(data / "qrels.txt"), "--output", str(out), "--work-dir", str(work),
            "--rank-range", f"{RANGE[0]}-{RANGE[1]}", "--num-negatives", str(NUM_NEG), "--k", "25",
            "--chunk-passages", str(CHUNK), "--batch-size", "16", "--seed", "7", *extra]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]
