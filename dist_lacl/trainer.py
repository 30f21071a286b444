"""The training loop: build, resume, then step (grad-cached loss over the global batch) until done."""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor
from transformers import AutoTokenizer

from . import distributed as dist
from .checkpoint import Checkpointer
from .config import RunConfig, check_resume_compatible, check_world_size, config_from_dict
from .data import TrainBatches
from .diagnostics import language_centroid_accuracy, parallel_similarity
from .engine import build_engine
from .errors import ConfigError, NonFiniteError, ResumeRequested
from .grad_cache import GradCache
from .losses import LossTerms, lacl_loss
from .model import build_model

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Counters that must survive a restart (the data position lives in TrainBatches)."""

    step: int = 0
    skipped_steps: int = 0
    nonfinite_in_a_row: int = 0


class StopSignal:
    """SIGTERM / SIGUSR1 (SLURM's warning before the time limit) ask for a checkpoint and a clean exit.

    The handler only sets a flag: the step in flight finishes, so a second signal cannot interrupt
    a checkpoint write halfway.
    """

    def __init__(self):
        self.received: int | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received is None:
            log.warning("received signal %d: will checkpoint after this step and exit", signum)
        self.received = signum

    def requested(self) -> bool:
        """*Collective.* True on every rank if any rank received a signal."""
        return dist.all_reduce_max(1.0 if self.received is not None else 0.0) > 0


def encode_jobs(batch: dict[str, dict[str, Tensor]], cfg: RunConfig) -> dict[str, dict[str, Tensor]]:
    """Name every representation the step computes. With separate towers, auxiliary sentences are
    encoded once per tower named in model.aux_towers (key suffix `@query` / `@passage`)."""
    jobs = {"query": batch["query"], "passage": batch["passage"]}
    towers = [""] if cfg.model.shared_encoder else \
        {"both": ["query", "passage"], "query": ["query"], "passage": ["passage"]}[cfg.model.aux_towers]
    for role in ("para_en", "para_xx", "mono"):
        if role in batch:
            for tower in towers:
                jobs[f"{role}@{tower}" if tower else role] = batch[role]
    return jobs


def tower_of(job: str) -> str:
    """The tower that encodes job `job`: its suffix, else `passage` for passages and `query` otherwise."""
    role, _, tower = job.partition("@")
    return tower or ("passage" if role == "passage" else "query")


class RepsTap:
    """Keeps a detached copy of the step's global representations when enabled (for diagnostics)."""

    def __init__(self):
        self.enabled, self.reps = False, None


def make_loss_fn(cfg: RunConfig, tap: RepsTap):
    """loss(reps) over the global batch; gathers every job's representations across ranks first."""
    def loss_fn(reps: dict[str, Tensor]) -> tuple[Tensor, LossTerms]:
        global_reps = {name: dist.gather_keep_local_grad(r) for name, r in reps.items()}
        terms = lacl_loss(global_reps, cfg.loss)
        if tap.enabled:
            tap.reps = {k: v.detach() for k, v in global_reps.items()}
        return terms.total, terms
    return loss_fn


def diagnostics(global_reps: dict[str, Tensor], meta: dict) -> dict[str, float]:
    """*Collective* (gathers languages). Alignment and language-probe scalars on this step's batch."""
    out = {}
    en, xx = global_reps.get("para_en", global_reps.get("para_en@query")), \
        global_reps.get("para_xx", global_reps.get("para_xx@query"))
    if en is None:
        return out
    out.update(parallel_similarity(en, xx))
    langs = [lang for part in dist.all_gather_objects(meta["para_lang"]) for lang in part]
    reps, labels = [en, xx], ["en"] * len(langs) + langs
    mono = global_reps.get("mono", global_reps.get("mono@query"))
    if mono is not None:
        reps.append(mono)
        labels += [lang for part in dist.all_gather_objects(meta["mono_lang"]) for lang in part]
    out["align/lang_id_acc"] = language_centroid_accuracy(torch.cat(reps), labels)
    return out


class Trainer:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.stop = StopSignal()  # first: a signal during start-up must not kill the job uncheckpointed
        t = cfg.train
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        torch.manual_seed(t.seed)  # identical initial weights on every rank for any new heads
        self.run_dir = Path(t.output_dir)
        check_output_dir(self.run_dir, cfg)  # read-only: a refused run leaves the directory untouched
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer or cfg.model.name_or_path)
        model = build_model(cfg.model)
        check_vocabulary(model, self.tokenizer, cfg)
        self.engine = build_engine(model, cfg)
        check_world_size(cfg, dist.world_size())
        torch.manual_seed(t.seed + dist.rank())  # dropout differs per rank, as it would on separate GPUs
        self.data, self.dev = self.load_data()
        self.claim_run_dir()
        self.state = TrainState()
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", t.keep_last)
        self.tap = RepsTap()
        self.grad_cache = GradCache(
            encode=lambda job, inputs: self.engine.encode(inputs, tower_of(job)),
            loss_fn=make_loss_fn(cfg, self.tap), backward=self.engine.backward,
            chunk_size=t.chunk_size, chunk_context=self.engine.chunk_context,
            backward_context=self.engine.backward_context)
        self.writer = None

    # -- set-up ------------------------------------------------------------------------------

    def load_data(self):
        """*Collective.* The validated training streams and, with train.eval_every, the dev set."""
        cfg, d = self.cfg, self.cfg.data
        cache_dir = self.run_dir / "cache" if d.cache_dir is None else Path(d.cache_dir)
        data = TrainBatches(cfg, self.tokenizer, dist.rank(), dist.world_size(), cache_dir)
        dev = None
        if cfg.train.eval_every:
            from .evaluation.evaluate import load_dev_set

            dev = load_dev_set(d.dev_queries, d.dev_corpus, d.dev_qrels)
        return data, dev

    def claim_run_dir(self) -> None:
        """*Collective.* Only with config and data validated does the run directory become this run's."""
        if dist.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.cfg.save(self.run_dir / "config.yaml")
        dist.barrier()

    def resume(self) -> None:
        """*Collective.* Continue from the newest complete checkpoint, if any."""
        latest = self.checkpointer.latest_complete()
        if latest is None:
            return
        state = self.checkpointer.load(self.engine, latest)
        self.state = TrainState(**state["train"])
        self.data.load_state_dict(state["data"])
        log.info("resumed from %s at step %d", latest, self.state.step)

    def open_writer(self) -> None:
        """TensorBoard on rank 0. After a resume, events a crashed run logged past its last checkpoint
        are marked stale (purge_step), so the curve shows each step once."""
        if dist.is_main():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"),
                                        purge_step=self.state.step + 1 if self.state.step else None)

    def trainer_state(self) -> dict:
        return {"train": asdict(self.state), "data": self.data.state_dict(), "world_size": dist.world_size()}

    def save(self) -> Path:
        """*Collective.* Checkpoint the current step (refused if the weights are not finite)."""
        if not self.weights_finite():
            raise NonFiniteError(f"step {self.state.step}: the weights hold non-finite values; not saving "
                                 "a checkpoint (the previous complete one is kept)")
        extra = {"config.yaml": yaml.safe_dump(self.cfg.to_dict(), sort_keys=False).encode(),
                 **tokenizer_files(self.tokenizer)}
        path = self.checkpointer.save(self.engine, self.state.step, self.trainer_state(), extra)
        log.info("saved %s", path)
        return path

    def weights_finite(self) -> bool:
        """*Collective.*"""
        local = all(bool(torch.isfinite(p).all()) for p in self.engine.module.parameters())
        return dist.all_reduce_max(0.0 if local else 1.0) == 0.0

    # -- the loop ----------------------------------------------------------------------------

    def train(self) -> dict[str, float]:
        """Train to train.max_steps; returns the last step's logged scalars."""
        t = self.cfg.train
        self.resume()
        self.open_writer()
        self.engine.train()
        scalars: dict[str, float] = {}
        progress = _progress(t.max_steps, self.state.step)
        try:
            while self.state.step < t.max_steps:
                scalars = self.train_step()
                self.state.step += 1
                progress.update(1)
                progress.set_postfix(loss=f"{scalars.get('loss/total', math.nan):.4f}")
                if t.eval_every and self.state.step % t.eval_every == 0:
                    scalars.update(self.evaluate())
                if self.state.step % t.log_every == 0 or t.eval_every and self.state.step % t.eval_every == 0:
                    self.log(scalars)
                if t.save_every and self.state.step % t.save_every == 0 and self.state.step < t.max_steps:
                    self.save()
                if self.stop.requested():
                    self.save()
                    raise ResumeRequested(f"stopped by signal at step {self.state.step}; run again to resume")
        finally:
            progress.close()  # an error message then starts on a line of its own
        self.save()
        if self.writer:
            self.writer.close()
        return scalars

    def train_step(self) -> dict[str, float]:
        """One optimizer step: loss over the global batch, cached backward, update (or a counted skip)."""
        start = time.perf_counter()
        batch, meta = self.data.next()
        self.tap.enabled = (self.state.step + 1) % self.cfg.train.log_every == 0
        self.tap.reps = None
        cache = self.grad_cache.compute_loss(encode_jobs(batch, self.cfg))
        finite = math.isfinite(float(cache.loss)) and cache.grads_finite()
        if dist.all_reduce_max(0.0 if finite else 1.0) > 0:
            return self.skip_step(cache)
        self.grad_cache.backward(cache)
        stats = self.engine.step()
        self.state.nonfinite_in_a_row = 0
        elapsed = time.perf_counter() - start
        scalars = {**cache.loss_out.scalars(), **{f"train/{k}": v for k, v in stats.items()}}
        scalars.update(self.throughput(batch, elapsed))
        if self.tap.reps is not None:
            scalars.update(diagnostics(self.tap.reps, meta))
        scalars["train/epoch"] = meta["epoch"]
        return scalars

    def evaluate(self) -> dict[str, float]:
        """*Collective.* Dev-set metrics per language (eval mode: no dropout, no RNG consumed)."""
        from .evaluation.evaluate import evaluate_dev

        self.engine.train(False)
        try:
            return evaluate_dev(self.engine.module, self.tokenizer, self.dev, metrics=("mrr@10", "recall@100"),
                                query_max_len=self.cfg.data.query_max_len,
                                passage_max_len=self.cfg.data.passage_max_len,
                                dtype=self.cfg.train.precision)
        finally:
            self.engine.train(True)

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
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, self.state.step)
        self.writer.flush()
        terms = " ".join(f"{k.split('/')[1]}={v:.4f}" for k, v in scalars.items() if k.startswith("loss/"))
        log.info("step %d %s lr=%.3g", self.state.step, terms, scalars.get("train/lr", math.nan))


