"""The model folders every command loads (`loading`): a separate-tower export's top folder and each of its
towers alone, a sentence-transformers folder (pooling, normalisation, prompts, max length), and the
folders that are not a model (a checkpoint's `model/` config folder, an unsupported pooling): one line,
exit 2, no traceback. Through the real CLI (`encode`)."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from helpers_cli import assert_clean_failure
from helpers_launch import run
from helpers_tiny import TEXTS

from dist_lacl.cli import main
from dist_lacl.evaluation.encode import load_embeddings
from dist_lacl.export import save_dual_encoder
from dist_lacl.loading import SETTINGS, model_settings
from dist_lacl.model import DualEncoder, load_encoder
from dist_lacl.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"docid": f"d{i}", "text": t}, ensure_ascii=False) + "\n"
                            for i, t in enumerate(TEXTS[:12])))
    return path


@pytest.fixture(scope="module")
def two_towers(tiny_model_no_dropout, tmp_path_factory):
    """A real export (`save_dual_encoder`) of a separate-tower model: mean pooling, normalised, prefixes."""
    passage = load_encoder(str(tiny_model_no_dropout))
    with torch.no_grad():
        passage.get_input_embeddings().weight.mul_(-0.5)  # the towers differ
    model = DualEncoder(load_encoder(str(tiny_model_no_dropout)), passage, pooling="mean", normalize=True,
                        prefixes={"query": "query: ", "passage": "passage: "})
    return save_dual_encoder(model, load_tokenizer(tiny_model_no_dropout, "model"),
                             tmp_path_factory.mktemp("export") / "two-towers")


def encode(capsys, model, corpus, out, kind="corpus") -> tuple[int, str]:
    capsys.readouterr()
    code = main(["encode", "--model", str(model), "--input", str(corpus), "--kind", kind, "--output", str(out),
                 "--batch-size", "4"])
    return code, capsys.readouterr().err


def test_one_tower_of_an_export_encodes_as_the_export_does(two_towers, corpus, tmp_path, capsys):
    assert encode(capsys, two_towers, corpus, tmp_path / "full")[0] == 0
    assert encode(capsys, two_towers / "passage", corpus, tmp_path / "tower")[0] == 0
    ids, full = load_embeddings(tmp_path / "full")
    tower_ids, tower = load_embeddings(tmp_path / "tower")
    assert tower_ids == ids and np.allclose(tower, full, atol=1e-6)
    settings = model_settings(two_towers / "passage")  # read from the sentence-transformers files
    assert (settings.pooling, settings.normalize, settings.prefixes["passage"]) == ("mean", True, "passage: ")


def test_separate_tower_export_has_a_readme_naming_both_towers(two_towers):
    readme = (two_towers / "README.md").read_text()
    assert "`query/`" in readme and "`passage/`" in readme and "SentenceTransformer" in readme
    assert "README.md" in json.loads((two_towers / SETTINGS).read_text())["written"]


def _st_folder(tiny_model_dir, path, pooling_config, normalize=True):
    shutil.copytree(tiny_model_dir, path)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **pooling_config}))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 77}))
    (path / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "q: ", "document": "d: "}}))
    return path


def test_a_sentence_transformers_folder_is_read(tiny_model_dir, corpus, tmp_path, capsys):
    folder = _st_folder(tiny_model_dir, tmp_path / "st", {"pooling_mode": "cls"})
    settings = model_settings(folder)
    assert (settings.pooling, settings.normalize, settings.query_max_len, settings.passage_max_len) == \
        ("cls", True, 77, 77)
    assert settings.prefixes == {"query": "q: ", "passage": "d: "}  # "document", sentence-transformers' name
    legacy = _st_folder(tiny_model_dir, tmp_path / "legacy", {"pooling_mode_cls_token": False,
                                                             "pooling_mode_mean_tokens": True}, normalize=False)
    assert (model_settings(legacy).pooling, model_settings(legacy).normalize) == ("mean", False)
    assert encode(capsys, folder, corpus, tmp_path / "emb")[0] == 0
    assert np.allclose(np.linalg.norm(load_embeddings(tmp_path / "emb")[1], axis=1), 1, atol=1e-5)


def test_unsupported_pooling_is_one_line(tiny_model_dir, corpus, tmp_path, capsys):
    folder = _st_folder(tiny_model_dir, tmp_path / "st", {"pooling_mode_max_tokens": True})
    code, err = encode(capsys, folder, corpus, tmp_path / "emb")
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"dist-lacl encode: error: {folder / '1_Pooling' / 'config.json'}: pooling pooling_mode_max_tokens; "
        "expected exactly one of cls (pooling_mode_cls_token) or mean (pooling_mode_mean_tokens)")
    assert not (tmp_path / "emb").exists()


def test_a_checkpoints_model_config_folder_names_the_checkpoint(tiny_model_dir, corpus, tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "step-4"
    (checkpoint / "model").mkdir(parents=True)
    shutil.copy(tiny_model_dir / "config.json", checkpoint / "model" / "config.json")
    (checkpoint / "MANIFEST.json").write_text("{}")
    proc = run([sys.executable, "-m", "dist_lacl.cli", "encode", "--model", str(checkpoint / "model"),
                "--input", str(corpus), "--kind", "corpus", "--output", str(tmp_path / "emb")], expect_rc=None)
    assert_clean_failure(proc, f"--model {checkpoint / 'model'}: is the encoder configuration of checkpoint "
                               f"{checkpoint}, without weights; pass the checkpoint ({checkpoint}) or its run directory")


def test_encode_output_that_is_or_contains_an_input_is_refused(two_towers, corpus, capsys):
    before = corpus.read_bytes()
    for output, says in ((corpus, "is also --input"), (corpus.parent, "contains --input"),
                         (two_towers, "is also --model")):
        code, err = encode(capsys, two_towers, corpus, output)
        assert code == 2 and f"--output {output}: {says} (" in err.strip().splitlines()[-1]
    assert corpus.read_bytes() == before and sorted(p.name for p in corpus.parent.iterdir()) == ["corpus.jsonl"]


def test_encode_defaults_to_the_lengths_an_export_records_and_an_option_wins(tiny_model_no_dropout, corpus,
                                                                             tmp_path, capsys, caplog):
    model = DualEncoder(load_encoder(str(tiny_model_no_dropout)), prefixes={"query": "q: ", "passage": "p: "},
                        max_lengths={"query": 5, "passage": 7})
    folder = save_dual_encoder(model, load_tokenizer(tiny_model_no_dropout, "model"), tmp_path / "export")
    settings = json.loads((folder / SETTINGS).read_text())
    assert (settings["query_max_len"], settings["passage_max_len"], settings["prefixes"]) == \
        (5, 7, {"query": "q: ", "document": "p: "})
    assert json.loads((folder / "sentence_bert_config.json").read_text()) == \
        {"max_seq_length": 7, "query_length": 5, "document_length": 7}

    def max_len(out, *option) -> int:
        capsys.readouterr()
        with caplog.at_level("INFO"):
            assert main(["encode", "--model", str(folder), "--input", str(corpus), "--kind", "corpus",
                         "--output", str(out), *option]) == 0
        return json.loads((out / "meta-0-of-1.json").read_text())["provenance"]["max_len"]

    assert max_len(tmp_path / "recorded") == 7 and f"as the model was trained ({folder / SETTINGS})" in caplog.text
    assert max_len(tmp_path / "given", "--max-len", "9") == 9 and "from --max-len (the model records 7)" in caplog.text
    # An export written before lengths were recorded and prompts keyed `document` still loads.
    (folder / "sentence_bert_config.json").unlink()
    settings.update(prefixes={"query": "q: ", "passage": "p: "})
    del settings["query_max_len"], settings["passage_max_len"]
    (folder / SETTINGS).write_text(json.dumps(settings))
    assert model_settings(folder).prefixes == {"query": "q: ", "passage": "p: "}
    assert max_len(tmp_path / "old") == 128 and "--max-len's default (the model records no length)" in caplog.text


def test_a_separate_tower_export_is_one_sentence_transformers_model(two_towers):
    modules = json.loads((two_towers / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Router", "Pooling", "Normalize"]
    router = json.loads((two_towers / "router_config.json").read_text())
    assert router["structure"] == {"query": ["query"], "document": ["passage"]}
    for tower in ("query", "passage"):  # each tower still a plain transformers folder
        assert (two_towers / tower / "config.json").is_file() and (two_towers / tower / "model.safetensors").is_file()
