"""A model of XLM-R-large's shape (560M parameters, random weights from XLMRobertaConfig) takes ZeRO-2
bf16 training step with gradient caching on 2 CPU ranks (about 9 GiB and 50 s a step per rank on one
thread; one step, sequences of 8 tokens: the suite's slowest test). Memory figures live in
bench/bench_zero.py."""


import pytest
import yaml
from helpers_launch import WORKERS, rank_results, torchrun
from transformers import XLMRobertaConfig

XLMR_LARGE = dict(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                  bos_token_id=0, eos_token_id=2)


def write_large_config(tmp_path, tokenizer_dir, data, ds_config="ds_configs/zero2_bf16_xlmr_large.json",
                       precision="bf16", **shape):
    model_dir = tmp_path / "xlmr-large-shape"
    XLMRobertaConfig(**{**XLMR_LARGE, **shape}).save_pretrained(model_dir)
    raw = {"model": {"name_or_path": str(model_dir), "tokenizer": str(tokenizer_dir), "random_init": True},
           "data": {**data, "train_group_size": 2, "query_max_len": 8, "passage_max_len": 8,
                    "sentence_max_len": 8, "cache_dir": str(tmp_path / "cache")},
           "train": {"backend": "deepspeed", "deepspeed_config": ds_config, "precision": precision, "ir_batch_size": 2,
                     "parallel_batch_size": 2, "monolingual_batch_size": 2, "chunk_size": 1, "lr": 1e-5,
                     "warmup_steps": 0, "num_threads": 1, "output_dir": str(tmp_path / "run")}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def results(proc) -> list[dict]:
    return rank_results(proc.stdout)


@pytest.mark.slow
def test_xlmr_large_shape_trains_under_zero2_with_grad_cache(tmp_path, tiny_model_dir, training_data):
    config = write_large_config(tmp_path, tiny_model_dir, training_data)
    out = results(torchrun(WORKERS / "train_steps.py", config, 1, timeout=900))
    assert [r["rank"] for r in out] == [0, 1]
    assert 550e6 < out[0]["params"] < 570e6
    assert all(loss == loss and loss > 0 for loss in out[0]["losses"]) and len(out[0]["losses"]) == 1
    assert out[0]["losses"] == out[1]["losses"]  # every rank computes the same global loss