def tokenizer_files(tokenizer) -> dict[str, bytes]:
    """The tokenizer as {"tokenizer/<file>": bytes}, to travel inside every checkpoint."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {f"tokenizer/{p.name}": p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def peak_memory_gb() -> float:
    """This rank's peak memory: allocated GPU memory on CUDA, else the process's peak resident set."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def check_output_dir(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse an output directory that holds a different run (resuming it would silently mix the two)."""
    saved = run_dir / "config.yaml"
    if saved.is_file():
        previous = config_from_dict(yaml.safe_load(saved.read_text()), source=str(saved))
        check_resume_compatible(previous, cfg, str(saved))
    elif run_dir.is_dir() and any(p.name not in ("cache",) for p in run_dir.iterdir()):
        raise ConfigError(f"train.output_dir: {run_dir} is not empty and holds no dist-lacl run; "
                          "choose another directory")


def check_vocabulary(model, tokenizer, cfg: RunConfig) -> None:
    """A tokenizer larger than the embedding matrix would index past it at the first rare token."""
    rows = model.tower("query").get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ConfigError(f"model.tokenizer: {len(tokenizer)} tokens but {cfg.model.name_or_path} has "
                          f"{rows} embedding rows; use the tokenizer the model was trained with")


def _progress(total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=not dist.is_main(),
                dynamic_ncols=True)


def train(cfg: RunConfig) -> dict[str, float]:
    return Trainer(cfg).train()
