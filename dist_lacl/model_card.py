"""An export's model card: README.md with the Hub's YAML header, every fact from the run that made it.

The facts (`card_facts`) come from the checkpoint (config.yaml, trainer_state.json) and its run
directory (`run_facts`: data.json, metrics.jsonl); how to load the folder and its prompts come from the
exported files themselves (`loading.model_settings`). A fact that is not recorded is left out, never
guessed: a checkpoint copied away from its run has no data counts or dev metrics, an export without a
checkpoint (`facts=None`) only its layout, loading code and prompts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import run_facts
from .formats.languages import is_language_code
from .loading import model_settings

README = "README.md"
TAGS = ["sentence-transformers", "sentence-similarity", "feature-extraction", "dense-retrieval", "multilingual",
        "dist-lacl"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
"""A Hub model id (`xlm-roberta-base`, `intfloat/multilingual-e5-base`); a path is never one."""
_GROUPS = ("macro", "all")
"""Dev-metric groups that are not languages (evaluation.evaluate.aggregate)."""


@dataclass
class CardFacts:
    """What a checkpoint's run recorded; None or empty is unknown (left out of the card)."""

    config: dict
    """The checkpoint's config.yaml as saved (sections model, data, loss, train)."""
    step: int | None = None
    world_size: int | None = None
    data: dict | None = None
    """run_facts' data.json: {stream: {files, records, languages}}."""
    dev_step: int | None = None
    dev: dict[str, float] = field(default_factory=dict)
    """The last dev evaluation at or before `step`: {"eval/<metric>/<group>": value}."""


def card_facts(checkpoint: Path) -> CardFacts:
    """The facts of `checkpoint` (a complete step-* folder) and of the run directory it lies in, if any."""
    checkpoint = Path(checkpoint)
    config = yaml.safe_load((checkpoint / "config.yaml").read_text()) or {}
    state = _json(checkpoint / "trainer_state.json") or {}
    step = (state.get("train") or {}).get("step")
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
    if run is not None and not (run / "config.yaml").is_file():
        run = None
    evals = run_facts.read_evals(run, up_to_step=step)
    dev_step = max(evals) if evals else None
    return CardFacts(config, step, state.get("world_size"), run_facts.read_data(run), dev_step,
                     evals.get(dev_step, {}))


def write_model_card(folder: Path, facts: CardFacts | None) -> Path:
    """Write `folder`/README.md: the card of the export being built in `folder` (its model files written)."""
    path = Path(folder) / README
    path.write_text(render(Path(folder), facts), encoding="utf-8")
    return path


def render(folder: Path, facts: CardFacts | None) -> str:
    towers = (folder / "query" / "config.json").is_file()
    settings = model_settings(folder / "query" if towers else folder)
    sections = [_header(facts), _title(facts)]
    if facts is not None:
        sections += [_method(facts), _training(facts), _data(facts), _dev_metrics(facts)]
    sections += [_usage(towers, settings, _document_prompt(folder)), _prompts(settings.prefixes)]
    return "\n".join(s for s in sections if s)


# ---------------------------------------------------------------- facts -> text

def _header(facts: CardFacts | None) -> str:
    header = {}
    base = base_model(facts)
    if base:
        header["base_model"] = base
    langs = languages(facts)
    if langs:
        header["language"] = langs
    header.update(library_name="sentence-transformers", pipeline_tag="sentence-similarity", tags=TAGS)
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n"


def base_model(facts: CardFacts | None) -> str | None:
    """model.name_or_path when it is a Hub id (not a local folder, which the Hub cannot link to)."""
    name = _get(facts, "model", "name_or_path")
    if not isinstance(name, str) or not _HUB_ID.match(name) or Path(name).expanduser().exists():
        return None
    return name


def languages(facts: CardFacts | None) -> list[str]:
    """The trained and evaluated languages as the Hub lists them (ISO 639-1 where a code has one: the
    stored form, formats.languages), regions and scripts dropped."""
    if facts is None:
        return []
    found = set()
    for name, stream in (facts.data or {}).items():
        found.update(stream.get("languages") or [])
        if name == "parallel":
            found.add("en")  # the `en` side of every pair
    found.update(key.rsplit("/", 1)[-1] for key in facts.dev)
    primary = {code.lower().replace("_", "-").split("-")[0] for code in found if code not in _GROUPS}
    return sorted(code for code in primary if is_language_code(code))


def _title(facts: CardFacts | None) -> str:
    base = base_model(facts)
    return f"# A dual encoder for multilingual retrieval{f' fine-tuned from {base}' if base else ''}\n"


