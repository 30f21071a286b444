"""`make gpu-check`: every GPU-marked test and the GPU benchmarks, bounded to 8 minutes on one GPU.

    python bench/gpu_check.py [--budget-s 480]       # prints a table, writes bench/results/gpu.json

Parts, each a subprocess with its own timeout (a part that runs out is recorded as timed out and the
next one starts; the sum of the timeouts is the budget):
  1. tests:  `pytest -m gpu` (faiss-gpu single / sharded / fp16, dropout replay through SDPA on CUDA, ...);
  2. train:  the real trainer (DeepSpeed ZeRO-2, bf16, NCCL, one GPU) on XLM-R-large's shape (random
             weights, the real XLM-R tokenizer), one process that re-chunks between measurements: no
             cache, then chunks of 32 / 64 / 128 rows and a token budget, then chunks of 32 padding-free
             (flash-attention varlen, where flash-attn is installed); median step time, tokens/s per
             GPU, MFU over non-embedding parameters, peak allocated memory of each;
  3. eval:   bench/bench_eval.py: encoding throughput (fp32 and bf16) and faiss-gpu search against CPU.
Without a CUDA GPU it says so and exits 2 before anything slow is imported or run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "gpu.json"
H100_H200_BF16_TFLOPS = 989.0  # dense bf16 peak of an H100 / H200 SXM
# Fractions of the budget per part (tests, train, eval).
SHARES = {"tests": 0.3, "train": 0.5, "eval": 0.2}
# (label, chunk_size, chunk_tokens, padding_free): chunk 0 and budget 0 is the step without a cache; the
# padding-free row comes last (it switches the encoder to packed rows, flash-attention where it can, for good).
CHUNKINGS = [("no cache", 0, 0, False), ("chunk 32", 32, 0, False), ("chunk 64", 64, 0, False),
             ("chunk 128", 128, 0, False), ("16384 tokens", 0, 16384, False), ("chunk 32 packed", 32, 0, True)]
TRAIN_BATCH, TRAIN_STEPS = 128, 4  # queries per step (+2 passages each), steps per chunking (1st dropped)


def no_gpu_message() -> str | None:
    """Why this machine cannot run the check, or None. Imports torch only (seconds)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed in this environment"
    if not torch.cuda.is_available():
        return (f"no CUDA GPU visible to torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}); "
                "nothing was run. On a GPU machine `make gpu-check` builds a CUDA virtualenv (.venv-gpu) and runs this")
    return None


def run_part(name: str, cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    start = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})})
        out = {"rc": proc.returncode, "stdout": proc.stdout[-20000:], "stderr": proc.stderr[-8000:]}
    except subprocess.TimeoutExpired as e:
        out = {"rc": None, "timed_out": True, "stdout": (e.stdout or b"")[-20000:].decode(errors="replace")
               if isinstance(e.stdout, bytes) else (e.stdout or "")[-20000:], "stderr": ""}
    out.update(name=name, wall_s=time.time() - start, timeout_s=timeout)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: " + ("TIMED OUT" if out.get("timed_out") else f"rc {out['rc']}")
          + f" in {out['wall_s']:.0f} s", file=sys.stderr, flush=True)
    return out


# ---------------------------------------------------------------- 2. the training step (worker side)

