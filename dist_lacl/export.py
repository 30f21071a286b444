"""Standalone model folders: a transformers encoder + tokenizer + pooling settings, loadable anywhere.

Layout (shared encoder): a `transformers` model folder (config.json, model.safetensors, tokenizer files)
plus `dist_lacl.json` {"pooling", "normalize", "shared_encoder", "prefixes"} and a sentence-transformers
module config (modules.json, 1_Pooling/config.json, the prefixes as prompts) so `SentenceTransformer(path)`
gives the same embeddings.
Separate towers: the same, once per tower, in `query/` and `passage/`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .atomic import discard, new_temp_dir, publish_dir
from .errors import UserError
from .model import TOWERS, DualEncoder, load_encoder, prefixes_of
from .outputs import check_output_dir
from .tokenizer import load_tokenizer

SETTINGS = "dist_lacl.json"


def save_dual_encoder(model: DualEncoder, tokenizer, path: str | Path) -> Path:
    """Write `model` and `tokenizer` to the folder `path` (checked with `check_export_dir` beforehand),
    built under a temporary name and renamed into place."""
    path = Path(path)
    tmp = new_temp_dir(path)
    try:
        towers = [None] if model.shared else list(TOWERS)
        for tower in towers:
            folder = tmp if tower is None else tmp / tower
            model.tower(tower or "query").save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            _write_sentence_transformers_config(folder, model)
        written = sorted(os.listdir(tmp))
        (tmp / SETTINGS).write_text(json.dumps(
            {"pooling": model.pooling, "normalize": model.normalize, "shared_encoder": model.shared,
             "prefixes": model.prefixes, "written": written}, indent=1))
        return publish_dir(tmp, path)
    except BaseException:
        discard(tmp)
        raise


def check_export_dir(path: str | Path, inputs=(), overwrite: bool = False) -> Path:
    """The export folder, if writable without touching anything of the user's (see `outputs`)."""
    return check_output_dir(path, "--output", SETTINGS, inputs, overwrite)


def _write_sentence_transformers_config(folder: Path, model: DualEncoder) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if model.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=1))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    dim = model.tower("query").config.hidden_size
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": dim, "pooling_mode_cls_token": model.pooling == "cls",
         "pooling_mode_mean_tokens": model.pooling == "mean", "pooling_mode_max_tokens": False}, indent=1))
    if any(model.prefixes.values()):  # sentence-transformers' prompts: encode(..., prompt_name="query")
        (folder / "config_sentence_transformers.json").write_text(json.dumps(
            {"prompts": model.prefixes, "default_prompt_name": None}, indent=1))


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
    from .checkpoint import Checkpointer, verify

    path = Path(path)
    if (path / "MANIFEST.json").is_file() or (path / "trainer_state.json").is_file():
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
    import yaml

    from .checkpoint import consolidated_weights
    from .config import config_from_dict

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


def load_model(path: str | Path) -> tuple[DualEncoder, object]:
    """An exported folder, a plain transformers folder, or a training checkpoint / run directory."""
    path = Path(path)
    if (path / "config.json").is_file() or (path / SETTINGS).is_file():
        return load_dual_encoder(path)
    return model_from_checkpoint(path)


def run_export(args) -> None:
    checkpoint = find_checkpoint(args.checkpoint)
    out = check_export_dir(args.output, inputs=[args.checkpoint, checkpoint], overwrite=args.overwrite)
    model, tokenizer = model_from_checkpoint(checkpoint)
    print(f"exported to {save_dual_encoder(model, tokenizer, out)}")