def _method(facts: CardFacts) -> str:
    aux = [name for name, key in (("a semantic contrastive loss on parallel sentences", "semantic_weight"),
                                  ("a language contrastive loss on monolingual sentences", "language_weight"))
           if (_get(facts, "loss", key) or 0) > 0]
    how = (f", while {' and '.join(aux)} make its representations language-agnostic, so that retrieval "
           "transfers to languages without IR training data" if aux else "")
    negatives = "in-batch and hard negatives" if (_get(facts, "data", "train_group_size") or 1) > 1 else \
        "in-batch negatives"
    return ("Trained with dist-lacl after LACL (Hu et al. 2023, *Language Agnostic "
            "Multilingual Information Retrieval with Contrastive Learning*): a dual encoder learns retrieval "
            f"from IR training data with {negatives}{how}. Every number below is read from the training run's "
            "config and logs.\n")


def _training(facts: CardFacts) -> str:
    lines = ["## Training", ""]
    name = _get(facts, "model", "name_or_path")
    if isinstance(name, str):
        lines.append(f"- Base model: `{name if base_model(facts) else Path(name).name}`"
                     f"{'' if base_model(facts) else ' (a local folder)'}")
    shared = _get(facts, "model", "shared_encoder")
    if shared is not None:
        lines.append(f"- Encoder: {'one shared by queries and passages' if shared else 'separate query and passage towers'}"
                     f", `{_get(facts, 'model', 'pooling')}` pooling"
                     f"{', L2-normalised' if _get(facts, 'model', 'normalize') else ''}")
    lines.append(f"- Loss: {_loss_formula(facts)}")
    for key, what, weight in (("temperature", "temperature (tau)", None),
                              ("language_temperature", "language-loss temperature", "language_weight"),
                              ("language_variant", "language-loss variant", "language_weight"),
                              ("distill_temperature", "distillation temperature", "distill_weight")):
        value = _get(facts, "loss", key)
        if value is not None and (weight is None or (_get(facts, "loss", weight) or 0) > 0):
            lines.append(f"  - {what}: `{value}`")
    if facts.step is not None:
        lines.append(f"- Steps: {facts.step} (train.max_steps {_get(facts, 'train', 'max_steps')})")
    lines += _batches(facts)
    for key, what in (("lr", "peak learning rate"), ("warmup_steps", "warm-up steps"), ("precision", "precision"),
                      ("seed", "seed")):
        value = _get(facts, "train", key)
        if value is not None:
            lines.append(f"- {what.capitalize()}: `{value}`")
    lengths = [f"{k.split('_')[0]} {_get(facts, 'data', k)}" for k in ("query_max_len", "passage_max_len",
               "sentence_max_len") if _get(facts, "data", k) is not None]
    if lengths:
        lines.append(f"- Maximum lengths in tokens: {', '.join(lengths)}")
    return "\n".join(lines) + "\n"


def _loss_formula(facts: CardFacts) -> str:
    terms = ["IR contrastive loss"]
    for key, what in (("semantic_weight", "semantic loss"), ("language_weight", "language loss"),
                      ("distill_weight", "distillation loss")):
        weight = _get(facts, "loss", key)
        if weight:
            terms.append(f"{weight} x {what}")
    return " + ".join(terms)


_STREAMS = (("ir", "train_ir", "ir_batch_size", "queries"),
            ("parallel", "parallel", "parallel_batch_size", "parallel pairs"),
            ("monolingual", "monolingual", "monolingual_batch_size", "monolingual sentences"))
"""Each training stream: its data.* file setting, its train.* batch size, what it holds."""


def _streams(facts: CardFacts) -> list[tuple[str, str, str, str]]:
    """The streams trained on: those data.json lists, else those the loss weights switch on (as
    trainer.load_data does)."""
    if facts.data is not None:
        return [s for s in _STREAMS if s[0] in facts.data]
    semantic, language = ((_get(facts, "loss", k) or 0) > 0 for k in ("semantic_weight", "language_weight"))
    return [_STREAMS[0]] + [_STREAMS[1]] * (semantic or language) + [_STREAMS[2]] * language


def _batches(facts: CardFacts) -> list[str]:
    """Global batch sizes of the streams trained on, and per device where the world size is recorded."""
    lines = []
    for _, _, key, what in _streams(facts):
        size, n = _get(facts, "train", key), facts.world_size
        if size is None:
            continue
        per_device = f" ({size // n} per device on {n} device{'s' * (n > 1)})" if n and size % n == 0 else ""
        lines.append(f"- Global batch: {size} {what}{per_device}")
    group = _get(facts, "data", "train_group_size")
    if group is not None:
        lines.append(f"- Passages per query: {group} (one positive, the rest hard negatives)")
    return lines


def _data(facts: CardFacts) -> str:
    rows = []
    if facts.data is not None:
        for name, s in facts.data.items():
            rows.append(f"| {name} | {', '.join(f'`{f}`' for f in s.get('files', []))} | {s.get('records', '')} | "
                        f"{', '.join(s.get('languages') or [])} |")
    else:  # only the names the config gives
        for name, key, _, _ in _streams(facts):
            paths = _get(facts, "data", key)
            paths = [paths] if isinstance(paths, str) else paths if isinstance(paths, list) else []
            if any(paths):
                rows.append(f"| {name} | {', '.join(f'`{Path(p).name}`' for p in paths if p)} |  |  |")
    dev = [Path(p).name for p in (_get(facts, "data", k) for k in ("dev_queries", "dev_corpus", "dev_qrels")) if p]
    if dev:
        rows.append(f"| dev | {', '.join(f'`{f}`' for f in dev)} |  |  |")
    if not rows:
        return ""
    return "## Data\n\n| stream | files | records | languages |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"


