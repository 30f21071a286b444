"""One training step's jobs and its gradient-cache step, cached and uncached, in one process, for tests."""

import torch
from transformers import AutoTokenizer

from dist_lacl.config import config_from_dict
from dist_lacl.data.batches import TrainBatches
from dist_lacl.grad_cache import GradCache
from dist_lacl.model import build_model
from dist_lacl.objective import Objective, step_jobs


def make_step(model_dir, data, tmp_path, **model_overrides):
    cfg, model, jobs, _ = make_step_and_meta(model_dir, data, tmp_path, **model_overrides)
    return cfg, model, jobs


def make_step_and_meta(model_dir, data, tmp_path, loss=None, **model_overrides):
    """make_step's config (with `loss` settings over its own), model and jobs, and the step's meta."""
    cfg = config_from_dict({
        "model": {"name_or_path": str(model_dir), **model_overrides},
        "data": {**data, "train_group_size": 3},
        "loss": {"temperature": 0.1, **(loss or {})},
        "train": {"ir_batch_size": 6, "parallel_batch_size": 5, "monolingual_batch_size": 7, "chunk_size": 2,
                  "output_dir": str(tmp_path)}})
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    batch, meta = TrainBatches(cfg, AutoTokenizer.from_pretrained(model_dir), 0, 1, tmp_path / "cache").next()
    return cfg, model, step_jobs(batch, cfg.model), meta


def grad_cache_for(cfg, model, chunk_size, chunk_tokens=0, keep_last_graph=True):
    return GradCache(encode=lambda job, x: model(**x, tower=job.tower),
                     loss_fn=Objective(cfg.loss), backward_fn=lambda loss: loss.backward(),
                     chunk_size=chunk_size, chunk_tokens=chunk_tokens, keep_last_graph=keep_last_graph,
                     packed=model.padding_free)


def cached_step(cfg, model, jobs, chunk_size=2, chunk_tokens=0, keep_last_graph=True, **loss_args):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    gc = grad_cache_for(cfg, model, chunk_size, chunk_tokens, keep_last_graph)
    cache = gc.compute_loss(jobs, **loss_args)
    gc.backward(cache)
    return cache.loss.item(), cache.loss_out, grads(model)


def uncached_step(cfg, model, jobs, chunk_size=2, chunk_tokens=0, **loss_args):
    """The reference: the same chunks forwarded *with* autograd in the same order (hence the same
    dropout masks, drawn from the same RNG stream), one loss, one backward."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    gc = grad_cache_for(cfg, model, chunk_size, chunk_tokens)
    reps = {}
    for job, x in jobs.items():
        parts, order = gc.split(x)
        reps[job] = torch.cat([model(**c, tower=job.tower) for c in parts])[order.argsort()]
    loss, terms = Objective(cfg.loss)(reps, **loss_args)
    loss.backward()
    return loss.item(), terms, grads(model)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
