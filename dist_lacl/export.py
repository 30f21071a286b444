"""Standalone model folders: a transformers encoder + tokenizer + pooling settings, loadable anywhere.

Layout (shared encoder): a `transformers` model folder (config.json, model.safetensors, tokenizer files)
plus `dist_lacl.json` {"pooling", "normalize", "shared_encoder", "prefixes" {"query", "document"},
"query_max_len", "passage_max_len"} and the sentence-transformers files (`export_st`), so that
`SentenceTransformer(path)` and MTEB give the embeddings `dist-lacl encode` gives.
Separate towers: an encoder folder per tower, `query/` and `passage/`, each a transformers and a
sentence-transformers model of its own, and at the top one sentence-transformers model routing queries to
`query/` and documents to `passage/` (a `Router`), and `dist_lacl.json`. README.md: the model card
(`model_card`). `loading` reads such folders back (and those written before the Router, and before
prompts were keyed `document`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .atomic import discard, new_temp_dir, publish_dir
from .export_st import prompts, save_encoder, write_encoder_folder, write_router
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
            save_encoder(model.tower(tower or "query"), folder)
            tokenizer.save_pretrained(folder)
            write_encoder_folder(folder, model, tower)
        if not model.shared:
            write_router(tmp, model)
        write_model_card(tmp, facts)  # README.md: the training facts, how to load, the prompts
        written = sorted(os.listdir(tmp))
        (tmp / SETTINGS).write_text(json.dumps(
            {"pooling": model.pooling, "normalize": model.normalize, "shared_encoder": model.shared,
             "prefixes": prompts(model), "query_max_len": model.max_lengths["query"],
             "passage_max_len": model.max_lengths["passage"], "written": written}, indent=1))
        return publish_dir(tmp, path)
    except BaseException:
        discard(tmp)
        raise


def check_export_dir(path: str | Path, inputs=(), overwrite: bool = False) -> Path:
    """The export folder, if writable without touching anything of the user's (see `outputs`)."""
    return check_output_dir(path, "--output", SETTINGS, inputs, overwrite)


def run_export(args) -> None:
    checkpoint = find_best_checkpoint(args.checkpoint) if args.best else find_checkpoint(args.checkpoint)
    out = check_export_dir(args.output, inputs=[args.checkpoint, checkpoint], overwrite=args.overwrite)
    model, tokenizer = model_from_checkpoint(checkpoint)
    print(f"exported to {save_dual_encoder(model, tokenizer, out, card_facts(checkpoint))}")
