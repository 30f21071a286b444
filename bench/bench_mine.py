"""Mining benchmark: `dist-lacl mine`'s throughput per phase (scan, encode, search, write) on a synthetic corpus.

    .venv/bin/python bench/bench_mine.py                      # 20k passages, prints a table
    .venv/bin/python bench/bench_mine.py --passages 1000000   # the full case, writes bench/results/mine.json

The encoder is the tests' tiny random 2-layer XLM-R-style model (hidden 32), so embedding costs a
measurable but small share; the search (exact inner product, 32 dimensions, block-wise over the
memory-mapped shards) and the reading and writing are the same code a real model would run through.
Passages: 8-24 random words (about 50 tokens of 64 at most) from the tiny tokenizer's lines; one training query per `--passages-per-query`
passages, each with one positive; k = 100, negatives drawn from ranks 10-100, 30 per query. One process,
one CPU thread by default (`--threads`); the phases are timed inside one run of the pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import faiss
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers_tiny import TEXTS, make_tiny_model, make_tiny_tokenizer  # noqa: E402

from dist_lacl import mine, mine_work  # noqa: E402
from dist_lacl.cli import build_parser  # noqa: E402
from dist_lacl.evaluation.index import num_gpus  # noqa: E402
from dist_lacl.evaluation.inputs import TextSet  # noqa: E402


def write_data(folder: Path, num_passages: int, num_queries: int, seed: int = 0) -> tuple[Path, Path]:
    """corpus.jsonl (docid, title, text) and train.jsonl (Tevatron, one positive per query)."""
    rng = random.Random(seed)
    words = " ".join(TEXTS).split()
    corpus, train = folder / "corpus.jsonl", folder / "train.jsonl"
    positives = set(rng.sample(range(num_passages), num_queries))
    with corpus.open("w") as c, train.open("w") as t:
        for i in range(num_passages):
            p = {"docid": f"p{i}", "title": f"title {i % 97}",
                 "text": " ".join(rng.choice(words) for _ in range(rng.randint(8, 24)))}
            c.write(json.dumps(p, ensure_ascii=False) + "\n")
            if i in positives:
                q = " ".join(rng.choice(words) for _ in range(rng.randint(4, 10)))
                t.write(json.dumps({"query_id": f"q{i}", "query": q, "positive_passages": [p],
                                    "negative_passages": []}, ensure_ascii=False) + "\n")
    return corpus, train


def run_pipeline(args, folder: Path, model_dir: Path, corpus_path: Path, train_path: Path) -> list[dict]:
    """The steps of `mine.run_mine` (its own functions, in its order), one process, each timed -> table rows."""
    out = folder / "mined.jsonl"
    margs = build_parser().parse_args([
        "mine", "--model", str(model_dir), "--corpus", str(corpus_path), "--train-ir", str(train_path),
        "--output", str(out), "--rank-range", "10-100", "--num-negatives", "30", "--k", "100",
        "--batch-size", str(args.batch_size), "--passage-max-len", "64", "--chunk-passages", str(args.chunk_passages), "--gpus", "auto"])
    settings = mine.check_args(margs)
    rows, n = [], args.passages

    def timed(phase, items, unit, fn):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn()
        seconds = time.perf_counter() - start
        # CPU seconds too: on a machine shared with other jobs, wall time also measures the neighbours.
        rows.append({"phase": phase, "seconds": seconds, "cpu_seconds": time.process_time() - cpu_start,
                     "items": items, "unit": unit, "per_s": items / seconds})
        print(f"  {phase}: {seconds:.1f} s", flush=True)
        return result

    queries = mine.read_training_set(str(train_path), None, None)
    corpus = timed("scan corpus (ids, offsets)", n, "passages", lambda: mine.CorpusFile(corpus_path))
    work = folder / "work"
    mine_work.claim_work_dir(work, mine_work.fingerprint(margs, corpus.path))
    chunks = mine.corpus_chunks(corpus, work, margs)
    timed("encode corpus", n, "passages", lambda: mine_work.encode_all(margs, chunks))
    query_set = TextSet([q.query_id for q in queries], [q.query for q in queries], ["und"] * len(queries))
    timed("encode queries", len(queries), "queries",
          lambda: mine_work.encode_all(margs, [(query_set, work / "queries", "query", margs.query_max_len)]))
    found = timed(f"search top {settings.k} ({len(queries)} queries)", n, "passages",
                  lambda: mine_work.search_top_k(work, chunks, query_set.ids, settings.k, margs))
    timed("choose and write negatives", len(queries), "queries",
          lambda: mine.write_mined(out, queries, found, corpus, settings))
    total = sum(r["seconds"] for r in rows)
    rows.append({"phase": "total", "seconds": total, "cpu_seconds": sum(r["cpu_seconds"] for r in rows),
                 "items": n, "unit": "passages", "per_s": n / total})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--passages", type=int, default=20_000)
    p.add_argument("--passages-per-query", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--chunk-passages", type=int, default=250_000)
    p.add_argument("--threads", type=int, default=1, help="torch and faiss CPU threads (0: the libraries' defaults)")
    p.add_argument("--out", help="JSON results (default bench/results/mine.json for the 1M case, else none)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-mine-") as tmp:
        folder = Path(tmp)
        model_dir = folder / "model"
        make_tiny_model(model_dir, make_tiny_tokenizer(model_dir))
        start = time.perf_counter()
        corpus_path, train_path = write_data(folder, args.passages, max(1, args.passages // args.passages_per_query))
        print(f"wrote {args.passages} passages ({corpus_path.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        rows = run_pipeline(args, folder, model_dir, corpus_path, train_path)
    print(f"\nMining {args.passages} passages, tiny encoder (hidden 32, 2 layers), {args.threads or 'default'} "
          f"thread(s), {'GPU' if torch.cuda.is_available() else 'CPU'}")
    print(f"{'phase':36} {'seconds':>8} {'cpu s':>8} {'share':>6} {'rate':>22}")
    total = rows[-1]["seconds"]
    for r in rows:
        print(f"{r['phase']:36} {r['seconds']:8.1f} {r['cpu_seconds']:8.1f} {r['seconds'] / total:6.2f} "
              f"{r['per_s']:12.0f} {r['unit']}/s")
    out = args.out or (str(Path(__file__).parent / "results" / "mine.json") if args.passages >= 1_000_000 else None)
    if out:
        result = {"args": vars(args), "phases": rows,
                  "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpus": num_gpus(),
                              "faiss": faiss.__version__, "torch": torch.__version__,
                              "platform": platform.platform(), "load_average": os.getloadavg()}}
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
