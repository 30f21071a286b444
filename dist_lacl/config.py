"""Run configuration: typed dataclasses, loaded as defaults < YAML file < dotted command-line overrides."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config_checks import validate
from .config_ir import IRSource
from .config_paths import resolve_paths
from .config_values import coerce, suggest
from .errors import ConfigError


@dataclass
class ModelConfig:
    name_or_path: str = "xlm-roberta-base"
    """A transformers encoder: a local folder or a hub id (hub ids need network access)."""
    tokenizer: str | None = None
    """Tokenizer folder or id; defaults to `name_or_path`."""
    shared_encoder: bool = True
    """One encoder for queries, passages and auxiliary sentences; False gives separate query/passage towers."""
    aux_towers: str = "both"
    """With separate towers: which tower(s) the semantic and language losses train (query, passage, both)."""
    pooling: str = "cls"
    """Sentence representation: `cls` (first token) or `mean` (over non-padding tokens)."""
    normalize: bool = False
    """L2-normalise representations, making sim() a cosine."""
    query_prefix: str = ""
    """Text put before every query and every parallel or monolingual sentence (e5: "query: ")."""
    passage_prefix: str = ""
    """Text put before every passage (e5: "passage: ")."""
    gradient_checkpointing: bool = False
    """Recompute encoder activations in backward (less memory, about 30% more time)."""
    random_init: bool = False
    """Build the architecture from `name_or_path`'s config.json with random weights (from-scratch
    training, or memory planning for a model whose weights are not at hand)."""
    compile: bool = False
    """Run each encoder through torch.compile(dynamic=True): chunks of every length share one graph
    (off by default: not faster on CPU, minutes of compiling; docs/performance.md)."""
    compile_backend: str = "inductor"
    """torch.compile backend with model.compile: inductor (generated kernels; on CPU it needs a C++
    compiler) or aot_eager (the same graphs run by eager kernels: a check, not a speed-up)."""
    padding_free: bool = False
    """Run each chunk's sequences without padding, attention kept within each sequence (a BERT, RoBERTa or
    XLM-R model): on a CUDA GPU with flash-attn and bf16/fp16, one row through its varlen kernel; elsewhere
    (CPU, fp32) rows as long as the chunk's longest sequence, shorter ones sharing a row, under SDPA's
    block-diagonal mask. With train.chunk_tokens the budget counts these packed positions."""
    packed_row_length: int = 0
    """With padding_free under SDPA or eager attention: rows of this many positions for every chunk
    (0: each chunk's longest sequence). Attention keeps row length x row length scores per row, so a fixed
    length makes train.chunk_tokens a fixed activation memory whatever the texts' lengths, at the price of
    wider scores for short texts. Flash-attention's varlen row ignores it."""


@dataclass
class DataConfig:
    train_ir: str | list[IRSource] = ""
    """English IR training data: Tevatron jsonl (query_id, query, positive_passages, negative_passages) or
    another format of docs/formats.md (a file, or MS MARCO's directory); or a list of datasets, each
    {path, format, name, weight, corpus} or a path, mixed by data.ir_batches."""
    train_ir_format: str = "auto"
    """Format of train_ir: auto (detected), tevatron, tevatron-v2, flagembedding, msmarco or dpr."""
    train_corpus: str | None = None
    """Corpus that train_ir names passages from: Tevatron v2 corpus jsonl, MS MARCO collection.tsv
    (default: corpus.jsonl / collection.tsv beside train_ir)."""
    ir_batches: str = "one"
    """With several train_ir datasets: `one` draws each global batch from one dataset, `mixed` each query."""
    ir_alpha: float = 1.0
    """With several train_ir datasets and no weights: p(dataset) ~ its size^alpha (1: by size, 0: uniform)."""
    parallel: str | None = None
    """Parallel sentences jsonl (en, text, lang), TSV or an OPUS Moses pair; required when
    loss.semantic_weight or language_weight > 0."""
    parallel_format: str = "auto"
    """Format of parallel: auto (detected), jsonl, tsv or moses."""
    parallel_lang: str | None = None
    """The non-English language of TSV/Moses parallel data (default: from the file name, X.de-en.tsv)."""
    parallel_min_score: float | None = None
    """Parallel TSV with a score column (WikiMatrix): pairs scoring below this are dropped."""
    monolingual: str | None = None
    """Monolingual sentences jsonl (text, lang) or plain text; required when loss.language_weight > 0."""
    monolingual_format: str = "auto"
    """Format of monolingual: auto (detected), jsonl or text (one sentence per line, CC-100)."""
    monolingual_lang: str | None = None
    """Language of plain-text monolingual data (default: from the file name, de.txt.xz)."""
    train_group_size: int = 8
    """Passages per query: 1 positive + (train_group_size - 1) hard negatives."""
    query_max_len: int = 32
    """Query length in tokens, truncated beyond."""
    passage_max_len: int = 128
    """Passage (title + text) length in tokens."""
    sentence_max_len: int = 64
    """Parallel and monolingual sentence length in tokens."""
    dev_queries: str | None = None
    """Optional dev set for evaluation during training: queries jsonl/tsv (query_id, query, lang)."""
    dev_corpus: str | None = None
    """Dev corpus jsonl (docid, title, text)."""
    dev_qrels: str | None = None
    """Dev qrels, TREC format."""
    bad_records: str = "error"
    """Policy for malformed records: `error` stops with file/line/field, `skip` drops and counts them."""
    cache_dir: str | None = None
    """Root of the Arrow caches (one per input file, shared by runs); default $DIST_LACL_CACHE or ~/.cache/dist_lacl."""
    cache_build_procs: int = 0
    """Processes that build a file's cache (cut at newlines); 0 = one per CPU (at most 16), 1 = rank 0 alone."""
    prefetch: int = 1
    """Steps whose inputs a background thread reads and tokenises ahead of training; 0 = in the loop."""
    language_alpha: float | None = None
    """Draw the parallel and monolingual streams by language, p(lang) ~ n_lang^alpha (XLM-R: 0.3; 0: uniform
    over languages; with replacement, see sampling.py); None: every example once per epoch, as before."""

    def ir_sources(self) -> list[IRSource]:
        """train_ir as a list: a path is one dataset, read with train_ir_format and train_corpus."""
        return IRSource.listed(self.train_ir, self.train_ir_format, self.train_corpus)


@dataclass
class LossConfig:
    temperature: float = 0.05
    """tau in sim(a, b) = a.b / tau, shared by the three losses."""
    semantic_weight: float = 1.0
    """alpha: weight of the semantic contrastive loss on parallel pairs; 0 switches it and its data off."""
    language_weight: float = 1.0
    """beta: weight of the language contrastive loss; 0 switches it and the monolingual data off."""
    semantic_symmetric: bool = True
    """Average the e->f and f->e directions of the semantic loss (False: e->f only)."""
    language_variant: str = "balanced"
    """`balanced`: -0.5 log p - 0.5 log(1-p), p = softmax over (e_i, f_i); `squared`: (sim_e - sim_f)^2."""
    language_temperature: float | None = None
    """tau of the language loss alone (a larger one keeps its gradient proportional to the gap, see
    losses.language_temperature); None: loss.temperature."""
    language_pairs: str = "all"
    """Pairs a monolingual sentence is compared with in the language loss: `all` (Eq. 3) or `own` (the
    global batch's pairs of its language; every pair where the batch has none of its language)."""
    sharding: str = "replicated"
    """`replicated`: every rank scores the whole global batch; `sharded`: each rank scores only its own
    anchor rows against every gathered candidate (score memory / world size; same loss and gradients)."""
    block_rows: int = 0
    """Score at most this many anchor rows at a time, recomputed in backward (exact); 0: all at once."""
    distill_weight: float = 0.0
    """Weight of KL(teacher || student) over each query's group (its positive and hard negatives), from the
    passages' teacher scores in data.train_ir; the student's scores use loss.temperature. 0: off, scores
    ignored; > 0: every passage of the training data needs a score (docs/method.md)."""
    distill_temperature: float = 1.0
    """The teacher's temperature: its distribution over a group is softmax(score / distill_temperature)."""
    mask_false_negatives: bool = True
    """Switch: leave false negatives out of the IR and semantic denominators (a passage with the docid of
    one of the query's positives; a pair sharing the anchor's English text or translation); false: score
    every candidate, as the paper does. Counts logged as mask/ir and mask/semantic."""


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    """Run directory: resolved config, TensorBoard events, checkpoints."""
    backend: str = "deepspeed"
    """`deepspeed` (ZeRO via ds_config) or `ddp` (PyTorch DDP through accelerate)."""
    deepspeed_config: str = "ds_configs/zero2_fp32_cpu.json"
    """DeepSpeed JSON; its batch, precision and clipping entries must agree with this config (or be absent)."""
    precision: str = "fp32"
    """fp32, bf16 or fp16 (fp16 needs a GPU)."""
    seed: int = 42
    """Seeds model init, data order, negative sampling and dropout."""
    ir_batch_size: int = 32
    """Queries per step across all ranks (the global batch; must divide by the world size)."""
    parallel_batch_size: int = 32
    """Parallel pairs per step across all ranks."""
    monolingual_batch_size: int = 32
    """Monolingual sentences per step across all ranks."""
    chunk_size: int = 8
    """Gradient-cache chunk, in sequences per forward; 0 disables gradient caching (unless chunk_tokens)."""
    chunk_tokens: int = 0
    """Gradient-cache chunk as a token budget instead (rows x longest row, after sorting by length): big
    chunks of short sentences, small ones of long passages; needs train.chunk_size 0. 0: off."""
    keep_last_graph: bool = True
    """Gradient cache: the step's last chunk keeps its first forward's graph instead of being re-forwarded
    (exact; one forward fewer per step for one chunk's activations held during the loss)."""
    grad_reduction: str = "coalesced"
    """ZeRO-2 with several chunks: `coalesced` keeps full gradients locally and reduces once per step
    (memory of ZeRO-1 gradients, one reduce-scatter); `per_chunk` reduce-scatters after every chunk
    (partitioned gradients, one reduce-scatter per chunk). DDP always reduces once."""
    max_steps: int = 100
    """Optimizer steps to train (the data streams cycle as needed)."""
    lr: float = 2e-5
    """Peak learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and LayerNorm weights)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 10
    """Linear warm-up steps, then linear decay to 0 at max_steps."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    log_every: int = 1
    """Steps between TensorBoard/console log lines."""
    eval_every: int = 0
    """Steps between dev-set evaluations (MRR@10, Recall@100, nDCG@10 per language and averaged, logged as
    eval/<metric>/<lang|macro|all>); 0: never."""
    save_every: int = 0
    """Steps between checkpoints; 0 saves only at the end."""
    keep_last: int = 2
    """Complete checkpoints to keep (the newest ones; the best one of train.keep_best is kept beside them)."""
    keep_best: str | None = None
    """Keep the checkpoint that scores best on this dev metric (higher is better), never deleted: ndcg@10
    (its mean over the dev languages), ndcg@10/all, ndcg@10/<lang>, likewise mrr@10 or recall@100. Needs
    train.eval_every; a new best is checkpointed at once. `export --best RUN_DIR` exports it."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Where rank 0 writes the logged scalars: tensorboard (<output_dir>/tensorboard) and/or wandb (the
    wandb extra, `pip install dist-lacl[wandb]`; project from $WANDB_PROJECT, default dist-lacl)."""
    max_nonfinite_steps: int = 3
    """Consecutive steps with a non-finite loss or gradient (skipped) before training stops."""
    dist_timeout_s: int = 600
    """Collective timeout: a dead rank makes the others exit after this many seconds instead of hanging."""
    num_threads: int = 0
    """torch threads per rank on CPU; 0 leaves torch's default."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Defaults < YAML file < `section.key=value` overrides (values parsed as YAML). Validated."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: " + ("is a folder; expected a YAML config file" if path.is_dir()
                                             else "config file not found"))
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model, data, loss, train)")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override '{item}': expected section.key=value, e.g. train.lr=1e-5")
        section, _, name = key.partition(".")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"override '{item}': '{section}' is not a section")
        raw[section][name] = _override_value(item, key, value)
    return config_from_dict(raw, source=str(path) if path else "overrides")


def _override_value(item: str, key: str, value: str):
    """The YAML value of a command-line override; ConfigError with the quoting to use where YAML would not
    keep the text a user typed (`query: ` is a mapping, ` #` starts a comment)."""
    if value == "":
        return None
    hint = f"; to pass the text as it is, quote it inside the argument: '{key}=\"{value}\"'"
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': not valid YAML ({getattr(e, 'problem', None) or e}){hint}") from None
    quoted = value.strip()[:1] in ("'", '"')
    if isinstance(parsed, dict) and not value.lstrip().startswith("{") or \
            isinstance(parsed, str) and not quoted and parsed != value.strip():
        raise ConfigError(f"override '{item}': YAML reads {value!r} as {parsed!r}{hint}")
    return parsed


def config_from_dict(raw: dict, source: str = "config") -> RunConfig:
    sections = {f.name: f.type for f in dataclasses.fields(RunConfig)}
    kwargs = {}
    for section, values in raw.items():
        if section not in sections:
            raise ConfigError(f"{source}: unknown section '{section}'{suggest(section, sections)}")
        cls = {"model": ModelConfig, "data": DataConfig, "loss": LossConfig, "train": TrainConfig}[section]
        kwargs[section] = _build_section(cls, section, values or {}, source)
    cfg = resolve_paths(RunConfig(**kwargs))
    validate(cfg)
    return cfg


def _build_section(cls, section: str, values: dict, source: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section '{section}' must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{section}.{key}'{_suggest_key(key, fields, section)}")
        out[key] = coerce(value, hints[key], f"{section}.{key}")
    return cls(**out)


def _suggest_key(key: str, fields, section: str) -> str:
    """`suggest` within the section, unless another section has this very key (`train.compile` is
    `model.compile`)."""
    for other, cls in typing.get_type_hints(RunConfig).items():
        if other != section and key in {f.name for f in dataclasses.fields(cls)}:
            return f"; did you mean '{other}.{key}'?"
    return suggest(key, fields, section)
