"""Per-rank peak memory of one ZeRO-2 training step against the same step without partitioning.

One command: `python bench/bench_zero.py [--large]`. 2 CPU ranks (gloo), gradient cache on, real
DeepSpeed. XLM-R-base's shape (278M parameters) is compared with ZeRO stage 2 vs stage 0 (DeepSpeed's
plain data parallelism: every rank holds all fp32 weights, gradients and Adam state); XLM-R-large
(560M) unpartitioned does not fit two ranks in this machine's 24 GiB, so `--large` runs ZeRO-2 only.
Writes bench/results/zero.json and prints a table.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers_data import write_training_data  # noqa: E402
from helpers_launch import torchrun  # noqa: E402
from helpers_tiny import make_tiny_tokenizer  # noqa: E402
from test_xlmr_large_shape import results, write_large_config  # noqa: E402

XLMR_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)


def zero_config(folder: Path, stage: int, bf16: bool) -> str:
    cfg = {"zero_optimization": {"stage": stage, "overlap_comm": False, "contiguous_gradients": True,
                                 "reduce_bucket_size": 50_000_000, "allgather_bucket_size": 50_000_000}}
    if bf16:
        cfg["bf16"] = {"enabled": True}
    path = folder / f"zero{stage}{'_bf16' if bf16 else ''}.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def measure(work: Path, name: str, stage: int, precision: str, steps: int, **shape) -> dict:
    run_dir = work / name
    run_dir.mkdir()
    config = write_large_config(run_dir, work / "tokenizer", json.loads((work / "data.json").read_text()),
                                ds_config=zero_config(run_dir, stage, precision == "bf16"), precision=precision,
                                **shape)
    per_rank = results(torchrun(REPO / "tests" / "workers" / "train_steps.py", config, steps, timeout=1800))
    return {"model": name, "zero_stage": stage, "precision": precision, "params_M": per_rank[0]["params"] / 1e6,
            "peak_gib_per_rank": [round(r["peak_mem_gb"], 2) for r in per_rank],
            "step_s": round(min(per_rank[0]["step_s"]), 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--large", action="store_true", help="also XLM-R-large ZeRO-2 bf16 (~4 min)")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_tiny_tokenizer(work / "tokenizer")
        (work / "data.json").write_text(json.dumps(write_training_data(work / "data")))
        rows = [measure(work, "xlmr-base-shape", 0, "fp32", args.steps, **XLMR_BASE),
                measure(work, "xlmr-base-shape-z2", 2, "fp32", args.steps, **XLMR_BASE)]
        if args.large:
            rows.append(measure(work, "xlmr-large-shape", 2, "bf16", args.steps))
    base = max(rows[0]["peak_gib_per_rank"])
    print(f"\n{'model':22} {'ZeRO':>4} {'prec':>5} {'params':>8} {'peak GiB/rank':>15} {'vs stage 0':>10} {'step s':>7}")
    for r in rows:
        ratio = max(r["peak_gib_per_rank"]) / base if "base" in r["model"] else float("nan")
        print(f"{r['model']:22} {r['zero_stage']:>4} {r['precision']:>5} {r['params_M']:>7.0f}M "
              f"{'/'.join(map(str, r['peak_gib_per_rank'])):>15} {ratio:>10.2f} {r['step_s']:>7}")
    out = REPO / "bench" / "results" / "zero.json"
    out.write_text(json.dumps({"machine": "2 CPU cores, 24 GiB, gloo", "rows": rows}, indent=1))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    sys.exit(main())
