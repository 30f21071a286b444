"""Gradient caching: contrastive losses over a large batch at the memory cost of one chunk.

Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (RepL4NLP 2021).
Steps, each a method:
  1. sort every input batch's rows by length and split them into chunks of `chunk_size` sequences, or
     of at most `chunk_tokens` token positions (rows x the chunk's longest row: short sentences go in
     big chunks, long passages in small ones, at about the same activation memory), each trimmed to its
     longest row (rows of similar length share a chunk: less padding computed);
  2. forward every chunk without autograd, recording the RNG state before it (dropout);
  3. compute the loss over all representations (the caller's loss may gather across ranks) and
     backpropagate it to the representations only: their gradients are the cache;
  4. re-forward each chunk with autograd under its recorded RNG state (same dropout masks, so the
     same representations) and backpropagate the surrogate <reps, cached grad>, which gives exactly
     the parameter gradient of the full-batch loss, chunk by chunk.
With `keep_last_graph`, the step's last chunk runs with autograd in step 2 and keeps its graph through
the loss: step 4 backpropagates it first, without a re-forward, and frees it before re-forwarding the
others (one chunk's activations more during the loss only; one forward fewer per step, with 3 chunks a
third of the no-grad pass).
Precision: the loss leaves, the cached gradients and the surrogate dot product are fp32 whatever the
encoder's dtype (`cache_dtype`). Under fp16, a cache in fp16 built by an unscaled backward flushes the
small passage gradients of a large batch at a small temperature to zero before the engine's loss
scale ever sees them; in fp32 the engine's backward scales the surrogate first, and the one rounding
to the encoder's dtype happens where the uncached backward does it too. Under bf16 (fp32's exponent
range) both round the same way. Parameter gradients accumulate over the chunks in the parameters' own
dtype: fp32 under DDP's autocast; bf16 under DeepSpeed bf16, whose ZeRO-2 has no fp32 accumulation
(tests/test_grad_cache_precision.py bounds that error at realistic settings).
This class knows nothing of DeepSpeed or ranks: the caller passes `encode`, `loss_fn`, `backward_fn`, a
`chunk_context(is_last)` in which each chunk's re-forward and backward run (where the engine is told
which backward closes the step: ZeRO-2 otherwise keeps only the last chunk's gradient) and a
`backward_context()` around all of them (where the engine may defer gradient reduction to the end).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .packing import Rows, packed_rows

Inputs = dict[str, Tensor]  # {input_ids, attention_mask}, [B, L] each


class RandomState:
    """The CPU generator's state and the current CUDA device's at one point, to replay the same dropout
    masks later. Only the current device: a rank computes on one GPU, and reading every visible device's
    state costs a sync per device per chunk (and would initialise devices this rank never uses)."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda_device = torch.cuda.current_device() if torch.cuda.is_initialized() else None
        self.cuda = None if self.cuda_device is None else torch.cuda.get_rng_state(self.cuda_device)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.cuda_device)

    @contextlib.contextmanager
    def replay(self):
        """Run the body from the recorded state; the surrounding RNG stream is left untouched."""
        outer = RandomState()
        self.restore()
        try:
            yield
        finally:
            outer.restore()


def same_attention_kernel() -> contextlib.AbstractContextManager:
    """Around both passes of every chunk: the same SDPA kernel, hence the same dropout masks.

    On CUDA, attention dropout runs inside the SDPA kernel, and each kernel (flash, memory-efficient,
    math) draws its masks its own way from the generator. The choice depends on the inputs, which are the
    same in both passes, and on whether autograd records (flash has backward-only limits on some GPUs),
    which is not. Allowing only the memory-efficient kernel (masks, any head size, fp32 and half) with
    the math fallback makes the two passes pick alike. On CPU nothing differs between the passes.
    """
    if not torch.cuda.is_available():
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class ChunkPositions:
    """The token positions a growing chunk costs the encoder: rows x its longest row, or (packed) the
    positions of the rows `Rows` packs it into, grown one sequence at a time when fed longest first
    (rows of `row_length` positions, 0: as long as the chunk's longest)."""

    def __init__(self, packed: bool, row_length: int = 0):
        self.packed, self.lengths, self.longest, self.rows = packed, [], 0, Rows(row_length)

    def with_row(self, length: int) -> int:
        """The positions with one more row of `length` tokens."""
        if not self.packed:
            return max(self.longest, length) * (len(self.lengths) + 1)
        if length > self.rows.capacity:  # a longer row widens every row: pack again (unsorted chunks only)
            return packed_rows(self.lengths + [length]).positions
        return self.rows.positions + (0 if self.rows.fits(length) else self.rows.capacity)

    def add(self, length: int) -> None:
        self.lengths.append(length)
        self.longest = max(self.longest, length)
        if not self.packed:
            return
        if length > self.rows.capacity:
            self.rows = packed_rows(self.lengths)
        else:
            self.rows.place(length)


