"""Loading a trained model: an exported folder, a plain transformers folder, or a training checkpoint.

The one loader of export, evaluation, mining and the demo. An exported folder (`export`) holds the
encoder(s), the tokenizer and `dist_lacl.json` (pooling, normalize, shared_encoder, prefixes); a
checkpoint is rebuilt from its config.yaml, the encoder's config and the engine's fp32 weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .checkpoint import MANIFEST, Checkpointer, consolidated_weights, verify
from .config import config_from_dict
from .errors import UserError
from .model import DualEncoder, load_encoder, prefixes_of
from .tokenizer import load_tokenizer

SETTINGS = "dist_lacl.json"
"""An exported folder's dist-lacl settings (and the list of what the export wrote)."""


def load_model(path: str | Path) -> tuple[DualEncoder, object]:
    """An exported folder, a plain transformers folder, or a training checkpoint / run directory."""
    path = Path(path)
    if (path / "config.json").is_file() or (path / SETTINGS).is_file():
        return load_dual_encoder(path)
    return model_from_checkpoint(path)


def load_dual_encoder(path: str | Path) -> tuple[DualEncoder, object]:
    """(DualEncoder, tokenizer) from an exported folder; a plain transformers folder loads with CLS pooling."""
    path = Path(path)
    settings_file = path / SETTINGS
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else \
        {"pooling": "cls", "normalize": False, "shared_encoder": True}
    if settings["shared_encoder"]:
        query, passage, tok_dir = load_encoder(str(path)), None, path
    else:
        query, passage, tok_dir = load_encoder(str(path / "query")), load_encoder(str(path / "passage")), path / "query"
    model = DualEncoder(query, passage, pooling=settings["pooling"], normalize=settings["normalize"],
                        prefixes=settings.get("prefixes"))
    return model.eval(), load_tokenizer(tok_dir, "--model")


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


def model_from_checkpoint(path: str | Path) -> tuple[DualEncoder, object]:
    """(DualEncoder with the checkpoint's fp32 weights, tokenizer), in one process."""
    checkpoint = find_checkpoint(path)
    cfg = config_from_dict(yaml.safe_load((checkpoint / "config.yaml").read_text()), str(checkpoint))
    # Checkpoints carry the encoder's config (older ones only name the base model, which must still exist).
    arch = str(checkpoint / "model") if (checkpoint / "model" / "config.json").is_file() else cfg.model.name_or_path
    query = load_encoder(arch, random_init=True)
    passage = None if cfg.model.shared_encoder else load_encoder(arch, random_init=True)
    model = DualEncoder(query, passage, pooling=cfg.model.pooling, normalize=cfg.model.normalize,
                        prefixes=prefixes_of(cfg.model))
    missing, unexpected = model.load_state_dict(consolidated_weights(checkpoint), strict=False)
    if missing or unexpected:
        raise UserError(f"{checkpoint}: weights do not fit {cfg.model.name_or_path} "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval(), load_tokenizer(checkpoint / "tokenizer", f"{checkpoint}/tokenizer")
