"""One measurement for bench/bench_grad_cache.py, in a process of its own; prints one `RESULT {json}` line.

    grad_cache_worker.py memory MODEL TRIPLES --batch B --chunk C   peak memory of one training step
        [--chunk-tokens T --lengths short|long]                      (a token budget instead of C rows;
        [--packed-row-length N]                                      short sentences or long passages;
                                                                     padding-free rows of N positions)
    grad_cache_worker.py st     MODEL TRIPLES --batch B --chunk C   dist-lacl against sentence-transformers

TRIPLES is a jsonl of {query, positive, negative} texts. The step is dist-lacl's: a shared-encoder
DualEncoder (mean pooling, L2-normalised), `GradCache` driving `ir_loss` (temperature 0.05) over B
queries and their 2B passages laid out query by query ([pos_0, neg_0, pos_1, ...]); chunk 0 = no cache.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import statistics
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import psutil  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from dist_lacl.data.batches import Tokenize  # noqa: E402
from dist_lacl.grad_cache import GradCache  # noqa: E402
from dist_lacl.losses import ir_loss  # noqa: E402
from dist_lacl.model import DualEncoder, load_encoder, parameter_groups  # noqa: E402
from dist_lacl.packing import packed_rows  # noqa: E402

TEMPERATURE = 0.05
QUERY_MAX_LEN, PASSAGE_MAX_LEN = 32, 128
# (query, passage) max lengths of the memory step's batch: short sentences are every text cut to 16
# tokens; long passages are cut at 256 (queries at 32), or the model's own limit.
LENGTHS = {"default": (QUERY_MAX_LEN, PASSAGE_MAX_LEN), "short": (16, 16), "long": (QUERY_MAX_LEN, 256)}
# Gradients that are zero in exact arithmetic (softmax is shift-invariant, so the attention key bias
# cannot change any output): their relative error compares two roundings of zero.
EXACTLY_ZERO_GRADS = ("attention.self.key.bias",)


# ---------------------------------------------------------------- the dist-lacl step

def load_triples(path: str, num: int) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        triples = [json.loads(line) for _, line in zip(range(num), f)]
    if len(triples) < num:
        raise SystemExit(f"{path}: {len(triples)} triples, {num} needed")
    return triples


def tokenize_batch(tokenizer, triples: list[dict], query_max_len: int = QUERY_MAX_LEN,
                   passage_max_len: int = PASSAGE_MAX_LEN) -> dict:
    """{query: [B, Lq], passage: [2B, Lp]} as dist_lacl.data.batches.TrainBatches builds them (group size 2)."""
    tokenize = Tokenize(tokenizer)
    passages = [text for t in triples for text in (t["positive"], t["negative"])]
    return {"query": tokenize([t["query"] for t in triples], query_max_len),
            "passage": tokenize(passages, passage_max_len)}


def slice_batch(batch: dict, num_queries: int) -> dict:
    return {"query": {k: v[:num_queries] for k, v in batch["query"].items()},
            "passage": {k: v[:2 * num_queries] for k, v in batch["passage"].items()}}


def build_dual_encoder(model_path: str, packed_row_length: int = 0) -> DualEncoder:
    """Padded, or (packed_row_length) padding-free in rows of that many positions."""
    return DualEncoder(load_encoder(model_path, padding_free=bool(packed_row_length)), pooling="mean",
                       normalize=True, padding_free=bool(packed_row_length), packed_row_length=packed_row_length)


def build_grad_cache(model: DualEncoder, chunk_size: int, sort_by_length: bool = True,
                     block_rows: int = 0, chunk_tokens: int = 0, keep_last_graph: bool = True) -> GradCache:
    return GradCache(encode=lambda name, inputs: model(**inputs, tower=name),
                     loss_fn=lambda reps: (ir_loss(reps["query"], reps["passage"], TEMPERATURE,
                                                   block_rows=block_rows), None),
                     backward_fn=lambda loss: loss.backward(), chunk_size=chunk_size, sort_by_length=sort_by_length,
                     chunk_tokens=chunk_tokens, keep_last_graph=keep_last_graph, packed=model.padding_free,
                     row_length=model.packed_row_length)


def padding_free(model: DualEncoder) -> DualEncoder:
    """The same encoder (the same parameters and gradients) with packed rows (model.padding_free)."""
    return DualEncoder(model.query_encoder, pooling=model.pooling, normalize=model.normalize, padding_free=True)


def forward_backward(grad_cache: GradCache, batch: dict) -> float:
    cache = grad_cache.compute_loss(batch)
    grad_cache.backward(cache)
    return float(cache.loss.detach())


def train_step(grad_cache: GradCache, optimizer: torch.optim.Optimizer, batch: dict) -> float:
    """Forward, loss, backward, AdamW step; gradients freed afterwards (torch's default)."""
    loss = forward_backward(grad_cache, batch)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


# ---------------------------------------------------------------- memory

def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) of this process; False where not supported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


class MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (glibc >= 2.33): what malloc holds, over all arenas."""

    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_mib() -> dict[str, float] | None:
    """glibc's account, MiB: `heap_used` (live allocations below the mmap threshold), `heap_free` (freed
    chunks it keeps; resident only once reused or never trimmed) and `mmapped` (live allocations above
    the threshold: with MALLOC_MMAP_THRESHOLD_=65536 every tensor of 64 KiB or more). None without glibc."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return {"heap_used": info.uordblks / 2**20, "heap_free": info.fordblks / 2**20, "mmapped": info.hblkhd / 2**20}


class RssSampler:
    """Peak resident memory while the body runs, sampled every 5 ms (MiB), as tests/workers/train_steps.py
    samples it: a cross-check of the exact high-water mark, and the figure where that is unavailable."""

    def __enter__(self):
        self.done = threading.Event()
        self.start = self.peak = rss_mib()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.005):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


class PhasePeaks:
    """The kernel's exact resident high-water mark within each phase of a step: the mark is read and
    reset whenever a phase begins or ends, so the step's peak is the largest phase peak.

    Phases are the GradCache methods a step calls (cached: forward_no_grad, build_cache, forward_backward;
    uncached: encode, loss_fn, backward_fn) and the optimizer's step, wrapped on these instances only.
    """

    def __init__(self, grad_cache: GradCache, optimizer: torch.optim.Optimizer):
        names = ("forward_no_grad", "build_cache", "forward_backward") if grad_cache.caching else \
            ("encode", "loss_fn", "backward_fn")
        for name in names:
            self._wrap(grad_cache, name, name)
        self._wrap(optimizer, "step", "optimizer")
        self.supported, self.peaks, self.ends, self.phase = False, {}, {}, "other"

    def _wrap(self, obj, attr: str, phase: str) -> None:
        inner = getattr(obj, attr)

        def wrapped(*args, **kwargs):
            outer = self.phase
            self.switch(phase)
            try:
                return inner(*args, **kwargs)
            finally:
                self.switch(outer)
        setattr(obj, attr, wrapped)

    def switch(self, phase: str) -> None:
        if self.supported:
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), peak_rss_mib())
            reset_peak_rss()
        # Where the resident memory is when the phase ends: live tensors, or freed memory malloc keeps.
        self.ends[self.phase] = {"rss": rss_mib(), **(heap_mib() or {})}
        self.phase = phase

    def __enter__(self):
        self.supported, self.peaks, self.ends, self.phase = reset_peak_rss(), {}, {}, "other"
        self.ends["start"] = {"rss": rss_mib(), **(heap_mib() or {})}
        return self

    def __exit__(self, *exc):
        self.switch("other")

    @property
    def peak(self) -> float | None:
        return max(self.peaks.values()) if self.peaks else None


