"""Precision of the gradient cache under bf16 and fp16 (issue 17.3).

The realistic case: 64 queries x 8 passages (576 sequences), temperature 0.01 on L2-normalised
mean-pooled representations (e5's setting), chunks of 16 rows, the tiny encoder (dropout off: only
rounding differs here; dropout replay is tests/test_grad_cache.py's business). Weights are rounded to
the half dtype once, so every path computes with the same weights; `truth` is their fp32 gradient.

The bound, stated for every parameter tensor as ||g_a - g_b|| / ||g_b||:
  - cached vs uncached (the same chunks forwarded with autograd, one backward) in the half dtype: at most
    3 x the dtype's machine epsilon (bf16: 2.3e-2, fp16: 2.9e-3; measured 1.1e-2 and 1.6e-3). They differ
    only in where chunk contributions are summed (the cache: into the parameters' gradient, in their dtype);
  - against the fp32 truth, the cached error is within 10% of the uncached error: the cache adds nothing
    of its own to the half-precision encoder's rounding (bf16 worst 6.0e-2 both; fp16 9.7e-3 vs 9.3e-3).
At this setting a cache kept in the half dtype gives the same figures (bf16 has fp32's exponent range,
and here no fp16 cached gradient is small enough to underflow); where one is, the fp32 cache keeps it:
test_fp32_cache_keeps_gradients_that_underflow_in_fp16 shows that by hand.
"""

import copy

import pytest
import torch
from equivalence import FP16_SUBNORMAL

from dist_lacl.grad_cache import GradCache
from dist_lacl.losses import ir_loss
from dist_lacl.model import DualEncoder, load_encoder

NUM_QUERIES, GROUP, TEMPERATURE, CHUNK = 64, 8, 0.01, 16
FP16_LOSS_SCALE = 2.0 ** 8  # a dynamic scale's typical value for this loss (2^16 overflows fp16 here)
EXACTLY_ZERO = "attention.self.key.bias"  # softmax is shift-invariant: 0 in exact arithmetic


def token_batch(rows: int, min_len: int, max_len: int, vocab: int, seed: int) -> dict:
    """[rows, max_len] random token ids (first token <s> = 0, padding 1 after each row's length)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (rows,), generator=g)
    mask = (torch.arange(max_len)[None] < lengths[:, None]).long()
    ids = torch.randint(5, vocab, (rows, max_len), generator=g)
    ids[:, 0] = 0
    return {"input_ids": torch.where(mask.bool(), ids, 1), "attention_mask": mask}


def loss_fn(reps):
    return ir_loss(reps["query"], reps["passage"], TEMPERATURE), None


def cached_grads(model, batch, dtype, loss_scale=1.0, cache_dtype=torch.float32):
    """Every parameter's gradient (fp32, unscaled) through a GradCache with the model in `dtype`."""
    model = copy.deepcopy(model).to(dtype)
    gc = GradCache(encode=lambda name, x: model(**x, tower=name), loss_fn=loss_fn,
                   backward_fn=lambda loss: (loss * loss_scale).backward(), chunk_size=CHUNK, cache_dtype=cache_dtype)
    gc.backward(gc.compute_loss(batch))
    return {n: p.grad.float() / loss_scale for n, p in model.named_parameters() if p.grad is not None}


def uncached_grads(model, batch, dtype, loss_scale=1.0):
    """The same chunks forwarded with autograd, one loss, one (scaled) backward."""
    model = copy.deepcopy(model).to(dtype)
    split = GradCache(encode=None, loss_fn=None, backward_fn=None, chunk_size=CHUNK).split
    reps = {}
    for name, x in batch.items():
        parts, order = split(x)
        reps[name] = torch.cat([model(**c, tower=name) for c in parts])[order.argsort()]
    (loss_fn(reps)[0] * loss_scale).backward()
    return {n: p.grad.float() / loss_scale for n, p in model.named_parameters() if p.grad is not None}


def relative_errors(grads, reference) -> dict[str, float]:
    return {n: float((grads[n] - reference[n]).norm() / reference[n].norm()) for n in reference
            if EXACTLY_ZERO not in n}


@pytest.fixture(scope="module")
def setting(tiny_model_no_dropout):
    encoder = load_encoder(str(tiny_model_no_dropout))
    model = DualEncoder(encoder, pooling="mean", normalize=True).eval()
    vocab = encoder.config.vocab_size
    batch = {"query": token_batch(NUM_QUERIES, 6, 24, vocab, seed=1),
             "passage": token_batch(NUM_QUERIES * GROUP, 16, 64, vocab, seed=2)}
    return model, batch


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cached_gradients_are_as_precise_as_uncached(setting, dtype):
    model, batch = setting
    model = copy.deepcopy(model).to(dtype)  # weights representable in the half dtype, for every path
    scale = FP16_LOSS_SCALE if dtype == torch.float16 else 1.0
    truth = uncached_grads(model, batch, torch.float32)
    uncached, cached = uncached_grads(model, batch, dtype, scale), cached_grads(model, batch, dtype, scale)
    assert len(truth) > 20 and all(torch.isfinite(g).all() for g in cached.values())
    difference = max(relative_errors(cached, uncached).values())
    err_cached, err_uncached = (max(relative_errors(g, truth).values()) for g in (cached, uncached))
    print(f"{dtype}: cached vs uncached {difference:.1e}; against fp32: cached {err_cached:.1e}, "
          f"uncached {err_uncached:.1e}")
    assert difference <= 3 * torch.finfo(dtype).eps
    assert err_cached <= 1.1 * err_uncached


def test_fp32_cache_keeps_gradients_that_underflow_in_fp16():
    """y = w x; loss = 1e-8 * sum(y). d loss / d y = 1e-8 is below fp16's smallest subnormal (6e-8): a
    cache in fp16 holds 0, and no loss scale applied afterwards brings it back. In fp32 the cache holds
    1e-8, the surrogate is scaled by 2^16 before the one rounding to fp16, and d loss / d w = 1e-8 sum(x)."""
    w = torch.nn.Parameter(torch.ones((), dtype=torch.float16))
    x = torch.arange(1.0, 9.0).half()[:, None]  # 8 rows, sum 36
    scale = 2.0 ** 12

    def grad_of_w(cache_dtype):
        w.grad = None
        gc = GradCache(encode=lambda name, inputs: w * x[inputs["input_ids"][:, 0]],
                       loss_fn=lambda reps: (1e-8 * reps["x"].float().sum(), None),
                       backward_fn=lambda loss: (loss * scale).backward(), chunk_size=3, cache_dtype=cache_dtype)
        rows = torch.arange(8)[:, None]
        gc.backward(gc.compute_loss({"x": {"input_ids": rows, "attention_mask": torch.ones_like(rows)}}))
        return float(w.grad) / scale

    assert grad_of_w(None) == 0.0
    assert grad_of_w(torch.float32) == pytest.approx(36e-8, rel=FP16_SUBNORMAL)  # 4e-5: an fp16 subnormal
