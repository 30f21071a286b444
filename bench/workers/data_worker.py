"""One rank of a bench_data run: build the trainer (which loads or builds the data caches), run STEPS
training steps, print one RESULT line: time from launch to the end of the first step, the process's
peak RSS, the resident memory after the steps split into anonymous and file-backed, the time spent loading
(or building) the data caches, and the share of step time the steps after the first spent waiting for their
inputs.

usage: data_worker.py CONFIG.yaml STEPS [section.key=value ...]   (env BENCH_T0: the launch time)
"""

import json
import os
import resource
import sys
import time

import torch

from dist_lacl import distributed as dist
from dist_lacl.config import load_config
from dist_lacl.trainer import Trainer


def timed_load_data(self):
    start = time.time()
    try:
        return UNTIMED_LOAD_DATA(self)
    finally:
        self.data_load_s = time.time() - start


UNTIMED_LOAD_DATA, Trainer.load_data = Trainer.load_data, timed_load_data


def resident_gib() -> dict:
    """This process's resident memory now, split: anonymous (its own) and file-backed (mapped files, such
    as the memory-mapped Arrow caches: page cache shared by the ranks of a node, which ru_maxrss counts)."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {f"{k.lower()}_gib": int(fields[k].split()[0]) / 2**20 for k in ("RssAnon", "RssFile")}


def main():
    config, steps, *overrides = sys.argv[1:]
    t0 = float(os.environ["BENCH_T0"])
    cfg = load_config(config, overrides)
    torch.set_num_threads(1)
    trainer = Trainer(cfg)
    ready = time.time() - t0
    trainer.engine.train()
    trainer.train_step()
    first = time.time() - t0
    wait = step = 0.0
    for _ in range(int(steps) - 1):
        scalars = trainer.train_step()
        wait, step = wait + trainer.data.last_wait_s, step + scalars["perf/step_s"]
    print("RESULT " + json.dumps({
        "rank": dist.rank(), "init_s": ready, "first_step_s": first, "data_load_s": trainer.data_load_s,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "input_wait_share": wait / step if step else None, "step_s": step / max(int(steps) - 1, 1),
        **resident_gib()}), flush=True)
    dist.destroy()


if __name__ == "__main__":
    main()
