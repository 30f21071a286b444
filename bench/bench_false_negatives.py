"""How many false negatives the training batches hold, per step and per loss (no training).

    .venv/bin/python bench/bench_false_negatives.py --data demo=runs/demo/data breadth=runs/breadth/data
    .venv/bin/python bench/bench_false_negatives.py --compare off=bench/results/replicate-breadth-mask-off.json \\
        on=bench/results/replicate-breadth-mask-on.json     # the replicate runs side by side

Counts: the global batches of `--steps` steps (the demo's budget, 40), built by the training pipeline
itself (data.batches.TrainBatches with configs/demo.yaml, world size 1: the same global batches any
world size draws), and the masks' sizes (false_negatives.ir_count, pair_count): the (query, passage)
candidates that share a docid with one of the query's positives, the (anchor, candidate) parallel pairs
that share the anchor's English text or translation (one direction). Prints a markdown table, writes
bench/results/false_negatives.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def batches(data: Path, steps: int, model: str):
    """The keys of each of `steps` global batches of configs/demo.yaml on `data`."""
    import tempfile

    from transformers import AutoTokenizer

    from dist_lacl import demo
    from dist_lacl.config import load_config
    from dist_lacl.data.batches import TrainBatches

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(demo.DEMO_CONFIG, [f"model.name_or_path={model}", f"data.train_ir={data / 'train_ir.jsonl'}",
                                             f"data.parallel={data / 'parallel.jsonl'}",
                                             f"data.monolingual={data / 'monolingual.jsonl'}",
                                             f"train.output_dir={out}", "data.prefetch=0"])
        stream = TrainBatches(cfg, AutoTokenizer.from_pretrained(model), 0, 1)
        for _ in range(steps):
            yield stream.next()[1]["keys"], cfg


def count(data: Path, steps: int, model: str) -> dict:
    from dist_lacl.false_negatives import ir_count, pair_count

    ir, sem, cfg = [], [], None
    for keys, cfg in batches(data, steps, model):  # noqa: B007 (the last cfg is read below)
        ir.append(ir_count(keys))
        sem.append(pair_count(keys))
    t, g = cfg.train, cfg.data.train_group_size
    return {"steps": steps, "ir": ir, "semantic": sem,
            "ir_candidates": t.ir_batch_size * (t.ir_batch_size * g - 1),
            "semantic_candidates": t.parallel_batch_size * (t.parallel_batch_size - 1)}


def row(name: str, loss: str, per_step: list[int], candidates: int) -> str:
    mean = statistics.mean(per_step)
    return (f"| {name} | {loss} | {mean:.2f} | {max(per_step)} | {sum(1 for n in per_step if n)}/{len(per_step)} "
            f"| {candidates} | {100 * mean / candidates:.3f}% |")


def counts_table(results: dict[str, dict]) -> str:
    lines = ["| data | loss | masked per step (mean) | max | steps with any | negatives per step | share |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(row(name, "IR", r["ir"], r["ir_candidates"]))
        lines.append(row(name, "semantic (one direction)", r["semantic"], r["semantic_candidates"]))
        lines.append(f"| {name} | language | - | - | - | - | (nothing to mask) |")
    return "\n".join(lines)


def compare_table(runs: dict[str, Path]) -> str:
    """The full method's MRR@10 rows (English, non-English average, each language) of replicate.py results
    files side by side, per domain."""
    loaded = {name: json.loads(path.read_text()) for name, path in runs.items()}
    lines = []
    first = next(iter(loaded.values()))
    for domain, report in first["domains"].items():
        summary = report["summary"]
        lines += [f"\n{domain}: ir+sem+lang, MRR@10 (seeds {first['seeds']}, {first['steps']} steps)",
                  "| row | untrained | " + " | ".join(runs) + " | " + " - ".join(reversed(list(runs))) + " |",
                  "|---|---|" + "---|" * (len(runs) + 1)]
        for key in ["en", "non-en avg"] + [k for k in summary if k not in ("en", "non-en avg")]:
            cells = [loaded[name]["domains"][domain]["summary"][key]["ir+sem+lang"][0] for name in runs]
            diff = cells[-1] - cells[0] if len(cells) == 2 else float("nan")
            lines.append(f"| {key} | {summary[key]['untrained']:.3f} | " + " | ".join(f"{c:.3f}" for c in cells)
                         + f" | {diff:+.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=[], metavar="NAME=FOLDER",
                        help="data folders written by `dist-lacl data all` (demo) or `data all --breadth`")
    parser.add_argument("--steps", type=int, default=40, help="global batches counted per data folder")
    parser.add_argument("--model", help="tokenizer folder (default all-MiniLM-L6-v2, as the demo)")
    parser.add_argument("--compare", nargs="+", default=[], metavar="NAME=RESULTS.json",
                        help="replicate.py results files to print side by side (e.g. masking off, on)")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "false_negatives.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.data:
        from dist_lacl import demo

        model = args.model or demo.default_model()
        results = {}
        for item in args.data:
            name, folder = item.split("=", 1)
            results[name] = count(Path(folder), args.steps, model)
        print(counts_table(results))
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1))
    if args.compare:
        print(compare_table({name: Path(path) for name, path in (item.split("=", 1) for item in args.compare)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
