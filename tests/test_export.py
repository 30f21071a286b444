"""`dist-lacl export` consolidates ZeRO shards into a folder that plain transformers (and
sentence-transformers) load, giving the embeddings of the training-time model."""

import json
import sys

import pytest
import torch
from equivalence import EXPORTED_REPS, SENTENCE_TRANSFORMERS_REPS
from helpers_launch import run
from helpers_train import train_args
from transformers import AutoModel, AutoTokenizer

from dist_lacl.config import load_config
from dist_lacl.model import build_model

TEXTS = ["Where is the nearest train station?", "Wo ist der nächste Bahnhof?", "多言語検索"]


@pytest.mark.slow
def test_export_reloads_with_transformers_and_reproduces_embeddings(tmp_path, tiny_model_dir, training_data):
    out = tmp_path / "run"
    run([sys.executable, *train_args(tiny_model_dir, training_data, out, "train.max_steps=3")], timeout=300)
    run([sys.executable, "-m", "dist_lacl.cli", "export", str(out), "--out", str(tmp_path / "exported")])

    # The training-time model: the config it ran with and the module weights DeepSpeed saved.
    checkpoint = out / "checkpoints" / (out / "checkpoints" / "latest").read_text()
    cfg = load_config(checkpoint / "config.yaml")
    trained = build_model(cfg.model).eval()
    state = torch.load(checkpoint / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    trained.load_state_dict(state)
    assert not torch.equal(state["query_encoder.embeddings.word_embeddings.weight"],
                           build_model(cfg.model).state_dict()["query_encoder.embeddings.word_embeddings.weight"])

    # The lengths the run trained with are the export's (dist-lacl's and sentence-transformers' settings).
    settings = json.loads((tmp_path / "exported" / "dist_lacl.json").read_text())
    assert (settings["query_max_len"], settings["passage_max_len"]) == (cfg.data.query_max_len,
                                                                        cfg.data.passage_max_len)
    st_config = json.loads((tmp_path / "exported" / "sentence_bert_config.json").read_text())
    assert st_config["max_seq_length"] == cfg.data.passage_max_len

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "exported")
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = trained(batch["input_ids"], batch["attention_mask"])
        hidden = AutoModel.from_pretrained(tmp_path / "exported")(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        plain = (hidden * mask).sum(1) / mask.sum(1)  # cfg.model.pooling == "mean"
    torch.testing.assert_close(plain, expected, **EXPORTED_REPS)

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tmp_path / "exported"), device="cpu")
    torch.testing.assert_close(torch.as_tensor(st.encode(TEXTS)), expected, **SENTENCE_TRANSFORMERS_REPS)
