"""Per-rank memory and time of a ZeRO-2 training step against the same step without partitioning.

One command: `python bench/bench_zero.py [--large]`. 2 CPU ranks (gloo), gradient cache on, real
DeepSpeed. XLM-R-base's shape (278M parameters) is compared with ZeRO stage 2 vs stage 0 (DeepSpeed's
plain data parallelism: every rank holds all fp32 weights, gradients and Adam state); XLM-R-large
(560M) unpartitioned does not fit two ranks in this machine's 24 GiB, so `--large` runs ZeRO-2 only.
Memory is the peak resident set sampled during the training steps (after set-up), so one-off
initialisation copies do not hide what a step costs. Writes bench/results/zero.json, prints a table.
"""

import argparse
import json
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


def measure(work: Path, name: str, stage: int, precision: str, steps: int, reduction: str, **shape) -> dict:
    run_dir = work / f"{name}-{stage}-{reduction}-{precision}"
    run_dir.mkdir()
    config = write_large_config(run_dir, work / "tokenizer", json.loads((work / "data.json").read_text()),
                                ds_config=zero_config(run_dir, stage, precision == "bf16"), precision=precision,
                                **shape)
    per_rank = results(torchrun(REPO / "tests" / "workers" / "train_steps.py", config, steps,
                                f"train.grad_reduction={reduction}", timeout=1800))
    return {"model": name, "zero_stage": stage, "grad_reduction": reduction if stage else "-",
            "precision": precision, "params_M": round(per_rank[0]["params"] / 1e6),
            "step_peak_gib_per_rank": [round(r["peak_rss_steps_gb"], 2) for r in per_rank],
            "lifetime_peak_gib_per_rank": [round(r["peak_mem_gb"], 2) for r in per_rank],
            "step_s": round(sorted(per_rank[0]["step_s"])[len(per_rank[0]["step_s"]) // 2], 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--large", action="store_true", help="also XLM-R-large ZeRO-2 bf16 (~4 min)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 ZeRO-0 / ZeRO-2 pair")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_tiny_tokenizer(work / "tokenizer")
        (work / "data.json").write_text(json.dumps(write_training_data(work / "data")))
        rows = [measure(work, "xlmr-base-shape", 0, "fp32", args.steps, "coalesced", **XLMR_BASE),
                measure(work, "xlmr-base-shape", 2, "fp32", args.steps, "coalesced", **XLMR_BASE),
                measure(work, "xlmr-base-shape", 2, "fp32", args.steps, "per_chunk", **XLMR_BASE)]
        if not args.no_bf16:  # where ZeRO partitions most: fp32 master weights and Adam state of bf16 weights
            rows += [measure(work, "xlmr-base-shape", 0, "bf16", args.steps, "coalesced", **XLMR_BASE),
                     measure(work, "xlmr-base-shape", 2, "bf16", args.steps, "coalesced", **XLMR_BASE)]
        if args.large:
            rows.append(measure(work, "xlmr-large-shape", 2, "bf16", args.steps, "coalesced"))
    baselines = {(r["model"], r["precision"]): r for r in rows if r["zero_stage"] == 0}
    print(f"\n{'model':18} {'ZeRO':>4} {'reduction':>10} {'prec':>5} {'params':>7} {'step GiB/rank':>14} "
          f"{'vs ZeRO-0':>9} {'step s':>7} {'vs ZeRO-0':>9}")
    for r in rows:  # each row against ZeRO-0 of the same model and precision, where there is one
        base = baselines.get((r["model"], r["precision"]))
        mem = max(r["step_peak_gib_per_rank"]) / max(base["step_peak_gib_per_rank"]) if base else float("nan")
        print(f"{r['model']:18} {r['zero_stage']:>4} {r['grad_reduction']:>10} {r['precision']:>5} "
              f"{r['params_M']:>6}M {'/'.join(map(str, r['step_peak_gib_per_rank'])):>14} "
              f"{mem:>9.2f} {r['step_s']:>7} {r['step_s'] / base['step_s'] if base else float('nan'):>9.2f}")
    out = REPO / "bench" / "results" / "zero.json"
    out.write_text(json.dumps({"machine": "2 CPU cores, 24 GiB, gloo", "rows": rows}, indent=1))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    sys.exit(main())
