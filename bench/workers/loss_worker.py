"""One rank of bench/bench_loss.py: the loss phase alone (objective.Objective on random representations:
gather, IR + semantic + language loss, backward to the representations), its peak memory and time.

usage (under torchrun): loss_worker.py B G N K D SHARDING BLOCK_ROWS REPEATS
Prints one `RESULT {json}` line per rank. Memory: the kernel's resident high-water mark (VmHWM), reset
after the representations exist and a small warm-up run (gloo buffers, autograd), read after the
backward; the phase's peak is that mark minus the resident set before it. Run with
MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors leave the resident set.
"""

import ctypes
import gc
import json
import re
import sys
import time
from pathlib import Path

import psutil
import torch

from dist_lacl import distributed as dist
from dist_lacl.config import LossConfig
from dist_lacl.objective import PASSAGE, QUERY, Job, Objective


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def peak_mib() -> float:
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


def local_reps(b: int, g: int, n: int, k: int, d: int) -> dict[Job, torch.Tensor]:
    """This rank's rows: b queries, b*g passages, n parallel pairs, k monolingual sentences (unit norm)."""
    gen = torch.Generator().manual_seed(dist.rank())
    rows = {QUERY: b, PASSAGE: b * g, Job("para_en", "query"): n, Job("para_xx", "query"): n, Job("mono", "query"): k}
    return {job: torch.nn.functional.normalize(torch.randn(m, d, generator=gen), dim=1) for job, m in rows.items()}


def run_once(loss_fn, reps: dict[Job, torch.Tensor]) -> tuple[float, float]:
    """Forward + backward of the loss; (loss, seconds)."""
    leaves = {k: v.clone().requires_grad_() for k, v in reps.items()}
    dist.barrier()
    start = time.perf_counter()
    loss, _ = loss_fn(leaves)
    loss.backward()
    seconds = time.perf_counter() - start
    return float(loss), seconds


def main():
    big_b, g, big_n, big_k, d, sharding, block_rows, repeats = sys.argv[1:9]
    big_b, g, big_n, big_k, d, block_rows, repeats = map(int, (big_b, g, big_n, big_k, d, block_rows, repeats))
    torch.set_num_threads(1)
    dist.init_process_group(3600, backend="gloo")
    w = dist.world_size()
    loss_fn, warm_up = (Objective(LossConfig(temperature=0.05, semantic_weight=1.0, language_weight=1.0,
                                             sharding=sharding, block_rows=blocks))
                        for blocks in (block_rows, min(block_rows, 2)))
    # Every code path once at a tiny size (with several blocks where blocked: checkpointing's first call
    # loads code and buffers worth ~70 MiB of resident memory, which is not the loss's).
    run_once(warm_up, local_reps(4, g, 4, 4, d))
    reps = local_reps(big_b // w, g, big_n // w, big_k // w, d)
    runs = []
    for _ in range(repeats):
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        before = rss_mib()
        reset_peak()
        loss, seconds = run_once(loss_fn, reps)
        runs.append({"loss": loss, "seconds": seconds, "peak_mib": peak_mib() - before})
    print("RESULT " + json.dumps({"rank": dist.rank(), "world_size": w, "runs": runs}), flush=True)
    dist.destroy()


if __name__ == "__main__":
    main()