def train_worker(config: str) -> None:
    """Under torchrun: one Trainer, each chunking in turn on the same stream of batches."""
    import torch

    from dist_lacl import distributed as dist
    from dist_lacl.config import load_config
    from dist_lacl.trainer import Trainer

    cfg = load_config(config)
    trainer = Trainer(cfg)
    trainer.engine.train()
    rows = []
    for label, chunk_size, chunk_tokens, padding_free in CHUNKINGS:
        trainer.grad_cache.chunk_size, trainer.grad_cache.chunk_tokens = chunk_size, chunk_tokens
        if padding_free:
            label = f"{label} ({use_padding_free(trainer.engine.module, cfg.train.precision)})"
            trainer.grad_cache.packed = True
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        steps = []
        try:
            for _ in range(TRAIN_STEPS):
                steps.append(trainer.train_step())
        except torch.OutOfMemoryError as e:
            rows.append({"chunking": label, "error": f"out of memory: {str(e).splitlines()[0]}"})
            trainer.engine.skip_step()
            continue
        timed = steps[1:]
        rows.append({"chunking": label, "chunk_size": chunk_size, "chunk_tokens": chunk_tokens,
                     "step_s": [s["perf/step_s"] for s in timed],
                     "median_step_s": statistics.median(s["perf/step_s"] for s in timed),
                     "tokens_per_s": statistics.median(s["perf/tokens_per_s"] for s in timed) / dist.world_size(),
                     "tokens_per_step": statistics.median(s["perf/tokens_per_s"] * s["perf/step_s"] for s in timed),
                     "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30})
    params = sum(p.numel() for p in trainer.engine.module.parameters())
    shape = trainer.engine.module.query_encoder.config
    embedding = (shape.vocab_size + shape.max_position_embeddings + shape.type_vocab_size) * shape.hidden_size
    print("RESULT " + json.dumps({"rank": dist.rank(), "rows": rows, "params": params, "embedding_params": embedding,
                                  "gpu": torch.cuda.get_device_name()}), flush=True)
    dist.destroy()


def use_padding_free(module, precision: str) -> str:
    """Switch the dual encoder to packed chunks (model.padding_free): flash-attention's varlen kernel where
    it can run, else rows under SDPA's block-diagonal mask. Returns which."""
    from dist_lacl.model import flash_attention_implementation

    implementation = flash_attention_implementation(precision)
    if implementation:
        for encoder in {id(module.tower(t)): module.tower(t) for t in ("query", "passage")}.values():
            encoder.set_attn_implementation(implementation)
    module.padding_free = True
    return implementation or "sdpa rows"


def train_config(work: Path) -> Path:
    import yaml

    sys.path.insert(0, str(REPO / "bench"))
    sys.path.insert(0, str(REPO / "tests"))
    from bench_grad_cache import load_ir_records, write_data, xlmr_large_shape

    _, records = load_ir_records(TRAIN_BATCH * (TRAIN_STEPS * len(CHUNKINGS) + 1))
    _, train_ir = write_data(work, records)
    model = xlmr_large_shape(work / "xlmr-large-shape")
    raw = {"model": {"name_or_path": str(model), "pooling": "cls", "random_init": True},
           "data": {"train_ir": str(train_ir), "train_group_size": 2, "query_max_len": 32, "passage_max_len": 192,
                    "cache_dir": str(work / "datasets-cache")},
           "loss": {"temperature": 0.05, "semantic_weight": 0.0, "language_weight": 0.0},
           "train": {"backend": "deepspeed", "deepspeed_config": str(REPO / "ds_configs" / "zero2_bf16.json"),
                     "precision": "bf16", "ir_batch_size": TRAIN_BATCH, "chunk_size": 32, "warmup_steps": 0,
                     "max_steps": 1000, "output_dir": str(work / "run")}}
    path = work / "gpu-train.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def mfu(matmul_params: int, tokens_per_step: float, step_s: float, peak_tflops: float) -> float:
    """6 x non-embedding parameters x tokens / step time / one GPU's peak (the cache's extra forward is
    hardware work, not model work: MFU counts the model's)."""
    return 6 * matmul_params * tokens_per_step / step_s / (peak_tflops * 1e12)


# ---------------------------------------------------------------- the check

def summarize_tests(part: dict) -> dict:
    lines = [line for line in part["stdout"].splitlines() if " passed" in line or " failed" in line
             or " skipped" in line or "no tests ran" in line]
    return {"summary": lines[-1].strip("= ") if lines else "no summary (see stdout)",
            "skips": [line for line in part["stdout"].splitlines() if line.startswith("SKIPPED")]}


def table(result: dict, peak_tflops: float) -> str:
    lines = [f"gpu-check on {result.get('gpu', '?')}, budget {result['budget_s']:.0f} s, took {result['wall_s']:.0f} s"]
    for name, part in result["parts"].items():
        state = "TIMED OUT" if part.get("timed_out") else ("ok" if part["rc"] == 0 else f"FAILED (rc {part['rc']})")
        lines.append(f"  {name:6} {state:18} {part['wall_s']:>5.0f} s of {part['timeout_s']:.0f}")
    tests = result.get("tests")
    if tests:
        lines.append(f"tests (pytest -m gpu): {tests['summary']}")
        lines += [f"  {s}" for s in tests["skips"]]
    train = result.get("train")
    if train:
        matmul = train["params"] - train["embedding_params"]
        lines += [f"train: XLM-R-large shape ({train['params'] / 1e6:.0f}M params, {matmul / 1e6:.0f}M non-embedding), "
                  f"DeepSpeed ZeRO-2 bf16, 1 GPU, {TRAIN_BATCH} queries + {2 * TRAIN_BATCH} passages per step, "
                  f"median of {TRAIN_STEPS - 1} steps",
                  f"  {'chunking':14} {'step s':>7} {'tokens/s/GPU':>13} {'MFU':>6} {'peak GiB':>9}"]
        for r in train["rows"]:
            if "error" in r:
                lines.append(f"  {r['chunking']:14} {r['error']}")
                continue
            lines.append(f"  {r['chunking']:14} {r['median_step_s']:>7.3f} {r['tokens_per_s']:>13.0f} "
                         f"{mfu(matmul, r['tokens_per_step'], r['median_step_s'], peak_tflops):>6.1%} "
                         f"{r['peak_mem_gib']:>9.1f}")
        lines.append(f"  MFU = 6 x non-embedding params x tokens / step s / {peak_tflops} TFLOP/s (target >= 45% "
                     "with the cache on)")
    if result.get("eval_table"):
        lines += ["eval (bench/bench_eval.py):", result["eval_table"]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=480.0, help="all parts together (default 8 minutes)")
    parser.add_argument("--gpu-peak-tflops", type=float, default=H100_H200_BF16_TFLOPS)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--worker", nargs=2, metavar=("PART", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        train_worker(args.worker[1])
        return 0
    why = no_gpu_message()
    if why:
        print(f"gpu-check: {why}", file=sys.stderr)
        return 2
    import torch

    started = time.time()
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "gpu": torch.cuda.get_device_name(),
              "num_gpus": torch.cuda.device_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "budget_s": args.budget_s, "parts": {}}
    budget = {name: share * args.budget_s for name, share in SHARES.items()}
    parts = result["parts"]
    parts["tests"] = run_part("tests", [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
                                        f"--timeout={int(budget['tests'])}", "tests"], budget["tests"])
    result["tests"] = summarize_tests(parts["tests"])
    with tempfile.TemporaryDirectory() as tmp:
        config = train_config(Path(tmp))
        parts["train"] = run_part("train", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1",
                                            "--master_port=29517", __file__, "--worker", "train", str(config)],
                                  budget["train"], env={"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")})
    found = [line for line in parts["train"]["stdout"].split("RESULT ")[1:]]
    if found:
        result["train"] = json.JSONDecoder().raw_decode(found[0])[0]
    eval_out = Path(tempfile.gettempdir()) / "gpu-check-eval.json"
    parts["eval"] = run_part("eval", [sys.executable, str(REPO / "bench" / "bench_eval.py"), "--repeats", "2",
                                      "--search-repeats", "3", "--out", str(eval_out)], budget["eval"])
    result["eval_table"] = parts["eval"]["stdout"].strip()[-6000:]
    if eval_out.is_file():
        result["eval"] = json.loads(eval_out.read_text())
    result["wall_s"] = time.time() - started
    text = table(result, args.gpu_peak_tflops)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(f".{args.out.name}.tmp")
    tmp_out.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp_out, args.out)
    print(f"written {args.out}")
    ok = all(p.get("rc") == 0 for p in parts.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
