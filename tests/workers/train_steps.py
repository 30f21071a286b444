"""Run N real training steps (no checkpoint) and print one JSON line per rank: losses and peak memory.

usage: train_steps.py CONFIG.yaml NUM_STEPS [section.key=value ...]
"""

import json
import sys

import torch

from dist_lacl import distributed as dist
from dist_lacl.config import load_config
from dist_lacl.trainer import Trainer, peak_memory_gb


def main():
    config, num_steps, *overrides = sys.argv[1:]
    cfg = load_config(config, overrides)
    torch.set_num_threads(max(cfg.train.num_threads, 1))
    trainer = Trainer(cfg)
    trainer.engine.train()
    losses, step_s = [], []
    for _ in range(int(num_steps)):
        scalars = trainer.train_step()
        losses.append(scalars["loss/total"])
        step_s.append(scalars["perf/step_s"])
    params = sum(p.numel() for p in trainer.engine.module.parameters())
    print("RESULT " + json.dumps({"rank": dist.rank(), "world_size": dist.world_size(), "losses": losses,
                                  "step_s": step_s, "peak_mem_gb": peak_memory_gb(), "params": params}),
          flush=True)
    dist.destroy()


if __name__ == "__main__":
    main()
