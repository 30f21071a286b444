"""ZeRO-2 memory model: the bytes each rank holds for weights, gradients, fp32 master weights and Adam
state, read from the tensors DeepSpeed (or DDP) actually allocated, against the bytes-per-parameter
formula of each mode, at 1, 2 and 4 gloo ranks; and the peak resident set per rank.

One command: `python bench/bench_zero_memory.py [--ranks 1,2,4] [--precisions fp32,bf16] [--modes ...]`
(about an hour on a loaded 2-core machine, most of it the bf16 rows: bf16 steps take minutes on this CPU;
`--modes zero2` about 20 min). The model: XLM-R-base's layer shape with 14 layers and a 1,024-token vocabulary, random
weights from XLMRobertaConfig (100.4M parameters, 99% of them in the layers). The real trainer, 1 step,
gradient cache on (chunks of 2 rows), `coalesced` reduction (and `per_chunk` at 4 ranks), ZeRO buckets
of 5e7 elements, overlap_comm off.
Writes bench/results/zero_memory.json and prints one table.

Per-rank formula (Ψ parameters, N ranks), gradients as the update reads them, the rest after it:
  DDP (accelerate), fp32 or bf16 autocast: 4Ψ weights + 4Ψ grads + 8Ψ Adam
  DeepSpeed ZeRO-0, fp32:                  4Ψ + 4Ψ + 8Ψ (torch AdamW, nothing wrapped)
  DeepSpeed ZeRO-0, bf16:                  2Ψ + 2Ψ + 4Ψ fp32 master + 8Ψ Adam
  DeepSpeed ZeRO-2, fp32:                  4Ψ + (4Ψ grads + 4Ψ fp32 master + 8Ψ Adam) / N
  DeepSpeed ZeRO-2, bf16:                  2Ψ + (2Ψ grads + 4Ψ fp32 master + 8Ψ Adam) / N
Not in the formula: the reduce bucket (allocated for the reduction and released after it) and, under
`coalesced`, the full gradient every rank holds until the one reduction at the end of the backward phase
(column grads@bwd; `per_chunk` holds only the partition); both are transient, so they show in the peak RSS.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers_data import write_training_data  # noqa: E402
from helpers_launch import rank_results, torchrun  # noqa: E402
from helpers_tiny import make_tiny_tokenizer  # noqa: E402
from test_xlmr_large_shape import write_large_config  # noqa: E402

SHAPE = dict(hidden_size=768, num_hidden_layers=14, num_attention_heads=12, intermediate_size=3072,
             vocab_size=1024)
BUCKET = 50_000_000  # elements, reduce and all-gather buckets
CATEGORIES = ("weights", "grads", "master", "adam")
MODES = ("zero2", "zero2-per_chunk", "zero0", "ddp")
RANKS_OF = {"ddp": [2], "zero2-per_chunk": [4]}  # ddp partitions nothing; per_chunk: to see its backward peak
REDUCTION = {"zero2-per_chunk": ("train.grad_reduction=per_chunk",)}  # else the default, coalesced
# Global batch sizes divisible by 4 ranks; chunks of 2 rows: the gradient cache runs several chunks.
OVERRIDES = ("train.ir_batch_size=4", "train.parallel_batch_size=4", "train.monolingual_batch_size=4",
             "train.chunk_size=2")


def formula(mode: str, precision: str, n: int, params: int) -> dict:
    """Bytes per rank by category, from the formula above; `grads_backward`: the gradients held at the end
    of the backward phase, before the reduction (under `coalesced` the full gradient on every rank)."""
    low = 2 if precision == "bf16" else 4
    if mode == "ddp":
        out = {"weights": 4 * params, "grads": 4 * params, "master": 0, "adam": 8 * params}
    elif mode == "zero0":
        out = {"weights": low * params, "grads": low * params, "master": 4 * params if low == 2 else 0,
               "adam": 8 * params}
    else:
        out = {"weights": low * params, "grads": low * params / n, "master": 4 * params / n, "adam": 8 * params / n}
    # per_chunk reduces each chunk into the partition as it goes: no rank ever holds the full gradient.
    return {**out, "grads_backward": low * params / n if mode == "zero2-per_chunk" else out["weights"]}


def zero_config(folder: Path, stage: int, precision: str) -> str:
    cfg = {"zero_optimization": {"stage": stage, "overlap_comm": False, "contiguous_gradients": True,
                                 "reduce_bucket_size": BUCKET, "allgather_bucket_size": BUCKET}}
    if precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    path = folder / f"zero{stage}_{precision}.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def measure(work: Path, mode: str, precision: str, n: int, steps: int) -> dict:
    run_dir = work / f"{mode}-{precision}-{n}"
    run_dir.mkdir()
    stage = 2 if mode.startswith("zero2") else 0
    config = write_large_config(run_dir, work / "tokenizer", json.loads((work / "data.json").read_text()),
                                ds_config=zero_config(run_dir, stage, precision), precision=precision, **SHAPE)
    backend = "ddp" if mode == "ddp" else "deepspeed"
    per_rank = rank_results(torchrun(REPO / "bench" / "workers" / "zero_memory_worker.py", config, steps,
                                     f"train.backend={backend}", *OVERRIDES, *REDUCTION.get(mode, ()), nproc=n,
                                     timeout=1800).stdout)
    params = per_rank[0]["params"]

    def most(moment: str, category: str) -> int:  # the largest over the ranks
        return max(r["bytes"][moment].get(category, 0) for r in per_rank)

    # Gradients as the update reads them; weights, master and Adam state after it (Adam's is lazy).
    counted = {c: most("before_update" if c == "grads" else "after_update", c) for c in CATEGORIES}
    counted["grads_backward"] = most("end_of_backward", "grads")
    after = per_rank[0]["bytes"]["after_update"]
    return {"mode": mode, "precision": precision, "ranks": n, "params": params,
            "optimizer": f"{after['wrapper']}/{after['inner']}", "counts_rank0": per_rank[0]["bytes"],
            "measured_bytes": counted, "formula_bytes": formula(mode, precision, n, params),
            "rss_before_steps_gib_per_rank": [round(r["rss_before_steps_gib"], 3) for r in per_rank],
            "init_s": round(max(r["init_s"] for r in per_rank), 1),
            "steps_s": round(max(r["steps_s"] for r in per_rank), 1),
            "peak_rss_steps_gib_per_rank": [round(r["peak_rss_steps_gib"], 3) for r in per_rank],
            "peak_rss_life_gib_per_rank": [round(r["peak_rss_life_gib"], 3) for r in per_rank],
            "losses_rank0": per_rank[0]["losses"]}


def print_table(rows: list[dict], flush: bool = False) -> None:
    gib = 2**30
    print(f"\n{'prec':>4} {'mode':>15} {'N':>2} | {'weights':>7} {'grads':>6} {'master':>6} {'adam':>6} "
          f"{'state':>6} {'formula':>7} {'ratio':>5} | {'grads@bwd':>9} {'formula':>7} | "
          f"{'RSS before':>10} {'peak RSS in steps, GiB per rank':>31}")
    for r in rows:
        m, f = r["measured_bytes"], r["formula_bytes"]
        total_m, total_f = (sum(x[c] for c in CATEGORIES) for x in (m, f))
        print(f"{r['precision']:>4} {r['mode']:>15} {r['ranks']:>2} | "
              + " ".join(f"{m[c] / gib:>{w}.3f}" for c, w in zip(CATEGORIES, (7, 6, 6, 6)))
              + f" {total_m / gib:>6.3f} {total_f / gib:>7.3f} {total_m / total_f:>5.3f} | "
              f"{m['grads_backward'] / gib:>9.3f} {f['grads_backward'] / gib:>7.3f} | "
              f"{max(r['rss_before_steps_gib_per_rank']):>10.2f} "
              f"{' '.join(f'{x:.2f}' for x in r['peak_rss_steps_gib_per_rank']):>31}", flush=flush)


def write_results(rows: list[dict]) -> Path:
    """Into zero_memory.json, beside the rows of earlier runs of other (mode, precision, ranks)."""
    out = REPO / "bench" / "results" / "zero_memory.json"
    earlier = json.loads(out.read_text())["rows"] if out.is_file() else []
    merged = sorted(({row_key(r): r for r in earlier} | {row_key(r): r for r in rows}).values(), key=row_key)
    out.write_text(json.dumps({"machine": "2 CPU cores, 24 GiB, gloo, 1 thread per rank", "bucket_elements": BUCKET,
                               "shape": SHAPE, "overrides": OVERRIDES, "rows": merged}, indent=1))
    return out


def row_key(row: dict) -> tuple:
    return MODES.index(row["mode"]), row["precision"] != "fp32", row["ranks"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="1,2,4", help="comma-separated world sizes")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--modes", default=",".join(MODES), help="ddp runs at 2 ranks only, zero2-per_chunk at 4")
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    ranks = [int(n) for n in args.ranks.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_tiny_tokenizer(work / "tokenizer")
        (work / "data.json").write_text(json.dumps(write_training_data(work / "data")))
        for mode in args.modes.split(","):
            for precision in args.precisions.split(","):
                for n in RANKS_OF.get(mode, ranks):
                    rows.append(measure(work, mode, precision, n, args.steps))
                    print_table(rows[-1:], flush=True)
                    write_results(rows)  # after every row: a long run cut short keeps what it measured
    out = write_results(rows)
    print(f"\nwritten {out}; all its rows (this run's and earlier runs' of other modes or sizes):")
    print_table(json.loads(out.read_text())["rows"])


if __name__ == "__main__":
    sys.exit(main())
