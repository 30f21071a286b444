"""Training data at scale: cache build rate, time to the first step, peak RSS per rank, cache reuse, and the
share of step time spent waiting for inputs with and without the prefetching worker.

One command: `python bench/bench_data.py [--sizes 1e5,1e6,1e7] [--ranks 2]`. For each size, a synthetic
parallel file of that many pairs (~80 bytes a line):
  1. its cache built in this process with 1 and with N (= CPUs) processes: records/s; up to
     --python-reader-up-to pairs also with Arrow's JSON reader off (the Python reader alone), side by side;
  2. a real training run on `--ranks` gloo ranks (tiny model, DDP) whose caches start empty: time from
     launch to the end of step 1 and peak RSS per rank; then the same run again on the same files
     (the caches are reused): its time to the first step. Both also report the time spent in
     Trainer.load_data (building or opening the caches), which process start-up does not blur.
Then a prefetch case, 1 rank: long passages (~300 words, truncated to 128 tokens), 16 queries x 8 passages
a step, the 2-layer hidden-32 encoder, so tokenisation is a visible share of a step; the share of step
time spent in TrainBatches.next() with data.prefetch=0 and 1. Writes bench/results/data.json.
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import yaml  # noqa: E402
from helpers_data import ir_records, monolingual_records, write_jsonl  # noqa: E402
from helpers_launch import rank_results, torchrun  # noqa: E402
from helpers_tiny import TEXTS, make_tiny_model, make_tiny_tokenizer  # noqa: E402

from dist_lacl.data.read import cache_entry, features, read_records  # noqa: E402

WORDS = " ".join(TEXTS).split()
LANGS = ["de", "fr", "ru", "ja", "zh", "sw"]


def write_parallel(path: Path, n: int) -> Path:
    """n synthetic pairs, ~80 bytes a line, written in blocks (10^7 lines in about a minute)."""
    rng = random.Random(0)
    en = [" ".join(rng.choice(WORDS) for _ in range(5)) for _ in range(997)]
    xx = [" ".join(rng.choice(WORDS) for _ in range(5)) for _ in range(991)]
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, n, 100_000):
            f.write("".join(f'{{"en": "{en[i % 997]} {i}", "text": "{xx[i % 991]} {i}", "lang": "{LANGS[i % 6]}"}}\n'
                            for i in range(start, min(n, start + 100_000))))
    return path


def build_rate(path: Path, root: Path, num_proc: int, arrow_json: bool = True) -> float:
    entry = cache_entry(path, "parallel", root, "error")[0]
    entry.flat_jsonl = arrow_json
    start = time.perf_counter()
    entry.build(features("parallel"), read_records, num_proc, uuid.uuid4().hex, stale_s=120)
    rate = entry.manifest()["num_rows"] / (time.perf_counter() - start)
    shutil.rmtree(root)  # 10^8 pairs: about 10 GB a cache
    return rate


def write_config(work: Path, name: str, model: Path, files: dict, **extra) -> Path:
    raw = {"model": {"name_or_path": str(model), "pooling": "mean"},
           "data": {**files, "train_group_size": 2, **extra.pop("data", {})},
           "loss": extra.pop("loss", {}),
           "train": {"backend": "ddp", "ir_batch_size": 8, "parallel_batch_size": 8, "monolingual_batch_size": 8,
                     "chunk_size": 0, "max_steps": 100, "lr": 1e-3, "warmup_steps": 0, "num_threads": 1,
                     "output_dir": str(work / f"run-{name}-{uuid.uuid4().hex[:6]}"), **extra}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def launch(config: Path, steps: int, ranks: int, cache: Path) -> list[dict]:
    proc = torchrun(REPO / "bench" / "workers" / "data_worker.py", config, steps, nproc=ranks, timeout=3600,
                    BENCH_T0=time.time(), DIST_LACL_CACHE=cache)
    return rank_results(proc.stdout)


def size_case(work: Path, model: Path, small: dict, n: int, ranks: int, python_up_to: int) -> dict:
    path = write_parallel(work / f"parallel-{n}.jsonl", n)
    procs = os.cpu_count() or 1
    row = {"pairs": n, "file_mib": round(path.stat().st_size / 2**20, 1), "procs": procs,
           "build_rps_1": round(build_rate(path, work / f"c1-{n}", 1)),
           "build_rps_n": round(build_rate(path, work / f"cn-{n}", procs))}
    if n <= python_up_to:
        row["build_rps_python_1"] = round(build_rate(path, work / f"cp-{n}", 1, arrow_json=False))
    config = write_config(work, f"size-{n}", model, {**small, "parallel": str(path)})
    cache = work / f"cache-{n}"
    first = launch(config, 2, ranks, cache)
    again = launch(config, 2, ranks, cache)
    row.update(first_step_s=round(max(r["first_step_s"] for r in first), 1),
               reused_first_step_s=round(max(r["first_step_s"] for r in again), 1),
               data_load_s=round(max(r["data_load_s"] for r in first), 2),
               reused_data_load_s=round(max(r["data_load_s"] for r in again), 2),
               peak_rss_gib_per_rank=[round(r["peak_rss_gib"], 2) for r in first],
               # ru_maxrss counts the mapped cache pages too; these say how much is the rank's own memory.
               rss_anon_gib_per_rank=[round(r["rssanon_gib"], 2) for r in first],
               rss_file_gib_per_rank=[round(r["rssfile_gib"], 2) for r in first])
    path.unlink()
    return row


def prefetch_case(work: Path, model: Path, small: dict) -> dict:
    rng = random.Random(1)
    long = [{**r, "positive_passages": [{**p, "text": " ".join(rng.choice(WORDS) for _ in range(300))}
                                        for p in r["positive_passages"]],
             "negative_passages": [{**p, "text": " ".join(rng.choice(WORDS) for _ in range(300))}
                                   for p in r["negative_passages"]]} for r in ir_records(256, num_negatives=7)]
    files = {"train_ir": str(write_jsonl(work / "long.jsonl", long))}
    out = {}
    for depth in (0, 1):
        config = write_config(work, f"prefetch-{depth}", model, files,
                              data={"train_group_size": 8, "passage_max_len": 128, "prefetch": depth},
                              loss={"semantic_weight": 0.0, "language_weight": 0.0}, ir_batch_size=16)
        (result,) = launch(config, 12, 1, work / "cache-prefetch")
        out[f"prefetch_{depth}"] = {"input_wait_share": round(result["input_wait_share"], 3),
                                    "step_s": round(result["step_s"], 3)}
    return out


FIRST_RUN = "2026-12-01 09:30 UTC"  # the rows written before rows were named by their run


def run_key(row: dict) -> tuple:
    """Rows of earlier runs stay in data.json beside this run's, named by their run."""
    return row.get("run", FIRST_RUN), row["pairs"]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1e5", help="comma-separated numbers of parallel pairs")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--python-reader-up-to", type=float, default=1e6,
                        help="sizes up to this also build with the Python reader alone (an hour per 10^8 pairs)")
    parser.add_argument("--label", default=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        help="names this run's rows in data.json (earlier runs' rows are kept beside them)")
    args = parser.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)
        model = work / "model"
        make_tiny_model(model, make_tiny_tokenizer(model))
        small = {"train_ir": str(write_jsonl(work / "ir.jsonl", ir_records(256))),
                 "monolingual": str(write_jsonl(work / "mono.jsonl", monolingual_records(256)))}
        rows = [{"run": args.label, **size_case(work, model, small, n, args.ranks, int(args.python_reader_up_to))} for n in sizes]
        prefetch = {"run": args.label, **prefetch_case(work, model, small)}
    results = {"ranks": args.ranks, "sizes": rows, "prefetch": prefetch}
    out = REPO / "bench" / "results" / "data.json"
    previous = json.loads(out.read_text()) if out.is_file() else {}
    merged = {run_key(r): {"run": run_key(r)[0], **r} for r in previous.get("sizes", []) + rows}
    earlier = [p for p in previous.get("prefetch_earlier", []) + [previous.get("prefetch")] if p]
    out.write_text(json.dumps({**results, "sizes": [merged[k] for k in sorted(merged)],
                               "prefetch_earlier": [{"run": FIRST_RUN, **p} if "run" not in p else p
                                                    for p in earlier]}, indent=1))
    print_table(results)


