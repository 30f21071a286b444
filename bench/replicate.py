"""The paper's ablation on the demo's offline data: IR only; IR + semantic; IR + semantic + language;
and the low-resource setting (parallel data for two languages only, monolingual text for all).

    .venv/bin/python bench/replicate.py [--steps 40] [--seeds 0 1 2]   # prints the table, writes bench/results/replicate.json

Every run trains all-MiniLM-L6-v2 from the same start on the same budget (configs/demo.yaml with
`--steps` steps; 2 CPU ranks, DeepSpeed ZeRO-2, gradient cache) and differs only in its loss weights,
its parallel data and its seed (which orders the data). Zero-shot evaluation: the Debian FAQ, question
in language L -> English answer, MRR@10. Language-ID probe: leave-one-out nearest-centroid accuracy
of the query representations of the FAQ's questions, the same 123 questions in each of 10 languages
(chance 0.10): the lower, the less the representation says which language a question is in.
Each finished run leaves `<out>/<setting>-s<seed>/result.json` and is not trained again.
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

from dist_lacl import demo  # noqa: E402

LOW_RESOURCE_PARALLEL = ("de", "ja")
SETTINGS = {  # name -> (overrides, languages of the parallel data or None for all)
    "ir": (["loss.semantic_weight=0", "loss.language_weight=0"], None),
    "ir+sem": (["loss.semantic_weight=1", "loss.language_weight=0"], None),
    "ir+sem+lang": (["loss.semantic_weight=1", "loss.language_weight=1"], None),
    "low-resource": (["loss.semantic_weight=1", "loss.language_weight=1"], LOW_RESOURCE_PARALLEL),
}


def parallel_subset(data: Path, langs: tuple[str, ...], out: Path) -> Path:
    """The parallel pairs of `langs` only."""
    path = out / f"parallel-{'-'.join(langs)}.jsonl"
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        with open(data / "parallel.jsonl", encoding="utf-8") as src, open(f"{path}.tmp", "w", encoding="utf-8") as dst:
            dst.writelines(line for line in src if json.loads(line)["lang"] in langs)
        os.replace(f"{path}.tmp", path)
    return path


def language_id_accuracy(model_path: str, queries: Path, settings: dict) -> float:
    import torch

    from dist_lacl.diagnostics import language_centroid_accuracy
    from dist_lacl.evaluation.encode import encode_texts
    from dist_lacl.evaluation.inputs import read_queries

    model, tokenizer = demo.load_for_eval(model_path, settings)
    faq = read_queries(queries)
    reps = encode_texts(model, tokenizer, faq.texts, "query", 64, 64, show_progress=False)
    return language_centroid_accuracy(torch.from_numpy(reps), faq.langs)


def measure(model_path: str, eval_dir: Path, settings: dict) -> dict:
    return {"mrr@10": demo.evaluate(model_path, eval_dir, settings),
            "lang_id_acc": language_id_accuracy(model_path, eval_dir / "queries.jsonl", settings)}


def run_setting(name: str, seed: int, args, data: Path, model: str, eval_dir: Path, cfg: dict) -> dict:
    run_dir = args.out / f"{name}-s{seed}"
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    overrides, langs = SETTINGS[name]
    if langs:
        overrides = [*overrides, f"data.parallel={parallel_subset(data, langs, args.out)}"]
    demo.train(args.config, data, model, run_dir / "run",
               [*overrides, f"train.seed={seed}", f"train.max_steps={args.steps}",
                f"train.save_every={args.steps}", f"train.warmup_steps={max(1, args.steps // 12)}"])
    result = measure(str(run_dir / "run"), eval_dir, cfg["model"])
    done.write_text(json.dumps(result, indent=1))
    return result


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def group_mean(mrr: dict[str, float], langs: list[str]) -> float:
    return statistics.mean(mrr[lang] for lang in langs)


def summarise(untrained: dict, results: dict[str, list[dict]], langs: list[str]) -> tuple[str, dict]:
    """Rows: languages, group averages, the probe; columns: untrained, then each setting's mean +- sd."""
    non_en = [lang for lang in langs if lang != "en"]
    groups = {"en": ["en"], "non-en avg": non_en,
              "parallel-data avg": [lang for lang in non_en if lang in demo.PARALLEL_LANGS],
              "low-resource: no-pair avg": [lang for lang in non_en if lang not in LOW_RESOURCE_PARALLEL]}

    def values(run: dict, row: str) -> float:
        if row == "lang-ID acc":
            return run["lang_id_acc"]
        return group_mean(run["mrr@10"], groups[row]) if row in groups else run["mrr@10"][row]

    rows = langs + list(groups)[1:] + ["lang-ID acc"]
    summary = {row: {"untrained": values(untrained, row),
                     **{name: mean_sd([values(r, row) for r in runs]) for name, runs in results.items()}}
               for row in rows}
    header = f"{'':26} {'untrained':>9}" + "".join(f" {name:>15}" for name in results)
    lines = [header]
    for row in rows:
        cells = "".join(f" {m:>8.3f} ±{s:.3f}" for m, s in (summary[row][name] for name in results))
        lines.append(f"{row:26} {summary[row]['untrained']:9.3f}{cells}")
    return "\n".join(lines), summary


