"""model.compile on vs off: the gradient-cache step of an eager and a compiled encoder, side by side.

    .venv/bin/python bench/bench_compile.py [--model minilm|tiny] [--backend inductor|aot_eager]

One process, two DualEncoders with the same weights (mean pooling, normalised), one eager, one with
dist_lacl.model.compile_encoder (torch.compile, dynamic=True, inductor with a fresh cache directory,
so the compile time is a cold one). Step = GradCache's no-grad forward, IR loss (temperature 0.05) and
re-forward + backward, Q queries + 2Q passages (one positive, one hard negative each), chunk 32,
train mode (dropout on), no optimizer (the same on both sides). The first compiled step includes
compiling; the compile time is that step less the compiled side's median. Then n rounds with the sides
alternating (the machine is shared: neighbours' load is noise, not a bias). Agreement: loss and
gradients of one step from the same seed on each side (dropout included: fallback_random draws the
eager masks). Text: bench_grad_cache's (the demo's IR pairs, else the Python docs). Writes
bench/results/compile.json.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# A fresh inductor cache (removed at exit): the compile time measured is what a first run pays.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-compile-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "bench" / "workers"))

import torch  # noqa: E402
from bench_grad_cache import load_ir_records, model_paths  # noqa: E402
from grad_cache_worker import tokenize_batch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from dist_lacl.grad_cache import GradCache  # noqa: E402
from dist_lacl.losses import ir_loss  # noqa: E402
from dist_lacl.model import DualEncoder, compile_encoder, load_encoder  # noqa: E402

OUT = REPO / "bench" / "results" / "compile.json"
TEMPERATURE, CHUNK = 0.05, 32


def grad_cache(model: DualEncoder) -> GradCache:
    return GradCache(encode=lambda name, inputs: model(**inputs, tower=name),
                     loss_fn=lambda reps: (ir_loss(reps["query"], reps["passage"], TEMPERATURE), None),
                     backward_fn=lambda loss: loss.backward(), chunk_size=CHUNK)


def timed_step(model: DualEncoder, batch: dict, seed: int = 0) -> tuple[float, float]:
    """(seconds, loss) of one forward + loss + backward; gradients left on the parameters."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    gc = grad_cache(model)
    start = time.perf_counter()
    cache = gc.compute_loss(batch)
    gc.backward(cache)
    return time.perf_counter() - start, float(cache.loss)


def grads(model: DualEncoder) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def agreement(eager: DualEncoder, compiled: DualEncoder, batch: dict) -> dict:
    _, loss_e = timed_step(eager, batch, seed=1)
    g_e = grads(eager)
    _, loss_c = timed_step(compiled, batch, seed=1)
    g_c = grads(compiled)
    errors = {n: float((g_c[n] - g).norm() / g.norm()) for n, g in g_e.items() if g.norm() > 0}
    flat_e = torch.cat([g.flatten() for g in g_e.values()])
    flat_c = torch.cat([g_c[n].flatten() for n in g_e])
    return {"loss_eager": loss_e, "loss_compiled": loss_c, "loss_rel_err": abs(loss_c - loss_e) / abs(loss_e),
            "global_rel_err": float((flat_c - flat_e).norm() / flat_e.norm()),
            "median_rel_err": statistics.median(errors.values()), "num_params": len(errors)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("minilm", "tiny"), default="minilm")
    parser.add_argument("--backend", choices=("inductor", "aot_eager"), default="inductor")
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = model_paths(Path(tmp), {"scaling_model": None})[args.model]
        source, records = load_ir_records(args.queries)
        triples = [{"query": r["query"], "positive": r["positive_passages"][0]["text"],
                    "negative": r["negative_passages"][0]["text"]} for r in records[:args.queries]]
        batch = tokenize_batch(AutoTokenizer.from_pretrained(path), triples)
        eager = DualEncoder(load_encoder(path), pooling="mean", normalize=True).train()
        encoder = load_encoder(path)
        compile_encoder(encoder, args.backend)
        compiled = DualEncoder(encoder, pooling="mean", normalize=True).train()
        first_s, _ = timed_step(compiled, batch)
        times = {"eager": [], "compiled": []}
        for _ in range(args.rounds):
            for side, model in (("eager", eager), ("compiled", compiled)):
                times[side].append(timed_step(model, batch)[0])
        med = {side: statistics.median(ts) for side, ts in times.items()}
        result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "model": args.model,
                  "backend": args.backend, "queries": args.queries, "passages": 2 * args.queries, "chunk": CHUNK,
                  "threads": args.threads, "rounds": args.rounds, "text": source, "step_s": times, "median_s": med,
                  "first_compiled_step_s": first_s, "compile_s": first_s - med["compiled"],
                  "graphs": counters["stats"]["unique_graphs"], "agreement": agreement(eager, compiled, batch),
                  "torch": torch.__version__, "cpus": os.cpu_count(),
                  "load_average": [load_start, os.getloadavg()[0]]}
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


def table(r: dict) -> str:
    med, a = r["median_s"], r["agreement"]
    breakeven = r["compile_s"] / (med["eager"] - med["compiled"]) if med["compiled"] < med["eager"] else None
    lines = [f"model.compile, {r['model']}, {r['queries']} queries + {r['passages']} passages, chunk {r['chunk']}, "
             f"gradient-cache step (no-grad forward, loss, re-forward + backward), train mode, {r['threads']} "
             f"thread(s), sides alternating, n = {r['rounds']}, median; torch {r['torch']}, load average "
             f"{r['load_average'][0]:.1f} -> {r['load_average'][1]:.1f}",
             f"{'encoder':24} {'step s':>8} {'range':>12} {'/ eager':>8}",
             f"{'eager':24} {med['eager']:>8.2f} {min(r['step_s']['eager']):>5.2f}-{max(r['step_s']['eager']):<6.2f} "
             f"{1.0:>7.2f}x",
             f"{'compiled (' + r['backend'] + ')':24} {med['compiled']:>8.2f} "
             f"{min(r['step_s']['compiled']):>5.2f}-{max(r['step_s']['compiled']):<6.2f} "
             f"{med['compiled'] / med['eager']:>7.2f}x",
             f"first compiled step {r['first_compiled_step_s']:.1f} s: compile time {r['compile_s']:.1f} s, "
             f"{r['graphs']} graphs; "
             + (f"paid back after {breakeven:.0f} steps" if breakeven else "never paid back (compiled is not faster)"),
             f"agreement, one step from the same seed (dropout on): loss rel err {a['loss_rel_err']:.1e}, gradients "
             f"of {a['num_params']} parameters: all together {a['global_rel_err']:.1e}, median {a['median_rel_err']:.1e}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