class Chunks(Sequence):
    """The chunks of one input batch, each cut when asked for: chunk i is rows `rows[i]` of `inputs`,
    trimmed to its longest row. Both passes cut the same rows, so they see the same tensors; the step
    keeps the batch and B row numbers alive instead of a second copy of the batch (B x L x 16 bytes)."""

    def __init__(self, inputs: Inputs, rows: list[Tensor]):
        self.inputs, self.rows = inputs, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Inputs:
        return _trim_padding({k: v[self.rows[i]] for k, v in self.inputs.items()})

    def sizes(self) -> list[int]:
        return [len(rows) for rows in self.rows]


@dataclass
class Cache:
    """What step 2-3 leave for step 4 (or, without caching, the graph to backpropagate)."""

    loss: Tensor
    loss_out: Any
    chunks: dict[str, Chunks] = field(default_factory=dict)
    rng: dict[str, list[RandomState]] = field(default_factory=dict)
    rep_grads: dict[str, list[Tensor]] = field(default_factory=dict)
    kept: Tensor | None = None  # the last chunk's representations with their graph (keep_last_graph)

    def grads_finite(self) -> bool:
        return all(bool(torch.isfinite(g).all()) for gs in self.rep_grads.values() for g in gs)


class GradCache:
    """Chunked contrastive training step.

    encode(job, inputs) -> reps [b, D]: the representation of one chunk of input batch `job` (any
        hashable key; the batch dict's order is the order chunks are encoded in, hence draw dropout).
    loss_fn(reps: {job: [B, D]}, **loss_args) -> (loss, loss_out): scalar loss (any collective it does
        runs on every rank in the same order) and anything to hand back to the caller; loss_args are
        the step's own arguments, as given to compute_loss.
    backward_fn(loss): backpropagates a scalar into the parameters (e.g. the engine's backward).
    chunk_context(is_last) -> context manager around each re-forward+backward.
    backward_context() -> context manager around the whole backward phase of a step.
    chunk_size: rows per chunk; or chunk_tokens: token positions per chunk (rows x longest row; a row
        longer than the budget gets a chunk of its own). Both 0 turns caching off: one forward with
        autograd per input batch, one backward.
    packed: the encoder packs each chunk's sequences into rows as long as its longest (model.padding_free,
        dist_lacl.packing.Rows): chunk_tokens then counts those rows' positions, so short sequences share them.
    row_length: the packed rows' length when fixed (model.packed_row_length; 0: each chunk's longest).
    sort_by_length False keeps the batch's row order in the chunks (only for comparison: more padding).
    cache_dtype: the least dtype of the loss leaves, cached gradients and surrogate (see the module's
        docstring); None takes the representations' own dtype (the old behaviour, only for comparison).
    keep_last_graph: the last chunk's first forward keeps its graph and is not re-forwarded (exact: the
        same forward, its dropout drawn once). encode must then allow a forward with autograd outside
        chunk_context (the engines' do: DDP never reduces on its own, ZeRO is told at the backward).
    """

    def __init__(self, encode: Callable[[str, Inputs], Tensor],
                 loss_fn: Callable[[dict[str, Tensor]], tuple[Tensor, Any]],
                 backward_fn: Callable[[Tensor], None], chunk_size: int = 0,
                 chunk_context: Callable[[bool], contextlib.AbstractContextManager] | None = None,
                 backward_context: Callable[[], contextlib.AbstractContextManager] | None = None,
                 sort_by_length: bool = True, chunk_tokens: int = 0,
                 cache_dtype: torch.dtype | None = torch.float32, keep_last_graph: bool = True,
                 packed: bool = False, row_length: int = 0):
        if chunk_size and chunk_tokens:
            raise ValueError("chunk_size and chunk_tokens are alternatives: give one of them")
        self.encode, self.loss_fn, self.backward_fn = encode, loss_fn, backward_fn
        self.chunk_size, self.chunk_tokens, self.sort_by_length = chunk_size, chunk_tokens, sort_by_length
        self.cache_dtype, self.keep_last_graph, self.packed = cache_dtype, keep_last_graph, packed
        self.row_length = row_length
        self.chunk_context = chunk_context or (lambda is_last: contextlib.nullcontext())
        self.backward_context = backward_context or contextlib.nullcontext

    @property
    def caching(self) -> bool:
        return bool(self.chunk_size or self.chunk_tokens)

    def split(self, inputs: Inputs) -> tuple[Chunks, Tensor]:
        """Step 1: [B, L] tensors -> chunks of at most chunk_size rows (or chunk_tokens positions), each
        trimmed to its own longest (cut when indexed), and `order`: the input row behind each chunked
        row (longest first; ties keep their order)."""
        lengths = inputs["attention_mask"].sum(1)
        if self.sort_by_length:
            order = torch.sort(lengths, descending=True, stable=True).indices
        else:
            order = torch.arange(len(lengths))
        sizes = self.chunk_sizes(lengths[order].tolist())
        return Chunks(inputs, list(order.split(sizes))), order

    def chunk_sizes(self, lengths: list[int]) -> list[int]:
        """Rows per chunk for rows of these lengths, in chunk order."""
        if not self.chunk_tokens:
            return [min(self.chunk_size, len(lengths) - i) for i in range(0, len(lengths), self.chunk_size)]
        sizes, chunk = [], ChunkPositions(self.packed, self.row_length)
        for length in lengths:
            if not sizes or chunk.with_row(length) > self.chunk_tokens:
                chunk = ChunkPositions(self.packed, self.row_length)
                sizes.append(0)
            chunk.add(length)
            sizes[-1] += 1
        return sizes

    def forward_no_grad(self, chunks: dict[str, Chunks], order: dict[str, Tensor]
                        ) -> tuple[dict[str, Tensor], dict[str, list], Tensor | None]:
        """Step 2: representations of every chunk without a graph, in input row order, the RNG state
        before each chunk, and (keep_last_graph) the last chunk's representations with their graph."""
        reps, rng, kept = {}, {}, None
        last = (list(chunks)[-1], len(chunks[list(chunks)[-1]]) - 1) if self.keep_last_graph else None
        with same_attention_kernel():
            for name, parts in chunks.items():
                rng[name], out = [], []
                for i, part in enumerate(parts):
                    # Recorded, not replayed: the stream advances so every chunk draws fresh masks.
                    rng[name].append(RandomState())
                    with torch.set_grad_enabled((name, i) == last):
                        out.append(self.encode(name, part))
                if last is not None and name == last[0]:
                    kept, out[-1] = out[-1], out[-1].detach()
                chunked = torch.cat(out)  # rows in chunk order
                reps[name] = chunked[order[name].argsort().to(chunked.device)]  # back to input order
        return reps, rng, kept

    def build_cache(self, reps: dict[Any, Tensor], **loss_args) -> tuple[Tensor, Any, dict[Any, Tensor]]:
        """Step 3: the loss over all representations and d(loss)/d(representations), in cache_dtype."""
        leaves = {name: r.detach().to(self._cache_dtype(r.dtype)).requires_grad_() for name, r in reps.items()}
        loss, loss_out = self.loss_fn(leaves, **loss_args)
        loss.backward()
        return loss.detach(), loss_out, {name: leaf.grad for name, leaf in leaves.items()}

    def forward_backward(self, cache: Cache) -> None:
        """Step 4: re-forward each chunk under its RNG state; backpropagate <reps, cached grad>. The kept
        chunk (the last of step 2) goes first: its graph is freed before any re-forward builds another."""
        order = [(name, i) for name, parts in cache.chunks.items() for i in range(len(parts))]
        if cache.kept is not None:
            order.insert(0, order.pop())
        for n, (name, i) in enumerate(order):
            is_last = n == len(order) - 1
            with self.chunk_context(is_last), cache.rng[name][i].replay(), same_attention_kernel():
                kept = cache.kept if n == 0 else None
                reps = self.encode(name, cache.chunks[name][i]) if kept is None else kept
                grad = cache.rep_grads[name][i]
                # In the cache's dtype: backward_fn may scale the surrogate (fp16) before any rounding.
                self.backward_fn(torch.dot(reps.to(grad.dtype).flatten(), grad.flatten()))

    def _cache_dtype(self, reps_dtype: torch.dtype) -> torch.dtype:
        """At least cache_dtype (float64 representations stay float64)."""
        return reps_dtype if self.cache_dtype is None else torch.promote_types(reps_dtype, self.cache_dtype)

    # -- the two calls a training step makes -------------------------------------------------

    def compute_loss(self, batch: dict[Any, Inputs], **loss_args) -> Cache:
        """Forward the whole step's batch and compute the loss (loss_args go to loss_fn); nothing is
        backpropagated yet."""
        if not self.caching:
            reps = {name: self.encode(name, _trim_padding(inputs)) for name, inputs in batch.items()}
            loss, loss_out = self.loss_fn(reps, **loss_args)
            return Cache(loss=loss, loss_out=loss_out)
        split = {name: self.split(inputs) for name, inputs in batch.items()}
        chunks = {name: parts for name, (parts, _) in split.items()}
        order = {name: rows for name, (_, rows) in split.items()}
        reps, rng, kept = self.forward_no_grad(chunks, order)
        loss, loss_out, grads = self.build_cache(reps, **loss_args)
        rep_grads = {}
        for name, parts in chunks.items():
            in_chunk_order = grads[name][order[name].to(grads[name].device)]
            rep_grads[name] = list(in_chunk_order.split(parts.sizes()))
        return Cache(loss, loss_out, chunks, rng, rep_grads, kept)

    def backward(self, cache: Cache) -> None:
        """Backpropagate the step's loss into the parameters (chunk by chunk when caching)."""
        with self.backward_context():
            if not self.caching:
                with self.chunk_context(True):
                    self.backward_fn(cache.loss)
            else:
                self.forward_backward(cache)


def _trim_padding(inputs: Inputs) -> Inputs:
    """Drop padding columns no row of this chunk uses (right padding): shorter chunks run faster."""
    longest = int(inputs["attention_mask"].sum(1).max())
    # A copy with its own strides: a compiled encoder's graph guards on strides, and a view into the
    # wider batch would need a graph of its own (model.compile). Not .contiguous(), which keeps the
    # view of a one-row chunk (contiguous by definition whatever its row stride).
    return {k: v[:, :longest].clone(memory_format=torch.contiguous_format) for k, v in inputs.items()}
