"""One rank of a bench_zero_memory run: build the real trainer, take STEPS training steps, and print one
RESULT line with the bytes this rank holds, read from the tensors themselves, by what they are for:

  weights    the module's parameters (bf16 or fp32, never partitioned under ZeRO-2)
  grads      gradients: the parameters' .grad plus the optimizer wrapper's gradient buffers
             (ZeRO-2's partition and reduce bucket, DeepSpeed's fp32 copies)
  master     the optimizer wrapper's fp32 master weights (ZeRO-2 keeps them also in fp32 runs)
  adam       the inner optimizer's state (exp_avg, exp_avg_sq)

Counted three times in the last step, each storage once (views into one flat buffer are not counted
twice): at the end of the backward phase (before the engine reduces the gradients: under `coalesced`
every rank still holds the full gradient), just before the optimizer update (gradients reduced, under
ZeRO-2 partitioned) and just after it (Adam state present). Also the peak resident set sampled during
the steps and over the process's life (GiB), and the time to build the trainer and to run the steps.

usage: zero_memory_worker.py CONFIG.yaml STEPS [section.key=value ...]
"""

import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "workers"))

from train_steps import RssSampler  # noqa: E402

from dist_lacl import distributed as dist  # noqa: E402
from dist_lacl.config import load_config  # noqa: E402
from dist_lacl.engine import DDPEngine, DeepSpeedEngine  # noqa: E402
from dist_lacl.trainer import Trainer, peak_memory_gb  # noqa: E402

# Attributes of DeepSpeed's optimizer wrappers that hold fp32 master weights: ZeRO stage 1/2, BF16_Optimizer,
# FP16_Optimizer, FP16_UnfusedOptimizer (bf16 at stage 0).
MASTER_ATTRS = ("single_partition_of_fp32_groups", "fp32_groups_flat_partition", "fp32_groups_flat", "fp32_groups")


def tensors(obj, depth: int = 0):
    """Every tensor reachable from `obj` through lists, tuples and dicts."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for item in obj:
            yield from tensors(item, depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for item in obj.values():
            yield from tensors(item, depth + 1)


class Ledger:
    """Bytes per category; a storage (a flat buffer and all its views) is counted in the first category
    that reaches it."""

    def __init__(self):
        self.seen, self.bytes = set(), {}

    def add(self, category: str, objs) -> None:
        for t in tensors(objs):
            storage = t.untyped_storage()
            if storage.nbytes() and storage.data_ptr() not in self.seen:
                self.seen.add(storage.data_ptr())
                self.bytes[category] = self.bytes.get(category, 0) + storage.nbytes()


def optimizers(engine):
    """(DeepSpeed's or accelerate's wrapper, the torch optimizer inside it)."""
    if hasattr(engine, "ds"):
        wrapper = engine.ds.optimizer
        return wrapper, getattr(wrapper, "optimizer", wrapper)
    return engine.optimizer, engine.optimizer.optimizer


def model_state_bytes(engine) -> dict:
    params = list(engine.module.parameters())
    wrapper, inner = optimizers(engine)
    ledger = Ledger()
    ledger.add("weights", params)  # their storages: DeepSpeed's flat weight buffers too
    master = [getattr(wrapper, a) for a in MASTER_ATTRS if hasattr(wrapper, a)]
    ledger.add("master", master)
    ledger.add("adam", inner.state)
    ledger.add("grads", [t.grad for t in [*params, *tensors(master)] if t.grad is not None])
    if wrapper is not inner:  # the wrapper's own buffers: gradient partitions, buckets, fp32 grad copies
        for name, value in vars(wrapper).items():
            if name not in ("optimizer", "param_names", "param_names_map"):
                ledger.add("grads" if "grad" in name or "ipg" in name else f"other:{name}", value)
    return {**ledger.bytes, "wrapper": type(wrapper).__name__, "inner": type(inner).__name__}


def counted_backward_context(original):
    """`original` (an engine's backward_context) that counts the bytes at the end of the backward phase,
    before the engine reduces the gradients at its exit."""
    @contextlib.contextmanager
    def backward_context(self):
        with original(self):
            yield
            COUNTS["end_of_backward"] = model_state_bytes(self)
    return backward_context


def counted_step(original):
    """`original` (an engine's step) that counts the bytes before the optimizer update and after it."""
    def step(self):
        COUNTS["before_update"] = model_state_bytes(self)
        stats = original(self)
        COUNTS["after_update"] = model_state_bytes(self)
        return stats
    return step


COUNTS: dict[str, dict] = {}  # the last step's counts


def main():
    config, num_steps, *overrides = sys.argv[1:]
    cfg = load_config(config, overrides)
    torch.set_num_threads(1)
    for engine in (DeepSpeedEngine, DDPEngine):  # before the trainer binds them
        engine.backward_context = counted_backward_context(engine.backward_context)
        engine.step = counted_step(engine.step)
    start = time.perf_counter()
    trainer = Trainer(cfg)
    init_s = time.perf_counter() - start
    trainer.engine.train()
    with RssSampler() as rss:
        losses = [trainer.train_step()["loss/total"] for _ in range(int(num_steps))]
    params = sum(p.numel() for p in trainer.engine.module.parameters())
    print("RESULT " + json.dumps({"rank": dist.rank(), "world_size": dist.world_size(), "params": params,
                                  "losses": losses, "bytes": COUNTS, "init_s": init_s,
                                  "steps_s": time.perf_counter() - start - init_s,
                                  "rss_before_steps_gib": rss.start, "peak_rss_steps_gib": rss.peak,
                                  "peak_rss_life_gib": peak_memory_gb()}), flush=True)
    dist.destroy()


if __name__ == "__main__":
    main()
