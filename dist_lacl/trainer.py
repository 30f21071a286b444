"""The training loop: build, resume, then step (grad-cached loss over the global batch) until done."""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor

from . import distributed as dist
from .checkpoint import Checkpointer, checkpoint_name, has_complete_checkpoint, write_atomic
from .config import RunConfig, check_resume_compatible, check_world_size, config_from_dict
from .data.batches import TrainBatches
from .diagnostics import language_centroid_accuracy, parallel_similarity
from .engine import build_engine
from .errors import ConfigError, NonFiniteError, ResumeRequested, UserError
from .grad_cache import GradCache
from .losses import LossTerms, lacl_loss
from .losses_variants import language_ids, same_language_mask
from .model import build_model, max_tokens
from .outputs import check_parent_writable
from .tokenizer import load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Counters that must survive a restart (the data position lives in TrainBatches)."""

    step: int = 0
    skipped_steps: int = 0
    nonfinite_in_a_row: int = 0


class StopSignal:
    """SIGTERM, SIGUSR1 (SLURM's warning before the time limit) and SIGINT (Ctrl-C) ask for a checkpoint
    and a clean exit.

    The handler only sets a flag: the step in flight finishes, so a signal cannot interrupt a checkpoint
    write halfway. A second Ctrl-C stops at once (KeyboardInterrupt): every write is atomic, so the run
    directory keeps its newest complete checkpoint.
    """

    # Launchers (torchrun's agent) forward the terminal's SIGINT to their workers, which then see one
    # press twice within milliseconds; only a SIGINT this long after the first counts as a second press.
    SECOND_PRESS_S = 0.5

    def __init__(self):
        self.received: int | None = None
        self.first_sigint: float | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if signum == signal.SIGINT:
            now = time.monotonic()
            if self.first_sigint is not None and now - self.first_sigint >= self.SECOND_PRESS_S:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            self.first_sigint = self.first_sigint or now
        if self.received is None:
            log.warning("received signal %d: will checkpoint after this step and exit%s", signum,
                        " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else "")
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
    """What a step shares with its loss function: a detached copy of the global representations when
    enabled (for diagnostics), and the step's language mask (loss.language_pairs=own, else None)."""

    def __init__(self):
        self.enabled, self.reps = False, None
        self.language_mask: Tensor | None = None


def make_loss_fn(cfg: RunConfig, tap: RepsTap):
    """loss(reps) over the global batch; gathers every job's representations across ranks first.

    With loss.sharding=sharded each rank computes only its share l_r of every term (its own anchor
    rows against all gathered candidates; L = sum_r l_r). The returned loss has the value of the global
    L on every rank (all-reduced, for logging and the finite check) but backpropagates as this rank's
    l_r only: the other shares' gradient with respect to this rank's rows arrives through the
    gather's backward (summed over ranks), so every rank's cached gradient is dL/d(its rows), times
    world_size, and the engine's average over ranks of the parameter gradients is exactly dL/dtheta.
    """
    sharded = cfg.loss.sharding == "sharded"

    def loss_fn(reps: dict[str, Tensor]) -> tuple[Tensor, LossTerms]:
        global_reps = {name: dist.gather_for_loss(r, sharded) for name, r in reps.items()}
        if sharded:
            terms = global_terms(lacl_loss(global_reps, cfg.loss, (dist.rank(), dist.world_size()),
                                           tap.language_mask))
        else:
            terms = lacl_loss(global_reps, cfg.loss, language_mask=tap.language_mask)
        if tap.enabled:
            tap.reps = {k: v.detach() for k, v in global_reps.items()}
        return terms.total, terms
    return loss_fn


def global_terms(shares: LossTerms) -> LossTerms:
    """*Collective.* Every term summed over ranks (one all-reduce), gradients to this rank's shares."""
    names = [n for n in ("total", "ir", "semantic", "language") if getattr(shares, n) is not None]
    summed = dist.sum_shares(torch.stack([getattr(shares, n) for n in names]))
    return LossTerms(**dict(zip(names, summed.unbind())))


def step_language_mask(meta: dict, cfg: RunConfig) -> Tensor | None:
    """*Collective* (gathers languages) with loss.language_pairs=own, else None at once.

    mask[k, i]: global monolingual row k is compared with global pair i ([K, N] bool, the rows in the
    order gather_for_loss concatenates them: rank by rank). Built once per step, before the loss and
    outside the gradient cache's chunks; every rank builds the same one from the same gathered lists.
    """
    if cfg.loss.language_pairs != "own" or cfg.loss.language_weight == 0:
        return None
    para, mono = (_gathered(meta[key]) for key in ("para_lang", "mono_lang"))
    vocabulary = sorted(set(para) | set(mono))
    return same_language_mask(language_ids(mono, vocabulary), language_ids(para, vocabulary))


def _gathered(local: list) -> list:
    """*Collective.* Every rank's list, concatenated rank by rank."""
    return [item for part in dist.all_gather_objects(local) for item in part]


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
        self.tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path,
                                        "model.tokenizer" if cfg.model.tokenizer else "model.name_or_path")
        model = build_model(cfg.model, t.precision)
        check_vocabulary(model, self.tokenizer, cfg)
        check_lengths(model, self.tokenizer, cfg)
        self.engine = build_engine(model, cfg)
        check_world_size(cfg, dist.world_size())
        torch.manual_seed(t.seed + dist.rank())  # dropout differs per rank, as it would on separate GPUs
        self.data, self.dev = self.load_data()
        self.claim_run_dir()
        self.state = TrainState()
        self.saved_step: int | None = None
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", t.keep_last)
        self.tap = RepsTap()
        self.grad_cache = GradCache(
            encode=lambda job, inputs: self.engine.encode(inputs, tower_of(job)),
            loss_fn=make_loss_fn(cfg, self.tap), backward=self.engine.backward,
            chunk_size=t.chunk_size, chunk_tokens=t.chunk_tokens, packed=cfg.model.padding_free,
            row_length=cfg.model.packed_row_length,
            chunk_context=self.engine.chunk_context, backward_context=self.engine.backward_context,
            keep_last_graph=t.keep_last_graph)
        self.writer = None

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

    def claim_run_dir(self) -> None:
        """*Collective.* Only with config and data validated does the run directory become this run's:
        rank 0 locks it (a second training into it is refused; the lock dies with the process) and
        writes the config; every rank then checks that it sees the same directory."""
        error, token = None, None
        if dist.is_main():
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self.lock = RunLock(self.run_dir)
                token = self.lock.token
                write_atomic(self.run_dir / "config.yaml",
                             yaml.safe_dump(self.cfg.to_dict(), sort_keys=False).encode())
            except UserError as e:
                error = str(e)
            except OSError as e:
                error = f"train.output_dir: {self.run_dir}: cannot be written ({e.strerror})"
        error, token = dist.broadcast_object((error, token))
        if error:
            raise UserError(error)
        check_shared_run_dir(self.run_dir, token)

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
        path = self.checkpointer.save(self.engine, self.state.step, self.trainer_state(), extra)
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
        t = self.cfg.train
        self.resume()
        self.open_writer()
        if self.writer and self.state.step == 0:
            # The mix the sampler aims at, once: step 0 of the mix/ curves (the observed ones start at 1).
            for name, p in self.data.expected_language_mix().items():
                self.writer.add_scalar(name, p, 0)
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
                if t.save_every and self.state.step % t.save_every == 0:
                    self.save()
                # A signal after the last step is no reason to run again: the run finishes below.
                if self.stop.requested() and self.state.step < t.max_steps:
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
        self.tap.language_mask = step_language_mask(meta, self.cfg)
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
        if self.tap.enabled:
            scalars.update(self.data.language_mix(meta))  # the global draws, recomputed from the step
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
    """Refuse an output directory that holds a different run (resuming it would silently mix the two).

    Only a run that left a complete checkpoint binds the directory to its config: one that failed
    before its first checkpoint can be run again with corrected settings.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"train.output_dir: {run_dir} is a file; expected a directory")
    check_parent_writable(run_dir, "train.output_dir")
    saved = run_dir / "config.yaml"
    if saved.is_file():
        if not has_complete_checkpoint(run_dir / "checkpoints"):
            log.info("%s: no complete checkpoint yet; this run's config replaces the saved one", run_dir)
            return
        previous = config_from_dict(yaml.safe_load(saved.read_text()), source=str(saved))
        check_resume_compatible(previous, cfg, str(saved))
    elif run_dir.is_dir() and any(p.name not in ("cache", ".lock") for p in run_dir.iterdir()):
        raise ConfigError(f"train.output_dir: {run_dir} is not empty and holds no dist-lacl run; "
                          "choose another directory")


def check_lengths(model, tokenizer, cfg: RunConfig) -> None:
    """Every configured length must fit the model's position embeddings and leave room for text after
    its prefix (the prefix counts inside max_len: truncation cuts the text)."""
    limit = max_tokens(model.tower("query"))
    d, m = cfg.data, cfg.model
    for name, length, prefix, prefix_name in (
            ("query_max_len", d.query_max_len, m.query_prefix, "query_prefix"),
            ("passage_max_len", d.passage_max_len, m.passage_prefix, "passage_prefix"),
            ("sentence_max_len", d.sentence_max_len, m.query_prefix, "query_prefix")):
        if limit is not None and length > limit:
            raise ConfigError(f"data.{name}: {length} tokens, but {m.name_or_path} numbers at most {limit} "
                              f"positions; use at most {limit}")
        # Special tokens plus the prefix; at least one token of text must remain.
        needed = len(tokenizer(prefix)["input_ids"]) + 1 if prefix else 0
        if needed and length < needed:
            raise ConfigError(f"data.{name}: {length} tokens leave no room for text after model.{prefix_name} "
                              f"({needed - 1} tokens with the special ones); use at least {needed}")


class RunLock:
    """An exclusive lock on `<run_dir>/.lock`, held by rank 0 for the whole run. The kernel releases it
    when the process ends, however it ends, so a crashed run never leaves its directory locked."""

    def __init__(self, run_dir: Path):
        import fcntl
        import secrets
        import socket

        self.file = open(run_dir / ".lock", "a+")  # noqa: SIM115 (held open for the process's life)
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise UserError(f"train.output_dir: {run_dir} is in use by another training ({holder}); wait for "
                            "it to finish, or choose another train.output_dir") from None
        self.token = f"{socket.gethostname()} pid {os.getpid()} {secrets.token_hex(4)}"
        self.file.seek(0)
        self.file.truncate()
        self.file.write(self.token + "\n")
        self.file.flush()


def check_shared_run_dir(run_dir: Path, token: str, wait_s: float = 30.0) -> None:
    """*Collective.* Every rank must see rank 0's lock file: checkpoints are written by all ranks into one
    directory, so node-local output directories would scatter a checkpoint over several machines.
    A network filesystem may show a new file late: wait up to `wait_s`."""
    import socket

    deadline = time.monotonic() + wait_s
    seen = False
    while not seen:
        try:
            seen = (run_dir / ".lock").read_text().strip() == token
        except OSError:
            seen = False
        if seen or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    problems = [p for p in dist.all_gather_objects(None if seen else f"rank {dist.rank()} on "
                                                   f"{socket.gethostname()}") if p]
    if problems:
        raise UserError(f"train.output_dir: {run_dir} is not one shared directory: {', '.join(problems)} do(es) "
                        "not see rank 0's files; put the output directory on a filesystem all nodes share")


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
