"""Training engines: the only module that trains through deepspeed or accelerate.

One small interface over DeepSpeed (ZeRO) and PyTorch DDP through accelerate:
  encode(inputs, tower) -> reps      forward through the wrapped model
  chunk_context(is_last)             around each grad-cache chunk's forward+backward
  backward(loss), step() -> stats    one optimizer step per training step
  save(dir, client_state), load(dir) -> client_state
"""

from __future__ import annotations

import contextlib
import math
from datetime import timedelta
from pathlib import Path

import torch
from torch import Tensor

from . import distributed as dist
from .checkpoint import convert_to_universal
from .config import RunConfig
from .ds_config import deepspeed_config, fused_adamw
from .errors import ConfigError
from .model import DualEncoder, parameter_groups


def lr_lambda(warmup_steps: int, max_steps: int):
    """Linear warm-up to the peak, then linear decay to 0 at max_steps (as BERT/DPR fine-tuning)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))
    return factor


def make_scheduler(optimizer, cfg: RunConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.train.warmup_steps, cfg.train.max_steps))


def follow_current_schedule(scheduler) -> None:
    """After a resume, the rate of the restored step under the *current* schedule.

    A checkpoint restores the rate its own run had reached; with train.max_steps (or warmup_steps)
    changed on resume, that is the old horizon's rate (0 after its last step), and the first resumed
    step would train at it. Recomputed here from the restored step and this run's schedule: with the
    schedule unchanged it is the same float (LambdaLR computes it the same way), so resuming stays exact.
    """
    lrs = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs


# ---------------------------------------------------------------- engines

class DeepSpeedEngine:
    """ZeRO (stage from the ds_config) through deepspeed.initialize."""

    def __init__(self, model: DualEncoder, cfg: RunConfig):
        import deepspeed

        dist.init_process_group(cfg.train.dist_timeout_s)
        deepspeed.init_distributed(dist_backend=dist.default_backend(),
                                   timeout=timedelta(seconds=cfg.train.dist_timeout_s))
        self.config = deepspeed_config(cfg, dist.world_size())
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=parameter_groups(model, cfg.train.weight_decay),
            config=self.config, lr_scheduler=lambda opt: make_scheduler(opt, cfg))
        self.module: DualEncoder = self.ds.module
        self.coalesce = cfg.train.grad_reduction == "coalesced" and self.ds.zero_optimization_stage() in (1, 2)

    def encode(self, inputs: dict[str, Tensor], tower: str) -> Tensor:
        inputs = {k: v.to(self.ds.device) for k, v in inputs.items()}
        return self.ds(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], tower=tower)

    def backward_context(self):
        # Coalesced: every chunk's gradient stays on its parameter and one reduction runs at the exit.
        return self.ds.coalesce_grad_reduction() if self.coalesce else contextlib.nullcontext()

    def chunk_context(self, is_last: bool):
        # Per chunk: ZeRO-2 reduce-scatters at every backward; the boundary flag makes it add each
        # chunk into the partitioned gradient. Without it only the last chunk would survive.
        if not self.coalesce:
            self.ds.set_gradient_accumulation_boundary(is_last)
        return contextlib.nullcontext()

    def backward(self, loss: Tensor) -> None:
        self.ds.backward(loss)

    def step(self) -> dict[str, float]:
        lr = self.scheduler.get_last_lr()[0]  # the rate this step uses; step() moves the scheduler on
        self.ds.set_gradient_accumulation_boundary(True)
        self.ds.step()
        norm = self.ds.get_global_grad_norm()
        return {"grad_norm": float(norm) if norm is not None else math.nan, "lr": lr}

    def skip_step(self) -> None:
        """Drop this step's gradients without updating weights (non-finite loss: nothing was backpropagated)."""
        self.ds.zero_grad()

    def full_grads(self) -> dict[str, Tensor]:
        """*Collective.* Every parameter's full (rank-averaged) gradient, after backward and before step."""
        from deepspeed.utils import safe_get_full_grad

        grads = {name: safe_get_full_grad(p) for name, p in self.module.named_parameters()}
        return {name: g.detach().float().cpu() for name, g in grads.items() if g is not None}

    def train(self, mode: bool = True) -> None:
        self.ds.train(mode)

    def save(self, directory: Path, client_state: dict) -> None:
        """*Collective.* DeepSpeed's sharded checkpoint (one optimizer shard per rank) into `directory`."""
        self.ds.save_checkpoint(str(directory.parent), tag=directory.name, client_state=client_state,
                                save_latest=False)

    def load(self, directory: Path, load_optimizer: bool = True, saved_world_size: int | None = None) -> dict:
        """*Collective.* Weights, optimizer shards and scheduler from `directory`; returns the client state.

        Saved on another number of ranks, the checkpoint is first converted (once, by rank 0) into
        DeepSpeed's universal format, whose per-parameter optimizer state any world size can load.
        """
        universal = saved_world_size is not None and saved_world_size != dist.world_size()
        if universal:
            with dist.main_process_first():
                if dist.is_main():
                    convert_to_universal(directory)
            directory = directory / "universal"
        self.ds._config.load_universal_checkpoint = universal
        try:
            path, client_state = self.ds.load_checkpoint(
                str(directory.parent), tag=directory.name, load_optimizer_states=load_optimizer,
                load_lr_scheduler_states=True)
        finally:
            self.ds._config.load_universal_checkpoint = False
        if path is None:
            raise FileNotFoundError(f"{directory}: DeepSpeed found no checkpoint to load")
        follow_current_schedule(self.scheduler)
        return client_state


