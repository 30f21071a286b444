"""Distributed helpers: the only module that calls torch.distributed. All fall back to one process.

Functions marked *collective* must be called on every rank, in the same order.
"""

from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import UserError


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else int(os.environ.get("RANK", 0))


def local_rank() -> int:
    """This process's rank on its node, from LOCAL_RANK (set by torchrun, deepspeed, accelerate and the
    slurm/ scripts); 0 when not launched."""
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return rank() == 0


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def device() -> torch.device:
    """The device this rank computes on; one rule for every launcher (see bind_device).

    cuda:LOCAL_RANK when the process sees more GPUs than its local rank (every task sees all of its
    node's GPUs, as under torchrun); cuda:0 when it sees exactly one (a cluster that binds one GPU per
    task); any other layout is an error, since two ranks would share a GPU or one would sit idle.
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    index, count = local_rank(), torch.cuda.device_count()
    if index < count:
        return torch.device("cuda", index)
    if count == 1:
        return torch.device("cuda", 0)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")
    raise UserError(f"LOCAL_RANK={index} but this process sees {count} GPUs (CUDA_VISIBLE_DEVICES={visible}): "
                    "give every task all of its node's GPUs (LOCAL_RANK picks one) or exactly one "
                    "(see docs/slurm.md, GPU binding)")


def bind_device() -> torch.device:
    """Make this rank's device (`device()`) the current CUDA device, and LOCAL_RANK name it.

    DeepSpeed and accelerate choose cuda:LOCAL_RANK themselves; when a task sees only its own GPU
    (index 0) whatever its local rank, LOCAL_RANK is set to 0 so that they pick the same device.
    """
    dev = device()
    if dev.type == "cuda":
        if dev.index != local_rank():
            os.environ["LOCAL_RANK"] = str(dev.index)
        torch.cuda.set_device(dev)
    return dev


def init_process_group(timeout_s: int, backend: str | None = None) -> None:
    """Join the launcher's process group (torchrun, deepspeed, accelerate, srun all set RANK/WORLD_SIZE).

    A finite timeout makes the surviving ranks fail instead of hanging when one dies.
    """
    if is_initialized():
        return
    bind_device()
    options = dict(backend=backend or default_backend(), timeout=datetime.timedelta(seconds=timeout_s))
    if "RANK" not in os.environ:
        # Not launched: a one-process group on a free local port, passed directly rather than through
        # MASTER_PORT & co., which processes started from this one later would inherit as a stale
        # rendezvous. DeepSpeed insists on LOCAL_RANK, which is harmless to inherit.
        options.update(init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
        os.environ.setdefault("LOCAL_RANK", "0")
    dist.init_process_group(**options)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def barrier() -> None:
    """*Collective.*"""
    if is_initialized():
        dist.barrier()


def gather_for_loss(local: Tensor, sharded: bool = False) -> Tensor:
    """*Collective.* Concatenate every rank's `local` [n, ...] in rank order -> [world_size * n, ...],
    with the backward the loss mode needs. Every rank must pass the same n.

    Why the gradient of `local` is complete:
    - replicated (`sharded` False): every rank computes the same loss over the same global batch, so
      d(loss)/d(local rows), computed on this rank alone, is already the full derivative; other ranks'
      copies of these rows need no gradient, and the backward keeps this rank's slice.
    - sharded: rank r computes only its share l_r of the loss L = sum_r l_r (its own anchor rows
      against all candidates). This rank's rows appear in every share (as candidates, and in its own as
      anchors), so the backward sums the gradient of this slice over ranks (a reduce-scatter, the
      all-gather's adjoint): sum_r dl_r/d(local rows) = dL/d(local rows).
    Either way the local gradient is dL/d(local rows). The data-parallel engine then *averages*
    parameter gradients over ranks, so the gradient is scaled by world_size here, once, to turn that
    mean back into the gradient of the single global loss. Nothing else rescales.
    """
    if not is_initialized() or dist.get_world_size() == 1:
        return local
    local = _ScaleGrad.apply(local, dist.get_world_size())  # the one world-size factor (see above)
    return (_GatherSumGrad if sharded else _GatherKeepLocalGrad).apply(local)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by `factor`."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: int) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.factor, None


def _all_gather(local: Tensor) -> Tensor:
    """[n, ...] on every rank -> [world_size * n, ...] in rank order, written once into one tensor."""
    out = local.new_empty((dist.get_world_size() * local.shape[0], *local.shape[1:]))
    dist.all_gather_into_tensor(out, local.contiguous())
    return out


class _GatherKeepLocalGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: Tensor) -> Tensor:
        ctx.n, ctx.rank = local.shape[0], dist.get_rank()
        return _all_gather(local)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        start = ctx.rank * ctx.n
        return grad[start:start + ctx.n]


class _GatherSumGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: Tensor) -> Tensor:
        return _all_gather(local)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        world = dist.get_world_size()
        out = grad.new_empty((grad.shape[0] // world, *grad.shape[1:]))
        _reduce_scatter(out, grad.contiguous())  # out = sum over ranks of their grad[this rank's rows]
        return out


# torch >= 2.7 names it reduce_scatter_single (the old name warns); both work on gloo and nccl.
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def sum_shares(shares: Tensor) -> Tensor:
    """*Collective.* The sum over ranks of each rank's loss shares [k] (the global loss terms); backward
    passes the gradient to this rank's shares unchanged.

    Identity, not the sum's own backward (an all-reduce of every rank's 1): the global loss is one
    objective, and the other ranks' shares already reach this rank's rows through gather_for_loss's
    backward; counting them again here would multiply the gradient by the world size.
    """
    if not is_initialized() or dist.get_world_size() == 1:
        return shares
    return _SumKeepLocalGrad.apply(shares)


class _SumKeepLocalGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, shares: Tensor) -> Tensor:
        total = shares.detach().clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def average_gradients_(params: list[torch.nn.Parameter], bucket_numel: int = 2**24) -> None:
    """*Collective.* Replace each parameter's gradient by its mean over ranks (all-reduce in flat buckets
    of about `bucket_numel` elements, so the extra memory is one bucket, not a copy of every gradient).

    A parameter that has a gradient on some rank but not on this one counts as zeros here; one that has
    none on any rank keeps none (the optimizer then leaves it alone, as without data parallelism).
    """
    if not is_initialized() or dist.get_world_size() == 1:
        return
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=_comm_device())
    dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
    reached = [p for p, flag in zip(params, has_grad.tolist()) if flag]
    for p in reached:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.nn.Parameter] = []
    for i, p in enumerate(reached):
        bucket.append(p)
        if sum(q.numel() for q in bucket) >= bucket_numel or i == len(reached) - 1:
            flat = torch.cat([q.grad.reshape(-1) for q in bucket])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            offset = 0
            for q in bucket:
                q.grad.copy_(flat[offset:offset + q.numel()].view_as(q.grad))
                offset += q.numel()
            bucket = []


def all_reduce_max(value: float) -> float:
    """*Collective.* The largest `value` over ranks (e.g. 1.0 if any rank saw a non-finite loss)."""
    if not is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def broadcast_object(obj):
    """*Collective.* Rank 0's `obj` on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def main_decides(decide):
    """*Collective.* `decide()` run on rank 0 only; its result on every rank, or its UserError raised on
    every rank (so no rank waits at a barrier for a rank 0 that has given up)."""
    result, error = None, None
    if is_main():
        try:
            result = decide()
        except UserError as e:
            error = str(e)
    result, error = broadcast_object((result, error))
    if error is not None:
        raise UserError(error)
    return result


def all_gather_objects(obj) -> list:
    """*Collective.* Every rank's `obj`, in rank order."""
    if not is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def main_process_first():
    """*Collective.* Rank 0 runs the body first (e.g. to fill a cache), then the others.

    If rank 0's body raises, the others are released anyway and meet the same error themselves,
    instead of waiting at the barrier until the timeout.
    """
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def _comm_device() -> torch.device:
    return device() if dist.get_backend() == "nccl" else torch.device("cpu")


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()