def verdict(summary: dict) -> list[str]:
    """The issue's checks, stated with the numbers they rest on."""
    full, ir = summary["non-en avg"]["ir+sem+lang"], summary["non-en avg"]["ir"]
    margin, spread = full[0] - ir[0], max(full[1], ir[1])
    en_gap = summary["en"]["ir+sem+lang"][0] - summary["en"]["ir"][0]
    lift = summary["parallel-data avg"]["ir+sem+lang"][0] - summary["parallel-data avg"]["untrained"]
    return [f"full method - IR only, non-English average: {margin:+.3f} (seed spread {spread:.3f}) -> "
            f"{'beats' if margin > spread else 'does not beat'} the baseline by more than the spread",
            f"English, full method - IR only: {en_gap:+.3f} -> {'within' if abs(en_gap) <= 0.01 else 'outside'} 1 point",
            f"full method - untrained, languages with parallel data: {lift:+.3f} (target +0.080)"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="training steps per run (the shared budget)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "replicate")
    parser.add_argument("--data", type=Path, default=REPO / "runs" / "demo" / "data", help="built if missing")
    parser.add_argument("--config", type=Path, default=demo.DEMO_CONFIG)
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "replicate.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import yaml

    cfg = yaml.safe_load(args.config.read_text())
    model = demo.default_model()
    demo.build_data(args.data)
    eval_dir = args.data / "debian_faq" / "to_english"
    untrained_path = args.out / "untrained.json"
    if not untrained_path.is_file():
        args.out.mkdir(parents=True, exist_ok=True)
        untrained_path.write_text(json.dumps(measure(model, eval_dir, cfg["model"]), indent=1))
    untrained = json.loads(untrained_path.read_text())
    results = {name: [run_setting(name, seed, args, args.data, model, eval_dir, cfg) for seed in args.seeds]
               for name in args.settings}

    langs = [lang for lang in untrained["mrr@10"] if lang not in ("all", "macro")]
    table, summary = summarise(untrained, results, langs)
    title = (f"Debian FAQ zero-shot, question in L -> English answer, MRR@10 (mean ±sd over seeds "
             f"{' '.join(map(str, args.seeds))}; {args.steps} steps each); lang-ID acc: nearest-centroid, chance 0.10; "
             f"low-resource: parallel data for {', '.join(LOW_RESOURCE_PARALLEL)} only")
    checks = verdict(summary) if {"ir", "ir+sem+lang"} <= set(results) else []
    print("\n".join([title, table, *checks]))
    args.results.write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "summary": summary,
                                        "untrained": untrained, "runs": results, "checks": checks}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
