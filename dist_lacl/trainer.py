"""The training loop: build, resume, then step (grad-cached loss over the global batch) until done."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor

from . import distributed as dist
from . import reporting, run_dir, run_facts
from .best import DEV_METRICS, best_scalar, check_group, improves
from .checkpoint import Checkpointer, checkpoint_name
from .config import RunConfig
from .config_checks import check_world_size
from .data.batches import TrainBatches
from .engine import build_engine
from .errors import NonFiniteError, ResumeRequested, UserError
from .grad_cache import GradCache
from .model import build_model, check_lengths
from .objective import Objective, diagnostics, step_jobs, step_language_mask, step_teacher_scores
from .signals import StopSignal
from .tokenizer import check_vocabulary, load_tokenizer, tokenizer_files

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Counters that must survive a restart (the data position lives in TrainBatches)."""

    step: int = 0
    skipped_steps: int = 0
    nonfinite_in_a_row: int = 0
    best_step: int | None = None
    """With train.keep_best: the step of the best-scoring checkpoint so far, and its score."""
    best_value: float | None = None


class Trainer:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.stop = StopSignal()  # first: a signal during start-up must not kill the job uncheckpointed
        t = cfg.train
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        torch.manual_seed(t.seed)  # identical initial weights on every rank for any new heads
        self.run_dir = Path(t.output_dir)
        reporting.check_available(t.report_to)
        run_dir.check_output_dir(self.run_dir, cfg)  # read-only: a refused run leaves the directory untouched
        self.tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path,
                                        "model.tokenizer" if cfg.model.tokenizer else "model.name_or_path")
        model = build_model(cfg.model, t.precision)
        check_vocabulary(model, self.tokenizer, cfg)
        check_lengths(model, self.tokenizer, cfg)
        self.engine = build_engine(model, cfg)
        check_world_size(cfg, dist.world_size())
        torch.manual_seed(t.seed + dist.rank())  # dropout differs per rank, as it would on separate GPUs
        self.data, self.dev = self.load_data()
        if t.keep_best:
            check_group(t.keep_best, self.dev.queries.langs)
        self.lock = run_dir.claim(self.run_dir, cfg)
        if dist.is_main():  # the model card's data facts (files, records, languages)
            run_facts.record_data(self.run_dir, cfg.data, self.data)
        self.state = TrainState()
        self.saved_step: int | None = None
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", t.keep_last)
        self.grad_cache = GradCache(
            encode=lambda job, inputs: self.engine.encode(inputs, job.tower),
            loss_fn=Objective(cfg.loss), backward_fn=self.engine.backward,
            chunk_size=t.chunk_size, chunk_tokens=t.chunk_tokens, packed=cfg.model.padding_free,
            row_length=cfg.model.packed_row_length,
            chunk_context=self.engine.chunk_context, backward_context=self.engine.backward_context,
            keep_last_graph=t.keep_last_graph)
        self.reporter = reporting.Reporter([])

    # -- set-up ------------------------------------------------------------------------------

    def load_data(self):
        """*Collective.* The validated training streams and, with train.eval_every, the dev set."""
        cfg, d = self.cfg, self.cfg.data
        data = TrainBatches(cfg, self.tokenizer, dist.rank(), dist.world_size(), d.cache_dir)
        dev = None
        if cfg.train.eval_every:
            from .evaluation.evaluate import load_dev_set

            dev = load_dev_set(d.dev_queries, d.dev_corpus, d.dev_qrels)
        return data, dev

    def resume(self) -> None:
        """*Collective.* Continue from the newest complete checkpoint, if any."""
        latest = self.checkpointer.latest_complete()
        if latest is None:
            return
        state = self.checkpointer.load(self.engine, latest)
        self.state = TrainState(**state["train"])
        self.data.load_state_dict(state["data"])
        self.saved_step = self.state.step  # that checkpoint is on disk: finishing here rewrites nothing
        log.info("resumed from %s at step %d", latest, self.state.step)
        if self.state.step >= self.cfg.train.max_steps:
            log.info("already at step %d, train.max_steps is %d: nothing to train", self.state.step,
                     self.cfg.train.max_steps)

    def trainer_state(self) -> dict:
        return {"train": asdict(self.state), "data": self.data.state_dict(), "world_size": dist.world_size()}

    def save(self) -> Path:
        """*Collective.* Checkpoint the current step, once (refused if the weights are not finite)."""
        if self.saved_step == self.state.step:
            return self.checkpointer.root / checkpoint_name(self.state.step)
        if not self.weights_finite():
            raise NonFiniteError(f"step {self.state.step}: the weights hold non-finite values; not saving "
                                 "a checkpoint (the previous complete one is kept)")
        # Self-contained: the tokenizer and the encoder's config travel with the weights, so `export`
        # works after the base model folder has moved.
        extra = {"config.yaml": yaml.safe_dump(self.cfg.to_dict(), sort_keys=False).encode(),
                 "model/config.json": self.engine.module.tower("query").config.to_json_string().encode(),
                 **tokenizer_files(self.tokenizer)}
        path = self.checkpointer.save(self.engine, self.state.step, self.trainer_state(), extra,
                                      best_step=self.state.best_step)
        self.saved_step = self.state.step
        log.info("saved %s", path)
        return path

    def weights_finite(self) -> bool:
        """*Collective.*"""
        local = all(bool(torch.isfinite(p).all()) for p in self.engine.module.parameters())
        return dist.all_reduce_max(0.0 if local else 1.0) == 0.0

    # -- the loop ----------------------------------------------------------------------------

    def train(self) -> dict[str, float]:
        """Train to train.max_steps; returns the last step's logged scalars."""
        self.resume()
        self.reporter = reporting.open_reporter(self.cfg, self.run_dir, self.state.step)
        if self.state.step == 0:
            # The mix the sampler aims at, once: step 0 of the mix/ curves (the observed ones start at 1).
            self.reporter.write(self.data.expected_language_mix(), 0)
        self.engine.train()
        try:
            scalars = self.run_steps()
            self.save()
        finally:
            self.reporter.close()
        return scalars

    def run_steps(self) -> dict[str, float]:
        """Steps to train.max_steps, evaluating, logging and checkpointing as configured; returns the last
        step's scalars."""
        t = self.cfg.train
        scalars: dict[str, float] = {}
        progress = _progress(t.max_steps, self.state.step)
        try:
            while self.state.step < t.max_steps:
                scalars = self.train_step()
                self.state.step += 1
                progress.update(1)
                progress.set_postfix(loss=f"{scalars.get('loss/total', math.nan):.4f}")
                new_best = False
                if t.eval_every and self.state.step % t.eval_every == 0:
                    scalars.update(self.evaluate())
                    new_best = self.note_best(scalars)
                if self.state.step % t.log_every == 0 or t.eval_every and self.state.step % t.eval_every == 0:
                    self.log(scalars)
                if new_best or t.save_every and self.state.step % t.save_every == 0:
                    self.save()
                # A signal after the last step is no reason to run again: the run finishes below.
                if self.stop.requested() and self.state.step < t.max_steps:
                    self.save()
                    raise ResumeRequested(f"stopped by signal at step {self.state.step}; run again to resume")
        finally:
            progress.close()  # an error message then starts on a line of its own
        return scalars

    def train_step(self) -> dict[str, float]:
        """One optimizer step: loss over the global batch, cached backward, update (or a counted skip)."""
        start = time.perf_counter()
        batch, meta = self.data.next()
        logged = (self.state.step + 1) % self.cfg.train.log_every == 0
        cache = self.grad_cache.compute_loss(step_jobs(batch, self.cfg.model), keep_reps=logged,
                                             language_mask=step_language_mask(meta, self.cfg.loss),
                                             teacher_scores=step_teacher_scores(meta, self.cfg.loss),
                                             keys=meta["keys"])
        finite = math.isfinite(float(cache.loss)) and cache.grads_finite()
        if dist.all_reduce_max(0.0 if finite else 1.0) > 0:
            return self.skip_step(cache)
        self.grad_cache.backward(cache)
        stats = self.engine.step()
        self.state.nonfinite_in_a_row = 0
        elapsed = time.perf_counter() - start
        scalars = {**cache.loss_out.scalars(), **{f"train/{k}": v for k, v in stats.items()}}
        scalars.update(self.throughput(batch, elapsed))
        if logged:
            scalars.update(diagnostics(cache.loss_out.reps, meta))
            scalars.update(self.data.language_mix(meta))  # the global draws, recomputed from the step
        scalars["train/epoch"] = meta["epoch"]
        scalars.update(self.data.ir_counts())  # data/ir/<name>: queries drawn from each IR dataset so far
        return scalars

    def evaluate(self) -> dict[str, float]:
        """*Collective.* Dev-set metrics per language (eval mode: no dropout, no RNG consumed)."""
        from .evaluation.evaluate import evaluate_dev

        self.engine.train(False)
        try:
            metrics = evaluate_dev(self.engine.module, self.tokenizer, self.dev, metrics=DEV_METRICS,
                                   query_max_len=self.cfg.data.query_max_len,
                                   passage_max_len=self.cfg.data.passage_max_len,
                                   dtype=self.cfg.train.precision)
        finally:
            self.engine.train(True)
        if dist.is_main():  # readable without TensorBoard (the model card's dev metrics)
            run_facts.record_eval(self.run_dir, self.state.step, metrics)
        return metrics

    def note_best(self, scalars: dict[str, float]) -> bool:
        """With train.keep_best: whether this step's dev score is a new best (then recorded in the state).
        evaluate_dev broadcasts its result, so every rank decides the same without a collective."""
        if not self.cfg.train.keep_best:
            return False
        name = best_scalar(self.cfg.train.keep_best)
        if name not in scalars:
            raise UserError(f"train.keep_best: the dev evaluation reported no {name} (no judged query of that "
                            "language?)")
        if not improves(scalars[name], self.state.best_value):
            return False
        self.state.best_step, self.state.best_value = self.state.step, scalars[name]
        log.info("step %d: new best %s = %.4f", self.state.step, name, scalars[name])
        return True

    def skip_step(self, cache) -> dict[str, float]:
        """A non-finite loss or representation gradient on any rank: no update, counted; too many stop."""
        self.engine.skip_step()
        self.state.skipped_steps += 1
        self.state.nonfinite_in_a_row += 1
        log.warning("step %d: non-finite loss or gradient on some rank; step skipped (%d in a row)",
                    self.state.step + 1, self.state.nonfinite_in_a_row)
        if self.state.nonfinite_in_a_row >= self.cfg.train.max_nonfinite_steps:
            raise NonFiniteError(
                f"{self.state.nonfinite_in_a_row} consecutive steps had a non-finite loss or gradient "
                f"(train.max_nonfinite_steps={self.cfg.train.max_nonfinite_steps}); stopping. Lower "
                "train.lr, check the data, or resume from the last checkpoint")
        return {"train/skipped_steps": self.state.skipped_steps}

    def throughput(self, batch: dict[str, dict[str, Tensor]], elapsed: float) -> dict[str, float]:
        examples = sum(inputs["input_ids"].shape[0] for inputs in batch.values())
        tokens = sum(int(inputs["attention_mask"].sum()) for inputs in batch.values())
        # Every rank does the same amount of work per step, so local counts times world size are global.
        n = dist.world_size()
        return {"perf/examples_per_s": n * examples / elapsed, "perf/tokens_per_s": n * tokens / elapsed,
                "perf/step_s": elapsed, "perf/peak_mem_gb_max_rank": dist.all_reduce_max(peak_memory_gb())}

    def log(self, scalars: dict[str, float]) -> None:
        if not dist.is_main():
            return
        self.reporter.write(scalars, self.state.step)
        terms = " ".join(f"{k.split('/')[1]}={v:.4f}" for k, v in scalars.items() if k.startswith("loss/"))
        log.info("step %d %s lr=%.3g", self.state.step, terms, scalars.get("train/lr", math.nan))


def peak_memory_gb() -> float:
    """This rank's peak memory: allocated GPU memory on CUDA, else the process's peak resident set."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _progress(total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=not dist.is_main(),
                dynamic_ncols=True)


def train(cfg: RunConfig) -> dict[str, float]:
    return Trainer(cfg).train()
