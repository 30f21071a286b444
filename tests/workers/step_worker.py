"""One training step on every rank, for equivalence tests; rank 0 saves loss, full gradients and weights.

usage: step_worker.py CONFIG.yaml MODE OUT.pt
  engine  the configured engine (DeepSpeed or DDP) with gradient caching, as the trainer runs it
  engine-norm  the same, reporting the gradient norm instead of reading full gradients back
  naive   DeepSpeed with per-chunk backwards, no accumulation boundary, no coalescing (the peers' bug)
  plain   no engine: torch.distributed gather + backward, gradients all-reduced and averaged by hand
"""

import contextlib
import sys

import torch
from transformers import AutoTokenizer

from dist_lacl import distributed as dist
from dist_lacl.config import load_config
from dist_lacl.data.batches import TrainBatches
from dist_lacl.grad_cache import GradCache
from dist_lacl.model import build_model
from dist_lacl.objective import Objective, step_jobs, step_teacher_scores
from dist_lacl.trainer import Trainer


def engine_step(cfg, mode):
    trainer = Trainer(cfg)
    trainer.engine.train()
    if mode == "naive":
        trainer.grad_cache.chunk_context = lambda is_last: contextlib.nullcontext()
        trainer.grad_cache.backward_context = contextlib.nullcontext
    batch, meta = trainer.data.next()
    cache = trainer.grad_cache.compute_loss(step_jobs(batch, cfg.model),
                                            teacher_scores=step_teacher_scores(meta, cfg.loss))
    trainer.grad_cache.backward(cache)
    # DeepSpeed cannot read full gradients back under round_robin_gradients (its fragment map assumes
    # the plain partition order): there the pre-clipping gradient norm stands in for them.
    grads = {} if mode == "engine-norm" else trainer.engine.full_grads()
    stats = trainer.engine.step()
    params = {n: p.detach().float().cpu().clone() for n, p in trainer.engine.module.named_parameters()}
    return cache.loss.item(), grads, params, stats["grad_norm"]


def plain_step(cfg):
    dist.init_process_group(cfg.train.dist_timeout_s, backend="gloo")
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model).train()
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
    data = TrainBatches(cfg, tokenizer, dist.rank(), dist.world_size(), cfg.data.cache_dir)
    batch, meta = data.next()
    gc = GradCache(encode=lambda job, x: model(**x, tower=job.tower), loss_fn=Objective(cfg.loss),
                   backward_fn=lambda loss: loss.backward(), chunk_size=cfg.train.chunk_size)
    cache = gc.compute_loss(step_jobs(batch, cfg.model), teacher_scores=step_teacher_scores(meta, cfg.loss))
    gc.backward(cache)
    grads = {}
    for name, p in model.named_parameters():
        if p.grad is not None:  # what any data-parallel engine does: average over ranks
            torch.distributed.all_reduce(p.grad)
            grads[name] = p.grad / dist.world_size()
    return cache.loss.item(), grads, {}, None


PACKED = {"rows": 0, "widths": set()}  # rows the encoder ran packed (model.padding_free) and their lengths


def count_packed_rows():
    import dist_lacl.model

    inner = dist_lacl.model.pack

    def counted(*args, **kwargs):
        packed = inner(*args, **kwargs)
        PACKED["rows"] += packed.input_ids.shape[0]
        PACKED["widths"].add(packed.input_ids.shape[1])
        return packed
    dist_lacl.model.pack = counted


def main():
    config, mode, out = sys.argv[1:4]
    cfg = load_config(config)
    torch.set_num_threads(1)
    count_packed_rows()
    loss, grads, params, grad_norm = plain_step(cfg) if mode == "plain" else engine_step(cfg, mode)
    if dist.is_main():
        from torch._dynamo.utils import counters

        torch.save({"loss": loss, "grads": grads, "params": params, "grad_norm": grad_norm,
                    "world_size": dist.world_size(), "compiled_graphs": counters["stats"]["unique_graphs"],
                    "packed_rows": PACKED["rows"],
                    "packed_widths": sorted(PACKED["widths"])}, out)
    dist.destroy()


if __name__ == "__main__":
    main()