def print_table(results: dict) -> None:
    print(f"{'pairs':>10} {'MiB':>7} {'build rec/s 1 proc':>19} {'Python reader':>19} {'N procs':>15} {'1st step s':>11} "
          f"{'reused':>7} {'data load s':>12} {'reused':>7} {'peak RSS GiB/rank':>18}")
    for r in results["sizes"]:
        python = r.get("build_rps_python_1")
        python = f"{python} ({r['build_rps_1'] / python:.1f}x)" if python else "-"
        print(f"{r['pairs']:>10} {r['file_mib']:>7} {r['build_rps_1']:>19} {python:>19} {r['build_rps_n']:>9} ({r['procs']}) "
              f"{r['first_step_s']:>11} {r['reused_first_step_s']:>7} {r.get('data_load_s', '-'):>12} "
              f"{r.get('reused_data_load_s', '-'):>7} {' '.join(map(str, r['peak_rss_gib_per_rank'])):>18}")
        if "rss_anon_gib_per_rank" in r:
            print(f"{'':>10} resident after the steps, GiB per rank: anonymous "
                  f"{' '.join(map(str, r['rss_anon_gib_per_rank']))}, file-backed {' '.join(map(str, r['rss_file_gib_per_rank']))}")
    p = results["prefetch"]
    print(f"\ninput wait share of step time (long passages, tiny encoder, 1 rank): prefetch off "
          f"{p['prefetch_0']['input_wait_share']:.1%} (step {p['prefetch_0']['step_s']} s), on "
          f"{p['prefetch_1']['input_wait_share']:.1%} (step {p['prefetch_1']['step_s']} s)")


if __name__ == "__main__":
    main()
