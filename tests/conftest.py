"""Shared fixtures: a tiny locally built model and tokenizer, and small training files (no downloads)."""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # the helpers_* modules
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The shared checks report a failing assert in detail, as they did inside the test modules they came from.
pytest.register_assert_rewrite("equivalence", "helpers_cli", "helpers_reference_step", "helpers_resume")

from helpers_data import ir_records, with_teacher_scores, write_jsonl, write_training_data  # noqa: E402
from helpers_mine import mining_data, spread_model  # noqa: E402, F401 (mining's fixtures: test_mine, test_teacher)
from helpers_tiny import copy_without_dropout, make_tiny_model, make_tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def data_cache_root(tmp_path_factory) -> Path:
    """The tests' data caches (their subprocesses' too) stay out of the user's ~/.cache/dist_lacl."""
    root = tmp_path_factory.mktemp("data-cache")
    os.environ["DIST_LACL_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer XLM-R-style encoder (hidden 32, dropout 0.1) with its tokenizer, in one folder."""
    path = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(path, make_tiny_tokenizer(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_no_dropout(tiny_model_dir, tmp_path_factory) -> Path:
    """Dropout off, for comparisons across processes whose RNG streams differ; token embeddings scaled
    up so that different inputs get clearly different representations. (A random tiny encoder otherwise
    maps every input to nearly one vector; each gradient is then a near-cancelling sum, and comparisons
    between differently batched computations measure fp32 rounding instead of correctness.)"""
    path = tmp_path_factory.mktemp("tiny-model-no-dropout")
    model = copy_without_dropout(tiny_model_dir, path)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(50.0)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def training_data(tmp_path_factory) -> dict[str, str]:
    """{train_ir, parallel, monolingual}: small valid files in the documented formats."""
    return write_training_data(tmp_path_factory.mktemp("train-data"))


@pytest.fixture(scope="session")
def training_data_with_scores(training_data, tmp_path_factory) -> dict[str, str]:
    """training_data whose IR file's passages all carry a teacher's `score` (loss.distill_weight)."""
    path = tmp_path_factory.mktemp("train-data-scored") / "ir.jsonl"
    return {**training_data, "train_ir": str(write_jsonl(path, with_teacher_scores(ir_records(32))))}
