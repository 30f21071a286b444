"""Where a run config's paths point: resolved once, when the config is built.

The config saved with a run then names the same files from anywhere (a resume from another directory),
and one file has one spelling (`data/../data/x` is `data/x`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .tokenizer import looks_local

# Options naming local files or folders, resolved against the working directory; a model name that is no
# local path is a hub id; a relative DeepSpeed config missing here is the repository's shipped file.
_PATHS = {"data": ("train_ir", "parallel", "monolingual", "dev_queries", "dev_corpus", "dev_qrels", "cache_dir"),
          "train": ("output_dir", "deepspeed_config"), "model": ("name_or_path", "tokenizer")}
REPO_ROOT = Path(__file__).resolve().parents[1]


def find_deepspeed_config(name: str) -> Path:
    """`name` as given, else (a relative name such as the default `ds_configs/zero2_fp32_cpu.json`)
    relative to the repository, so runs started from any directory find the shipped files."""
    path = Path(name).expanduser()
    if not path.exists() and not path.is_absolute() and (REPO_ROOT / path).is_file():
        return REPO_ROOT / path
    return path


def resolve_paths(cfg):
    """`cfg` with every local path absolute and real; hub model ids as given."""
    def resolved(section: str, name: str, value):
        if isinstance(value, list):  # data.train_ir's datasets: each one's data and corpus
            return [dataclasses.replace(s, path=resolved(section, name, s.path),
                                        corpus=resolved(section, name, s.corpus)) for s in value]
        if not value or section == "model" and not looks_local(value):
            return value
        path = find_deepspeed_config(value) if name == "deepspeed_config" else os.path.expanduser(value)
        return os.path.realpath(path)
    return dataclasses.replace(cfg, **{
        section: dataclasses.replace(getattr(cfg, section), **{
            name: resolved(section, name, getattr(getattr(cfg, section), name)) for name in names})
        for section, names in _PATHS.items()})