class DDPEngine:
    """PyTorch DDP through accelerate: gradients all-reduced once per step (no_sync on earlier chunks)."""

    def __init__(self, model: DualEncoder, cfg: RunConfig):
        from accelerate import Accelerator, DistributedDataParallelKwargs, InitProcessGroupKwargs

        t = cfg.train
        if t.precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("train.precision: fp16 needs a GPU; use bf16 or fp32 on CPU")
        # Our group (with its timeout; a one-process group when not launched), which accelerate adopts.
        dist.init_process_group(t.dist_timeout_s)
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(), mixed_precision={"fp32": "no"}.get(t.precision, t.precision),
            kwargs_handlers=[InitProcessGroupKwargs(backend=dist.default_backend(),
                                                    timeout=timedelta(seconds=t.dist_timeout_s)),
                             DistributedDataParallelKwargs(find_unused_parameters=False)])
        optimizer = torch.optim.AdamW(parameter_groups(model, t.weight_decay), lr=t.lr, betas=t.adam_betas,
                                      eps=t.adam_eps, **({"fused": True} if fused_adamw() else {}))
        # The scheduler is stepped by hand: accelerate's wrapper would step it once per process.
        self.scheduler = make_scheduler(optimizer, cfg)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.module: DualEncoder = self.accelerator.unwrap_model(self.model)
        self.grad_clip = t.grad_clip

    def encode(self, inputs: dict[str, Tensor], tower: str) -> Tensor:
        inputs = {k: v.to(self.accelerator.device) for k, v in inputs.items()}
        # DDP must never reduce on its own (backward_context averages once per step), and a forward with
        # autograd outside no_sync would arm its reducer: the grad cache's kept last chunk runs before
        # backward_context.
        with self._no_sync():
            return self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], tower=tower)

    def _no_sync(self):
        """DDP's own no_sync whenever the model is wrapped in DDP. Not `accelerator.no_sync`: with one
        process (`dist-lacl train` unlaunched, a one-GPU `accelerate launch`) accelerate may still wrap the
        model (MULTI_CPU does) but makes its no_sync a no-op, so DDP reduced in the first backward and,
        with separate towers, stopped at the next step on the tower that backward did not reach."""
        ddp = torch.nn.parallel.DistributedDataParallel
        return self.model.no_sync() if isinstance(self.model, ddp) else contextlib.nullcontext()

    @contextlib.contextmanager
    def backward_context(self):
        # Every chunk runs under no_sync and the gradients are averaged once at the end. Letting DDP
        # reduce during the last chunk instead would miss every parameter that chunk does not reach: with
        # separate towers the last chunk runs through one tower only, and the other tower's gradients
        # would stay unreduced (replicas diverging) until DDP stops with "Expected to have finished
        # reduction in the prior iteration".
        with self._no_sync():
            yield
        dist.average_gradients_([p for p in self.module.parameters() if p.requires_grad])

    def chunk_context(self, is_last: bool):
        return contextlib.nullcontext()

    def backward(self, loss: Tensor) -> None:
        self.accelerator.backward(loss)

    def step(self) -> dict[str, float]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.grad_clip > 0:
            norm = float(self.accelerator.clip_grad_norm_(params, self.grad_clip))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack(
                [p.grad.norm() for p in params if p.grad is not None])))
        lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": norm, "lr": lr}

    def skip_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def full_grads(self) -> dict[str, Tensor]:
        """Every parameter's gradient (already all-reduced by DDP), after backward and before step."""
        # A copy: clipping in step() scales .grad in place.
        return {name: p.grad.detach().float().cpu().clone() for name, p in self.module.named_parameters()
                if p.grad is not None}

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def save(self, directory: Path, client_state: dict) -> None:
        """*Collective.* Model, optimizer and scheduler (rank 0 writes; DDP replicas are identical)."""
        directory.mkdir(parents=True, exist_ok=True)
        if dist.is_main():
            torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(), "client_state": client_state},
                       directory / "ddp_state.pt")
        dist.barrier()

    def load(self, directory: Path, load_optimizer: bool = True, saved_world_size: int | None = None) -> dict:
        # DDP replicas are identical: any world size loads the same file.
        state = torch.load(directory / "ddp_state.pt", map_location="cpu", weights_only=False)
        self.module.load_state_dict(state["model"])
        if load_optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        follow_current_schedule(self.scheduler)
        return state["client_state"]


def build_engine(model: DualEncoder, cfg: RunConfig):
    """The engine named by train.backend (see cli.adopt_launcher_settings for accelerate + DeepSpeed)."""
    if torch.cuda.is_available():
        # TF32 for the fp32 matmuls left under bf16 (the loss's scores) and for fp32 runs: 10-bit
        # mantissa products, fp32 accumulation; no effect on CPU.
        torch.set_float32_matmul_precision("high")
    if cfg.train.backend == "deepspeed":
        return DeepSpeedEngine(model, cfg)
    return DDPEngine(model, cfg)
