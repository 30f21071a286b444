"""Resume from the newest checkpoint (if any), train to step STOP, checkpoint, and print one JSON line
per rank: the losses of the steps it ran and the data position it saved.

usage: train_until.py CONFIG.yaml STOP [section.key=value ...]
"""

import json
import sys

import torch

from dist_lacl import distributed as dist
from dist_lacl.config import load_config
from dist_lacl.trainer import Trainer


def main():
    config, stop, *overrides = sys.argv[1:]
    cfg = load_config(config, overrides)
    torch.set_num_threads(1)
    trainer = Trainer(cfg)
    trainer.resume()
    trainer.engine.train()
    first, losses = trainer.state.step, []
    while trainer.state.step < int(stop):
        losses.append(trainer.train_step()["loss/total"])
        trainer.state.step += 1
    trainer.save()
    print("RESULT " + json.dumps({"rank": dist.rank(), "world_size": dist.world_size(), "first_step": first,
                                  "losses": losses, "data": trainer.data.state_dict()}), flush=True)
    dist.destroy()


if __name__ == "__main__":
    main()
