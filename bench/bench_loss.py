"""Loss-phase benchmark: replicated vs sharded (vs row-blocked) loss, peak memory and time per rank.

    .venv/bin/python bench/bench_loss.py [--quick] [--batches 1024,4096,16384]   # table + bench/results/loss.json

The loss phase alone, as the trainer runs it between the gradient cache's no-grad forward and its
re-forward: objective.Objective on random unit-norm representations (no encoder) of B queries with G
passages each, N = B parallel pairs and K = B monolingual sentences, D = 768, temperature 0.05, all three
losses; forward and backward to the representations, on 4 gloo ranks (torchrun, 1 thread each). Every
case is a fresh 4-process run (bench/workers/loss_worker.py, MALLOC_MMAP_THRESHOLD_=65536 so freed
tensors leave the resident set); its memory is the kernel's resident high-water mark during the phase
minus the resident set before it, per rank (max over ranks), min over repeats; time is the slowest rank's
forward+backward, median over repeats. A case whose predicted memory (formula below, docs/distributed.md)
does not fit in this machine's available memory is not run and says so.

--grad-cache: table 1 of bench/bench_grad_cache.py for the tiny encoder only (its memory target: the
cached step's peak at 2,048 queries within 1.15x of 32), with the IR loss whole and in row blocks. It
runs in one process, where sharding changes nothing (one rank scores every row); the blocks are what
bound the loss phase there. Results under "grad_cache" in the same JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers_launch import rank_results, torchrun  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
WORKER = REPO / "bench" / "workers" / "loss_worker.py"
OUT = REPO / "bench" / "results" / "loss.json"
G, D, WORLD, BLOCK_ROWS = 8, 768, 4, 256
MODES = (("replicated", 0), ("sharded", 0), ("sharded", BLOCK_ROWS))
TARGET = 1.3  # sharded peak per rank / (replicated peak / world size)
SCORE_COPIES = 3  # a score matrix's copies alive at the backward's peak: log-softmax, its gradient, scores'


def predicted_mib(b: int, sharding: str, block_rows: int, world: int = WORLD) -> float:
    """Loss-phase memory per rank (fp32), the formula of docs/distributed.md with N = K = B."""
    n = k = b
    anchors = b // world if sharding == "sharded" else b  # rows this rank scores, per loss
    if block_rows:
        anchors = min(block_rows, anchors)  # one block alive at a time
    ir, aux = anchors * b * G, 2 * anchors * n + 2 * anchors * k * n // b  # semantic: 2 directions; language: 2
    # Unblocked, IR's log-softmax is still saved while the auxiliary losses run their backward first.
    scores = SCORE_COPIES * ir if block_rows else max(SCORE_COPIES * ir, ir + SCORE_COPIES * aux)
    rows = b * (1 + G) + 2 * n + k  # every gathered representation
    floor = 2 * rows * D + 2 * rows * D // world  # gathered copy + its gradient; local leaves + their gradient
    return 4 * (scores + floor) / 2**20


def available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def run_case(b: int, sharding: str, block_rows: int, repeats: int, margin_mib: float) -> dict:
    case = {"batch": b, "sharding": sharding, "block_rows": block_rows,
            "predicted_mib": round(predicted_mib(b, sharding, block_rows), 1)}
    need, have = WORLD * case["predicted_mib"], available_mib() - margin_mib
    if need > have:
        case["skipped"] = f"does not fit: predicted {need / 1024:.1f} GiB on {WORLD} ranks, {have / 1024:.1f} available"
        return case
    proc = torchrun(WORKER, b, G, b, b, D, sharding, block_rows, repeats, nproc=WORLD, timeout=3600,
                    MALLOC_MMAP_THRESHOLD_="65536")
    ranks = rank_results(proc.stdout)
    case["peak_mib"] = min(max(r["runs"][i]["peak_mib"] for r in ranks) for i in range(repeats))
    case["seconds"] = statistics.median(max(r["runs"][i]["seconds"] for r in ranks) for i in range(repeats))
    case["loss"] = ranks[0]["runs"][0]["loss"]
    case["per_rank_peak_mib"] = [min(run["peak_mib"] for run in r["runs"]) for r in ranks]
    return case


def mode_name(sharding: str, block_rows: int) -> str:
    return sharding + (f" + blocks of {block_rows}" if block_rows else "")


def table(cases: list[dict]) -> str:
    lines = [f"loss phase, {WORLD} gloo ranks, G={G}, D={D}, N=K=B, fp32; memory per rank (max over ranks)",
             f"{'global B':>8}  {'mode':<26} {'peak MiB':>9} {'formula':>9} {'s':>7}  "
             f"{'vs replicated/W':>15}  {'time vs repl.':>13}"]
    for c in cases:
        rep = next(r for r in cases if r["batch"] == c["batch"] and r["sharding"] == "replicated"
                   and not r["block_rows"])
        rep_mib = rep.get("peak_mib")
        rep_label = "" if rep_mib is not None else " (formula)"  # replicated not run: its formula value
        rep_mib = rep_mib if rep_mib is not None else rep["predicted_mib"]
        if "skipped" in c:
            lines.append(f"{c['batch']:>8}  {mode_name(c['sharding'], c['block_rows']):<26} {'-':>9} "
                         f"{c['predicted_mib']:>9.0f} {'-':>7}  {c['skipped']}")
            continue
        ratio = "-" if c is rep else f"{c['peak_mib'] / (rep_mib / WORLD):.2f}{rep_label}"
        t = f"{c['seconds'] / rep['seconds']:.2f}" if "seconds" in rep else "-"
        lines.append(f"{c['batch']:>8}  {mode_name(c['sharding'], c['block_rows']):<26} {c['peak_mib']:>9.0f} "
                     f"{c['predicted_mib']:>9.0f} {c['seconds']:>7.1f}  {ratio:>15}  {t:>13}")
    lines.append(f"target: sharded peak per rank within {TARGET}x of replicated / {WORLD}")
    return "\n".join(lines)


def grad_cache_section(repeats: int, block_rows_list=(0, BLOCK_ROWS), tokenize_in=("main", "thread")
                       ) -> tuple[str, dict]:
    """Tiny-encoder cached step at 32 and 2,048 queries, chunk 32, loss whole vs in blocks of 256 rows,
    the batch tokenised on the step's thread or in another one (as the trainer's prefetcher does)."""
    import tempfile

    import bench_grad_cache as gc_bench

    plan = {**gc_bench.FULL, "memory_models": ("tiny",), "memory_batches": (32, 2048), "scaling_model": "tiny"}
    out, lines = {}, ["tiny encoder, cached step (chunk 32, 1 positive + 1 hard negative per query), one process; "
                      f"peak MiB = kernel high-water mark of the whole step, median of {repeats}; at 2,048 queries, "
                      "over the baseline: each phase's peak, and after the step the resident memory glibc "
                      "gives back on malloc_trim (freed, not live) and the live growth (heap in use + mmapped)"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, records = gc_bench.load_ir_records(2048)
        triples, _ = gc_bench.write_data(work, records)
        model = gc_bench.model_paths(work, plan)["tiny"]
        for where in tokenize_in:
            for block_rows in block_rows_list:
                runs = {}
                for batch in plan["memory_batches"]:
                    print(f"grad cache tiny B={batch} block_rows={block_rows} tokenize in {where} ...",
                          file=sys.stderr, flush=True)
                    runs[batch] = [gc_bench.run_worker("memory", model, triples, 1, batch=batch, chunk=plan["chunk"],
                                                       block_rows=block_rows, tokenize_in=where)
                                   for _ in range(repeats)]
                    out[f"{where}/{block_rows}/{batch}"] = runs[batch]
                peaks = {b: statistics.median(r["peak_hwm_mib"] or r["peak_sampled_mib"] for r in rs)
                         for b, rs in runs.items()}
                ratio = peaks[2048] / peaks[32]
                out[f"ratio/{where}/{block_rows}"] = ratio
                lines.append(f"tokenize in {where:6} loss block_rows {block_rows:>4}: peak@32 {peaks[32]:.0f} MiB, "
                             f"peak@2048 {peaks[2048]:.0f} MiB, ratio {ratio:.3f} "
                             f"(target <= 1.15: {'met' if ratio <= 1.15 else 'NOT met'})")
                lines.append("    @2048 over baseline: " + attribution(runs[2048][0]))
    return "\n".join(lines), out


def attribution(run: dict) -> str:
    """One run's memory at 2,048 queries, MiB over its baseline, by phase and by what holds it after the step."""
    base = run["baseline_mib"]
    phases = ", ".join(f"{k} +{v - base:.0f}" for k, v in run["phase_peak_mib"].items())
    start, end = run["phase_end_mib"]["start"], run["after_step_mib"]
    if "heap_used" not in end:
        return phases
    live = (end["heap_used"] + end["mmapped"]) - (start["heap_used"] + start["mmapped"])
    held = end["rss"] - run["rss_after_trim_mib"]
    return f"{phases}; after the step: resident +{end['rss'] - base:.0f}, of it freed heap glibc held {held:.0f}, live {live:+.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 256, 1,024 only (a minute)")
    parser.add_argument("--batches", default="1024,4096,16384", help="global query batches, comma-separated")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--margin-gib", type=float, default=3.0, help="memory left to other jobs")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--grad-cache", action="store_true", help="only the tiny-encoder grad-cache table (~5 min)")
    parser.add_argument("--gc-block-rows", default=f"0,{BLOCK_ROWS}", help="--grad-cache: loss.block_rows values")
    parser.add_argument("--gc-tokenize", default="main,thread",
                        help="--grad-cache: where the batch is tokenised (main: the step's thread; thread: another)")
    args = parser.parse_args()
    if args.grad_cache:
        text, runs = grad_cache_section(args.repeats, [int(b) for b in args.gc_block_rows.split(",")],
                                        args.gc_tokenize.split(","))
        print(text)
        previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
        write_json({**previous, "grad_cache": {"table": text, "runs": runs}}, args.out)
        return 0
    batches = [256, 1024] if args.quick else [int(b) for b in args.batches.split(",")]
    cases = []
    for b in batches:
        for sharding, block_rows in MODES:
            print(f"B={b} {mode_name(sharding, block_rows)} ...", file=sys.stderr, flush=True)
            repeats = args.repeats if b <= 4096 else 1
            cases.append(run_case(b, sharding, block_rows, repeats, args.margin_gib * 1024))
    text = table(cases)
    print(text)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "world_size": WORLD, "threads_per_rank": 1},
              "method": "VmHWM reset before the phase, minus RSS before; MALLOC_MMAP_THRESHOLD_=65536",
              "cases": cases, "table": text}
    if args.out.is_file() and "grad_cache" in (previous := json.loads(args.out.read_text())):
        result["grad_cache"] = previous["grad_cache"]
    write_json(result, args.out)
    return 0


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
