"""Loading a trained model: an exported folder, a sentence-transformers or plain transformers folder, or a
training checkpoint.

The one loader of export, evaluation, mining and the demo. A folder's settings (pooling, normalize,
towers, prefixes, input lengths) come from, in this order: `dist_lacl.json` (written by `export`); else
the sentence-transformers files (modules.json, the Pooling module's config.json, a Normalize module,
config_sentence_transformers.json's prompts, sentence_bert_config.json's max_seq_length /
query_length / document_length); else plain transformers: CLS pooling, no normalisation, no prefixes,
no lengths. A checkpoint is rebuilt from its config.yaml (lengths: data.query_max_len /
passage_max_len), the encoder's config and the engine's fp32 weights.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .checkpoint import (
    MANIFEST,
    Checkpointer,
    checkpoint_name,
    consolidated_weights,
    read_trainer_state,
    verify,
)
from .config import config_from_dict
from .errors import UserError
from .model import DualEncoder, load_encoder, prefixes_of
from .tokenizer import load_tokenizer

log = logging.getLogger(__name__)

SETTINGS = "dist_lacl.json"
"""An exported folder's dist-lacl settings (and the list of what the export wrote)."""


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
"""The names transformers loads an encoder's weights from."""

_ST_MODULES = "modules.json"
_ST_POOLING = {"cls": "cls", "mean": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean"}
"""sentence-transformers' pooling modes (new and legacy spellings) that `model.pool` computes."""


@dataclass
class ModelSettings:
    """How a model folder's encoder outputs become embeddings, and where its encoder(s) lie."""

    pooling: str = "cls"
    normalize: bool = False
    shared_encoder: bool = True
    prefixes: dict[str, str] = field(default_factory=dict)
    query_max_len: int | None = None
    """Tokens per query the model was trained with (None: the folder records none)."""
    passage_max_len: int | None = None
    lengths_from: str = ""
    """The file the lengths were read from."""
    encoder_dir: str = ""
    """The encoder's subfolder (an older sentence-transformers layout: `0_Transformer/`); "" the folder itself."""


def load_model(path: str | Path) -> tuple[DualEncoder, object]:
    """An exported folder, a sentence-transformers or transformers folder, or a training checkpoint / run
    directory."""
    path = Path(path)
    if any((path / name).is_file() for name in ("config.json", SETTINGS, _ST_MODULES)):
        return load_dual_encoder(path)
    return model_from_checkpoint(path)


def load_dual_encoder(path: str | Path) -> tuple[DualEncoder, object]:
    """(DualEncoder, tokenizer) from a model folder, with its `model_settings`."""
    path = Path(path)
    settings = model_settings(path)
    if settings.shared_encoder:
        query, passage, tok_dir = _load_weights(path / settings.encoder_dir), None, path / settings.encoder_dir
    else:
        query, passage, tok_dir = _load_weights(path / "query"), _load_weights(path / "passage"), path / "query"
    model = DualEncoder(query, passage, pooling=settings.pooling, normalize=settings.normalize,
                        prefixes=settings.prefixes, max_lengths_from=settings.lengths_from,
                        max_lengths={"query": settings.query_max_len, "passage": settings.passage_max_len})
    return model.eval(), load_tokenizer(tok_dir, "--model")


def model_settings(path: str | Path) -> ModelSettings:
    """The settings of a model folder: `dist_lacl.json`, else sentence-transformers' files, else CLS."""
    path = Path(path)
    if (path / SETTINGS).is_file():
        raw = _read_json(path / SETTINGS)
        prefixes = raw.get("prefixes") or {}
        # Exports since prompts were keyed as clients ask for them say `document`; older ones `passage`.
        prefixes = {"query": prefixes.get("query", ""), "passage": prefixes.get("document", prefixes.get("passage", ""))}
        settings = ModelSettings(raw["pooling"], raw["normalize"], raw["shared_encoder"], prefixes)
        if raw.get("query_max_len") or raw.get("passage_max_len"):
            settings.query_max_len, settings.passage_max_len = raw.get("query_max_len"), raw.get("passage_max_len")
            settings.lengths_from = str(path / SETTINGS)
        return settings
    settings = _st_settings(path) if (path / _ST_MODULES).is_file() else ModelSettings()
    config = path / settings.encoder_dir / "sentence_bert_config.json"
    if config.is_file():
        raw = _read_json(config)
        settings.query_max_len = raw.get("query_length") or raw.get("max_seq_length")
        settings.passage_max_len = raw.get("document_length") or raw.get("max_seq_length")
        settings.lengths_from = str(config) if settings.query_max_len or settings.passage_max_len else ""
    return settings


def input_length(model: DualEncoder, tower: str, given: int | None, option: str, fallback: int) -> int:
    """Tokens per input of `tower`: `given` (the command's `option`), else the length the model records,
    else `fallback`; logged with where it came from."""
    recorded = model.max_lengths[tower]
    if given is not None:
        log.info("%s inputs: %d tokens, from %s (the model records %s)", tower, given, option, recorded or "none")
        return given
    if recorded is not None:
        log.info("%s inputs: %d tokens, as the model was trained (%s)", tower, recorded, model.max_lengths_from)
        return recorded
    log.info("%s inputs: %d tokens, %s's default (the model records no length)", tower, fallback, option)
    return fallback


def _st_settings(path: Path) -> ModelSettings:
    """A sentence-transformers folder: Transformer -> Pooling (cls or mean) -> optional Normalize."""
    modules = _read_json(path / _ST_MODULES)
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m.get("path", "") for m in modules}
    unsupported = sorted(set(kinds) - {"Transformer", "Pooling", "Normalize"})
    if unsupported or "Pooling" not in kinds:
        raise UserError(f"{path / _ST_MODULES}: modules {', '.join(unsupported) or 'without a Pooling module'}; "
                        "expected Transformer, Pooling and optionally Normalize")
    pooling_file = path / kinds["Pooling"] / "config.json"
    pooling_cfg = _read_json(pooling_file)
    mode = pooling_cfg.get("pooling_mode")
    modes = [mode] if isinstance(mode, str) else list(mode or []) + [k for k, v in pooling_cfg.items()
                                                                      if k.startswith("pooling_mode_") and v is True]
    if len(modes) != 1 or modes[0] not in _ST_POOLING:
        raise UserError(f"{pooling_file}: pooling {', '.join(modes) or 'none'}; expected exactly one of cls "
                        "(pooling_mode_cls_token) or mean (pooling_mode_mean_tokens)")
    prompts = _read_json(path / "config_sentence_transformers.json").get("prompts") or {} \
        if (path / "config_sentence_transformers.json").is_file() else {}
    if pooling_cfg.get("include_prompt") is False and any(prompts.values()):
        raise UserError(f"{pooling_file}: include_prompt false (prompts left out of pooling); expected true")
    if {"passage", "document"} <= prompts.keys() and prompts["passage"] != prompts["document"]:
        raise UserError(f"{path}/config_sentence_transformers.json: prompts 'passage' and 'document' differ; "
                        "expected one passage prompt")
    prefixes = {"query": prompts.get("query") or "", "passage": prompts.get("passage", prompts.get("document")) or ""}
    return ModelSettings(_ST_POOLING[modes[0]], "Normalize" in kinds, True, prefixes,
                         encoder_dir=kinds.get("Transformer", ""))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: expected a JSON file ({e})") from None


