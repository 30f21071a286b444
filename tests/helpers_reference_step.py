"""The one-process reference step the multi-rank equivalence tests compare with, their run config, and
the step worker that runs the same step on 2 ranks."""

import dataclasses

import torch
import yaml
from helpers_launch import WORKERS, torchrun
from transformers import AutoTokenizer

from dist_lacl.config import config_from_dict
from dist_lacl.data.batches import TrainBatches
from dist_lacl.engine import make_scheduler
from dist_lacl.model import build_model, parameter_groups
from dist_lacl.objective import Objective, step_jobs, step_teacher_scores


def write_config(tmp_path, model_dir, data, shared_encoder=True, padding_free=False, packed_row_length=0, loss=None,
                 **train):
    raw = {"model": {"name_or_path": str(model_dir), "pooling": "mean", "shared_encoder": shared_encoder,
                     "padding_free": padding_free, "packed_row_length": packed_row_length},
           "data": {**data, "train_group_size": 3, "cache_dir": str(tmp_path / "cache")},
           "loss": {"temperature": 0.5, "semantic_weight": 0.7, "language_weight": 0.4, **(loss or {})},
           "train": {"ir_batch_size": 4, "parallel_batch_size": 6, "monolingual_batch_size": 4, "chunk_size": 2,
                     "lr": 1e-3, "warmup_steps": 0, "grad_clip": 1.0, "num_threads": 1,
                     "output_dir": str(tmp_path / "run"), **train}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, config_from_dict(raw)


def reference_step(cfg):
    """One process, the whole global batch, no cache, padded (never packed), plain autograd and torch AdamW."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(dataclasses.replace(cfg.model, padding_free=False)).train()
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
    batch, meta = TrainBatches(cfg, tokenizer, 0, 1, cfg.data.cache_dir).next()
    reps = {job: model(**x, tower=job.tower) for job, x in step_jobs(batch, cfg.model).items()}
    loss, _ = Objective(cfg.loss)(reps, teacher_scores=step_teacher_scores(meta, cfg.loss))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    t = cfg.train
    optimizer = torch.optim.AdamW(parameter_groups(model, t.weight_decay), lr=t.lr, betas=t.adam_betas, eps=t.adam_eps)
    make_scheduler(optimizer, cfg)  # sets the first step's learning rate, as in training
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip))
    optimizer.step()
    return loss.item(), grads, {n: p.detach().clone() for n, p in model.named_parameters()}, grad_norm


def run_worker(tmp_path, config, mode, launcher=torchrun):
    out = tmp_path / f"{mode}.pt"
    launcher(WORKERS / "step_worker.py", config, mode, out)
    result = torch.load(out, weights_only=False)
    assert result["world_size"] == 2
    return result