def release_free_heap() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc): allocations below the mmap
    threshold, such as the Rust tokenizer's many small buffers, otherwise stay resident after being freed."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_memory(args) -> dict:
    """Peak RSS of one full training step, after a warm-up step on 8 queries has allocated the AdamW
    state and run every code path once (so the baseline holds model, optimizer state and the batch).
    The tokenizer's transient peak is measured too: it comes before the step (in the trainer, in
    TrainBatches.next) and is not part of the step's figures."""
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    triples = load_triples(args.triples, args.batch)
    release_free_heap()
    before = rss_mib()
    reset_peak_rss()
    lengths = [min(n, tokenizer.model_max_length) for n in LENGTHS[args.lengths]]
    if args.tokenize_in == "thread":
        # As the trainer does by default (data.prefetch >= 1: dist_lacl.data.prefetch.Prefetcher's thread). glibc gives
        # that thread its own arena, so the tokenizer's many small freed buffers do not stay scattered through
        # the heap the step allocates from (on the main thread, at 2,048 queries, the step's small allocations
        # fault ~110 MiB of them back in: memory glibc holds, not live tensors).
        out = {}
        thread = threading.Thread(target=lambda: out.update(batch=tokenize_batch(tokenizer, triples, *lengths)))
        thread.start()
        thread.join()
        batch = out["batch"]
    else:
        batch = tokenize_batch(tokenizer, triples, *lengths)
    tokenize_peak = peak_rss_mib() - before
    model = build_dual_encoder(args.model, args.packed_row_length).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=2e-5)
    grad_cache = build_grad_cache(model, args.chunk, block_rows=args.block_rows, chunk_tokens=args.chunk_tokens,
                                  keep_last_graph=args.keep_last_graph == "on")
    chunks = [c for inputs in batch.values() for c in grad_cache.split(inputs)[0]]
    # The warm-up runs the loss in several blocks where blocked (checkpointing's first call is not the step's).
    warm_up = build_grad_cache(model, args.chunk, block_rows=min(args.block_rows, 2), chunk_tokens=args.chunk_tokens)
    train_step(warm_up, optimizer, slice_batch(batch, min(8, args.batch)))
    release_free_heap()
    phases = PhasePeaks(grad_cache, optimizer)
    with RssSampler() as rss, phases:
        start = time.perf_counter()
        loss = train_step(grad_cache, optimizer, batch)
        step_s = time.perf_counter() - start
    after_step = {"rss": rss_mib(), **(heap_mib() or {})}
    release_free_heap()
    return {"baseline_mib": rss.start, "peak_sampled_mib": rss.peak, "peak_hwm_mib": phases.peak,
            "phase_peak_mib": phases.peaks, "phase_end_mib": phases.ends, "after_step_mib": after_step,
            "rss_after_trim_mib": rss_mib(), "tokenize_in": args.tokenize_in,
            "tokenize_peak_mib": tokenize_peak, "step_s": step_s, "loss": loss,
            "params": sum(p.numel() for p in model.parameters()), "dim": model.query_encoder.config.hidden_size,
            "input_shapes": {k: list(v["input_ids"].shape) for k, v in batch.items()},
            "chunk_shapes": [list(c["input_ids"].shape) for c in chunks],
            "chunk_positions": [chunk_positions(c, args.packed_row_length) for c in chunks],
            "non_padding_tokens": sum(int(v["attention_mask"].sum()) for v in batch.values())}


# ---------------------------------------------------------------- against sentence-transformers

class SentenceTransformersSide:
    """The same step through sentence-transformers: (anchor, positive, negative) columns, its losses."""

    def __init__(self, model_path: str, chunk: int, max_len: int):
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.losses import (
            CachedMultipleNegativesRankingLoss,
            MultipleNegativesRankingLoss,
        )

        self.model = SentenceTransformer(model_path, device="cpu")
        self.model.max_seq_length = max_len
        # scale 20 with cosine similarity = temperature 0.05 on L2-normalised embeddings.
        self.cached = CachedMultipleNegativesRankingLoss(self.model, scale=1 / TEMPERATURE, mini_batch_size=chunk)
        self.uncached = MultipleNegativesRankingLoss(self.model, scale=1 / TEMPERATURE)

    def tokenize(self, triples: list[dict]) -> list[dict]:
        return [self.model.preprocess([t[column] for t in triples]) for column in ("query", "positive", "negative")]

    def forward_backward(self, loss_fn, features: list[dict]) -> float:
        loss = loss_fn(features, None)
        loss.backward()
        return float(loss.detach())

    def grads(self) -> dict[str, torch.Tensor]:
        """Encoder gradients keyed by the HF parameter name (`0.model.` stripped)."""
        return {name.split(".", 2)[2]: p.grad.clone() for name, p in self.model.named_parameters()
                if p.grad is not None}


