"""Gradient caching: contrastive losses over a large batch at the memory cost of one chunk.

Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (RepL4NLP 2021).
Steps, each a method:
  1. sort every input batch's rows by length and split them into chunks of `chunk_size` sequences,
     each trimmed to its longest row (rows of similar length share a chunk: less padding computed);
  2. forward every chunk without autograd, recording the RNG state before it (dropout);
  3. compute the loss over all representations (the caller's loss may gather across ranks) and
     backpropagate it to the representations only: their gradients are the cache;
  4. re-forward each chunk with autograd under its recorded RNG state (same dropout masks, so the
     same representations) and backpropagate the surrogate <reps, cached grad>, which gives exactly
     the parameter gradient of the full-batch loss, chunk by chunk.
This class knows nothing of DeepSpeed or ranks: the caller passes `encode`, `loss_fn`, `backward`, a
`chunk_context(is_last)` in which each chunk's re-forward and backward run (where the engine is told
which backward closes the step: ZeRO-2 otherwise keeps only the last chunk's gradient) and a
`backward_context()` around all of them (where the engine may defer gradient reduction to the end).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

Inputs = dict[str, Tensor]  # {input_ids, attention_mask}, [B, L] each


class RandomState:
    """The CPU and CUDA generator states at one point, to replay the same dropout masks later."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    @contextlib.contextmanager
    def replay(self):
        """Run the body from the recorded state; the surrounding RNG stream is left untouched."""
        devices = list(range(torch.cuda.device_count())) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


@dataclass
class Cache:
    """What step 2-3 leave for step 4 (or, without caching, the graph to backpropagate)."""

    loss: Tensor
    loss_out: Any
    chunks: dict[str, list[Inputs]] = field(default_factory=dict)
    rng: dict[str, list[RandomState]] = field(default_factory=dict)
    rep_grads: dict[str, list[Tensor]] = field(default_factory=dict)

    def grads_finite(self) -> bool:
        return all(bool(torch.isfinite(g).all()) for gs in self.rep_grads.values() for g in gs)


class GradCache:
    """Chunked contrastive training step.

    encode(name, inputs) -> reps [b, D]: the representation of one chunk of input batch `name`.
    loss_fn(reps: {name: [B, D]}) -> (loss, loss_out): scalar loss (any collective it does runs on
        every rank in the same order) and anything to hand back to the caller.
    backward(loss): backpropagates a scalar into the parameters (e.g. the engine's backward).
    chunk_context(is_last) -> context manager around each re-forward+backward.
    backward_context() -> context manager around the whole backward phase of a step.
    chunk_size 0 turns caching off: one forward with autograd per input batch, one backward.
    sort_by_length False keeps the batch's row order in the chunks (only for comparison: more padding).
    """

    def __init__(self, encode: Callable[[str, Inputs], Tensor],
                 loss_fn: Callable[[dict[str, Tensor]], tuple[Tensor, Any]],
                 backward: Callable[[Tensor], None], chunk_size: int,
                 chunk_context: Callable[[bool], contextlib.AbstractContextManager] | None = None,
                 backward_context: Callable[[], contextlib.AbstractContextManager] | None = None,
                 sort_by_length: bool = True):
        self.encode, self.loss_fn, self.backward_fn = encode, loss_fn, backward
        self.chunk_size, self.sort_by_length = chunk_size, sort_by_length
        self.chunk_context = chunk_context or (lambda is_last: contextlib.nullcontext())
        self.backward_context = backward_context or contextlib.nullcontext

    def split(self, inputs: Inputs) -> tuple[list[Inputs], Tensor]:
        """Step 1: [B, L] tensors -> chunks of at most chunk_size rows, each trimmed to its own longest,
        and `order`: the input row behind each chunked row (longest first; ties keep their order)."""
        lengths = inputs["attention_mask"].sum(1)
        if self.sort_by_length:
            order = torch.sort(lengths, descending=True, stable=True).indices
        else:
            order = torch.arange(len(lengths))
        chunks = []
        for rows in order.split(self.chunk_size):
            chunks.append(_trim_padding({k: v[rows] for k, v in inputs.items()}))
        return chunks, order

    def forward_no_grad(self, chunks: dict[str, list[Inputs]], order: dict[str, Tensor]
                        ) -> tuple[dict[str, Tensor], dict[str, list]]:
        """Step 2: representations of every chunk without a graph, in input row order, and the RNG
        state before each chunk."""
        reps, rng = {}, {}
        with torch.no_grad():
            for name, parts in chunks.items():
                rng[name], out = [], []
                for part in parts:
                    # Recorded, not replayed: the stream advances so every chunk draws fresh masks.
                    rng[name].append(RandomState())
                    out.append(self.encode(name, part))
                chunked = torch.cat(out)  # rows in chunk order
                reps[name] = chunked[order[name].argsort().to(chunked.device)]  # back to input order
        return reps, rng

    def build_cache(self, reps: dict[str, Tensor]) -> tuple[Tensor, Any, dict[str, Tensor]]:
        """Step 3: the loss over all representations and d(loss)/d(representations)."""
        leaves = {name: r.detach().requires_grad_() for name, r in reps.items()}
        loss, loss_out = self.loss_fn(leaves)
        loss.backward()
        return loss.detach(), loss_out, {name: leaf.grad for name, leaf in leaves.items()}

    def forward_backward(self, cache: Cache) -> None:
        """Step 4: re-forward each chunk under its RNG state; backpropagate <reps, cached grad>."""
        order = [(name, i) for name, parts in cache.chunks.items() for i in range(len(parts))]
        for n, (name, i) in enumerate(order):
            with self.chunk_context(n == len(order) - 1), cache.rng[name][i].replay():
                reps = self.encode(name, cache.chunks[name][i])
                grad = cache.rep_grads[name][i].to(reps.dtype)
                self.backward_fn(torch.dot(reps.flatten(), grad.flatten()))

    # -- the two calls a training step makes -------------------------------------------------

    def compute_loss(self, batch: dict[str, Inputs]) -> Cache:
        """Forward the whole step's batch and compute the loss; nothing is backpropagated yet."""
        if self.chunk_size == 0:
            reps = {name: self.encode(name, _trim_padding(inputs)) for name, inputs in batch.items()}
            loss, loss_out = self.loss_fn(reps)
            return Cache(loss=loss, loss_out=loss_out)
        split = {name: self.split(inputs) for name, inputs in batch.items()}
        chunks = {name: parts for name, (parts, _) in split.items()}
        order = {name: rows for name, (_, rows) in split.items()}
        reps, rng = self.forward_no_grad(chunks, order)
        loss, loss_out, grads = self.build_cache(reps)
        rep_grads = {name: list(grads[name][order[name].to(grads[name].device)].split(self.chunk_size))
                     for name in chunks}
        return Cache(loss, loss_out, chunks, rng, rep_grads)

    def backward(self, cache: Cache) -> None:
        """Backpropagate the step's loss into the parameters (chunk by chunk when caching)."""
        with self.backward_context():
            if self.chunk_size == 0:
                with self.chunk_context(True):
                    self.backward_fn(cache.loss)
            else:
                self.forward_backward(cache)


def _trim_padding(inputs: Inputs) -> Inputs:
    """Drop padding columns no row of this chunk uses (right padding): shorter chunks run faster."""
    longest = int(inputs["attention_mask"].sum(1).max())
    return {k: v[:, :longest] for k, v in inputs.items()}