def _dev_metrics(facts: CardFacts) -> str:
    if not facts.dev:
        return ""
    metrics = sorted({key.split("/")[1] for key in facts.dev})
    groups = sorted({key.rsplit("/", 1)[-1] for key in facts.dev}, key=lambda g: (g in _GROUPS, g))
    rows = [f"| {g} | " + " | ".join(_value(facts.dev.get(f"eval/{m}/{g}")) for m in metrics) + " |" for g in groups]
    return (f"## Dev set, step {facts.dev_step}\n\nMeasured during training (train.eval_every), rounded to 4 "
            f"decimals.\n\n| language | {' | '.join(metrics)} |\n|---|{'---|' * len(metrics)}\n"
            + "\n".join(rows) + "\n")


def _value(v) -> str:
    return "" if v is None else f"{v:.4f}"


def _document_prompt(folder: Path) -> str:
    """encode_document's arguments: sentence-transformers picks the first of its prompts "document",
    "passage", "corpus" that exists, and adds an empty "document" prompt of its own where the folder has
    none, so a passage prompt saved as "passage" must be named."""
    config = _json(folder / "config_sentence_transformers.json") or {}
    prompts = config.get("prompts") or {} if isinstance(config, dict) else {}
    return ', prompt_name="passage"' if prompts.get("passage") and "document" not in prompts else ""


def _usage(towers: bool, settings, document_prompt: str) -> str:
    if towers:
        return _TOWERS_USAGE
    pool = ("reps = hidden[:, 0]  # CLS pooling" if settings.pooling == "cls" else
            "mask = batch[\"attention_mask\"].unsqueeze(-1).to(hidden.dtype)\n"
            "    reps = (hidden * mask).sum(1) / mask.sum(1)  # mean pooling")
    norm = "\n    reps = torch.nn.functional.normalize(reps, dim=-1)" if settings.normalize else ""
    return _SHARED_USAGE.format(pool=pool, norm=norm, document_prompt=document_prompt,
                                query=_embed_args(settings.prefixes.get("query", ""), settings.query_max_len),
                                passage=_embed_args(settings.prefixes.get("passage", ""), settings.passage_max_len))


def _embed_args(prompt: str, max_length: int | None) -> str:
    """The snippet's `embed` arguments after the texts: the prompt, and the trained length if recorded."""
    return json.dumps(prompt) + (f", {max_length}" if max_length else "")


def _prompts(prefixes: dict[str, str]) -> str:
    if not any(prefixes.values()):
        return "## Prompts\n\nNone: queries and passages are encoded as they are.\n"
    lines = [f"- {tower}: `{json.dumps(text)}`" for tower, text in prefixes.items() if text]
    return ("## Prompts\n\nPut before every text of a kind, as in training (the sentence-transformers code "
            "above adds them):\n\n" + "\n".join(lines) + "\n")


def _get(facts: CardFacts | None, section: str, key: str):
    return None if facts is None else (facts.config.get(section) or {}).get(key)


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


_SHARED_USAGE = """## Usage

With sentence-transformers (scores are dot products, as in training):

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("THIS_FOLDER")
queries = model.encode_query(["Where is the nearest train station?"])
passages = model.encode_document(["The central station is two streets away."]{document_prompt})
scores = queries @ passages.T
```

With transformers (the pooling and prompts made explicit):

```python
import torch
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")
model = AutoModel.from_pretrained("THIS_FOLDER").eval()

def embed(texts, prompt, max_length=None):  # max_length: the tokens per text the model was trained with
    batch = tokenizer([prompt + t for t in texts], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    {pool}{norm}
    return reps

scores = embed(["Where is the nearest train station?"], {query}) @ embed(["The central station is two streets away."], {passage}).T
```

dist-lacl commands (`encode`, `mine`, `evaluate`) take this folder as `--model`.
"""

_TOWERS_USAGE = """## Usage

`query/` encodes queries and `passage/` encodes passages. sentence-transformers (5.0 or later) and MTEB
load this folder as one model (a Router: queries to `query/`, documents to `passage/`), with its prompts
and the lengths it was trained with. With plain transformers, `AutoModel.from_pretrained` each folder
and pool as its `1_Pooling/config.json` says (prompts below).

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("THIS_FOLDER")
scores = model.encode_query(["a question"]) @ model.encode_document(["a passage"]).T
```

dist-lacl commands (`encode`, `mine`, `evaluate`) take this top folder as `--model`.
"""