def dual_encoder_grads(model: DualEncoder) -> dict[str, torch.Tensor]:
    return {name.split(".", 1)[1]: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def compare_grads(ours: dict, theirs: dict) -> dict:
    """Per parameter ||g_ours - g_st|| / ||g_st||: the largest (and where), the largest over gradients
    that are not zero in exact arithmetic, the median, and over all parameters together."""
    if ours.keys() != theirs.keys():
        raise SystemExit(f"parameter sets differ: {sorted(ours.keys() ^ theirs.keys())[:5]}")
    errors = {name: float((ours[name] - theirs[name]).norm() / theirs[name].norm().clamp_min(1e-30))
              for name in ours}
    worst = max(errors, key=errors.get)
    nonzero = {n: e for n, e in errors.items() if not n.endswith(EXACTLY_ZERO_GRADS)}
    worst_nonzero = max(nonzero, key=nonzero.get)
    total = float(torch.sqrt(sum((ours[n] - theirs[n]).pow(2).sum() for n in ours))
                  / torch.sqrt(sum(theirs[n].pow(2).sum() for n in ours)))
    return {"num_params": len(errors), "max_rel_err": errors[worst], "max_rel_err_param": worst,
            "max_rel_err_nonzero": nonzero[worst_nonzero], "max_rel_err_nonzero_param": worst_nonzero,
            "median_rel_err": statistics.median(errors.values()), "global_rel_err": total}


def zero_grads(*modules) -> None:
    for module in modules:
        module.zero_grad(set_to_none=True)


def padded_tokens(chunks: list[dict]) -> int:
    """Token positions (padding included) the encoder runs over for these chunk inputs."""
    return sum(c["input_ids"].shape[0] * c["input_ids"].shape[1] for c in chunks)


def chunk_positions(chunk: dict, packed_row_length: int) -> int:
    """Token positions the encoder runs for one chunk: rows x longest, or its packed rows' positions."""
    if not packed_row_length:
        return chunk["input_ids"].numel()
    return packed_rows(chunk["attention_mask"].sum(1).tolist(), packed_row_length).positions


def packed_tokens(chunks: list[dict]) -> int:
    """Token positions of these chunks packed into rows of each one's longest (model.padding_free)."""
    return sum(packed_rows(c["attention_mask"].sum(1).tolist()).positions for c in chunks)


def encoder_work(sorted_cache: GradCache, unsorted_cache: GradCache, packed_cache: GradCache, batch: dict, st_loss,
                 st_features: list[dict]) -> dict:
    """Token positions per forward pass over the whole batch (padding included) after each side's
    per-chunk trimming, dist-lacl with and without sorting by length, and packed; the non-padding tokens."""
    from sentence_transformers.base.losses.gradcache import _create_minibatch, _minibatch_ranges

    def chunks(grad_cache: GradCache) -> list[dict]:
        return [c for inputs in batch.values() for c in grad_cache.split(inputs)[0]]

    theirs = padded_tokens([_create_minibatch(f, b, e) for f in st_features
                            for b, e in _minibatch_ranges(f, st_loss.mini_batch_size)])
    real = sum(int(inputs["attention_mask"].sum()) for inputs in batch.values())
    return {"dist_lacl_tokens_per_forward": padded_tokens(chunks(sorted_cache)),
            "dist_lacl_unsorted_tokens_per_forward": padded_tokens(chunks(unsorted_cache)),
            "dist_lacl_packed_tokens_per_forward": packed_tokens(chunks(packed_cache)),
            "st_tokens_per_forward": theirs, "non_padding_tokens": real}


class PhaseTimer:
    """Seconds spent in named methods of given instances (wrapped on those instances only)."""

    def __init__(self):
        self.current: dict[str, float] = {}

    def wrap(self, obj, attr: str, label) -> None:
        """`label`: a name, or a function of the call's (args, kwargs) returning one."""
        inner = getattr(obj, attr)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                name = label(args, kwargs) if callable(label) else label
                self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - start
        setattr(obj, attr, timed)

    def take(self) -> dict[str, float]:
        out, self.current = self.current, {}
        return out


def time_phases(timer: PhaseTimer, cached: GradCache, st: SentenceTransformersSide | None) -> None:
    """The GradCache phases on both sides: the no-grad forward of every chunk, the loss and its backward
    to the representations, the re-forward + backward of every chunk (ST: its re-forwards only; the
    backward through them is the rest of its step)."""
    for name in ("forward_no_grad", "build_cache", "forward_backward"):
        timer.wrap(cached, name, name)
    if st is None:
        return
    timer.wrap(st.cached, "calculate_loss", "build_cache")
    timer.wrap(st.cached, "embed_minibatch",
               lambda args, kwargs: "reforward" if kwargs["with_grad"] else "forward_no_grad")


def time_optimizer_step(model: torch.nn.Module, repeats: int = 3) -> float:
    """Median seconds of one AdamW step over the model's current gradients (its state allocated first)."""
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=0.0)  # lr 0: the weights stay as they are
    optimizer.step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_st(args) -> dict:
    """Gradient agreement in eval mode (no dropout), then forward+backward times in train mode: both
    cached sides and both uncached floors, round by round in a rotating order, after a warm-up step on
    8 triples each. dist-lacl's AdamW step is timed apart (the same for its cached and uncached steps)."""
    triples = load_triples(args.triples, args.batch)
    st = SentenceTransformersSide(args.model, args.chunk, args.max_len)
    ours = build_dual_encoder(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    start = time.perf_counter()
    batch = tokenize_batch(tokenizer, triples, args.max_len, args.max_len)
    tokenize_ours = time.perf_counter() - start
    start = time.perf_counter()
    features = st.tokenize(triples)
    tokenize_st = time.perf_counter() - start
    cached, uncached = build_grad_cache(ours, args.chunk), build_grad_cache(ours, 0)
    unsorted = build_grad_cache(ours, args.chunk, sort_by_length=False)
    every_chunk_reforwarded = build_grad_cache(ours, args.chunk, keep_last_graph=False)
    # The same activation memory as `args.chunk` rows of the longest text: its positions, packed.
    packed = build_grad_cache(padding_free(ours), 0, chunk_tokens=args.chunk * args.max_len)

    ours.eval(), st.model.eval()
    zero_grads(ours, st.model)
    loss_st = st.forward_backward(st.cached, features)
    grads_st = st.grads()
    agreement = {}
    for label, grad_cache in (("", cached), ("packed_", packed)):
        zero_grads(ours)
        loss_ours = forward_backward(grad_cache, batch)
        agreement[label + "agreement"] = {"loss_dist_lacl": loss_ours, "loss_st": loss_st,
                                          "loss_rel_err": abs(loss_ours - loss_st) / abs(loss_st),
                                          **compare_grads(dual_encoder_grads(ours), grads_st)}
    optimizer_s = time_optimizer_step(ours)

    ours.train(), st.model.train()
    sides = {"st_cached": lambda b, f: st.forward_backward(st.cached, f),
             "dist_lacl_cached": lambda b, f: forward_backward(cached, b),
             "dist_lacl_cached_unsorted": lambda b, f: forward_backward(unsorted, b),
             "dist_lacl_cached_reforward_all": lambda b, f: forward_backward(every_chunk_reforwarded, b),
             "dist_lacl_cached_packed": lambda b, f: forward_backward(packed, b),
             "st_uncached_mnrl": lambda b, f: st.forward_backward(st.uncached, f),
             "dist_lacl_uncached": lambda b, f: forward_backward(uncached, b)}
    warm_batch, warm_features = slice_batch(batch, min(8, args.batch)), st.tokenize(triples[:8])
    for side in sides.values():
        zero_grads(ours, st.model)
        side(warm_batch, warm_features)
    timer = PhaseTimer()
    time_phases(timer, cached, st)
    time_phases(timer, packed, None)
    names, times, phases = list(sides), {name: [] for name in sides}, []
    for round_ in range(args.repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            zero_grads(ours, st.model)
            timer.take()
            start = time.perf_counter()
            sides[name](batch, features)
            times[name].append(time.perf_counter() - start)
            if name in ("dist_lacl_cached", "dist_lacl_cached_packed", "st_cached"):
                phases.append({"side": name, "step_s": times[name][-1], **timer.take()})
    return {**agreement, "step_s": times, "optimizer_step_s": optimizer_s, "phases": phases,
            "tokenize_s": {"dist_lacl": tokenize_ours, "st": tokenize_st},
            "work": encoder_work(cached, unsorted, packed, batch, st.cached, features)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("memory", "st"))
    parser.add_argument("model")
    parser.add_argument("triples")
    parser.add_argument("--batch", type=int, required=True, help="queries per step")
    parser.add_argument("--chunk", type=int, required=True, help="sequences per chunk; 0 = no caching")
    parser.add_argument("--chunk-tokens", type=int, default=0, help="memory: tokens per chunk (with --chunk 0)")
    parser.add_argument("--lengths", choices=sorted(LENGTHS), default="default", help="memory: text lengths")
    parser.add_argument("--keep-last-graph", choices=("on", "off"), default="on",
                        help="memory: GradCache's keep_last_graph (off: every chunk re-forwarded)")
    parser.add_argument("--packed-row-length", type=int, default=0,
                        help="memory: padding-free rows of this many positions (0: padded chunks)")
    parser.add_argument("--tokenize-in", choices=("thread", "main"), default="thread",
                        help="memory: tokenise the batch in a thread, as the trainer's prefetcher does, or on the "
                             "step's thread")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--block-rows", type=int, default=0, help="memory: the IR loss's loss.block_rows")
    parser.add_argument("--repeats", type=int, default=5, help="st: timed rounds")
    parser.add_argument("--max-len", type=int, default=PASSAGE_MAX_LEN, help="st: one max length for all texts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = {"memory": measure_memory, "st": measure_st}[args.mode](args)
    print("RESULT " + json.dumps({**result, "torch_threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