def _load_weights(folder: Path):
    """The encoder in `folder`; a folder with a config but no weights is one clear line, not a traceback."""
    if (folder / "config.json").is_file() and not any((folder / name).is_file() for name in WEIGHT_FILES):
        parent = folder.parent
        if folder.name == "model" and ((parent / MANIFEST).is_file() or (parent / "trainer_state.json").is_file()):
            raise UserError(f"--model {folder}: is the encoder configuration of checkpoint {parent}, without "
                            f"weights; pass the checkpoint ({parent}) or its run directory instead")
        raise UserError(f"--model {folder}: has a config.json but no weights; expected one of "
                        f"{', '.join(WEIGHT_FILES)}")
    return load_encoder(str(folder))


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory / checkpoints folder (its newest complete checkpoint)."""
    path = Path(path)
    if (path / MANIFEST).is_file() or (path / "trainer_state.json").is_file():
        problem = verify(path)
        if problem:
            raise UserError(f"{path}: not a complete checkpoint ({problem})")
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    latest = Checkpointer(root, keep_last=1).latest_complete()
    if latest is None:
        raise UserError(f"{path}: no complete checkpoint found (expected a run directory or a step-* folder)")
    return latest


def find_best_checkpoint(path: str | Path) -> Path:
    """One process. The best checkpoint of a run directory (or checkpoints folder) as its newest complete
    checkpoint records it; given a checkpoint, the best one up to that checkpoint's step."""
    newest = find_checkpoint(path)
    step = read_trainer_state(newest)["train"].get("best_step")
    if step is None:
        raise UserError(f"{path}: the run has no best checkpoint (train.keep_best was not set, or no dev "
                        "evaluation had run by its newest checkpoint)")
    best = newest.parent / checkpoint_name(step)
    problem = verify(best) if best.is_dir() else "it is missing"
    if problem:
        raise UserError(f"{best}: the run's best checkpoint is not complete ({problem})")
    return best


def model_from_checkpoint(path: str | Path) -> tuple[DualEncoder, object]:
    """(DualEncoder with the checkpoint's fp32 weights, tokenizer), in one process."""
    checkpoint = find_checkpoint(path)
    cfg = config_from_dict(yaml.safe_load((checkpoint / "config.yaml").read_text()), str(checkpoint))
    # Checkpoints carry the encoder's config (older ones only name the base model, which must still exist).
    arch = str(checkpoint / "model") if (checkpoint / "model" / "config.json").is_file() else cfg.model.name_or_path
    query = load_encoder(arch, random_init=True)
    passage = None if cfg.model.shared_encoder else load_encoder(arch, random_init=True)
    model = DualEncoder(query, passage, pooling=cfg.model.pooling, normalize=cfg.model.normalize,
                        prefixes=prefixes_of(cfg.model), max_lengths_from=f"{checkpoint}/config.yaml",
                        max_lengths={"query": cfg.data.query_max_len, "passage": cfg.data.passage_max_len})
    missing, unexpected = model.load_state_dict(consolidated_weights(checkpoint), strict=False)
    if missing or unexpected:
        raise UserError(f"{checkpoint}: weights do not fit {cfg.model.name_or_path} "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval(), load_tokenizer(checkpoint / "tokenizer", f"{checkpoint}/tokenizer")
