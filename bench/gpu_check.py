"""The GPU check for the borrowed machine (docs/gpu.md): parts in priority order, each in a process group
of its own with its own time limit; JSON and a markdown table written after EVERY part.

    python3 bench/gpu_check.py --out DIR [--device cuda|cpu] [--tiny] [--parts NAME ...] [--fail-part NAME]

Parts (a missing package skips a part, with the reason; a failing or timed-out part leaves the others):
  smoke        one cached ZeRO-2 step of XLM-R-large's shape (bf16, random weights, real XLM-R tokenizer)
  train        its step time, tokens/s per GPU, MFU per GPU and peak memory: chunks of 32/64/128 rows,
               a 16384-token budget, chunks of 32 padding-free (model.padding_free)
  uncached     the same step without the cache
  zero2        the ZeRO-2 equivalence tests (tests/test_distributed_equivalence.py)
  gpu_tests    every GPU-marked test (pytest -m gpu)
  search       encoding throughput, exact search (faiss-gpu or torch) against faiss-cpu flat
`--device cpu --tiny` is the dry run (the tests' tiny encoder, every part in seconds; tests/test_gpu_check.py).
Writes DIR/gpu.json and DIR/gpu.md; exit 0 when every part ran (or was skipped with a reason), else 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "bench" / "workers" / "gpu_check_worker.py"
H100_BF16_TFLOPS = 989.0  # dense bf16 peak of one H100 / H200 SXM
TRAINING = ("torch", "transformers", "deepspeed", "datasets", "yaml")


@dataclass(frozen=True)
class Part:
    name: str
    limit_s: float  # on the GPU; the dry run gives each part TINY_LIMIT_S
    needs: tuple[str, ...]


PARTS = (Part("smoke", 55, TRAINING), Part("train", 80, TRAINING), Part("uncached", 35, TRAINING),
         Part("zero2", 40, (*TRAINING, "pytest")), Part("gpu_tests", 50, ("torch", "pytest", "faiss")),
         Part("search", 50, ("torch", "transformers", "faiss", "numpy")))
TINY_LIMIT_S = 120
TRAIN_SETTINGS = ["chunk32", "chunk64", "chunk128", "tokens16384", "chunk32-padding-free"]


def command(part: str, args, work: Path) -> list[str]:
    """The part's command line (run from the repository root)."""
    device = ["--device", args.device] + (["--tiny"] if args.tiny else [])
    worker = [sys.executable, str(WORKER)]
    batch = ["--batch", "8"] if args.tiny else []
    pytest = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--continue-on-collection-errors"]
    if part == "smoke":
        return [*worker, "train", "--work", str(work / "train"), *device, *batch, "--settings", "chunk32", "--steps", "1"]
    if part == "train":
        return [*worker, "train", "--work", str(work / "train"), *device, *batch, "--settings", *TRAIN_SETTINGS]
    if part == "uncached":
        return [*worker, "train", "--work", str(work / "train"), *device, *batch, "--settings", "uncached"]
    if part == "zero2":  # the dry run only collects them: each is a 2-process DeepSpeed run of a minute
        return [*pytest, *(["--collect-only"] if args.tiny else []), "tests/test_distributed_equivalence.py", "-k", "zero2"]
    if part == "gpu_tests":
        return [*pytest, "-m", "gpu", *(["tests/test_torch_search.py"] if args.tiny else ["tests"])]
    return [*worker, "search", "--work", str(work / "train"), *device]


def missing(needs: tuple[str, ...]) -> list[str]:
    return [name for name in needs if importlib.util.find_spec(name) is None]


def missing_files(part: str, tiny: bool) -> list[str]:
    """The carried files a full-size part reads (the dry run builds its own)."""
    bundle = Path(os.environ.get("GPU_BUNDLE", REPO / "bench" / "gpu-bundle"))
    needed = [bundle / "xlmr-tokenizer" / "tokenizer.json.gz", bundle / "data" / "train_ir.jsonl.gz"]
    if tiny or part not in ("smoke", "train", "uncached", "search"):
        return []
    return [str(p) for p in needed if not p.is_file()]


