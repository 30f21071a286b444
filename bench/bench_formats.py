"""Reading throughput of every training format (records/s through `data.read_records`, validation and the
suspicious-data checks included), beside the documented jsonl reader of the same kind, on synthetic
files of the same records.

    .venv/bin/python bench/bench_formats.py              # 2,000 queries, 20,000 pairs and sentences
    .venv/bin/python bench/bench_formats.py --scale 10   # ten times that

IR: each query has 1 positive and 7 hard negatives of ~60 words among 16 * queries passages (the
MS MARCO and Tevatron v2 readers look every passage up in a corpus of that size). Parallel and
monolingual: sentences of ~12 words. Plain files (`--compress gz` gzips every file). Each reader runs
`--repeats` times on one CPU thread; the table gives the median records/s and the ratio to jsonl.
Results: bench/results/formats.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dist_lacl.data.read import read_records  # noqa: E402
from dist_lacl.formats import ReadOptions  # noqa: E402

WORDS = ("the of and to in is was for on that by with as at from his her an which or are were be this "
         "city river music film team season album state county village school war church").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def write_ir(folder: Path, num_queries: int, rng: random.Random, opener) -> dict[str, Path]:
    num_passages = 16 * num_queries
    passages = [(str(i), f"Title {i}", sentence(rng, 60)) for i in range(num_passages)]
    queries = [(str(q), sentence(rng, 8), [rng.randrange(num_passages) for _ in range(8)]) for q in range(num_queries)]

    def open_(name):
        path = folder / (name + (".gz" if opener is gzip.open else ""))
        return path, opener(path, "wt", encoding="utf-8")

    def p(i):
        return {"docid": passages[i][0], "title": passages[i][1], "text": passages[i][2]}

    out = {}
    path, f = open_("tevatron.jsonl")
    with f:
        for qid, query, ids in queries:
            f.write(json.dumps({"query_id": qid, "query": query, "positive_passages": [p(ids[0])],
                                "negative_passages": [p(i) for i in ids[1:]]}) + "\n")
    out["tevatron"] = path
    v2 = folder / "v2"
    v2.mkdir()
    path, f = open_("v2/queries.jsonl")
    with f:
        for qid, query, ids in queries:
            f.write(json.dumps({"query_id": qid, "query_text": query, "positive_document_ids": [str(ids[0])],
                                "negative_document_ids": [str(i) for i in ids[1:]]}) + "\n")
    corpus, f = open_("v2/corpus.jsonl")
    with f:
        f.writelines(json.dumps(p(i)) + "\n" for i in range(num_passages))
    out["tevatron-v2"] = path
    path, f = open_("flag.jsonl")
    with f:
        for _, query, ids in queries:
            f.write(json.dumps({"query": query, "pos": [passages[ids[0]][2]],
                                "neg": [passages[i][2] for i in ids[1:]]}) + "\n")
    out["flagembedding"] = path
    ms = folder / "msmarco"
    ms.mkdir()
    for name, rows in (("collection.tsv", (f"{d}\t{x}\n" for d, _, x in passages)),
                       ("queries.train.tsv", (f"{q}\t{t}\n" for q, t, _ in queries)),
                       ("qrels.train.tsv", (f"{q}\t0\t{ids[0]}\t1\n" for q, _, ids in queries)),
                       ("qidpidtriples.train.full.2.tsv", (f"{q}\t{ids[0]}\t{i}\n" for q, _, ids in queries
                                                           for i in ids[1:]))):
        _, f = open_(f"msmarco/{name}")
        with f:
            f.writelines(rows)
    out["msmarco"] = ms
    path, f = open_("biencoder-nq-train.json")
    with f:
        def ctx(i):
            return {"title": passages[i][1], "text": passages[i][2], "score": 0, "passage_id": passages[i][0]}
        f.write(json.dumps([{"question": query, "answers": ["x"], "positive_ctxs": [ctx(ids[0])],
                             "negative_ctxs": [], "hard_negative_ctxs": [ctx(i) for i in ids[1:]]}
                            for _, query, ids in queries], indent=4))
    out["dpr"] = path
    return out


def write_aux(folder: Path, n: int, rng: random.Random, opener) -> dict[tuple[str, str], Path]:
    gz = ".gz" if opener is gzip.open else ""
    pairs = [(sentence(rng, 12), sentence(rng, 12)) for _ in range(n)]
    files = {("parallel", "jsonl"): (f"parallel.jsonl{gz}", [json.dumps({"en": e, "text": x, "lang": "de"})
                                                             for e, x in pairs]),
             ("parallel", "tsv"): (f"WikiMatrix.de-en.tsv{gz}", [f"1.05\t{x}\t{e}" for e, x in pairs]),
             ("parallel", "moses"): (f"WikiMatrix.de-en.de{gz}", [x for _, x in pairs]),
             ("monolingual", "jsonl"): (f"mono.jsonl{gz}", [json.dumps({"text": x, "lang": "de"}) for _, x in pairs]),
             ("monolingual", "text"): (f"de.txt{gz}", [x for _, x in pairs])}
    out = {}
    for key, (name, lines) in files.items():
        with opener(folder / name, "wt", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
        out[key] = folder / name
    with opener(folder / f"WikiMatrix.de-en.en{gz}", "wt", encoding="utf-8") as f:
        f.writelines(e + "\n" for e, _ in pairs)
    return out


def measure(path: Path, kind: str, fmt: str, repeats: int) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = sum(1 for _ in read_records(path, kind, options=ReadOptions(fmt)))
        times.append(time.perf_counter() - start)
    return count / statistics.median(times), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the default sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compress", choices=("none", "gz"), default="none")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "formats.json"))
    args = parser.parse_args()
    rng, opener = random.Random(0), gzip.open if args.compress == "gz" else open
    num_queries, num_sentences = int(2000 * args.scale), int(20000 * args.scale)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases = {("ir", fmt): path for fmt, path in write_ir(folder, num_queries, rng, opener).items()}
        cases.update(write_aux(folder, num_sentences, rng, opener))
        baseline = {}
        for (kind, fmt), path in cases.items():
            rate, count = measure(path, kind, fmt, args.repeats)
            baseline.setdefault(kind, rate)  # the first of each kind is its documented jsonl
            rows.append({"kind": kind, "format": fmt, "records": count, "records_per_s": rate,
                         "vs_jsonl": rate / baseline[kind]})
    print(f"{'kind':<12}{'format':<15}{'records':>9}{'records/s':>12}{'vs jsonl':>10}")
    for r in rows:
        print(f"{r['kind']:<12}{r['format']:<15}{r['records']:>9}{r['records_per_s']:>12,.0f}{r['vs_jsonl']:>9.2f}x")
    result = {"sizes": {"queries": num_queries, "passages": 16 * num_queries, "sentences": num_sentences},
              "compress": args.compress, "repeats": args.repeats, "python": platform.python_version(),
              "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
