"""Standalone model folders: a transformers encoder + tokenizer + pooling settings, loadable anywhere.

Layout (shared encoder): a `transformers` model folder (config.json, model.safetensors, tokenizer files)
plus `dist_lacl.json` {"pooling", "normalize", "shared_encoder", "prefixes"} and a sentence-transformers
module config (modules.json, 1_Pooling/config.json, the prefixes as prompts) so `SentenceTransformer(path)`
gives the same embeddings.
Separate towers: the same, once per tower, in `query/` and `passage/`. At the top, README.md: the model
card (`model_card`), saying which folder to load. `loading` reads such folders back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .atomic import discard, new_temp_dir, publish_dir
from .loading import SETTINGS, find_best_checkpoint, find_checkpoint, model_from_checkpoint
from .model import TOWERS, DualEncoder
from .model_card import CardFacts, card_facts, write_model_card
from .outputs import check_output_dir


def save_dual_encoder(model: DualEncoder, tokenizer, path: str | Path, facts: CardFacts | None = None) -> Path:
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
        write_model_card(tmp, facts)  # README.md: the training facts, how to load, the prompts
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


def run_export(args) -> None:
    checkpoint = find_best_checkpoint(args.checkpoint) if args.best else find_checkpoint(args.checkpoint)
    out = check_export_dir(args.output, inputs=[args.checkpoint, checkpoint], overwrite=args.overwrite)
    model, tokenizer = model_from_checkpoint(checkpoint)
    print(f"exported to {save_dual_encoder(model, tokenizer, out, card_facts(checkpoint))}")
