"""Train with a NaN loss injected on ONE rank at chosen steps; print what the trainer did as JSON.

usage: nonfinite.py CONFIG.yaml NAN_STEPS(comma-separated, 1-based) [section.key=value ...]
"""

import json
import sys

import torch

from dist_lacl import distributed as dist
from dist_lacl.config import load_config
from dist_lacl.errors import NonFiniteError
from dist_lacl.trainer import Trainer


def main():
    config, nan_steps, *overrides = sys.argv[1:]
    nan_steps = {int(s) for s in nan_steps.split(",")}
    cfg = load_config(config, overrides)
    trainer = Trainer(cfg)
    loss_fn = trainer.grad_cache.loss_fn

    def poisoned(reps, **loss_args):
        loss, terms = loss_fn(reps, **loss_args)
        if trainer.state.step + 1 in nan_steps and dist.rank() == 1:  # one rank only: all must agree
            loss = loss * float("nan")
        return loss, terms

    trainer.grad_cache.loss_fn = poisoned
    weights = []
    trainer.engine.train()
    trainer.train_step = _recording(trainer, weights)
    outcome = "finished"
    try:
        trainer.train()
    except NonFiniteError as e:
        outcome = str(e)
    if dist.is_main():
        print("RESULT " + json.dumps({"outcome": outcome, "state": vars(trainer.state), "weights": weights}),
              flush=True)
    dist.destroy()


def _recording(trainer, weights):
    step = trainer.train_step

    def wrapped():
        scalars = step()
        p = next(trainer.engine.module.parameters())
        weights.append(float(p.detach().double().sum()))
        return scalars
    return wrapped


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
