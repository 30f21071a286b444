"""One search for bench/bench_eval.py's scale section, in a process of its own; prints one `RESULT {json}` line.

    eval_search_worker.py ours|raw QUERY_EMB CORPUS_EMB --block-rows B --k K --run-out FILE

ours: `evaluation.evaluate.search_embeddings` (blocks read from the shards as float32, merged exactly)
and `write_run`, as `dist-lacl search` does. raw: faiss by hand on the same shards, memory-mapped,
one IndexFlatIP per block of B rows, merged with faiss.ResultHeap. The peak RSS is measured from
after the imports (the kernel's high-water mark reset through /proc/self/clear_refs), so that it is
the search's own; the RSS after the imports is reported next to it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import faiss
import numpy as np


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def raw_search(query_dir: Path, corpus_dir: Path, k: int, block_rows: int) -> dict[str, list[str]]:
    query_ids = [b.decode() for b in np.load(query_dir / "ids-0-of-1.npy")]
    queries = np.load(query_dir / "emb-0-of-1.npy").astype(np.float32)
    heap, offset, ids = faiss.ResultHeap(len(queries), k, keep_max=True), 0, []
    for path in sorted(corpus_dir.glob("emb-*.npy"), key=lambda p: int(p.name.split("-")[1])):
        emb = np.load(path, mmap_mode="r")
        for start in range(0, len(emb), block_rows):
            index = faiss.IndexFlatIP(emb.shape[1])
            index.add(np.ascontiguousarray(emb[start:start + block_rows], dtype=np.float32))
            scores, rows = index.search(queries, min(k, index.ntotal))
            heap.add_result(scores, rows + offset + start)
        offset += len(emb)
        ids.append(np.load(path.with_name(path.name.replace("emb-", "ids-")), mmap_mode="r"))
    heap.finalize()
    all_ids = np.concatenate(ids)  # the raw way: every id in memory
    return {qid: sorted(all_ids[r].decode() for r in rows) for qid, rows in zip(query_ids, heap.I)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=("ours", "raw"))
    p.add_argument("query_emb", type=Path)
    p.add_argument("corpus_emb", type=Path)
    p.add_argument("--block-rows", type=int, required=True)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--run-out", type=Path, required=True)
    args = p.parse_args()
    if args.kind == "ours":
        from dist_lacl.evaluation.evaluate import search_embeddings
        from dist_lacl.evaluation.index import IndexSpec
        from dist_lacl.evaluation.report import write_run
    rss_after_imports = rss_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    if args.kind == "ours":
        run, _ = search_embeddings(args.query_emb, args.corpus_emb, args.k, IndexSpec(gpus="none"), args.block_rows)
        write_run(args.run_out, run)
        top = {qid: sorted(docs) for qid, docs in run.items()}
    else:
        top = raw_search(args.query_emb, args.corpus_emb, args.k, args.block_rows)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256(json.dumps(top, sort_keys=True).encode()).hexdigest()[:16]
    print("RESULT " + json.dumps({"seconds": seconds, "rss_after_imports_mb": rss_after_imports,
                                  "peak_rss_mb": rss_mb("VmHWM"), "results_digest": digest}))


if __name__ == "__main__":
    main()
