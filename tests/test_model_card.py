"""The model card `export` writes (README.md): its YAML header parses for the Hub, every number in it is
the run's (read here independently: the config, the data files, TensorBoard), nothing is invented when a
fact is not recorded, and its loading code gives the export's embeddings."""

import json
import re
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch
import yaml
from equivalence import EXPORTED_REPS, SENTENCE_TRANSFORMERS_REPS
from helpers_data import write_dev_set
from helpers_launch import run
from helpers_train import scalars, train_args

from dist_lacl import run_facts
from dist_lacl.export import save_dual_encoder
from dist_lacl.loading import SETTINGS, load_dual_encoder
from dist_lacl.model_card import card_facts, render

CITATION = {2023.0}  # Hu et al. 2023, the one number the card states that no run records


@pytest.fixture(scope="module")
def run_and_export(tmp_path_factory, tiny_model_dir, training_data):
    """A one-process run of 4 steps with a dev evaluation at steps 2 and 4, and its export."""
    root = tmp_path_factory.mktemp("card")
    dev = write_dev_set(root / "dev")
    out = root / "run"
    run([sys.executable, *train_args(tiny_model_dir, training_data, out, "train.max_steps=4", "train.eval_every=2",
                                     "train.log_every=4", "model.query_prefix='query: '",
                                     "model.passage_prefix='passage: '", *(f"data.{k}={v}" for k, v in dev.items()))],
        timeout=300)
    run([sys.executable, "-m", "dist_lacl.cli", "export", str(out), "-o", str(root / "model")])
    return out, root / "model"


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def prose_numbers(body: str) -> list[float]:
    """Every number outside code (fenced blocks and `inline code`: file names, snippets)."""
    prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", body, flags=re.S))
    return [float(n) for n in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?", prose)]


def numbers_in(value) -> set[float]:
    if isinstance(value, bool):
        return set()
    if isinstance(value, (int, float)):
        return {float(value)}
    if isinstance(value, dict):
        return set().union(*map(numbers_in, value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*map(numbers_in, value)) if value else set()
    return set()


def test_card_header_parses_and_every_number_is_the_runs(run_and_export, training_data):
    run_dir, model = run_and_export
    header, body = split_card((model / "README.md").read_text())
    assert header["library_name"] == "sentence-transformers" and header["pipeline_tag"] == "sentence-similarity"
    assert {"sentence-transformers", "dense-retrieval", "multilingual", "dist-lacl"} <= set(header["tags"])
    assert "base_model" not in header  # trained from a local folder: no path passed off as a Hub id
    assert "license" not in header  # none is known
    # Languages: the parallel pairs' (and their English side), the monolingual data's, the dev set's.
    read = lambda path: [json.loads(line) for line in open(path, encoding="utf-8")]  # noqa: E731
    parallel, mono = read(training_data["parallel"]), read(training_data["monolingual"])
    dev_langs = {q["lang"] for q in read(run_dir.parent / "dev" / "queries.jsonl")}
    assert header["language"] == sorted({"en"} | {r["lang"] for r in parallel + mono} | dev_langs)

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    checkpoint = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    records = {name: sum(1 for _ in open(training_data[key])) for name, key in
               (("ir", "train_ir"), ("parallel", "parallel"), ("monolingual", "monolingual"))}
    assert f"| ir | `ir.jsonl` | {records['ir']} |" in body
    assert f"| parallel | `parallel.jsonl` | {records['parallel']} | de, fr, ja, ru |" in body
    assert f"| monolingual | `mono.jsonl` | {records['monolingual']} |" in body
    assert f"- Steps: {state['train']['step']} (train.max_steps {cfg['train']['max_steps']})" in body
    assert f"- Global batch: {cfg['train']['ir_batch_size']} queries ({cfg['train']['ir_batch_size']} per device on 1 device)" in body
    assert (f"- Loss: IR contrastive loss + {cfg['loss']['semantic_weight']} x semantic loss + "
            f"{cfg['loss']['language_weight']} x language loss") in body
    assert f"temperature (tau): `{cfg['loss']['temperature']}`" in body

    # The dev table is TensorBoard's last evaluation (step 4), rounded as the card says.
    logged = scalars(run_dir)
    assert "## Dev set, step 4" in body
    dev_rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
                for line in body.split("## Dev set")[1].split("##")[0].splitlines() if line.startswith("| ")}
    metrics = dev_rows.pop("language")
    assert set(dev_rows) == dev_langs | {"macro", "all"}
    for group, values in dev_rows.items():
        for metric, value in zip(metrics, values):
            # TensorBoard holds float32: a value on a rounding boundary may round the other way there
            assert abs(float(value) - logged[f"eval/{metric}/{group}"][-1]) <= 0.5e-4 + 1e-6, (group, metric)

    allowed = (numbers_in(cfg) | numbers_in(state["train"]) | {float(state["world_size"])} | numbers_in(records)
               | {float(round(v[-1], 4)) for k, v in logged.items() if k.startswith("eval/")}
               | {round(v, 4) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                  for v in numbers_in(json.loads(line)["metrics"])}  # as recorded, before float32
               | {float(n) for m in metrics for n in re.findall(r"\d+", m)}
               | {float(cfg["train"]["ir_batch_size"] // state["world_size"])} | CITATION)
    invented = [n for n in prose_numbers(body) if n not in allowed]
    assert not invented, invented

    prompts = body.split("## Prompts")[1]
    assert '`"query: "`' in prompts and '`"passage: "`' in prompts


def test_checkpoint_alone_gives_no_counts_or_metrics(run_and_export, tmp_path):
    """A checkpoint copied out of its run directory: the config's facts stay; no data.json, no metrics."""
    run_dir, _ = run_and_export
    checkpoint = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text()
    alone = shutil.copytree(checkpoint, tmp_path / "step-alone")
    run([sys.executable, "-m", "dist_lacl.cli", "export", str(alone), "-o", str(tmp_path / "model")])
    header, body = split_card((tmp_path / "model" / "README.md").read_text())
    assert "language" not in header  # the languages were in data.json and the dev metrics only
    assert "| ir | `ir.jsonl` |  |  |" in body and "## Dev set" not in body
    assert "- Steps: 4" in body


def test_a_hub_base_model_is_named_in_the_header(run_and_export):
    run_dir, model = run_and_export
    checkpoint = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text()
    facts = card_facts(checkpoint)
    facts.config["model"]["name_or_path"] = "FacebookAI/xlm-roberta-base"
    header, body = split_card(render(model, facts))
    assert header["base_model"] == "FacebookAI/xlm-roberta-base"
    assert "fine-tuned from FacebookAI/xlm-roberta-base" in body


def test_a_fresh_start_drops_the_evaluations_of_an_attempt_without_a_checkpoint(tmp_path):
    stream = SimpleNamespace(num_examples=3)
    data = SimpleNamespace(streams={"ir": stream, "parallel": stream}, ir=None, parallel=None)
    data_cfg = SimpleNamespace(train_ir="/data/ir.jsonl", parallel=["/data/a.tsv", "/data/b.tsv"])
    run_facts.record_eval(tmp_path, 2, {"eval/mrr@10/de": 0.5})
    run_facts.record_data(tmp_path, data_cfg, data)
    assert run_facts.read_evals(tmp_path) == {}
    assert run_facts.read_data(tmp_path) == {"ir": {"files": ["ir.jsonl"], "records": 3},
                                             "parallel": {"files": ["a.tsv", "b.tsv"], "records": 3}}
    run_facts.record_eval(tmp_path, 2, {"eval/mrr@10/de": 0.5})
    run_facts.record_eval(tmp_path, 2, {"eval/mrr@10/de": 0.25})  # the same step again after a resume
    with open(tmp_path / run_facts.METRICS, "a") as f:
        f.write('{"step": 4, "metr')  # torn by a crash
    assert run_facts.read_evals(tmp_path) == {2: {"eval/mrr@10/de": 0.25}}


def test_an_export_without_a_run_states_only_what_its_files_say(tiny_model_dir, tmp_path):
    model, tokenizer = load_dual_encoder(tiny_model_dir)
    folder = save_dual_encoder(model, tokenizer, tmp_path / "plain")
    header, body = split_card((folder / "README.md").read_text())
    assert set(header) == {"library_name", "pipeline_tag", "tags"}
    assert "## Training" not in body and "## Data" not in body and not prose_numbers(body)
    assert "README.md" in json.loads((folder / SETTINGS).read_text())["written"]


def test_the_cards_loading_code_gives_the_exports_embeddings(run_and_export):
    """The card's plain-transformers snippet, run as written, and sentence-transformers' encode_query /
    encode_document, against the export loaded by dist-lacl (prompts included)."""
    _, model_dir = run_and_export
    body = (model_dir / "README.md").read_text()
    texts = ["Where is the nearest train station?", "Wo ist der nächste Bahnhof?"]
    snippets = [code.replace("THIS_FOLDER", str(model_dir)) for code in re.findall(r"```python\n(.*?)```", body, flags=re.S)]
    # Its sentence-transformers lines, on our texts, with the device pinned.
    st = snippets[0].replace('["Where is the nearest train station?"]', repr(texts)).replace(
        '["The central station is two streets away."]', repr(texts)).replace(")\nqueries", ', device="cpu")\nqueries', 1)
    namespace = {}
    exec(st, namespace)  # noqa: S102 (the card's own code)
    namespace.update(query=namespace["queries"], passage=namespace["passages"])
    exec(snippets[1], namespace)  # noqa: S102
    model, tokenizer = load_dual_encoder(model_dir)
    for tower, prompt in (("query", "query: "), ("passage", "passage: ")):
        batch = tokenizer([prompt + t for t in texts], padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            expected = model(batch["input_ids"], batch["attention_mask"], tower)
        torch.testing.assert_close(namespace["embed"](texts, prompt), expected, **EXPORTED_REPS)
        torch.testing.assert_close(torch.as_tensor(namespace[tower]), expected, **SENTENCE_TRANSFORMERS_REPS)