def run(cmd: list[str], limit_s: float, log: Path) -> dict:
    """`cmd` in a new session; at its limit its whole process group is killed (workers and all)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    # The repository first, then whatever PYTHONPATH holds (the carried wheels' folder): added to, never replaced.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            rc = None
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # also what a finished part left behind
        except ProcessLookupError:
            pass
        proc.wait()
    text = log.read_text(errors="replace")
    rows = [json.loads(line[4:]) for line in text.splitlines() if line.startswith("ROW ")]
    state = "timed out" if rc is None else ("ok" if rc == 0 else f"failed (rc {rc})")
    return {"state": state, "rc": rc, "wall_s": round(time.monotonic() - start, 1), "limit_s": limit_s,
            "rows": rows, "output_tail": text[-6000:]}


def mfu(matmul_params: int, tokens_per_gpu: float, step_s: float, peak_tflops: float) -> float:
    """6 x non-embedding parameters x this GPU's tokens / step time / one GPU's peak (the cache's extra
    forward is hardware work, not model work: MFU counts the model's)."""
    return 6 * matmul_params * tokens_per_gpu / step_s / (peak_tflops * 1e12)


def markdown(result: dict) -> str:
    """The README's table: one line per part, then the training settings and the search."""
    lines = [f"gpu-check on {result['device_name']}, {result['date']}, torch {result['torch']}",
             "", "| part | state | s | note |", "|---|---|---|---|"]
    for name, part in result["parts"].items():
        note = part.get("reason", "") or next((line for line in reversed(part.get("output_tail", "").splitlines())
                                               if line.strip()), "")[:100]
        lines.append(f"| {name} | {part['state']} | {part.get('wall_s', 0):.0f} of {part.get('limit_s', 0):.0f} | "
                     f"{note.replace('|', '/')} |")
    model = next((r for p in result["parts"].values() for r in p.get("rows", []) if r.get("kind") == "model"), None)
    settings = [{"part": name, **r} for name, p in result["parts"].items() for r in p.get("rows", [])
                if r.get("kind") == "setting"]
    if model and settings:
        lines += ["", f"Training step, {model['params'] / 1e6:.0f}M parameters ({model['matmul_params'] / 1e6:.0f}M "
                  f"non-embedding), {model['world_size']} GPU(s); MFU per GPU against {result['peak_tflops']} TFLOP/s",
                  "", "| setting | step s | tokens/s per GPU | MFU | peak GiB |", "|---|---|---|---|---|"]
        for r in settings:
            if "error" in r:
                lines.append(f"| {r['part']}: {r['setting']} | {r['error']} | | | |")
                continue
            peak = f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") is not None else "-"
            lines.append(f"| {r['part']}: {r['setting']} | {r['median_step_s']:.3f} | {r['tokens_per_s_per_gpu']:.0f} | "
                         f"{mfu(model['matmul_params'], r['tokens_per_step_per_gpu'], r['median_step_s'], result['peak_tflops']):.1%}"
                         f" | {peak} |")
    for r in (r for p in result["parts"].values() for r in p.get("rows", []) if r.get("kind") in ("encode", "search")):
        if r["kind"] == "encode":
            lines.append(f"\nEncoding ({r['dtype']}): {r['tokens_per_s']:.0f} tokens/s, {r['passages_per_s']:.0f} passages/s")
        else:
            lines.append(f"Search ({r['backend']}): {r['corpus_rows']} x {r['dim']}, k {r['k']}: {r['queries_per_s']:.0f} "
                         f"queries/s; rows equal to faiss-cpu flat: {r['torch_rows_equal_faiss_cpu']:.2%}")
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> None:
    """gpu.json and gpu.md, each replaced whole (a reader never sees half of one)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu.json", json.dumps(result, indent=1)), ("gpu.md", markdown(result))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def device_facts(device: str) -> dict:
    try:
        import torch
    except ImportError:
        return {"torch": None, "device_name": "no torch"}
    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": torch.cuda.device_count() if cuda else 0,
            "device_name": torch.cuda.get_device_name() if device == "cuda" and cuda else "cpu"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json and gpu.md ($OUT on the device)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny encoder and small sizes (the dry run)")
    parser.add_argument("--parts", nargs="+", choices=[p.name for p in PARTS], help="only these (default: all)")
    parser.add_argument("--fail-part", choices=[p.name for p in PARTS], help="run this part as a failing command")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_TFLOPS, help="one GPU's peak, for MFU")
    args = parser.parse_args()
    facts = device_facts(args.device)
    if args.device == "cuda" and not facts.get("gpus"):
        print(f"gpu-check: no CUDA GPU visible to torch {facts['torch']}; use --device cpu --tiny for the dry run",
              file=sys.stderr)
        return 2
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": args.device, "tiny": args.tiny,
              "peak_tflops": args.peak_tflops, **facts, "parts": {}}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        for part in PARTS:
            if args.parts and part.name not in args.parts:
                continue
            lacking = missing(part.needs) + missing_files(part.name, args.tiny)
            if lacking:
                result["parts"][part.name] = {"state": "skipped", "reason": f"not installed: {', '.join(lacking)}"}
            else:
                cmd = command(part.name, args, work)
                if part.name == args.fail_part:
                    cmd = [sys.executable, "-c", "raise SystemExit('failing on purpose (--fail-part)')"]
                limit = TINY_LIMIT_S if args.tiny else part.limit_s
                result["parts"][part.name] = {"command": cmd[1:], **run(cmd, limit, work / f"{part.name}.log")}
            write(result, args.out)  # before the line that says the part is done
            print(f"[{time.strftime('%H:%M:%S')}] {part.name}: {result['parts'][part.name]['state']}", flush=True)
    print(markdown(result))
    return 0 if all(p["state"] in ("ok", "skipped") for p in result["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
