"""Run N real training steps (no checkpoint) and print one JSON line per rank: losses, step times, and
memory: the process's peak RSS over its life, and the peak RSS sampled *during the steps* (after the
model, engine and data were built), which is what the training step itself needs.

usage: train_steps.py CONFIG.yaml NUM_STEPS [section.key=value ...]
"""

import json
import sys
import threading

import psutil
import torch

from dist_lacl import distributed as dist
from dist_lacl.config import load_config
from dist_lacl.trainer import Trainer, peak_memory_gb


class RssSampler:
    """Peak resident memory of this process while the body runs, sampled every 5 ms (GiB)."""

    def __enter__(self):
        self.process, self.done = psutil.Process(), threading.Event()
        self.start = self.peak = self.process.memory_info().rss / 2**30
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss / 2**30)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def main():
    config, num_steps, *overrides = sys.argv[1:]
    cfg = load_config(config, overrides)
    torch.set_num_threads(max(cfg.train.num_threads, 1))
    trainer = Trainer(cfg)
    trainer.engine.train()
    losses, step_s = [], []
    with RssSampler() as rss:
        for _ in range(int(num_steps)):
            scalars = trainer.train_step()
            losses.append(scalars["loss/total"])
            step_s.append(scalars["perf/step_s"])
    params = sum(p.numel() for p in trainer.engine.module.parameters())
    print("RESULT " + json.dumps({"rank": dist.rank(), "world_size": dist.world_size(), "losses": losses,
                                  "step_s": step_s, "peak_mem_gb": peak_memory_gb(), "rss_before_steps_gb": rss.start,
                                  "peak_rss_steps_gb": rss.peak, "params": params}),
          flush=True)
    dist.destroy()


if __name__ == "__main__":
    main()
