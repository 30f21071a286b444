"""Standalone model folders: a transformers encoder + tokenizer + pooling settings, loadable anywhere.

Layout (shared encoder): a `transformers` model folder (config.json, model.safetensors, tokenizer files)
plus `dist_lacl.json` {"pooling", "normalize", "shared_encoder"} and a sentence-transformers module
config (modules.json, 1_Pooling/config.json) so `SentenceTransformer(path)` gives the same embeddings.
Separate towers: the same, once per tower, in `query/` and `passage/`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import AutoTokenizer

from .model import TOWERS, DualEncoder, load_encoder

SETTINGS = "dist_lacl.json"


def save_dual_encoder(model: DualEncoder, tokenizer, path: str | Path) -> Path:
    """Write `model` and `tokenizer` to `path` atomically (a temporary folder, then a rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    towers = [None] if model.shared else list(TOWERS)
    for tower in towers:
        folder = tmp if tower is None else tmp / tower
        model.tower(tower or "query").save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _write_sentence_transformers_config(folder, model)
    (tmp / SETTINGS).write_text(json.dumps(
        {"pooling": model.pooling, "normalize": model.normalize, "shared_encoder": model.shared}, indent=1))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


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
    model = DualEncoder(query, passage, pooling=settings["pooling"], normalize=settings["normalize"])
    return model.eval(), AutoTokenizer.from_pretrained(str(tok_dir))
