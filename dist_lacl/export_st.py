"""An export's sentence-transformers files: each encoder folder a model of its own, and separate towers one
model with a `Router` (route `query` -> `query/`, route `document` -> `passage/`).

What sentence-transformers and MTEB must get from them to encode as `dist-lacl encode` does by default:
- prompts keyed `query` and `document` (the names `encode_query` / `encode_document` and MTEB look up);
- the trained lengths: sentence_bert_config.json's max_seq_length (the passage length for a shared
  encoder), and for a shared encoder trained with a shorter query length, `query_length` /
  `document_length` (sentence-transformers applies them to `encode_query` / `encode_document`);
- BERT-family weights with a `pooler.*` layer, so that transformers' AutoModel (which builds one) reports
  nothing missing: dist-lacl trains without it, and the export writes it initialised from a fixed seed.
  `pooler_output` is therefore not a trained embedding; the embeddings are the Pooling module's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from .model import HAS_UNUSED_POOLER, DualEncoder

_ST = "sentence_transformers.models."
"""Module type names every sentence-transformers release since the Router's (5.0) resolves."""
POOLER_SEED = 0


def save_encoder(encoder: torch.nn.Module, folder: Path) -> None:
    """`save_pretrained` with a pooler for the BERT family (see the module docstring); `encoder` is unchanged."""
    if encoder.config.model_type not in HAS_UNUSED_POOLER or getattr(encoder, "pooler", None) is not None:
        encoder.save_pretrained(folder)
        return
    pooler_class = getattr(sys.modules[type(encoder).__module__], type(encoder).__name__.replace("Model", "Pooler"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(POOLER_SEED)
        encoder.pooler = pooler_class(encoder.config).to(next(encoder.parameters()).dtype)
    try:
        encoder.save_pretrained(folder)
    finally:
        encoder.pooler = None


def prompts(model: DualEncoder) -> dict[str, str]:
    """The prefixes under the names sentence-transformers and MTEB ask for."""
    return {"query": model.prefixes["query"], "document": model.prefixes["passage"]}


def write_encoder_folder(folder: Path, model: DualEncoder, tower: str | None) -> None:
    """Make the encoder folder `folder` (of `tower`; None: the shared encoder) a sentence-transformers model."""
    _write_json(folder / "modules.json", [_module(0, "", "Transformer"), *_head(model)])
    _write_head(folder, model)
    lengths = model.max_lengths
    config = {}
    if tower is not None and lengths[tower]:
        config["max_seq_length"] = lengths[tower]
    elif tower is None and lengths["passage"]:
        config["max_seq_length"] = lengths["passage"]
        if lengths["query"] and lengths["query"] != lengths["passage"]:
            config |= {"query_length": lengths["query"], "document_length": lengths["passage"]}
    _write_json(folder / "sentence_bert_config.json", config)


def write_router(top: Path, model: DualEncoder) -> None:
    """Make `top`, holding the encoder folders `query/` and `passage/`, one sentence-transformers model."""
    _write_json(top / "modules.json", [_module(0, "", "Router"), *_head(model)])
    _write_json(top / "router_config.json", {
        "types": {"query": _ST + "Transformer", "passage": _ST + "Transformer"},
        "structure": {"query": ["query"], "document": ["passage"]},
        "parameters": {"default_route": "document", "allow_empty_key": True, "route_mappings": {}}})
    _write_head(top, model)


def _head(model: DualEncoder) -> list[dict]:
    head = [_module(1, "1_Pooling", "Pooling")]
    return head + [_module(2, "2_Normalize", "Normalize")] if model.normalize else head


def _module(idx: int, path: str, kind: str) -> dict:
    return {"idx": idx, "name": str(idx), "path": path, "type": _ST + kind}


def _write_head(folder: Path, model: DualEncoder) -> None:
    """Pooling (and Normalize) after the encoder, and the prompts."""
    (folder / "1_Pooling").mkdir(exist_ok=True)
    if model.normalize:
        (folder / "2_Normalize").mkdir(exist_ok=True)
    _write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": model.tower("query").config.hidden_size,
        "pooling_mode_cls_token": model.pooling == "cls", "pooling_mode_mean_tokens": model.pooling == "mean",
        "pooling_mode_max_tokens": False})
    if any(model.prefixes.values()):  # encode_query / encode_document, and MTEB, pick them by name
        _write_json(folder / "config_sentence_transformers.json",
                    {"prompts": prompts(model), "default_prompt_name": None})


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1))
