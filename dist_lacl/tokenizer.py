"""Loading tokenizers, and refusing the unusable ones before any work is done with them."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .errors import ConfigError, UserError

# transformers 5 builds a 5-token tokenizer for a model folder without tokenizer files, mapping every
# word to <unk>; training or encoding with it runs to the end on nothing. No real tokenizer is this small.
MIN_VOCABULARY = 100
SAMPLE = "The 2 quick brown foxes jump over the lazy dog."


def load_tokenizer(name_or_path: str | Path, option: str = "model.tokenizer"):
    """AutoTokenizer for a folder (or hub id), checked to be a real one; UserError naming `option` if not."""
    from transformers import AutoTokenizer

    path = Path(name_or_path).expanduser()
    if looks_local(str(name_or_path)) and not path.is_dir():
        what = "is a file; expected a model or tokenizer folder" if path.exists() else "not found"
        raise UserError(f"{option}: {name_or_path} {what}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path) if path.is_dir() else str(name_or_path))
    except (OSError, ValueError) as e:
        raise UserError(f"{option}: {name_or_path}: no usable tokenizer ({_first_line(e)})") from None
    check_tokenizer(tokenizer, str(name_or_path), option)
    return tokenizer


def check_tokenizer(tokenizer, source: str, option: str = "model.tokenizer") -> None:
    """Refuse a tokenizer that is too small to be real, or that maps plain English text to unknowns only."""
    hint = "the folder holds no tokenizer files (tokenizer.json, or vocab/sentencepiece files); " \
           f"set {option} to the tokenizer the model was trained with"
    if len(tokenizer) < MIN_VOCABULARY:
        raise UserError(f"{option}: {source}: the tokenizer has only {len(tokenizer)} tokens: {hint}")
    ids = tokenizer(SAMPLE, add_special_tokens=False)["input_ids"]
    if tokenizer.unk_token_id is not None and ids and all(i == tokenizer.unk_token_id for i in ids):
        raise UserError(f"{option}: {source}: the tokenizer maps plain English text to unknown tokens only: {hint}")


def check_vocabulary(model, tokenizer, cfg) -> None:
    """A tokenizer larger than the embedding matrix of `model` (a model.DualEncoder) would index past it
    at the first rare token; `cfg` (a config.RunConfig) names the model in the message."""
    rows = model.tower("query").get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ConfigError(f"model.tokenizer: {len(tokenizer)} tokens but {cfg.model.name_or_path} has "
                          f"{rows} embedding rows; use the tokenizer the model was trained with")


def tokenizer_files(tokenizer) -> dict[str, bytes]:
    """The tokenizer as {"tokenizer/<file>": bytes}, to travel inside every checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {f"tokenizer/{p.name}": p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def looks_local(name: str) -> bool:
    """A path rather than a hub id ("org/name"): absolute, relative with ./ or ../, or existing."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
